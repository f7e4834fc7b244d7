"""Regenerate the calibration table (docs/calibration.md) from the calibration sweeps.

    python -m experiments.calibration --run                 # run the calibration sweeps, then tabulate
    python -m experiments.calibration --tracking-uri sqlite:////path/mlflow.db   # tabulate existing sweeps

    # the fast path's labels against the committed table (issue 6: "labels unchanged")
    python -m experiments.calibration --tracking-uri sqlite:////path/fast.db \
        --sweep calibration-fast calibration-nonshared-fast --result calibration_fastpath \
        --out /tmp/calibration_fastpath --compare-to experiments/results/calibration.json

Reads every labelled trial run of the sweeps (``--sweep``: sweep names, or MLflow experiment
names) through grokray's MLflow contract (``grokray.tracking``: the ``Tag`` constants, the
``verdict/*`` metrics of ``grokray.classify.verdict_metrics``, the phase-map columns) and
prints a markdown table: regime, layers x loops, the label (by the run's criterion, default
the interchange test) and He et al.'s logit-lens label, detail, confidence, t_memorize,
t_generalize, steps and stop reason, final accuracies, the held target level against the best
shortcut baseline, the interchange rate, and the lens and causal evidence. Writes the table
with the raw numbers to ``experiments/results/<--result>.json`` and plots to ``--out``
(default ``docs/calibration/``): the OOD curves of every regime side by side
(``ood_curves.png``), the phase map of each sweep, and each run's evidence (curves with the
detected steps, lens heatmap, interchange test, patching heatmap).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DOCS = ROOT / "docs" / "calibration"
SPECS = [ROOT / "sweeps" / "calibration.yaml", ROOT / "sweeps" / "calibration-nonshared.yaml"]

#: Regimes in table order (He et al.'s "natural" first); others sort after them.
REGIME_ORDER = {"none": 0, "both_full": 1, "both_half": 2, "hop1_full": 3, "hop2_full": 4}
#: The verdict's evidence plots copied per run: artifact name -> suffix of the PNG in --out.
EVIDENCE_PNGS = ("curves", "lens", "interchange", "patching_{split}")
#: Table columns: (header, row key, format); a format of None prints the value as it is.
COLUMNS = (("regime", "regime", None), ("layers x loops", "model", None), ("seed", "seed", None),
           ("label", "label", "**{}**"),
           ("label (lens)", "label_lens", None), ("detail", "detail", None), ("conf", "confidence", "{:.2f}"),
           ("t_mem", "t_memorize", "{:.0f}"), ("t_gen", "t_generalize", "{:.0f}"), ("delay", "delay_ratio", "{:.1f}x"),
           ("steps (stop)", "steps", None), ("train", "train", "{:.2f}"), ("ID", "id", "{:.2f}"),
           ("OOD", "ood", "{:.2f}"), ("target held (max)", "held", None),
           ("shortcut best", "shortcut_best", "{:.2f}"), ("interchange", "interchange", "{:.2f}"),
           ("bridge found", "bridge_found", "{:.2f}"), ("bridge given correct", "bridge_given_correct", "{:.2f}"),
           ("causal r1", "causal_r1", "{:.2f}"), ("min", "minutes", "{:.1f}"))


def _num(v, fmt="{:.2f}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def _float(v):
    """A number from a DataFrame cell or a metric (None and NaN stay None)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def table(rows: list[dict]) -> str:
    """The markdown table of :data:`COLUMNS` over calibration rows (plus a ``data`` column when a
    sweep named its data values: the name is the regime, the column says what the data is)."""
    columns = COLUMNS
    if any(x.get("data", x["regime"]) != x["regime"] for x in rows):
        columns = COLUMNS[:1] + (("data", "data", None),) + COLUMNS[1:]
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    lines = [head, "|" + "---|" * len(columns)]
    for x in rows:
        cells = {**x, "steps": f"{x['steps_run']} ({x['stop_reason']})",
                 "held": f"{_num(x['final_target_level'])} ({_num(x['max_target'])})"}
        out = [_num(cells.get(key), fmt or "{}") for _, key, fmt in columns]
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def compare(rows: list[dict], reference: list[dict], reference_name: str) -> dict:
    """Labels (and the numbers behind them) of the same regimes in two calibration tables.

    A reference written before classifier v2 has no ``label_lens`` / ``interchange``: shown as ``-``."""
    ref = {(r["regime"], r["model"], r["seed"]): r for r in reference}
    head = ("| regime | layers x loops | label (reference) | label (this run) | label (lens) ref / this "
            "| detail ref / this | t_gen ref / this | OOD ref / this | interchange ref / this "
            "| bridge given correct ref / this |")
    lines, pairs = [head, "|" + "---|" * (head.count("|") - 1)], []
    for r in rows:
        o = ref.get((r["regime"], r["model"], r["seed"]))
        if o is None:
            continue
        same = o["label"] == r["label"]
        pairs.append({"regime": r["regime"], "model": r["model"], "seed": r["seed"], "reference": o["label"],
                      "this": r["label"], "same": same, "detail": [o["detail"], r["detail"]],
                      "label_lens": [o.get("label_lens"), r.get("label_lens")],
                      "t_generalize": [o["t_generalize"], r["t_generalize"]], "ood": [o["ood"], r["ood"]],
                      "interchange": [o.get("interchange"), r.get("interchange")],
                      "bridge_given_correct": [o["bridge_given_correct"], r["bridge_given_correct"]]})
        mark = "" if same else " (changed)"
        lines.append(f"| {r['regime']} | {r['model']} | {o['label']} | **{r['label']}**{mark} "
                     f"| {o.get('label_lens') or '-'} / {r.get('label_lens') or '-'} "
                     f"| {o['detail']} / {r['detail']} "
                     f"| {_num(o['t_generalize'], '{:.0f}')} / {_num(r['t_generalize'], '{:.0f}')} "
                     f"| {_num(o['ood'])} / {_num(r['ood'])} "
                     f"| {_num(o.get('interchange'))} / {_num(r.get('interchange'))} "
                     f"| {_num(o['bridge_given_correct'])} / {_num(r['bridge_given_correct'])} |")
    n_same = sum(p["same"] for p in pairs)
    n_detail = sum(p["detail"][0] == p["detail"][1] for p in pairs)
    return {"reference": reference_name, "pairs": pairs, "same": n_same, "same_detail": n_detail,
            "compared": len(pairs), "table_markdown": "\n".join(lines),
            "summary": f"{n_same}/{len(pairs)} labels and {n_detail}/{len(pairs)} details unchanged "
                       f"against {reference_name}"}


