"""Issue 25: what a CPU can prove about the CUDA paths before a GPU is lent.

Each test fails without its fix: device resolution under Ray, shapes on the ``meta`` device (the
step's inputs follow the model), checkpoints honouring ``map_location``, pack sizing that counts
every shape group and the optimizer's temporaries, the classifier's precision."""
from __future__ import annotations

import pytest
import torch

from grokray.config import TrialConfig
from grokray.device import resolve_auto


@pytest.mark.parametrize("spec, assigned, cuda, expected", [
    ("auto", None, True, "cuda"),      # plain `grokray train` on a GPU machine
    ("auto", None, False, "cpu"),
    ("auto", False, True, "cpu"),      # a Ray trial with gpu: 0 on a GPU node: never the GPU
    ("auto", True, True, "cuda"),
    ("auto", True, False, "cpu"),
    ("cpu", True, True, "cpu"),        # named explicitly: the user's choice
    ("cuda:1", False, True, "cuda:1"),
])
def test_auto_resolves_from_what_the_scheduler_assigned(spec, assigned, cuda, expected):
    assert resolve_auto(spec, assigned, cuda) == expected


def test_trial_device_outside_ray_leaves_the_config_alone():
    from grokray.sweep.trainable import trial_device

    assert trial_device("cpu") is None and trial_device("cuda:0") is None


def small(**train) -> TrialConfig:
    cfg = TrialConfig()
    cfg.data.n_entities, cfg.data.phi = 30, 2.0
    cfg.train.lens_sample = cfg.train.circuit_sample = 0
    cfg.train.precision = "fp32"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_solo_and_packed_steps_run_on_the_meta_device():
    """Every tensor of a step follows the model's device (the packed CPU branch once left the batch
    indices on the CPU, which fails on any other non-CUDA device)."""
    from grokray.packed import PackedTrainer
    from grokray.train import Trainer

    t = Trainer(small(), device="meta")
    assert t.train_step().device.type == "meta" and next(t.model.parameters()).device.type == "meta"
    p = PackedTrainer([small(), small(weight_decay=0.1)], device="meta")
    losses = p.train_step()
    assert losses.device.type == "meta" and losses.shape == (2,)


def test_load_checkpoint_builds_the_model_where_it_is_asked(tmp_path):
    from grokray.model import load_checkpoint
    from grokray.train import Trainer

    t = Trainer(small(max_steps=1))
    path = tmp_path / "c.pt"
    torch.save(t.model_checkpoint(), path)
    model, _ = load_checkpoint(str(path), map_location="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    cpu, _ = load_checkpoint(str(path))
    assert {p.device.type for p in cpu.parameters()} == {"cpu"}


def test_member_bytes_covers_every_pack_group_and_the_optimizer_temporaries():
    from grokray.packed import PackedTrainer
    from grokray.sweep.packing import BYTES_PER_PARAM, largest_member_bytes, member_bytes
    from grokray.sweep.spec import spec_from_dict

    for loops in (2, 4):
        cfg = small()
        cfg.model.n_loops = loops
        pack = PackedTrainer([cfg, cfg])
        per_member = pack.model.num_params() // 2
        # weights, grads, 2 moments (16 B) + PackedAdamW's ~6 [K, P] fp32 temporaries (24 B), per parameter
        assert member_bytes(cfg) >= per_member * (16 + 24) and BYTES_PER_PARAM == 40
    two, four = small(), small()
    four.model.n_loops = 4
    assert member_bytes(four) > member_bytes(two)
    spec = spec_from_dict({"name": "p", "base": two.to_dict(), "parameters": {"model.n_loops": [2, 4]}})
    assert largest_member_bytes(spec) == member_bytes(four) > member_bytes(spec)   # not the base's
