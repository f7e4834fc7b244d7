"""The phase map as a terminal table (:func:`format_table`): rows = ``y`` levels, columns = ``x``
levels, cells ``true 2/3 G``, one table per facet, the legend at the end; lines kept within
:data:`TABLE_WIDTH` characters where the cells allow it.
"""
from __future__ import annotations

import re
from typing import Sequence

import pandas as pd

from grokray.phasemap.axes import PHASE_LETTERS, aggregate, fmt_value, grid_of, resolve_axes, short_label

#: What the table's cells mean, printed under it.
TABLE_LEGEND = ("true/fake/no = majority label (ties -> no > fake > true), ? = unlabelled;\n"
                "true|no = the graphs (data.seed) disagree: each graph's majority; k/n = runs with that label / runs;\n"
                "* = some runs undetermined (censored, semi or still rising at the budget);\n"
                "G/C/M/X = Liu et al.'s phase: grokking / comprehension / memorization / confusion")
#: The terminal table's target width in characters (a table whose cells alone are wider stays wider).
TABLE_WIDTH = 100
#: A row label longer than this goes on continuation lines under its row.
ROW_CHARS = 30
#: Column labels wrap onto at most this many header lines; beyond that the columns get keys.
HEADER_LINES = 3


def _cell_word(cell: dict | None) -> str:
    """``true 2/2 G``: majority label, ``*`` if a run is undetermined, runs with the label / runs, Liu
    et al.'s phase; graphs that disagree: ``true|no 2/4 G`` (each graph's majority, in graph order)."""
    if cell is None:
        return "."
    star = "*" if cell.get("n_undetermined", cell["n_censored"]) else ""
    word = short_label(cell["label"])
    if cell.get("graphs_agree") is False:
        word = "|".join(short_label(v) for v in cell["graph_labels"].values())
    phase = PHASE_LETTERS.get(cell.get("phase"), "")
    return f"{word}{star} {cell['n_label']}/{cell['n']}" + (f" {phase}" if phase else "")


