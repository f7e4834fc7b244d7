"""Do two models answer two-hop queries along the same inference path? (He et al. 2026, finding i)

Both models are read on the SAME in-distribution queries (by default up to 300 rows
of ``train_inferred`` in the seeded order of :func:`~grokray.circuits.patching.patch_queries`;
``split="test_inferred_id"`` for held-out ID queries) with the SAME perturbations:

* causal patching (:func:`~grokray.circuits.patching.causal_patching`): one ``[D, 3]``
  flip-rate matrix per perturbed token (h, r1, r2);
* logit lens (:func:`~grokray.circuits.lens.lens_profile`): ``bridge_top1`` and
  ``answer_top1``, ``[D, 3]``.

Similarity
----------
Every entry compared is a rate in [0, 1], so for two matrices ``A`` and ``B``

    sim(A, B) = 1 - mean over informative cells of |A - B|        (in [0, 1])

is 1 for identical readings and 0 only when one model reads 0 wherever the other reads 1.
"Informative" leaves out cells that causal attention fixes for EVERY model, which would
only pull scores towards 1:

* patching, token at position ``k``: cells ``(d, p)`` with ``p >= k`` (earlier states are
  identical in both runs), at depth 0 only ``p == k`` (embeddings of unchanged tokens
  are identical), at the last depth only ``p == 2`` (nothing reads the last state of
  positions 0 and 1). So ``r2`` is compared on its own column only;
* lens: depths >= 1 (a token embedding cannot hold the bridge or the answer), the
  bridge at r1 and r2, the answer at r2 (position h has seen neither relation, r1 has
  not seen r2: both are at chance for every model).

``patching_similarity[token]`` is ``sim`` per perturbed token; ``lens_similarity`` pools
the bridge and answer cells; the overall ``score`` is the mean of (mean patching
similarity over tokens, lens similarity), NaN parts left out.

Different depths: a model with ``n_layers * n_loops`` block applications has
``D = 1 + n_layers * n_loops`` residual states. If the two differ, both readings are
linearly interpolated in relative depth ``d / (D - 1)`` (0 = embed, 1 = last block)
onto the smaller grid; ``resampled`` and ``relative_depths`` record it. End points are
kept exactly, so the informative-cell rules above still hold.

Example:
    >>> # cmp = compare_checkpoints("runA/checkpoints/step_0020000.pt", "runB/checkpoints/step_0020000.pt")
    >>> # cmp.score, cmp.patching_similarity["h"], cmp.lens_similarity; cmp.plot("paths.png")
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grokray.circuits.lens import lens_profile
from grokray.circuits.patching import POSITIONS, TOKENS, PatchingResult, causal_patching, select_queries
from grokray.data import Dataset
from grokray.jsonsafe import nan_array, nan_float, plain
from grokray.model import LoopedTransformer, load_checkpoint

LENS_KEYS = ("bridge_top1", "answer_top1")


# --------------------------------------------------------------------------- similarity

def relative_depths(n_depths: int) -> np.ndarray:
    """``[D]`` depth as the fraction of block applications done: 0 = embed, 1 = after the last block."""
    return np.linspace(0.0, 1.0, n_depths) if n_depths > 1 else np.zeros(1)


def resample_depths(mat: np.ndarray, n_depths: int) -> np.ndarray:
    """Linearly interpolate ``mat [D, ...]`` along depth onto ``n_depths`` equally spaced relative depths.

    >>> resample_depths(np.array([[0.0], [1.0], [0.0], [1.0], [0.0]]), 3)[:, 0]
    array([0., 0., 0.])
    >>> resample_depths(np.array([[0.0], [1.0], [1.0], [0.0]]), 3)[:, 0]
    array([0., 1., 0.])
    """
    mat = np.asarray(mat, dtype=float)
    if mat.shape[0] == n_depths:
        return mat.copy()
    src, dst = relative_depths(mat.shape[0]), relative_depths(n_depths)
    flat = mat.reshape(mat.shape[0], -1)
    out = np.stack([np.interp(dst, src, flat[:, j]) for j in range(flat.shape[1])], 1)
    return out.reshape((n_depths,) + mat.shape[1:])


def patch_cells(n_depths: int, token: str) -> np.ndarray:
    """``[D, 3]`` bool: cells of a patching matrix for ``token`` that can differ between models.

    >>> patch_cells(3, "r1").astype(int)
    array([[0, 1, 0],
           [0, 1, 1],
           [0, 0, 1]])
    """
    k = TOKENS.index(token)
    d = np.arange(n_depths)[:, None]
    p = np.arange(len(POSITIONS))[None, :]
    cells = (p >= k) & ~((d == 0) & (p != k)) & ~((d == n_depths - 1) & (p != 2))
    return cells


def lens_cells(n_depths: int, key: str) -> np.ndarray:
    """``[D, 3]`` bool: lens cells that can carry the bridge (r1, r2) or the answer (r2), depth >= 1."""
    cells = np.zeros((n_depths, len(POSITIONS)), dtype=bool)
    cols = [1, 2] if key == "bridge_top1" else [2]
    cells[1:, cols] = True
    return cells


def similarity(a: np.ndarray, b: np.ndarray, cells: np.ndarray | None = None) -> float:
    """``1 - mean |a - b|`` over ``cells`` (all by default); entries are rates in [0, 1]. NaN if nothing to compare.

    >>> similarity(np.array([0.0, 1.0, 0.5]), np.array([0.0, 0.0, 0.5]))
    0.6666666666666667
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if cells is None:
        cells = np.ones(a.shape, dtype=bool)
    diff = np.abs(a - b)[cells]
    diff = diff[np.isfinite(diff)]
    return float(1.0 - diff.mean()) if diff.size else float("nan")


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


