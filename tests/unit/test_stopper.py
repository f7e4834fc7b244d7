"""The grokking-aware stop rule, table-driven on synthetic histories (no Ray)."""
import math

import pytest

from grokray.sweep.stopper import StopRule
from grokray.train import eval_steps


def history(train, ood, max_steps=20000, nan_at=None):
    out = []
    for s in eval_steps(max_steps, 24, 500):
        h = {"step": s, "acc/train": train(s), "acc/test_inferred_ood": ood(s), "acc/test_inferred_id": ood(s)}
        if nan_at is not None and s >= nan_at:
            h["acc/test_inferred_ood"] = math.nan
        out.append(h)
    return out


def upto(h, step):
    return [e for e in h if e["step"] <= step]


def mem(at):
    return lambda s: 1.0 if s >= at else 0.3


def gen(at, level=0.9):
    return lambda s: level if s >= at else 0.02


RULE = StopRule(memorize_by=3000, cleanup_window=1.0)


@pytest.mark.parametrize("name, h, step, expected", [
    ("not memorized by the memorization budget", history(mem(10**9), gen(10**9)), 3000, "no_memorization"),
    ("not memorized yet, before the budget", history(mem(10**9), gen(10**9)), 2900, None),
    ("memorized, test flat: keep going (grokking may come)", history(mem(1000), gen(10**9)), 20000, None),
    ("generalized at 5000, cleanup window not over", history(mem(1000), gen(5000)), 9000, None),
    ("generalized at 5000, stable through the window", history(mem(1000), gen(5000)), 10000, "generalized"),
    ("generalized before memorizing: wait for memorization", history(mem(4000), gen(1000)), 5000, None),
    ("comprehension settles at max(t_mem, t_gen)", history(mem(4000), gen(1000)), 8000, "generalized"),
    ("single-evaluation spike does not count", history(mem(1000), lambda s: 0.9 if s == 6000 else 0.02),
     20000, None),
    ("rose then collapsed: not stable", history(mem(1000), lambda s: 0.9 if 5000 <= s < 9500 else 0.02),
     10000, None),
    ("partial rise below threshold", history(mem(1000), gen(2000, level=0.35)), 20000, None),
    ("empty history", [], 0, None),
    # generalization must hold: a transient that falls back never counts
    ("transient spike at 100, back at chance", history(mem(1000), lambda s: 0.7 if 60 <= s <= 150 else 0.2),
     5000, None),
    ("transient, then a real rise: the window counts from the rise",
     history(mem(1000), lambda s: 0.7 if 60 <= s <= 150 or s >= 6000 else 0.2), 9000, None),
    ("transient, then a real rise held through its window",
     history(mem(1000), lambda s: 0.7 if 60 <= s <= 150 or s >= 6000 else 0.2), 12000, "generalized"),
    # memorize_by never kills a run whose target generalized or is still rising
    ("generalized, train at 0.97 (never memorized), at the budget: generalized, not no_memorization",
     history(lambda s: 0.97, gen(500)), 3000, "generalized"),
    ("generalized, train at 0.97, before the budget: wait for memorization",
     history(lambda s: 0.97, gen(500)), 2500, None),
    ("not memorized, target still rising at the budget: keep going",
     history(lambda s: 0.97, lambda s: min(0.45, 0.1 * s / 1000)), 3000, None),
    ("not memorized, target flat at the budget: stop", history(lambda s: 0.97, lambda s: 0.1), 3000,
     "no_memorization"),
])
def test_stop_rule(name, h, step, expected):
    assert RULE.check(upto(h, step)) == expected, name


def test_no_memorization_budget_means_never_stop_for_it():
    assert StopRule(memorize_by=None).check(history(mem(10**9), gen(10**9))) is None


def test_split_and_threshold():
    h = upto(history(mem(1000), gen(3000, level=0.6)), 10000)
    assert StopRule(split="ood").check(h) == "generalized"                 # OOD threshold 0.5
    assert StopRule(split="id").check(h) is None                           # ID threshold 0.9
    assert StopRule(split="id", generalize_acc=0.55).check(h) == "generalized"


def test_nan_target_values_are_ignored():
    h = upto(history(mem(1000), gen(3000), nan_at=20000), 10000)
    assert RULE.check(h) == "generalized"
