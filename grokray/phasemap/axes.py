"""Axes and cells of the phase map: which parameters are columns, rows and facets, how the runs
of a cell are aggregated (majority label, ties to the weaker claim, graphs kept apart), and
what each cell of the picture shows (:func:`cells`). The rules are :mod:`grokray.phasemap`'s.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from grokray.phasemap.read import COLUMNS
from grokray.plots import LABEL_COLORS as COLORS
from grokray.plots import OTHER_COLOR
from grokray.verdict import LABELS, label_name
from grokray.verdict import SHORT_LABELS as SHORT

#: Who wins a tie for the majority: the weaker claim first.
TIE_ORDER = ("no_grokking", "fake_grokking", "true_grokking")
#: Cell colour of a cell without runs.
EMPTY_COLOR = "#FFFFFF"
HATCH = "///"
#: Numeric parameters with more distinct values than this are binned for the map.
MAX_LEVELS = 12
N_BINS = 6


def params_of(df: pd.DataFrame) -> list[str]:
    """The parameter columns: ``df.attrs["params"]``, else every column not in :data:`COLUMNS`."""
    params = df.attrs.get("params")
    if params is None:
        params = [c for c in df.columns if c not in COLUMNS]
    return [p for p in params if p in df.columns]


def is_replicate(param: str) -> bool:
    """Seeds are replicates: aggregated within a cell, never a default axis or facet."""
    return param.split(".")[-1] == "seed"


def _resolve(df: pd.DataFrame, name: str | None, what: str) -> str | None:
    if name is None:
        return None
    params = params_of(df)
    if name in params:
        return name
    matches = [p for p in params if p.split(".")[-1] == name or p.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(params) or "none"
    why = f"is ambiguous ({', '.join(matches)})" if matches else "is not a parameter of this map"
    raise ValueError(f"{what} {name!r} {why}; available parameters: {listed}")


def resolve_axes(df: pd.DataFrame, x: str | None = None, y: str | None = None,
                 facets: Sequence[str] | None = None, default_y: bool = True
                 ) -> tuple[str | None, str | None, list[str]]:
    """``(x, y, facets)`` with the defaults of :mod:`grokray.phasemap` filled in.

    ``x`` / ``y`` may be a parameter's full dotted name or its unambiguous last part
    (``phi`` for ``data.phi``); a bad name raises :class:`ValueError` listing the
    parameters. ``default_y=False`` leaves ``y`` as given (``None``: a single row).
    """
    x, y = _resolve(df, x, "x"), _resolve(df, y, "y")
    if x is not None and x == y:
        raise ValueError(f"x and y are both {x!r}; available parameters: {', '.join(params_of(df))}")
    params = params_of(df)
    distinct = {p: _nunique(df[p]) for p in params}
    ranked = [p for p in params if not is_replicate(p)] or list(params)  # replicates only if nothing else
    ranked = sorted(ranked, key=lambda p: -distinct[p])                    # stable: ties keep sweep order
    free = [p for p in ranked if p not in (x, y)]
    if x is None and free:
        x = free.pop(0)
    if y is None and default_y and free:
        y = free.pop(0)
    if facets is None:
        facets = [p for p in free if not is_replicate(p) and distinct[p] > 1]
    else:
        facets = [_resolve(df, f, "facet") for f in facets]
        if x in facets or (y is not None and y in facets):
            raise ValueError(f"facets {facets} repeat an axis (x={x!r}, y={y!r})")
    return x, y, list(facets)


def _nunique(s: pd.Series) -> int:
    return len({_key(v) for v in s})


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _key(v: Any) -> Any:
    return None if _is_missing(v) else v


def _sort_key(v: Any) -> tuple:
    if _is_missing(v):
        return (2, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def fmt_value(v: Any) -> str:
    if _is_missing(v):
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _levels(df: pd.DataFrame, param: str | None) -> tuple[pd.Series, list]:
    """Per-row level of ``param`` and the ordered levels; numeric params with more than
    :data:`MAX_LEVELS` values are binned (labels like ``0.1..0.32``)."""
    if param is None:
        return pd.Series([""] * len(df), index=df.index, dtype=object), [""]
    values = [_key(v) for v in df[param]]
    distinct = sorted(set(values), key=_sort_key)
    numeric = [v for v in distinct if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numeric) <= MAX_LEVELS or len(numeric) != len([v for v in distinct if v is not None]):
        return pd.Series(values, index=df.index, dtype=object), distinct
    lo, hi = float(min(numeric)), float(max(numeric))
    log = lo > 0 and hi / lo >= 10
    edges = np.geomspace(lo, hi, N_BINS + 1) if log else np.linspace(lo, hi, N_BINS + 1)
    labels = [f"{a:.3g}..{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
    idx = np.clip(np.searchsorted(edges, [v if v is not None else np.nan for v in values], side="right") - 1,
                  0, N_BINS - 1)
    binned = [None if v is None else labels[i] for v, i in zip(values, idx)]
    used = [lab for lab in labels if lab in set(binned)] + ([None] if None in binned else [])
    return pd.Series(binned, index=df.index, dtype=object), used


def majority(labels: Iterable[str | None]) -> tuple[str | None, int, bool]:
    """``(label, count, tie)``: the most frequent label (unlabelled runs do not vote), ties
    broken by :data:`TIE_ORDER`; ``(None, 0, False)`` when nothing is labelled.

    >>> majority(["true_grokking", "no_grokking", None])
    ('no_grokking', 1, True)
    >>> majority(["true_grokking", "true_grokking", "fake_grokking"])
    ('true_grokking', 2, False)
    """
    counts: dict[str, int] = {}
    for lab in labels:
        if not _is_missing(lab):
            counts[lab] = counts.get(lab, 0) + 1
    if not counts:
        return None, 0, False
    top = max(counts.values())
    tied = [lab for lab, c in counts.items() if c == top]
    order = {lab: i for i, lab in enumerate(TIE_ORDER)}
    winner = min(tied, key=lambda lab: (order.get(lab, len(order)), str(lab)))
    return winner, top, len(tied) > 1


#: The parameter that draws the graph (and its ID/OOD split): runs on two graphs are not replicates of
#: one experiment, so a cell shows each graph's own majority (:func:`aggregate`), or ``--by`` splits them.
GRAPH = "data.seed"
#: Who wins a tie for a cell's phase: the weaker claim first.
PHASE_TIE_ORDER = ("memorization", "confusion", "diverged", "comprehension", "grokking")
#: Liu et al.'s phases in the picture coloured by phase (Okabe-Ito, distinct from the label colours'
#: use: grokking green as true grokking's, comprehension sky blue, memorization yellow, confusion vermillion).
PHASE_COLORS = {"grokking": "#009E73", "comprehension": "#56B4E9", "memorization": "#F0E442",
                "confusion": "#D55E00", "diverged": "#000000"}
#: One letter per Liu et al. phase in the terminal table.
PHASE_LETTERS = {"grokking": "G", "comprehension": "C", "memorization": "M", "confusion": "X", "diverged": "D"}


def _spread(group: pd.DataFrame, col: str) -> tuple[float, float, float]:
    vals = group[col].astype(float).dropna() if col in group else pd.Series(dtype=float)
    if not len(vals):
        return math.nan, math.nan, math.nan
    return float(vals.median()), float(vals.min()), float(vals.max())


def aggregate(group: pd.DataFrame) -> dict[str, Any]:
    labels = [_key(v) for v in group["label"]] if "label" in group else [None] * len(group)
    label, k, tie = majority(labels)
    out: dict[str, Any] = {"label": label, "n_label": k, "n": len(group), "tie": tie}
    for lab in LABELS:
        out[f"n_{lab}"] = sum(1 for v in labels if v == lab)
    out["n_unlabelled"] = sum(1 for v in labels if v is None)
    out["n_censored"] = int(group["censored"].fillna(False).astype(bool).sum()) if "censored" in group else 0
    undetermined = group["censored"].fillna(False).astype(bool) if "censored" in group else pd.Series(
        False, index=group.index)
    if "determined" in group:   # censored runs are undetermined too (runs labelled before v3 carry no flag)
        undetermined = undetermined | ~group["determined"].fillna(True).astype(bool)
    out["n_undetermined"] = int(undetermined.sum())
    # per graph: its own majority; graphs that disagree are shown as such, never outvoted
    graph_labels: dict[Any, Any] = {}
    if GRAPH in group and group[GRAPH].nunique() > 1:
        for g, sub in group.groupby(GRAPH, sort=True):
            graph_labels[g] = majority([_key(v) for v in sub["label"]])[0]
    out["graph_labels"] = graph_labels
    votes = [v for v in graph_labels.values() if v is not None]
    out["graphs_agree"] = (len(set(votes)) <= 1) if graph_labels else None
    phases = [_key(v) for v in group["phase"]] if "phase" in group else []
    counts = {ph: phases.count(ph) for ph in set(phases) if ph is not None}
    # ties go to the phase that claims less, as labels' ties do (grokking last)
    out["phase"] = (min((ph for ph in counts if counts[ph] == max(counts.values())), key=PHASE_TIE_ORDER.index)
                    if counts else None)
    for col in ("t_generalize", "delay_ratio", "t_circuit", "final_target_level"):
        med, lo, hi = _spread(group, col)
        out[f"median_{col}"], out[f"min_{col}"], out[f"max_{col}"] = med, lo, hi
    return out


PIVOT_COLUMNS = ("label", "n_label", "n", "tie", *(f"n_{lab}" for lab in LABELS), "n_unlabelled", "n_censored",
                 "n_undetermined", "graph_labels", "graphs_agree", "phase",
                 *(f"{s}_{c}" for c in ("t_generalize", "delay_ratio", "t_circuit", "final_target_level")
                   for s in ("median", "min", "max")))


def pivot(df: pd.DataFrame, x: str | None, y: str | None = None, *,
          facets: Sequence[str] | None = None) -> pd.DataFrame:
    """Per cell (one combination of facets, ``y`` and ``x`` values present in ``df``): majority
    ``label`` (ties: :data:`TIE_ORDER`), ``n_label`` (its count), ``n``, ``tie``,
    ``n_<label>`` per label, ``n_unlabelled``, ``n_censored``, ``median_t_generalize``.

    Indexed by ``(*facets, y, x)`` (``y`` left out when ``None``). ``facets`` defaults to the
    other non-replicate parameters that vary; ``facets=[]`` aggregates over them.
    Numeric parameters with many values are binned (see :mod:`grokray.phasemap`).
    """
    x, y, facets = resolve_axes(df, x, y, facets, default_y=False)
    keys = [k for k in (*facets, y, x) if k is not None]
    if not keys:
        return pd.DataFrame([aggregate(df)], columns=list(PIVOT_COLUMNS),
                            index=pd.Index(["all"], name="cell"))
    levels = {k: _levels(df, k) for k in keys}
    grouped: dict[tuple, list[int]] = {}
    for i in range(len(df)):
        grouped.setdefault(tuple(levels[k][0].iloc[i] for k in keys), []).append(i)
    order = {k: {v: j for j, v in enumerate(levels[k][1])} for k in keys}
    found = sorted(grouped, key=lambda t: tuple(order[k][v] for k, v in zip(keys, t)))
    rows = [aggregate(df.iloc[grouped[c]]) for c in found]
    if len(keys) == 1:
        index = pd.Index([c[0] for c in found], name=keys[0], dtype=object)
    else:
        index = pd.MultiIndex.from_tuples(found, names=keys)
    out = pd.DataFrame(rows, columns=list(PIVOT_COLUMNS), index=index)
    out.attrs.update(x=x, y=y, facets=facets)
    return out


def filter_label(df: pd.DataFrame, label: str | None) -> pd.DataFrame:
    """The runs with ``label``: a full name, its short form (``true``/``fake``/``no``), or
    ``None`` / ``"unlabelled"`` for runs not labelled yet."""
    wanted = label_name(label)
    mask = df["label"].isna() if wanted is None else df["label"] == wanted
    out = df[mask]
    out.attrs = dict(df.attrs)
    return out


def short_label(label: str | None) -> str:
    return SHORT.get(label, str(label))


def grid_of(df: pd.DataFrame, x: str | None, y: str | None, facets: list[str]
          ) -> tuple[list, list, list[tuple[str, dict[tuple, pd.DataFrame], tuple[int, ...]]]]:
    """``(x_levels, y_levels, [(panel title, {(y level, x level): runs}, facet level indices)])``;
    the levels (and bins) come from the whole frame so every panel shares its axes."""
    df = df.reset_index(drop=True)
    xs, x_levels = _levels(df, x)
    ys, y_levels = _levels(df, y)
    x_levels, y_levels = x_levels or [""], y_levels or [""]  # no runs yet: one empty cell
    fs = {f: _levels(df, f) for f in facets}
    groups: dict[tuple, dict[tuple, list[int]]] = {}
    for i in range(len(df)):
        panel = tuple(fs[f][0].iloc[i] for f in facets)
        groups.setdefault(panel, {}).setdefault((ys.iloc[i], xs.iloc[i]), []).append(i)
    if not groups:
        groups[tuple(None for _ in facets)] = {}
    order = {f: {v: j for j, v in enumerate(fs[f][1])} for f in facets}
    def index(key: tuple) -> tuple[int, ...]:
        return tuple(order[f].get(v, -1) for f, v in zip(facets, key))

    panels = []
    for key in sorted(groups, key=index):
        title = ", ".join(f"{f}={fmt_value(v)}" for f, v in zip(facets, key))
        panels.append((title, {cell: df.iloc[rows] for cell, rows in groups[key].items()}, index(key)))
    return x_levels, y_levels, panels


def cells(df: pd.DataFrame, x: str | None = None, y: str | None = None,
          facets: Sequence[str] | None = None, color_by: str = "label") -> pd.DataFrame:
    """What :func:`plot_phase_map` draws: one row per (panel, y level, x level) of the full grid.

    Axes and facets default as in :func:`resolve_axes`. Columns: ``panel`` (facet title,
    ``""`` without facets), ``row`` / ``col`` (0-based, row 0 at the top), ``x_value``,
    ``y_value``, the :func:`pivot` counts, ``color`` (:data:`COLORS` by majority label:
    unlabelled grey, no runs white), ``hatch`` (:data:`HATCH` when a run is censored,
    else ``""``), ``text`` (median ``t_generalize`` in steps, newline, runs with the label
    / runs and Liu et al.'s phase letter; ``""`` for an empty cell). ``color_by="phase"``:
    coloured by the cell's Liu et al. phase (:data:`PHASE_COLORS`) and the label's short word
    written instead of the letter. ``attrs``: ``x``, ``y``, ``facets``, ``x_levels``,
    ``y_levels``, ``panels``, ``panel_index`` (each panel's level index per facet), ``color_by``.
    """
    if color_by not in ("label", "phase"):
        raise ValueError(f"color_by must be 'label' or 'phase' (got {color_by!r})")
    x, y, facets = resolve_axes(df, x, y, facets)
    x_levels, y_levels, panels = grid_of(df, x, y, facets)
    empty = df.iloc[0:0]
    rows = []
    for title, groups, _ in panels:
        for r, yv in enumerate(y_levels):
            for c, xv in enumerate(x_levels):
                agg = aggregate(groups.get((yv, xv), empty))
                if agg["n"] == 0:
                    color, hatch, text = EMPTY_COLOR, "", ""
                else:
                    hatch = HATCH if agg["n_undetermined"] else ""
                    graphs = ("\n" + "|".join(short_label(v) for v in agg["graph_labels"].values())
                              if agg["graphs_agree"] is False else "")
                    if color_by == "phase":
                        # a run labelled before phases were tagged: labelled, phase unknown (not "not labelled")
                        color = PHASE_COLORS.get(agg["phase"], OTHER_COLOR) if agg["label"] else COLORS[None]
                        word = f" {short_label(agg['label'])}" if agg["label"] else ""
                    else:
                        color = COLORS.get(agg["label"], OTHER_COLOR)
                        word = f" {PHASE_LETTERS.get(agg['phase'], '')}" if agg["phase"] else ""
                    text = f"{_steps(agg['median_t_generalize'])}\n{agg['n_label']}/{agg['n']}{word}{graphs}"
                rows.append({"panel": title, "row": r, "col": c, "x_value": xv, "y_value": yv, **agg,
                             "color": color, "hatch": hatch, "text": text})
    out = pd.DataFrame(rows, columns=["panel", "row", "col", "x_value", "y_value", *PIVOT_COLUMNS, "color",
                                      "hatch", "text"])
    out.attrs.update(x=x, y=y, facets=facets, x_levels=x_levels, y_levels=y_levels,
                     panels=[t for t, _, _ in panels], panel_index=[i for _, _, i in panels], color_by=color_by)
    return out


def _steps(v: float) -> str:
    """Compact step count: ``850``, ``3.2k``, ``12.6k``, ``1.5M``; ``-`` when missing."""
    if v is None or not math.isfinite(v):
        return "-"
    if v < 1000:
        return f"{v:.0f}"
    if v < 1e6:
        return f"{v / 1000:.3g}k"
    return f"{v / 1e6:.3g}M"
