"""Calibration of the default trial (issue: engine): does it show the grokking shape in ~10 minutes?

    python -m experiments.default_trial [--config sweeps/trials/default.yaml] [--threads 2] [--seeds 0]
    python -m experiments.default_trial --from-runs RUN_ID ... --tracking-uri URI   # trials a sweep already ran

Trains the default trial (no tracking) and records the behavioural milestones: the step and
minute at which train accuracy first holds >= 0.99, the ID test accuracy then, and when ID
test accuracy first holds >= 0.5 and >= 0.9 (same sustain/smoothing rule as the verdict,
``grokray.history``). Prints a line per run and writes ``experiments/results/default_trial.json``
(``--out`` elsewhere; ``--quick``, 300 steps, writes to a temp dir unless ``--out`` is given,
so a smoke run never overwrites the figures).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "experiments" / "results" / "default_trial.json"


def out_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    if args.quick:
        return Path(tempfile.gettempdir()) / "grokray-experiments-quick" / "default_trial.json"
    return RESULT


def write(args: argparse.Namespace, doc: dict) -> Path:
    path = out_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    return path


def milestones(history: list[dict]) -> dict:
    import numpy as np

    from grokray.history import first_sustained, running_median

    steps = np.array([h["step"] for h in history])
    secs = {h["step"]: h.get("time/seconds", float("nan")) for h in history}
    train = np.array([h["acc/train"] for h in history])
    idacc = running_median(np.array([h["acc/test_inferred_id"] for h in history]), 3)
    out = {"t_memorize": first_sustained(steps, train, 0.99, 2)}
    out["id_acc_at_memorize"] = float(idacc[list(steps).index(out["t_memorize"])]) if out["t_memorize"] else None
    for level in (0.5, 0.9):
        out[f"t_id_{level}"] = first_sustained(steps, idacc, level, 2)
    for k in ("t_memorize", "t_id_0.5", "t_id_0.9"):
        out[k.replace("t_", "minutes_")] = secs[out[k]] / 60 if out[k] is not None else None
    last = history[-1]
    out.update(final_step=last["step"], final_train=last["acc/train"], final_id=last["acc/test_inferred_id"],
               final_ood=last["acc/test_inferred_ood"], minutes_total=last["time/seconds"] / 60)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.default_trial", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "sweeps" / "trials" / "default.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="300 steps (smoke test; writes to a temp dir)")
    ap.add_argument("--out", default=None, help="JSON path (default experiments/results/default_trial.json)")
    ap.add_argument("--from-runs", nargs="+", default=None, metavar="RUN_ID",
                    help="read the histories of default trials already logged to MLflow instead of training")
    ap.add_argument("--tracking-uri", default=None)
    args = ap.parse_args(argv)
    if args.from_runs:
        return from_runs(args)

    from grokray.config import load_trial_config
    from grokray.train import Trainer

    rows = []
    for seed in args.seeds:
        overrides = [*args.overrides, f"seed={seed}", f"train.threads={args.threads}"]
        if args.quick:
            overrides.append("train.max_steps=300")
        cfg = load_trial_config(args.config, overrides)
        t0 = time.time()
        result = Trainer(cfg).run()
        m = milestones(result.history)
        m.update(seed=seed, wall_minutes=(time.time() - t0) / 60)
        rows.append(m)
        print(f"seed {seed}: train>=0.99 at step {m['t_memorize']} ({m['minutes_memorize'] or float('nan'):.1f} min, "
              f"ID then {m['id_acc_at_memorize'] or float('nan'):.2f}); ID>=0.5 at {m['t_id_0.5']}; "
              f"ID>=0.9 at {m['t_id_0.9']} ({m['minutes_id_0.9'] or float('nan'):.1f} min); final train "
              f"{m['final_train']:.3f} ID {m['final_id']:.3f} OOD {m['final_ood']:.3f} after {m['final_step']} steps, "
              f"{m['minutes_total']:.1f} min", flush=True)
    busy = os.getloadavg()[0]
    out = {"config": args.config, "overrides": args.overrides, "threads": args.threads, "quick": args.quick,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_at_end": busy},
           "runs": rows, "generated": time.strftime("%Y-%m-%d %H:%M:%S")}
    write(args, out)
    return 0


def from_runs(args: argparse.Namespace) -> int:
    """Milestones of trials a sweep already ran (e.g. the calibration's default-trial cell)."""
    from grokray import tracking

    client = tracking.get_client(tracking.tracking_uri(args.tracking_uri))
    rows = []
    for run_id in args.from_runs:
        run = client.get_run(run_id)
        m = milestones(tracking.load_history(client, run_id))
        m.update(seed=int(run.data.params["seed"]), run_id=run_id, run_name=run.info.run_name,
                 sweep=run.data.tags.get(tracking.Tag.SWEEP),
                 params={k: v for k, v in run.data.params.items() if k.startswith(("data.", "model.", "train."))})
        rows.append(m)
        print(f"{run.info.run_name}: train>=0.99 at step {m['t_memorize']} ({m['minutes_memorize'] or float('nan'):.1f} "
              f"min, ID then {m['id_acc_at_memorize'] or float('nan'):.2f}); ID>=0.5 at {m['t_id_0.5']} "
              f"({m['minutes_id_0.5'] or float('nan'):.1f} min); ID>=0.9 at {m['t_id_0.9']} "
              f"({m['minutes_id_0.9'] or float('nan'):.1f} min); final train {m['final_train']:.3f} ID "
              f"{m['final_id']:.3f} OOD {m['final_ood']:.3f} after {m['final_step']} steps, {m['minutes_total']:.1f} min")
    out = {"source": f"MLflow runs at {client.tracking_uri}", "runs": rows,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "generated": time.strftime("%Y-%m-%d %H:%M:%S")}
    write(args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
