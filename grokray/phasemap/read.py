"""Reading a sweep (or an MLflow experiment) into the phase map's frame: one row per trial run.

One experiment listing and one run search resolve the name, one paged run search fetches
every trial run (a thousand runs: one request); nothing is requested per run. See
:mod:`grokray.phasemap` for what the columns mean to the views.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd

from grokray import tracking
from grokray.contract import VERDICT_PREFIX, Tag, TrialParam, shortcut_metric
from grokray.criteria import REGISTRY
from grokray.sweep.naming import value_label

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

#: One label column per criterion of :data:`grokray.criteria.REGISTRY` (``label_interchange``, ``label_lens``).
CRITERION_COLUMNS = tuple(c.column for c in REGISTRY.values())
#: Columns after the parameters, in order.
COLUMNS = ("label", "detail", "phase", "determined", "confidence", "t_memorize", "t_generalize", "delay_ratio",
           "t_circuit", "final_train_acc", "final_id_acc", "final_ood_acc", "final_target_level", "shortcut_best",
           "interchange", "bridge_rate", *CRITERION_COLUMNS, "censored", "steps_run", "run_id", "run_name", "status",
           "classifier_version", "search_reason")
#: Float columns after the parameters.
FLOAT_COLUMNS = ("confidence", "t_memorize", "t_generalize", "delay_ratio", "t_circuit", "final_train_acc",
                 "final_id_acc", "final_ood_acc", "final_target_level", "shortcut_best", "interchange", "bridge_rate")
#: Params logged on a trial run that are not trial-config knobs.
NOT_CONFIG = (TrialParam.N_PARAMS,)

V = VERDICT_PREFIX


def phase_map(sweep_or_experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """One row per trial run of a sweep (or of an MLflow experiment); see :mod:`grokray.phasemap`.

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
        return sweep_frame(client, parent, sweep_or_experiment, exp_name)
    exp = next((e for e in experiments if e.name == sweep_or_experiment), None)
    if exp is None:
        sweeps = tracking.sweep_names(client, [e.experiment_id for e in experiments])
        names = [e.name for e in experiments if e.name != "Default"]
        raise LookupError(f"no sweep or experiment named {sweep_or_experiment!r} at {client.tracking_uri}; "
                          f"sweeps there: {', '.join(sweeps) or 'none'}; experiments: {', '.join(names) or 'none'}"
                          f" (another store? {tracking.POINT_ELSEWHERE})")
    return _experiment_frame(tracking.experiment_runs(client, exp.experiment_id), exp.name, client.tracking_uri)


def sweep_frame(client: "MlflowClient", parent: "Run", sweep: str, experiment: str | None) -> pd.DataFrame:
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
        shortcut = metrics.get(shortcut_metric("best", split))
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
        "search_reason": tags.get(Tag.SEARCH_REASON),    # method boundary: why the search chose the point
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
    for c in ("label", "detail", "phase", *CRITERION_COLUMNS, "classifier_version", "search_reason"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    df.attrs.update(attrs, params=list(params))
    return df
