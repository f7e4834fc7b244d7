"""PNG plots a user would rather look at than read: accuracy curves, heatmaps, transfer curves.

matplotlib with the non-interactive Agg backend (no screen on the machines here). The label
colours live here so every picture (phase map, transfer curves) colours a label the same way.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from grokray.history import series  # noqa: E402

#: Label colours (Okabe-Ito, colour-blind safe); unlabelled light grey.
LABEL_COLORS = {"true_grokking": "#009E73", "fake_grokking": "#E69F00", "no_grokking": "#0072B2", None: "#D9D9D9"}
OTHER_COLOR = "#999999"

CURVES = (("acc/train", "train", "tab:blue", "-"),
          ("acc/train_inferred", "train inferred", "tab:cyan", ":"),
          ("acc/test_inferred_id", "test ID", "tab:green", "-"),
          ("acc/test_inferred_ood", "test OOD", "tab:red", "-"),
          ("lens/ood/bridge_found", "OOD bridge found (lens)", "tab:purple", "--"))
#: The circuit curves (grokray.circuits.formation), drawn in a panel under the accuracy curves.
CIRCUIT_CURVES = (("circuit/interchange/ood", "OOD interchange", "tab:red", "-"),
                  ("circuit/interchange/id", "ID interchange", "tab:green", "-"),
                  ("circuit/carry/ood", "OOD carry", "tab:red", "--"),
                  ("circuit/carry/id", "ID carry", "tab:green", "--"),
                  # the r1 patch alone: on memorized compositions the r1+r2 rate switches definition with the
                  # r2 state's answer leak from one evaluation to the next (grokray.circuits.formation)
                  ("circuit/interchange_r1/train", "train compositions (r1 alone)", "tab:cyan", ":"))


def _positive(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``key`` over steps > 0 (a log-step axis), finite values only."""
    s = series(history, key)
    keep = s.steps > 0
    return s.steps[keep].astype(float), s.values[keep]


