"""A looped (parameter-sharing) decoder-only transformer with named hook points.

``n_layers`` distinct pre-norm blocks form a stack; the stack is applied ``n_loops``
times (``n_loops=1`` is the ordinary, non-shared model). Optionally the input
embedding is re-injected before every loop after the first (as in He et al.'s TRM).
A final LayerNorm and an unembedding (optionally tied to the token embedding, as in
GPT-2) produce logits at every position.

Hook points, TransformerLens style: parameter-free identity modules named by where
they sit in the unrolled computation, so a cache keeps every loop iteration even
though the weights are shared::

    embed                          token + position embedding           [B, T, d]
    loop.{i}.layer.{j}.resid_post  residual stream after block j in loop i  [B, T, d]

``model.resid_names`` lists them in depth order (depth 0 = embed). Read them with
:meth:`LoopedTransformer.run_with_cache`, overwrite them with
:meth:`LoopedTransformer.run_with_hooks`; :meth:`LoopedTransformer.decode` is the
logit lens (final norm + unembedding applied to any residual state).

Example:
    >>> import torch
    >>> m = LoopedTransformer(ModelConfig(d_model=32, n_heads=2, d_mlp=64, n_layers=1, n_loops=2), vocab_size=20)
    >>> logits, cache = m.run_with_cache(torch.zeros(4, 3, dtype=torch.long))
    >>> logits.shape, m.resid_names
    (torch.Size([4, 3, 20]), ['embed', 'loop.0.layer.0.resid_post', 'loop.1.layer.0.resid_post'])
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from grokray.config import ModelConfig

#: A hook gets (activation, hook_name) and returns a replacement activation or None (keep).
HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """Identity with a name; forward hooks registered on it can read or replace the activation."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class SelfAttention(nn.Module):
    """Multi-head self-attention, causal unless ``cfg.causal`` is false (every position sees
    the whole query, as in He et al.'s TRM).

    Two kernels, same result: ``F.scaled_dot_product_attention`` in fp32, and explicit
    ``q @ k^T`` + (causal mask) + softmax + ``@ v`` when the activations are bf16 (autocast).
    Why: our sequences are 3 tokens long, and PyTorch's CPU flash-attention kernel, tiled
    for long sequences, spends ~45% of a bf16 training step on B x heads problems of 3 x 3;
    two small matmuls make the step ~1.5x faster (python -m benchmarks.fastpath). In fp32 SDPA is
    already fast. ``matmul_attention`` forces one path (None = choose by dtype).
    """

    #: None: matmul attention for bf16 activations, SDPA otherwise; True / False force a path.
    matmul_attention: bool | None = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)                            # 3 x [B, T, C]
        q, k, v = (z.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for z in (q, k, v))  # [B, nh, T, hs]
        use_matmul = self.matmul_attention
        if use_matmul is None:
            use_matmul = q.dtype == torch.bfloat16
        if use_matmul:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, nh, T, T]
            if self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                att = att.masked_fill(~mask, float("-inf"))
            y = att.softmax(dim=-1).to(v.dtype) @ v                       # [B, nh, T, hs]
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # [B, nh, T, hs]
        y = y.transpose(1, 2).contiguous().view(B, T, C)                 # [B, T, C]
        return self.proj(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LoopedTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, n_ctx: int = 3):
        super().__init__()
        self.cfg, self.vocab_size, self.n_ctx = cfg, vocab_size, n_ctx
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.unembed = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            # The bridge predicted at r1 then lives in the same space as an input entity, which
            # the next loop can read like the token itself.
            self.unembed.weight = self.tok_emb.weight
        names = ["embed"] + [f"loop.{i}.layer.{j}.resid_post"
                             for i in range(cfg.n_loops) for j in range(cfg.n_layers)]
        # ModuleDict keys may not contain '.', so hooks are stored under '__'-joined keys.
        self.hook_points = nn.ModuleDict({n.replace(".", "__"): HookPoint(n) for n in names})
        self.resid_names: list[str] = names
        if cfg.init == "gpt2":
            self.apply(self._init_gpt2)
            # Scale the residual output projections by 1/sqrt(number of residual additions).
            n_writes = 2 * cfg.n_layers * cfg.n_loops
            for block in self.blocks:
                for proj in (block.attn.proj, block.mlp[2]):
                    nn.init.normal_(proj.weight, std=0.02 / math.sqrt(n_writes))
        # else: PyTorch's defaults, already applied by the layer constructors.

    @staticmethod
    def _init_gpt2(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def n_depths(self) -> int:
        """Number of residual states: embed + one per block application."""
        return len(self.resid_names)

    def hook(self, name: str) -> HookPoint:
        return self.hook_points[name.replace(".", "__")]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward
    def residual(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the blocks; the final residual stream before the final norm, ``[B, T, d]``."""
        B, T = tokens.shape
        pos = torch.arange(T, device=tokens.device)
        # Re-injection reads the hooked embedding, so patching `embed` reaches every loop.
        emb = self.hook_points["embed"](self.tok_emb(tokens) + self.pos_emb(pos)[None])  # [B, T, d]
        x = emb
        for i in range(self.cfg.n_loops):
            if i > 0 and self.cfg.reinject_input:
                x = x + emb
            for j, block in enumerate(self.blocks):
                x = self.hook_points[f"loop__{i}__layer__{j}__resid_post"](block(x))
        return x

    def decode(self, resid: torch.Tensor) -> torch.Tensor:
        """Logit lens: final norm + unembedding of any residual state ``[..., d] -> [..., V]``."""
        return self.unembed(self.ln_f(resid))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B, T]`` -> ``logits [B, T, V]``."""
        return self.decode(self.residual(tokens))

    # ------------------------------------------------------------------ hooks
    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[str, HookFn]]) -> Iterator["LoopedTransformer"]:
        """Temporarily attach ``(hook_name, fn)`` pairs; ``fn`` may return a replacement tensor."""
        handles = []
        try:
            for name, fn in fwd_hooks:
                point = self.hook(name)
                handles.append(point.register_forward_hook(
                    lambda mod, inp, out, fn=fn: fn(out, mod.name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, tokens: torch.Tensor, fwd_hooks: Iterable[tuple[str, HookFn]]) -> torch.Tensor:
        with self.hooks(fwd_hooks):
            return self(tokens)

    def run_with_cache(self, tokens: torch.Tensor, names: Iterable[str] | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and ``{hook_name: activation}`` for ``names`` (default: every residual state)."""
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, name: str) -> None:
            cache[name] = x.detach()

        logits = self.run_with_hooks(tokens, [(n, save) for n in (names or self.resid_names)])
        return logits, cache

    def residual_stack(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, T, V]`` and every residual state stacked by depth ``[D, B, T, d]``."""
        logits, cache = self.run_with_cache(tokens)
        return logits, torch.stack([cache[n] for n in self.resid_names])


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> tuple[LoopedTransformer, dict]:
    """Rebuild a model from a checkpoint written by the trainer (loaded with ``weights_only=True``), on
    ``map_location`` (the weights and the model: a CUDA run of the classifier gets a CUDA model)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    cfg = ModelConfig(**ckpt["model_config"])
    model = LoopedTransformer(cfg, vocab_size=ckpt["vocab_size"], n_ctx=ckpt.get("n_ctx", 3))
    model = model.to(map_location)
    model.load_state_dict(ckpt["model"], assign=torch.device(map_location).type == "meta")
    model.eval()
    return model, ckpt
