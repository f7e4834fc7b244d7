"""The phase map as a picture (:func:`plot_phase_map`, :func:`phase_map_figure`): one coloured
square per cell, hatched when a run is undetermined, small multiples per facet, a legend below;
sized from its content so no two texts overlap at any grid size.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from grokray.phasemap.axes import COLORS, HATCH, PHASE_COLORS, cells, fmt_value
from grokray.phasemap.table import breaks
from grokray.plots import OTHER_COLOR, plt
from grokray.verdict import LABELS

#: Tick labels of the picture: at most this many characters a line (x / y), this many lines.
X_LABEL_CHARS, Y_LABEL_CHARS, LABEL_LINES = 16, 26, 4
DPI = 110
_PAD = 0.12          # inches around the figure and between its parts
_PT = 1 / 72         # inches per point
_TICK_PAD, _LABEL_PAD, _TITLE_PAD = 3 * _PT, 4 * _PT, 6 * _PT


def _tick_label(text: str, chars: int, lines: int = LABEL_LINES) -> str:
    """A tick label on at most ``lines`` lines of ``chars`` characters (:func:`breaks`); what
    does not fit ends in an ellipsis (the CSV and the table hold the whole value)."""
    out = breaks(text, chars)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][:chars - 1] + "\u2026"
    return "\n".join(out)


class _Sizes:
    """Sizes of texts, in inches, as the figure's renderer draws them."""

    def __init__(self, fig: Any):
        self.fig, self.renderer = fig, fig.canvas.get_renderer()

    def __call__(self, text: str, **kw: Any) -> tuple[float, float]:
        if not text:
            return 0.0, 0.0
        t = self.fig.text(0, 0, text, **kw)
        box = t.get_window_extent(self.renderer)
        t.remove()
        return box.width / self.fig.dpi, box.height / self.fig.dpi

    def fit(self, text: str, max_w: float, sentence: bool = False, **kw: Any) -> str:
        """``text`` wrapped until it is at most ``max_w`` inches wide: at spaces (``sentence``),
        else after commas (:func:`breaks`)."""
        w = self(text, **kw)[0]
        chars, out = len(text), text
        while w > max_w and chars > 8:
            chars = max(8, min(chars - 1, int(chars * max_w / w)))
            out = "\n".join(ln for part in text.split("\n") for ln in
                            (textwrap.wrap(part, chars, break_on_hyphens=False) if sentence else breaks(part, chars)))
            w = self(out, **kw)[0]
        return out


#: Fill colours on which a cell's text is drawn white.
_DARK = {COLORS["true_grokking"], COLORS["no_grokking"], PHASE_COLORS["confusion"], PHASE_COLORS["diverged"]}


def _layout(panel_index: list[tuple[int, ...]], npanel: int, ncols: int, fits: int) -> list[tuple[int, int]]:
    """Where each panel goes, ``(row, col)``. Two facets (e.g. weight decay, and ``--by data.seed``):
    a table of panels, the first facet's values across and the second's down, when that many
    columns fit (``fits``); otherwise panels fill rows of ``ncols`` in order.

    >>> _layout([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)], 5, 3, 4)
    [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    >>> _layout([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)], 5, 3, 2)
    [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    """
    if panel_index and all(len(i) == 2 for i in panel_index):
        width = 1 + max(i[0] for i in panel_index)
        if 1 < width <= fits and max(i[1] for i in panel_index) > 0:
            return [(i[1], i[0]) for i in panel_index]
    return [divmod(k, ncols) for k in range(npanel)]


