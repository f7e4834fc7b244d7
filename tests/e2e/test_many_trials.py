"""Sweeps at the sizes the mission is about, on a real local Ray and a real MLflow store.

* a packed sweep: 6 tiny trials in packs of 3; every member its own labelled child run with the
  solo run's params, metrics, tags and checkpoints, plus its pack and slot; the phase map sees
  no difference (default suite);
* 200 tiny trials end to end: 200 child runs, each labelled exactly once, the phase map complete
  (``-m slow``);
* kill the driver and resume, ten times in a row: every try completes (``-m slow``).
"""
from __future__ import annotations

import json
import random
import time

import pytest

from grokray import tracking
from grokray.phasemap import phase_map
from sweep_helpers import (child_runs, grokray, has_checkpoint, kill_group, parent_run, results_of, start, trial_dirs,
                        wait_for, write_spec)


def test_a_packed_sweep_keeps_every_member_a_first_class_run(tmp_path, mlflow_uri):
    spec = write_spec(tmp_path, "packed", parameters={"seed": {"values": [0, 1, 2]},
                                                      "train.lr": {"values": [0.003, 0.001]}},
                      resources={"cpu": 1, "gpu": 0, "pack": 3}, max_concurrent=2, max_steps=150)
    val = grokray("sweep", "validate", str(spec), uri=mlflow_uri, cwd=tmp_path)
    assert val.returncode == 0 and "packed 6 trial(s) into 2 pack(s) of at most 3" in val.stdout, val.stdout
    out = grokray("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "packed 6 trial(s) into 2 pack(s)" in out.stdout
    runs = child_runs(mlflow_uri, "packed")
    client = tracking.get_client(mlflow_uri)
    assert len(runs) == 6 and len({r.data.tags["grokray.pack"] for r in runs}) == 2
    assert sorted(r.data.tags["grokray.pack_slot"] for r in runs) == ["0", "0", "1", "1", "2", "2"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["grokray.label"]
        assert len(client.get_metric_history(r.info.run_id, "verdict/confidence")) == 1       # labelled once
        assert {"data.phi", "model.n_params", "train.lr", "seed"} <= set(r.data.params)
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "acc/train")]
        assert steps == sorted(set(steps)) and steps[-1] == 150
        assert r.data.metrics["shortcut/best/ood"] >= 0
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"history.json", "trial.yaml", "curves.png", "checkpoints", "verdict"} <= arts
    # a member's checkpoint is a solo checkpoint: the usual tools read it
    one = runs[0].info.run_id
    pat = grokray("patching", one, "--queries", "20", "--png", str(tmp_path / "p.png"), "--out",
                  str(tmp_path / "p.json"), uri=mlflow_uri, cwd=tmp_path)
    assert pat.returncode == 0, pat.stderr[-2000:]
    df = phase_map("packed", mlflow_uri)
    assert len(df) == 6 and df["label"].notna().all() and set(df.attrs["params"]) == {"seed", "train.lr"}
    assert parent_run(mlflow_uri, "packed").info.status == "FINISHED"


@pytest.mark.slow
def test_two_hundred_trials_end_to_end(tmp_path, mlflow_uri):
    spec = write_spec(tmp_path, "many", parameters={"seed": {"values": list(range(50))},
                                                    "train.lr": {"values": [0.003, 0.001, 0.0003, 0.0001]}},
                      max_concurrent=2, max_steps=30)
    t0 = time.monotonic()
    out = grokray("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path, timeout=3600)
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = child_runs(mlflow_uri, "many")
    client = tracking.get_client(mlflow_uri)
    assert len(runs) == 200 and all(r.info.status == "FINISHED" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "verdict/confidence")) == 1 for r in runs)
    df = phase_map("many", mlflow_uri)
    assert len(df) == 200 and df["label"].notna().all()
    # the progress stayed a summary: no table of 200 rows was ever printed
    assert max(len(block.splitlines()) for block in out.stdout.split("[grokray] ")) < 12
    (tmp_path / "wall.json").write_text(json.dumps({"trials": 200, "seconds": wall}))
    print(f"200-trial sweep: {wall:.0f} s wall")


@pytest.mark.slow
def test_kill_the_driver_and_resume_ten_times_in_a_row(tmp_path, mlflow_uri):
    completed = 0
    rng = random.Random(0)
    for attempt in range(10):
        name = f"again{attempt}"
        spec = write_spec(tmp_path, name, parameters={"seed": {"values": [0, 1, 2]}}, max_concurrent=1,
                          max_steps=400)
        log = tmp_path / f"{name}.log"
        proc = start("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path, log=log)
        target = rng.choice(["checkpointed", "one done"])

        def ready():
            dirs = trial_dirs(tmp_path, name)
            if target == "checkpointed":
                return any(has_checkpoint(d) and results_of(d)[-1].get("step", 0) < 400 for d in dirs)
            return any(r.info.status == "FINISHED" for r in child_runs(mlflow_uri, name))

        try:
            wait_for(ready, 600, f"{target} in attempt {attempt}", proc, log)
        finally:
            kill_group(proc)
        out = grokray("sweep", "resume", name, "--storage", str(tmp_path / "results"), uri=mlflow_uri, cwd=tmp_path)
        runs = child_runs(mlflow_uri, name)
        ok = (out.returncode == 0 and len(runs) == 3 and all(r.info.status == "FINISHED" and "grokray.label" in
                                                             r.data.tags for r in runs))
        completed += ok
        print(f"attempt {attempt} ({target}): {'resumed' if ok else 'FAILED: ' + out.stderr[-500:]}")
    assert completed == 10, f"{completed}/10 resumes completed"