# --------------------------------------------------------------------------- result

@dataclass
class PathComparison:
    """Patching and lens readings of two models on the same queries, and how alike they are.

    All matrices are ``[len(relative_depths), 3]`` (resampled to the smaller depth grid
    when the models differ in depth); see the module docstring for the similarity.
    """
    labels: list[str]                          # [label A, label B]
    split: str
    n_queries: int                             # clean queries both models were read on
    n_perturbed: dict[str, int]                # token -> queries with a valid perturbation
    depth_names: list[list[str]]               # [names of A, names of B] (before resampling)
    relative_depths: list[float]               # the common depth grid
    resampled: bool                            # True when A and B had different depth counts
    patching: list[dict[str, np.ndarray]]      # [A, B]: token -> [D', 3] flip rate
    lens: list[dict[str, np.ndarray]]          # [A, B]: bridge_top1 / answer_top1 -> [D', 3]; empty if lens off
    patching_similarity: dict[str, float]      # token -> sim
    lens_similarity: float
    score: float
    accuracy: list[float] = field(default_factory=list)   # [A, B] accuracy on the queries
    steps: list[int | None] = field(default_factory=lambda: [None, None])
    seed: int = 0
    only_correct: bool = False
    note: str = ""

    @property
    def patching_mean(self) -> float:
        return _nanmean(list(self.patching_similarity.values()))

    def summary(self) -> dict[str, float]:
        out = {"score": self.score, "patching": self.patching_mean, "lens": self.lens_similarity}
        out.update({f"patching/{k}": v for k, v in self.patching_similarity.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"labels": list(self.labels), "split": self.split, "n_queries": self.n_queries,
                "n_perturbed": dict(self.n_perturbed), "depth_names": [list(x) for x in self.depth_names],
                "relative_depths": plain(list(self.relative_depths)), "resampled": self.resampled,
                "patching": [{k: plain(v) for k, v in side.items()} for side in self.patching],
                "lens": [{k: plain(v) for k, v in side.items()} for side in self.lens],
                "patching_similarity": {k: plain(v) for k, v in self.patching_similarity.items()},
                "lens_similarity": plain(self.lens_similarity), "score": plain(self.score),
                "accuracy": [plain(a) for a in self.accuracy], "steps": list(self.steps), "seed": self.seed,
                "only_correct": self.only_correct, "note": self.note}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PathComparison":
        return cls(labels=list(d["labels"]), split=d["split"], n_queries=int(d["n_queries"]),
                   n_perturbed={k: int(v) for k, v in d["n_perturbed"].items()},
                   depth_names=[list(x) for x in d["depth_names"]],
                   relative_depths=[float(x) for x in d["relative_depths"]], resampled=bool(d["resampled"]),
                   patching=[{k: nan_array(v) for k, v in side.items()} for side in d["patching"]],
                   lens=[{k: nan_array(v) for k, v in side.items()} for side in d["lens"]],
                   patching_similarity={k: nan_float(v) for k, v in d["patching_similarity"].items()},
                   lens_similarity=nan_float(d["lens_similarity"]), score=nan_float(d["score"]),
                   accuracy=[nan_float(a) for a in d.get("accuracy", [])], steps=list(d.get("steps", [None, None])),
                   seed=int(d.get("seed", 0)), only_correct=bool(d.get("only_correct", False)),
                   note=d.get("note", ""))

    def to_json(self) -> str:
        """Strict JSON text (NaN as null); round-trips through :meth:`from_json`."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "PathComparison":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PathComparison):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def plot(self, path: str | os.PathLike, title: str | None = None) -> str:
        """PNG: one row per reading (patching h / r1 / r2, lens bridge / answer), columns A, B, |A - B|.

        Cells outside the compared set (module docstring) are drawn faded.
        """
        from grokray.plots import plt  # the Agg backend

        n_depths = len(self.relative_depths)
        rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]] = []
        for token in self.patching[0]:
            rows.append((f"patch {token} (n={self.n_perturbed.get(token, 0)})", self.patching[0][token],
                         self.patching[1][token], patch_cells(n_depths, token),
                         self.patching_similarity.get(token, float("nan"))))
        if self.lens:
            for key in LENS_KEYS:
                sim = similarity(self.lens[0][key], self.lens[1][key], lens_cells(n_depths, key))
                rows.append((f"lens {key}", self.lens[0][key], self.lens[1][key], lens_cells(n_depths, key), sim))
        if self.resampled:
            depth_labels = [f"{x:.2f}" for x in self.relative_depths]
        else:
            depth_labels = [f"{name.removesuffix('.resid_post')} ({x:.2f})"
                            for name, x in zip(self.depth_names[0], self.relative_depths)]
        fig, axes = plt.subplots(len(rows), 3, figsize=(8.4, 0.9 + len(rows) * (0.5 + 0.38 * n_depths)),
                                 dpi=110, squeeze=False)
        heads = [self.labels[0], self.labels[1], "|A - B|"]
        for r, (name, a, b, cells, sim) in enumerate(rows):
            for c, mat in enumerate((a, b, np.abs(a - b))):
                ax = axes[r, c]
                shown = np.where(cells, mat, np.nan)
                ax.imshow(np.where(cells, np.nan, mat), vmin=0, vmax=1, cmap="Greys", alpha=0.25, aspect="auto")
                ax.imshow(shown, vmin=0, vmax=1, cmap="viridis" if c < 2 else "magma", aspect="auto")
                for (i, j), v in np.ndenumerate(mat):
                    if math.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color=("white" if v < 0.5 else "black") if cells[i, j] else "0.55")
                ax.set_xticks(range(len(POSITIONS)), POSITIONS, fontsize=7)
                ax.set_yticks(range(n_depths), depth_labels if c == 0 else [], fontsize=7)
                ax.set_title(f"{heads[c]}: {name}" if c < 2 else f"|A-B| (sim {sim:.2f})", fontsize=8)
        if title is None:
            title = (f"{self.labels[0]} vs {self.labels[1]} on {self.split} (n={self.n_queries}): "
                     f"score {self.score:.3f}, patching {self.patching_mean:.3f}, lens {self.lens_similarity:.3f}"
                     + (" [resampled to relative depth]" if self.resampled else ""))
        fig.suptitle(title, fontsize=9)
        fig.supylabel("relative depth (0 = embed, 1 = last block)", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return str(path)


# --------------------------------------------------------------------------- comparison

@torch.no_grad()
def compare_models(model_a: LoopedTransformer, model_b: LoopedTransformer, dataset: Dataset,
                   split: str = "train_inferred", n: int = 300, *, seed: int = 0, only_correct: bool = False,
                   rows: np.ndarray | None = None, lens: bool = True, precision: str = "fp32",
                   device: torch.device | str | None = None, labels: tuple[str, str] = ("A", "B"),
                   steps: tuple[int | None, int | None] = (None, None)) -> PathComparison:
    """Compare the inference paths of two models on the same queries (module docstring).

    ``only_correct=True`` keeps only queries BOTH models answer correctly (so the
    readings describe how each model gets a right answer); the default keeps every
    selected query, which also works for a model that answers nothing correctly.
    """
    if model_a.vocab_size != dataset.vocab_size or model_b.vocab_size != dataset.vocab_size:
        raise ValueError(f"vocabulary mismatch: models have {model_a.vocab_size} and {model_b.vocab_size} tokens, "
                         f"dataset {dataset.name} has {dataset.vocab_size}")
    selected, _, _ = select_queries([model_a, model_b], dataset, split, n, seed, only_correct, rows, precision,
                                    device)
    results: list[PatchingResult] = []
    lens_read: list[dict[str, np.ndarray]] = []
    accuracy: list[float] = []
    for model, step in zip((model_a, model_b), steps):
        res = causal_patching(model, dataset, split, n=max(len(selected), 1), seed=seed, only_correct=False,
                              rows=selected, precision=precision, device=device, step=step)
        results.append(res)
        accuracy.append(res.clean_acc)
        if lens and len(selected):
            profile = lens_profile(model, dataset.encode(selected), precision, device)
            lens_read.append({"bridge_top1": profile.bridge_top1, "answer_top1": profile.answer_top1})
    n_a, n_b = results[0].n_depths, results[1].n_depths
    n_common = min(n_a, n_b)
    resampled = n_a != n_b
    patching = [{t: resample_depths(r.matrices[t], n_common) for t in r.matrices} for r in results]
    lens_mats = [{k: resample_depths(v, n_common) for k, v in side.items()} for side in lens_read]
    patch_sim = {t: similarity(patching[0][t], patching[1][t], patch_cells(n_common, t)) for t in patching[0]}
    if lens_mats:
        diffs = np.concatenate([np.abs(lens_mats[0][k] - lens_mats[1][k])[lens_cells(n_common, k)]
                                for k in LENS_KEYS])
        lens_sim = float(1.0 - diffs.mean()) if diffs.size else float("nan")
    else:
        lens_sim = float("nan")
    score = _nanmean([_nanmean(list(patch_sim.values())), lens_sim])
    note = (f"depth counts differ ({n_a} vs {n_b} residual states): both resampled to {n_common} relative depths"
            if resampled else "")
    return PathComparison(labels=list(labels), split=split, n_queries=len(selected),
                          n_perturbed=dict(results[0].n_queries),
                          depth_names=[results[0].depth_names, results[1].depth_names],
                          relative_depths=relative_depths(n_common).tolist(), resampled=resampled,
                          patching=patching, lens=lens_mats, patching_similarity=patch_sim, lens_similarity=lens_sim,
                          score=score, accuracy=accuracy, steps=list(steps), seed=seed, only_correct=only_correct,
                          note=note)


def compare_checkpoints(path_a: str | os.PathLike, path_b: str | os.PathLike, dataset: Dataset | None = None,
                        split: str = "train_inferred", n: int = 300, *, check_dataset: bool = True,
                        device: torch.device | str | None = None, **kwargs: Any) -> PathComparison:
    """:func:`compare_models` on two trainer checkpoints (``checkpoints/step_*.pt``).

    Without ``dataset`` the dataset is rebuilt (or loaded from the cache) from the first
    checkpoint's trial config. With ``check_dataset`` both checkpoints must name the
    same dataset (``ckpt["dataset"]``) as the one used. Labels default to
    ``<run dir>@<step>``. Other keyword arguments go to :func:`compare_models`.
    """
    map_location = device if device is not None else "cpu"
    model_a, ckpt_a = load_checkpoint(str(path_a), map_location=map_location)
    model_b, ckpt_b = load_checkpoint(str(path_b), map_location=map_location)
    if dataset is None:
        from grokray.config import trial_config_from_dict
        from grokray.data import load_dataset
        dataset = load_dataset(trial_config_from_dict(ckpt_a["trial_config"]).data)
    if check_dataset:
        # Runs of one sweep differ in phi or augmentation, hence in dataset, but share the
        # knowledge graph (and its test compositions): that is what "the same ID queries" needs.
        for path, ckpt in ((path_a, ckpt_a), (path_b, ckpt_b)):
            if ckpt.get("dataset") == dataset.name:
                continue
            from grokray.config import trial_config_from_dict
            from grokray.data import load_dataset
            other = load_dataset(trial_config_from_dict(ckpt["trial_config"]).data)
            if not (other.atomic.shape == dataset.atomic.shape and (other.atomic == dataset.atomic).all()):
                raise ValueError(f"{path} was trained on another knowledge graph than {dataset.name}: "
                                 "their queries cannot be compared (pass check_dataset=False to force)")
    kwargs.setdefault("labels", (_label(path_a, ckpt_a), _label(path_b, ckpt_b)))
    kwargs.setdefault("steps", (ckpt_a.get("step"), ckpt_b.get("step")))
    return compare_models(model_a, model_b, dataset, split, n, device=device, **kwargs)


def _label(path: str | os.PathLike, ckpt: dict) -> str:
    """``<run dir>@<step>`` for ``<run dir>/checkpoints/step_N.pt``, else the file name."""
    file = os.path.abspath(str(path))
    parent = os.path.dirname(file)
    in_run = os.path.basename(parent) == "checkpoints"
    run = os.path.basename(os.path.dirname(parent)) if in_run else os.path.basename(file)
    step = ckpt.get("step")
    return f"{run}@{step}" if step is not None else run
