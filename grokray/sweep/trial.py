"""One sweep trial inside a Ray Tune worker: config -> Trainer -> MLflow child run + Tune reports.

The function :func:`run_trial` is the Tune trainable. What a restarted trial needs
(worker killed, driver resumed) comes from two places:

* the Tune checkpoint (``state.pt``: weights, optimizer, data order, history), saved at
  most every :data:`CHECKPOINT_EVERY_S` seconds and when the trial stops;
* the MLflow child run, found again by its ``grokray.trial_id`` tag, whose already
  logged steps are skipped (:class:`grokray.tracking.RunLogger`): no step is logged
  twice and, since training is deterministic on CPU, none is lost.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokray import tracking
from grokray.config import to_plain, trial_config_from_dict

#: Seconds between two Tune checkpoints of a running trial (plus one when it stops);
#: ``$GROKRAY_CHECKPOINT_EVERY_S`` overrides it (tests use a short one).
CHECKPOINT_EVERY_S = float(os.environ.get("GROKRAY_CHECKPOINT_EVERY_S", 15.0))
#: Metrics every Tune result carries (the progress table and schedulers read them).
REPORTED = ("acc/train", "loss/train", "train_loss", "acc/train_inferred", "acc/id_atomic", "acc/ood_atomic",
            "acc/test_inferred_id", "acc/test_inferred_ood", "lens/ood/bridge_found", "lens/id/bridge_found",
            "param_norm")


@dataclass
class TrialContext:
    """Everything a trial needs besides its swept values; passed with ``tune.with_parameters``."""
    sweep: str
    base: dict                 # the base trial config (plain dict), budget applied
    swept_keys: list[str]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    stop: dict = field(default_factory=dict)   # StopRule fields
    threads: int = 1


def run_name(values: dict[str, Any], keys: list[str]) -> str:
    """``phi=7.2,augmentation=none,seed=0`` from the swept values (last segment of each key)."""
    parts = []
    for k in keys:
        v = values.get(k)
        if isinstance(v, dict) and k in ("data", "model", "train"):   # a grouped value: its keys
            parts += [f"{sub}={x:g}" if isinstance(x, float) else f"{sub}={x}" for sub, x in v.items()]
            continue
        v = v if not isinstance(v, dict) else json.dumps(v, separators=(",", ":"))
        parts.append(f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}")
    return ",".join(parts) or "trial"


def find_or_create_run(client: Any, ctx: TrialContext, trial_id: str, values: dict[str, Any]) -> str:
    """The trial's MLflow child run: the existing one (a restart) or a new one."""
    exp = ctx.experiment_id
    flt = (f"tags.`grokray.sweep` = '{ctx.sweep}' and tags.`grokray.trial_id` = '{trial_id}'")
    found = client.search_runs([exp], filter_string=flt, max_results=1)
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {"grokray.sweep": ctx.sweep, "grokray.trial_id": trial_id,
            "grokray.swept": json.dumps(to_plain(values), sort_keys=True)}
    return tracking.start_trial_run(client, exp, run_name(values, ctx.swept_keys), parent_run_id=ctx.parent_run_id,
                                    tags=tags)


class TuneReporter:
    """Trainer callback: a Tune result per evaluation, a checkpoint every few seconds."""

    def __init__(self, run_id: str, every_s: float = CHECKPOINT_EVERY_S):
        self.run_id, self.every_s = run_id, every_s
        self.last_ckpt = time.monotonic()

    def result(self, step: int, metrics: dict) -> dict:
        out = {k: metrics[k] for k in REPORTED if k in metrics}
        out.update(step=step, mlflow_run_id=self.run_id, pid=os.getpid())
        return out

    def on_eval(self, step: int, metrics: dict, trainer: Any) -> None:
        from ray import tune

        # The stop rule runs after this callback; checkpoint when it will stop too.
        due = time.monotonic() - self.last_ckpt >= self.every_s or step >= trainer.cfg.train.max_steps
        if due:
            with tempfile.TemporaryDirectory(prefix="grokray-ckpt-") as d:
                trainer.save_state(Path(d) / "state.pt")
                (Path(d) / "meta.json").write_text(json.dumps({"run_id": self.run_id, "step": step}))
                tune.report(self.result(step, metrics), checkpoint=tune.Checkpoint.from_directory(d))
            self.last_ckpt = time.monotonic()
        else:
            tune.report(self.result(step, metrics))
        return None


def restore_from_tune_checkpoint(trainer: Any) -> None:
    """A restarted trial continues from its last Tune checkpoint (none on a first start)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state(Path(d) / "state.pt")


def report_final(reporter: TuneReporter, result: Any) -> None:
    """The trial's last Tune result: its last metrics, why it stopped and after how many steps."""
    from ray import tune

    final = dict(reporter.result(result.steps_run, result.history[-1]))
    final.update(stop_reason=result.stop_reason, steps_run=result.steps_run)
    tune.report(final)


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune trainable: ``config`` holds the swept values under their dotted keys."""
    import torch
    from ray import tune

    from grokray.config import replace_dotted
    from grokray.sweep.stopper import StopCallback, StopRule
    from grokray.train import Trainer

    torch.set_num_threads(max(1, ctx.threads))
    values = {k: config[k] for k in ctx.swept_keys if k in config}
    cfg = replace_dotted(trial_config_from_dict(ctx.base), {k: v for k, v in config.items()})
    client = tracking.get_client(ctx.tracking_uri)
    trial_id = tune.get_context().get_trial_id()
    run_id = find_or_create_run(client, ctx, trial_id, values)

    with tempfile.TemporaryDirectory(prefix="grokray-trial-") as work:
        trainer = Trainer(cfg, work_dir=work)
        restore_from_tune_checkpoint(trainer)
        reporter = TuneReporter(run_id)
        callbacks = [tracking.RunLogger(client, run_id), reporter, StopCallback(StopRule(**ctx.stop))]
        status = "FAILED"
        try:
            result = trainer.run(callbacks)
            status = "FINISHED"
        finally:
            client.set_terminated(run_id, status=status)
    report_final(reporter, result)
