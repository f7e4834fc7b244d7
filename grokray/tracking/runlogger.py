"""One trial as one MLflow run: the trainer callback that records it (:class:`RunLogger`).

The science core never imports MLflow; the trainer is observed through :class:`RunLogger`, a
:class:`~grokray.train.TrainCallback`. A restarted trial never logs a step twice: the logger
skips evaluations at or before the last step the run already holds.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from grokray.contract import (CHECKPOINT_DIR, CURVES_PNG, DATASET_JSON, HISTORY_CSV, HISTORY_JSON, TRIAL_YAML, Tag,
                              TrialParam, shortcut_metrics)
from grokray.plots import plot_curves
from grokray.tracking.runs import flat_params, last_logged_step, log_metrics, log_tags, log_texts
from grokray.version import __version__

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from grokray.train import Trainer, TrainResult


def trial_run_name(cfg: Any) -> str:
    """A short human name from the usual swept values: ``phi7.2-none-L1x2-wd1-s0``."""
    d, m, t = cfg.data, cfg.model, cfg.train
    return (f"phi{d.phi:g}-{d.augmentation_name()}-L{m.n_layers}x{m.n_loops}-wd{t.weight_decay:g}"
            f"-s{cfg.seed}")


class RunLogger:
    """Trainer callback that records one trial as one MLflow run.

    Create it with :func:`~grokray.tracking.runs.start_run` (new run) or with an existing ``run_id`` (a restarted
    trial); it logs params once, one batch of metrics per evaluation, every checkpoint, and at
    the end the curves PNG, the history and the final tags. ``extra_params`` are logged with
    the config's (e.g. a fine-tuning run's transfer config). ``draw_curves=False`` leaves
    ``curves.png`` to the classifier, which draws it anyway (with the steps it found marked):
    one plot less at the end of every trial of a labelled sweep.
    """

    def __init__(self, client: "MlflowClient", run_id: str, log_checkpoints: bool = True,
                 extra_params: Mapping[str, Any] | None = None, draw_curves: bool = True):
        self.client, self.run_id = client, run_id
        self.log_checkpoints, self.draw_curves = log_checkpoints, draw_curves
        self.extra_params = dict(extra_params or {})
        self.skip_until = last_logged_step(client, run_id)

    def on_start(self, trainer: "Trainer") -> None:
        if self.skip_until >= 0:
            return  # params and dataset were logged by the first attempt
        import yaml
        from mlflow.entities import Param, RunTag

        cfg = trainer.cfg
        params = flat_params({**cfg.flat(), **self.extra_params})
        params[TrialParam.AUGMENTATION] = cfg.data.augmentation_name()
        params[TrialParam.N_PARAMS] = str(trainer.model.num_params())
        tags = {Tag.DATASET: trainer.dataset.name, Tag.VERSION: __version__, Tag.DEVICE: str(trainer.device),
                Tag.PRECISION: trainer.precision}
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        # The dataset's shortcut baselines: constants of the run, logged once (at step 0).
        log_metrics(self.client, self.run_id, 0, shortcut_metrics(trainer.dataset.baselines()))
        log_texts(self.client, self.run_id, {DATASET_JSON: json.dumps(trainer.dataset.summary(), indent=2),
                                             TRIAL_YAML: yaml.safe_dump(cfg.to_dict(), sort_keys=False)})

    def on_eval(self, step: int, metrics: dict[str, float], trainer: "Trainer") -> None:
        if step > self.skip_until:
            log_metrics(self.client, self.run_id, step, metrics)
        return None

    def on_checkpoint(self, step: int, path: Path, trainer: "Trainer") -> None:
        if self.log_checkpoints:
            self.client.log_artifact(self.run_id, str(path), CHECKPOINT_DIR)

    def on_end(self, result: "TrainResult", trainer: "Trainer") -> None:
        ood = (trainer.dataset.baselines().get("ood") or {}).get("best")
        log_run_summary(self.client, self.run_id, result.history, result.stop_reason, result.steps_run,
                        trainer.cfg.train.max_steps, title=trial_run_name(trainer.cfg),
                        baselines={"OOD shortcut (best rule)": ood} if self.draw_curves else None)


def history_csv(history: list[dict]) -> str:
    """A history as CSV text: one row per evaluation, one column per metric."""
    keys = sorted({k for h in history for k in h} - {"step"})
    lines = [",".join(["step"] + keys)]
    lines += [",".join([str(h["step"])] + [repr(h[k]) if k in h else "" for k in keys]) for h in history]
    return "\n".join(lines) + "\n"


def log_run_summary(client: "MlflowClient", run_id: str, history: list[dict], stop_reason: str,
                    steps_run: int, max_steps: int, title: str = "",
                    baselines: Mapping[str, float | None] | None = None) -> None:
    """Curves PNG (with ``baselines`` drawn as lines; none when ``baselines`` is None: the classifier
    draws it), full history (JSON + CSV) and the end-of-training tags."""
    with tempfile.TemporaryDirectory(prefix="grokray-summary-") as tmp:
        if baselines is not None:
            plot_curves(history, Path(tmp) / CURVES_PNG, title=title, baselines=baselines)
        (Path(tmp) / HISTORY_JSON).write_text(json.dumps(history))
        (Path(tmp) / HISTORY_CSV).write_text(history_csv(history))
        client.log_artifacts(run_id, tmp)
    log_tags(client, run_id, {Tag.STOP_REASON: stop_reason, Tag.STEPS_RUN: steps_run, Tag.MAX_STEPS: max_steps})
