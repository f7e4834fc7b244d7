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

import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from grokray.config import ModelConfig, TrialConfig, to_plain
from grokray.data import PROBES, Batch, Dataset, load_dataset
from grokray.device import choose_device, resolve_precision
from grokray.model import LoopedTransformer
from grokray.train import TrainResult, checkpoint_steps, circuit_readings, eval_steps, evaluate, lr_at, param_norm

#: Keys outside the model section that fix a tensor shape or the shared program.
#: Every ModelConfig field is part of the key too (see :func:`pack_key`).
PACK_KEYS_DATA = ("n_entities", "n_relations")                 # vocab size = E + R + 1
PACK_KEYS_TRAIN = ("batch_size", "precision", "device")        # batch shape, autocast, where


# =========================================================================== which trials pack

def pack_key(cfg: TrialConfig) -> tuple:
    """The shape-defining keys of a trial as ``(("model.d_model", 128), ...)``: two trials can
    share a pack iff their keys are equal.

    All model keys are in it (d_model, heads, d_mlp, layers, loops, reinject_input, causal,
    tie_embeddings, init, and any key added later: a new model key splits packs until
    someone decides it need not), the entity and relation counts (vocab size), the batch
    size, the precision and the device. ``train.precision`` is taken as written (``auto``
    is not resolved), so the key is a pure function of the config.
    """
    key = [(f"model.{f.name}", _hashable(getattr(cfg.model, f.name))) for f in dataclasses.fields(ModelConfig)]
    key += [(f"data.{k}", getattr(cfg.data, k)) for k in PACK_KEYS_DATA]
    key += [(f"train.{k}", getattr(cfg.train, k)) for k in PACK_KEYS_TRAIN]
    return tuple(key)


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def group_into_packs(configs: Sequence[TrialConfig], k: int) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`pack_key` into packs of at most ``k``.

    Stable: groups come in the order of their first member, members in input order.

    >>> from grokray.config import load_trial_config
    >>> cs = [load_trial_config(None, [o]) for o in ("seed=0", "model.n_loops=1", "seed=1", "seed=2")]
    >>> group_into_packs(cs, 2)
    [[0, 2], [3], [1]]
    """
    if k < 1:
        raise ValueError(f"pack size must be >= 1 (got {k})")
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(configs):
        groups.setdefault(pack_key(cfg), []).append(i)
    return [idx[j:j + k] for idx in groups.values() for j in range(0, len(idx), k)]


def check_packable(configs: Sequence[TrialConfig]) -> None:
    """Raise ValueError naming the first key in which a config differs from the first one."""
    if not configs:
        raise ValueError("a pack needs at least one trial config")
    ref = pack_key(configs[0])
    for i, cfg in enumerate(configs[1:], start=1):
        for (name, a), (_, b) in zip(ref, pack_key(cfg)):
            if a != b:
                raise ValueError(f"cannot pack these trials: member {i} differs from member 0 in {name} "
                                 f"({b!r} vs {a!r}); only trials with equal pack_key share a pack")


# =========================================================================== packed layers

class PackedLinear(nn.Module):
    """K independent ``nn.Linear`` s: ``x [K, ..., d_in] -> [K, ..., d_out]`` by one batched matmul."""

    def __init__(self, k: int, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, d_out, d_in))          # [K, out, in], as nn.Linear per member
        self.bias = nn.Parameter(torch.empty(k, d_out)) if bias else None  # [K, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, lead, d_in = x.shape[0], x.shape[1:-1], x.shape[-1]
        x2 = x.reshape(K, -1, d_in)                                       # [K, N, in] (a view when contiguous)
        w = self.weight.transpose(1, 2)                                   # [K, in, out]
        if self.bias is None:
            y = torch.bmm(x2, w)                                          # [K, N, out]
        else:
            # bias + x @ W^T in one kernel, like the addmm behind a solo nn.Linear.
            y = torch.baddbmm(self.bias.unsqueeze(1), x2, w)              # [K, N, out]
        return y.view(K, *lead, y.shape[-1])


class PackedLayerNorm(nn.Module):
    """K LayerNorms over the last dim. ``F.layer_norm`` takes one affine for all rows, so the
    per-member affine is applied after it (one ``addcmul``)."""

    def __init__(self, k: int, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(k, d))                     # [K, d]
        self.bias = nn.Parameter(torch.empty(k, d))                       # [K, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)    # [K, 1, ..., 1, d]
        y = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))


class PackedEmbedding(nn.Module):
    """K embedding tables ``[K, V, d]``; ``idx [K, ...] -> [K, ..., d]`` with member k reading table k.

    Advanced indexing, not ``F.embedding``: the table is a strided view into the flat
    buffer (it cannot be viewed as one ``[K*V, d]`` table), and the backward of indexing
    (``index_put_`` with accumulate) needs no host sync, so it can sit in a CUDA graph.
    """

    def __init__(self, k: int, n: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, n, d))                  # [K, V, d]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        K = idx.shape[0]
        member = torch.arange(K, device=idx.device).view(K, *([1] * (idx.dim() - 1)))  # [K, 1, ..., 1]
        return self.weight[member, idx]                                   # [K, ..., d]


class PackedSelfAttention(nn.Module):
    """:class:`grokray.model.SelfAttention` for K members: the projections are batched
    matmuls; the attention itself is per sequence anyway, so the member and batch dims are
    merged (``[K*B, heads, T, hs]``) and the solo kernels run unchanged: SDPA in fp32,
    explicit ``q @ k^T`` + mask + softmax + ``@ v`` under bf16 (the solo fast path's reason:
    the CPU flash kernel is slow on 3-token sequences)."""

    #: None: matmul attention for bf16 activations, SDPA otherwise; True / False force a path.
    matmul_attention: bool | None = None

    def __init__(self, cfg: ModelConfig, k: int):
        super().__init__()
        self.n_heads, self.causal = cfg.n_heads, cfg.causal
        self.qkv = PackedLinear(k, cfg.d_model, 3 * cfg.d_model)
        self.proj = PackedLinear(k, cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K, B, T, C = x.shape
        nh = self.n_heads
        q, k, v = self.qkv(x).split(C, dim=-1)                            # 3 x [K, B, T, C]
        q, k, v = (z.reshape(K * B, T, nh, C // nh).transpose(1, 2) for z in (q, k, v))  # [K*B, nh, T, hs]
        use_matmul = self.matmul_attention
        if use_matmul is None:
            use_matmul = q.dtype == torch.bfloat16
        if use_matmul:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))   # [K*B, nh, T, T]
            if self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                att = att.masked_fill(~mask, float("-inf"))
            y = att.softmax(dim=-1).to(v.dtype) @ v                      # [K*B, nh, T, hs]
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [K*B, nh, T, hs]
        y = y.transpose(1, 2).contiguous().view(K, B, T, C)              # [K, B, T, C]
        return self.proj(y)


class PackedBlock(nn.Module):
    """Pre-norm block, as :class:`grokray.model.Block` (same parameter names)."""

    def __init__(self, cfg: ModelConfig, k: int):
        super().__init__()
        self.ln_1 = PackedLayerNorm(k, cfg.d_model)
        self.attn = PackedSelfAttention(cfg, k)
        self.ln_2 = PackedLayerNorm(k, cfg.d_model)
        self.mlp = nn.Sequential(PackedLinear(k, cfg.d_model, cfg.d_mlp), nn.GELU(),
                                 PackedLinear(k, cfg.d_mlp, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# =========================================================================== packed model

class PackedLoopedTransformer(nn.Module):
    """K :class:`~grokray.model.LoopedTransformer` s of one shape; ``tokens [K, B, T] -> logits [K, B, T, V]``.

    Parameter names equal the solo model's, with a leading member dimension, so member k's
    state dict is ``{name: p[k]}``. Build it with :meth:`from_models` (the solo
    initialization, exactly); the constructor alone leaves the weights uninitialized.

    Every parameter is a view into ``self.flat [K, P]`` and its ``.grad`` a view into
    ``self.flat_grad [K, P]`` (see the module docstring). Gradients therefore accumulate
    in place: call :meth:`zero_grad` (which zeroes ``flat_grad``), never assign
    ``p.grad = None``. ``.to(device)`` rebuilds the flat buffers on the new device
    (:meth:`_apply`); build any optimizer after the last move.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, n_members: int, n_ctx: int = 3):
        super().__init__()
        K = n_members
        self.cfg, self.vocab_size, self.n_ctx, self.n_members = cfg, vocab_size, n_ctx, K
        self.tok_emb = PackedEmbedding(K, vocab_size, cfg.d_model)
        self.pos_emb = PackedEmbedding(K, n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(PackedBlock(cfg, K) for _ in range(cfg.n_layers))
        self.ln_f = PackedLayerNorm(K, cfg.d_model)
        self.unembed = PackedLinear(K, cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.tok_emb.weight                     # as the solo model: one tensor
        self._flatten()

    # ------------------------------------------------------------------ flat storage
    def _flatten(self) -> None:
        """(Re)build ``flat [K, P]`` / ``flat_grad [K, P]`` and point every parameter (and grad) at its columns.

        Order: weight-decayed tensors first (solo dim >= 2), then biases and norms, so the
        optimizer decays the column range ``[0, n_decay)``.
        """
        params = list(self.named_parameters())                            # tied weights appear once
        params = [np_ for np_ in params if np_[1].dim() >= 3] + [np_ for np_ in params if np_[1].dim() < 3]
        ref = params[0][1]
        K = self.n_members
        P = sum(p[0].numel() for _, p in params)
        flat = torch.empty(K, P, device=ref.device, dtype=ref.dtype)
        flat_grad = torch.zeros(K, P, device=ref.device, dtype=ref.dtype)
        self.slices: dict[str, tuple[int, int]] = {}
        self.n_decay = 0
        off = 0
        with torch.no_grad():
            for name, p in params:
                n = p[0].numel()
                view = flat[:, off:off + n].view(p.shape)                 # [K, ...] strided by P over members
                view.copy_(p.data)
                p.data = view
                p.grad = flat_grad[:, off:off + n].view(p.shape)
                self.slices[name] = (off, n)
                if p.dim() >= 3:
                    self.n_decay = off + n
                off += n
        self.flat, self.flat_grad = flat, flat_grad

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # .to() / .float() / .cuda() replace each parameter's data: re-pack them into one buffer.
        super()._apply(fn, recurse)
        self._flatten()
        return self

    def zero_grad(self, set_to_none: bool = False) -> None:  # type: ignore[override]
        """Zero the flat gradient in place (the grads must stay views into it)."""
        self.flat_grad.zero_()

    def num_params(self) -> int:
        """Parameters per member (as ``LoopedTransformer.num_params`` of one member)."""
        return self.flat.shape[1]                                         # a tied weight counts once, as in parameters()

    # ------------------------------------------------------------------ solo <-> packed
    @classmethod
    def from_models(cls, models: Sequence[LoopedTransformer], device: torch.device | str | None = None
                    ) -> PackedLoopedTransformer:
        """Stack K solo models (same config and vocab) into one packed model, weights copied exactly."""
        m0 = models[0]

        def arch(m: LoopedTransformer) -> dict:                          # init only matters before training
            return {**to_plain(m.cfg), "init": None, "vocab_size": m.vocab_size, "n_ctx": m.n_ctx}
        for i, m in enumerate(models):
            if arch(m) != arch(m0):
                raise ValueError(f"model {i} has another architecture than model 0: {arch(m)} vs {arch(m0)}")
        packed = cls(m0.cfg, m0.vocab_size, len(models), m0.n_ctx)
        sds = [m.state_dict() for m in models]
        with torch.no_grad():
            for name, p in packed.named_parameters():
                p.copy_(torch.stack([sd[name].detach().to(p.device, p.dtype) for sd in sds]))
        if device is not None:
            packed.to(device)
        return packed

    def member_state_dict(self, k: int, clone: bool = True) -> dict[str, torch.Tensor]:
        """Member k as a solo ``LoopedTransformer`` state dict (same keys, tied weights under both names).

        ``clone=False`` returns views into the flat buffer (for a copy into another model);
        cloned tensors do not drag the whole ``[K, P]`` storage into ``torch.save``."""
        out = {}
        for name, t in self.state_dict().items():
            t = t[k].detach()
            out[name] = t.clone() if clone else t
        return out

    def load_member_state_dict(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite member k with a solo state dict (in place: the flat buffer keeps its address)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                p[k].copy_(state[name])

    # ------------------------------------------------------------------ forward
    def residual(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [K, B, T]`` -> final residual stream ``[K, B, T, d]`` (before the final norm)."""
        T = tokens.shape[2]
        emb = self.tok_emb(tokens) + self.pos_emb.weight[:, None, :T]     # [K, B, T, d] + [K, 1, T, d]
        x = emb
        for i in range(self.cfg.n_loops):
            if i > 0 and self.cfg.reinject_input:
                x = x + emb
            for block in self.blocks:
                x = block(x)
        return x

    def decode(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding: ``[K, ..., d] -> [K, ..., V]``."""
        return self.unembed(self.ln_f(resid))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [K, B, T]`` -> ``logits [K, B, T, V]``."""
        return self.decode(self.residual(tokens))

    def answer_logits(self, tokens: torch.Tensor, answer_pos: torch.Tensor) -> torch.Tensor:
        """Logits at each query's answer position, ``[K, B, V]``; only those positions are unembedded."""
        resid = self.residual(tokens)                                     # [K, B, T, d]
        index = answer_pos[:, :, None, None].expand(-1, -1, 1, resid.shape[-1])  # [K, B, 1, d]
        picked = resid.gather(2, index).squeeze(2)                        # [K, B, d]
        return self.decode(picked)                                        # [K, B, V]


# =========================================================================== packed AdamW

class PackedAdamW:
    """AdamW over the flat ``[K, P]`` parameters of a :class:`PackedLoopedTransformer`,
    with per-member lr, weight decay and betas, and an ``active`` mask.

    Per element, the update rule of ``torch.optim.AdamW``, written in the order of operations
    of its fused CPU kernel::

        p  = p * (1 - lr * wd)                    # decoupled decay, only columns [0, n_decay)
        m  = lerp(m, g, 1 - beta1)
        v  = v * beta2 + ((1 - beta2) * g) * g
        p  = p + (-lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    (torch 2.13's fused kernel still rounds ~0.1% of the elements 1 ulp apart from this, as its
    ``foreach`` implementation does: same rule, other rounding; tests/unit/test_packed.py
    measures what that does over 200 steps.)

    The per-member scalars are computed on the host in float64 (as torch does) and passed as
    one ``[K, 8]`` float32 tensor (:meth:`prepare`); :meth:`update` is pure device code
    (graph-capturable). A member with ``active = False`` keeps its parameters, moments and
    step count bitwise: the new values are selected with ``torch.where``, so even NaNs in
    its gradient never reach its state, and never reach another member's (all ops are
    elementwise, or per member).
    """

    #: Columns of the coefficient tensor :meth:`prepare` returns.
    COEFS = ("wd_mul", "lerp_w", "beta2", "one_minus_beta2", "bc2_sqrt", "neg_step_size", "eps", "active")

    def __init__(self, model: PackedLoopedTransformer, weight_decay: Sequence[float],
                 betas: Sequence[tuple[float, float]], eps: float = 1e-8):
        K = model.n_members
        if len(weight_decay) != K or len(betas) != K:
            raise ValueError(f"need one weight decay and one betas pair per member ({K})")
        self.model, self.eps = model, float(eps)
        self.weight_decay = [float(w) for w in weight_decay]
        self.betas = [(float(b1), float(b2)) for b1, b2 in betas]
        self.exp_avg = torch.zeros_like(model.flat)                      # [K, P]
        self.exp_avg_sq = torch.zeros_like(model.flat)                   # [K, P]
        self.steps = [0] * K                                              # AdamW step count per member

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def prepare(self, lrs: Sequence[float], active: Sequence[bool]) -> torch.Tensor:
        """Advance the step count of the active members; their coefficients ``[K, 8]`` (CPU float32)."""
        rows = []
        for k, (lr, on) in enumerate(zip(lrs, active)):
            b1, b2 = self.betas[k]
            if on:
                self.steps[k] += 1
            t = max(self.steps[k], 1)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            rows.append((1 - lr * self.weight_decay[k], 1 - b1, b2, 1 - b2, math.sqrt(bc2), -(lr / bc1),
                         self.eps, 1.0 if on else 0.0))
        # float64 -> float32 once, as the fused kernel casts its double scalars to the parameter dtype.
        return torch.tensor(rows, dtype=torch.float64).to(torch.float32)

    @torch.no_grad()
    def update(self, coef: torch.Tensor) -> None:
        """One AdamW step for all members from ``coef [K, 8]`` (on the parameters' device)."""
        p, g, m, v = self.model.flat, self.model.flat_grad, self.exp_avg, self.exp_avg_sq   # [K, P] each
        nd = self.model.n_decay
        c = coef.to(p.dtype).unsqueeze(-1)                                # [K, 8, 1]: each c[:, i] is [K, 1]
        wd_mul, lerp_w, beta2, omb2, bc2_sqrt, neg_step, eps = (c[:, i] for i in range(7))
        active = c[:, 7] > 0                                              # [K, 1] bool

        m_new = torch.lerp(m, g, lerp_w)                                  # [K, P]
        v_new = torch.addcmul(v * beta2, omb2 * g, g)                     # v*b2 + ((1-b2)*g)*g
        denom = v_new.sqrt().div_(bc2_sqrt).add_(eps)
        step = (neg_step * m_new).div_(denom)                             # (-lr/bc1) * m / denom
        p_new = torch.empty_like(p)
        torch.mul(p[:, :nd], wd_mul, out=p_new[:, :nd])                   # decay matrices and embeddings only
        p_new[:, nd:] = p[:, nd:]
        p_new.add_(step)
        # Stopped members keep every bit: select, never blend (NaN * 0 is NaN).
        p.copy_(torch.where(active, p_new, p))
        m.copy_(torch.where(active, m_new, m))
        v.copy_(torch.where(active, v_new, v))

    def step(self, lrs: Sequence[float], active: Sequence[bool] | None = None) -> None:
        """:meth:`prepare` + :meth:`update` (eager use; the trainer stages the coefficients itself)."""
        active = [True] * len(lrs) if active is None else list(active)
        self.update(self.prepare(lrs, active).to(self.model.flat.device))

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": self.exp_avg.detach().clone(), "exp_avg_sq": self.exp_avg_sq.detach().clone(),
                "steps": list(self.steps), "weight_decay": list(self.weight_decay),
                "betas": [list(b) for b in self.betas], "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exp_avg.copy_(state["exp_avg"])                              # in place: a CUDA graph may hold them
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps = [int(s) for s in state["steps"]]


# =========================================================================== packed trainer

class PackedMember:
    """One member as its callbacks see it: the attributes of a solo :class:`~grokray.train.Trainer`
    that callbacks read (``cfg``, ``dataset``, ``device``, ``precision``, ``step``, ``history``,
    ``checkpoints``, ``model``, ``model_checkpoint()``), plus ``index`` and ``pack``.

    ``model`` is a solo ``LoopedTransformer`` loaded with this member's current weights; the
    pack reuses one such model for all members, so use it within the callback call.
    """

    def __init__(self, pack: PackedTrainer, index: int):
        self.pack, self.index = pack, index
        self.cfg: TrialConfig = pack.cfgs[index]
        self.dataset: Dataset = pack.datasets[index]

    device = property(lambda self: self.pack.device)
    precision = property(lambda self: self.pack.precision)
    step = property(lambda self: self.pack.member_step[self.index])
    history = property(lambda self: self.pack.histories[self.index])
    checkpoints = property(lambda self: self.pack.checkpoints[self.index])
    stop_reason = property(lambda self: self.pack.stop_reasons[self.index])
    active = property(lambda self: self.pack.active[self.index])
    model = property(lambda self: self.pack.member_model(self.index))

    def model_checkpoint(self) -> dict[str, Any]:
        return self.pack.member_checkpoint(self.index)


#: on_eval(step, metrics, member) may return a stop reason for that member (like TrainCallback).
MemberCallback = Any


def _call(callbacks: Sequence, method: str, *args: Any) -> list:
    return [getattr(cb, method)(*args) for cb in callbacks if hasattr(cb, method)]


class PackedTrainer:
    """K trials of one :func:`pack_key` trained as one packed program, each exactly as its solo
    :class:`~grokray.train.Trainer` would (up to floating-point summation order).

    Per member: its dataset (``load_dataset(cfg.data)``), the solo initialization
    (``torch.manual_seed(cfg.seed)`` then ``LoopedTransformer``), the solo batch sequence
    (a CPU generator seeded with ``cfg.seed``, one ``randperm`` per epoch over its own
    training rows), its lr schedule (``lr_at``), weight decay and betas, its evaluation
    schedule (``eval_steps`` with its checkpoint steps), the solo metric names, its
    checkpoints (``work_dirs[k]``, the solo checkpoint format), its callbacks and its stop
    (max_steps, divergence, or a reason returned by one of its callbacks). A stopped member
    is frozen (``active[k] = False``): its weights, optimizer state and batch order stay
    bitwise constant, but the batched kernels still compute it, counted in
    ``frozen_member_steps``.

    ``eval_mode``: ``"member"`` evaluates each member with the solo ``evaluate`` on a solo
    model loaded with its weights (the solo numbers, exactly); ``"packed"`` evaluates the
    probes of all members in one packed forward (same accuracies, losses equal up to
    summation order; much faster on a GPU). The lens metrics always run on the solo model.

    ``cuda_graph``: on CUDA, capture the whole step (batch gather, forward, loss, backward,
    AdamW) in a CUDA graph after ``graph_warmup`` eager steps and replay it; per-step
    inputs (batch rows, lr and the active mask) are copied into static device buffers.
    Ignored on CPU.

    ``time/seconds`` in a member's history is the pack's training wall time.
    """

    def __init__(self, cfgs: Sequence[TrialConfig], datasets: Sequence[Dataset] | None = None,
                 device: torch.device | str | None = None, work_dirs: Sequence[str | os.PathLike | None] | None = None,
                 eval_mode: str = "member", cuda_graph: bool = False, graph_warmup: int = 3):
        cfgs = list(cfgs)
        check_packable(cfgs)
        if eval_mode not in ("member", "packed"):
            raise ValueError(f"eval_mode must be 'member' or 'packed' (got {eval_mode!r})")
        self.cfgs, self.K = cfgs, len(cfgs)
        K, c0 = self.K, cfgs[0]
        threads = max(c.train.threads for c in cfgs)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device) if device is not None else choose_device(c0.train.device)
        self.precision = resolve_precision(c0.train.precision, self.device)
        self.eval_mode = eval_mode
        self.datasets = list(datasets) if datasets is not None else [load_dataset(c.data) for c in cfgs]
        if len(self.datasets) != K:
            raise ValueError(f"need one dataset per member ({K}), got {len(self.datasets)}")
        vocab = {ds.vocab_size for ds in self.datasets}
        if len(vocab) != 1:
            raise ValueError(f"members' datasets have different vocab sizes {sorted(vocab)}")
        self.work_dirs = [Path(w) if w is not None else None for w in (work_dirs or [None] * K)]

        # Models: the solo initialization, member by member, then stacked.
        models = []
        for c in cfgs:
            torch.manual_seed(c.seed)
            models.append(LoopedTransformer(c.model, self.datasets[0].vocab_size))
        self.model = PackedLoopedTransformer.from_models(models, device=self.device)
        self.optimizer = PackedAdamW(self.model, [c.train.weight_decay for c in cfgs],
                                     [tuple(c.train.betas) for c in cfgs])
        # One solo model on the device, reloaded with a member's weights for evaluation / callbacks.
        self._solo = models[0].to(self.device)
        self._solo_holds: tuple[int, int] | None = None                   # (member, weights version)
        self._version = 0

        # Data: each distinct dataset's training rows once on the device; member k's rows
        # start at row_offset[k]. A batch is one gather of K x B global row numbers.
        B = c0.train.batch_size
        blocks, first_row, probes_by_ds = [], {}, {}
        self.n_train, self.row_offset, self.probes = [], [], []
        rows_so_far = 0
        for ds in self.datasets:
            if ds.name not in first_row:
                enc = ds.encode(ds.train_rows())
                first_row[ds.name] = rows_so_far
                rows_so_far += len(enc)
                blocks.append(enc)
                names = [p for p in PROBES if p in ds.probe_rows] + [p for p in ds.probe_rows if p not in PROBES]
                probes_by_ds[ds.name] = {n: ds.encode(ds.probe_rows[n]).to(self.device) for n in names}
            self.row_offset.append(first_row[ds.name])
            self.n_train.append(len(ds.train_rows()))
            self.probes.append(probes_by_ds[ds.name])
        for k, n in enumerate(self.n_train):
            if n < B:
                raise ValueError(f"member {k} has {n} training rows, fewer than train.batch_size {B}: "
                                 "its solo batches would be smaller, so it cannot be packed")
        train = Batch(*(torch.cat(t) for t in zip(*((b.tokens, b.answer_pos, b.target, b.bridge) for b in blocks))))
        self.train_data = train.to(self.device)
        self.batch_size = B

        # Batch order per member, as Trainer._next_indices.
        self.generators = []
        for c in cfgs:
            g = torch.Generator(device="cpu")
            g.manual_seed(c.seed)
            self.generators.append(g)
        self.perms: list[torch.Tensor] = [torch.empty(0, dtype=torch.long) for _ in range(K)]
        self.cursors = [0] * K
        # The same orders side by side, so that one gather draws every member's batch (a loop of K
        # slices costs ~2 ms a step at K = 128, as much as the GPU step itself).
        self._perm_rows = torch.zeros(K, max(self.n_train), dtype=torch.long)   # [K, n_max]
        self._row_offset = torch.tensor(self.row_offset, dtype=torch.long)[:, None]  # [K, 1]
        self._arange_b = torch.arange(B)                                   # [B]
        self._idx_host = torch.zeros(K, B, dtype=torch.long)              # [K, B] global rows of the last batch

        # Schedules and per-member state.
        self.eval_schedules = [eval_steps(c.train.max_steps, c.train.eval_per_decade, c.train.eval_max_interval,
                                          extra=checkpoint_steps(c.train)) for c in cfgs]
        self.checkpoint_schedules = [set(checkpoint_steps(c.train)) for c in cfgs]
        self.step = 0                                                     # packed steps taken
        self.member_step = [0] * K                                        # steps each member trained
        self.active = [True] * K
        self.stop_reasons: list[str | None] = [None] * K
        self.ended = [False] * K                                          # on_end already called
        self.histories: list[list[dict[str, float]]] = [[] for _ in range(K)]
        self.checkpoints: list[dict[int, str]] = [{} for _ in range(K)]
        self.frozen_member_steps = [0] * K                                # steps computed while frozen
        self.seconds = 0.0
        self.members = [PackedMember(self, k) for k in range(K)]
        self._last_losses: torch.Tensor | None = None                     # [K] losses of the last step
        self._last_loss_valid = [False] * K                               # a step trained it since run() began
        self._padded: dict[str, tuple] | None = None                      # probes padded for eval_mode="packed"

        # CUDA: static device inputs, pinned staging ring, optional graph.
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.graph_warmup = graph_warmup
        self._graph = None
        self._graph_losses: torch.Tensor | None = None
        self.graph_error: str | None = None                               # why capture failed, if it did
        self._eager_steps = 0
        if self.device.type == "cuda":
            n_coef = len(PackedAdamW.COEFS)
            self._idx_dev = torch.zeros(K, B, dtype=torch.long, device=self.device)
            self._coef_dev = torch.zeros(K, n_coef, dtype=torch.float32, device=self.device)
            ring = 4  # the host may run this many steps ahead of the GPU
            self._idx_pin = [torch.zeros(K, B, dtype=torch.long).pin_memory() for _ in range(ring)]
            self._coef_pin = [torch.zeros(K, n_coef, dtype=torch.float32).pin_memory() for _ in range(ring)]
            self._ring_events: list = [None] * ring
            self._ring_i = 0

    # ------------------------------------------------------------------ batches
    def _draw_indices(self) -> torch.Tensor:
        """``[K, B]`` global training rows: each active member's next solo batch; a frozen member
        repeats its last batch without touching its generator."""
        B = self.batch_size
        for k in range(self.K):
            n = self.datasets[k].rows_in_play(self.member_step[k])                # Trainer._next_indices
            if self.active[k] and (self.cursors[k] + B > len(self.perms[k]) or len(self.perms[k]) != n):
                self.perms[k] = torch.randperm(n, generator=self.generators[k])
                self._perm_rows[k, :n] = self.perms[k]
                self.cursors[k] = 0
        # A frozen member's cursor may sit at the end of its order: read row 0, then drop it below.
        cursor = torch.tensor([c if a else 0 for c, a in zip(self.cursors, self.active)])[:, None]   # [K, 1]
        rows = self._perm_rows.gather(1, cursor + self._arange_b) + self._row_offset   # [K, B]
        active = torch.tensor(self.active)[:, None]                       # [K, 1]
        self._idx_host = torch.where(active, rows, self._idx_host)
        for k in range(self.K):
            if self.active[k]:
                self.cursors[k] += B
        return self._idx_host

    def _autocast(self, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return contextlib.nullcontext()

    def _compute_step(self, idx: torch.Tensor, coef: torch.Tensor, cache_enabled: bool = True) -> torch.Tensor:
        """Gather, forward, per-member float32 loss, backward, AdamW: device code only (capturable)."""
        tokens = self.train_data.tokens[idx]                              # [K, B, T]
        answer_pos = self.train_data.answer_pos[idx]                      # [K, B]
        target = self.train_data.target[idx]                              # [K, B]
        with self._autocast(cache_enabled):
            logits = self.model.answer_logits(tokens, answer_pos)         # [K, B, V]
        K, B, V = logits.shape
        # Cross entropy on the answer token in float32, the mean over each member's own batch.
        losses = F.cross_entropy(logits.float().reshape(K * B, V), target.reshape(K * B),
                                 reduction="none").view(K, B).mean(1)     # [K]
        self.optimizer.zero_grad()
        with warnings.catch_warnings():
            # The grads are strided views into flat_grad (on purpose); autograd warns that such a
            # layout "may impair performance", which only concerns grads it would allocate itself.
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            # The sum's gradient w.r.t. member k's weights is exactly member k's loss gradient.
            losses.sum().backward()
        self.optimizer.update(coef)
        return losses.detach()

    def train_step(self) -> torch.Tensor:
        """One packed step; returns the members' batch losses ``[K]`` (float32, not synced)."""
        lrs = [lr_at(self.member_step[k], c.train) for k, c in enumerate(self.cfgs)]
        idx_host = self._draw_indices()
        coef_host = self.optimizer.prepare(lrs, self.active)
        if self.device.type != "cuda":
            # the step's inputs go where the model is (a no-op on the CPU; the meta device in shape tests)
            losses = self._compute_step(idx_host.to(self.device), coef_host.to(self.device))
        else:
            losses = self._cuda_step(idx_host, coef_host)
        for k in range(self.K):
            if self.active[k]:
                self.member_step[k] += 1
                self._last_loss_valid[k] = True
            else:
                self.frozen_member_steps[k] += 1
        self.step += 1
        self._version += 1
        self._last_losses = losses
        return losses

    def _cuda_step(self, idx_host: torch.Tensor, coef_host: torch.Tensor) -> torch.Tensor:
        # Events, streams and graphs belong to a device: create them on the pack's (train.device cuda:1
        # must not watch cuda:0's stream), whatever the current device is.
        with torch.cuda.device(self.device):
            return self._cuda_step_here(idx_host, coef_host)

    def _cuda_step_here(self, idx_host: torch.Tensor, coef_host: torch.Tensor) -> torch.Tensor:
        # Stage the step's inputs through a ring of pinned buffers into the static device
        # buffers: the copy is async, and a slot is reused only after the GPU has read it.
        slot = self._ring_i % len(self._idx_pin)
        self._ring_i += 1
        if self._ring_events[slot] is not None:
            self._ring_events[slot].synchronize()
        self._idx_pin[slot].copy_(idx_host)
        self._coef_pin[slot].copy_(coef_host)
        self._idx_dev.copy_(self._idx_pin[slot], non_blocking=True)
        self._coef_dev.copy_(self._coef_pin[slot], non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self._ring_events[slot] = ev
        if not self.cuda_graph:
            return self._compute_step(self._idx_dev, self._coef_dev)
        if self._graph is not None:
            self._graph.replay()
            return self._graph_losses.clone()
        if self._eager_steps < self.graph_warmup:
            # Warm-up steps (real training steps) on a side stream, as torch.cuda.graphs asks.
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                losses = self._compute_step(self._idx_dev, self._coef_dev, cache_enabled=False)
            torch.cuda.current_stream().wait_stream(s)
            self._eager_steps += 1
            return losses
        # Capture (records, does not run), then replay this very step.
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._graph_losses = self._compute_step(self._idx_dev, self._coef_dev, cache_enabled=False)
        except Exception as e:  # an op that cannot be captured: train on, eagerly, and say so
            self.cuda_graph, self.graph_error = False, f"{type(e).__name__}: {e}"
            warnings.warn(f"CUDA graph capture of the packed step failed, continuing eagerly: {self.graph_error}")
            torch.cuda.synchronize()
            return self._compute_step(self._idx_dev, self._coef_dev)
        self._graph = graph
        self._graph.replay()
        return self._graph_losses.clone()

    # ------------------------------------------------------------------ members as solo models
    def member_model(self, k: int) -> LoopedTransformer:
        """A solo model holding member k's current weights (one shared model: reloaded per call)."""
        if self._solo_holds != (k, self._version):
            self._solo.load_state_dict(self.model.member_state_dict(k, clone=False))
            self._solo_holds = (k, self._version)
        return self._solo

    def member_checkpoint(self, k: int) -> dict[str, Any]:
        """Member k in the solo trainer's checkpoint format (``Trainer.model_checkpoint``)."""
        cfg, ds = self.cfgs[k], self.datasets[k]
        return {"model": {n: t.cpu() for n, t in self.model.member_state_dict(k).items()},
                "model_config": to_plain(cfg.model), "vocab_size": ds.vocab_size,
                "n_ctx": 3, "step": self.member_step[k], "dataset": ds.name, "trial_config": cfg.to_dict()}

    def save_member_checkpoint(self, k: int) -> Path:
        wd = self.work_dirs[k]
        assert wd is not None
        step = self.member_step[k]
        path = wd / "checkpoints" / f"step_{step:07d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.member_checkpoint(k), path)
        self.checkpoints[k][step] = str(path)
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, members: Sequence[int]) -> dict[int, dict[str, float]]:
        """The solo trainer's metrics (probes, param_norm, lr, lens) for each of ``members``."""
        out: dict[int, dict[str, float]] = {}
        packed = self._evaluate_packed() if self.eval_mode == "packed" else None
        norms = None
        if packed is not None:
            norms = self.model.flat.detach().double().pow(2).sum(1).sqrt().tolist()
        for k in members:
            cfg = self.cfgs[k]
            if packed is None:
                model = self.member_model(k)
                metrics = evaluate(model, self.probes[k], self.precision, self.device)
                metrics["param_norm"] = param_norm(model)
            else:
                metrics = packed[k]
                metrics["param_norm"] = norms[k]                      # tied weights sit in flat once, as in parameters()
            metrics["lr"] = lr_at(self.member_step[k], cfg.train)
            metrics.update(circuit_readings(self.member_model(k), self.datasets[k], cfg.train, self.precision,
                                            self.device))
            out[k] = metrics
        return out

    def _padded_probes(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each probe of all members padded to one length (built once): name -> (tokens [K, N, 3],
        answer_pos [K, N], target [K, N], valid [K, N], sizes [K])."""
        if self._padded is None:
            K, dev = self.K, self.device
            names: list[str] = []
            for pr in self.probes:
                names += [n for n in pr if n not in names]
            self._padded = {}
            for name in names:
                sizes = [len(pr[name]) if name in pr else 0 for pr in self.probes]
                n_max = max(sizes)
                if n_max == 0:
                    continue
                tokens = torch.zeros(K, n_max, 3, dtype=torch.long, device=dev)   # padding: token 0 ...
                pos = torch.ones(K, n_max, dtype=torch.long, device=dev)          # ... read at position 1
                target = torch.zeros(K, n_max, dtype=torch.long, device=dev)
                for k, pr in enumerate(self.probes):
                    if sizes[k]:
                        b = pr[name]
                        tokens[k, :sizes[k]], pos[k, :sizes[k]], target[k, :sizes[k]] = b.tokens, b.answer_pos, b.target
                valid = torch.arange(n_max, device=dev)[None] < torch.tensor(sizes, device=dev)[:, None]  # [K, N]
                self._padded[name] = (tokens, pos, target, valid, sizes)
        return self._padded

    @torch.no_grad()
    def _evaluate_packed(self) -> list[dict[str, float]]:
        """``acc/<probe>``, ``loss/<probe>`` for every member in packed forwards (probes padded to one length)."""
        K = self.K
        out: list[dict[str, float]] = [{} for _ in range(K)]
        was_training = self.model.training
        self.model.eval()
        chunk = max(64, 65536 // K)                                       # rows per member per forward
        for name, (tokens, pos, target, valid, sizes) in self._padded_probes().items():
            loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
            correct = torch.zeros(K, dtype=torch.long, device=self.device)
            for i in range(0, tokens.shape[1], chunk):
                sl = slice(i, i + chunk)
                with self._autocast():
                    logits = self.model.answer_logits(tokens[:, sl], pos[:, sl]).float()   # [K, n, V]
                n, V = logits.shape[1:]
                ce = F.cross_entropy(logits.reshape(K * n, V), target[:, sl].reshape(-1),
                                     reduction="none").view(K, n)         # [K, n]
                v = valid[:, sl]
                loss_sum += torch.where(v, ce, torch.zeros_like(ce)).sum(1).double()
                correct += ((logits.argmax(-1) == target[:, sl]) & v).sum(1)
            loss_sum, correct = loss_sum.tolist(), correct.tolist()
            for k in range(K):
                if sizes[k]:
                    out[k][f"acc/{name}"] = correct[k] / sizes[k]
                    out[k][f"loss/{name}"] = loss_sum[k] / sizes[k]
        self.model.train(was_training)
        return out

    # ------------------------------------------------------------------ loop
    def _next_eval(self, k: int) -> int | None:
        last = self.histories[k][-1]["step"] if self.histories[k] else -1
        return next((s for s in self.eval_schedules[k] if s > last and s >= self.member_step[k]), None)

    def run(self, callbacks: Sequence[Sequence[MemberCallback]] | None = None,
            until_step: int | None = None) -> list[TrainResult]:
        """Train every active member to its max_steps (or its stop); resumes from the current step.

        ``callbacks[k]``: member k's callbacks (``on_start(member)``, ``on_eval(step, metrics,
        member)`` -> stop reason or None, ``on_checkpoint(step, path, member)``,
        ``on_end(result, member)``), with ``member`` a :class:`PackedMember`.
        ``until_step``: pause once the pack reaches this step (members stay active, no
        ``on_end``; their results say ``stop_reason=None``), e.g. to save a state and resume.
        """
        cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in range(self.K)]
        if len(cbs) != self.K:
            raise ValueError(f"need one callback list per member ({self.K}), got {len(cbs)}")
        self.model.train()
        for k in range(self.K):
            if self.active[k]:
                _call(cbs[k], "on_start", self.members[k])
        self._last_loss_valid = [False] * self.K
        t0, seconds0 = time.perf_counter(), self.seconds
        while True:
            due = {k: s for k in range(self.K) if self.active[k] and (s := self._next_eval(k)) is not None}
            if not due:
                break
            target = min(due.values())
            if until_step is not None and target > until_step:
                while self.step < until_step:
                    self.train_step()
                break
            while self.step < target:
                self.train_step()
            members = [k for k, s in due.items() if s == target]
            metrics_by_member = self.evaluate(members)
            losses = self._last_losses.tolist() if self._last_losses is not None else None
            self.seconds = seconds0 + time.perf_counter() - t0
            for k in members:
                metrics = metrics_by_member[k]
                if losses is not None and self._last_loss_valid[k]:
                    metrics["train_loss"] = float(losses[k])
                metrics["time/seconds"] = self.seconds
                self._finish_eval(k, metrics, cbs[k])
        self.seconds = seconds0 + time.perf_counter() - t0
        results = []
        for k in range(self.K):
            result = TrainResult(self.member_step[k], self.stop_reasons[k], self.histories[k],
                                 dict(self.checkpoints[k]), self.seconds)
            if not self.active[k] and not self.ended[k]:
                self.ended[k] = True
                _call(cbs[k], "on_end", result, self.members[k])
            results.append(result)
        return results

    def _finish_eval(self, k: int, metrics: dict[str, float], callbacks: list) -> None:
        """Log member k's evaluation, checkpoint, ask its callbacks, and freeze it if it stops (as Trainer.run)."""
        step, cfg = self.member_step[k], self.cfgs[k]
        self.histories[k].append({"step": step, **metrics})
        diverged = not (math.isfinite(metrics.get("train_loss", 0.0)) and math.isfinite(metrics["param_norm"]))
        done = step >= cfg.train.max_steps
        if self.work_dirs[k] is not None and (step in self.checkpoint_schedules[k] or diverged or done):
            path = self.save_member_checkpoint(k)
            _call(callbacks, "on_checkpoint", step, path, self.members[k])
        reasons = [r for r in _call(callbacks, "on_eval", step, metrics, self.members[k]) if r]
        reason = "diverged" if diverged else reasons[0] if reasons else "max_steps" if done else None
        if reason is None:
            return
        if reason != "max_steps" and self.work_dirs[k] is not None and step not in self.checkpoints[k]:
            path = self.save_member_checkpoint(k)
            _call(callbacks, "on_checkpoint", step, path, self.members[k])
        self.freeze(k, reason)

    def freeze(self, k: int, reason: str = "stopped") -> None:
        """Stop member k: from now on its weights, optimizer state and batch order stay as they are."""
        self.active[k] = False
        self.stop_reasons[k] = reason

    def stats(self) -> dict[str, Any]:
        """Packed steps, member-steps trained and member-steps spent on frozen members."""
        trained, frozen = sum(self.member_step), sum(self.frozen_member_steps)
        return {"steps": self.step, "members": self.K, "member_steps_trained": trained,
                "member_steps_frozen": frozen, "useful_fraction": trained / max(trained + frozen, 1),
                "seconds": self.seconds}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly (CPU): weights, optimizer, data order, histories, stops."""
        return {"format": "grokray.packed/1", "trial_configs": [c.to_dict() for c in self.cfgs],
                "model": {n: t.detach().clone() for n, t in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "members": [{"step": self.member_step[k], "generator": self.generators[k].get_state(),
                             "perm": self.perms[k], "cursor": self.cursors[k], "last_rows": self._idx_host[k].clone(),
                             "history": [dict(h) for h in self.histories[k]], "checkpoints": dict(self.checkpoints[k]),
                             "active": self.active[k], "stop_reason": self.stop_reasons[k], "ended": self.ended[k],
                             "frozen_steps": self.frozen_member_steps[k]} for k in range(self.K)],
                "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if [c.to_dict() for c in self.cfgs] != state["trial_configs"]:
            raise ValueError("the saved pack was trained with other trial configs (or another member order)")
        self.model.load_state_dict(state["model"])                        # in place, into the flat buffer
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        for k, m in enumerate(state["members"]):
            self.member_step[k] = int(m["step"])
            self.generators[k].set_state(m["generator"])
            self.perms[k], self.cursors[k] = m["perm"], int(m["cursor"])
            self._perm_rows[k, :len(m["perm"])] = m["perm"]
            self._idx_host[k] = m["last_rows"]
            self.histories[k] = [dict(h) for h in m["history"]]
            self.checkpoints[k] = {int(s): p for s, p in m["checkpoints"].items()}
            self.active[k], self.stop_reasons[k], self.ended[k] = bool(m["active"]), m["stop_reason"], bool(m["ended"])
            self.frozen_member_steps[k] = int(m["frozen_steps"])
        self.seconds = float(state.get("seconds", 0.0))
        self._version += 1

    def save_state(self, path: str | os.PathLike) -> None:
        tmp = f"{path}.tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_state(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
