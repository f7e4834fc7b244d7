"""The packed model: :class:`grokray.model.LoopedTransformer` with every parameter stacked on a
leading member dimension ``[K, ...]`` and all of them views into one flat buffer."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from grokray.config import ModelConfig, to_plain
from grokray.model import LoopedTransformer


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
