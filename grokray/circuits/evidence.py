"""End-of-run circuit evidence for the verdict: lens + causal patching on one checkpoint.

The verdict (:mod:`grokray.verdict`) asks two questions of a run that generalized:

* was the bridge recovered mid-computation for the answers it got right?
  (``bridge_given_correct``, logit lens on the target test split);
* do those answers causally go through it? (``causal_r1``: patch the r1-position state
  at intermediate depths with the state of a query whose head entity was changed;
  :func:`grokray.circuits.patching.r1_dependence`).

Both are computed here on the target split, plus Wang et al.'s patching matrices on
training compositions (``train_inferred``) for the evidence heatmap.

Example:
    >>> # model, ckpt = load_checkpoint("step_0012000.pt"); dataset = load_dataset(cfg.data)
    >>> # ev = circuit_evidence(model, dataset, split="ood", n=200)
    >>> # ev.for_verdict() -> {"causal_r1": ..., "bridge_given_correct": ..., "bridge_found": ..., "n_target": ...}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from grokray.circuits.lens import LENS_SPLITS, R1_POS, lens_profile
from grokray.circuits.patching import PatchingResult, causal_patching, r1_dependence, short_depth_name
from grokray.data import Dataset
from grokray.model import LoopedTransformer
from grokray.plots import plot_heatmaps


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass
class CircuitEvidence:
    split: str                       # "ood" | "id"
    n_target: int                    # queries in the target test split that were read
    bridge_found: float              # lens: bridge is the argmax at an intermediate state
    bridge_given_correct: float      # ... among correctly answered queries (NaN if none correct)
    causal_r1: float                 # patching: r1 dependence of correct answers (NaN if not measurable)
    target_acc: float
    depth_names: list[str]
    bridge_top1: np.ndarray          # [D, 3] lens on the target split
    answer_top1: np.ndarray          # [D, 3]
    patching_target: PatchingResult | None
    patching_train: PatchingResult | None

    def for_verdict(self) -> dict[str, Any]:
        """The ``evidence`` mapping :func:`grokray.verdict.classify_history` takes."""
        return {"causal_r1": _nan_to_none(self.causal_r1),
                "bridge_given_correct": _nan_to_none(self.bridge_given_correct),
                "bridge_found": _nan_to_none(self.bridge_found), "n_target": int(self.n_target)}

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "n_target": self.n_target, "target_acc": self.target_acc,
                **{k: v for k, v in self.for_verdict().items() if k != "n_target"},
                "depth_names": self.depth_names, "lens_bridge_top1": self.bridge_top1.tolist(),
                "lens_answer_top1": self.answer_top1.tolist(),
                "patching_target": self.patching_target.to_dict() if self.patching_target else None,
                "patching_train": self.patching_train.to_dict() if self.patching_train else None}

    def plot_lens(self, path: str, title: str = "") -> str:
        rows = [short_depth_name(n) for n in self.depth_names]
        return plot_heatmaps({f"bridge top-1 ({self.split.upper()})": self.bridge_top1,
                              f"answer top-1 ({self.split.upper()})": self.answer_top1},
                             path, rows, ["h", "r1", "r2"], title=title or "logit lens, final checkpoint")


def circuit_evidence(model: LoopedTransformer, dataset: Dataset, split: str = "ood", n: int = 200,
                     seed: int = 0, precision: str = "fp32", device: Any = None,
                     patch_train: bool = True) -> CircuitEvidence:
    """Lens and causal evidence of ``model`` on the target test split (``ood`` or ``id``)."""
    target_split = LENS_SPLITS[split]
    rows = dataset.rows[target_split][:max(n, 1) * 4]  # lens reads more queries; it is cheap
    if len(rows) == 0:
        raise ValueError(f"split {target_split!r} of dataset {dataset.name} is empty")
    profile = lens_profile(model, dataset.encode(rows), precision=precision, device=device)
    found = profile.found()
    correct = profile.correct
    patch_target = causal_patching(model, dataset, split=target_split, n=n, seed=seed, only_correct=True,
                                   tokens=("h", "r1", "r2"), precision=precision, device=device)
    causal = r1_dependence(patch_target, "h") if patch_target.n_queries.get("h", 0) else float("nan")
    patch_train = causal_patching(model, dataset, split="train_inferred", n=n, seed=seed, only_correct=True,
                                  precision=precision, device=device) if patch_train else None
    return CircuitEvidence(
        split=split, n_target=int(len(rows)), bridge_found=float(found.mean()),
        bridge_given_correct=float(found[correct].mean()) if correct.any() else float("nan"),
        causal_r1=float(causal), target_acc=float(correct.mean()), depth_names=list(profile.depth_names),
        bridge_top1=profile.bridge_top1, answer_top1=profile.answer_top1,
        patching_target=patch_target, patching_train=patch_train)


__all__ = ["CircuitEvidence", "circuit_evidence", "R1_POS"]
