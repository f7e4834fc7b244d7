"""The transfer map: how the new facts of a finetune sweep compose, per source label.

He et al. (2026, section 5) compare grokked and fake-grokked models after fine-tuning on new
facts: grokked ones compose new+old, nobody composes old+new. :func:`transfer_map` reads a
``kind: finetune`` sweep into one row per fine-tuning run (source label and run, swept
values, :func:`~grokray.transfer.transfer_summary`'s numbers); :func:`format_transfer_table`
condenses it per source label; :func:`~grokray.plots.plot_transfer_curves` draws the
curves; :func:`log_transfer_map` puts all three on the sweep's parent run.

Example:
    >>> # df = transfer_map("transfer")                 # grokray.transfer_map("transfer")
    >>> # print(format_transfer_table(df))
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from grokray import tracking
from grokray.contract import (SWEPT_SOURCE_RUN, TRANSFER_CURVES_PNG, TRANSFER_MAP_CSV, TRANSFER_MAP_DIR,
                              TRANSFER_MAP_TXT)
from grokray.plots import plot_transfer_curves
from grokray.transfer import TEST_SPLITS, transfer_summary
from grokray.verdict import CLASSIFIER_VERSION, LABELS, SHORT_LABELS

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

#: Columns of :func:`transfer_map` after the source columns and the swept parameters.
SUMMARY_KEYS = ("t_memorize_new", "t_new_old",
                *(f"{p}_{s}" for s in (*TEST_SPLITS, "new_atomic", "retained", "unretained")
                  for p in ("init", "final", "max")),
                "forget_old_old", "forget_retained", "forget_unretained", *(f"bridge_{s}" for s in TEST_SPLITS))
MAP_COLUMNS = ("source_label", "source_classifier_version", "source_label_stale", "source_run", "source_run_name",
               "source_sweep")
TAIL_COLUMNS = ("steps_run", "status", "run_id", "run_name")
_HISTORY_KEYS = ("acc/new_atomic", "acc/retained_atomic", "acc/unretained_atomic",
                 *(f"acc/{s}" for s in TEST_SPLITS.values()), *(f"lens/{s}/bridge_found" for s in TEST_SPLITS))


def _finetune_runs(client: "MlflowClient", sweep: str) -> tuple[Any, list[Any]]:
    parent = tracking.find_sweep_parent(client, sweep)
    if parent is None:
        raise LookupError(f"no sweep named {sweep!r} at {client.tracking_uri}")
    return parent, tracking.sweep_runs(client, parent, kind=tracking.KIND_FINETUNE)


def _source_version(client: "MlflowClient", run: Any, cache: dict) -> str | None:
    """The classifier version that labelled the run's source: the tag the fine-tuning run recorded,
    else (runs from before that tag) the source run's own tag when the source is in this store."""
    tags = run.data.tags
    if tags.get(tracking.Tag.SOURCE_CLASSIFIER_VERSION):
        return tags[tracking.Tag.SOURCE_CLASSIFIER_VERSION]
    src = tags.get(tracking.Tag.SOURCE_RUN)
    if src and src not in cache:
        try:
            cache[src] = client.get_run(src).data.tags.get(tracking.Tag.CLASSIFIER_VERSION)
        except Exception:  # noqa: BLE001 - the source lives in another store (source.tracking_uri): unknown
            cache[src] = None
    return cache.get(src)


def _row(client: "MlflowClient", run: Any, params: list[str], versions: dict | None = None) -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    Tag = tracking.Tag
    summary = {k: metrics.get(f"{tracking.TRANSFER_PREFIX}{k}") for k in SUMMARY_KEYS}
    if any(v is None for v in summary.values()):  # still running (or killed): from the metric histories
        summary = transfer_summary(tracking.metric_history(client, run.info.run_id, _HISTORY_KEYS))
    swept = tracking.swept_values(run)
    steps = tags.get(Tag.STEPS_RUN)
    version = _source_version(client, run, {} if versions is None else versions)
    # a label from an older (or unknown) classifier than today's may not mean what today's words do
    row = {"source_label": tags.get(Tag.SOURCE_LABEL) or None, "source_classifier_version": version,
           "source_label_stale": version != CLASSIFIER_VERSION, "source_run": tags.get(Tag.SOURCE_RUN),
           "source_run_name": tags.get(Tag.SOURCE_RUN_NAME), "source_sweep": tags.get(Tag.SOURCE_SWEEP) or None}
    row.update({k: swept.get(k) if not isinstance(swept.get(k), (dict, list)) else json.dumps(swept.get(k))
                for k in params})
    row.update({k: float(v) if v is not None else math.nan for k, v in summary.items()})
    row.update(steps_run=int(steps) if steps is not None and steps.isdigit() else int(max(
        (h["step"] for h in tracking.metric_history(client, run.info.run_id, ["acc/train"])), default=0)),
        status=run.info.status, run_id=run.info.run_id, run_name=run.info.run_name or "")
    return row


