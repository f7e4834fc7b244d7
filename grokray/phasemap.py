"""The run-phase map: every run's label over the swept parameters, as a table and a picture.

:func:`phase_map` reads a sweep (or a whole MLflow experiment) into a DataFrame with
one row per trial run: the swept values, the label (``true_grokking`` /
``fake_grokking`` / ``no_grokking``, ``None`` while unlabelled), the verdict's steps and
the final accuracies. One experiment listing and one run search resolve the name, one
paged run search fetches every trial run (a thousand runs: one request); nothing is
requested per run.

Views of that frame:

* :func:`pivot`: per cell, the majority label, counts per label, ``n``, ``n_censored``
  and the median ``t_generalize``;
* :func:`format_table`: the same as a terminal table (``true 2/3``, ``no* 1/1``);
* :func:`plot_phase_map`: a phase-diagram PNG, small multiples when more than two
  parameters vary; :func:`cells` computes what it draws (colour, hatch, text per cell);
* :func:`log_phase_map`: CSV + PNG (+ the text table) on the sweep's parent run under
  ``phase_map/``; the sweep driver refreshes it as labels arrive.

Rules shared by every view:

* **Replicates are aggregated, everything else is separated.** A parameter whose last
  dotted segment is ``seed`` (``seed``, ``data.seed``) is a replicate: the runs of a cell
  differ only in it. Every other parameter that takes more than one value is an axis
  (``x`` columns, ``y`` rows) or a facet (one table / panel per combination). Pass
  ``facets=[]`` to aggregate over the non-axis parameters instead.
* **Majority label, ties to the weaker claim.** A cell's label is the most frequent
  label among its labelled runs; a tie goes to the label that claims less, in the order
  ``no_grokking`` > ``fake_grokking`` > ``true_grokking`` (:data:`TIE_ORDER`): a cell
  claims grokking only when most of its runs do. A cell whose runs are all unlabelled
  has label ``None``.
* **Graphs are not replicates.** ``data.seed`` draws the graph and its split: a cell aggregates
  over graphs but shows each graph's own majority when they disagree (``true|no``), never a
  ``no 1/2`` that hides it; ``grokray phase-map NAME --by data.seed`` (``facets=[..., "data.seed"]``)
  splits the map by graph.
* **Undetermined** runs (censored at the step budget, ``semi``, or still rising at its end: they
  might still grok); a cell with at least one is starred in the table and hatched in the picture.
* **Liu et al.'s phase** (grokking / comprehension / memorization / confusion, the verdict's
  ``phase``) is shown beside the label: ``G``/``C``/``M``/``X``.
* **Default axes** (:func:`resolve_axes`): ``x`` is the non-replicate parameter with the
  most distinct values, ``y`` the next one (ties: the order the sweep lists them); the
  rest are facets. Replicates are an axis only when nothing else varies.
* Numeric parameters with more than :data:`MAX_LEVELS` distinct values (random or
  optuna sweeps) are binned into :data:`N_BINS` intervals (log-spaced when positive and
  spanning a decade or more).

Example (a hand-made frame; :func:`phase_map` gives the real one):

    >>> import pandas as pd
    >>> df = pd.DataFrame({"data.phi": [3.6, 3.6, 7.2, 7.2, 7.2],
    ...                    "seed": [0, 1, 0, 1, 2],
    ...                    "label": ["no_grokking", "no_grokking", "true_grokking", "true_grokking", None],
    ...                    "censored": [True, False, False, False, False],
    ...                    "t_generalize": [float("nan"), float("nan"), 4000.0, 6000.0, float("nan")]})
    >>> pv = pivot(df, "data.phi")        # seeds are replicates: aggregated per cell
    >>> row = pv.loc[7.2]
    >>> row["label"], int(row["n_label"]), int(row["n"]), float(row["median_t_generalize"])
    ('true_grokking', 2, 3, 5000.0)
    >>> print(format_table(df, "data.phi"))  # doctest: +ELLIPSIS
    data.phi  3.6      7.2
              no* 2/2  true 2/3
    true/fake/no = majority label (ties -> no > fake > true), ? = unlabelled;
    ...
    >>> # df = phase_map("phi-by-augmentation")              # a sweep name, or an experiment name
    >>> # plot_phase_map(df, "phase_map.png")                # x / y / facets chosen as above
"""
from __future__ import annotations

import math
import re
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd

