"""The rules that separate true from fake, on constructed tensors and hand-built models whose
mechanism is known: the logit lens's "bridge found" and the bridge interchange test.

The toy models are LoopedTransformers whose forward pass is written by hand (one-hot
residual states, hook points where the real model has them), so what their answers depend on
is known exactly:

* ``compose``: loop 0 writes the bridge ``b = tail(h, r1)`` at r1 (and, with ``both``, at r2
  too); loop 1 answers ``tail(b, r2)`` reading ``b`` from those states (with ``both``, only
  where the two agree: it needs both): mediated by the bridge;
* ``r2``: answers ``f(r2)`` from the r2 token alone (a shortcut): never mediated;
* ``raw``: answers ``tail(tail(h, r1), r2)`` from the raw tokens, ignoring the states a patch
  changes (a lookup that composes nothing in its states): never mediated.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grokray.circuits.interchange import LEAK_MAX, choose_sources, hop1_positions, interchange_test
from grokray.circuits.lens import LensProfile
from grokray.config import DataConfig, ModelConfig
from grokray.data import build_dataset
from grokray.data.shortcuts import predict
from grokray.model import LoopedTransformer
from grokray.verdict import classify_history

H, R1, R2 = 0, 1, 2


# --------------------------------------------------------------------------- the lens rule

def _profile(n_depths: int, hits: list[tuple[int, int]], correct=(True,)) -> LensProfile:
    """One query; the bridge is the argmax (rank 1) exactly at the ``hits`` (depth, position)."""
    ranks = np.full((n_depths, 3, 1), 7)
    for d, p in hits:
        ranks[d, p, 0] = 1
    names = ["embed"] + [f"loop.{i}.layer.0.resid_post" for i in range(n_depths - 1)]
    return LensProfile(names, ranks, np.full_like(ranks, 9), np.array(correct))


@pytest.mark.parametrize("n_depths, hits, found, at_r1", [
    (3, [(1, R1)], True, True),           # after loop 0 at r1: He et al.'s bridge
    (3, [(2, R1)], False, False),         # the final r1 state is the atomic query: excluded
    (3, [(0, R1)], False, False),         # the embedding is not a computed state
    (3, [(1, R2)], True, False),          # an intermediate state at r2 counts, not as "at r1"
    (2, [(1, R1)], False, False),         # one block application: no intermediate state at all
    (5, [(3, H)], True, False),           # any intermediate depth, any position
    (5, [(4, R1), (4, R2)], False, False),
])
def test_lens_found_rule(n_depths, hits, found, at_r1):
    prof = _profile(n_depths, hits)
    assert bool(prof.found()[0]) is found and bool(prof.found_at_r1()[0]) is at_r1
    assert prof.summary()["bridge_given_correct"] == float(found)


def test_lens_bridge_given_correct_counts_only_correct_answers():
    ranks = np.full((3, 3, 4), 7)
    ranks[1, R1, :2] = 1                                   # bridge found for queries 0 and 1
    prof = LensProfile(["embed", "a", "b"], ranks, ranks, np.array([True, False, True, False]))
    assert prof.summary()["bridge_given_correct"] == 0.5 and prof.summary()["bridge_found"] == 0.5


# --------------------------------------------------------------------------- toy models for the interchange test

class Toy(LoopedTransformer):
    """One-hot residual states; the mechanism is written out (module docstring)."""

    def __init__(self, tail: np.ndarray, n_entities: int, vocab: int, mode: str, f: np.ndarray | None = None,
                 n_loops: int = 2, both: bool = False, causal: bool = True):
        super().__init__(ModelConfig(d_model=vocab, n_heads=1, d_mlp=4, n_layers=1, n_loops=n_loops, causal=causal),
                         vocab_size=vocab)
        self.tail_t = torch.as_tensor(tail)
        self.E, self.V, self.mode, self.both = n_entities, vocab, mode, both
        self.f = torch.as_tensor(f) if f is not None else None

    def one_hot(self, idx: torch.Tensor) -> torch.Tensor:
        return F.one_hot(idx.clamp(min=0), self.V).float()

    def residual(self, tokens: torch.Tensor) -> torch.Tensor:
        E = self.E
        h, r1, r2 = tokens[:, 0], tokens[:, 1] - E, (tokens[:, 2] - E).clamp(min=0)
        x = self.hook_points["embed"](self.one_hot(tokens))                         # [B, 3, V]
        for i in range(self.cfg.n_loops):
            y = x.clone()
            if i == 0:                                                              # hop 1
                b = self.tail_t[h, r1]
                y[:, R1] = self.one_hot(b)
                if self.both:
                    y[:, R2] = self.one_hot(b)
            elif i == 1:                                                            # hop 2, at r2
                if self.mode == "compose":
                    b_read = x[:, R1, :E].argmax(-1)
                    t = self.tail_t[b_read, r2]
                    if self.both:   # the bridge is held by both states: they must agree
                        t = torch.where(b_read == x[:, R2, :E].argmax(-1), t, torch.zeros_like(t))
                elif self.mode == "r2":
                    t = self.f[r2]
                else:                                                               # raw: the tokens, not the states
                    t = self.tail_t[self.tail_t[h, r1], r2]
                y[:, R2] = self.one_hot(t)
            x = self.hook_points[f"loop__{i}__layer__0__resid_post"](y)
        return x

    def decode(self, resid: torch.Tensor) -> torch.Tensor:
        return resid * 10.0


@pytest.fixture(scope="module")
def data():
    return build_dataset(DataConfig(n_entities=40, n_relations=8, out_degree=8, ood_fraction=0.3, phi=1.0))


def toy(data, mode: str, **kw) -> Toy:
    return Toy(data.tail, data.n_entities, data.vocab_size, mode, **kw).eval()


def test_a_composing_model_follows_the_swapped_bridge(data):
    res = interchange_test(toy(data, "compose"), data, "test_inferred_ood", n=100)
    assert res.clean_acc == 1.0 and res.n_queries >= 20
    assert res.best == 1.0 and res.control_best == 1.0 and res.depth_names == ["loop.0.layer.0.resid_post"]
    assert res.positions == [[R1]]           # r1 alone already moves every answer: no need for r2
    assert res.why_none() == ""


def test_a_bridge_held_at_r1_and_r2_needs_both_swapped(data):
    res = interchange_test(toy(data, "compose", both=True), data, "test_inferred_ood", n=100)
    assert res.best == 1.0 and res.positions == [[R1, R2]]
    assert res.hop1_only[0] < 0.9 and res.answer_leak[0] <= LEAK_MAX    # r2 holds the bridge, not the answer


def test_a_raw_token_lookup_is_not_mediated(data):
    res = interchange_test(toy(data, "raw"), data, "test_inferred_ood", n=100)
    assert res.clean_acc == 1.0 and res.best == 0.0


def test_an_answer_already_at_r2_is_not_counted_as_a_bridge(data):
    # 3 loops: hop 2 writes the answer at r2 in loop 1, so at depth 2 the r2 state holds the answer;
    # swapping r1 + r2 there would carry the source's answer over: that depth counts r1 only.
    res = interchange_test(toy(data, "raw", n_loops=3), data, "test_inferred_ood", n=100)
    assert res.answer_leak[1] == 1.0 and res.positions[1] == [R1]
    assert res.best == 0.0


def test_an_r2_shortcut_scores_zero_interchange_and_is_never_called_grokking():
    # A graph with many relations per entity plus second-hop injection: r2 predicts most OOD answers.
    data = build_dataset(DataConfig(n_entities=100, n_relations=200, out_degree=20, ood_fraction=0.09, phi=3.6,
                                    augmentation={"hop2": {"ratio": 1.0, "k": 18}}))
    train = np.concatenate([data.rows["train_inferred"], data.rows["train_augmented"]])
    f = np.zeros(data.n_relations, dtype=np.int64)
    queries = np.stack([np.zeros(data.n_relations), np.zeros(data.n_relations), np.arange(data.n_relations),
                        np.zeros(data.n_relations), np.zeros(data.n_relations)], 1).astype(np.int64)
    f[:] = predict("r2", train, queries, data.n_entities, data.n_relations)    # the r2 rule, as a model
    model = toy(data, "r2", f=f)
    from grokray.circuits.evidence import circuit_evidence

    ev = circuit_evidence(model, data, "ood", n=200, patch_train=False)
    assert ev.target_acc >= 0.6 and ev.interchange.best == 0.0
    assert ev.shortcut_best[0] == pytest.approx(ev.target_acc)                 # the rule explains all of it
    history = [{"step": s, "acc/train": 1.0 if s >= 100 else 0.1, "acc/test_inferred_ood": ev.target_acc}
               for s in (0, 10, 100, 200, 400, 800, 1600)]
    v = classify_history(history, max_steps=1600, evidence=ev.for_verdict())
    # at the shortcut's own level: no generalization beyond the data's prior, whatever the timing
    assert v.label == "no_grokking" and v.labels["interchange"] == "no_grokking" and v.detail.startswith("shortcut")
    assert v.mediated["interchange"] is False
    assert any("within reach of a shortcut" in r for r in v.reasons)
    assert any("interchange 0.00 < 0.8" in r for r in v.reasons)


def test_a_single_block_application_is_never_true(data):
    model = toy(data, "compose", n_loops=1)
    res = interchange_test(model, data, "test_inferred_ood", n=100)
    assert res.depth_names == [] and res.best is None and "one block application" in res.why_none()
    # late (memorized at 100, OOD from 800): one block cannot route through a bridge state -> fake
    history = [{"step": s, "acc/train": 1.0 if s >= 100 else 0.1, "acc/test_inferred_ood": 0.9 if s >= 800 else 0.0}
               for s in (0, 10, 100, 200, 400, 800, 1600, 3200)]
    v = classify_history(history, max_steps=3200, evidence={"n_intermediate": 0, "interchange_n": res.n_queries,
                                                            "bridge_given_correct": 1.0, "lens_n_correct": 100})
    assert v.behaviour == "grokking" and v.label == "fake_grokking" and v.labels == {
        "interchange": "fake_grokking", "carry": "fake_grokking", "lens": "fake_grokking"}


def test_hop1_positions_follow_the_mask(data):
    assert hop1_positions(toy(data, "compose")) == [R1]
    assert hop1_positions(toy(data, "compose", causal=False)) == [H, R1]


def test_sources_have_another_bridge_and_controls_the_same():
    tail = np.array([[1, 2], [2, 0], [0, 1], [1, 0]])            # 4 entities, 2 relations
    clean = np.array([[0, 0, 1, 1, 0], [3, 1, 0, 0, 1]])
    src, ok = choose_sources(clean, clean[:0], tail, seed=3)
    assert ok.all() and (src[:, 3] != clean[:, 3]).all() and (src[:, 2] == clean[:, 2]).all()
    assert (src[:, 4] == tail[src[:, 3], src[:, 2]]).all() and (src[:, 4] != clean[:, 4]).all()
    ctl, ok_c = choose_sources(clean, clean[:0], tail, seed=3, same_bridge=True)
    assert ok_c.all() and (ctl[:, 3] == clean[:, 3]).all() and (ctl[:, 4] == clean[:, 4]).all()
    assert not ((ctl[:, 0] == clean[:, 0]) & (ctl[:, 1] == clean[:, 1])).any()
