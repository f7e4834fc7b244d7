"""Past the stop (issue 19, item 4): do generalized runs hold when trained well beyond the stop rule?

Reads a finished ``sweeps/past-the-stop.yaml`` (the dose study's k2 = 0 and k2 = 7 cells, looped
1x2 and non-shared 2x1, on two graphs x two initialisations, run to 3x their t_generalize, at most
30,000 steps) from its store; no training. Per run:

* ``t_memorize``, ``t_generalize`` and the label of the whole run (the store's verdict);
* OOD accuracy (smoothed as the verdict smooths it) at ``t_generalize``, where the default stop
  rule would have stopped the run (:func:`default_stop`: ``cleanup_window`` 1.0, i.e. 2x
  ``t_generalize``), at the end; its maximum, and its minimum after ``t_generalize`` (a collapse
  shows there);
* the bridge curves (``circuit/interchange/ood``, ``circuit/carry/ood``, 128 fixed queries) at
  the same points;
* the slope of OOD accuracy over the last third of the run, per 1,000 steps (:func:`late_slope`):
  a level near 0.5 with a slope near 0 is a plateau, a clearly positive slope a point on a rise;
* the label the default stop rule's prefix would have got (:func:`prefix_verdict`: the verdict on
  the history up to that stop, with the run's end-of-run evidence) beside the whole run's: a
  label that differs is one the stopped prefix decided.

Usage::

    python -m experiments.past_the_stop --tracking-uri sqlite:////work/store-pts/mlflow.db \\
        [--sweep past-the-stop] [--out experiments/results/past_the_stop.json] \\
        [--png docs/calibration/past-the-stop.png] [--markdown docs/calibration/past-the-stop.md]

A reader never creates a store: a wrong path is one line saying where it looked (exit 2).
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from experiments.store_args import save_figure, store_parser

OOD, TRAIN = "acc/test_inferred_ood", "acc/train"
CURVES = {"interchange": "circuit/interchange/ood", "carry": "circuit/carry/ood"}
#: The cells of sweeps/past-the-stop.yaml: the grouped values' names.
CELL_KEYS = ("data", "model")


def default_stop(history: Sequence[Mapping[str, Any]], rule: Any) -> tuple[int | None, str | None]:
    """The first evaluation step at which ``rule`` (a :class:`grokray.sweep.stopper.StopRule`)
    stops the run, and why; ``(None, None)`` when it never does within the history.

    >>> from grokray.sweep.stopper import StopRule
    >>> h = [{"step": s, "acc/train": 1.0, "acc/test_inferred_ood": 0.9 if s >= 400 else 0.0}
    ...      for s in range(100, 2100, 100)]
    >>> default_stop(h, StopRule(cleanup_window=1.0))
    (800, 'generalized')
    """
    for i in range(1, len(history) + 1):
        why = rule.check(history[:i])
        if why is not None:
            return int(history[i - 1]["step"]), why
    return None, None


def at_step(steps: np.ndarray, values: np.ndarray, step: float | None) -> float | None:
    """The value at the last evaluation at or before ``step`` (None: no such evaluation).

    >>> at_step(np.array([100, 200, 300]), np.array([0.1, 0.5, 0.9]), 250)
    0.5
    """
    if step is None or not len(steps):
        return None
    i = int(np.searchsorted(steps, step, side="right")) - 1
    return None if i < 0 else float(values[i])


def late_slope(steps: np.ndarray, values: np.ndarray, fraction: float = 1 / 3) -> float | None:
    """Least-squares slope of ``values`` over the last ``fraction`` of the run's steps, per 1,000
    steps (None with fewer than three evaluations there).

    >>> s = np.arange(0, 30001, 1000)
    >>> round(late_slope(s, 0.5 + 0.01 * s / 1000), 4), abs(round(late_slope(s, np.full(len(s), 0.5)), 4))
    (0.01, 0.0)
    """
    if not len(steps):
        return None
    keep = steps >= steps[-1] - fraction * (steps[-1] - steps[0])
    if keep.sum() < 3:
        return None
    return float(np.polyfit(steps[keep] / 1000.0, values[keep], 1)[0])


def prefix_verdict(history: Sequence[Mapping[str, Any]], stop: int | None, reason: str | None, max_steps: int,
                   evidence: Mapping[str, Any] | None) -> Any:
    """The verdict on the history up to ``stop`` with stop reason ``reason``, and ``evidence`` (the
    run's end-of-run evidence: what the classifier would read off the stopped run's last
    checkpoint is not stored, so the bridge evidence is the longer run's; the behaviour is the
    prefix's own). None when the rule never stopped the run."""
    from grokray.verdict import classify_history
    if stop is None:
        return None
    return classify_history([h for h in history if h["step"] <= stop], max_steps=max_steps, stop_reason=reason,
                            evidence=evidence)


def _evidence(client, run_id: str) -> dict | None:
    from grokray import tracking
    from grokray.contract import EVIDENCE_JSON, VERDICT_DIR
    from grokray.verdict import EVIDENCE_KEYS
    raw = tracking.read_json_artifact(client, run_id, f"{VERDICT_DIR}/{EVIDENCE_JSON}")
    if raw is None:
        return None
    return {k: raw[k] for k in EVIDENCE_KEYS if raw.get(k) is not None}


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)


