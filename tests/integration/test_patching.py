"""Causal patching on a tiny model that memorised its graph: perturbations, flip rates, persistence."""
import json

import numpy as np
import pytest
import torch

from grokray.circuits.lens import lens_profile
from grokray.circuits.patching import (POSITIONS, TOKENS, PatchingResult, causal_patching, flip_matrix,
                                       patch_queries, perturb_queries, r1_dependence, select_queries)
from grokray.config import ModelConfig
from grokray.data.graph import BRIDGE, H, R1, R2, TAIL
from grokray.model import LoopedTransformer
from grokray.train import Trainer
from helpers import tiny_config

COLUMN = {"h": H, "r1": R1, "r2": R2}


@pytest.fixture(scope="module")
def trained():
    """A 1-layer x 2-loop model trained to 100% train accuracy on the tiny graph (~3 s)."""
    trainer = Trainer(tiny_config("train.max_steps=300", "train.lens_sample=0"))
    result = trainer.run()
    assert result.history[-1]["acc/train_inferred"] == 1.0
    return trainer.model.eval(), trainer.dataset


@pytest.fixture(scope="module")
def result(trained):
    model, dataset = trained
    return causal_patching(model, dataset, split="train_inferred", n=300, seed=0, step=300)


def brute_force_replacements(row, token, tail):
    """Every same-type replacement giving a valid composition with another answer, by enumeration."""
    h, r1, r2, b, t = (int(x) for x in row)
    n_entities, n_relations = tail.shape
    out = []
    for c in range(n_entities if token == "h" else n_relations):
        hh, rr1, rr2 = (c, r1, r2) if token == "h" else (h, c, r2) if token == "r1" else (h, r1, c)
        bb = tail[hh, rr1]
        if bb < 0:
            continue
        tt = tail[bb, rr2]
        if tt >= 0 and tt != t:
            out.append((hh, rr1, rr2, int(bb), int(tt)))
    return out


# --------------------------------------------------------------------------- perturbations

@pytest.mark.parametrize("token", TOKENS)
def test_perturbations_are_valid_compositions_with_another_answer_changing_one_token(trained, token):
    _, dataset = trained
    rows = patch_queries(dataset, "train_inferred", n=None, seed=0)
    perturbed, ok = perturb_queries(rows, token, dataset.tail, seed=3)
    assert ok.mean() > 0.5
    for row, twin, has in zip(rows, perturbed, ok):
        options = brute_force_replacements(row, token, dataset.tail)
        if not has:
            assert options == []          # dropped only when nothing qualifies
            continue
        assert tuple(int(x) for x in twin) in options
        assert dataset.tail[twin[H], twin[R1]] == twin[BRIDGE]
        assert dataset.tail[twin[BRIDGE], twin[R2]] == twin[TAIL] != row[TAIL]
        changed = [c for c in (H, R1, R2) if twin[c] != row[c]]
        assert changed == [COLUMN[token]]


@pytest.mark.parametrize("token", TOKENS)
def test_perturbation_is_deterministic_in_the_seed(trained, token):
    _, dataset = trained
    rows = patch_queries(dataset, "train_inferred", n=None, seed=0)
    a, ok_a = perturb_queries(rows, token, dataset.tail, seed=1)
    b, ok_b = perturb_queries(rows, token, dataset.tail, seed=1)
    c, _ = perturb_queries(rows, token, dataset.tail, seed=2)
    assert np.array_equal(a, b) and np.array_equal(ok_a, ok_b)
    assert not np.array_equal(a[ok_a], c[ok_a])
    # a row's pick depends on its position and the seed, not on the rows after it
    head, _ = perturb_queries(rows[:20], token, dataset.tail, seed=1)
    assert np.array_equal(head[ok_a[:20]], a[:20][ok_a[:20]])


def test_patch_queries_is_a_seeded_prefix_stable_sample(trained):
    _, dataset = trained
    rows = dataset.rows["train_inferred"]
    everything = patch_queries(dataset, "train_inferred", n=None, seed=5)
    assert sorted(map(tuple, everything.tolist())) == sorted(map(tuple, rows.tolist()))
    assert np.array_equal(patch_queries(dataset, "train_inferred", n=10, seed=5), everything[:10])
    assert not np.array_equal(patch_queries(dataset, "train_inferred", n=10, seed=6), everything[:10])


@pytest.mark.parametrize("split, problem", [("nope", "unknown split"), ("id_atomic", "atomic facts")])
def test_patch_queries_rejects_splits_without_two_hop_queries(trained, split, problem):
    _, dataset = trained
    with pytest.raises(ValueError, match=problem):
        patch_queries(dataset, split)


def test_only_correct_keeps_exactly_the_correctly_answered_queries(trained):
    _, dataset = trained
    torch.manual_seed(1)
    untrained = LoopedTransformer(tiny_config().model, dataset.vocab_size).eval()
    rows, n_examined, acc = select_queries(untrained, dataset, "train_inferred", n=1000, only_correct=True)
    pool = patch_queries(dataset, "train_inferred", n=None)
    pred = untrained(dataset.encode(pool).tokens)[:, 2].argmax(-1).numpy()
    right = pool[pred == pool[:, TAIL]]
    assert np.array_equal(rows, right)
    assert n_examined == len(pool) and acc == pytest.approx(len(right) / len(pool))


# --------------------------------------------------------------------------- flip rates

