"""Logit lens on the looped transformer: where (depth, position) does the bridge entity appear?

Every residual state (``model.resid_names``: embed, then one per block application)
at every position is decoded through the final norm and the unembedding. On
two-hop test queries ``h r1 r2 -> t`` with bridge ``b``:

* ``bridge_mrr`` / ``bridge_top1`` at the r1 position, per depth (Wang et al.);
* ``bridge_found`` (He et al.): ``b`` is the argmax at some INTERMEDIATE state, at any
  position. Intermediate means after a block application other than the last one.
  The last state at r1 is excluded on purpose: with causal attention r1 never sees
  r2, so after the last block it is just the trained atomic query ``(h, r1) -> b``
  and decodes ``b`` in every model that memorised its atomic facts;
* ``bridge_given_correct``: among correctly answered queries, the fraction with the
  bridge found: the behavioural answer and the circuit together;
* ``early_answer_r2``: ``t`` already the argmax at r2 at an intermediate state
  (memorising models answer there; generalising ones compute the bridge first).

Cost: one forward pass with a cache over ``sample`` queries per split plus ``D x T``
small unembeddings; see ``benchmarks/`` for the measured share of training time.

Example:
    >>> # model, dataset from a Trainer
    >>> # profile = lens_profile(model, dataset.encode(dataset.rows["test_inferred_ood"]))
    >>> # profile.bridge_top1.shape == (model.n_depths, 3)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from grokray.data import Batch, Dataset
from grokray.device import autocast
from grokray.model import LoopedTransformer

R1_POS, R2_POS = 1, 2
#: Lens metric splits: short name -> dataset split.
LENS_SPLITS = {"id": "test_inferred_id", "ood": "test_inferred_ood"}


@dataclass
class LensProfile:
    """Per-query and aggregated lens readings for a batch of two-hop queries."""
    depth_names: list[str]
    bridge_rank: np.ndarray    # [D, T, N] 1-based rank of the bridge among all tokens
    answer_rank: np.ndarray    # [D, T, N] 1-based rank of the answer
    correct: np.ndarray        # [N] bool: the model's final answer is right

    @property
    def n_depths(self) -> int:
        return self.bridge_rank.shape[0]

    @property
    def intermediate(self) -> slice:
        """Depths after a block application that is not the last one."""
        return slice(1, self.n_depths - 1)

    @property
    def bridge_top1(self) -> np.ndarray:
        """[D, T] fraction of queries whose bridge is the argmax at (depth, position)."""
        return (self.bridge_rank == 1).mean(-1)

    @property
    def bridge_mrr(self) -> np.ndarray:
        """[D, T] mean reciprocal rank of the bridge."""
        return (1.0 / self.bridge_rank).mean(-1)

    @property
    def answer_top1(self) -> np.ndarray:
        return (self.answer_rank == 1).mean(-1)

    def found(self) -> np.ndarray:
        """[N] bool: the bridge is the argmax at some intermediate depth, any position."""
        inter = self.bridge_rank[self.intermediate]
        if inter.shape[0] == 0:
            return np.zeros(self.bridge_rank.shape[-1], dtype=bool)
        return (inter == 1).any(axis=(0, 1))

    def found_at_r1(self) -> np.ndarray:
        inter = self.bridge_rank[self.intermediate, R1_POS]
        if inter.shape[0] == 0:
            return np.zeros(self.bridge_rank.shape[-1], dtype=bool)
        return (inter == 1).any(axis=0)

    def early_answer(self) -> np.ndarray:
        inter = self.answer_rank[self.intermediate, R2_POS]
        if inter.shape[0] == 0:
            return np.zeros(self.answer_rank.shape[-1], dtype=bool)
        return (inter == 1).any(axis=0)

    def summary(self) -> dict[str, float]:
        found, correct = self.found(), self.correct
        out = {"bridge_found": float(found.mean()), "bridge_found_r1": float(self.found_at_r1().mean()),
               "early_answer_r2": float(self.early_answer().mean()),
               "bridge_given_correct": float(found[correct].mean()) if correct.any() else float("nan"),
               "acc": float(correct.mean())}
        mrr, top1 = self.bridge_mrr[:, R1_POS], self.bridge_top1[:, R1_POS]
        for d in range(1, self.n_depths):
            out[f"bridge_mrr_r1/d{d}"] = float(mrr[d])
            out[f"bridge_top1_r1/d{d}"] = float(top1[d])
        return out


def _ranks(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """1-based rank of ``index`` in ``logits [..., N, V]`` (ties count against the target)."""
    target = logits.gather(-1, index.expand(*logits.shape[:-1]).unsqueeze(-1))   # [..., N, 1]
    return (logits > target).sum(-1) + 1                                         # [..., N]


@torch.no_grad()
def lens_profile(model: LoopedTransformer, batch: Batch, precision: str = "fp32",
                 device: torch.device | str | None = None) -> LensProfile:
    """Decode every residual state of ``batch`` (two-hop queries) and rank bridge and answer."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    batch = batch.to(device)
    with autocast(precision, device):
        logits, stack = model.residual_stack(batch.tokens)                 # [N, T, V], [D, N, T, d]
        lens = model.decode(stack).float()                                # [D, N, T, V]
    lens = lens.permute(0, 2, 1, 3)                                       # [D, T, N, V]
    bridge_rank = _ranks(lens, batch.bridge.clamp(min=0))                 # [D, T, N]
    answer_rank = _ranks(lens, batch.target)                              # [D, T, N]
    correct = logits[torch.arange(len(batch), device=device), batch.answer_pos].float().argmax(-1) == batch.target
    model.train(was_training)
    return LensProfile(list(model.resid_names), bridge_rank.cpu().numpy(), answer_rank.cpu().numpy(),
                       correct.cpu().numpy())


def lens_sample(dataset: Dataset, split: str, sample: int) -> Batch:
    """The first ``sample`` queries of a test split's probe (fixed, so every evaluation reads the same ones)."""
    rows = dataset.probe_rows[split][:sample]
    return dataset.encode(rows)


def lens_metrics(model: LoopedTransformer, dataset: Dataset, sample: int, precision: str = "fp32",
                 device: torch.device | str | None = None) -> dict[str, float]:
    """``lens/<id|ood>/<metric>`` for the per-evaluation log (see module docstring).

    A dataset may name other two-hop splits to read through ``dataset.lens_splits``
    (short name -> split), as the transfer datasets do."""
    out: dict[str, float] = {}
    for short, split in getattr(dataset, "lens_splits", LENS_SPLITS).items():
        batch = lens_sample(dataset, split, sample)
        if len(batch) == 0:
            continue
        summary = lens_profile(model, batch, precision, device).summary()
        summary.pop("acc")
        out.update({f"lens/{short}/{k}": v for k, v in summary.items()})
    return out