def read_runs(tracking_uri: str, sweep: str) -> tuple[list[dict], dict]:
    """Per labelled run of ``sweep``: the measures of the module docstring, and its curves for the figure."""
    import grokray
    from grokray import tracking
    from grokray.history import metric_series, running_median
    from grokray.sweep.stopper import StopRule
    from grokray.verdict import VerdictParams

    frame = grokray.phase_map(sweep, tracking_uri=tracking_uri)
    client = tracking.existing_client(tracking_uri)
    p = VerdictParams()
    rows, curves = [], {}
    for _, r in frame[frame["label"].notna()].iterrows():
        rid = r["run_id"]
        history = sorted(tracking.load_history(client, rid), key=lambda h: h["step"])
        run = client.get_run(rid)
        max_steps = int(run.data.tags.get(tracking.Tag.MAX_STEPS) or history[-1]["step"])
        ood = metric_series(history, OOD)
        smooth = running_median(ood.values, p.smooth_window)
        t_gen, t_mem = r.get("t_generalize"), r.get("t_memorize")
        t_gen = None if t_gen is None or (isinstance(t_gen, float) and math.isnan(t_gen)) else float(t_gen)
        rule = StopRule(memorize_by=6000, split="ood", cleanup_window=1.0)      # the phase map's and the default's
        stop, reason = default_stop(history, rule)
        evidence = _evidence(client, rid)
        pv = prefix_verdict(history, stop, reason, max_steps, evidence)
        bridge = {name: metric_series(history, key) for name, key in CURVES.items()}
        after = smooth[ood.steps >= t_gen] if t_gen is not None else smooth[:0]
        row = {"run_id": rid, "run_name": r.get("run_name"), **{k: r.get(k) for k in CELL_KEYS if k in r},
               "graph": int(float(run.data.params.get("data.seed", 0))), "seed": int(float(run.data.params.get("seed", 0))),
               "label": r["label"], "detail": r["detail"], "phase": r.get("phase"),
               "t_memorize": _r(t_mem, 0), "t_generalize": t_gen, "steps_run": int(history[-1]["step"]),
               "maturity": _r(history[-1]["step"] / t_gen, 2) if t_gen else None,
               "default_stop": stop, "default_stop_reason": reason,
               "ood_at_t_gen": _r(at_step(ood.steps, smooth, t_gen)),
               "ood_at_default_stop": _r(at_step(ood.steps, smooth, stop)),
               "ood_final": _r(float(smooth[-1])) if len(smooth) else None,
               "ood_max": _r(float(smooth.max())) if len(smooth) else None,
               "ood_min_after_t_gen": _r(float(after.min())) if len(after) else None,
               "ood_late_slope_per_1k": _r(late_slope(ood.steps, smooth), 5),
               "label_at_default_stop": pv.label if pv else None, "detail_at_default_stop": pv.detail if pv else None}
        for name, s in bridge.items():
            row[f"{name}_at_default_stop"] = _r(at_step(s.steps, s.values, stop))
            row[f"{name}_final"] = _r(float(s.values[-1])) if len(s.values) else None
            row[f"{name}_min_after_t_gen"] = (_r(float(s.values[s.steps >= t_gen].min()))
                                              if t_gen is not None and (s.steps >= t_gen).any() else None)
        # None: the default rule would not have stopped this run earlier (nothing to compare)
        row["label_changed_by_stop"] = None if pv is None else pv.label != r["label"]
        row["detail_changed_by_stop"] = None if pv is None else pv.detail != r["detail"]
        rows.append(row)
        curves[rid] = {"ood": (ood.steps.tolist(), smooth.tolist()),
                       **{n: (s.steps.tolist(), s.values.tolist()) for n, s in bridge.items()},
                       "train": metric_series(history, TRAIN).values[-1:].tolist()}
    return rows, curves


