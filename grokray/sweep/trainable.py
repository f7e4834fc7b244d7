"""The one Ray Tune trainable of every sweep kind: Tune's values -> the kind's Trainer -> an MLflow
child run + Tune reports.

:func:`run_trial` does what every kind shares: find (a restart) or create the trial's MLflow
child run, build the trainer through the kind (:meth:`~grokray.sweep.kinds.base.SweepKind.build`),
restore it from the trial's last Tune checkpoint, train with the kind's callbacks plus a
:class:`TuneReporter`, and mark the run FINISHED or FAILED. What a restarted trial needs
(worker killed, driver resumed) comes from two places:

* the Tune checkpoint (``state.pt``: weights, optimizer, data order, history), saved at
  most every :data:`CHECKPOINT_EVERY_S` seconds and at the budget;
* the MLflow child run, found again by its ``grokray.trial_id`` tag, whose already
  logged steps are skipped (:class:`grokray.tracking.RunLogger`): no step is logged
  twice and, since training is deterministic on CPU, none is lost.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokray import tracking
from grokray.config import to_plain
from grokray.sweep.naming import run_name

#: Seconds between two Tune checkpoints of a running trial (plus one at the budget);
#: ``$GROKRAY_CHECKPOINT_EVERY_S`` overrides it (tests use a short one).
CHECKPOINT_EVERY_S = float(os.environ.get("GROKRAY_CHECKPOINT_EVERY_S", 15.0))


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its values; passed once with ``tune.with_parameters``."""
    spec: Any                  # the parsed SweepSpec (frozen, picklable): kind, base, stop rule, ...
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    packs: tuple = ()          # a packed sweep's packs: each a tuple of member values (grokray.sweep.packing)

    @property
    def threads(self) -> int:
        return max(1, int(self.spec.resources.cpu))


def trial_label(spec: Any, config: dict[str, Any]) -> str:
    """A trial's readable name from its values (grouped values by name or by what differs)."""
    keys = spec.kind_impl.trial_keys(spec)
    return run_name(config, keys, spec.alternatives())


def find_or_create_run(client: Any, ctx: TrialContext, trial_id: str, values: dict[str, Any],
                       tags: dict[str, str] | None = None) -> str:
    """The trial's MLflow child run: the existing one (a restart) or a new one (with ``tags``)."""
    found = tracking.find_trial_run(client, ctx.experiment_id, ctx.spec.name, trial_id)
    if found is not None:
        if found.info.status != "RUNNING":
            client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    tags = {tracking.Tag.SWEEP: ctx.spec.name, tracking.Tag.TRIAL_ID: trial_id,
            tracking.Tag.SWEPT: json.dumps(to_plain(values), sort_keys=True), **(tags or {})}
    return tracking.start_run(client, ctx.experiment_id, trial_label(ctx.spec, values), kind=ctx.spec.kind,
                              parent_run_id=ctx.parent_run_id, tags=tags)


class TuneReporter:
    """Trainer callback: a Tune result per evaluation, a checkpoint every few seconds."""

    def __init__(self, run_id: str, reported: tuple[str, ...], every_s: float | None = None):
        self.run_id, self.reported = run_id, reported
        self.every_s = CHECKPOINT_EVERY_S if every_s is None else every_s
        self.last_ckpt = time.monotonic()

    def result(self, step: int, metrics: dict) -> dict:
        out = {k: metrics[k] for k in self.reported if k in metrics}
        out.update(step=step, mlflow_run_id=self.run_id, pid=os.getpid())
        return out

    def on_eval(self, step: int, metrics: dict, trainer: Any) -> None:
        from ray import tune

        if time.monotonic() - self.last_ckpt >= self.every_s or step >= trainer.cfg.train.max_steps:
            with tempfile.TemporaryDirectory(prefix="grokray-ckpt-") as d:
                trainer.save_state(Path(d) / "state.pt")
                (Path(d) / "meta.json").write_text(json.dumps({"run_id": self.run_id, "step": step}))
                tune.report(self.result(step, metrics), checkpoint=tune.Checkpoint.from_directory(d))
            self.last_ckpt = time.monotonic()
        else:
            tune.report(self.result(step, metrics))
        return None

    def final(self, result: Any) -> dict:
        """The trial's last Tune result: its last metrics, why it stopped and after how many steps."""
        final = dict(self.result(result.steps_run, result.history[-1]))
        final.update(stop_reason=result.stop_reason, steps_run=result.steps_run)
        return final


def restore_state(trainer: Any) -> None:
    """A restarted trial (or pack) continues from its last Tune checkpoint (none on a first start)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state(Path(d) / "state.pt")


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune trainable: ``config`` holds the trial's values under their spec keys."""
    import torch
    from ray import tune

    torch.set_num_threads(ctx.threads)
    kind = ctx.spec.kind_impl
    values = {k: config[k] for k in kind.trial_keys(ctx.spec) if k in config}
    client = tracking.get_client(ctx.tracking_uri)
    from grokray.sweep.boundary import REASON_KEY, REASON_TAG

    note = {REASON_TAG: str(config[REASON_KEY])} if REASON_KEY in config else None   # why the search chose it
    run_id = find_or_create_run(client, ctx, tune.get_context().get_trial_id(), values, tags=note)
    status = "FAILED"  # also when the kind cannot build its trainer (e.g. a source checkpoint is gone)
    try:
        with tempfile.TemporaryDirectory(prefix="grokray-trial-") as work:
            built = kind.build(ctx.spec, config, client, run_id, work)
            tags = dict(built.tags)
            if built.run_name:
                tags[tracking.Tag.RUN_NAME] = built.run_name
            if tags:
                tracking.log_tags(client, run_id, tags)
            restore_state(built.trainer)
            reporter = TuneReporter(run_id, kind.reported)
            result = built.trainer.run([*built.callbacks, reporter])
            status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    tune.report(reporter.final(result))


def trial_device(spec_device: str) -> str | None:
    """The device a trial process trains on, from ``train.device`` and what Ray assigned it: ``auto``
    with no GPU assigned is the CPU (:func:`grokray.device.resolve_auto`); None leaves the config's
    choice (outside Ray, or a device named explicitly)."""
    if spec_device != "auto":
        return None
    import ray
    import torch

    from grokray.device import resolve_auto

    try:
        assigned = bool(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return None
    return resolve_auto(spec_device, assigned, torch.cuda.is_available())
