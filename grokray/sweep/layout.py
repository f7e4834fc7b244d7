"""How a sweep's trials lie on Ray Tune's trials: a trial is a pack of one, or K trials share one.

The driver asks :meth:`Layout.plan` once (the packs are saved in the sweep's record, so a resume
finds the same ones), and from then on the driver, the one trainable
(:func:`grokray.sweep.trainable.run_trial`) and the trial names ask the layout: which members a
Tune trial trains, their MLflow trial ids and tags, Tune's search space, and the trainer that
trains them (:meth:`Layout.build`: the kind's solo trainer, or a
:class:`~grokray.packed.PackedTrainer`). Nothing else branches on packing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokray import tracking
from grokray.packed import PackedTrainer
from grokray.sweep.packing import describe, plan_packs, resolve_pack_size
from grokray.sweep.placement import trial_device
from grokray.sweep.stopper import StopCallback


@dataclass(frozen=True)
class Running:
    """What one Tune trial trains, built: a trainer and each member's callbacks (after the MLflow
    logger, before the Tune reporter) and run tags. One member: a solo :class:`~grokray.train.Trainer`
    built by the sweep kind; K members: a :class:`~grokray.packed.PackedTrainer`."""
    trainer: Any
    callbacks: list          # per member: a list of callbacks
    tags: list               # per member: tags for its run (the kind's, and a better run name)
    packed: bool = False

    @classmethod
    def solo(cls, trainer: Any, callbacks: list, tags: dict | None = None) -> "Running":
        """One member: a solo trainer (a sweep trial of an unpacked layout, or ``grokray train``)."""
        return cls(trainer, [list(callbacks)], [dict(tags or {})])

    def run(self, *extra: Any) -> list:
        """Train to the end with ``extra`` callbacks after each member's own (the Tune reporter, the
        terminal progress): one result per member."""
        if self.packed:
            return self.trainer.run([[*cbs, *extra] for cbs in self.callbacks])
        return [self.trainer.run([*self.callbacks[0], *extra])]


@dataclass(frozen=True)
class Layout:
    """How a sweep's trials lie on Ray Tune's trials: one each (the default: a trial is a pack of
    one), or packs of at most ``k`` members (``resources.pack``).

    >>> solo = Layout()
    >>> solo.members({"seed": 1}), solo.trial_ids("abc_00001", 1), solo.search_space({"seed": 1})
    ([{'seed': 1}], ['abc_00001'], {'seed': 1})
    >>> packed = Layout(packs=(({"seed": 0}, {"seed": 1}),), k=2)
    >>> packed.members({"pack": 0}), packed.trial_ids("abc_00001", 2), packed.n_tune_trials(2)
    ([{'seed': 0}, {'seed': 1}], ['abc_00001/0', 'abc_00001/1'], 1)
    """
    packs: tuple = ()        # each pack a tuple of member values, in grid order; () when unpacked
    k: int = 1

    @classmethod
    def plan(cls, spec: Any) -> "Layout":
        """A new sweep's layout, from ``resources.pack`` (Ray initialised: ``pack: auto`` may probe a GPU)."""
        k = resolve_pack_size(spec) if spec.resources.pack != 1 else 1
        return cls(tuple(tuple(p) for p in plan_packs(spec, k)), k) if k > 1 else cls()

    @classmethod
    def from_saved(cls, packs: list | None) -> "Layout":
        """A started sweep's layout, from the packs its record saved (:meth:`saved`): a resume finds
        the same packs, even on hardware where ``pack: auto`` would choose otherwise."""
        return cls(tuple(tuple(p) for p in packs), max(len(p) for p in packs)) if packs else cls()

    def saved(self) -> list | None:
        """What the sweep's record keeps (``SweepRecord.packs``)."""
        return [list(p) for p in self.packs] or None

    def members(self, config: dict) -> list[dict]:
        """The member values of the Tune trial with ``config``."""
        return [dict(v) for v in self.packs[config["pack"]]] if self.packs else [dict(config)]

    def trial_ids(self, tune_id: str, n: int) -> list[str]:
        """Each member's ``grokray.trial_id`` (its MLflow run is found again by it after a restart)."""
        return [f"{tune_id}/{slot}" for slot in range(n)] if self.packs else [tune_id]

    def member_tags(self, tune_id: str, members: list[dict]) -> list[dict]:
        """Tags each member's run is created with: its pack and slot; why the search chose it."""
        from grokray.sweep.boundary import REASON_KEY, REASON_TAG

        tags = [{REASON_TAG: str(v[REASON_KEY])} if REASON_KEY in v else {} for v in members]
        if self.packs:
            for slot, t in enumerate(tags):
                t.update({tracking.Tag.PACK: tune_id, tracking.Tag.PACK_SLOT: str(slot)})
        return tags

    def search_space(self, space: dict) -> dict:
        """Tune's space: the spec's, or one grid entry per pack (the members are in the layout)."""
        from ray import tune

        return {"pack": tune.grid_search(list(range(len(self.packs))))} if self.packs else space

    def n_tune_trials(self, n_trials: int) -> int:
        return len(self.packs) if self.packs else n_trials

    def trial_name(self, config: dict, trial_id: str) -> str | None:
        """A pack's Tune trial name (its members have their own run names); None: the trial's values."""
        # by the config alone ("pack" is no trial-config key): a namer restored from a sweep saved
        # before layouts existed has an empty layout and must still name its packs
        if set(config) == {"pack"}:
            return f"pack{config['pack']:03d}_{trial_id[-5:]}"
        return None

    def describe(self) -> str | None:
        return describe([list(p) for p in self.packs], self.k) if self.packs else None

    def build(self, spec: Any, members: list[dict], client: Any, run_ids: list[str], work_dir: str) -> Running:
        """The trainer and callbacks of one Tune trial: the kind's (one member), or a pack's."""
        if not self.packs:
            built = spec.kind_impl.build(spec, members[0], client, run_ids[0], work_dir)
            tags = dict(built.tags)
            if built.run_name:
                tags[tracking.Tag.RUN_NAME] = built.run_name
            return Running.solo(built.trainer, built.callbacks, tags)
        cfgs = [spec.trial_config(v) for v in members]
        pack = PackedTrainer(cfgs, work_dirs=[Path(work_dir) / str(slot) for slot in range(len(members))],
                             device=trial_device(cfgs[0].train.device))
        draw = not spec.classifier.enabled   # the classifier draws curves.png
        callbacks = [[tracking.RunLogger(client, rid, draw_curves=draw), StopCallback(spec.stopping)] for rid in run_ids]
        return Running(pack, callbacks, [{} for _ in run_ids], packed=True)


__all__ = ["Layout", "Running"]
