"""grokray.verdict on synthetic histories: log-spaced evaluation steps like the trainer's,
train/test curves as sigmoids in log-step, seeded noise."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from grokray.history import running_median
from grokray.train import eval_steps
from grokray.verdict import (BEHAVIOURS, CLASSIFIER_VERSION, LABELS, Verdict, VerdictParams, classify_history,
                             margin_confidence, rate_confidence)


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


def spike(lo: float, hi: float, start: int, stop: int):
    """``hi`` between ``start`` and ``stop`` (inclusive), ``lo`` elsewhere."""
    return lambda step: hi if start <= step <= stop else lo


# --------------------------------------------------------------------------- table

GOOD = {"interchange": 0.9, "interchange_n": 200, "interchange_control": 0.95, "bridge_given_correct": 0.97,
        "lens_n_correct": 200, "causal_r1": 0.9, "shortcut_best": 0.05, "n_target": 300, "n_intermediate": 1,
        "carry": 0.85, "carry_n": 200}

CASES = {
    # name: (build kwargs, classify kwargs, label, detail, label by the lens criterion, censored)
    "textbook_true": (TEXTBOOK, dict(evidence=GOOD), "true_grokking", "grokking, lens-visible", "true_grokking",
                      False),
    "interchange_fails_is_fake": (TEXTBOOK, dict(evidence={**GOOD, "interchange": 0.1}), "fake_grokking",
                                  "grokking, lens-visible", "true_grokking", False),
    # a bridge in a basis the unembedding does not read is still a bridge (issue: the 2x1 model)
    "lens_invisible_but_mediated_is_true": (TEXTBOOK, dict(evidence={**GOOD, "bridge_given_correct": 0.46}),
                                            "true_grokking", "grokking, lens-invisible", "fake_grokking", False),
    "lens_criterion_follows_its_threshold": (TEXTBOOK, dict(evidence={**GOOD, "bridge_given_correct": 0.46},
                                                            criterion="lens"), "fake_grokking",
                                             "grokking, lens-invisible", "fake_grokking", False),
    # late, but held within reach of the shortcut: no generalization beyond the data's prior (not fake)
    "shortcut_level_is_no_grokking": (dict(ood=rise(3000, lo=0.03, hi=0.62)),
                                      dict(evidence={**GOOD, "shortcut_best": 0.6}),
                                      "no_grokking", "shortcut, lens-visible", "no_grokking", False),
    # the shortcut regime as measured: held ~0.6 under a 0.72 shortcut, 0.57 of the answers follow a swapped
    # bridge: not beyond the prior, whatever the mechanism
    "shortcut_level_composing": (dict(ood=rise(3000, lo=0.03, hi=0.6)),
                                 dict(evidence={**GOOD, "shortcut_best": 0.72, "interchange": 0.57}),
                                 "no_grokking", "shortcut, lens-visible", "no_grokking", False),
    # a shortcut near 1.0: the bar stays below 1, a perfect mediated model is true, one at its level is not
    "shortcut_above_0.9_perfect_model_is_true": (dict(ood=rise(10000, lo=0.03, hi=0.99), noise=0.002),
                                                 dict(evidence={**GOOD, "shortcut_best": 0.92}),
                                                 "true_grokking", "grokking, lens-visible", "true_grokking", False),
    "shortcut_above_0.9_at_its_level": (dict(ood=rise(10000, lo=0.03, hi=0.93), noise=0.002),
                                        dict(evidence={**GOOD, "shortcut_best": 0.92}),
                                        "no_grokking", "shortcut, lens-visible", "no_grokking", False),
    "plateau_at_the_shortcut_level": (dict(ood=rise(3000, lo=0.03, hi=0.3)),
                                      dict(evidence={**GOOD, "shortcut_best": 0.3}), "no_grokking", "semi",
                                      "no_grokking", True),
    "one_block_application_is_never_true": (TEXTBOOK, dict(evidence={**GOOD, "n_intermediate": 0,
                                                                     "interchange": None}),
                                            "fake_grokking", "grokking, lens-invisible", "fake_grokking", False),
    # a shortcut learned before the facts: OOD spikes to 0.7 around step 75-120, falls back to ~0.25
    "early_transient_spike": (dict(ood=spike(0.25, 0.7, 60, 130)), dict(evidence=GOOD), "no_grokking", "transient",
                              "no_grokking", True),
    # He et al.'s first-hop run: reached 0.98, later fell: never grokking by its end
    "late_collapse": (dict(ood=spike(0.2, 0.85, 5000, 20000)), dict(evidence=GOOD), "no_grokking", "transient",
                      "no_grokking", True),
    # generalized as it memorized: Liu et al.'s comprehension, not grokking; its mechanism still reported
    "comprehension_is_not_grokking": (dict(train=rise(2000, width=0.04), ood=rise(1800, lo=0.03, hi=0.95,
                                                                                 width=0.04)),
                                      dict(evidence=GOOD), "no_grokking", "comprehension, lens-visible",
                                      "no_grokking", False),
    "confusion": (dict(train=rise(600, hi=0.7)), {}, "no_grokking", "confusion", "no_grokking", True),
    "censored_short_run": (dict(max_steps=5000), {}, "no_grokking", "censored", "no_grokking", True),
    "memorization_long_run": ({}, {}, "no_grokking", "memorization", "no_grokking", True),
    "semi_late_partial_rise": (dict(ood=rise(8000, lo=0.03, hi=0.35)), {}, "no_grokking", "semi", "no_grokking",
                               True),
    "diverged_stop_reason": (TEXTBOOK, dict(stop_reason="diverged", evidence=GOOD), "no_grokking", "diverged",
                             "no_grokking", False),
    "stopped_no_memorization": (dict(train=rise(600, hi=0.5), max_steps=3000),
                                dict(stop_reason="no_memorization", max_steps=30000), "no_grokking", "confusion",
                                "no_grokking", False),
    "stopped_generalized": (dict(ood=rise(5000, lo=0.03, hi=0.8), max_steps=12000),
                            dict(stop_reason="generalized", max_steps=30000, evidence=GOOD),
                            "true_grokking", "grokking, lens-visible", "true_grokking", False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_table(name):
    build_kw, kw, label, detail, label_lens, censored = CASES[name]
    history = build(**build_kw)
    kw = {"max_steps": build_kw.get("max_steps", 30000), **kw}
    v = classify_history(history, **kw)
    assert (v.label, v.detail, v.labels["lens"], v.censored) == (label, detail, label_lens, censored), v.reasons
    assert v.labels[v.criterion] == v.label and set(v.labels) == {"interchange", "carry", "lens"}
    assert 0.0 <= v.confidence <= 1.0
    assert v.label in LABELS and v.behaviour in BEHAVIOURS and v.reasons
    assert v.steps_run == history[-1]["step"]


def test_textbook_numbers_and_reasons():
    v = classify_history(build(**TEXTBOOK), max_steps=30000, evidence=GOOD)
    assert 800 <= v.t_memorize <= 1300
    assert 8000 <= v.t_generalize <= 14000
    assert v.delay_ratio == pytest.approx(v.t_generalize / v.t_memorize)
    assert v.log_step_gap == pytest.approx(math.log10(v.delay_ratio))
    assert v.delay_ratio > 5
    assert v.final_train_acc > 0.99 and 0.7 < v.final_target_acc < 0.9 and 0.75 < v.max_target_acc < 0.85
    assert 0.7 < v.final_target_level < 0.85
    assert (v.interchange, v.interchange_n, v.interchange_control) == (0.9, 200, 0.95)
    assert (v.causal_r1, v.bridge_given_correct, v.n_target, v.shortcut_best) == (0.9, 0.97, 300, 0.05)
    assert v.reasons[0].startswith(f"OOD acc >= 0.5 from step {v.t_generalize} to the end (smoothed, final ")
    assert f"after memorization at {v.t_memorize}" in v.reasons[0]
    # every verdict names the numbers it rests on: final accuracy, shortcut, interchange, lens
    text = " ".join(v.reasons)
    for needle in ("best shortcut 0.05", "interchange 0.90 >= 0.8 over 200 correct answers",
                   "control keeps 0.95", "lens 0.97 >= 0.8 over 200 correct answers"):
        assert needle in text, needle
    assert v.confidence > 0.9 and v.confidence == pytest.approx(min(v.margins.values()))
    assert set(v.margins) == {"memorized", "generalized", "delay_ratio", "shortcut", "interchange"}
    assert v.summary().startswith("true_grokking (grokking, lens-visible, confidence ")


def test_comprehension_when_generalized_before_or_without_memorizing():
    # OOD up at ~1k, train only at ~5k: generalized first
    v = classify_history(build(train=rise(4000, width=0.04), ood=rise(800, lo=0.03, hi=0.9)),
                         max_steps=30000, evidence=GOOD)
    assert (v.label, v.behaviour, v.phase) == ("no_grokking", "comprehension", "comprehension")
    assert v.delay_ratio < 1 and v.mediated["interchange"] is True     # its mechanism is still reported
    # train plateaus at 0.97, OOD rises: generalized without memorizing (not "confusion")
    v = classify_history(build(train=rise(600, hi=0.97), ood=rise(3000, lo=0.03, hi=0.8)),
                         max_steps=30000, evidence=GOOD)
    # ... labelled on its target, with a detail that says train never held memorize_acc
    assert (v.label, v.behaviour, v.t_memorize, v.delay_ratio) == ("no_grokking", "unmemorized", None, None)
    assert "train acc never held >= 0.99" in v.reasons[0]


def test_transient_is_recorded_with_its_step_and_never_generalization():
    v = classify_history(build(ood=spike(0.25, 0.7, 60, 130)), max_steps=30000, evidence=GOOD)
    assert v.t_generalize is None and 60 <= v.t_transient <= 130
    assert any(r.startswith("transient: smoothed OOD acc reached 0.7") for r in v.reasons)
    # a real rise after the transient counts from the rise, not from the transient
    v = classify_history(build(ood=lambda s: 0.7 if 60 <= s <= 130 or s >= 8000 else 0.25), max_steps=30000,
                         evidence=GOOD)
    assert v.label == "true_grokking" and v.t_transient is None and 7000 <= v.t_generalize <= 9000


def test_noisy_small_test_set_is_less_sure_than_a_large_one():
    history = build(ood=rise(5000, lo=0.03, hi=0.62), noise=0.08, seed=4)
    small = classify_history(history, max_steps=30000, evidence={**GOOD, "n_target": 40, "interchange_n": 25})
    large = classify_history(history, max_steps=30000, evidence={**GOOD, "n_target": 400, "interchange_n": 240})
    assert small.label == large.label
    assert small.confidence < large.confidence - 0.2


def test_insufficient_evidence_is_not_a_rate():
    v = classify_history(build(**TEXTBOOK), max_steps=30000, evidence={**GOOD, "interchange_n": 7,
                                                                       "lens_n_correct": 7})
    assert v.interchange is None and v.bridge_given_correct is None and v.lens_visible is None
    assert v.label == "true_grokking" and v.confidence <= 0.5          # behaviour only, capped
    assert v.mediated == {"interchange": None, "carry": True, "lens": None}
    assert any(r.startswith("interchange: insufficient: measured on 7 correct answers (< 20)") for r in v.reasons)
    assert any(r.startswith("lens: insufficient: measured on 7 correct answers") for r in v.reasons)


def test_censored_verdicts_rank_below_verdicts_on_hundreds_of_queries():
    censored = classify_history(build(max_steps=5000), max_steps=5000, evidence=GOOD)
    true = classify_history(build(**TEXTBOOK), max_steps=30000, evidence=GOOD)
    fake = classify_history(build(**TEXTBOOK), max_steps=30000, evidence={**GOOD, "interchange": 0.05})
    assert censored.behaviour == "censored" and censored.confidence <= 0.5
    assert min(true.confidence, fake.confidence) > 0.9 > censored.confidence


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
    assert (v.label, v.behaviour, v.censored, v.confidence) == ("no_grokking", "diverged", False, 1.0)
    assert v.reasons[0] == "diverged: non-finite train_loss/param_norm at step 4000"
    # an infinite param_norm too
    history[-1]["train_loss"] = 0.1
    history[-2]["param_norm"] = float("inf")
    v = classify_history(history, max_steps=30000, stop_reason="max_steps")
    assert v.behaviour == "diverged" and f"at step {history[-2]['step']}" in v.reasons[0]


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
    assert (v.label, v.detail) == (clean.label, clean.detail) == ("true_grokking", "grokking, lens-visible")
    assert abs(math.log10(v.t_generalize / clean.t_generalize)) < 0.1
    assert abs(math.log10(v.t_memorize / clean.t_memorize)) < 0.1
    assert "2 history entries without a finite step ignored" in v.reasons
    assert v.n_evals < clean.n_evals


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_short_history(n):
    history = build()[:n]
    v = classify_history(history, max_steps=30000)
    assert v.label == "no_grokking" and v.behaviour == "confusion"
    assert v.confidence <= 0.4 * (n > 0) + 1e-9    # x n_evals/min_evals
    assert v.n_evals == n and v.steps_run == (history[-1]["step"] if history else 0)
    assert any(f"only {n} evaluations" in r for r in v.reasons)


def test_short_curve_keeps_detail_but_lowers_confidence():
    history = [{"step": s, "acc/train": 1.0, "acc/test_inferred_ood": 0.9} for s in (100, 200, 300)]
    v = classify_history(history, max_steps=300, evidence=GOOD)
    assert (v.label, v.behaviour) == ("no_grokking", "comprehension")
    assert v.confidence <= 0.6 and any("confidence x3/5" in r for r in v.reasons)


def test_isolated_spikes_do_not_count_as_generalized():
    base = build(ood=flat(0.3), noise=0.02, seed=3)
    for i in range(40, len(base), 7):        # isolated single-evaluation spikes above 0.5
        base[i]["acc/test_inferred_ood"] = 0.75
    v = classify_history(base, max_steps=30000, evidence=GOOD)
    assert v.t_generalize is None and v.label == "no_grokking" and v.behaviour == "semi"
    assert max(h["acc/test_inferred_ood"] for h in base) == 0.75
    assert v.max_target_acc < 0.4
    # without smoothing or sustain the spikes are crossings, but they do not hold: transient
    raw = classify_history(base, max_steps=30000, evidence=GOOD,
                           params=VerdictParams(smooth_window=1, sustain=1))
    assert raw.t_generalize is None and (raw.label, raw.behaviour) == ("no_grokking", "transient")


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
    ev = {"interchange": 0.9, "interchange_n": 100}
    on_id = classify_history(history, max_steps=30000, split="id", evidence=ev)
    on_ood = classify_history(history, max_steps=30000, split="ood", evidence=ev)
    assert (on_id.label, on_id.detail, on_id.split) == ("true_grokking", "grokking, lens-visible", "id")
    assert on_id.bridge_given_correct == 0.95 and 2500 <= on_id.t_generalize <= 5500
    assert on_id.reasons[0].startswith("ID acc >= 0.9 from step")
    assert (on_ood.label, on_ood.behaviour, on_ood.bridge_given_correct) == ("no_grokking", "memorization", 0.1)
    # an ID curve at 0.8 is "generalized" under the OOD threshold but not the ID one
    history = build(id_=rise(3000, lo=0.03, hi=0.8), ood=rise(3000, lo=0.03, hi=0.8))
    assert classify_history(history, max_steps=30000, split="id").behaviour == "semi"
    assert classify_history(history, max_steps=30000, split="ood").behaviour == "grokking"


def test_evidence_overrides_history_lens():
    history = build(**TEXTBOOK, bridge=flat(0.99))
    v = classify_history(history, max_steps=30000, evidence={"bridge_given_correct": 0.2, "bridge_found": 0.3},
                         criterion="lens")
    assert (v.label, v.bridge_given_correct, v.bridge_found) == ("fake_grokking", 0.2, 0.3)


def test_without_circuit_evidence_the_label_rests_on_behaviour_capped():
    history = build(**TEXTBOOK)
    for h in history:
        del h["lens/ood/bridge_given_correct"], h["lens/ood/bridge_found"]
    none = classify_history(history, max_steps=30000)
    assert (none.label, none.detail, none.labels["lens"]) == ("true_grokking", "grokking", "true_grokking")
    assert none.confidence <= 0.5 and any("labelled by behaviour only" in r for r in none.reasons)
    # the interchange test alone decides
    alone = classify_history(history, max_steps=30000, evidence={"interchange": 0.1, "interchange_n": 300})
    assert alone.label == "fake_grokking" and alone.confidence > 0.9


def test_confidence_is_monotone_in_the_margin_and_in_n():
    xs = np.linspace(0, 1, 21)
    cs = [margin_confidence(x, 0.5, 0.1) for x in xs]
    assert cs[10] == 0.5 and all(c <= 1 for c in cs)
    assert all(a > b for a, b in zip(cs[:10], cs[1:11])) and all(a < b for a, b in zip(cs[10:], cs[11:]))
    assert [round(rate_confidence(0.6, 0.5, n, 0.1), 3) for n in (5, 20, 80, 320)] == sorted(
        round(rate_confidence(0.6, 0.5, n, 0.1), 3) for n in (5, 20, 80, 320))
    history = build(**TEXTBOOK)
    by_ic = [classify_history(history, max_steps=30000, evidence={**GOOD, "interchange": c, "interchange_n": 60}
                              ).confidence for c in (0.81, 0.83, 0.86, 0.9, 0.99)]
    assert by_ic == sorted(by_ic) and by_ic[0] < 0.7 < by_ic[-1]
    by_level = [classify_history(build(ood=rise(10000, lo=0.03, hi=h), noise=0.0), max_steps=30000,
                                 evidence={**GOOD, "n_target": 60}).confidence for h in (0.53, 0.56, 0.6, 0.7, 0.9)]
    assert by_level == sorted(by_level) and by_level[0] < 0.7 < by_level[-1]
    by_fake = [classify_history(history, max_steps=30000, evidence={**GOOD, "interchange": c, "interchange_n": 60}
                                ).confidence for c in (0.75, 0.7, 0.5, 0.1)]
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
        assert d["classifier_version"] == CLASSIFIER_VERSION == "3"
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
    ("generalize_acc_ood", 0.1), ("semi_acc_id", 0.95), ("interchange_min", -0.2), ("grokking_delay", 0.5),
    ("memorization_ratio", 1.0), ("acc_scale", 0.0), ("log_scale", -1.0), ("no_circuit_cap", 1.5),
    ("shortcut_excess", 1.5), ("min_evidence_n", 0), ("censored_cap", 0.0), ("undetermined_cap", 0.0),
    ("rising_delta", 0.0),
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
    (dict(evidence={"interchange": -0.1}), "-0.1"), (dict(criterion="vibes"), "'vibes'"),
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
    assert classify_history(history, max_steps=30000, params={"generalize_acc_ood": 0.7}).behaviour == "semi"
    assert classify_history(history, max_steps=30000).behaviour == "grokking"


def test_sustain_at_the_end_needs_all_remaining_evaluations():
    steps = [0, 10, 20, 30, 40, 50]
    last_only = [{"step": s, "acc/train": 1.0 if s == 50 else 0.5} for s in steps]
    assert classify_history(last_only, max_steps=50).t_memorize == 50
    dip_at_end = [{"step": s, "acc/train": 1.0 if s == 40 else 0.5} for s in steps]
    assert classify_history(dip_at_end, max_steps=50).t_memorize is None
    assert classify_history(dip_at_end, max_steps=50, params=VerdictParams(sustain=1)).t_memorize == 40


def test_diverged_after_generalizing_says_so():
    v = classify_history(build(**TEXTBOOK), max_steps=30000, stop_reason="diverged", evidence=GOOD)
    assert (v.label, v.behaviour) == ("no_grokking", "diverged") and v.t_generalize is not None
    assert f"OOD acc had held 0.5 from step {v.t_generalize} before diverging" in v.reasons


# --------------------------------------------------------------------------- issue 19: words that mean what the field means

def test_a_run_still_rising_at_its_budget_is_undetermined():
    semi = classify_history(build(ood=rise(20000, lo=0.03, hi=0.45)), max_steps=30000, evidence=GOOD)
    assert (semi.label, semi.behaviour, semi.determined) == ("no_grokking", "semi", False)
    assert semi.confidence <= 0.5 and any("undetermined" in r for r in semi.reasons)
    flat_run = classify_history(build(), max_steps=30000)
    assert (flat_run.behaviour, flat_run.determined, flat_run.phase) == ("memorization", True, "memorization")
    assert flat_run.confidence > 0.5
    # a memorizing run whose OOD curve climbs from 0.02 to 0.15 by its end (below semi_acc): still undetermined
    creeping = classify_history(build(ood=lambda s: 0.02 + 0.13 * s / 30000, noise=0.0), max_steps=30000)
    assert (creeping.behaviour, creeping.determined) == ("memorization", False) and creeping.confidence <= 0.5


def test_t_circuit_comes_from_the_logged_interchange_curve():
    history = build(**TEXTBOOK)
    for h in history:   # the bridge mediates from step ~3,000, OOD answers hold from ~10,000
        h["circuit/interchange/ood"] = 0.9 if h["step"] >= 3000 else 0.1
    v = classify_history(history, max_steps=30000, evidence=GOOD)
    assert 2900 <= v.t_circuit <= 3300 and v.t_circuit < v.t_generalize
    assert any(r.startswith(f"the bridge mediated answers (logged circuit/interchange/ood >= 0.8) from step "
                            f"{v.t_circuit}") for r in v.reasons)
    assert classify_history(build(**TEXTBOOK), max_steps=30000).t_circuit is None


@pytest.mark.parametrize("behaviour, phase", [("grokking", "grokking"), ("comprehension", "comprehension"),
                                              ("unmemorized", "comprehension"), ("semi", "memorization"),
                                              ("censored", "memorization"), ("transient", "memorization"),
                                              ("confusion", "confusion"), ("diverged", "diverged")])
def test_liu_phases(behaviour, phase):
    from grokray.verdict import liu_phase
    assert liu_phase(behaviour) == phase


def test_verdicts_stored_before_v3_still_read():
    v = classify_history(build(**TEXTBOOK), max_steps=30000, evidence=GOOD)
    old = {k: x for k, x in v.to_dict().items() if k not in ("labels", "mediated", "determined", "t_circuit")}
    old.update(label_lens="true_grokking", label_interchange="fake_grokking", classifier_version="2")
    back = Verdict.from_dict(old)
    assert back.labels == {"lens": "true_grokking", "interchange": "fake_grokking"} and back.determined
