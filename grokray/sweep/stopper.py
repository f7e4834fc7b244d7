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

:class:`StopRule` is the pure rule on a metric history, with the same smoothing and
"sustained" test as the verdict, so the stopper and the label agree on when a run
generalized. :class:`StopCallback` applies it inside the trial (where the full history
is, also after a restart from a checkpoint): no Ray import here.

Example:
    >>> rule = StopRule(memorize_by=1000, cleanup_window=1.0)
    >>> rule.check([{"step": s, "acc/train": 0.3} for s in (0, 500, 1000)])
    'no_memorization'
    >>> ok = [{"step": s, "acc/train": 1.0, "acc/test_inferred_ood": 0.9} for s in (100, 200, 300, 400)]
    >>> rule.check(ok[:2]), rule.check(ok)
    (None, 'generalized')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from grokray.history import clean_history, first_sustained, held_from, metric_series, rising, running_median
from grokray.verdict import TARGET_ACC, TRAIN_ACC, VerdictParams


@dataclass
class StopRule:
    memorize_by: int | None = None      # None: never stop for not memorizing
    memorize_acc: float | None = None   # None: the verdict's memorize_acc
    split: str = "ood"
    generalize_acc: float | None = None  # None: the verdict's threshold for the split
    cleanup_window: float = 1.0
    params: VerdictParams = field(default_factory=VerdictParams)

    @classmethod
    def from_spec(cls, stopping: Any) -> "StopRule":
        """From a sweep spec's ``stopping`` section (:class:`grokray.sweep.spec.Stopping`)."""
        return cls(memorize_by=stopping.memorize_by, memorize_acc=stopping.memorize_acc, split=stopping.split,
                   generalize_acc=stopping.generalize_acc, cleanup_window=stopping.cleanup_window)

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
