"""grokray.criteria: label criteria as data, table-driven; the verdict iterates the registry."""
from __future__ import annotations

import dataclasses

import pytest

from grokray import criteria
from grokray.criteria import REGISTRY, Criterion, judge_all, labels_from_tags
from grokray.tracking import LabelTags, Tag
from grokray.verdict import EVIDENCE_KEYS, VerdictParams, classify_history

P = VerdictParams()

# (criterion, evidence, mediated, detail word, needle in the reason)
CASES = [
    ("interchange", {"interchange": 0.9, "interchange_n": 200, "interchange_control": 0.97}, True, None,
     "interchange 0.90 >= 0.8 over 200 correct answers, same-bridge control keeps 0.97"),
    # the trained negative control: its second hop follows a swapped-in bridge, its own states hold none
    ("interchange", {"interchange": 0.71, "interchange_n": 200}, False, None, "interchange 0.71 < 0.8"),
    ("carry", {"carry": 0.03, "carry_n": 200}, False, None, "carry 0.03 < 0.25 over 200 correct answers"),
    ("carry", {"carry": 0.9, "carry_n": 200}, True, None, "holds its bridge"),
    ("interchange", {"interchange": 0.2, "interchange_n": 200}, False, None, "at any depth searched"),
    ("interchange", {"interchange": 0.9, "interchange_n": 5}, None, None, "insufficient: measured on 5"),
    ("interchange", {"interchange_note": "no correctly answered queries"}, None, None,
     "no correctly answered queries"),
    ("interchange", {}, None, None, "no interchange measurement"),
    ("lens", {"bridge_given_correct": 0.95, "lens_n_correct": 100}, True, "lens-visible", "lens 0.95 >= 0.8"),
    ("lens", {"bridge_given_correct": 0.4, "lens_n_correct": 100}, False, "lens-invisible", "lens-invisible"),
    ("lens", {"bridge_given_correct": 0.4}, False, "lens-invisible", "lens 0.40 < 0.8:"),  # n unknown: tanh scale
]


@pytest.mark.parametrize("name, ev, mediated, word, needle", CASES)
def test_judgements(name, ev, mediated, word, needle):
    j = REGISTRY[name].judge(ev, P)
    assert j.mediated is mediated and j.detail == word and needle in j.reason, j.reason
    assert 0.5 <= j.confidence <= 1.0
    assert (j.rate is None) == (mediated is None)


def test_no_intermediate_state_is_never_mediated_by_any_criterion():
    out = judge_all({"n_intermediate": 0, "interchange": 0.99, "interchange_n": 200,
                     "bridge_given_correct": 1.0, "lens_n_correct": 200}, P)
    assert {k: j.mediated for k, j in out.items()} == {"interchange": False, "carry": False, "lens": False}


def test_registry_names_tags_columns_and_evidence_keys():
    assert criteria.CRITERIA == ("interchange", "carry", "lens") and criteria.DEFAULT_CRITERION == "interchange"
    assert [c.tag for c in REGISTRY.values()] == ["grokray.label_interchange", "grokray.label_carry",
                                                  "grokray.label_lens"]
    assert [Tag.label_by(c) for c in REGISTRY] == [c.tag for c in REGISTRY.values()]
    assert [c.column for c in REGISTRY.values()] == ["label_interchange", "label_carry", "label_lens"]
    for c in REGISTRY.values():
        assert set(c.evidence_keys) <= set(EVIDENCE_KEYS)
        assert hasattr(P, c.threshold)
    # stored runs keep reading: today's tag spelling
    tags = {"grokray.label": "true_grokking", "grokray.label_lens": "fake_grokking",
            "grokray.label_interchange": "true_grokking"}
    assert labels_from_tags(tags) == {"interchange": "true_grokking", "lens": "fake_grokking"}
    lt = LabelTags.of(tags)
    assert lt.labels == {"interchange": "true_grokking", "lens": "fake_grokking"} and lt.tags() == tags


def test_a_new_criterion_is_one_registry_entry(monkeypatch):
    """Adding a criterion: its rule (a Criterion) and its measurement (an evidence key), nothing else."""
    causal = Criterion(name="causal", summary="Wang et al.'s causal r1 dependence", rate="causal_r1",
                       n="interchange_n", threshold="interchange_min", measured="r1 flip rate",
                       yes="the answers depend on the r1 state", no="they do not")
    monkeypatch.setitem(REGISTRY, "causal", causal)
    history = [{"step": s, "acc/train": 1.0 if s >= 100 else 0.1, "acc/test_inferred_ood": 0.9 if s >= 800 else 0.0}
               for s in (0, 10, 100, 200, 400, 800, 1600, 3200)]
    v = classify_history(history, max_steps=3200, evidence={"interchange": 0.9, "interchange_n": 100,
                                                            "causal_r1": 0.1, "carry": 0.9, "carry_n": 100})
    assert v.labels == {"interchange": "true_grokking", "carry": "true_grokking", "lens": "true_grokking",
                        "causal": "fake_grokking"}
    assert v.mediated["causal"] is False and any(r.startswith("causal 0.10 < 0.8") for r in v.reasons)
    assert LabelTags(label=v.label, detail=v.detail, confidence="1", classifier_version="3", split="ood",
                     labels=v.labels).tags()["grokray.label_causal"] == "fake_grokking"
    assert dataclasses.replace(causal, name="x").tag == "grokray.label_x"
