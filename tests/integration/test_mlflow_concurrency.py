"""MLflow under concurrency: 16 trials logging at once into one tracking server started with the
project's own script (mlflow/server.sh), each the way a sweep trial logs (params and tags once,
one ``log_batch`` of ~25 metrics per evaluation). Every step of every run is counted
afterwards: none lost, none duplicated, and the server never answered "database is locked".
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from grokray import tracking

ROOT = Path(__file__).resolve().parents[2]
SERVER_SH = ROOT / "mlflow" / "server.sh"
N_TRIALS = 16
N_STEPS = 40
KEYS = [f"acc/{p}" for p in ("train", "train_inferred", "id_atomic", "ood_atomic", "train_augmented",
                              "test_inferred_id", "test_inferred_ood")] + \
       [f"loss/{p}" for p in ("train", "train_inferred", "id_atomic", "ood_atomic", "train_augmented",
                              "test_inferred_id", "test_inferred_ood")] + \
       ["param_norm", "lr", "train_loss"] + [f"lens/ood/m{i}" for i in range(8)]

TRIAL = """
import os, sys, time
from grokray import tracking
uri, exp, i, go, n_steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
keys = sys.argv[6].split(",")
client = tracking.get_client(uri)
while not os.path.exists(go):          # every trial starts logging at the same moment
    time.sleep(0.01)
run_id = tracking.start_run(client, exp, f"trial-{i}", tags={tracking.Tag.SWEEP: "load"})
tracking.log_params(client, run_id, {f"p{j}": j for j in range(30)})
for step in range(n_steps):
    tracking.log_metrics(client, run_id, step * 10, {k: (step + i) / 1000 for k in keys})
tracking.log_tags(client, run_id, {tracking.Tag.STOP_REASON: "max_steps"})
client.set_terminated(run_id)
print(run_id)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sixteen_trials_log_at_once_into_the_projects_server(tmp_path):
    port = free_port()
    data = tmp_path / "server"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MLFLOW_DATA_DIR": str(data),
           "MLFLOW_PORT": str(port), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for k in ("MLFLOW_HOST", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_PID_FILE",
              "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    start = subprocess.run(["bash", str(SERVER_SH), "start"], capture_output=True, text=True, env=env, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    uri = f"http://127.0.0.1:{port}"
    try:
        client = tracking.get_client(uri)
        exp = tracking.get_or_create_experiment(client, "load")
        go = tmp_path / "go"
        procs = [subprocess.Popen([sys.executable, "-c", TRIAL, uri, exp, str(i), str(go), str(N_STEPS),
                                   ",".join(KEYS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for i in range(N_TRIALS)]
        time.sleep(8)                       # let the processes import and connect
        go.write_text("go")
        outs = [p.communicate(timeout=600) for p in procs]
        errors = [f"trial {i}: exit {p.returncode}: {err.strip()[-400:]}" for i, (p, (_, err)) in
                  enumerate(zip(procs, outs)) if p.returncode != 0]
        assert not errors, "\n".join(errors)
        run_ids = [out.strip().splitlines()[-1] for out, _ in outs]
        assert len(set(run_ids)) == N_TRIALS
        lost, duplicated, total = [], [], 0
        expected = [s * 10 for s in range(N_STEPS)]
        for run_id in run_ids:
            for key in KEYS:
                steps = sorted(m.step for m in client.get_metric_history(run_id, key))
                total += len(steps)
                if len(steps) != len(set(steps)):
                    duplicated.append((run_id, key))
                if sorted(set(steps)) != expected:
                    lost.append((run_id, key, len(set(steps))))
        assert not lost and not duplicated, (lost[:5], duplicated[:5])
        assert all(client.get_run(r).info.status == "FINISHED" for r in run_ids)
        log = (data / "server.log").read_text()
        assert "database is locked" not in log.lower()
        assert total == N_TRIALS * N_STEPS * len(KEYS)     # every logged value, exactly once
    finally:
        subprocess.run(["bash", str(SERVER_SH), "stop"], capture_output=True, text=True, env=env, timeout=60)
