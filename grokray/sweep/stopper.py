"""Grokking-aware stopping: a trial stops only on a terminal state.

ASHA, HyperBand, median stopping or PBT ranked on test accuracy kill exactly the runs
that would grok: test accuracy is flat until the jump. So the default scheduler is
FIFO and a trial ends only when

* it diverged (NaN/inf loss or weights: the trainer's own rule),
* it never memorized: train accuracy below ``memorize_acc`` at ``memorize_by`` steps, and
  its target accuracy neither holds the threshold nor is still rising (``no_memorization``),
* it generalized and stayed so for a cleanup window: the smoothed target accuracy has held
  the verdict's threshold from ``t_generalize`` up to now (:func:`grokray.history.held_from`)
  and the run went on for ``cleanup_window`` x the steps it took to memorize and
  generalize (``generalized``); a run that generalized without memorizing waits for
  memorization until ``memorize_by``,
* or it ran out of budget (``max_steps``; the verdict records it as censored).

:class:`StopRule` is the pure rule on a metric history, with the verdict's smoothing and
"held" test, so the stopper and the label agree on when a run generalized; it is also
the parsed ``stopping:`` section of a sweep spec (one shape everywhere).
:class:`StopCallback` applies it inside the trial (where the full history is, also after a
restart from a checkpoint). :class:`Scheduler` is the section's choice of Tune scheduler.
No Ray import here.

Example:
    >>> rule = StopRule(memorize_by=1000, cleanup_window=1.0)
    >>> rule.check([{"step": s, "acc/train": 0.3} for s in (0, 500, 1000)])
    'no_memorization'
    >>> ok = [{"step": s, "acc/train": 1.0, "acc/test_inferred_ood": 0.9} for s in (100, 200, 300, 400)]
    >>> rule.check(ok[:2]), rule.check(ok)
    (None, 'generalized')
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from grokray.config import ConfigError, coerce
from grokray.history import clean_history, first_sustained, held_from, metric_series, rising, running_median
from grokray.sweep.params import int_at_least, mapping, no_unknown
from grokray.verdict import SPLITS, TARGET_ACC, TRAIN_ACC, VerdictParams

SCHEDULERS = ("fifo", "asha")
#: Metrics computed on training data only: the only ones a pruning scheduler may rank on.
#: Test accuracy is flat until the jump, so ranking on it kills exactly the runs that would grok.
TRAINING_METRICS = ("acc/train", "loss/train", "train_loss", "acc/train_inferred", "loss/train_inferred",
                    "acc/id_atomic", "loss/id_atomic", "acc/ood_atomic", "loss/ood_atomic",
                    "acc/train_augmented", "loss/train_augmented")
_RULE_KEYS = ("memorize_by", "memorize_acc", "split", "generalize_acc", "cleanup_window")


@dataclass(frozen=True)
class StopRule:
    memorize_by: int | None = None      # None: never stop for not memorizing
    memorize_acc: float | None = None   # None: the verdict's memorize_acc
    split: str = "ood"                  # target split for "generalized"
    generalize_acc: float | None = None  # None: the verdict's threshold for the split
    cleanup_window: float = 1.0         # after generalizing, train this fraction of the steps so far again
    params: VerdictParams = field(default_factory=VerdictParams)

    @classmethod
    def from_section(cls, raw: Mapping) -> "StopRule":
        """The rule of a spec's ``stopping:`` section (its scheduler keys are :class:`Scheduler`'s)."""
        s = cls()
        memorize_by = int_at_least(raw.get("memorize_by"), 1, "stopping.memorize_by")
        memorize_acc = coerce(raw.get("memorize_acc", s.params.memorize_acc), float, "stopping.memorize_acc")
        if not 0 < memorize_acc <= 1:
            raise ConfigError("must be in (0, 1]", key="stopping.memorize_acc", value=memorize_acc)
        split = raw.get("split", s.split)
        if split not in SPLITS:
            raise ConfigError(f"must be one of {', '.join(SPLITS)}", key="stopping.split", value=split)
        generalize_acc = None
        if raw.get("generalize_acc") is not None:
            generalize_acc = coerce(raw["generalize_acc"], float, "stopping.generalize_acc")
            if not 0 < generalize_acc <= 1:
                raise ConfigError("must be in (0, 1]", key="stopping.generalize_acc", value=generalize_acc)
        cleanup = coerce(raw.get("cleanup_window", s.cleanup_window), float, "stopping.cleanup_window")
        if cleanup < 0 or not math.isfinite(cleanup):
            raise ConfigError("must be >= 0", key="stopping.cleanup_window", value=cleanup)
        return cls(memorize_by=memorize_by, memorize_acc=memorize_acc, split=split, generalize_acc=generalize_acc,
                   cleanup_window=cleanup)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _RULE_KEYS}

    def check(self, history: Sequence[Mapping[str, Any]]) -> str | None:
        """A stop reason, or None to keep training."""
        entries, _ = clean_history(history)
        if not entries:
            return None
        p = self.params
        step = entries[-1]["step"]
        memorize_acc = self.memorize_acc if self.memorize_acc is not None else p.memorize_acc
        train = metric_series(entries, TRAIN_ACC)
        t_mem = first_sustained(train.steps, train.values, memorize_acc, p.sustain)
        target = metric_series(entries, TARGET_ACC[self.split])
        threshold = self.generalize_acc if self.generalize_acc is not None else p.generalize_acc(self.split)
        smoothed = running_median(target.values, p.smooth_window)
        t_gen = held_from(target.steps, smoothed, threshold, p.sustain)   # the verdict's rule: held up to now
        out_of_memorization_budget = self.memorize_by is not None and step >= self.memorize_by
        if t_gen is not None:
            if t_mem is None and not out_of_memorization_budget:
                return None  # generalized first: give memorization its budget (comprehension)
            settled = max(t_gen, t_mem) if t_mem is not None else t_gen
            if step >= settled * (1.0 + self.cleanup_window) and (target.steps > settled).sum() >= p.sustain:
                return "generalized"
            return None
        if out_of_memorization_budget and t_mem is None:
            if len(target.values) and rising(target.steps, smoothed):
                return None  # the target is on its way up: not a run to kill
            return "no_memorization"
        return None


class StopCallback:
    """Trainer callback: stop with the rule's reason (see :class:`grokray.train.TrainCallback`)."""

    def __init__(self, rule: StopRule):
        self.rule = rule

    def on_eval(self, step: int, metrics: dict, trainer: Any) -> str | None:
        return self.rule.check(trainer.history)


