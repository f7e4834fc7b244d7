"""End-of-run evidence for the verdict: what one checkpoint's answers rest on.

The verdict (:mod:`grokray.verdict`) asks three questions of a run that generalized:

* could its accuracy come without composing? The shortcut baselines of the target split
  (:mod:`grokray.data.shortcuts`, computed once per dataset);
* do its correct answers follow the bridge? The interchange test on the target split
  (:mod:`grokray.circuits.interchange`): swap the bridge state, see whether the answer follows;
* is the bridge readable by the plain logit lens? ``bridge_given_correct`` (He et al.'s rule,
  kept as its own label, and the lens-visible / lens-invisible part of the detail).

Also recorded as supporting evidence: Wang et al.'s causal patching (``causal_r1``, the
flip-rate matrices on the target split and on ``train_inferred``), and the interchange test on
the other split.

Example:
    >>> # model, ckpt = load_checkpoint("step_0012000.pt"); dataset = load_dataset(cfg.data)
    >>> # ev = circuit_evidence(model, dataset, split="ood", n=200)
    >>> # ev.for_verdict() -> {"interchange": ..., "shortcut_best": ..., "bridge_given_correct": ..., ...}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from grokray.circuits.carry import CarryResult, carry_test
from grokray.circuits.interchange import InterchangeResult, interchange_test
from grokray.circuits.lens import LENS_SPLITS, lens_profile
from grokray.circuits.patching import PatchingResult, causal_patching, r1_dependence, short_depth_name
from grokray.data import Dataset
from grokray.jsonsafe import plain
from grokray.model import LoopedTransformer
from grokray.plots import plot_heatmaps, plot_interchange


@dataclass
class CircuitEvidence:
    split: str                       # "ood" | "id": the target
    n_target: int                    # queries of the target split the lens read
    target_acc: float
    shortcuts: dict                  # {split: {rule: accuracy}} of the dataset
    interchange: InterchangeResult   # on the target split
    interchange_other: InterchangeResult | None   # on the other split (supporting)
    bridge_found: float              # lens: bridge is the argmax at an intermediate state
    bridge_given_correct: float      # ... among correctly answered queries (NaN if none correct)
    lens_n_correct: int
    causal_r1: float                 # patching: r1 dependence of correct answers (NaN if not measurable)
    depth_names: list[str]
    bridge_top1: np.ndarray          # [D, 3] lens on the target split
    answer_top1: np.ndarray          # [D, 3]
    patching_target: PatchingResult | None
    patching_train: PatchingResult | None
    carry: CarryResult | None = None             # on the target split (the bridge-carry test)

    @property
    def shortcut_best(self) -> tuple[float | None, str | None]:
        """The best shortcut baseline of the target split and its rule."""
        rules = self.shortcuts.get(self.split) or {}
        named = {k: v for k, v in rules.items() if k != "best"}
        if not named:
            return None, None
        rule = max(named, key=named.get)
        return float(named[rule]), rule

    def for_verdict(self) -> dict[str, Any]:
        """The ``evidence`` mapping :func:`grokray.verdict.classify_history` takes."""
        ic = self.interchange
        best, rule = self.shortcut_best
        return plain({"interchange": ic.best, "interchange_control": ic.control_best, "interchange_n": ic.n_queries,
                      "interchange_note": ic.why_none() or None, "n_intermediate": len(ic.depth_names),
                      "bridge_given_correct": self.bridge_given_correct, "bridge_found": self.bridge_found,
                      "lens_n_correct": self.lens_n_correct, "causal_r1": self.causal_r1, "shortcut_best": best,
                      "shortcut_rule": rule, "n_target": self.n_target,
                      "carry": self.carry.best if self.carry else None,
                      "carry_n": self.carry.n_queries if self.carry else None,
                      "carry_note": (self.carry.why_none() or None) if self.carry else None})

    def to_dict(self) -> dict[str, Any]:
        return plain({"split": self.split, "n_target": self.n_target, "target_acc": self.target_acc,
                      **self.for_verdict(), "shortcuts": self.shortcuts,
                      "interchange_detail": self.interchange.to_dict(),
                      "interchange_other": self.interchange_other.to_dict() if self.interchange_other else None,
                      "depth_names": self.depth_names, "lens_bridge_top1": self.bridge_top1,
                      "lens_answer_top1": self.answer_top1,
                      "patching_target": self.patching_target.to_dict() if self.patching_target else None,
                      "patching_train": self.patching_train.to_dict() if self.patching_train else None,
                      "carry_detail": self.carry.to_dict() if self.carry else None})

    def plot_lens(self, path: str, title: str = "") -> str:
        rows = [short_depth_name(n) for n in self.depth_names]
        bridge = f"bridge top-1 ({self.split.upper()})"
        # "Bridge found" reads intermediate states only: the last block's output is not evidence (at r1,
        # under causal attention, it is just the atomic query (h, r1) -> b, decoded by every model).
        excluded = [(len(rows) - 1, p) for p in range(3)]
        return plot_heatmaps({bridge: self.bridge_top1, f"answer top-1 ({self.split.upper()})": self.answer_top1},
                             path, rows, ["h", "r1", "r2"], title=title or "logit lens, final checkpoint",
                             excluded=excluded, excluded_in=[bridge])

    def plot_interchange(self, path: str, title: str = "") -> str:
        results = [self.interchange] + ([self.interchange_other] if self.interchange_other else [])
        return plot_interchange(results, path, title=title)


def circuit_evidence(model: LoopedTransformer, dataset: Dataset, split: str = "ood", n: int = 200,
                     seed: int = 0, precision: str = "fp32", device: Any = None,
                     patch_train: bool = True) -> CircuitEvidence:
    """Shortcuts, interchange, lens and causal evidence of ``model`` on the target split (``ood`` or ``id``)."""
    target_split = LENS_SPLITS[split]
    other = "id" if split == "ood" else "ood"
    rows = dataset.rows[target_split]
    if len(rows) == 0:
        raise ValueError(f"split {target_split!r} of dataset {dataset.name} is empty")
    profile = lens_profile(model, dataset.encode(rows), precision=precision, device=device)
    found, correct = profile.found(), profile.correct
    interchange = interchange_test(model, dataset, target_split, n=n, seed=seed, precision=precision, device=device)
    interchange_other = None
    if len(dataset.rows.get(LENS_SPLITS[other], ())):
        interchange_other = interchange_test(model, dataset, LENS_SPLITS[other], n=n, seed=seed,
                                             precision=precision, device=device)
    carry = carry_test(model, dataset, target_split, n=n, seed=seed, precision=precision, device=device)
    patch_target = causal_patching(model, dataset, split=target_split, n=n, seed=seed, only_correct=True,
                                   tokens=("h", "r1", "r2"), precision=precision, device=device)
    causal = r1_dependence(patch_target, "h") if patch_target.n_queries.get("h", 0) else float("nan")
    patch_train = causal_patching(model, dataset, split="train_inferred", n=n, seed=seed, only_correct=True,
                                  precision=precision, device=device) if patch_train else None
    return CircuitEvidence(
        split=split, n_target=int(len(rows)), target_acc=float(correct.mean()), shortcuts=dataset.baselines(),
        interchange=interchange, interchange_other=interchange_other, bridge_found=float(found.mean()),
        bridge_given_correct=float(found[correct].mean()) if correct.any() else float("nan"),
        lens_n_correct=int(correct.sum()), causal_r1=float(causal), depth_names=list(profile.depth_names),
        bridge_top1=profile.bridge_top1, answer_top1=profile.answer_top1,
        patching_target=patch_target, patching_train=patch_train, carry=carry)


__all__ = ["CircuitEvidence", "circuit_evidence"]
