"""Prototypes of a faster grokray trainer, applied per instance (no grokray file is edited).

Since the fast path landed in grokray (matmul attention under bf16 in ``grokray/model.py``,
fused AdamW in ``grokray/train.py``), ``make_trainer(cfg, ds)`` with the defaults
(``attention="sdpa"``, ``optimizer="foreach"``) rebuilds the trainer as it was BEFORE
(SDPA always, ``foreach`` AdamW): that is what the scripts' ``shipped`` variants mean in the
results measured before the change, and what ``throughput.py`` now calls ``grokray_before``.

Each prototype is a candidate change to ``grokray/model.py`` / ``grokray/train.py``; the
benchmarks measure it side by side against the shipped code and check the metrics agree.

* ``attention="manual"``: causal attention as two small matmuls + masked softmax instead of
  ``F.scaled_dot_product_attention``. At T=3 the CPU flash-attention kernel is slow in bf16
  (it tiles for long sequences; here it runs B x heads problems of 3 x 3); in fp32 SDPA is fine.
  ``"auto"`` = manual when the activations are bf16, SDPA otherwise (the proposed rule).
* ``optimizer="fused"``: ``torch.optim.AdamW(fused=True)`` (CPU fused kernel, torch >= 2.4)
  instead of ``foreach=True``.
* ``flush_denormal``: ``torch.set_flush_denormal(True)`` (process-wide).
* ``matmul="bf16"`` (with ``train.precision: fp32``): no autocast; weights, activations,
  LayerNorm, attention and the loss stay fp32, and oneDNN computes fp32 matmuls with bf16
  inputs and fp32 accumulation (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``,
  process-wide, set around every call of the trainer here). Same matmul input rounding as
  bf16 autocast, without autocast's casts, and with attention in fp32 (SDPA is fast in fp32).
* :func:`evaluate_batched`: all probes in one forward (one concatenated batch), metrics
  reduced with tensor ops, one host transfer at the end; same numbers as ``evaluate``.
"""
from __future__ import annotations

import contextlib
import types
from typing import Any

import torch
import torch.nn.functional as F

_MASKS: dict[tuple[int, str], torch.Tensor] = {}


def _causal(T: int, device: torch.device) -> torch.Tensor:
    key = (T, str(device))
    if key not in _MASKS:
        _MASKS[key] = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return _MASKS[key]


def attention_forward(mode: str):
    """A replacement ``SelfAttention.forward`` (``mode``: manual | auto | sdpa)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (z.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for z in (q, k, v))
        if mode == "manual" or (mode == "auto" and q.dtype == torch.bfloat16):
            att = (q @ k.transpose(-2, -1)) * (1.0 / (q.shape[-1] ** 0.5))        # [B, nh, T, T]
            att = att.masked_fill(~_causal(T, x.device), float("-inf")).softmax(-1).to(v.dtype)
            y = att @ v                                                           # [B, nh, T, hs]
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)

    return forward


def patch_attention(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Force the attention kernel: ``sdpa`` (always SDPA, grokray before the fast path),
    ``manual`` (always matmul) or ``auto`` (matmul under bf16: grokray's own rule now)."""
    from grokray.model import SelfAttention

    fwd = attention_forward(mode)
    for m in model.modules():
        if isinstance(m, SelfAttention):
            m.forward = types.MethodType(fwd, m)
    return model


def replace_optimizer(trainer: Any, kind: str) -> None:
    """Rebuild the trainer's AdamW (same groups and hyper-parameters) as ``foreach`` or ``fused``."""
    old = trainer.optimizer
    groups = [{k: v for k, v in g.items() if k not in ("foreach", "fused")} for g in old.param_groups]
    trainer.optimizer = torch.optim.AdamW(groups, fused=(kind == "fused"), foreach=(kind == "foreach") or None)


@contextlib.contextmanager
def bf16_matmul():
    """fp32 matmuls computed by oneDNN with bf16 inputs, fp32 accumulation (restored on exit)."""
    prec = torch.backends.mkldnn.matmul
    old = prec.fp32_precision
    prec.fp32_precision = "bf16"
    try:
        yield
    finally:
        prec.fp32_precision = old


def wrap_bf16_matmul(trainer: Any) -> Any:
    for name in ("train_step", "evaluate", "run"):
        orig = getattr(trainer, name)

        def wrapped(*a, _orig=orig, **kw):
            with bf16_matmul():
                return _orig(*a, **kw)
        setattr(trainer, name, wrapped)
    return trainer


def make_trainer(cfg, dataset, attention: str = "sdpa", optimizer: str = "foreach", matmul: str = "default",
                 work_dir=None):
    """A grokray Trainer with the prototypes applied (``sdpa`` + ``foreach`` + default = as shipped)."""
    from grokray.train import Trainer

    t = Trainer(cfg, dataset=dataset, work_dir=work_dir)
    patch_attention(t.model, attention)
    replace_optimizer(t, optimizer)
    if matmul == "bf16":
        assert t.precision == "fp32", "bf16 matmul is the alternative to autocast: use train.precision fp32"
        wrap_bf16_matmul(t)
    # Trainer.evaluate calls the module-level evaluate; keep that, the model is what changed.
    return t


@torch.no_grad()
def evaluate_batched(model, probes: dict, precision: str, device: torch.device) -> dict[str, float]:
    """``grokray.train.evaluate`` with one forward over all probes and one host sync."""
    from grokray.data import Batch
    from grokray.device import autocast
    from grokray.train import answer_logits

    was = model.training
    model.eval()
    names = [n for n, b in probes.items() if len(b)]
    sizes = [len(probes[n]) for n in names]
    cat = Batch(*(torch.cat([getattr(probes[n], f) for n in names])
                  for f in ("tokens", "answer_pos", "target", "bridge")))
    with autocast(precision, device):
        logits = answer_logits(model, cat)
    logits = logits.float()
    loss = F.cross_entropy(logits, cat.target, reduction="none")
    correct = (logits.argmax(-1) == cat.target).float()
    sums = torch.stack([torch.stack([c.sum(), lo.sum()]) for c, lo in zip(correct.split(sizes), loss.split(sizes))])
    sums = sums.tolist()
    out = {}
    for n, s, (c, lo) in zip(names, sizes, sums):
        out[f"acc/{n}"] = c / s
        out[f"loss/{n}"] = lo / s
    model.train(was)
    return out