def plot_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "",
                marks: Mapping[str, float | None] | None = None,
                curves: Iterable[tuple[str, str, str, str]] = CURVES,
                baselines: Mapping[str, float | None] | None = None) -> str:
    """Accuracy curves against log step; ``marks`` draws labelled vertical lines (e.g. t_memorize)
    with their labels inside the plot, staggered so they never overlap each other or the title;
    ``baselines`` draws labelled horizontal lines (e.g. the OOD shortcut baseline). When the history
    holds the circuit curves (``circuit/interchange/<split>``), a second panel under the accuracy
    shows them on the same steps: when the bridge started to mediate answers."""
    circuit = [(c, _positive(history, c[0])) for c in CIRCUIT_CURVES]
    circuit = [(c, xy) for c, xy in circuit if len(xy[0])]
    if circuit:
        fig, (ax, cax) = plt.subplots(2, 1, figsize=(8, 6.4), dpi=110, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.5]})
        for (key, label, color, style), (x, y) in circuit:
            cax.plot(x, y, style, color=color, label=label, lw=1.4, marker=".", ms=3)
        cax.set_ylim(-0.02, 1.02)
        cax.set_ylabel("bridge tests", fontsize=9)
        cax.set_title("bridge tests on fixed queries (interchange: a swapped-in bridge is followed;\n"
                      "carry: an answer's own hop-1 state holds its bridge; gaps: too few correct answers)", fontsize=8)
        cax.tick_params(labelsize=8)
        cax.grid(alpha=0.3, which="both")
        cax.legend(fontsize=7, loc="center left", framealpha=0.9)
        cax.set_xlabel("step (log)", fontsize=9)
        for name, step in (marks or {}).items():
            if step is not None and step > 0 and math.isfinite(step):
                cax.axvline(step, color="0.3", ls="--", lw=0.8)
    else:
        fig, ax = plt.subplots(figsize=(8, 4.6), dpi=110)
    for key, label, color, style in curves:
        x, y = _positive(history, key)
        if len(x):
            ax.plot(x, y, style, color=color, label=label, lw=1.6)
    for name, level in (baselines or {}).items():
        if level is not None and math.isfinite(level):
            ax.axhline(level, color="tab:red", ls=(0, (1, 2)), lw=1.2, label=f"{name} {level:.2f}")
    drawn = [(n, s) for n, s in (marks or {}).items() if s is not None and s > 0 and math.isfinite(s)]
    for i, (name, step) in enumerate(sorted(drawn, key=lambda m: m[1])):
        ax.axvline(step, color="0.3", ls="--" if i % 2 == 0 else "-.", lw=1)
        ax.annotate(f"{name} = {int(step):,}", xy=(step, 0.97 - 0.07 * i), xycoords=("data", "axes fraction"),
                    xytext=(4, 0), textcoords="offset points", fontsize=8, va="top",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.6", alpha=0.9))
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    if not circuit:
        ax.set_xlabel("step (log)", fontsize=9)
    ax.set_ylabel("accuracy", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_heatmaps(panels: Mapping[str, np.ndarray], path: str | os.PathLike, row_labels: Sequence[str],
                  col_labels: Sequence[str], title: str = "", vmin: float = 0.0, vmax: float = 1.0,
                  cmap: str = "viridis", excluded: Sequence[tuple[int, int]] = (), ncols: int | None = None,
                  excluded_in: Sequence[str] | None = None) -> str:
    """One heatmap per panel (rows = depth, columns = position), values written in the cells,
    ``ncols`` panels per row (default: all in one row).

    ``excluded`` cells (row, column) of the panels named in ``excluded_in`` (default: all) are
    hatched and labelled: shown, but not evidence (e.g. the last block's output, which the
    lens's "bridge found" never reads: at r1 it is just the atomic query).

    The layout is computed from the content (label widths, number of rows), not by matplotlib's
    constrained / tight layout: that search costs ~0.5 s a figure, and a classifier draws a few
    figures for every trial of a sweep."""
    n = max(len(panels), 1)
    ncols = min(ncols or n, n)
    nrows = -(-n // ncols)
    label_w = 0.09 * max([len(r) for r in row_labels] + [4]) + 0.3       # inches for the depth names
    cell_w, cell_h = 0.75, 0.42
    panel_w, panel_h = cell_w * len(col_labels), cell_h * len(row_labels)
    title_h = 0.75 + 0.18 * max((name.count("\n") for name in panels), default=0)   # title + x tick labels
    gap_w, top, bottom, cbar = 0.3, 0.5 if title else 0.15, 0.45, 0.7
    fig_w = label_w + ncols * panel_w + (ncols - 1) * gap_w + cbar
    fig_h = top + nrows * (panel_h + title_h) + bottom
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=100)
    im = None
    for i, (name, mat) in enumerate(panels.items()):
        r, c = divmod(i, ncols)
        left = label_w + c * (panel_w + gap_w)
        bottom_i = fig_h - top - (r + 1) * (panel_h + title_h) + 0.05
        ax = fig.add_axes((left / fig_w, bottom_i / fig_h, panel_w / fig_w, panel_h / fig_h))
        mat = np.asarray(mat, dtype=float)
        im = ax.imshow(mat, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(col_labels)), col_labels, fontsize=9)
        ax.set_yticks(range(len(row_labels)), row_labels if c == 0 else [], fontsize=9)
        if not np.isfinite(mat).any():
            ax.text(0.5, 0.5, "no queries to read", ha="center", va="center", transform=ax.transAxes, fontsize=9,
                    color="0.4")
        skip = excluded if excluded_in is None or name in excluded_in else ()
        for (rr, cc), v in np.ndenumerate(mat):
            if (rr, cc) in skip:
                ax.add_patch(plt.Rectangle((cc - 0.5, rr - 0.5), 1, 1, fc="0.92", hatch="//", ec="0.7", lw=0))
                ax.text(cc, rr, f"{v:.2f}\n(excluded)" if math.isfinite(v) else "excluded", ha="center",
                        va="center", fontsize=8, color="0.25")
            elif math.isfinite(v):
                ax.text(cc, rr, f"{v:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if v < (vmin + vmax) / 2 else "black")
    if im is not None:
        cax = fig.add_axes(((fig_w - cbar + 0.15) / fig_w, bottom / fig_h, 0.15 / fig_w,
                            (fig_h - top - bottom) / fig_h))
        fig.colorbar(im, cax=cax)
        cax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.12 / fig_h)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_interchange(results: Sequence[Any], path: str | os.PathLike, title: str = "") -> str:
    """The interchange test per intermediate depth: success (answer follows the swapped bridge)
    and the same-bridge control (answer kept), one panel per split."""
    n = max(len(results), 1)
    fig, axes = plt.subplots(1, n, figsize=(1.5 + 3.4 * n, 3.4), dpi=110, squeeze=False, layout="constrained")
    for ax, res in zip(axes[0], results):
        depths = [d.removesuffix(".resid_post") for d in res.depth_names]
        x = np.arange(len(depths))
        if len(depths):
            ax.bar(x - 0.18, res.success, 0.36, color="#009E73", label="answer follows the new bridge")
            ax.bar(x + 0.18, res.control, 0.36, color="0.7", label="same-bridge control keeps the answer")
            for xi, v in zip(x, res.success):
                if math.isfinite(v):
                    ax.text(xi - 0.18, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no intermediate state\n(one block application)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
        ax.set_xticks(x, depths, fontsize=8)
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{res.split}: {res.n_queries} correct answers" +
                     ("" if res.sufficient else " (insufficient)"), fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("rate", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title or "bridge interchange test (patch hop 1 from a query with another bridge)", fontsize=10)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


#: Transfer-curve panels: (metric, title).
TRANSFER_PANELS = (("acc/new_atomic", "new atomic facts (memorization)"), ("acc/test_new_old", "new+old (hop 1 new)"),
                   ("acc/test_old_new", "old+new (hop 2 new)"), ("acc/test_new_new", "new+new"))


def plot_transfer_curves(histories_by_label: Mapping[Any, Sequence[Sequence[Mapping[str, Any]]]],
                         path: str | os.PathLike, title: str | None = None,
                         panels: Sequence[tuple[str, str]] = TRANSFER_PANELS) -> str:
    """He et al. figure 3 style: accuracy vs fine-tuning step on the new facts, new+old,
    old+new and new+new, one line per run, coloured by source label. Returns ``path``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), dpi=110, squeeze=False,
                             sharey=True, layout="constrained")
    for ax, (key, name) in zip(axes[0], panels):
        for lab, histories in histories_by_label.items():
            for history in histories:
                s = series(history, key)
                if len(s.steps):
                    ax.plot(s.steps, s.values, color=LABEL_COLORS.get(lab, OTHER_COLOR), lw=1.2, alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fine-tuning step", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("exact-match accuracy", fontsize=8)
    n_runs = sum(len(h) for h in histories_by_label.values())
    handles = [Line2D([], [], color=LABEL_COLORS.get(lab, OTHER_COLOR), lw=2,
                      label=(lab or "unlabelled source").replace("_", " ") + f" ({len(histories)})")
               for lab, histories in histories_by_label.items()]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8,
                   frameon=False)
    fig.suptitle(title or f"transfer: accuracy during fine-tuning ({n_runs} run{'' if n_runs == 1 else 's'}, "
                 "coloured by the source's label)", fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return str(path)