def breaks(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken after a comma where it can (a list
    of pairs ``n_layers=2,n_loops=1`` or a title ``a=1, b=2``), else inside a piece.

    >>> breaks("hop1.k=1,hop1.ratio=0.5,hop2.k=0", 18)
    ['hop1.k=1,', 'hop1.ratio=0.5,', 'hop2.k=0']
    """
    width = max(1, width)
    lines: list[str] = []
    cur = ""
    for piece in re.split(r"(?<=,)", text):
        if cur and len((cur + piece).rstrip()) > width:
            lines.append(cur.rstrip())
            cur = piece.lstrip()
        else:
            cur = cur + piece if cur else piece.lstrip()
        while len(cur) > width:  # a piece longer than a line: after its last '.', '_' or '=' that fits
            cut = max(cur.rfind(ch, 1, width) for ch in "._=") + 1 or width
            lines.append(cur[:cut])
            cur = cur[cut:]
    if cur or not lines:
        lines.append(cur.rstrip())
    return lines


def _pack(items: list[str], width: int) -> list[str]:
    """``items`` joined by ``; `` into lines of at most ``width`` characters (never inside an item)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += "; " + item
        else:
            lines.append(item)
    return lines


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(s.ljust(w) for s, w in zip(cells, widths)).rstrip()


def _table_block(corner: str, x_labels: list[str], rows: list[tuple[str, list[str]]],
                 width: int = TABLE_WIDTH) -> list[str]:
    """One table: a header (the corner and the ``x`` labels) and one row per ``y`` label.

    What it does to stay within ``width`` characters, in order, only when it must: a row label
    longer than :data:`ROW_CHARS` goes on continuation lines (indented two spaces) under its
    row; the corner ``y \\ x`` goes on two lines; the column labels wrap onto at most
    :data:`HEADER_LINES` lines; else the columns are named ``x1``, ``x2``, ... and a key below
    the table gives their values. Cells are never cut: a table of many columns may stay wider.
    """
    row_lines = [breaks(lab, ROW_CHARS) if len(lab) > ROW_CHARS else [lab] for lab, _ in rows]
    row_lines = [[ln if i == 0 else "  " + ln for i, ln in enumerate(ls)] for ls in row_lines]
    first = max([len(ln) for ls in row_lines for ln in ls] + [0])
    cell_w = [max([len(words[i]) for _, words in rows] + [1]) for i in range(len(x_labels))]

    def total(fw: int, col_w: list[int]) -> int:
        return fw + sum(2 + w for w in col_w)

    corner_lines = [corner]
    heads = [[lab] for lab in x_labels]
    col_w = [max(c, len(lab)) for c, lab in zip(cell_w, x_labels)]
    key: list[str] = []
    if total(max(first, len(corner)), col_w) > width:
        if " \\ " in corner and len(corner) > first:
            y_name, x_name = corner.split(" \\ ", 1)
            corner_lines = [y_name + " \\", x_name]
        fw = max([first, *map(len, corner_lines)])
        share = (width - fw) // max(1, len(x_labels)) - 2
        heads = [breaks(lab, max(c, share, 6)) for c, lab in zip(cell_w, x_labels)]
        col_w = [max([c, *map(len, h)]) for c, h in zip(cell_w, heads)]
        if max(map(len, heads)) > HEADER_LINES or total(fw, col_w) > width:
            names = [f"x{i + 1}" for i in range(len(x_labels))]
            keyed = [max(c, len(n)) for c, n in zip(cell_w, names)]
            if max(map(len, heads)) > HEADER_LINES or total(fw, keyed) < total(fw, col_w):
                heads, col_w = [[n] for n in names], keyed
                key = _pack([f"{n} = {lab}" for n, lab in zip(names, x_labels)], width)
    fw = max([first, *map(len, corner_lines)])
    widths = [fw, *col_w]
    lines = []
    for i in range(max([len(corner_lines), *map(len, heads)])):
        lines.append(_join([corner_lines[i] if i < len(corner_lines) else "",
                            *[h[i] if i < len(h) else "" for h in heads]], widths))
    for (_, words), ls in zip(rows, row_lines):
        lines.append(_join([ls[0], *words], widths))
        lines += ls[1:]
    return lines + key


def format_table(df: pd.DataFrame, x: str | None, y: str | None = None, *,
                 facets: Sequence[str] | None = None, width: int = TABLE_WIDTH) -> str:
    """A terminal table: rows = ``y`` levels, columns = ``x`` levels, cells ``true 2/3``
    (short majority label, runs with it / runs in the cell), ``*`` when a run is censored,
    ``.`` when no run; one table per facet combination (``facets`` as in :func:`pivot`);
    the legend at the end. ``x=None``: one cell for all runs.

    Lines stay within ``width`` characters where the cells allow it: long row labels wrap,
    long column labels wrap or become keys ``x1``, ``x2``, ... explained under the table
    (:func:`_table_block`)."""
    x, y, facets = resolve_axes(df, x, y, facets, default_y=False)
    x_levels, y_levels, panels = grid_of(df, x, y, facets)
    corner = f"{y} \\ {x}" if y else (x or "all runs")
    blocks = []
    for title, groups, _ in panels:
        head = [f"[{ln}" if i == 0 else f" {ln}" for i, ln in enumerate(breaks(title, width - 2))] if title else []
        if head:
            head[-1] += "]"
        if x is None:  # no parameter: one cell
            blocks.append(head + [corner, _cell_word(aggregate(groups[("", "")]) if groups else None)])
            continue
        rows = [(fmt_value(yv) if y else "",
                 [_cell_word(aggregate(groups[(yv, xv)]) if (yv, xv) in groups else None) for xv in x_levels])
                for yv in y_levels]
        blocks.append(head + _table_block(corner, [fmt_value(v) for v in x_levels], rows, width))
    return "\n\n".join("\n".join(b) for b in blocks) + "\n" + TABLE_LEGEND + search_summary(df)


def search_summary(df: pd.DataFrame) -> str:
    """For a sweep the boundary search chose (``method: boundary``): how many points and why, so
    the map can be audited (each run's reason: ``--csv`` / ``--json``, tag ``grokray.search_reason``).

    >>> df = pd.DataFrame({"search_reason": ["trial 1/9: coarse design", "trial 2/9: coarse design",
    ...                                      "trial 3/9: refine: corners of a 2-step cell", None]})
    >>> print(search_summary(df).strip())
    boundary search: 3 point(s) chosen: 2 coarse design, 1 refine (each run's reason: --csv or --json)
    """
    if "search_reason" not in df or df["search_reason"].isna().all():
        return ""
    kinds = df["search_reason"].dropna().map(lambda r: r.split(": ", 1)[-1].split(":", 1)[0].strip())
    counts = kinds.value_counts(sort=False)
    order = sorted(counts.index, key=lambda k: ("coarse" not in k, "refine" not in k, k))
    return (f"\nboundary search: {int(counts.sum())} point(s) chosen: "
            + ", ".join(f"{counts[k]} {k}" for k in order) + " (each run's reason: --csv or --json)\n")


#: A search-map cell's word per search label (:func:`format_search_map`).
SEARCH_WORDS = {"grokking": "grok", "comprehension": "comp", "not_generalized": "mem", "confusion": "conf",
                "diverged": "div", "failed": "fail", "generalized": "gen", "mixed": "mixed"}
SEARCH_LEGEND = ("search map: grok / comp / mem / conf = the search's label (grokking / comprehension /\n"
                 "memorization, i.e. not generalized / confusion); * = a run; no mark = the search's rule (agreeing\n"
                 "neighbours, or inside a cell whose known points agree); ? = unresolved: the nearest known\n"
                 "point's label; + = its trial has not finished; . = nothing known in this facet yet")


def format_search_map(df: pd.DataFrame, width: int = TABLE_WIDTH) -> str:
    """The whole map of a boundary search (:func:`grokray.sweep.search_map.search_map`'s frame):
    one table per facet, columns = the axis with most values (ties: the first), rows = the next; a cell is the
    search's label, ``*`` where a run gave it, ``?`` where only the nearest known point did.

    >>> df = pd.DataFrame({"phi": [3.6, 18.0, 3.6, 18.0], "wd": [0.1, 0.1, 1.0, 1.0],
    ...                    "search_label": ["not_generalized", "comprehension", "not_generalized", "grokking"],
    ...                    "source": ["run", "cell", "run", "nearest"], "in_flight": [False, False, False, True],
    ...                    "reason": ["coarse design", None, "coarse design", None]})
    >>> print(format_search_map(df).split("\\n\\nsearch map:")[0])
    wd \\ phi  3.6   18
    0.1       mem*  comp
    1         mem*  grok?+
    """
    from grokray.sweep.search_map import describe_sources, map_keys

    facets, numeric = map_keys(df)
    axes = sorted(numeric, key=lambda k: -df[k].nunique())[:2]
    x, y = axes[0] if axes else None, axes[1] if len(axes) > 1 else None
    facets += [k for k in numeric if k not in (x, y)]     # a third axis: one table per value

    def word(r: pd.Series) -> str:
        if r["source"] == "none" or r["search_label"] is None or r["search_label"] != r["search_label"]:
            return "." + ("+" if r["in_flight"] else "")
        mark = {"run": "*", "nearest": "?"}.get(r["source"], "")
        return SEARCH_WORDS.get(r["search_label"], str(r["search_label"])) + mark + ("+" if r["in_flight"] else "")

    blocks = []
    groups = df.groupby(facets, sort=False, dropna=False) if facets else [((), df)]
    for combo, part in groups:
        combo = combo if isinstance(combo, tuple) else (combo,)
        head = [", ".join(f"{k}={fmt_value(v)}" for k, v in zip(facets, combo))] if facets else []
        if x is None:
            blocks.append(head + [word(part.iloc[0])])
            continue
        xs = sorted(part[x].unique())
        ys = sorted(part[y].unique()) if y else [None]
        rows = []
        for yv in ys:
            sel = part[part[y] == yv] if y else part
            by_x = {r[x]: word(r) for _, r in sel.iterrows()}
            rows.append((fmt_value(yv) if y else "", [by_x.get(xv, ".") for xv in xs]))
        corner = f"{y} \\ {x}" if y else x
        blocks.append(([f"[{head[0]}]"] if head else []) + _table_block(corner, [fmt_value(v) for v in xs], rows, width))
    summary = describe_sources(df)
    return "\n\n".join("\n".join(b) for b in blocks) + "\n\n" + SEARCH_LEGEND + "\n" + summary + "\n"