def summarise(rows: list[dict]) -> list[dict]:
    """Per cell (data x model): runs, graphs, seeds, labels, and the ranges of the measures.

    >>> rows = [{"data": "both_hops", "model": "looped_1x2", "graph": g, "seed": 0, "label": "true_grokking",
    ...          "ood_final": v, "label_changed_by_stop": False} for g, v in ((0, 0.9), (1, 0.95))]
    >>> s = summarise(rows)[0]
    >>> s["n_runs"], s["n_graphs"], s["labels"], s["ood_final"]
    (2, 2, {'true_grokking': 2}, [0.9, 0.95])
    """
    out = []
    cells = sorted({tuple(r.get(k) for k in CELL_KEYS) for r in rows}, key=str)
    for cell in cells:
        g = [r for r in rows if tuple(r.get(k) for k in CELL_KEYS) == cell]
        entry: dict[str, Any] = {**dict(zip(CELL_KEYS, cell)), "n_runs": len(g),
                                 "n_graphs": len({r["graph"] for r in g}), "n_seeds": len({r["seed"] for r in g})}
        labels: dict[str, int] = {}
        for r in g:
            labels[r["label"]] = labels.get(r["label"], 0) + 1
        entry["labels"] = labels
        entry["labels_changed_by_stop"] = sum(bool(r.get("label_changed_by_stop")) for r in g)
        for k in ("t_generalize", "maturity", "ood_at_default_stop", "ood_final", "ood_min_after_t_gen",
                  "ood_late_slope_per_1k", "interchange_at_default_stop", "interchange_final", "carry_final"):
            v = [r[k] for r in g if r.get(k) is not None]
            if v:
                entry[k] = [min(v), max(v)]
        out.append(entry)
    return out


def _cell(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v) if isinstance(v, float) else str(v)