def calibration_row(client, frame_row: dict) -> tuple[dict, list[dict]]:
    """One table row (and the run's metric history) from a phase-map row and its MLflow run."""
    from grokray import tracking

    Tag, V = tracking.Tag, tracking.VERDICT_PREFIX
    run_id = frame_row["run_id"]
    run = client.get_run(run_id)
    m, tags = run.data.metrics, run.data.tags
    cfg = tracking.run_trial_config(client, run_id)
    history = tracking.load_history(client, run_id)
    swept = json.loads(tags.get(Tag.SWEPT) or "{}")
    named = swept.get("data", {}).get("name") if isinstance(swept.get("data"), dict) else None
    row = {"regime": named or regime_name(cfg), "data": regime_name(cfg),
           "model": f"{cfg.model.n_layers}x{cfg.model.n_loops}",
           "seed": int(cfg.seed), "run_id": run_id, "run_name": frame_row["run_name"],
           "label": frame_row["label"], "label_lens": frame_row["label_lens"],
           "label_interchange": frame_row["label_interchange"], "phase": frame_row["phase"],
           "criterion": tags.get(Tag.CRITERION),
           "split": tags.get(Tag.SPLIT), "classifier_version": frame_row["classifier_version"],
           "detail": frame_row["detail"], "confidence": _float(frame_row["confidence"]),
           "censored": bool(frame_row["censored"]),
           "t_memorize": _float(frame_row["t_memorize"]), "t_generalize": _float(frame_row["t_generalize"]),
           "delay_ratio": _float(frame_row["delay_ratio"]), "steps_run": int(frame_row["steps_run"]),
           "stop_reason": tags.get(Tag.STOP_REASON),
           "train": _float(frame_row["final_train_acc"]), "id": _float(frame_row["final_id_acc"]),
           "ood": _float(frame_row["final_ood_acc"]),
           "final_target_level": _float(frame_row["final_target_level"]),
           "max_target": _float(m.get(f"{V}max_target_acc")),
           "shortcut_best": _float(frame_row["shortcut_best"]),
           "interchange": _float(frame_row["interchange"]),
           "interchange_control": _float(m.get(f"{V}interchange_control")),
           "bridge_found": _float(m.get(f"{V}bridge_found")),
           "bridge_given_correct": _float(m.get(f"{V}bridge_given_correct")),
           "causal_r1": _float(m.get(f"{V}causal_r1")),
           "minutes": (run.info.end_time - run.info.start_time) / 60000 if run.info.end_time else None}
    return row, history


