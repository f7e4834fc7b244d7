"""Read a finished (or partly finished) phase-map sweep as a researcher would.

What it measures, from the store alone (no training):

* **cells**: per (phi, weight decay, augmentation), each graph's label, detail and Liu et al.'s
  phase, t_memorize, t_generalize (OOD, the verdict's), the delay, and the time ID accuracy first
  held 0.5 and 0.9 (``t_id50``, ``t_id90``: Wang et al.'s in-distribution generalization);
* **scaling fits** of log time against log weight decay (Omnigrok predicts a slope of -1:
  t ~ 1/(lr wd), the lr schedule fixed here) and against log phi (Wang et al.: generalization
  speeds up with phi; no functional form published, so the exponent is descriptive), pooled
  over groups with a free intercept per group (every other axis and the graph held fixed), with
  the slope's standard error and the number of groups and points it rests on;
* **graph disagreements**: cells whose two graphs got different labels, with both graphs' numbers;
* **what the stop rule saved**: trial-steps run against every trial run to its budget, by stop
  reason.

Usage::

    python -m experiments.phase_map_analysis --tracking-uri sqlite:////work/store/mlflow.db \\
        [--sweep phase-map] [--out experiments/results/phase_map.json] [--png docs/phase-map/scaling.png] \\
        [--markdown docs/phase-map/cells.md] [--audit phase-map-audit]

A reader never creates a store: a wrong path is one line saying where it looked (exit 2).
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.store_args import save_figure, store_parser

PHI, WD, AUG, GRAPH, SEED = "data.phi", "train.weight_decay", "data.augmentation", "data.seed", "seed"
ID_ACC, TRAIN_ACC = "acc/test_inferred_id", "acc/train"


# ---------------------------------------------------------------------------------------------
# the fits (pure: tested in tests/unit/test_phase_map_analysis.py)

def grouped_loglog_fit(frame: pd.DataFrame, x: str, y: str, groups: list[str]) -> dict:
    """Slope of log(y) on log(x) with a free intercept per group (a fixed-effects fit).

    Only groups with at least two distinct x values carry information about the slope.

    >>> df = pd.DataFrame({"wd": [1, 2, 4, 1, 2], "t": [800, 400, 200, 1600, 800], "g": [0, 0, 0, 1, 1]})
    >>> fit = grouped_loglog_fit(df, "wd", "t", ["g"])
    >>> round(fit["slope"], 6), fit["n_points"], fit["n_groups"]
    (-1.0, 5, 2)
    """
    d = frame[[x, y, *groups]].dropna()
    d = d[(d[x] > 0) & (d[y] > 0)]
    keyed = d.groupby(groups, dropna=False) if groups else [((), d)]
    xs, ys = [], []
    used = []
    for key, g in keyed:
        if g[x].nunique() < 2:
            continue
        lx, ly = np.log(g[x].to_numpy(float)), np.log(g[y].to_numpy(float))
        xs.append(lx - lx.mean())
        ys.append(ly - ly.mean())
        used.append(key if isinstance(key, tuple) else (key,))
    out = {"x": x, "y": y, "groups_by": groups, "n_groups": len(used), "n_points": int(sum(len(v) for v in xs)),
           "slope": None, "se": None, "groups": [list(map(_plain, k)) for k in used]}
    if not xs:
        return out
    cx, cy = np.concatenate(xs), np.concatenate(ys)
    sxx = float(cx @ cx)
    slope = float(cx @ cy) / sxx
    dof = len(cx) - len(xs) - 1
    if dof > 0:
        resid = cy - slope * cx
        out["se"] = float(math.sqrt(float(resid @ resid) / dof / sxx))
    out["slope"] = slope
    return out


def stop_savings(runs: pd.DataFrame, budget: int) -> dict:
    """Trial-steps run against every trial run to ``budget``, in total and by stop reason.

    >>> df = pd.DataFrame({"steps_run": [100, 50, 100], "stop_reason": ["max_steps", "cleanup", "cleanup"]})
    >>> stop_savings(df, 100)["saved_fraction"]
    0.1667
    """
    steps = runs["steps_run"].astype(float)
    full = budget * len(runs)
    by = {}
    for reason, g in runs.groupby(runs["stop_reason"].fillna("unknown")):
        by[str(reason)] = {"trials": int(len(g)), "steps_run": int(g["steps_run"].sum()),
                           "steps_saved": int(budget * len(g) - g["steps_run"].sum())}
    return {"budget_per_trial": budget, "trials": int(len(runs)), "steps_run": int(steps.sum()),
            "steps_if_all_ran_to_budget": int(full),
            "saved_fraction": round(1 - float(steps.sum()) / full, 4) if full else None, "by_stop_reason": by}


def audit_labels(map_runs: pd.DataFrame, audit_runs: pd.DataFrame, keys: list[str]) -> dict:
    """The stop-rule audit: each audit run (the same cell run to its budget, no stop rule) beside the
    map's run of that cell; a label or detail that differs is a stop that decided it.

    >>> m = pd.DataFrame({"wd": [1.0, 3.0], "label": ["true_grokking", "no_grokking"], "detail": ["grokking", "confusion"],
    ...                   "steps_run": [9000, 6000]})
    >>> a = m.assign(steps_run=[12000, 12000], detail=["grokking", "memorization"])
    >>> r = audit_labels(m, a, ["wd"])
    >>> r["n_compared"], r["labels_changed"], r["details_changed"]
    (2, 0, 1)
    """
    cmp = []
    for _, a in audit_runs.iterrows():
        hit = map_runs
        for k in keys:
            hit = hit[[_same(v) == _same(a[k]) for v in hit[k]]]
        if hit.empty or pd.isna(a.get("label")):
            continue
        m = hit.iloc[0]
        cmp.append({"cell": {k: _plain(a[k]) for k in keys},
                    "stopped": {"label": m["label"], "detail": m["detail"], "steps_run": _plain(m["steps_run"])},
                    "to_budget": {"label": a["label"], "detail": a["detail"], "steps_run": _plain(a["steps_run"])},
                    "label_changed": m["label"] != a["label"], "detail_changed": m["detail"] != a["detail"]})
    return {"n_compared": len(cmp), "labels_changed": sum(c["label_changed"] for c in cmp),
            "details_changed": sum(c["detail_changed"] for c in cmp), "cells": cmp}


def _same(v) -> object:
    """A value as a cell key: numbers compared as numbers ("1" == 1.0), anything else as text."""
    try:
        return round(float(v), 9)
    except (TypeError, ValueError):
        return str(v)


def graph_disagreements(runs: pd.DataFrame, cell: list[str]) -> list[dict]:
    """Cells whose graphs (``data.seed``) got different labels, each graph's numbers beside."""
    keep = ["label", "detail", "phase", "t_memorize", "t_generalize", "final_id_acc", "final_ood_acc",
            "shortcut_best", "interchange"]
    out = []
    for key, g in runs.groupby(cell):
        labels = g.groupby(GRAPH)["label"].agg(lambda s: "|".join(sorted(set(s.dropna()))))
        if labels.nunique() > 1:
            out.append({"cell": dict(zip(cell, map(_plain, key))),
                        "graphs": {str(_plain(gs)): {k: _plain(r[k]) for k in keep}
                                   for gs, r in g.set_index(GRAPH)[keep].iterrows()}})
    return out


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(v) else round(float(v), 4)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