def transfer_map(sweep: str, tracking_uri: str | None = None) -> "pd.DataFrame":
    """One row per finetune run of ``sweep``: source label / run, the swept values (besides
    ``source_run``), :func:`transfer_summary`'s numbers, ``steps_run``, ``status``, ``run_id``.

    Finished runs are read from their ``transfer/*`` metrics (one search for all runs);
    runs without them (still running) from their metric histories.
    ``df.attrs``: ``sweep``, ``params``, ``parent_run_id``, ``tracking_uri``.

    Raises:
        LookupError: no sweep of that name at the tracking URI.
    """
    import pandas as pd

    client = tracking.existing_client(tracking_uri)
    parent, runs = _finetune_runs(client, sweep)
    params = [k for k in tracking.swept_keys(parent) if k != SWEPT_SOURCE_RUN]
    versions: dict = {}
    rows = [_row(client, r, params, versions) for r in runs]
    columns = [*MAP_COLUMNS, *params, *SUMMARY_KEYS, *TAIL_COLUMNS]
    df = pd.DataFrame(rows, columns=columns)
    for c in SUMMARY_KEYS:
        df[c] = df[c].astype("float64")
    df["steps_run"] = df["steps_run"].astype("int64")
    df.attrs.update(sweep=sweep, params=params, parent_run_id=parent.info.run_id, tracking_uri=client.tracking_uri)
    return df


def _label_order(labels: Iterable[Any]) -> list[Any]:
    present = list(dict.fromkeys(None if (v is None or v != v) else v for v in labels))
    return [lab for lab in LABELS if lab in present] + sorted(str(x) for x in present
                                                             if x not in LABELS and x is not None) + (
        [None] if None in present else [])


def _med(values: "pd.Series") -> float:
    v = values.astype(float).dropna()
    return float(v.median()) if len(v) else math.nan


TABLE_LEGEND = ("per source label: runs; memorized = runs whose new-fact accuracy reached 0.99 (sustained) / runs, "
                "t_mem = median first step; accuracy columns = median over runs of the final exact match (median of "
                "a run's last 5 evaluations) on the test compositions (hop 1 + hop 2: new = learned in fine-tuning, "
                "old = retained); forget = median drop from step 0")


def format_transfer_table(df: "pd.DataFrame") -> str:
    """Per source label: runs, memorized k/n and median steps to memorize the new facts, median
    final accuracy per composition type (and the lens bridge rate on old+new), median forgetting."""
    def f(v: float) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"

    def steps(v: float) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.0f}"

    header = ["source", "runs", "memorized", "t_mem", "new", "new+old", "old+new", "new+new", "old+old",
              "bridge old+new", "forget old+old", "forget retained"]
    body = []
    for lab in _label_order(df["source_label"]) if len(df) else []:
        g = df[df["source_label"].isna()] if lab is None else df[df["source_label"] == lab]
        mem = g["t_memorize_new"].astype(float)
        body.append([SHORT_LABELS.get(lab, str(lab)), str(len(g)), f"{int(mem.notna().sum())}/{len(g)}", steps(_med(mem)),
                     f(_med(g["final_new_atomic"])), f(_med(g["final_new_old"])), f(_med(g["final_old_new"])),
                     f(_med(g["final_new_new"])), f(_med(g["final_old_old"])), f(_med(g["bridge_old_new"])),
                     f(_med(g["forget_old_old"])), f(_med(g["forget_retained"]))])
    if not body:
        body = [["(no finetune runs)"] + [""] * (len(header) - 1)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip() for r in [header, *body]]
    return "\n".join(lines) + "\n" + TABLE_LEGEND + stale_warning(df)


def stale_warning(df: "pd.DataFrame") -> str:
    """A line naming the sources labelled by an older (or unknown) classifier than today's, whose
    labels the table groups by; empty when every source's label is today's."""
    if not len(df) or "source_label_stale" not in df:
        return ""
    stale = df[df["source_label_stale"].astype(bool)].drop_duplicates("source_run")
    if stale.empty:
        return ""
    versions = sorted({str(v) if isinstance(v, str) else "unknown" for v in stale["source_classifier_version"]})
    return (f"\nwarning: {len(stale)} source(s) labelled by classifier {', '.join(versions)}, not today's v{CLASSIFIER_VERSION}: "
            "their labels may not mean what today's do (grokray classify --experiment EXP --force relabels them)")


def transfer_histories(df: "pd.DataFrame", tracking_uri: str | None = None) -> dict[Any, list[list[dict]]]:
    """``{source label: [history, ...]}`` for the runs of a :func:`transfer_map` frame
    (each run's ``history.json``; its metric histories while it runs)."""
    client = tracking.existing_client(tracking_uri or df.attrs.get("tracking_uri"))
    out: dict[Any, list[list[dict]]] = {}
    for rec in df.to_dict("records"):
        lab = rec["source_label"] if isinstance(rec["source_label"], str) else None
        out.setdefault(lab, []).append(tracking.load_history(client, rec["run_id"]))
    return out


def log_transfer_map(tracking_uri: str, parent_run_id: str, sweep: str, experiment: str | None = None
                     ) -> "pd.DataFrame":
    """``transfer_map/`` on the sweep's parent run: CSV, table text and the curves PNG
    (same signature as :func:`grokray.phasemap.log_phase_map`, for the driver's refresher)."""
    df = transfer_map(sweep, tracking_uri)
    client = tracking.get_client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="grokray-transfermap-") as tmp:
        d = Path(tmp)
        df.to_csv(d / TRANSFER_MAP_CSV, index=False)
        (d / TRANSFER_MAP_TXT).write_text(format_transfer_table(df) + "\n")
        done = df[df["status"] == "FINISHED"]
        done.attrs = dict(df.attrs)
        plot_transfer_curves(transfer_histories(done, tracking_uri), d / TRANSFER_CURVES_PNG,
                             title=f"transfer: {sweep}")
        client.log_artifacts(parent_run_id, str(d), TRANSFER_MAP_DIR)
    return df