from grokray import tracking
from grokray.plots import LABEL_COLORS as COLORS
from grokray.plots import OTHER_COLOR
from grokray.plots import plt
from grokray.sweep.naming import value_label
from grokray.criteria import REGISTRY
from grokray.verdict import LABELS, label_name
from grokray.verdict import SHORT_LABELS as SHORT

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

#: Who wins a tie for the majority: the weaker claim first.
TIE_ORDER = ("no_grokking", "fake_grokking", "true_grokking")
#: Cell colour of a cell without runs.
EMPTY_COLOR = "#FFFFFF"
HATCH = "///"
#: Numeric parameters with more distinct values than this are binned for the map.
MAX_LEVELS = 12
N_BINS = 6

#: One label column per criterion of :data:`grokray.criteria.REGISTRY` (``label_interchange``, ``label_lens``).
CRITERION_COLUMNS = tuple(c.column for c in REGISTRY.values())
#: Columns after the parameters, in order.
COLUMNS = ("label", "detail", "phase", "determined", "confidence", "t_memorize", "t_generalize", "delay_ratio",
           "t_circuit", "final_train_acc", "final_id_acc", "final_ood_acc", "final_target_level", "shortcut_best",
           "interchange", "bridge_rate", *CRITERION_COLUMNS, "censored", "steps_run", "run_id", "run_name", "status",
           "classifier_version")
#: Float columns after the parameters.
FLOAT_COLUMNS = ("confidence", "t_memorize", "t_generalize", "delay_ratio", "t_circuit", "final_train_acc",
                 "final_id_acc", "final_ood_acc", "final_target_level", "shortcut_best", "interchange", "bridge_rate")
#: Params logged on a trial run that are not trial-config knobs.
NOT_CONFIG = ("model.n_params",)

Tag = tracking.Tag
V = tracking.VERDICT_PREFIX
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


# --------------------------------------------------------------------------- reading MLflow