# ---------------------------------------------------------------------------------------------
# reading the store

def id_milestones(client, run_id: str, sustain: int = 2) -> tuple[int | None, int | None]:
    """First step ID accuracy held >= 0.5 and >= 0.9 for ``sustain`` evaluations (None: never)."""
    from grokray.history import first_sustained
    hist = client.get_metric_history(run_id, ID_ACC)
    if not hist:
        return None, None
    hist = sorted(hist, key=lambda m: m.step)
    steps = np.array([m.step for m in hist])
    vals = np.array([m.value for m in hist])
    return first_sustained(steps, vals, 0.5, sustain), first_sustained(steps, vals, 0.9, sustain)


def active_seconds(timestamps_ms: list[int], gap_s: float = 600.0) -> float:
    """Seconds a run trained: the sum of the gaps between its consecutive evaluations' timestamps,
    leaving out gaps over ``gap_s`` (the sweep was interrupted there, between sessions).

    >>> active_seconds([0, 60_000, 120_000, 7_320_000, 7_380_000])
    180.0
    """
    t = sorted(timestamps_ms)
    return float(sum(b - a for a, b in zip(t, t[1:]) if b - a <= gap_s * 1000) / 1000.0)


def load(tracking_uri: str, sweep: str) -> tuple[pd.DataFrame, int]:
    import grokray
    from grokray import tracking
    runs = grokray.phase_map(sweep, tracking_uri=tracking_uri)
    client = tracking.existing_client(tracking_uri)
    t50, t90, reasons, seconds, ended = [], [], [], [], []
    for rid in runs["run_id"]:
        a, b = id_milestones(client, rid)
        t50.append(a)
        t90.append(b)
        run = client.get_run(rid)
        reasons.append(run.data.tags.get(tracking.Tag.STOP_REASON))
        ended.append(run.info.end_time)      # ms since the epoch (None while it runs): the order trials finished in
        seconds.append(active_seconds([m.timestamp for m in client.get_metric_history(rid, TRAIN_ACC)]))
    runs = runs.assign(t_id50=t50, t_id90=t90, stop_reason=reasons, train_seconds=seconds, end_time=ended)
    budget = int(runs.attrs.get("max_steps") or runs["steps_run"].max())
    return runs, budget


