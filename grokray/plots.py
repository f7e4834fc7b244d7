"""PNG plots a user would rather look at than read: accuracy curves, heatmaps.

matplotlib with the non-interactive Agg backend (no screen on the machines here).
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CURVES = (("acc/train", "train", "tab:blue", "-"),
          ("acc/train_inferred", "train inferred", "tab:cyan", ":"),
          ("acc/test_inferred_id", "test ID", "tab:green", "-"),
          ("acc/test_inferred_ood", "test OOD", "tab:red", "-"),
          ("lens/ood/bridge_found", "OOD bridge found (lens)", "tab:purple", "--"))


def _series(history: Sequence[Mapping[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(h["step"], h[key]) for h in history if key in h and h["step"] > 0 and h[key] is not None
           and not (isinstance(h[key], float) and math.isnan(h[key]))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, vals = zip(*pts)
    return np.asarray(steps, dtype=float), np.asarray(vals, dtype=float)


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "",
                marks: Mapping[str, float | None] | None = None,
                curves: Iterable[tuple[str, str, str, str]] = CURVES) -> str:
    """Accuracy curves against log step; ``marks`` draws labelled vertical lines (e.g. t_memorize)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for key, label, color, style in curves:
        x, y = _series(history, key)
        if len(x):
            ax.plot(x, y, style, color=color, label=label, lw=1.6)
    for i, (name, step) in enumerate((marks or {}).items()):
        if step is not None and step > 0 and math.isfinite(step):
            ax.axvline(step, color="0.35", ls="-." if i % 2 else "--", lw=1)
            ax.text(step, 1.02 + 0.05 * (i % 2), f"{name}={int(step)}", fontsize=7, ha="center",
                    transform=ax.get_xaxis_transform())
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step (log)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left")
    if title:
        ax.set_title(title, fontsize=9, pad=18 if marks else 6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_heatmaps(panels: Mapping[str, np.ndarray], path: str | os.PathLike, row_labels: Sequence[str],
                  col_labels: Sequence[str], title: str = "", vmin: float = 0.0, vmax: float = 1.0,
                  cmap: str = "viridis") -> str:
    """One heatmap per panel (rows = depth, columns = position), values written in the cells."""
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.6 + 2.3 * n, 1.2 + 0.42 * len(row_labels)), dpi=110,
                             squeeze=False, layout="constrained")
    im = None
    for ax, (name, mat) in zip(axes[0], panels.items()):
        mat = np.asarray(mat, dtype=float)
        im = ax.imshow(mat, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
        ax.set_yticks(range(len(row_labels)), row_labels if ax is axes[0][0] else [], fontsize=7)
        for (r, c), v in np.ndenumerate(mat):
            if math.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < (vmin + vmax) / 2 else "black")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return str(path)
