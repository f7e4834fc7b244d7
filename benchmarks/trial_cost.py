"""The fixed cost of one sweep trial beyond its training: where it goes, against a bare Tune floor.

N tiny trials (the test suite's tiny trial, ``--steps`` steps each: a second or less of
training) run two at a time, side by side in one run:

* ``sweep``: ``grokray sweep run`` as a user runs it (local Ray, a fresh sqlite MLflow store,
  classifier on), wall time from the command's start to its exit;
* ``floor``: a bare Ray Tune function trainable that builds the same Trainer and trains the
  same steps, no MLflow, no classifier, no checkpoints, same concurrency and actor reuse.

Per trial and slot: ``wall x 2 / N``. The sweep's breakdown comes from what its runs recorded
in MLflow (timestamps are server-side wall clock): start-up (run created -> first metric:
worker start or reuse, imports, dataset, params and artifacts), training (the trainer's
``time/seconds``), final writes (last metric -> run end: curves, history, tags), and labelling
(run end -> verdict logged: the classifier actor, which runs beside the next trials).
Target (issue): the fixed cost per trial beyond training <= 3 s on 2 cores.

    python -m benchmarks.trial_cost                 # 24 trials x 30 steps (~2-3 min quiet)
    python -m benchmarks.trial_cost --quick         # smoke: 4 trials x 10 steps
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as C

FLOOR = r"""
import json, sys, time
t0 = time.perf_counter()
import ray
from ray import tune
n, steps, base = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])

def trainable(config):
    import torch
    torch.set_num_threads(1)
    from grokray.config import trial_config_from_dict
    from grokray.train import Trainer
    cfg = trial_config_from_dict(base).with_values({"seed": config["seed"], "train.max_steps": steps})
    res = Trainer(cfg).run()
    tune.report({"step": res.steps_run, "train_seconds": res.seconds})

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}), param_space={"seed": tune.grid_search(list(range(n)))},
                   tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True),
                   run_config=tune.RunConfig(storage_path=sys.argv[4], verbose=0))
res = tuner.fit()
train = [r.metrics["train_seconds"] for r in res]
print("RESULT " + json.dumps({"wall_seconds": time.perf_counter() - t0, "train_seconds": train}))
"""


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1", **(extra or {})})
    return env


def run_floor(tmp: Path, n: int, steps: int, base: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", FLOOR, str(n), str(steps), json.dumps(base), str(tmp / "floor")],
                          capture_output=True, text=True, env=_env(), timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"floor failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["process_wall_seconds"] = time.perf_counter() - t0
    return out


def run_sweep(tmp: Path, n: int, steps: int, base: dict) -> dict:
    import yaml

    from grokray import tracking

    name = f"bench-cost-{os.getpid()}"
    spec = {"name": name, "base": base, "parameters": {"seed": {"values": list(range(n))}}, "max_steps": steps,
            "max_concurrent": 2, "storage": str(tmp / "results")}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "grokray", "sweep", "run", str(path), "--no-map"],
                          capture_output=True, text=True, cwd=tmp, env=_env({"MLFLOW_TRACKING_URI": uri}), timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    client = tracking.get_client(uri)
    parent = tracking.find_sweep_parent(client, name)
    parts: dict[str, list[float]] = {"startup": [], "training": [], "final_writes": [], "labelling": []}
    for r in tracking.sweep_runs(client, parent):
        hist = client.get_metric_history(r.info.run_id, "acc/train")
        first, last = min(m.timestamp for m in hist), max(m.timestamp for m in hist)
        verdict = client.get_metric_history(r.info.run_id, f"{tracking.VERDICT_PREFIX}confidence")
        secs = client.get_metric_history(r.info.run_id, "time/seconds")
        parts["startup"].append((first - r.info.start_time) / 1000)
        parts["training"].append(max(m.value for m in secs))
        parts["final_writes"].append((r.info.end_time - last) / 1000)
        if verdict:
            parts["labelling"].append((verdict[0].timestamp - r.info.end_time) / 1000)
    return {"wall_seconds": wall, "parts_seconds": {k: C.summarize(v) for k, v in parts.items() if v},
            "n_runs": len(parts["training"]), "n_labelled": len(parts["labelling"])}


def main(argv=None) -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    started, before = time.perf_counter(), C.snapshot()
    import yaml

    n, steps = (4, 10) if args.quick else (args.trials, args.steps)
    base = yaml.safe_load((C.ROOT / "tests" / "specs" / "tiny_base.yaml").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="grokray-bench-cost-"))
    C.say(f"{n} tiny trials x {steps} steps, 2 at a time; floor first, then the sweep")
    floor = run_floor(tmp, n, steps, base)
    sweep = run_sweep(tmp, n, steps, base)
    per_floor = floor["process_wall_seconds"] * 2 / n
    per_sweep = sweep["wall_seconds"] * 2 / n
    train = statistics.mean(floor["train_seconds"])
    fixed = per_sweep - sweep["parts_seconds"]["training"]["median"]
    payload = {"config": {"trials": n, "steps": steps, "concurrency": 2},
               "floor": {**floor, "seconds_per_trial_per_slot": per_floor, "mean_train_seconds": train},
               "sweep": {**sweep, "seconds_per_trial_per_slot": per_sweep},
               "fixed_seconds_per_trial_beyond_training": fixed,
               "sweep_over_floor": per_sweep / per_floor,
               "target": {"fixed_seconds_max": 3.0, "met": fixed <= 3.0}}
    C.say(f"floor {per_floor:.2f} s/trial/slot (training {train:.2f} s), sweep {per_sweep:.2f} s/trial/slot; "
          f"fixed beyond training {fixed:.2f} s; parts (median s): "
          + ", ".join(f"{k} {v['median']:.2f}" for k, v in sweep["parts_seconds"].items()))
    C.write_result("trial_cost", args, payload, started, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
