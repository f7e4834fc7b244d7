"""What the benchmarks train: grokray's default trial, and the reference built the way the papers' code does it.

The reference (Wang et al. 2024 and He et al. 2025 train Hugging Face GPT-2 code):

* ``transformers.models.gpt2.modeling_gpt2.GPT2Block`` (pre-norm, Conv1D fused qkv,
  ``gelu_new``), the same blocks looped ``n_loops`` times, eager attention with an additive
  causal mask (the GPT-2 attention of the transformers releases those papers used);
  dropout set to 0 (grokray has none: same arithmetic; dropout would only slow the reference);
* learned token + position embeddings, final LayerNorm, an untied LM head over every position
  (``GPT2LMHeadModel``), loss = cross-entropy over the answer token only (labels -100 elsewhere);
* data: a map-style dataset of per-example python dicts of tensors (what ``datasets`` with
  ``set_format("torch")`` hands out), ``DataLoader(batch_size=512, shuffle=True)`` with the default
  collate, no workers; ``torch.optim.AdamW`` with its defaults (no ``foreach`` on CPU), GPT-2 decay
  groups, a ``LambdaLR`` warm-up schedule; fp32 as the papers ran it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRIAL = ROOT / "sweeps" / "trials" / "default.yaml"


def default_config(*overrides: str, precision: str | None = None):
    """The default trial (sweeps/trials/default.yaml), threads left to the caller."""
    from grokray.config import load_trial_config

    ov = list(overrides) + ["train.threads=0"]
    if precision:
        ov.append(f"train.precision={precision}")
    return load_trial_config(DEFAULT_TRIAL, ov)


# --------------------------------------------------------------------------- reference

class LoopedGPT2(nn.Module):
    """HF GPT-2 blocks applied ``n_loops`` times, embeddings and LM head as GPT2LMHeadModel."""

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, d_mlp: int, n_layers: int, n_loops: int,
                 n_ctx: int = 3, attn: str = "eager"):
        super().__init__()
        from transformers import GPT2Config
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers,
                         n_head=n_heads, n_inner=d_mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
        cfg._attn_implementation = attn
        self.config, self.n_loops, self.attn = cfg, n_loops, attn
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(n_ctx, d_model)
        self.h = nn.ModuleList(GPT2Block(cfg, layer_idx=i) for i in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=cfg.layer_norm_epsilon)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        mask = torch.full((n_ctx, n_ctx), torch.finfo(torch.float32).min).triu(1)
        self.register_buffer("causal_mask", mask[None, None], persistent=False)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:  # GPT2PreTrainedModel._init_weights, in short
        if isinstance(m, (nn.Linear, nn.Embedding)) or type(m).__name__ == "Conv1D":
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)[None]
        mask = self.causal_mask[..., :T, :T].to(x.dtype) if self.attn == "eager" else None
        for _ in range(self.n_loops):
            for block in self.h:
                x = block(x, attention_mask=mask)
        return self.lm_head(self.ln_f(x))                                  # [B, T, V]


class ExampleDataset(torch.utils.data.Dataset):
    """Per-example python dicts of tensors, as an HF ``datasets`` split with ``set_format("torch")``."""

    def __init__(self, batch):
        self.examples = []
        for tok, pos, tgt in zip(batch.tokens.tolist(), batch.answer_pos.tolist(), batch.target.tolist()):
            labels = [-100] * len(tok)
            labels[pos] = tgt
            self.examples.append({"input_ids": torch.tensor(tok), "labels": torch.tensor(labels)})

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.examples[i]


class ReferenceTrainer:
    """The reference loop; :meth:`train_step` mirrors ``Trainer.train_step``."""

    def __init__(self, cfg, dataset, seed: int = 0, attn: str = "eager", precision: str = "fp32",
                 pretensorized: bool = False):
        torch.manual_seed(seed)
        m, tc = cfg.model, cfg.train
        self.vocab = dataset.vocab_size
        self.precision = precision
        self.model = LoopedGPT2(dataset.vocab_size, m.d_model, m.n_heads, m.d_mlp, m.n_layers, m.n_loops, attn=attn)
        self.model.train()
        decay = [p for n, p in self.model.named_parameters() if not (n.endswith("bias") or ".ln_" in n
                                                                     or n.startswith("ln_"))]
        no_decay = [p for n, p in self.model.named_parameters() if n.endswith("bias") or ".ln_" in n
                    or n.startswith("ln_")]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas)
        warm = max(1, tc.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warm))
        self.data = ExampleDataset(dataset.encode(dataset.train_rows()))
        g = torch.Generator()
        g.manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(self.data, batch_size=tc.batch_size, shuffle=True, generator=g)
        self._it = iter(self.loader)
        self.batch_size = tc.batch_size
        # Diagnostic only (not how the papers ran it): the same batches from one pre-built tensor.
        self.pretensorized = pretensorized
        if pretensorized:
            self.all_ids = torch.stack([e["input_ids"] for e in self.data.examples])
            self.all_labels = torch.stack([e["labels"] for e in self.data.examples])
            self.gen, self.perm, self.cursor = g, torch.empty(0, dtype=torch.long), 0

    def _next(self) -> dict[str, torch.Tensor]:
        if self.pretensorized:
            n = len(self.all_ids)
            if self.cursor + self.batch_size > len(self.perm):
                self.perm, self.cursor = torch.randperm(n, generator=self.gen), 0
            idx = self.perm[self.cursor:self.cursor + self.batch_size]
            self.cursor += self.batch_size
            return {"input_ids": self.all_ids[idx], "labels": self.all_labels[idx]}
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def train_step(self) -> torch.Tensor:
        batch = self._next()
        if self.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = self.model(batch["input_ids"])
        else:
            logits = self.model(batch["input_ids"])
        loss = F.cross_entropy(logits.float().view(-1, self.vocab), batch["labels"].view(-1), ignore_index=-100)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()


# --------------------------------------------------------------------------- FLOPs

def step_flops(cfg, vocab_size: int, batch_size: int | None = None, T: int = 3) -> dict[str, Any]:
    """Analytic FLOPs of one grokray training step (forward + backward), counting matmuls only.

    ``6 x P_mm x tokens`` for every weight matrix a token passes through (2 forward, 4 backward:
    input grad + weight grad), where tokens = B x T for the blocks (every position goes through
    every block application) and B for the unembedding (grokray unembeds only the answer
    position). Attention scores and the weighted sum (QK^T, AV) count ``2 x T x d`` multiply-adds
    per token and block application in the forward (the full T x T square, as SDPA computes it;
    the causal half would be 2/3 of it at T=3), times 3 for forward + backward. LayerNorm, GELU,
    softmax, embeddings and the optimizer are not counted (standard MFU convention: they are
    overheads, which is exactly what the profile breakdown shows).
    """
    m = cfg.model
    B = batch_size or cfg.train.batch_size
    d, f = m.d_model, m.d_mlp
    apps = m.n_layers * m.n_loops
    p_block = d * 3 * d + d * d + 2 * d * f        # qkv, proj, mlp in + out (weights only, no biases)
    tokens = B * T
    blocks = 6 * p_block * apps * tokens
    attn = 3 * (2 * 2 * T * d) * apps * tokens      # QK^T and AV: 2 FLOP per MAC, T x d MACs each, per token
    unembed = 6 * d * vocab_size * B
    total = blocks + attn + unembed
    return {"total": total, "blocks_matmul": blocks, "attention_qk_av": attn, "unembed": unembed,
            "formula": "6*P_block*L*K*B*T + 3*(4*T*d)*L*K*B*T + 6*d*V*B",
            "P_block": p_block, "block_applications": apps, "tokens": tokens, "vocab_size": vocab_size}
