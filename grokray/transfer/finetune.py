"""Fine-tune a trained checkpoint on its transfer data, and the numbers a fine-tuning history
yields (He et al. 2026, section 5). Plain torch: no MLflow, no Ray.

Example:
    >>> # trainer, result = finetune("step_0012000.pt", TransferConfig(n_new=0.05), {"max_steps": 3000})
    >>> # transfer_summary(result.history)["final_new_old"]   # exact match on new+old compositions
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from grokray.config import ConfigError, TrainConfig, TrialConfig, trial_config_from_dict, validate
from grokray.history import first_sustained, series
from grokray.model import load_checkpoint
from grokray.train import Trainer, TrainResult
from grokray.transfer.data import TEST_SPLITS, TransferConfig, load_transfer_dataset, transfer_config_from_dict
from grokray.verdict import VerdictParams

#: "Memorized the new facts": acc/new_atomic at or above this, sustained (the verdict's rule).
MEMORIZE_ACC = 0.99
#: "Final" accuracy = median of the last this many evaluations: fine-tuning at CPU scale has
#: short loss spikes, and one landing on the last evaluation should not decide a run's number.
FINAL_WINDOW = 5


def _train_section(train_cfg: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    if train_cfg is None:
        return TrainConfig()
    if isinstance(train_cfg, TrainConfig):
        return validate(TrialConfig(train=dataclasses.replace(train_cfg))).train
    return trial_config_from_dict({"train": dict(train_cfg)}).train


def prepare_finetune(checkpoint_path: str | os.PathLike, tcfg: TransferConfig | Mapping[str, Any],
                     train_cfg: TrainConfig | Mapping[str, Any] | None = None,
                     work_dir: str | os.PathLike | None = None, *, seed: int = 0,
                     cache: str | os.PathLike | None = None, device: Any = None) -> Trainer:
    """A :class:`~grokray.train.Trainer` on the transfer data, holding the source weights.

    The source model and data come from the checkpoint (its ``trial_config``); the trial
    config is the source's data and model with ``train_cfg`` and ``seed`` (batch order).
    The optimizer starts fresh; ``trainer.source_step`` is the checkpoint's step.
    """
    model, ckpt = load_checkpoint(str(checkpoint_path))
    if "trial_config" not in ckpt:
        raise ConfigError("not a grokray trial checkpoint (no trial_config)", key="checkpoint",
                          value=str(checkpoint_path))
    src = trial_config_from_dict(ckpt["trial_config"])
    cfg = validate(TrialConfig(seed=int(seed), data=src.data, model=src.model, train=_train_section(train_cfg)))
    tds = load_transfer_dataset(src.data, transfer_config_from_dict(tcfg), cache)
    if ckpt.get("dataset") and ckpt["dataset"] != tds.source_name:
        raise ConfigError(f"the checkpoint was trained on {ckpt['dataset']} but its data config now generates "
                          f"{tds.source_name} (generator version changed?)", key="checkpoint",
                          value=str(checkpoint_path))
    trainer = Trainer(cfg, dataset=tds, work_dir=work_dir, device=device)
    trainer.model.load_state_dict(model.state_dict())
    trainer.source_step = int(ckpt.get("step", -1))
    return trainer


def finetune(checkpoint_path: str | os.PathLike, tcfg: TransferConfig | Mapping[str, Any],
             train_cfg: TrainConfig | Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
             callbacks: Sequence[Any] = (), *, seed: int = 0, cache: str | os.PathLike | None = None,
             device: Any = None) -> tuple[Trainer, TrainResult]:
    """Fine-tune the checkpoint's model on its transfer data; returns ``(trainer, result)``.

    Every evaluation (the step-0 one is the source model itself) holds ``acc/<split>`` for
    the train probe and every split, and ``lens/<new_old|old_new|new_new|old_old>/...``.
    """
    trainer = prepare_finetune(checkpoint_path, tcfg, train_cfg, work_dir, seed=seed, cache=cache, device=device)
    return trainer, trainer.run(list(callbacks))


def transfer_summary(history: Sequence[Mapping[str, Any]], sustain: int | None = None) -> dict[str, float]:
    """The transfer map's numbers from one fine-tuning history (NaN where a metric is missing).

    ``t_memorize_new``: first step from which ``acc/new_atomic >= 0.99`` for ``sustain``
    evaluations (the verdict's rule; NaN if never); ``t_new_old``: the same for
    ``acc/test_new_old >= 0.9``; ``init_/final_/max_<x>`` for each test composition and the
    atomic probes (``init`` is the step-0 evaluation: the source model; ``final`` the median
    of the last :data:`FINAL_WINDOW` evaluations); ``forget_<x>`` = init - final for
    ``old_old``, ``retained`` and ``unretained`` atomic facts; ``bridge_<x>``: final
    ``lens/<x>/bridge_found`` (same median).
    """
    sustain = sustain or VerdictParams().sustain
    out: dict[str, float] = {}
    for name, key, threshold in (("t_memorize_new", "acc/new_atomic", MEMORIZE_ACC),
                                 ("t_new_old", "acc/test_new_old", 0.9)):
        s = series(history, key)
        t = first_sustained(s.steps, s.values, threshold, sustain) if len(s.values) else None
        out[name] = float(t) if t is not None else math.nan
    keys = {**{short: f"acc/{split}" for short, split in TEST_SPLITS.items()},
            "new_atomic": "acc/new_atomic", "retained": "acc/retained_atomic", "unretained": "acc/unretained_atomic"}
    for short, key in keys.items():
        s, v = series(history, key)
        out[f"init_{short}"] = float(v[0]) if len(v) and s[0] == 0 else math.nan
        out[f"final_{short}"] = float(np.median(v[-FINAL_WINDOW:])) if len(v) else math.nan
        out[f"max_{short}"] = float(v.max()) if len(v) else math.nan
    for short in ("old_old", "retained", "unretained"):
        out[f"forget_{short}"] = out[f"init_{short}"] - out[f"final_{short}"]
    for short in TEST_SPLITS:
        v = series(history, f"lens/{short}/bridge_found").values
        out[f"bridge_{short}"] = float(np.median(v[-FINAL_WINDOW:])) if len(v) else math.nan
    return out