def run_key(row: dict) -> str:
    """``<regime>-L<layers x loops>-s<seed>``, the regime made a file name (and a markdown link).

    >>> run_key({"regime": "hop2(1,18) phi=3.6", "model": "1x2", "seed": 0})
    'hop2_1_18_phi=3.6-L1x2-s0'
    """
    regime = re.sub(r"[^A-Za-z0-9_.=-]+", "_", row["regime"]).strip("_")
    return f"{regime}-L{row['model']}-s{row['seed']}"


def regime_name(cfg) -> str:
    """The augmentation's name, plus every data / model setting that differs from the default
    trial's (``hop2(1,18) n_relations=200 phi=3.6``), so runs on other graphs never share a row name."""
    import dataclasses

    from grokray.config import DataConfig, ModelConfig

    parts = [cfg.data.augmentation_name()]
    for section, default in (("data", DataConfig()), ("model", ModelConfig())):
        for f in dataclasses.fields(default):
            if f.name in ("augmentation", "n_layers", "n_loops"):
                continue
            v = getattr(getattr(cfg, section), f.name)
            if v != getattr(default, f.name):
                parts.append(f"{f.name}={v:g}" if isinstance(v, float) else f"{f.name}={v}")
    return " ".join(parts)


def copy_evidence(client, row: dict, out: Path, key: str) -> list[str]:
    """The run's verdict PNGs (those it has) copied to ``out/<key>_<name>.png``."""
    from grokray import tracking

    copied = []
    tmp = out / ".tmp"
    tmp.mkdir(exist_ok=True)
    try:
        for name in EVIDENCE_PNGS:
            name = name.format(split=row["split"] or "ood")
            try:
                p = client.download_artifacts(row["run_id"], f"{tracking.VERDICT_DIR}/{name}.png", str(tmp))
            except Exception:  # a run labelled by an older classifier lacks some of them
                continue
            shutil.copy(p, out / f"{key}_{name}.png")
            copied.append(f"{key}_{name}.png")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return copied