def test_patching_a_state_with_itself_flips_nothing(trained):
    model, dataset = trained
    tokens = dataset.encode(patch_queries(dataset, "train_inferred", n=100)).tokens
    for precision in ("fp32", "bf16"):
        flips = flip_matrix(model, tokens, tokens, precision=precision)
        assert flips.shape == (model.n_depths, 3, 100)
        assert not flips.any()


@pytest.mark.parametrize("token, min_rate", [("r2", 0.9), ("h", 0.75), ("r1", 0.5)])
def test_patching_the_perturbed_token_at_the_embedding_flips_the_answer(result, token, min_rate):
    # At depth 0 the perturbed token's own position carries the whole perturbation: the answer
    # depends on each input token, so swapping it in flips the answer.
    own = TOKENS.index(token)
    assert result.matrices[token][0, own] >= min_rate


@pytest.mark.parametrize("token", TOKENS)
def test_cells_causal_attention_fixes_are_exactly_zero(result, token):
    mat, own, last = result.matrices[token], TOKENS.index(token), result.n_depths - 1
    assert np.all(mat[:, :own] == 0)                                # earlier positions never see the token
    assert np.all(np.delete(mat[0], own) == 0)                      # other embeddings are unchanged
    assert np.all(mat[last, :2] == 0)                               # nothing reads the last h / r1 state
    assert mat[0, own] == mat[last, 2]                              # both are "run the perturbed query"


@pytest.mark.parametrize("token", TOKENS)
def test_the_last_state_at_the_answer_position_is_the_answer(trained, token):
    model, dataset = trained
    rows = patch_queries(dataset, "train_inferred", n=300)
    twins, ok = perturb_queries(rows, token, dataset.tail, seed=0)
    clean, twin = dataset.encode(rows[ok]).tokens, dataset.encode(twins[ok]).tokens
    flips = flip_matrix(model, clean, twin)                         # [D, 3, N]
    with torch.no_grad():
        clean_pred = model(clean)[:, 2].argmax(-1).numpy()
        twin_pred = model(twin)[:, 2].argmax(-1).numpy()
    # the patched final state IS the perturbed run's answer ...
    assert np.array_equal(flips[-1, 2], twin_pred != clean_pred)
    # ... so wherever the model answers the twin correctly (t' != t) the answer always flips
    twin_right = twin_pred == twins[ok][:, TAIL]
    assert twin_right.sum() > 50
    assert flips[-1, 2][twin_right].all()


def test_result_counts_and_accuracies(result, trained):
    model, dataset = trained
    assert result.depth_names == model.resid_names and result.positions == POSITIONS
    assert result.n_selected == len(dataset.rows["train_inferred"]) == result.n_examined  # 228 < 300, all right
    assert result.clean_acc == 1.0
    for token in TOKENS:
        assert result.matrices[token].shape == (model.n_depths, 3)
        assert 0 < result.n_queries[token] <= result.n_selected
        assert 0.0 <= result.perturbed_acc[token] <= 1.0
    assert result.split == "train_inferred" and result.step == 300


def test_n_limits_the_queries_and_bf16_agrees_with_fp32(trained, result):
    model, dataset = trained
    small = causal_patching(model, dataset, n=60, precision="bf16")
    assert small.n_selected == 60
    full_60 = causal_patching(model, dataset, n=60)
    for token in TOKENS:
        assert np.abs(small.matrices[token] - full_60.matrices[token]).max() <= 0.05


def test_r1_dependence_is_the_h_perturbation_at_r1_over_intermediate_depths(result):
    value = r1_dependence(result)
    assert value == pytest.approx(result.matrices["h"][1:-1, 1].max())
    assert 0.0 < value <= 1.0
    assert result.summary()["r1_dependence"] == value


def test_r1_dependence_is_nan_without_an_intermediate_depth(trained):
    _, dataset = trained
    torch.manual_seed(0)
    flat = LoopedTransformer(ModelConfig(d_model=32, n_heads=2, d_mlp=64, n_layers=1, n_loops=1),
                             dataset.vocab_size)
    res = causal_patching(flat, dataset, n=20, only_correct=False)
    assert res.matrices["h"].shape == (2, 3)
    assert np.isnan(r1_dependence(res))


# --------------------------------------------------------------------------- lens sanity

def test_the_bridge_is_decodable_at_r1_after_the_last_block(trained):
    # Trivial atomic recall: with causal attention the last r1 state is the query (h, r1) -> b.
    model, dataset = trained
    profile = lens_profile(model, dataset.encode(patch_queries(dataset, "train_inferred", n=300)))
    assert profile.bridge_top1[-1, 1] >= 0.95
    assert profile.answer_top1[-1, 2] >= 0.95
    assert profile.bridge_top1[0, 1] <= 0.3      # the r1 token alone does not know h


# --------------------------------------------------------------------------- persistence

def test_json_round_trip_is_strict_and_exact(result):
    text = result.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    back = PatchingResult.from_json(text)
    assert back == result
    for token in TOKENS:
        assert np.array_equal(back.matrices[token], result.matrices[token])


def test_json_round_trip_keeps_nan_for_tokens_without_queries():
    res = PatchingResult(["embed", "a", "b"], POSITIONS, {"h": np.full((3, 3), np.nan), "r2": np.eye(3)},
                         {"h": 0, "r2": 4}, split="test_inferred_ood")
    back = PatchingResult.from_json(res.to_json())
    assert np.isnan(back.matrices["h"]).all() and np.array_equal(back.matrices["r2"], np.eye(3))
    assert np.isnan(back.clean_acc) and np.isnan(r1_dependence(back))


def test_plot_writes_a_png(result, tmp_path):
    path = result.plot(tmp_path / "patching.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
