"""Regenerate the calibration table (docs/calibration.md) from the calibration sweep.

    python benchmarks/calibration.py --run                 # run sweeps/calibration.yaml, then tabulate
    python benchmarks/calibration.py --tracking-uri sqlite:////path/mlflow.db   # tabulate an existing sweep

    # the fast path's labels against the committed table (issue 6: "labels unchanged")
    python benchmarks/calibration.py --tracking-uri sqlite:////path/fast.db \
        --sweep calibration-fast calibration-nonshared-fast --result calibration_fastpath \
        --out /tmp/calibration_fastpath --compare-to benchmarks/results/calibration.json

Prints a markdown table (regime, loops, seed, label, detail, confidence, t_memorize,
t_generalize, final accuracies, lens and causal evidence), writes it with the raw numbers
to ``benchmarks/results/calibration.json``, and writes plots to ``docs/calibration/``:
the OOD curves of every regime side by side, the phase map, and each run's evidence
(curves with detected steps, lens heatmap, patching heatmap).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _num(v, fmt="{:.2f}"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def compare(rows: list[dict], reference: list[dict], reference_name: str) -> dict:
    """Labels (and the numbers behind them) of the same regimes in two calibration tables."""
    ref = {(r["regime"], r["model"], r["seed"]): r for r in reference}
    head = ("| regime | layers x loops | label (reference) | label (this run) | detail ref / this | t_gen ref / this "
            "| OOD ref / this | bridge given correct ref / this |")
    lines, pairs = [head, "|" + "---|" * (head.count("|") - 1)], []
    for r in rows:
        o = ref.get((r["regime"], r["model"], r["seed"]))
        if o is None:
            continue
        same = o["label"] == r["label"]
        pairs.append({"regime": r["regime"], "model": r["model"], "seed": r["seed"], "reference": o["label"],
                      "this": r["label"], "same": same, "detail": [o["detail"], r["detail"]],
                      "t_generalize": [o["t_generalize"], r["t_generalize"]],
                      "ood": [o["ood"], r["ood"]], "bridge_given_correct": [o["bridge_given_correct"],
                                                                             r["bridge_given_correct"]]})
        mark = "" if same else " (changed)"
        lines.append(f"| {r['regime']} | {r['model']} | {o['label']} | **{r['label']}**{mark} "
                     f"| {o['detail']} / {r['detail']} "
                     f"| {_num(o['t_generalize'], '{:.0f}')} / {_num(r['t_generalize'], '{:.0f}')} "
                     f"| {_num(o['ood'])} / {_num(r['ood'])} "
                     f"| {_num(o['bridge_given_correct'])} / {_num(r['bridge_given_correct'])} |")
    n_same = sum(p["same"] for p in pairs)
    n_detail = sum(p["detail"][0] == p["detail"][1] for p in pairs)
    return {"reference": reference_name, "pairs": pairs, "same": n_same, "same_detail": n_detail,
            "compared": len(pairs), "table_markdown": "\n".join(lines),
            "summary": f"{n_same}/{len(pairs)} labels and {n_detail}/{len(pairs)} details unchanged "
                       f"against {reference_name}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", nargs="+", default=["calibration", "calibration-nonshared"],
                    help="sweeps to tabulate together")
    ap.add_argument("--spec", nargs="+", default=[str(ROOT / "sweeps" / "calibration.yaml"),
                                                 str(ROOT / "sweeps" / "calibration-nonshared.yaml")])
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--run", action="store_true", help="run the sweeps first (about 25 min on 2 quiet CPU cores)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "calibration"))
    ap.add_argument("--result", default="calibration", help="write benchmarks/results/RESULT.json")
    ap.add_argument("--compare-to", default=None,
                    help="a calibration JSON (e.g. the committed one): tabulate labels side by side")
    args = ap.parse_args(argv)

    from grokray import tracking
    from grokray.phasemap import phase_map, plot_phase_map
    from grokray.plots import plt

    if args.run:
        for spec in args.spec:
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "grokray", "sweep", "run", spec], check=True)
            print(f"{spec} ran in {(time.time() - t0) / 60:.1f} min")
    import pandas as pd

    uri = tracking.tracking_uri(args.tracking_uri)
    client = tracking.get_client(uri)
    frames = [phase_map(s, uri) for s in args.sweep]
    df = pd.concat(frames, ignore_index=True)
    if not len(df):
        print(f"no runs in sweeps {args.sweep} at {uri}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows, curves = [], {}
    for _, r in df.iterrows():
        if r["status"] != "FINISHED" or r["label"] is None:
            print(f"skipping {r['run_name']}: {r['status']}, not labelled yet", file=sys.stderr)
            continue
        run = client.get_run(r["run_id"])
        m, params = run.data.metrics, run.data.params
        r = {**r.to_dict(), "data.augmentation": params["data.augmentation"],
             "model": f"{params['model.n_layers']}x{params['model.n_loops']}", "seed": int(params["seed"])}
        tmp = out / ".tmp"
        tmp.mkdir(exist_ok=True)
        hist_path = client.download_artifacts(r["run_id"], "history.json", str(tmp))
        history = json.loads(Path(hist_path).read_text())
        key = f"{r['data.augmentation']}-L{r['model']}-s{r['seed']}"
        curves[key] = history
        for art in ("verdict/curves.png", "verdict/lens.png", "verdict/patching_ood.png"):
            try:
                p = client.download_artifacts(r["run_id"], art, str(tmp))
                shutil.copy(p, out / f"{key}_{Path(art).stem}.png")
            except Exception:
                pass
        rows.append({"regime": r["data.augmentation"], "model": r["model"],
                     "seed": r["seed"], "label": r["label"], "detail": r["detail"],
                     "confidence": r["confidence"], "t_memorize": r["t_memorize"], "t_generalize": r["t_generalize"],
                     "delay_ratio": r["delay_ratio"], "steps_run": int(r["steps_run"]),
                     "stop_reason": run.data.tags.get("grokray.stop_reason"),
                     "train": r["final_train_acc"], "id": r["final_id_acc"], "ood": r["final_ood_acc"],
                     "max_ood": m.get("verdict/max_target_acc"),
                     "bridge_found": m.get("verdict/bridge_found"),
                     "bridge_given_correct": m.get("verdict/bridge_given_correct"),
                     "causal_r1": m.get("verdict/causal_r1"),
                     "minutes": (run.info.end_time - run.info.start_time) / 60000 if run.info.end_time else None})
        shutil.rmtree(tmp, ignore_errors=True)

    order = {"none": 0, "both_full": 1, "both_half": 2, "hop1_full": 3, "hop2_full": 4}
    rows.sort(key=lambda x: (x["model"] != "1x2", x["model"], order.get(x["regime"], 9), x["seed"]))
    head = ("| regime | layers x loops | label | detail | conf | t_mem | t_gen | steps (stop) | train | ID | OOD "
            "(max) | bridge found | bridge given correct | causal r1 | min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for x in rows:
        lines.append(f"| {x['regime']} | {x['model']} | **{x['label']}** | {x['detail']} | {_num(x['confidence'])} "
                     f"| {_num(x['t_memorize'], '{:.0f}')} | {_num(x['t_generalize'], '{:.0f}')} "
                     f"| {x['steps_run']} ({x['stop_reason']}) | {_num(x['train'])} | {_num(x['id'])} "
                     f"| {_num(x['ood'])} ({_num(x['max_ood'])}) | {_num(x['bridge_found'])} "
                     f"| {_num(x['bridge_given_correct'])} | {_num(x['causal_r1'])} | {_num(x['minutes'], '{:.1f}')} |")
    table = "\n".join(lines)
    print(table)

    # OOD accuracy and lens bridge over steps, one panel per model shape.
    loops = sorted({x["model"] for x in rows}, key=lambda m: (m != "1x2", m))
    fig, axes = plt.subplots(2, len(loops), figsize=(6 * len(loops), 7), dpi=110, squeeze=False, sharex=True)
    for col, L in enumerate(loops):
        for key, hist in curves.items():
            if f"-L{L}-" not in key:
                continue
            steps = [h["step"] for h in hist if h["step"] > 0]
            for row, metric in enumerate(("acc/test_inferred_ood", "lens/ood/bridge_found")):
                vals = [h.get(metric, float("nan")) for h in hist if h["step"] > 0]
                axes[row][col].plot(steps, vals, label=key.split("-L")[0], lw=1.4)
        for row, name in enumerate(("OOD test accuracy", "OOD bridge found (lens)")):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{name}, layers x loops = {L}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[1][col].set_xlabel("step (log)")
    fig.tight_layout()
    fig.savefig(out / "ood_curves.png")
    plt.close(fig)
    for sweep, frame in zip(args.sweep, frames):
        if len(frame):
            plot_phase_map(frame, out / f"phase_map_{sweep}.png")

    result = {"sweeps": args.sweep, "tracking_uri": uri, "machine": {"platform": platform.platform(),
              "cpus": os.cpu_count()}, "rows": rows, "table_markdown": table,
              "generated": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.compare_to:
        result["comparison"] = compare(rows, json.loads(Path(args.compare_to).read_text())["rows"], args.compare_to)
        print("\n" + result["comparison"]["table_markdown"])
        print(result["comparison"]["summary"])
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"{args.result}.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"\nplots in {out}; numbers in {res / (args.result + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
