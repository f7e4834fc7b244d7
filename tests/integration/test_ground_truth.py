"""Ground truth for the labels: trained models whose mechanism is known by construction.

* a looped model trained to compose (both hops fully augmented at the largest phi the graph
  allows) answers through its bridge: the interchange test on the ID split >= 0.8, and its
  OOD generalization is labelled true grokking;
* the same data on a model with a single block application is never true grokking (one
  block cannot route an answer through an intermediate bridge state).

(The r2-shortcut model is built by hand: tests/unit/test_circuit_rules.py.) Each model
trains for ~1,200 steps of a small graph (~20 s on one core).
"""
from __future__ import annotations

import pytest
import torch

from grokray.circuits.evidence import circuit_evidence
from grokray.config import load_trial_config
from grokray.data.graph import build_graph, max_phi
from grokray.train import Trainer
from grokray.verdict import classify_history

GRAPH = ["data.n_entities=50", "data.n_relations=10", "data.out_degree=10", "data.test_id_fraction=0.05",
         "data.ood_fraction=0.1", "data.augmentation=both_full"]
MODEL = ["model.d_model=64", "model.n_heads=2", "model.d_mlp=256"]
TRAIN = ["train.max_steps=1200", "train.lens_sample=0", "train.eval_per_decade=8", "train.eval_max_interval=100",
         "train.lr_drop_step=600", "train.warmup_steps=100", "train.batch_size=256", "train.threads=1"]


def trained(*extra: str) -> Trainer:
    graph = load_trial_config(None, GRAPH).data
    phi = int(max_phi(build_graph(graph), graph) * 10) / 10
    torch.manual_seed(0)
    trainer = Trainer(load_trial_config(None, [*GRAPH, f"data.phi={phi}", *MODEL, *TRAIN, *extra]))
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def composer() -> Trainer:
    return trained("model.n_layers=1", "model.n_loops=2")


def test_a_looped_model_trained_to_compose_answers_through_its_bridge(composer):
    ev_id = circuit_evidence(composer.model, composer.dataset, "id", n=200, patch_train=False)
    assert ev_id.target_acc >= 0.8 and ev_id.interchange.n_queries >= 100
    assert ev_id.interchange.best >= 0.8, ev_id.interchange
    assert ev_id.interchange.control_best >= 0.8                     # the patch itself breaks nothing
    assert ev_id.carry.best >= 0.3, ev_id.carry                       # its own hop-1 states hold the bridge
    ev = circuit_evidence(composer.model, composer.dataset, "ood", n=200, patch_train=False)
    v = classify_history(composer.history, max_steps=1200, evidence=ev.for_verdict())
    assert v.mediated["interchange"] is True and v.rates["carry"] >= 0.3, v.reasons
    # mediated; true grokking if it generalized late, else no grokking (comprehension): the words are literal
    assert v.label == ("true_grokking" if v.behaviour == "grokking" else "no_grokking"), v.reasons
    assert v.interchange >= 0.8 and v.final_target_level > v.shortcut_best + 0.1


def test_a_single_block_application_is_never_true_grokking():
    flat = trained("model.n_layers=1", "model.n_loops=1")
    ev = circuit_evidence(flat.model, flat.dataset, "ood", n=200, patch_train=False)
    assert ev.interchange.depth_names == [] and ev.interchange.best is None
    v = classify_history(flat.history, max_steps=1200, evidence=ev.for_verdict())
    assert v.label != "true_grokking", v.reasons
    if v.label == "fake_grokking":                                   # it generalized: the reason is named
        assert any("no intermediate state" in r for r in v.reasons)


def test_the_trained_negative_control_holds_no_bridge(composer):
    """OOD test queries trained whole from step 600, their first hops never: the model answers them
    (memorized), its own hop-1 states hold no bridge for them (carry low), while the same model's
    composed ID answers do (carry high); the composer's OOD answers do too."""
    nc = trained("model.n_layers=1", "model.n_loops=2", "data.augmentation=none", "data.memorize_ood_queries=600")
    ood = circuit_evidence(nc.model, nc.dataset, "ood", n=200, patch_train=False)
    assert ood.target_acc >= 0.8                                     # memorized
    assert ood.carry.best is not None and ood.carry.best <= 0.2, ood.carry
    ev_id = circuit_evidence(nc.model, nc.dataset, "id", n=200, patch_train=False)
    if ev_id.carry.best is not None:                                 # the ID answers it composes carry their bridge
        assert ev_id.carry.best >= ood.carry.best + 0.2, (ev_id.carry, ood.carry)
    v = classify_history(nc.history, max_steps=1200, evidence=ood.for_verdict(), criterion="carry")
    assert v.label != "true_grokking" and v.mediated["carry"] is False, v.reasons
