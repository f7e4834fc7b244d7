"""Helpers of the end-to-end sweep tests: specs on the tiny base, ``grokray`` as a user runs it (its
own process, its own process group), and readers of the MLflow store and of Tune's trial folders."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from grokray import tracking
from grokray.train import eval_steps

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests" / "specs" / "tiny_base.yaml"


def write_spec(tmp_path: Path, name: str, **fields) -> Path:
    spec = {"name": name, "base": str(BASE), "storage": str(tmp_path / "results"), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def env_for(uri: str) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "GROKRAY_CHECKPOINT_EVERY_S": "1",
            "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}


def grokray(*args, uri: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grokray", *args], capture_output=True, text=True, cwd=cwd,
                          env=env_for(uri), timeout=timeout)


def start(*args, uri: str, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grokray", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, cwd=cwd, env=env_for(uri), start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    time.sleep(2)  # let the killed Ray processes release their ports


def child_runs(uri: str, sweep: str) -> list:
    client = tracking.get_client(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    flt = f"tags.`grokray.sweep` = '{sweep}' and tags.`grokray.kind` = 'trial'"
    return list(tracking.iter_runs(client, exps, flt))


def parent_run(uri: str, sweep: str):
    client = tracking.get_client(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, f"tags.`grokray.sweep` = '{sweep}' and tags.`grokray.kind` = 'sweep'")
    assert len(runs) == 1
    return runs[0]


def assert_steps_complete_and_unique(uri: str, run, max_steps: int = None):
    """Every evaluation step of the trial logged exactly once, none missing."""
    client = tracking.get_client(uri)
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "acc/train")]
    assert len(steps) == len(set(steps)), f"duplicated steps in {run.info.run_name}"
    ran = int(run.data.tags["grokray.steps_run"])
    base = yaml.safe_load(BASE.read_text())["train"]
    expected = [s for s in eval_steps(max_steps or base["max_steps"], base["eval_per_decade"],
                                      base["eval_max_interval"]) if s <= ran]
    assert sorted(steps) == expected, f"missing steps in {run.info.run_name}"
    return steps


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()[-3000:]}" if log else ""))


def trial_dirs(tmp_path: Path, sweep: str) -> list[Path]:
    root = tmp_path / "results" / sweep
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "result.json").exists()) if root.exists() else []


def results_of(trial_dir: Path) -> list[dict]:
    lines = (trial_dir / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def has_checkpoint(trial_dir: Path) -> bool:
    return any(p.name.startswith("checkpoint_") for p in trial_dir.iterdir())


def kill_with_one_done_one_mid_run(proc, log: Path, tmp_path: Path, uri: str, sweep: str, max_steps: int,
                                   labelled: bool = False) -> None:
    """Kill the driver ``proc`` (its process group) once one trial run has finished (and been
    labelled, with ``labelled``) and another has a checkpoint short of ``max_steps`` and no stop
    reason yet: the state a resume must continue from."""
    def one_done_one_checkpointed():
        done = [r for r in child_runs(uri, sweep)
                if r.info.status == "FINISHED" and (not labelled or "grokray.label" in r.data.tags)]
        running = [d for d in trial_dirs(tmp_path, sweep)
                   if has_checkpoint(d) and results_of(d)[-1].get("step", 0) < max_steps
                   and "stop_reason" not in results_of(d)[-1]]
        return len(done) >= 1 and len(running) >= 1

    try:
        wait_for(one_done_one_checkpointed, 300, "one finished trial and one checkpointed running trial", proc, log)
    finally:
        kill_group(proc)