@dataclass(frozen=True)
class Scheduler:
    """The Tune scheduler of a sweep (``stopping.scheduler``): FIFO, or ASHA on a training metric."""
    name: str = "fifo"
    metric: str = "acc/train"
    mode: str = "max"
    grace_period: int = 1000
    reduction_factor: int = 3

    @classmethod
    def from_section(cls, raw: Mapping) -> "Scheduler":
        name = raw.get("scheduler", "fifo")
        if name not in SCHEDULERS:
            raise ConfigError(f"must be one of {', '.join(SCHEDULERS)}", key="stopping.scheduler", value=name)
        asha = mapping(raw.get("asha"), "stopping.asha")
        no_unknown(asha, ("metric", "mode", "grace_period", "reduction_factor"), "stopping.asha")
        if name != "asha":
            if asha:
                raise ConfigError("asha settings given but stopping.scheduler is not asha", key="stopping.asha",
                                  value=dict(asha))
            return cls()
        metric = asha.get("metric", "acc/train")
        if metric not in TRAINING_METRICS:
            raise ConfigError("ASHA may only rank trials on a training metric: test accuracy stays flat until "
                              "the grokking jump, so pruning on it kills the runs that would grok; use one of "
                              f"{', '.join(TRAINING_METRICS)}", key="stopping.asha.metric", value=metric)
        mode = asha.get("mode", "min" if metric.startswith("loss") or metric == "train_loss" else "max")
        if mode not in ("min", "max"):
            raise ConfigError("must be min or max", key="stopping.asha.mode", value=mode)
        grace = int_at_least(asha.get("grace_period", 1000), 1, "stopping.asha.grace_period")
        factor = int_at_least(asha.get("reduction_factor", 3), 2, "stopping.asha.reduction_factor")
        return cls(name, metric, mode, grace, factor)


def parse_stopping(raw: Any) -> tuple[StopRule, Scheduler]:
    """A spec's ``stopping:`` section: the stop rule and the scheduler."""
    raw = mapping(raw, "stopping")
    no_unknown(raw, (*_RULE_KEYS, "scheduler", "asha"), "stopping")
    return StopRule.from_section(raw), Scheduler.from_section(raw)