def phase_map_figure(df: pd.DataFrame, x: str | None = None, y: str | None = None, *,
                     facets: Sequence[str] | None = None, title: str | None = None, color_by: str = "label") -> Any:
    """The matplotlib Figure :func:`plot_phase_map` saves (close it with ``plt.close``).

    The figure is sized from its content: every text is measured with the renderer first, the
    cells are as wide as their longest tick label (wrapped to :data:`X_LABEL_CHARS` /
    :data:`Y_LABEL_CHARS` characters a line, after commas) and as tall as their longest row
    label, and every part (title, panels with their tick and axis labels, the legend) gets its
    own band, so no two texts overlap and none leaves the figure, at any grid size. Two facets are
    laid out as a table of panels (:func:`_layout`). ``color_by="phase"``: cells coloured by Liu
    et al.'s phase, the label's word in the text (:func:`grokray.phasemap.axes.cells`)."""
    from matplotlib.patches import Patch, Rectangle

    grid = cells(df, x, y, facets, color_by=color_by)
    x, y = grid.attrs["x"], grid.attrs["y"]
    x_levels, y_levels, panels = grid.attrs["x_levels"], grid.attrs["y_levels"], grid.attrs["panels"]
    nx, ny, npanel = len(x_levels), len(y_levels), len(panels)
    fig = plt.figure(dpi=DPI)
    size = _Sizes(fig)
    tick, cell_kw = {"fontsize": 8}, {"fontsize": 8, "fontweight": "bold", "linespacing": 1.3}

    # ---- one panel: cells sized by their labels and texts
    xt = [_tick_label(fmt_value(v), X_LABEL_CHARS) for v in x_levels] if x else [""] * nx
    yt = [_tick_label(fmt_value(v), Y_LABEL_CHARS) for v in y_levels] if y else [""] * ny
    xt_w, xt_h = (max(s) for s in zip(*[size(s, **tick) for s in xt]))
    yt_w, yt_h = (max(s) for s in zip(*[size(s, ma="left", **tick) for s in yt]))
    texts = {t for t in grid["text"] if t} or {""}
    c_w, c_h = (max(s) for s in zip(*[size(t, **cell_kw) for t in texts]))
    empty_w = size("no trial runs yet", fontsize=9)[0] if len(df) == 0 else 0.0
    cw = max(0.8, xt_w + 0.12, c_w + 0.2, (empty_w + 0.2) / nx)
    ch = max(0.5, yt_h + 0.1, c_h + 0.16)
    aw, ah = nx * cw, ny * ch
    x_name = size.fit(x or "all runs", aw + 0.5, fontsize=9)
    y_name = size.fit(y, ah, fontsize=9) if y else ""
    xn_h = size(x_name, fontsize=9)[1]
    yn_w = size(y_name, fontsize=9, rotation=90)[0]
    left = _PAD + (yn_w + _LABEL_PAD if y else 0.0) + _TICK_PAD + yt_w
    bottom = _TICK_PAD + xt_h + _LABEL_PAD + xn_h + _PAD
    titles = [size.fit(p, max(aw, 2.5), fontsize=9) for p in panels]
    t_w, t_h = (max(s) for s in zip(*[size(t, fontsize=9) for t in titles]))
    over = max(0.0, (t_w - aw) / 2)                     # a title wider than its cells, centred over them
    left, right = max(left, over + _PAD), max(_PAD, over + _PAD)
    top = t_h + _TITLE_PAD + _PAD if t_h else _PAD
    bw, bh = left + aw + right, top + ah + bottom
    ncols = min(npanel, 3 if npanel > 4 else npanel)
    fit_cols = max(1, int(30 // bw))          # panels side by side within a 30-inch figure
    ncols = max(1, min(ncols, fit_cols))
    places = _layout(grid.attrs["panel_index"], npanel, ncols, fit_cols)
    nrows, ncols = 1 + max(r for r, _ in places), 1 + max(c for _, c in places)

    # ---- the legend and the title: sized for the figure's width
    if color_by == "phase":
        present = set(grid["phase"].dropna())
        handles = [Patch(facecolor=c, label=ph) for ph, c in PHASE_COLORS.items() if ph != "diverged" or ph in present]
        if (grid["color"] == OTHER_COLOR).any():
            handles.append(Patch(facecolor=OTHER_COLOR, label="labelled, phase not tagged"))
    else:
        handles = [Patch(facecolor=COLORS[lab], label=lab.replace("_", " ")) for lab in LABELS]
    handles.append(Patch(facecolor=COLORS[None], label="not labelled yet"))
    handles.append(Patch(facecolor="white", edgecolor="0.15", hatch=HATCH, label="undetermined run(s)"))
    em = 8 * _PT
    entry_w = max(size(h.get_label(), fontsize=8)[0] for h in handles) + (2.0 + 0.8) * em
    fig_w = max(ncols * bw, 4.0) + 2 * _PAD
    leg_cols = len(handles)
    while leg_cols > 1 and leg_cols * entry_w + (leg_cols - 1) * 2.0 * em + 2 * 0.4 * em > fig_w - 2 * _PAD:
        leg_cols -= 1
    fig_w = max(fig_w, entry_w + 2 * _PAD + em)
    leg_rows = math.ceil(len(handles) / leg_cols)
    leg_h = leg_rows * (size("Ag", fontsize=8)[1] + 0.5 * em) + 2 * 0.4 * em
    name = df.attrs.get("sweep") or df.attrs.get("experiment") or ""
    labelled = int(df["label"].notna().sum()) if "label" in df else 0
    runs = f"{len(df)} run{'' if len(df) == 1 else 's'}"
    head = title or f"phase map{': ' + name if name else ''} ({runs}, {labelled} labelled)"
    if color_by == "phase":
        note = ("colour: Liu et al.'s phase (the cell's majority); cell: median steps to generalize "
                "(t_generalize); runs with the majority label / runs, the label (true / fake / no); graphs "
                "that disagree: each graph's label (true|no)")
    else:
        note = ("cell: median steps to generalize (t_generalize); runs with the majority label / runs, Liu et "
                "al.'s phase (G/C/M/X: grokking, comprehension, memorization, confusion); graphs that "
                "disagree: each graph's label (true|no)")
    heading = size.fit(f"{head}\n{note}", fig_w - 2 * _PAD, sentence=True, fontsize=9)
    head_h = size(heading, fontsize=9)[1]
    fig_h = _PAD + head_h + _PAD + nrows * bh + leg_h + _PAD
    fig.set_size_inches(fig_w, fig_h)

    # ---- drawing, every part in its band
    fig.text(0.5, 1 - _PAD / fig_h, heading, ha="center", va="top", fontsize=9)
    x0 = (fig_w - ncols * bw) / 2
    for k, panel in enumerate(panels):
        r, c = places[k]
        bx, by = x0 + c * bw, _PAD + leg_h + (nrows - 1 - r) * bh
        ax = fig.add_axes(((bx + left) / fig_w, (by + bottom) / fig_h, aw / fig_w, ah / fig_h))
        sub = grid[grid["panel"] == panel]
        for rec in sub.to_dict("records"):
            cx, cy = rec["col"], ny - 1 - rec["row"]
            ax.add_patch(Rectangle((cx, cy), 1, 1, facecolor=rec["color"], edgecolor="white", linewidth=2))
            if rec["n"] == 0:
                ax.add_patch(Rectangle((cx + 0.04, cy + 0.04), 0.92, 0.92, fill=False, edgecolor="0.75",
                                       linestyle=":", linewidth=1))
            if rec["hatch"]:
                ax.add_patch(Rectangle((cx + 0.015, cy + 0.02), 0.97, 0.96, fill=False, hatch=rec["hatch"],
                                       edgecolor="0.15", linewidth=0, alpha=0.5))
            if rec["text"]:
                dark = rec["color"] in _DARK
                ax.text(cx + 0.5, cy + 0.5, rec["text"], ha="center", va="center",
                        color="white" if dark else "black", **cell_kw)
        ax.set_xlim(0, nx)
        ax.set_ylim(0, ny)
        ax.set_xticks([i + 0.5 for i in range(nx)], xt, ha="center", ma="center", **tick)
        ax.set_yticks([ny - 1 - i + 0.5 for i in range(ny)], yt, ha="right", ma="left", **tick)
        ax.tick_params(length=0, pad=_TICK_PAD / _PT)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel(x_name, fontsize=9, labelpad=_LABEL_PAD / _PT)
        ax.set_ylabel(y_name, fontsize=9, labelpad=_LABEL_PAD / _PT)
        if panel:
            ax.set_title(titles[k], fontsize=9, pad=_TITLE_PAD / _PT)
        if len(df) == 0:
            ax.text(nx / 2, ny / 2, "no trial runs yet", ha="center", va="center", fontsize=9, color="0.4")
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, _PAD / fig_h), ncol=leg_cols,
               fontsize=8, frameon=False, borderaxespad=0)
    return fig


def plot_phase_map(df: pd.DataFrame, path: str | Path, x: str | None = None, y: str | None = None, *,
                   facets: Sequence[str] | None = None, title: str | None = None, color_by: str = "label") -> str:
    """A phase-diagram PNG of :func:`cells`: one coloured square per cell (majority label),
    hatched when censored, with the median ``t_generalize`` and ``k/n`` written in it; one
    panel per facet combination; a legend below. Sized from its content at any grid size
    (:func:`phase_map_figure`); ``color_by="phase"`` colours by Liu et al.'s phase. Returns ``path``."""
    fig = phase_map_figure(df, x, y, facets=facets, title=title, color_by=color_by)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return str(path)