def plot_ood_curves(curves: dict[str, list[dict]], models: list[str], path: Path) -> None:
    """Train accuracy (memorization), OOD accuracy and lens bridge over steps, one column per model shape."""
    from grokray.plots import plt

    fig, axes = plt.subplots(3, len(models), figsize=(6 * len(models), 10), dpi=110, squeeze=False, sharex=True)
    # one colour per regime in every panel (keys are "<regime>-L<model>-s<seed>"); seed 1 dashed
    regimes = list(dict.fromkeys(key.rsplit("-L", 1)[0] for key in curves))
    colour = {r: f"C{i % 10}" for i, r in enumerate(regimes)}
    for col, L in enumerate(models):
        for key, hist in curves.items():
            if f"-L{L}-" not in key:
                continue
            steps = [h["step"] for h in hist if h["step"] > 0]
            for row, metric in enumerate(("acc/train", "acc/test_inferred_ood", "lens/ood/bridge_found")):
                vals = [h.get(metric, float("nan")) for h in hist if h["step"] > 0]
                axes[row][col].plot(steps, vals, label=key.replace(f"-L{L}", ""), lw=1.4,
                                    color=colour[key.rsplit("-L", 1)[0]], ls="--" if key.endswith("-s1") else "-")
        for row, name in enumerate(("train accuracy", "OOD test accuracy", "OOD bridge found (lens)")):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{name}, layers x loops = {L}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.legend(fontsize=7)
        axes[-1][col].set_xlabel("step (log)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.calibration", description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", nargs="+", default=["calibration", "calibration-nonshared"],
                    help="sweeps (or MLflow experiments) to tabulate together (default: %(default)s)")
    ap.add_argument("--spec", nargs="+", default=None,
                    help="the sweep specs --run runs, into --tracking-uri (default: "
                         f"{' '.join(str(s.relative_to(ROOT)) for s in SPECS)} of this repository)")
    ap.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                                                         "./mlflow.db)")
    ap.add_argument("--run", action="store_true", help="run the sweeps first (about 25 min on 2 quiet CPU cores)")
    ap.add_argument("--out", default=None, help=f"folder of the plots (default: {DOCS.relative_to(ROOT)} of this "
                                                "repository)")
    ap.add_argument("--result", default="calibration", help="write RESULTS_DIR/RESULT.json (default: %(default)s)")
    ap.add_argument("--results-dir", default=None,
                    help=f"folder of the result JSON (default: {RESULTS.relative_to(ROOT)} of this repository)")
    ap.add_argument("--compare-to", default=None,
                    help="a calibration JSON (e.g. the committed one): tabulate labels side by side")
    args = ap.parse_args(argv)

    from grokray import tracking
    from grokray.phasemap import phase_map, plot_phase_map

    uri = tracking.tracking_uri(args.tracking_uri)
    if args.run:
        for spec in args.spec or [str(s) for s in SPECS]:
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "grokray", "sweep", "run", spec, "--tracking-uri", uri], check=True)
            print(f"{spec} ran in {(time.time() - t0) / 60:.1f} min")
    import pandas as pd

    client = tracking.get_client(uri)
    frames = []
    for s in args.sweep:
        try:
            frames.append(phase_map(s, uri))
        except LookupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    df = pd.concat(frames, ignore_index=True)
    if not len(df):
        print(f"no runs in sweeps {args.sweep} at {uri}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else DOCS
    out.mkdir(parents=True, exist_ok=True)

    rows, curves = [], {}
    for _, fr in df.iterrows():
        if fr["status"] != "FINISHED" or fr["label"] is None:
            print(f"skipping {fr['run_name']}: {fr['status']}, not labelled yet", file=sys.stderr)
            continue
        row, history = calibration_row(client, fr.to_dict())
        key = run_key(row)
        curves[key] = history
        row["plots"] = copy_evidence(client, row, out, key)
        rows.append(row)
    if not rows:
        print(f"no finished, labelled runs in sweeps {args.sweep} at {uri}", file=sys.stderr)
        return 2

    rows.sort(key=lambda x: (x["model"] != "1x2", x["model"], REGIME_ORDER.get(x["regime"], 9), x["regime"],
                             x["seed"]))
    md = table(rows)
    contract = sorted({(r["split"], r["criterion"], r["classifier_version"]) for r in rows}, key=str)
    about = "; ".join(f"target split {s}, criterion {c}, classifier v{v}" for s, c, v in contract)
    print(f"{about}\n\n{md}")

    models = sorted({x["model"] for x in rows}, key=lambda m: (m != "1x2", m))
    plot_ood_curves({run_key(x): curves[run_key(x)] for x in rows}, models, out / "ood_curves.png")
    for sweep, frame in zip(args.sweep, frames):
        if len(frame):
            plot_phase_map(frame, out / f"phase_map_{sweep}.png")

    result = {"sweeps": args.sweep, "tracking_uri": uri, "classifier": about,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "rows": rows,
              "table_markdown": md, "generated": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.compare_to:
        result["comparison"] = compare(rows, json.loads(Path(args.compare_to).read_text())["rows"], args.compare_to)
        print("\n" + result["comparison"]["table_markdown"])
        print(result["comparison"]["summary"])
    res = Path(args.results_dir) if args.results_dir else RESULTS
    res.mkdir(parents=True, exist_ok=True)
    path = res / f"{args.result}.json"
    path.write_text(json.dumps(result, indent=2, default=float))
    print(f"\nplots in {out}; numbers in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
