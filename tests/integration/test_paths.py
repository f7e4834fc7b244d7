"""Inference-path comparison: identity scores 1, a trained model differs from an untrained one,
checkpoints written by the trainer compare, different depths are resampled."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from grokray.circuits.paths import (PathComparison, compare_checkpoints, compare_models, lens_cells, patch_cells,
                                    resample_depths, similarity)
from grokray.config import DataConfig
from grokray.data import build_dataset
from grokray.model import LoopedTransformer
from grokray.train import Trainer
from helpers import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-loop model trained 300 steps with checkpoints on disk (~3 s)."""
    work = tmp_path_factory.mktemp("run_a")
    trainer = Trainer(tiny_config("train.max_steps=300", "train.lens_sample=0"), work_dir=work)
    result = trainer.run()
    return trainer.model.eval(), trainer.dataset, result.checkpoints


@pytest.fixture(scope="module")
def deep_model(run):
    """The same graph learned by a 3-loop model (4 residual states instead of 3)."""
    _, dataset, _ = run
    trainer = Trainer(tiny_config("train.max_steps=300", "train.lens_sample=0", "model.n_loops=3"),
                      dataset=dataset)
    trainer.run()
    return trainer.model.eval()


@pytest.fixture(scope="module")
def untrained(run):
    _, dataset, _ = run
    torch.manual_seed(123)
    return LoopedTransformer(tiny_config().model, dataset.vocab_size).eval()


# --------------------------------------------------------------------------- pure parts

@pytest.mark.parametrize("values, n, expected", [
    ([0.0, 0.5, 1.0], 3, [0.0, 0.5, 1.0]),                 # same grid: unchanged
    ([0.0, 1.0, 0.0, 1.0, 0.0], 3, [0.0, 0.0, 0.0]),       # 5 -> 3 picks depths 0, 2, 4
    ([0.0, 1.0, 1.0, 0.0], 3, [0.0, 1.0, 0.0]),            # 4 -> 3: midpoint of depths 1 and 2
    ([0.2, 0.4, 0.6, 0.8], 2, [0.2, 0.8]),                 # end points kept
])
def test_resample_depths(values, n, expected):
    mat = np.array(values)[:, None] * np.ones((1, 3))
    out = resample_depths(mat, n)
    assert out.shape == (n, 3)
    assert np.allclose(out[:, 1], expected)


@pytest.mark.parametrize("token, cells", [
    ("h", [[1, 0, 0], [1, 1, 1], [0, 0, 1]]),
    ("r1", [[0, 1, 0], [0, 1, 1], [0, 0, 1]]),
    ("r2", [[0, 0, 1], [0, 0, 1], [0, 0, 1]]),
])
def test_patch_cells_follow_causal_attention(token, cells):
    assert np.array_equal(patch_cells(3, token), np.array(cells, dtype=bool))