def runs_markdown(rows: list[dict]) -> str:
    """Every run as one markdown table row (for docs/calibration.md; never typed by hand): the
    cell, graph and seed, the whole run's label and detail, ``t_generalize``, where it ended (and
    how many ``t_generalize`` that is), OOD accuracy at ``t_generalize``, at the default stop, at the
    end, its minimum after ``t_generalize`` and its late slope, the interchange at the default stop
    and at the end, and the label the default stop's prefix would have got.

    >>> print(runs_markdown([{"data": "both_hops", "model": "looped_1x2", "graph": 0, "seed": 1,
    ...     "label": "true_grokking", "detail": "grokking", "t_generalize": 6500.0, "steps_run": 19500,
    ...     "maturity": 3.0, "ood_at_t_gen": 0.55, "ood_at_default_stop": 0.96, "ood_final": 0.97,
    ...     "ood_min_after_t_gen": 0.54, "ood_late_slope_per_1k": 0.00007, "interchange_at_default_stop": 0.98,
    ...     "interchange_final": 1.0, "label_at_default_stop": "true_grokking"}]).splitlines()[-1])
    | both_hops | looped_1x2 | 0 | 1 | true_grokking (grokking) | 6500 | 19500 (3.0x) | 0.55 | 0.96 | 0.97 | 0.54 | +0.0001 | 0.98 | 1.00 | true_grokking |
    """
    head = ("| data | model | graph | seed | label (detail), whole run | t_gen | ended (x t_gen) | OOD at t_gen | "
            "OOD at default stop | OOD end | OOD min after t_gen | OOD slope / 1k, last third | interchange at "
            "default stop | interchange end | label at default stop |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in sorted(rows, key=lambda r: (str(r.get("data")), str(r.get("model")), r["graph"], r["seed"])):
        slope = r.get("ood_late_slope_per_1k")
        lines.append("| " + " | ".join([
            str(r.get("data")), str(r.get("model")), str(r["graph"]), str(r["seed"]),
            f"{r['label']} ({r['detail']})", _cell(r.get("t_generalize"), "{:.0f}"),
            f"{r['steps_run']}" + (f" ({r['maturity']:.1f}x)" if r.get("maturity") else ""),
            _cell(r.get("ood_at_t_gen")), _cell(r.get("ood_at_default_stop")), _cell(r.get("ood_final")),
            _cell(r.get("ood_min_after_t_gen")), "-" if slope is None else f"{slope:+.4f}",
            _cell(r.get("interchange_at_default_stop")), _cell(r.get("interchange_final")),
            str(r.get("label_at_default_stop") or "- (not stopped earlier)")]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells = sorted({tuple(r.get(k) for k in CELL_KEYS) for r in rows}, key=str)
    fig, axes = plt.subplots(2, max(1, len(cells)), figsize=(4.2 * max(1, len(cells)), 6.4), squeeze=False,
                             sharex="col")
    colors = {0: "#0072B2", 1: "#D55E00"}
    for c, cell in enumerate(cells):
        top, bottom = axes[0][c], axes[1][c]
        for r in (r for r in rows if tuple(r.get(k) for k in CELL_KEYS) == cell):
            cv, ls = curves[r["run_id"]], "-" if r["seed"] == 0 else "--"
            col = colors.get(r["graph"], "0.4")
            top.plot(*cv["ood"], color=col, ls=ls, lw=1.2, label=f"graph {r['graph']}, seed {r['seed']}: {r['label']}")
            bottom.plot(*cv["interchange"], color=col, ls=ls, lw=1.0)
            bottom.plot(*cv["carry"], color=col, ls=ls, lw=1.0, alpha=0.45)
            for ax in (top, bottom):
                if r["t_generalize"]:
                    ax.axvline(r["t_generalize"], color=col, ls=":", lw=0.8)
                if r["default_stop"] and r["default_stop_reason"] == "generalized":
                    ax.axvline(r["default_stop"], color=col, ls="-.", lw=0.8, alpha=0.7)
        top.set_title(" / ".join(str(v) for v in cell), fontsize=9)
        top.set_ylim(-0.02, 1.02)
        bottom.set_ylim(-0.02, 1.02)
        top.axhline(0.5, color="0.6", lw=0.6)
        top.legend(fontsize=6.5, loc="lower right")
        bottom.set_xlabel("step")
    axes[0][0].set_ylabel("OOD accuracy (smoothed)")
    axes[1][0].set_ylabel("bridge on OOD: interchange (dark), carry (light)")
    fig.suptitle("past the stop: dotted = t_generalize, dash-dot = where the default stop rule (2x) stops",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = store_parser(__doc__, "past-the-stop", "experiments/results/past_the_stop.json",
                      "docs/calibration/past-the-stop.png")
    ap.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                    help="also write every run as a markdown table (e.g. docs/calibration/past-the-stop.md)")
    a = ap.parse_args(argv)
    from grokray.config import ConfigError
    try:
        rows, curves = read_runs(a.tracking_uri, a.sweep)
    except (ConfigError, LookupError) as e:
        print(f"past_the_stop: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"past_the_stop: no labelled run in {a.sweep!r} yet", file=sys.stderr)
        return 2
    result = {"sweep": a.sweep, "tracking_uri": a.tracking_uri,
              "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "default_stop_rule": {"memorize_by": 6000, "cleanup_window": 1.0, "split": "ood"},
              "cells": summarise(rows), "runs": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, curves, a.png)
    if a.markdown:
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text(f"<!-- written by python -m experiments.past_the_stop --markdown; do not edit -->\n\n"
                              f"{runs_markdown(rows)}\n")
    for c in result["cells"]:
        rng = {k: v for k, v in c.items() if isinstance(v, list)}
        print(f"{c['data']} / {c['model']}: {c['n_runs']} runs ({c['n_graphs']} graphs x {c['n_seeds']} seeds) "
              f"{c['labels']}, labels changed by the default stop: {c['labels_changed_by_stop']}; {rng}")
    print(f"wrote {a.out} and {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
