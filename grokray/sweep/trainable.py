"""The one Ray Tune trainable of every sweep kind: Tune's values -> the kind's Trainer (or a pack's)
-> an MLflow child run per member + Tune reports.

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
from grokray.sweep.layout import Layout
from grokray.sweep.naming import run_name
from grokray.sweep.placement import trial_device  # noqa: F401 - where kinds and tests import it from

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
    layout: Layout = Layout()  # how the sweep's trials lie on Tune's (a trial is a pack of one by default)

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
    """Member callback: a Tune result per evaluation, a checkpoint of the whole trial (the trainer,
    or the pack a member belongs to) every few seconds and at a member's budget. One class for 1..K
    members: a pack's results also name the member's ``slot`` and every member's run."""

    def __init__(self, run_ids: list[str], reported: tuple[str, ...], every_s: float | None = None):
        self.run_ids, self.reported = list(run_ids), reported
        self.every_s = CHECKPOINT_EVERY_S if every_s is None else every_s
        self.last_ckpt = time.monotonic()

    def result(self, step: int, metrics: dict, slot: int = 0) -> dict:
        out = {k: metrics[k] for k in self.reported if k in metrics}
        out.update(step=step, mlflow_run_id=self.run_ids[slot], pid=os.getpid())
        if len(self.run_ids) > 1:
            out.update(slot=slot, mlflow_run_ids=list(self.run_ids))
        return out

    def on_eval(self, step: int, metrics: dict, member: Any) -> None:
        from ray import tune

        whole = getattr(member, "pack", member)          # what a restart restores: the trainer or the pack
        result = self.result(step, metrics, getattr(member, "index", 0))
        if time.monotonic() - self.last_ckpt >= self.every_s or step >= member.cfg.train.max_steps:
            with tempfile.TemporaryDirectory(prefix="grokray-ckpt-") as d:
                whole.save_state(Path(d) / "state.pt")
                (Path(d) / "meta.json").write_text(json.dumps({"run_ids": self.run_ids, "step": whole.step}))
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))
            self.last_ckpt = time.monotonic()
        else:
            tune.report(result)
        return None

    def final(self, results: list, split: str = "ood") -> dict:
        """The Tune trial's last result: the last metrics of its longest-running member, why each
        stopped and after how many steps, and that member's Liu et al. phase and times read off
        its curves (:func:`curve_phase`, target ``split``)."""
        last = max(results, key=lambda r: r.steps_run)
        final = dict(self.result(last.steps_run, last.history[-1], results.index(last)))
        final.update(stop_reason=", ".join(sorted({r.stop_reason for r in results})), steps_run=last.steps_run)
        final.update(curve_phase(last, split))
        if len(results) > 1:
            final["members"] = [{"run_id": rid, "stop_reason": r.stop_reason, "steps_run": r.steps_run}
                                for rid, r in zip(self.run_ids, results)]
        return final


def curve_phase(result: Any, split: str = "ood") -> dict:
    """Liu et al.'s phase (grokking / comprehension / memorization / confusion / diverged) and the
    times the verdict reads off one member's curves alone (no checkpoint, no circuit evidence):
    what ``method: boundary`` refines on as soon as the trial ends, before the classifier's label
    (:func:`grokray.sweep.boundary.behaviour_label`). Grokking and comprehension differ only in the
    delay t_generalize / t_memorize, so a search on "generalized" alone could not find where
    grokking ends. ``{}`` for a history the verdict cannot read (nothing to add then).

    >>> from types import SimpleNamespace as R
    >>> h = [{"step": s, "acc/train": 1.0 if s >= 1000 else 0.1, "acc/test_inferred_ood": 0.9 if s >= 5000 else 0.0}
    ...      for s in range(0, 10001, 250)]
    >>> curve_phase(R(history=h, steps_run=10000, stop_reason="generalized"))
    {'phase': 'grokking', 't_memorize': 1000, 't_generalize': 5000}
    """
    from grokray.verdict import classify_history
    try:
        v = classify_history(result.history, max_steps=max(1, int(result.steps_run)), stop_reason=result.stop_reason,
                             split=split)
    except ValueError:
        return {}
    return {"phase": v.phase, "t_memorize": v.t_memorize, "t_generalize": v.t_generalize}


def restore_state(trainer: Any) -> None:
    """A restarted trial (or pack) continues from its last Tune checkpoint (none on a first start)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state(Path(d) / "state.pt")


def run_trial(config: dict, ctx: TrialContext) -> None:
    """The Tune trainable of every sweep, packed or not: ``config`` holds the trial's values under
    their spec keys, or a pack's index (the layout knows its members)."""
    import torch
    from ray import tune

    torch.set_num_threads(ctx.threads)
    spec, layout = ctx.spec, ctx.layout
    keys = spec.kind_impl.trial_keys(spec)
    members = layout.members(config)
    tune_id = tune.get_context().get_trial_id()
    client = tracking.get_client(ctx.tracking_uri)
    run_ids = [find_or_create_run(client, ctx, trial_id, {k: v[k] for k in keys if k in v}, tags=tags)
               for trial_id, tags, v in zip(layout.trial_ids(tune_id, len(members)),
                                            layout.member_tags(tune_id, members), members)]
    # FAILED also when the kind cannot build (e.g. a source checkpoint is gone)
    with tracking.run_lifecycle(client, run_ids), tempfile.TemporaryDirectory(prefix="grokray-trial-") as work:
        running = layout.build(spec, members, client, run_ids, work)
        for rid, tags in zip(run_ids, running.tags):
            if tags:
                tracking.log_tags(client, rid, tags)
        restore_state(running.trainer)
        reporter = TuneReporter(run_ids, spec.kind_impl.reported)
        results = running.run(reporter)
    tune.report(to_plain(reporter.final(results, split=spec.map_split)))