def test_lens_cells_and_similarity():
    assert np.array_equal(lens_cells(3, "bridge_top1"), np.array([[0, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=bool))
    assert np.array_equal(lens_cells(3, "answer_top1"), np.array([[0, 0, 0], [0, 0, 1], [0, 0, 1]], dtype=bool))
    a, b = np.zeros((3, 3)), np.ones((3, 3))
    assert similarity(a, a) == 1.0 and similarity(a, b) == 0.0
    assert math.isnan(similarity(a, b, np.zeros((3, 3), dtype=bool)))     # nothing to compare
    b[0, 0] = 0.0
    assert similarity(a, b, patch_cells(3, "r2")) == 0.0
    assert similarity(a, b, patch_cells(3, "h")) == pytest.approx(1 - 4 / 5)


# --------------------------------------------------------------------------- models

def test_a_model_compared_with_itself_scores_one(run):
    model, dataset, _ = run
    cmp = compare_models(model, model, dataset, n=200)
    assert cmp.score == pytest.approx(1.0, abs=1e-9)
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in cmp.patching_similarity.values())
    assert cmp.lens_similarity == pytest.approx(1.0, abs=1e-9)
    assert cmp.n_queries == 200 and not cmp.resampled and cmp.accuracy == [1.0, 1.0]


def test_trained_and_untrained_models_take_different_paths(run, untrained):
    model, dataset, _ = run
    cmp = compare_models(model, untrained, dataset, n=200, labels=("trained", "untrained"))
    assert cmp.score < 0.75
    assert cmp.lens_similarity < 0.6           # the trained model decodes b at r1 and t at r2, the other does not
    assert cmp.patching_similarity["h"] < 0.8
    assert 0.0 <= cmp.score <= 1.0
    # both were read on the same queries with the same perturbations
    assert cmp.n_queries == 200 and cmp.accuracy[0] == 1.0 and cmp.accuracy[1] < 0.1
    reverse = compare_models(untrained, model, dataset, n=200)
    assert reverse.score == pytest.approx(cmp.score, abs=1e-12)


def test_different_depth_counts_compare_at_relative_depth(run, deep_model):
    model, dataset, _ = run
    cmp = compare_models(model, deep_model, dataset, n=200)
    assert cmp.resampled and "resampled" in cmp.note
    assert [len(n) for n in cmp.depth_names] == [3, 4]
    assert cmp.relative_depths == [0.0, 0.5, 1.0]
    assert all(m.shape == (3, 3) for side in cmp.patching for m in side.values())
    assert all(m.shape == (3, 3) for side in cmp.lens for m in side.values())
    # two models that both learned the graph agree far more than trained vs untrained
    assert 0.8 < cmp.score <= 1.0
    same = compare_models(deep_model, deep_model, dataset, n=200)
    assert same.score == pytest.approx(1.0, abs=1e-9) and not same.resampled and len(same.relative_depths) == 4


def test_only_correct_keeps_queries_both_models_answer(run, untrained):
    model, dataset, _ = run
    pool = dataset.rows["train_inferred"]
    with torch.no_grad():
        untrained_right = (untrained(dataset.encode(pool).tokens)[:, 2].argmax(-1).numpy() == pool[:, 4]).sum()
    assert 0 < untrained_right < 20
    cmp = compare_models(model, untrained, dataset, n=300, only_correct=True)
    assert cmp.only_correct and cmp.n_queries == untrained_right   # the trained model answers all of them
    assert cmp.accuracy == [1.0, 1.0]


# --------------------------------------------------------------------------- checkpoints and output

def test_compare_checkpoints_written_by_the_trainer(run):
    model, dataset, checkpoints = run
    assert 300 in checkpoints and len(checkpoints) >= 2
    first, last = checkpoints[min(checkpoints)], checkpoints[300]
    same = compare_checkpoints(last, last, dataset, n=100)
    assert same.score == pytest.approx(1.0, abs=1e-9)
    run_name = Path(last).parent.parent.name
    assert same.labels == [f"{run_name}@300", f"{run_name}@300"] and same.steps == [300, 300]
    # without a dataset: rebuilt from the checkpoint's trial config, and the loaded weights are the trained ones
    rebuilt = compare_checkpoints(last, last, n=100)
    direct = compare_models(model, model, dataset, n=100)
    assert rebuilt.patching_similarity == direct.patching_similarity
    for token in direct.patching[0]:
        assert np.array_equal(rebuilt.patching[0][token], direct.patching[0][token])
    early = compare_checkpoints(first, last, dataset, n=100)
    assert early.steps == [min(checkpoints), 300] and 0.0 <= early.score < 1.0


def test_compare_checkpoints_refuses_another_dataset(run):
    _, dataset, checkpoints = run
    cfg = tiny_config().data
    other = build_dataset(DataConfig(**{**cfg.__dict__, "seed": cfg.seed + 1}))
    assert other.vocab_size == dataset.vocab_size and other.name != dataset.name
    with pytest.raises(ValueError, match="another knowledge graph"):
        compare_checkpoints(checkpoints[300], checkpoints[300], other, n=20)
    assert compare_checkpoints(checkpoints[300], checkpoints[300], other, n=20, check_dataset=False).score == 1.0
    # Another phi on the same graph is another dataset but the same queries: allowed.
    same_graph = build_dataset(DataConfig(**{**cfg.__dict__, "phi": 1.5}))
    assert same_graph.name != dataset.name
    assert compare_checkpoints(checkpoints[300], checkpoints[300], same_graph, n=20).score == 1.0


def test_json_round_trip_and_png(run, deep_model, tmp_path):
    model, dataset, _ = run
    cmp = compare_models(model, deep_model, dataset, n=100, labels=("loops2", "loops3"))
    text = cmp.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    back = PathComparison.from_json(text)
    assert back == cmp and back.score == cmp.score and back.summary() == cmp.summary()
    path = cmp.plot(tmp_path / "paths.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
