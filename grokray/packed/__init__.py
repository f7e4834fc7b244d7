"""Packed trials: K trials of one shape trained in one process, each still its own run.

A sweep's trials are small (a ~0.2M-parameter model on batches of 512 three-token
queries), far too small to fill a GPU one at a time. Packing stacks the weights of K
such trials on a leading member dimension and runs them as ONE program: every
``nn.Linear`` becomes a batched matmul over ``[K, ...]`` weights, the optimizer one
vectorized AdamW over all members' parameters at once. Nothing is shared between
members except the kernels: each keeps its own initialization (the solo seed), its own
data (dataset, batch order), its own hyper-parameters (lr, schedule, weight decay,
betas), its own evaluations, history, callbacks and stop.

* :func:`pack_key` / :func:`group_into_packs`: which trials can share a pack. Keys that
  change a tensor shape or the arithmetic of the shared program (model section, vocab
  via entity / relation counts, batch size, precision, device) must be equal; everything
  else (seed, data seed, phi, augmentation, lr, weight decay, betas, warm-up, schedule,
  max_steps, evaluation keys) may differ.
* :class:`PackedLoopedTransformer`: the exact architecture of
  :class:`grokray.model.LoopedTransformer` with parameters ``[K, ...]``; built from K solo
  models (:meth:`~PackedLoopedTransformer.from_models`) and exported back per member
  (:meth:`~PackedLoopedTransformer.member_state_dict`), loadable by the solo model.
* :class:`PackedAdamW`: torch's AdamW update rule (decoupled weight decay, bias
  correction, eps 1e-8) with per-member lr, weight decay and betas, and an ``active``
  mask that leaves a stopped member's weights and optimizer state bitwise untouched.
* :class:`PackedTrainer`: the solo :class:`grokray.train.Trainer` for K members: same
  batches, schedules, evaluations, metric names, checkpoints, callbacks (per member) and
  ``state_dict`` for an exact resume on CPU; optional CUDA-graph capture of the step.

Parameters live in ONE flat buffer ``flat [K, P]`` (member-major: member k's P numbers
are contiguous), and every parameter is a view into it, as is its gradient into
``flat_grad [K, P]``. The optimizer then updates all parameters of all members with
~20 elementwise kernels instead of ~12 per parameter tensor, and a CUDA graph finds
every buffer at a fixed address. Columns ``[0, n_decay)`` hold the tensors that get
weight decay (dim >= 2 in the solo model: matrices and embeddings), the rest biases
and norms (no decay, as in the solo trainer).

Example:
    >>> from grokray.config import load_trial_config
    >>> tiny = ["data.n_entities=30", "data.n_relations=6", "data.out_degree=4", "data.phi=2.0",
    ...         "model.d_model=32", "model.n_heads=2", "model.d_mlp=64", "train.batch_size=64",
    ...         "train.max_steps=3", "train.lens_sample=0", "train.precision=fp32"]
    >>> cfgs = [load_trial_config(None, tiny + [f"seed={s}", f"train.lr={lr}"]) for s, lr in [(0, 1e-3), (1, 3e-3)]]
    >>> [pack_key(c) == pack_key(cfgs[0]) for c in cfgs]
    [True, True]
    >>> pack = PackedTrainer(cfgs)
    >>> results = pack.run()
    >>> [r.steps_run for r in results], [r.stop_reason for r in results]
    ([3, 3], ['max_steps', 'max_steps'])
    >>> sorted(results[1].history[-1])[:2]
    ['acc/id_atomic', 'acc/ood_atomic']
"""
from __future__ import annotations

from grokray.packed.groups import PACK_KEYS_DATA, PACK_KEYS_TRAIN, check_packable, group_into_packs, pack_key
from grokray.packed.model import (PackedBlock, PackedEmbedding, PackedLayerNorm, PackedLinear, PackedLoopedTransformer,
                                  PackedSelfAttention)
from grokray.packed.optim import PackedAdamW
from grokray.packed.trainer import MemberCallback, PackedMember, PackedTrainer

__all__ = ["PACK_KEYS_DATA", "PACK_KEYS_TRAIN", "pack_key", "group_into_packs", "check_packable", "PackedLinear",
           "PackedLayerNorm", "PackedEmbedding", "PackedSelfAttention", "PackedBlock", "PackedLoopedTransformer",
           "PackedAdamW", "PackedMember", "PackedTrainer", "MemberCallback"]