def with_params(tracking_uri: str, runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Add the run params ``keys`` a sweep held constant (an audit's single graph) as columns."""
    from grokray import tracking
    client = tracking.existing_client(tracking_uri)
    params = [client.get_run(rid).data.params for rid in runs["run_id"]]
    return runs.assign(**{k: [p.get(k) for p in params] for k in keys})


def analyse(runs: pd.DataFrame, budget: int) -> dict:
    labelled = runs[runs["label"].notna()].copy()
    cell = [c for c in (PHI, WD, AUG) if c in labelled]
    cols = ["run_id", *cell, GRAPH, *([SEED] if SEED in labelled else []), "label", "detail", "phase", "determined",
            "t_memorize", "t_generalize", "delay_ratio", "t_circuit", "t_id50", "t_id90", "final_id_acc",
            "final_ood_acc", "shortcut_best", "interchange", "steps_run", "stop_reason"]
    rows = [{k: _plain(r[k]) for k in cols if k in r} for _, r in labelled.sort_values([*cell, GRAPH]).iterrows()]
    fits = {
        "ood_t_generalize_vs_weight_decay": grouped_loglog_fit(labelled, WD, "t_generalize", [PHI, AUG, GRAPH]),
        "ood_t_generalize_vs_phi": grouped_loglog_fit(labelled, PHI, "t_generalize", [WD, AUG, GRAPH]),
        "id_t50_vs_weight_decay": grouped_loglog_fit(labelled, WD, "t_id50", [PHI, AUG, GRAPH]),
        "id_t50_vs_phi": grouped_loglog_fit(labelled, PHI, "t_id50", [WD, AUG, GRAPH]),
        "id_t90_vs_weight_decay": grouped_loglog_fit(labelled, WD, "t_id90", [PHI, AUG, GRAPH]),
        "id_t90_vs_phi": grouped_loglog_fit(labelled, PHI, "t_id90", [WD, AUG, GRAPH]),
    }
    fits["predictions"] = {"omnigrok_weight_decay_slope": -1.0,
                           "wang_phi": "negative (generalization speeds up with phi); no exponent published"}
    # Omnigrok's 1/(lr wd) is a law of runs that fit their training set: a run that never memorized
    # (confusion, or generalizing without memorizing at wd 3.0) is slow for another reason, and
    # pooled with the rest it bends a power law into a U. The same fits on the runs that memorized:
    memorized = labelled[labelled["t_memorize"].notna()]
    fits["memorized_only"] = {
        "ood_t_generalize_vs_weight_decay": grouped_loglog_fit(memorized, WD, "t_generalize", [PHI, AUG, GRAPH]),
        "id_t50_vs_weight_decay": grouped_loglog_fit(memorized, WD, "t_id50", [PHI, AUG, GRAPH]),
        "id_t90_vs_weight_decay": grouped_loglog_fit(memorized, WD, "t_id90", [PHI, AUG, GRAPH]),
        "ood_t_generalize_vs_phi": grouped_loglog_fit(memorized, PHI, "t_generalize", [WD, AUG, GRAPH]),
        "id_t90_vs_phi": grouped_loglog_fit(memorized, PHI, "t_id90", [WD, AUG, GRAPH]),
    }
    counts = labelled.groupby(["label", "detail"]).size().reset_index(name="n")
    return {
        "trials_labelled": int(len(labelled)), "trials_in_store": int(len(runs)),
        "graphs": sorted(map(int, labelled[GRAPH].dropna().unique())) if GRAPH in labelled else [],
        "classifier_versions": sorted(set(map(str, labelled["classifier_version"].dropna()))),
        "labels": [{"label": r.label, "detail": r.detail, "n": int(r.n)} for r in counts.itertuples()],
        "fits": fits, "graph_disagreements": graph_disagreements(labelled, cell),
        "stop_rule": stop_savings(labelled, budget), "cost": cost(labelled), "rows": rows,
    }


def cost(runs: pd.DataFrame) -> dict:
    """What the map cost: core-hours of training (one core per trial: the sum of the runs' active
    seconds, :func:`active_seconds`), the median minutes a trial, by weight decay.

    >>> df = pd.DataFrame({"train_seconds": [300.0, 240.0, 60.0], WD: [0.1, 0.1, 3.0]})
    >>> c = cost(df)
    >>> c["core_hours"], c["median_trial_minutes"], c["by_weight_decay"]["0.1"]["median_trial_minutes"]
    (0.1667, 4.0, 4.5)
    """
    sec = runs["train_seconds"].astype(float) if "train_seconds" in runs else pd.Series(dtype=float)
    by = {}
    if WD in runs:
        for wd, g in runs.groupby(WD):
            by[f"{wd:g}"] = {"trials": int(len(g)), "core_hours": round(float(g["train_seconds"].sum()) / 3600, 4),
                             "median_trial_minutes": round(float(g["train_seconds"].median()) / 60, 2)}
    return {"core_hours": round(float(sec.sum()) / 3600, 4), "trials": int(len(sec)),
            "median_trial_minutes": round(float(sec.median()) / 60, 2) if len(sec) else None,
            "by_weight_decay": by,
            "note": "training only (evaluations included), one core per trial, from the runs' metric timestamps; "
                    "gaps over 10 minutes (interruptions) left out; the classifier's evidence is not counted"}


_SHORT = {"true_grokking": "**true**", "fake_grokking": "**fake**", "no_grokking": "no"}


def _cell_text(r: dict) -> str:
    """One run in a cell: label (detail), Liu et al.'s phase letter, end accuracies, and the times.

    >>> _cell_text({"label": "no_grokking", "detail": "comprehension", "phase": "comprehension", "determined": True,
    ...             "final_id_acc": 0.92, "final_ood_acc": 0.84, "t_memorize": 2371.0, "t_generalize": 4642.0,
    ...             "delay_ratio": 1.958, "interchange": 0.98})
    'no (comprehension) C, ID 0.92 / OOD 0.84, t_gen 4,642 (1.96x), ichg 0.98'
    """
    phase = (r.get("phase") or "?")[0].upper() if r.get("phase") != "confusion" else "X"
    out = f"{_SHORT.get(r.get('label'), r.get('label'))}{'' if r.get('determined', True) else '*'} ({r.get('detail')}) {phase}"
    accs = [f"{name} {r[k]:.2f}" for name, k in (("ID", "final_id_acc"), ("OOD", "final_ood_acc")) if r.get(k) is not None]
    if accs:
        out += ", " + " / ".join(accs)
    if r.get("t_generalize") is not None:
        out += f", t_gen {r['t_generalize']:,.0f}"
        if r.get("delay_ratio") is not None:
            out += f" ({r['delay_ratio']:.2f}x)"
    elif r.get("t_memorize") is not None:
        out += f", t_mem {r['t_memorize']:,.0f}"
    if r.get("interchange") is not None:
        out += f", ichg {r['interchange']:.2f}"
    return out


def cells_markdown(rows: list[dict]) -> str:
    """The map as markdown: one table per weight decay, phi down, augmentation across, each cell
    every graph's run (``g0: ...<br>g1: ...``), from :func:`analyse`'s rows (nothing typed by hand).

    >>> rows = [{"train.weight_decay": 1.0, "data.phi": 7.2, "data.augmentation": "both_full", "data.seed": g,
    ...          "label": "no_grokking", "detail": "censored", "phase": "memorization", "determined": False,
    ...          "t_memorize": 909.0} for g in (0, 1)]
    >>> print(cells_markdown(rows).splitlines()[-1])
    | 7.2 | g0: no* (censored) M, t_mem 909<br>g1: no* (censored) M, t_mem 909 |
    """
    def key(v):
        return _same(v)
    wds = sorted({key(r[WD]) for r in rows})
    phis = sorted({key(r[PHI]) for r in rows})
    augs = list(dict.fromkeys(r[AUG] for r in rows))
    out = ["<!-- written by python -m experiments.phase_map_analysis --markdown; do not edit by hand -->", "",
           "Each cell: every graph's run: label (detail), Liu et al.'s phase (G grokking, C comprehension, "
           "M memorization, X confusion), end ID / OOD accuracy, OOD t_generalize with the delay "
           "t_generalize / t_memorize (else t_memorize), interchange; `*` undetermined; `-` not labelled yet.", ""]
    for wd in wds:
        out += [f"### weight decay {wd:g}", "", "| phi | " + " | ".join(augs) + " |", "|---|" + "---|" * len(augs)]
        for phi in phis:
            cells = []
            for aug in augs:
                here = sorted((r for r in rows if key(r[WD]) == wd and key(r[PHI]) == phi and r[AUG] == aug),
                              key=lambda r: (r.get(GRAPH) or 0, r.get(SEED) or 0))
                cells.append("<br>".join(f"g{r.get(GRAPH)}: {_cell_text(r)}" for r in here) or "-")
            out.append(f"| {phi:g} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def representatives(rows: list[dict]) -> list[dict]:
    """One run per (label, Liu et al. phase) the map has: the one of median ``t_generalize`` (else
    the first) among graph 0's, by weight decay, phi, augmentation: the cells whose curves the doc shows.

    >>> rows = [{"label": "no_grokking", "phase": "memorization", "data.seed": 0, "train.weight_decay": w,
    ...          "data.phi": 3.6, "data.augmentation": "none", "t_generalize": None} for w in (0.3, 0.1)]
    >>> [r["train.weight_decay"] for r in representatives(rows)]
    [0.1]
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("label"), r.get("phase")), []).append(r)
    out = []
    for key in sorted(groups, key=str):
        g = sorted(groups[key], key=lambda r: (r.get(GRAPH) or 0, r.get(WD), r.get(PHI), str(r.get(AUG))))
        g0 = [r for r in g if (r.get(GRAPH) or 0) == g[0].get(GRAPH)]
        timed = sorted((r for r in g0 if r.get("t_generalize") is not None), key=lambda r: r["t_generalize"])
        out.append(timed[(len(timed) - 1) // 2] if timed else g0[0])
    return out


def copy_curves(tracking_uri: str, picks: list[dict], folder: Path) -> list[str]:
    """Each picked run's ``curves.png`` (drawn by the classifier) into ``folder`` as
    ``wd<wd>-phi<phi>-<aug>-g<graph>_curves.png``; returns the names written."""
    import shutil
    import tempfile

    from grokray import tracking
    from grokray.contract import CURVES_PNG
    client = tracking.existing_client(tracking_uri)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for r in picks:
        name = f"wd{r[WD]:g}-phi{r[PHI]:g}-{r[AUG]}-g{r.get(GRAPH) or 0}_curves.png"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                got = client.download_artifacts(r["run_id"], CURVES_PNG, tmp)
            except Exception:   # noqa: BLE001 - a run without the picture: say so, copy the others
                print(f"  no {CURVES_PNG} on {r['run_id']}", file=sys.stderr)
                continue
            shutil.copy(got, folder / name)
        names.append(name)
    return names


def plot_scaling(runs: pd.DataFrame, fits: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    d = runs[runs["label"].notna()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 6.4))
    panels = [(WD, "weight decay", "ood_t_generalize_vs_weight_decay", "id_t90_vs_weight_decay"),
              (PHI, "phi (inferred / atomic)", "ood_t_generalize_vs_phi", "id_t90_vs_phi")]
    for ax, (x, xlabel, ood_fit, id_fit) in zip(axes, panels):
        for col, name, marker, fit, color in (("t_generalize", "OOD t_generalize", "o", ood_fit, "C0"),
                                              ("t_id90", "ID acc held 0.9", "s", id_fit, "C1")):
            s = d[[x, col, "t_memorize"]].dropna(subset=[x, col])
            mem = s["t_memorize"].notna()
            ax.scatter(s[x][mem], s[col][mem], marker=marker, alpha=0.6, color=color,
                       label=f"{name} ({int(mem.sum())} runs that memorized)")
            if (~mem).any():     # never memorized (confusion, or generalized without fitting train)
                ax.scatter(s[x][~mem], s[col][~mem], marker=marker, facecolors="none", edgecolors=color,
                           label=f"  ({int((~mem).sum())} that never memorized)")
            for label, f in (("all", fits[fit]), ("memorized", fits["memorized_only"].get(fit, {}))):
                if f.get("slope") is not None:
                    se = f"±{f['se']:.2f}" if f["se"] is not None else ""
                    ax.plot([], [], " ", label=f"  slope {f['slope']:.2f}{se} ({label}: {f['n_points']} runs, "
                                               f"{f['n_groups']} groups)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("step")
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)   # below: no point hidden
    axes[0].set_title("time vs weight decay (Omnigrok: slope -1)")
    axes[1].set_title("time vs phi (Wang et al.: faster with phi)")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = store_parser(__doc__, "phase-map", "experiments/results/phase_map.json", "docs/phase-map/scaling.png")
    ap.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                    help="also write the map's cells as markdown tables (e.g. docs/phase-map/cells.md)")
    ap.add_argument("--curves", type=Path, default=None, metavar="DIR",
                    help="also copy the curves of one run per (label, phase) into DIR (e.g. docs/phase-map)")
    ap.add_argument("--audit", metavar="SWEEP", default=None,
                    help="a sweep of the map's cells run to budget without a stop rule (sweeps/phase-map-audit.yaml)")
    a = ap.parse_args(argv)
    from grokray.config import ConfigError
    try:
        runs, budget = load(a.tracking_uri, a.sweep)
    except ConfigError as e:
        print(f"phase_map_analysis: {e}", file=sys.stderr)
        return 2
    missing = [k for k in (WD, PHI, AUG) if k not in runs.columns]
    if (a.markdown or a.curves) and missing:
        print(f"phase_map_analysis: --markdown / --curves lay the map out by {WD}, {PHI} and {AUG}; "
              f"{a.sweep!r} does not vary {', '.join(missing)}", file=sys.stderr)
        return 2
    result = analyse(runs, budget)
    if a.audit:
        try:
            audit, _ = load(a.tracking_uri, a.audit)
        except (ConfigError, LookupError) as e:
            print(f"phase_map_analysis: --audit {a.audit}: {e}", file=sys.stderr)
            return 2
        audit = with_params(a.tracking_uri, audit, [k for k in runs.attrs.get("params", []) if k not in audit])
        keys = [k for k in runs.attrs.get("params", []) if k in audit]
        result["stop_rule"]["audit"] = {"sweep": a.audit, **audit_labels(runs[runs["label"].notna()], audit, keys)}
    result.update(sweep=a.sweep, tracking_uri=a.tracking_uri,
                  measured=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    plot_scaling(runs, result["fits"], a.png)
    if a.curves:
        result["representatives"] = copy_curves(a.tracking_uri, representatives(result["rows"]), a.curves)
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(cells_markdown(result["rows"]) + "\n")
    f = result["fits"]
    print(f"{result['trials_labelled']} labelled of {result['trials_in_store']} runs in {a.sweep!r}; graphs {result['graphs']}")
    for prefix, fits in (("", f), ("memorized: ", f["memorized_only"])):
        for name, fit in fits.items():
            if isinstance(fit, dict) and "slope" in fit:
                s = "n/a" if fit["slope"] is None else f"{fit['slope']:.3f}" + (f" ± {fit['se']:.3f}" if fit["se"] else "")
                print(f"  {prefix + name:46s} slope {s:16s} ({fit['n_points']} runs in {fit['n_groups']} groups)")
    print(f"  graph disagreements: {len(result['graph_disagreements'])} cells")
    st = result["stop_rule"]
    c = result["cost"]
    print(f"  cost: {c['core_hours']:.2f} core-hours of training over {c['trials']} trials "
          f"(median {c['median_trial_minutes']} min a trial)")
    print(f"  stop rule: {st['steps_run']:,} of {st['steps_if_all_ran_to_budget']:,} trial-steps run "
          f"({100 * st['saved_fraction']:.1f}% saved)")
    if "audit" in st:
        au = st["audit"]
        print(f"  audit ({au['sweep']}): {au['n_compared']} cells run to budget; labels changed {au['labels_changed']}, "
              f"details changed {au['details_changed']}")
    print(f"wrote {a.out} and {a.png}" + (f" and {a.markdown}" if a.markdown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