def phase_map(sweep_or_experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per trial run of a sweep (or of an MLflow experiment); see the module docstring.

    The name is looked up first as a sweep (a parent run tagged ``grokray.kind = sweep``,
    ``grokray.sweep = <name>`` in any experiment; the newest if several), then as an
    experiment name. Columns: the parameters (``df.attrs["params"]``: a sweep's swept keys
    with their original types; for an experiment, the config params whose values differ
    across its trial runs, as numbers where they parse), then :data:`COLUMNS`.
    ``df.attrs`` also holds ``sweep`` (``None`` for an experiment), ``experiment``,
    ``kind`` (``sweep`` | ``experiment``), ``parent_run_id`` and ``tracking_uri``.

    Raises:
        ConfigError: no MLflow store at the tracking URI (none is created: a reader writes nothing).
        LookupError: the name is neither a sweep nor an experiment at the tracking URI; the
            message lists the sweeps and experiments that are there.
    """
    client = tracking.existing_client(tracking_uri)
    experiments = tracking.all_experiments(client)
    parent = tracking.find_sweep_parent(client, sweep_or_experiment, [e.experiment_id for e in experiments])
    if parent is not None:
        exp_name = next((e.name for e in experiments if e.experiment_id == parent.info.experiment_id), None)
        return _sweep_frame(client, parent, sweep_or_experiment, exp_name)
    exp = next((e for e in experiments if e.name == sweep_or_experiment), None)
    if exp is None:
        sweeps = tracking.sweep_names(client, [e.experiment_id for e in experiments])
        names = [e.name for e in experiments if e.name != "Default"]
        raise LookupError(f"no sweep or experiment named {sweep_or_experiment!r} at {client.tracking_uri}; "
                          f"sweeps there: {', '.join(sweeps) or 'none'}; experiments: {', '.join(names) or 'none'}"
                          f" (another store? {tracking.POINT_ELSEWHERE})")
    return _experiment_frame(tracking.experiment_runs(client, exp.experiment_id), exp.name, client.tracking_uri)


def _sweep_frame(client: "MlflowClient", parent: "Run", sweep: str, experiment: str | None) -> pd.DataFrame:
    runs = tracking.sweep_runs(client, parent)
    declared = tracking.swept_keys(parent)
    swept = [tracking.swept_values(r) for r in runs]
    params = list(declared)
    for values in swept:  # keys a run holds that the parent does not declare (should not happen)
        params += [k for k in values if k not in params]
    alternatives = {k: _distinct([v.get(k) for v in swept]) for k in params}
    rows = []
    for run, values in zip(runs, swept):
        row = {k: _hashable(values.get(k), alternatives[k]) for k in params}
        row.update(_run_columns(run))
        rows.append(row)
    return _finish_frame(rows, params, {"sweep": sweep, "experiment": experiment, "kind": "sweep",
                                        "parent_run_id": parent.info.run_id, "tracking_uri": client.tracking_uri})


def _distinct(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def _hashable(value: Any, alternatives: list[Any]) -> Any:
    """A swept value as a cell key: scalars as they are; a grouped value (a mapping) by its name,
    else by the pairs in which it differs from the parameter's other values (as run names read it)."""
    if isinstance(value, (dict, list)):
        return value_label(value, alternatives)
    return value


def _experiment_frame(runs: list["Run"], experiment: str, uri: str) -> pd.DataFrame:
    seen: dict[str, set[str]] = {}
    for run in runs:
        for k, v in run.data.params.items():
            seen.setdefault(k, set()).add(v)
    params = sorted(k for k, vals in seen.items() if len(vals) > 1 and k not in NOT_CONFIG)
    converters = {k: _converter([r.data.params.get(k) for r in runs]) for k in params}
    rows = []
    for run in runs:
        row = {k: converters[k](run.data.params.get(k)) for k in params}
        row.update(_run_columns(run))
        rows.append(row)
    return _finish_frame(rows, params, {"sweep": None, "experiment": experiment, "kind": "experiment",
                                        "parent_run_id": None, "tracking_uri": uri})


def _converter(values: Iterable[str | None]):
    """int if every logged value parses as an int, else float if every one parses, else str."""
    present = [v for v in values if v is not None]
    for kind in (int, float):
        try:
            [kind(v) for v in present]
        except ValueError:
            continue
        if kind is float and not any(math.isfinite(float(v)) for v in present):
            break  # "nan"/"inf" only: keep the strings
        return lambda v, kind=kind: None if v is None else kind(v)
    return lambda v: v


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _run_columns(run: "Run") -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    split = tags.get(Tag.SPLIT) or "ood"
    bridge = metrics.get(V + "bridge_given_correct")
    if bridge is None or math.isnan(bridge):
        bridge = metrics.get(f"lens/{split}/bridge_found", math.nan)
    steps = tags.get(Tag.STEPS_RUN)
    if steps is None:  # still running: the last step it logged
        steps = max((m.step for m in getattr(run.data, "_metric_objs", ()) if not m.key.startswith(V)),
                    default=0)
    confidence = tags.get(Tag.CONFIDENCE)
    shortcut = metrics.get(V + "shortcut_best")
    if shortcut is None:  # not labelled yet: the dataset's baseline, logged when the run started
        shortcut = metrics.get(f"{tracking.SHORTCUT_PREFIX}best/{split}")
    return {
        "label": tags.get(Tag.LABEL),
        "detail": tags.get(Tag.DETAIL),
        "phase": tags.get(Tag.PHASE),
        # runs labelled before classifier v3 carry no grokray.determined: read as determined
        "determined": (tags.get(Tag.DETERMINED) or "true").lower() == "true",
        "confidence": _float(confidence if confidence is not None else metrics.get(V + "confidence")),
        "t_memorize": _float(metrics.get(V + "t_memorize")),
        "t_generalize": _float(metrics.get(V + "t_generalize")),
        "delay_ratio": _float(metrics.get(V + "delay_ratio")),
        "t_circuit": _float(metrics.get(V + "t_circuit")),
        "final_train_acc": _float(metrics.get("acc/train")),
        "final_id_acc": _float(metrics.get("acc/test_inferred_id")),
        "final_ood_acc": _float(metrics.get("acc/test_inferred_ood")),
        "final_target_level": _float(metrics.get(V + "final_target_level")),
        "shortcut_best": _float(shortcut),
        "interchange": _float(metrics.get(V + "interchange")),
        "bridge_rate": _float(bridge),
        **{c.column: tags.get(c.tag) for c in REGISTRY.values()},
        "censored": (tags.get(Tag.CENSORED) or "").lower() == "true",
        "steps_run": int(_float(steps)) if math.isfinite(_float(steps)) else 0,
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "status": run.info.status,
        "classifier_version": tags.get(Tag.CLASSIFIER_VERSION),
        "_start": run.info.start_time or 0,
    }


def _finish_frame(rows: list[dict], params: list[str], attrs: dict) -> pd.DataFrame:
    columns = [*params, *COLUMNS]
    rows = sorted(rows, key=lambda r: (r["_start"], r["run_id"]))
    df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)
    for c in FLOAT_COLUMNS:
        df[c] = df[c].astype("float64")
    df["censored"] = df["censored"].astype(bool)
    df["determined"] = df["determined"].astype(bool)
    df["steps_run"] = df["steps_run"].astype("int64")
    for c in ("label", "detail", "phase", *CRITERION_COLUMNS, "classifier_version"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    df.attrs.update(attrs, params=list(params))
    return df


# --------------------------------------------------------------------------- axes and cells

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
    """``(x, y, facets)`` with the defaults of the module docstring filled in.

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


def _fmt(v: Any) -> str:
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
#: one experiment, so a cell shows each graph's own majority (:func:`_aggregate`), or ``--by`` splits them.
GRAPH = "data.seed"
#: Who wins a tie for a cell's phase: the weaker claim first.
PHASE_TIE_ORDER = ("memorization", "confusion", "diverged", "comprehension", "grokking")
#: One letter per Liu et al. phase in the terminal table.
PHASE_LETTERS = {"grokking": "G", "comprehension": "C", "memorization": "M", "confusion": "X", "diverged": "D"}


def _spread(group: pd.DataFrame, col: str) -> tuple[float, float, float]:
    vals = group[col].astype(float).dropna() if col in group else pd.Series(dtype=float)
    if not len(vals):
        return math.nan, math.nan, math.nan
    return float(vals.median()), float(vals.min()), float(vals.max())


def _aggregate(group: pd.DataFrame) -> dict[str, Any]:
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
    Numeric parameters with many values are binned (see the module docstring).
    """
    x, y, facets = resolve_axes(df, x, y, facets, default_y=False)
    keys = [k for k in (*facets, y, x) if k is not None]
    if not keys:
        return pd.DataFrame([_aggregate(df)], columns=list(PIVOT_COLUMNS),
                            index=pd.Index(["all"], name="cell"))
    levels = {k: _levels(df, k) for k in keys}
    grouped: dict[tuple, list[int]] = {}
    for i in range(len(df)):
        grouped.setdefault(tuple(levels[k][0].iloc[i] for k in keys), []).append(i)
    order = {k: {v: j for j, v in enumerate(levels[k][1])} for k in keys}
    found = sorted(grouped, key=lambda t: tuple(order[k][v] for k, v in zip(keys, t)))
    rows = [_aggregate(df.iloc[grouped[c]]) for c in found]
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


def _short(label: str | None) -> str:
    return SHORT.get(label, str(label))


def _cell_word(cell: dict | None) -> str:
    """``true 2/2 G``: majority label, ``*`` if a run is undetermined, runs with the label / runs, Liu
    et al.'s phase; graphs that disagree: ``true|no 2/4 G`` (each graph's majority, in graph order)."""
    if cell is None:
        return "."
    star = "*" if cell.get("n_undetermined", cell["n_censored"]) else ""
    word = _short(cell["label"])
    if cell.get("graphs_agree") is False:
        word = "|".join(_short(v) for v in cell["graph_labels"].values())
    phase = PHASE_LETTERS.get(cell.get("phase"), "")
    return f"{word}{star} {cell['n_label']}/{cell['n']}" + (f" {phase}" if phase else "")


def _grid(df: pd.DataFrame, x: str | None, y: str | None, facets: list[str]
          ) -> tuple[list, list, list[tuple[str, dict[tuple, pd.DataFrame]]]]:
    """``(x_levels, y_levels, [(panel title, {(y level, x level): runs})])``; the levels (and
    bins) come from the whole frame so every panel shares its axes."""
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
    panels = []
    for key in sorted(groups, key=lambda t: tuple(order[f].get(v, -1) for f, v in zip(facets, t))):
        title = ", ".join(f"{f}={_fmt(v)}" for f, v in zip(facets, key))
        panels.append((title, {cell: df.iloc[rows] for cell, rows in groups[key].items()}))
    return x_levels, y_levels, panels


def cells(df: pd.DataFrame, x: str | None = None, y: str | None = None,
          facets: Sequence[str] | None = None) -> pd.DataFrame:
    """What :func:`plot_phase_map` draws: one row per (panel, y level, x level) of the full grid.

    Axes and facets default as in :func:`resolve_axes`. Columns: ``panel`` (facet title,
    ``""`` without facets), ``row`` / ``col`` (0-based, row 0 at the top), ``x_value``,
    ``y_value``, the :func:`pivot` counts, ``color`` (:data:`COLORS` by majority label:
    unlabelled grey, no runs white), ``hatch`` (:data:`HATCH` when a run is censored,
    else ``""``), ``text`` (median ``t_generalize`` in steps, newline, runs with the label
    / runs; ``""`` for an empty cell). ``attrs``: ``x``, ``y``, ``facets``, ``x_levels``,
    ``y_levels``, ``panels``.
    """
    x, y, facets = resolve_axes(df, x, y, facets)
    x_levels, y_levels, panels = _grid(df, x, y, facets)
    empty = df.iloc[0:0]
    rows = []
    for title, groups in panels:
        for r, yv in enumerate(y_levels):
            for c, xv in enumerate(x_levels):
                agg = _aggregate(groups.get((yv, xv), empty))
                if agg["n"] == 0:
                    color, hatch, text = EMPTY_COLOR, "", ""
                else:
                    color = COLORS.get(agg["label"], OTHER_COLOR)
                    hatch = HATCH if agg["n_undetermined"] else ""
                    graphs = ("\n" + "|".join(_short(v) for v in agg["graph_labels"].values())
                              if agg["graphs_agree"] is False else "")
                    phase = f" {PHASE_LETTERS.get(agg['phase'], '')}" if agg["phase"] else ""
                    text = f"{_steps(agg['median_t_generalize'])}\n{agg['n_label']}/{agg['n']}{phase}{graphs}"
                rows.append({"panel": title, "row": r, "col": c, "x_value": xv, "y_value": yv, **agg,
                             "color": color, "hatch": hatch, "text": text})
    out = pd.DataFrame(rows, columns=["panel", "row", "col", "x_value", "y_value", *PIVOT_COLUMNS, "color",
                                      "hatch", "text"])
    out.attrs.update(x=x, y=y, facets=facets, x_levels=x_levels, y_levels=y_levels,
                     panels=[t for t, _ in panels])
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


def _breaks(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken after a comma where it can (a list
    of pairs ``n_layers=2,n_loops=1`` or a title ``a=1, b=2``), else inside a piece.

    >>> _breaks("hop1.k=1,hop1.ratio=0.5,hop2.k=0", 18)
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
    row_lines = [_breaks(lab, ROW_CHARS) if len(lab) > ROW_CHARS else [lab] for lab, _ in rows]
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
        heads = [_breaks(lab, max(c, share, 6)) for c, lab in zip(cell_w, x_labels)]
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
    x_levels, y_levels, panels = _grid(df, x, y, facets)
    corner = f"{y} \\ {x}" if y else (x or "all runs")
    blocks = []
    for title, groups in panels:
        head = [f"[{ln}" if i == 0 else f" {ln}" for i, ln in enumerate(_breaks(title, width - 2))] if title else []
        if head:
            head[-1] += "]"
        if x is None:  # no parameter: one cell
            blocks.append(head + [corner, _cell_word(_aggregate(groups[("", "")]) if groups else None)])
            continue
        rows = [(_fmt(yv) if y else "",
                 [_cell_word(_aggregate(groups[(yv, xv)]) if (yv, xv) in groups else None) for xv in x_levels])
                for yv in y_levels]
        blocks.append(head + _table_block(corner, [_fmt(v) for v in x_levels], rows, width))
    return "\n\n".join("\n".join(b) for b in blocks) + "\n" + TABLE_LEGEND


# --------------------------------------------------------------------------- the picture

#: Tick labels of the picture: at most this many characters a line (x / y), this many lines.
X_LABEL_CHARS, Y_LABEL_CHARS, LABEL_LINES = 16, 26, 4
DPI = 110
_PAD = 0.12          # inches around the figure and between its parts
_PT = 1 / 72         # inches per point
_TICK_PAD, _LABEL_PAD, _TITLE_PAD = 3 * _PT, 4 * _PT, 6 * _PT


def _tick_label(text: str, chars: int, lines: int = LABEL_LINES) -> str:
    """A tick label on at most ``lines`` lines of ``chars`` characters (:func:`_breaks`); what
    does not fit ends in an ellipsis (the CSV and the table hold the whole value)."""
    out = _breaks(text, chars)
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
        else after commas (:func:`_breaks`)."""
        w = self(text, **kw)[0]
        chars, out = len(text), text
        while w > max_w and chars > 8:
            chars = max(8, min(chars - 1, int(chars * max_w / w)))
            out = "\n".join(ln for part in text.split("\n") for ln in
                            (textwrap.wrap(part, chars, break_on_hyphens=False) if sentence else _breaks(part, chars)))
            w = self(out, **kw)[0]
        return out


def phase_map_figure(df: pd.DataFrame, x: str | None = None, y: str | None = None, *,
                     facets: Sequence[str] | None = None, title: str | None = None) -> Any:
    """The matplotlib Figure :func:`plot_phase_map` saves (close it with ``plt.close``).

    The figure is sized from its content: every text is measured with the renderer first, the
    cells are as wide as their longest tick label (wrapped to :data:`X_LABEL_CHARS` /
    :data:`Y_LABEL_CHARS` characters a line, after commas) and as tall as their longest row
    label, and every part (title, panels with their tick and axis labels, the legend) gets its
    own band, so no two texts overlap and none leaves the figure, at any grid size."""
    from matplotlib.patches import Patch, Rectangle

    grid = cells(df, x, y, facets)
    x, y = grid.attrs["x"], grid.attrs["y"]
    x_levels, y_levels, panels = grid.attrs["x_levels"], grid.attrs["y_levels"], grid.attrs["panels"]
    nx, ny, npanel = len(x_levels), len(y_levels), len(panels)
    fig = plt.figure(dpi=DPI)
    size = _Sizes(fig)
    tick, cell_kw = {"fontsize": 8}, {"fontsize": 8, "fontweight": "bold", "linespacing": 1.3}

    # ---- one panel: cells sized by their labels and texts
    xt = [_tick_label(_fmt(v), X_LABEL_CHARS) for v in x_levels] if x else [""] * nx
    yt = [_tick_label(_fmt(v), Y_LABEL_CHARS) for v in y_levels] if y else [""] * ny
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
    ncols = max(1, min(ncols, int(30 // bw)))
    nrows = math.ceil(npanel / ncols)

    # ---- the legend and the title: sized for the figure's width
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
    note = ("cell: median steps to generalize (t_generalize); runs with the majority label / runs, Liu et al.'s "
            "phase (G/C/M/X: grokking, comprehension, memorization, confusion); graphs that disagree: each "
            "graph's label (true|no)")
    heading = size.fit(f"{head}\n{note}", fig_w - 2 * _PAD, sentence=True, fontsize=9)
    head_h = size(heading, fontsize=9)[1]
    fig_h = _PAD + head_h + _PAD + nrows * bh + leg_h + _PAD
    fig.set_size_inches(fig_w, fig_h)

    # ---- drawing, every part in its band
    fig.text(0.5, 1 - _PAD / fig_h, heading, ha="center", va="top", fontsize=9)
    x0 = (fig_w - ncols * bw) / 2
    for k, panel in enumerate(panels):
        r, c = divmod(k, ncols)
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
                dark = rec["color"] in (COLORS["true_grokking"], COLORS["no_grokking"])
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
                   facets: Sequence[str] | None = None, title: str | None = None) -> str:
    """A phase-diagram PNG of :func:`cells`: one coloured square per cell (majority label),
    hatched when censored, with the median ``t_generalize`` and ``k/n`` written in it; one
    panel per facet combination; a legend below. Sized from its content at any grid size
    (:func:`phase_map_figure`). Returns ``path``."""
    fig = phase_map_figure(df, x, y, facets=facets, title=title)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return str(path)


# --------------------------------------------------------------------------- the sweep's artifacts

def log_phase_map(tracking_uri: str, parent_run_id: str, sweep: str, experiment: str | None = None
                  ) -> pd.DataFrame:
    """Compute the sweep's map and log ``phase_map.csv``, ``phase_map.png`` and
    ``phase_map.txt`` (the :func:`format_table` text) on the parent run under ``phase_map/``,
    replacing the previous ones. Returns the map."""
    client = tracking.get_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    df = _sweep_frame(client, parent, sweep, experiment)
    with tempfile.TemporaryDirectory(prefix="grokray-phasemap-") as tmp:
        d = Path(tmp)
        df.to_csv(d / "phase_map.csv", index=False)
        plot_phase_map(df, d / "phase_map.png")
        x, y, _ = resolve_axes(df)
        (d / "phase_map.txt").write_text(format_table(df, x, y) + "\n")
        client.log_artifacts(parent_run_id, str(d), tracking.PHASE_MAP_DIR)
    return df


__all__ = ["phase_map", "pivot", "filter_label", "format_table", "plot_phase_map", "phase_map_figure", "cells",
           "log_phase_map", "resolve_axes", "majority", "params_of", "is_replicate", "LABELS", "TIE_ORDER", "COLORS",
           "COLUMNS"]
