"""grokray.verdict on synthetic histories: log-spaced evaluation steps like the trainer's,
train/test curves as sigmoids in log-step, seeded noise."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from grokray.train import eval_steps
from grokray.verdict import (CLASSIFIER_VERSION, DETAILS, LABELS, Verdict, VerdictParams, classify_history,
                             margin_confidence, running_median)

GOOD = {"causal_r1": 0.9, "bridge_given_correct": 0.97, "n_target": 500}


# --------------------------------------------------------------------------- builder

def rise(mid: float, lo: float = 0.0, hi: float = 1.0, width: float = 0.05):
    """A sigmoid in log10(step) from ``lo`` to ``hi``, half-way at step ``mid``."""
    def f(step: int) -> float:
        x = (math.log10(max(step, 1)) - math.log10(mid)) / width
        return lo + (hi - lo) / (1 + math.exp(-max(min(x, 50), -50)))
    return f


def flat(value: float):
    return lambda step: value


def build(max_steps: int = 30000, *, train=rise(600, width=0.04), ood=flat(0.03), id_=flat(0.03),
          bridge=flat(0.99), noise: float = 0.02, train_noise: float = 0.001, seed: int = 0) -> list[dict]:
    """A trainer-like history: ``eval_steps(max_steps, 24, 500)``, every metric the verdict reads."""
    rng = np.random.default_rng(seed)
    out = []
    for step in eval_steps(max_steps, 24, 500):
        tr = float(np.clip(train(step) + rng.normal(0, train_noise), 0, 1))
        entry = {"step": step, "acc/train": tr,
                 "acc/test_inferred_ood": float(np.clip(ood(step) + rng.normal(0, noise), 0, 1)),
                 "acc/test_inferred_id": float(np.clip(id_(step) + rng.normal(0, noise), 0, 1)),
                 "param_norm": 50.0 + step / 1000}
        for split in ("ood", "id"):
            entry[f"lens/{split}/bridge_found"] = float(np.clip(bridge(step), 0, 1))
            entry[f"lens/{split}/bridge_given_correct"] = float(np.clip(bridge(step), 0, 1))
        if step > 0:
            entry["train_loss"] = max(1e-4, 5.0 * (1 - tr))
        out.append(entry)
    return out


TEXTBOOK = dict(ood=rise(10000, lo=0.03, hi=0.8))   # memorize ~1k, OOD rises at ~10k


# --------------------------------------------------------------------------- table

CASES = {
    # name: (build kwargs, classify kwargs, expected label, expected detail, censored)
    "textbook_true": (TEXTBOOK, dict(evidence=GOOD), "true_grokking", "grokking", False),
    "fake_low_causal": (TEXTBOOK, dict(evidence={**GOOD, "causal_r1": 0.1}), "fake_grokking", "grokking", False),
    "fake_low_bridge": (TEXTBOOK, dict(evidence={**GOOD, "bridge_given_correct": 0.3}), "fake_grokking",
                        "grokking", False),
    "fake_from_history_lens": ({**TEXTBOOK, "bridge": flat(0.4)}, dict(evidence={"causal_r1": 0.9}),
                               "fake_grokking", "grokking", False),
    "comprehension": (dict(train=rise(2000, width=0.04), ood=rise(1800, lo=0.03, hi=0.95, width=0.04)),
                      dict(evidence=GOOD), "true_grokking", "comprehension", False),
    "confusion": (dict(train=rise(600, hi=0.7)), {}, "no_grokking", "confusion", True),
    "censored_short_run": (dict(max_steps=5000), {}, "no_grokking", "censored", True),
    "memorization_long_run": ({}, {}, "no_grokking", "memorization", True),
    "semi_late_partial_rise": (dict(ood=rise(8000, lo=0.03, hi=0.35)), {}, "no_grokking", "semi", True),
    "diverged_stop_reason": (TEXTBOOK, dict(stop_reason="diverged", evidence=GOOD), "no_grokking", "diverged",
                             False),
    "stopped_no_memorization": (dict(train=rise(600, hi=0.5), max_steps=3000),
                                dict(stop_reason="no_memorization", max_steps=30000), "no_grokking", "confusion",
                                False),
    "stopped_generalized": (dict(ood=rise(5000, lo=0.03, hi=0.8), max_steps=12000),
                            dict(stop_reason="generalized", max_steps=30000, evidence=GOOD),
                            "true_grokking", "grokking", False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_table(name):
    build_kw, kw, label, detail, censored = CASES[name]
    history = build(**build_kw)
    kw = {"max_steps": build_kw.get("max_steps", 30000), **kw}
    v = classify_history(history, **kw)
    assert (v.label, v.detail, v.censored) == (label, detail, censored), v.reasons
    assert 0.0 <= v.confidence <= 1.0
    assert v.label in LABELS and v.detail in DETAILS and v.reasons
    assert v.steps_run == history[-1]["step"]


def test_textbook_numbers_and_reasons():
    v = classify_history(build(**TEXTBOOK), max_steps=30000, evidence=GOOD)
    assert 800 <= v.t_memorize <= 1300
    assert 8000 <= v.t_generalize <= 14000
    assert v.delay_ratio == pytest.approx(v.t_generalize / v.t_memorize)
    assert v.log_step_gap == pytest.approx(math.log10(v.delay_ratio))
    assert v.delay_ratio > 5
    assert v.final_train_acc > 0.99 and 0.7 < v.final_target_acc < 0.9 and 0.75 < v.max_target_acc < 0.85
    assert (v.causal_r1, v.bridge_given_correct, v.bridge_found, v.n_target) == (0.9, 0.97, 0.99, 500)
    assert v.reasons[0].startswith(f"OOD acc >= 0.5 from step {v.t_generalize} to the end (smoothed), ")
    assert f"after memorization at {v.t_memorize}" in v.reasons[0]
    assert v.confidence > 0.9
    assert set(v.margins) == {"memorized", "generalized", "delay_ratio", "bridge_given_correct", "causal_r1"}
    assert v.confidence == pytest.approx(min(v.margins.values()))


def test_comprehension_when_generalized_before_or_without_memorizing():
    # OOD up at ~1k, train only at ~5k: generalized first
    v = classify_history(build(train=rise(4000, width=0.04), ood=rise(800, lo=0.03, hi=0.9)),
                         max_steps=30000, evidence=GOOD)
    assert (v.label, v.detail) == ("true_grokking", "comprehension")
    assert v.delay_ratio < 1
    # train plateaus at 0.97, OOD rises: generalized without memorizing (not "confusion")
    v = classify_history(build(train=rise(600, hi=0.97), ood=rise(3000, lo=0.03, hi=0.8)),
                         max_steps=30000, evidence=GOOD)
    # ... labelled on its target, with a detail that says train never held memorize_acc
    assert (v.label, v.detail, v.t_memorize, v.delay_ratio) == ("true_grokking", "unmemorized", None, None)
    assert "train acc never held >= 0.99" in v.reasons[0]


def test_censored_vs_memorization_numbers():
    short = classify_history(build(max_steps=5000), max_steps=5000)
    long = classify_history(build(max_steps=30000), max_steps=30000)
    assert short.steps_run == 5000 and long.steps_run == 30000
    assert 5000 / short.t_memorize < 20 <= 30000 / long.t_memorize
    assert any("censored, not proof of no grokking" in r for r in short.reasons)
    assert short.t_generalize is None and short.delay_ratio is None


def test_semi_numbers():
    v = classify_history(build(ood=rise(8000, lo=0.03, hi=0.35)), max_steps=30000)
    assert 0.3 < v.max_target_acc < 0.4
    assert any(r.startswith("late partial rise") for r in v.reasons)


# --------------------------------------------------------------------------- divergence and dirty data

def test_diverged_from_nan_train_loss_mid_run():
    history = build(**TEXTBOOK)
    history = [h for h in history if h["step"] <= 4000]
    history[-1]["train_loss"] = float("nan")
    v = classify_history(history, max_steps=30000)          # stop_reason unknown: read from the history
    assert (v.label, v.detail, v.censored, v.confidence) == ("no_grokking", "diverged", False, 1.0)
    assert v.reasons[0] == "diverged: non-finite train_loss/param_norm at step 4000"
    # an infinite param_norm too
    history[-1]["train_loss"] = 0.1
    history[-2]["param_norm"] = float("inf")
    v = classify_history(history, max_steps=30000, stop_reason="max_steps")
    assert v.detail == "diverged" and f"at step {history[-2]['step']}" in v.reasons[0]


def test_nan_and_missing_values_are_ignored():
    clean = classify_history(build(**TEXTBOOK), max_steps=30000, evidence=GOOD)
    dirty = build(**TEXTBOOK)
    rnd = random.Random(1)
    for entry in rnd.sample(dirty, 30):
        key = rnd.choice(["acc/train", "acc/test_inferred_ood", "lens/ood/bridge_found"])
        choice = rnd.random()
        if choice < 0.4:
            entry[key] = float("nan")
        elif choice < 0.7:
            entry[key] = float("inf")
        else:
            del entry[key]
    dirty.insert(5, {"acc/train": 0.5})                       # no step at all
    dirty.insert(9, {"step": float("nan"), "acc/train": 0.5})  # non-finite step
    v = classify_history(dirty, max_steps=30000, evidence=GOOD)
    assert (v.label, v.detail) == (clean.label, clean.detail) == ("true_grokking", "grokking")
    assert abs(math.log10(v.t_generalize / clean.t_generalize)) < 0.1
    assert abs(math.log10(v.t_memorize / clean.t_memorize)) < 0.1
    assert "2 history entries without a finite step ignored" in v.reasons
    assert v.n_evals < clean.n_evals


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_short_history(n):
    history = build()[:n]
    v = classify_history(history, max_steps=30000)
    assert v.label == "no_grokking" and v.detail == "confusion"
    assert v.confidence <= 0.4 * (n > 0) + 1e-9    # x n_evals/min_evals
    assert v.n_evals == n and v.steps_run == (history[-1]["step"] if history else 0)
    assert any(f"only {n} evaluations" in r for r in v.reasons)


def test_short_curve_keeps_detail_but_lowers_confidence():
    history = [{"step": s, "acc/train": 1.0, "acc/test_inferred_ood": 0.9} for s in (100, 200, 300)]
    v = classify_history(history, max_steps=300, evidence=GOOD)
    assert (v.label, v.detail) == ("true_grokking", "comprehension")
    assert v.confidence <= 0.6 and any("confidence x3/5" in r for r in v.reasons)


def test_isolated_spikes_do_not_count_as_generalized():
    base = build(ood=flat(0.3), noise=0.02, seed=3)
    for i in range(40, len(base), 7):        # isolated single-evaluation spikes above 0.5
        base[i]["acc/test_inferred_ood"] = 0.75
    v = classify_history(base, max_steps=30000, evidence=GOOD)
    assert v.t_generalize is None and v.label == "no_grokking" and v.detail == "semi"
    assert max(h["acc/test_inferred_ood"] for h in base) == 0.75
    assert v.max_target_acc < 0.4
    # without smoothing or sustain the spikes are crossings, but they do not hold: transient
    raw = classify_history(base, max_steps=30000, evidence=GOOD,
                           params=VerdictParams(smooth_window=1, sustain=1))
    assert raw.t_generalize is None and (raw.label, raw.detail) == ("no_grokking", "transient")


def test_final_spike_is_filtered_too():
    history = build(ood=flat(0.3), noise=0.0)
    history[-1]["acc/test_inferred_ood"] = 0.9
    v = classify_history(history, max_steps=30000)
    assert v.t_generalize is None and v.max_target_acc == pytest.approx(0.3)


def test_unsorted_and_duplicated_steps():
    history = build(**TEXTBOOK)
    ref = classify_history(history, max_steps=30000, evidence=GOOD)
    shuffled = [dict(h) for h in history] + [dict(h) for h in history[::3]]
    random.Random(0).shuffle(shuffled)
    assert classify_history(shuffled, max_steps=30000, evidence=GOOD) == ref
    # the last entry for a step wins
    dup = [{"step": s, "acc/train": 1.0, "acc/test_inferred_ood": 0.0} for s in (0, 100, 200, 300, 400, 500)]
    dup += [{"step": 100, "acc/train": 0.2}, {"step": 0, "acc/train": 0.1}]
    v = classify_history(dup, max_steps=500)
    assert v.t_memorize == 200


# --------------------------------------------------------------------------- split, evidence, confidence

def test_id_split_selects_id_metrics():
    history = build(id_=rise(3000, lo=0.03, hi=0.97), ood=flat(0.03))
    for h in history:                                 # lens: ID bridge present, OOD absent
        h["lens/ood/bridge_given_correct"], h["lens/id/bridge_given_correct"] = 0.1, 0.95
    on_id = classify_history(history, max_steps=30000, split="id", evidence={"causal_r1": 0.9})
    on_ood = classify_history(history, max_steps=30000, split="ood", evidence={"causal_r1": 0.9})
    assert (on_id.label, on_id.detail, on_id.split) == ("true_grokking", "grokking", "id")
    assert on_id.bridge_given_correct == 0.95 and 2500 <= on_id.t_generalize <= 5500
    assert on_id.reasons[0].startswith("ID acc >= 0.9 from step")
    assert (on_ood.label, on_ood.detail, on_ood.bridge_given_correct) == ("no_grokking", "memorization", 0.1)
    # an ID curve at 0.8 is "generalized" under the OOD threshold but not the ID one
    history = build(id_=rise(3000, lo=0.03, hi=0.8), ood=rise(3000, lo=0.03, hi=0.8))
    assert classify_history(history, max_steps=30000, split="id").detail == "semi"
    assert classify_history(history, max_steps=30000, split="ood").detail == "grokking"


def test_evidence_overrides_history_lens():
    history = build(**TEXTBOOK, bridge=flat(0.99))
    v = classify_history(history, max_steps=30000, evidence={"bridge_given_correct": 0.2, "bridge_found": 0.3})
    assert (v.label, v.bridge_given_correct, v.bridge_found) == ("fake_grokking", 0.2, 0.3)


def test_lens_only_and_no_circuit_evidence():
    history = build(**TEXTBOOK)
    full = classify_history(history, max_steps=30000, evidence=GOOD)
    lens_only = classify_history(history, max_steps=30000, evidence={"n_target": 500})  # lens from history
    assert lens_only.label == "true_grokking" and lens_only.causal_r1 is None
    assert lens_only.confidence < full.confidence
    assert lens_only.confidence <= 0.75 + 1e-9
    assert any(r.startswith("no causal test") for r in lens_only.reasons)
    for h in history:
        del h["lens/ood/bridge_given_correct"], h["lens/ood/bridge_found"]
    none = classify_history(history, max_steps=30000)
    assert (none.label, none.detail) == ("true_grokking", "grokking")
    assert none.confidence <= 0.5
    assert any(r.startswith("no circuit evidence") for r in none.reasons)
    # causal test alone decides, without a confidence penalty for the missing lens
    causal_only = classify_history(history, max_steps=30000, evidence={"causal_r1": 0.1})
    assert causal_only.label == "fake_grokking" and causal_only.confidence > 0.9


def test_small_target_set_lowers_confidence():
    history = build(**TEXTBOOK)
    big = classify_history(history, max_steps=30000, evidence=GOOD)
    small = classify_history(history, max_steps=30000, evidence={**GOOD, "n_target": 112})
    assert small.label == big.label
    assert small.confidence == pytest.approx(0.8 * big.confidence)
    assert any("112 queries" in r for r in small.reasons)


def test_confidence_is_monotone_in_the_margin():
    xs = np.linspace(0, 1, 21)
    cs = [margin_confidence(x, 0.5, 0.1) for x in xs]
    assert cs[10] == 0.5 and all(c <= 1 for c in cs)
    assert all(a > b for a, b in zip(cs[:10], cs[1:11])) and all(a < b for a, b in zip(cs[10:], cs[11:]))
    history = build(**TEXTBOOK)
    by_causal = [classify_history(history, max_steps=30000, evidence={**GOOD, "causal_r1": c}).confidence
                 for c in (0.52, 0.55, 0.6, 0.7, 0.9)]
    assert by_causal == sorted(by_causal) and by_causal[0] < 0.6 < by_causal[-1]
    by_level = [classify_history(build(ood=rise(10000, lo=0.03, hi=h), noise=0.0), max_steps=30000,
                                 evidence=GOOD).confidence for h in (0.53, 0.56, 0.6, 0.7, 0.9)]
    assert by_level == sorted(by_level) and by_level[0] < 0.7 < by_level[-1]
    by_fake = [classify_history(history, max_steps=30000, evidence={**GOOD, "causal_r1": c}).confidence
               for c in (0.45, 0.4, 0.3, 0.1)]
    assert by_fake == sorted(by_fake)


def test_running_median_shifts_inward_at_the_ends():
    assert running_median(np.array([0.0, 1.0, 0.0, 0.0, 1.0]), 3).tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert running_median(np.array([0.2, 0.4]), 3).tolist() == [pytest.approx(0.3)] * 2
    assert running_median(np.array([]), 3).tolist() == []


# --------------------------------------------------------------------------- serialization and validation

def test_to_dict_from_dict_round_trip():
    for kw in (dict(evidence=GOOD), {}):
        v = classify_history(build(**TEXTBOOK), max_steps=30000, **kw)
        d = json.loads(json.dumps(v.to_dict(), allow_nan=False))
        assert Verdict.from_dict(d) == v
        assert d["classifier_version"] == CLASSIFIER_VERSION == "1"
        assert d["params"] == VerdictParams().to_dict()
    v = classify_history([], max_steps=10)
    d = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert d["t_memorize"] is None and d["max_target_acc"] is None and Verdict.from_dict(d) == v
    assert Verdict(**{**v.to_dict(), "delay_ratio": float("nan")}).to_dict()["delay_ratio"] is None
    with pytest.raises(ValueError, match="unknown keys"):
        Verdict.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match="'bogus'"):
        Verdict.from_dict({**d, "label": "bogus"})


def _one_line_error(fn, *needles):
    with pytest.raises(ValueError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.mark.parametrize("field, value", [
    ("sustain", 0), ("sustain", 2.0), ("sustain", True), ("smooth_window", 0), ("min_evals", -1),
    ("memorize_acc", 1.5), ("memorize_acc", 0.0), ("memorize_acc", float("nan")), ("memorize_acc", "high"),
    ("generalize_acc_ood", 0.1), ("semi_acc_id", 0.95), ("circuit_causal", -0.2), ("comprehension_ratio", 0.5),
    ("memorization_ratio", 1.0), ("acc_scale", 0.0), ("log_scale", -1.0), ("no_circuit_cap", 0.8),
    ("lens_only_factor", 1.5), ("min_target_n", -5),
])
def test_bad_params_are_one_line_errors(field, value):
    msg = _one_line_error(lambda: VerdictParams(**{field: value}), field, repr(value))
    assert msg.startswith("VerdictParams.")
    if field in ("generalize_acc_ood", "semi_acc_id"):   # broken ordering: both ends named
        assert "semi_acc_" in msg and "generalize_acc_" in msg
    else:
        assert msg.endswith(f"(got {value!r})")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(split="OOD"), "'OOD'"), (dict(split="test"), "'test'"),
    (dict(max_steps=0), "max_steps"), (dict(max_steps="100"), "'100'"), (dict(max_steps=True), "True"),
    (dict(stop_reason=3), "stop_reason"),
    (dict(evidence={"causal_r1": 1.5}), "1.5"), (dict(evidence={"causal": 0.9}), "'causal'"),
    (dict(evidence={"n_target": 12.5}), "12.5"), (dict(evidence=[0.9]), "[0.9]"),
    (dict(params={"sustain": 0}), "VerdictParams.sustain"), (dict(params={"sustian": 2}), "'sustian'"),
    (dict(params=3), "params"),
])
def test_bad_arguments_are_one_line_errors(kwargs, needle):
    kw = {"max_steps": 1000, **kwargs}
    _one_line_error(lambda: classify_history(build(max_steps=1000), **kw), needle)


@pytest.mark.parametrize("history, needle", [
    ({"step": 0}, "history"), ("abc", "'abc'"), ([{"step": 0}, 5], "history[1]"),
    ([{"step": -5}], "-5"), ([{"step": 2.5}], "2.5"), ([{"step": "10"}], "'10'"),
    ([{"step": 1, "acc/train": "high"}], "'high'"),
])
def test_bad_history_is_a_one_line_error(history, needle):
    _one_line_error(lambda: classify_history(history, max_steps=1000), needle)


def test_params_as_mapping_and_split_thresholds():
    p = VerdictParams(generalize_acc_ood=0.7)
    assert (p.generalize_acc("ood"), p.generalize_acc("id"), p.semi_acc("ood"), p.semi_acc("id")) == (0.7, 0.9,
                                                                                                       0.2, 0.5)
    history = build(ood=rise(10000, lo=0.03, hi=0.6))
    assert classify_history(history, max_steps=30000, params={"generalize_acc_ood": 0.7}).detail == "semi"
    assert classify_history(history, max_steps=30000).detail == "grokking"


def test_sustain_at_the_end_needs_all_remaining_evaluations():
    steps = [0, 10, 20, 30, 40, 50]
    last_only = [{"step": s, "acc/train": 1.0 if s == 50 else 0.5} for s in steps]
    assert classify_history(last_only, max_steps=50).t_memorize == 50
    dip_at_end = [{"step": s, "acc/train": 1.0 if s == 40 else 0.5} for s in steps]
    assert classify_history(dip_at_end, max_steps=50).t_memorize is None
    assert classify_history(dip_at_end, max_steps=50, params=VerdictParams(sustain=1)).t_memorize == 40


def test_diverged_after_generalizing_says_so():
    v = classify_history(build(**TEXTBOOK), max_steps=30000, stop_reason="diverged", evidence=GOOD)
    assert (v.label, v.detail) == ("no_grokking", "diverged") and v.t_generalize is not None
    assert f"OOD acc had reached 0.5 at step {v.t_generalize} before diverging" in v.reasons
