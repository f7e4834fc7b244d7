"""The sweep service end to end: real local Ray, a real MLflow store, real Optuna, real processes.

Every driver runs as ``grokray sweep ...`` in its own process group, as a user runs it,
so a test can kill it (or one of its trial workers) and resume.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from grokray import tracking
from sweep_helpers import (BASE, ROOT, assert_steps_complete_and_unique, child_runs, grokray, has_checkpoint,  # noqa: F401
                           kill_group, kill_with_one_done_one_mid_run, parent_run, results_of, start, trial_dirs,
                           wait_for, write_spec)

# --------------------------------------------------------------------------- tests

def test_four_trial_sweep_parent_children_labels_map(tmp_path, mlflow_uri):
    spec = write_spec(tmp_path, "four", parameters={"data.augmentation": {"values": ["none", "both_full"]},
                                                    "seed": {"values": [0, 1]}}, max_concurrent=2)
    out = grokray("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parent = parent_run(mlflow_uri, "four")
    runs = child_runs(mlflow_uri, "four")
    assert len(runs) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"augmentation={a},seed={s}" for a in ("none", "both_full") for s in (0, 1))
    client = tracking.get_client(mlflow_uri)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["grokray.label"] in ("true_grokking", "fake_grokking", "no_grokking")
        assert r.data.tags["grokray.classifier_version"] and r.data.params["data.augmentation"] in ("none",
                                                                                                   "both_full")
        assert len(client.get_metric_history(r.info.run_id, "verdict/confidence")) == 1  # labelled once
        assert_steps_complete_and_unique(mlflow_uri, r)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "phase_map")} >= {
        "phase_map/phase_map.png", "phase_map/phase_map.csv"}
    assert "[grokray] label:" in out.stdout and "phase map:" in out.stdout
    assert (tmp_path / "results" / "four" / "phase_map.png").stat().st_size > 1000   # the sweep's folder
    assert list(tmp_path.glob("*.png")) == []                                         # not the working dir
    # the UI hint links the sweep's saved view, which is on the experiment
    view = tracking.runs_view_link(parent.info.experiment_id, "grokray-four")
    assert f"then open http://127.0.0.1:5000/{view}" in out.stdout
    assert "mlflow.sharedViewState.grokray-four" in client.get_experiment(parent.info.experiment_id).tags
    note = parent.data.tags["mlflow.note.content"]     # the kind's reading, after the sweep's description
    assert "**Reading the results.**" in note and "`grokray.label` true_grokking" in note and "phase_map/" in note

    status = grokray("sweep", "status", "four", "--storage", str(tmp_path / "results"), uri=mlflow_uri, cwd=tmp_path)
    assert status.returncode == 0 and "4 trial run(s)" in status.stdout and "finished 4" in status.stdout
    assert sum(line.count("_grokking") for line in status.stdout.splitlines()) == 4
    assert all(r.info.run_name in status.stdout for r in child_runs(mlflow_uri, "four"))   # whole names, not cut
    assert f"then open http://127.0.0.1:5000/{view}" in status.stdout

    again = grokray("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert len(child_runs(mlflow_uri, "four")) == 4  # nothing overwritten


def test_a_diverging_trial_ends_labelled_and_the_sweep_goes_on(tmp_path, mlflow_uri):
    spec = write_spec(tmp_path, "div", parameters={"train.lr": {"values": [3.0e-3, 1.0e30]},
                                                   "train.warmup_steps": {"value": 0}},
                      max_steps=100, max_concurrent=2)
    out = grokray("sweep", "run", str(spec), "--no-map", uri=mlflow_uri, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = {float(r.data.params["train.lr"]): r for r in child_runs(mlflow_uri, "div")}
    assert set(runs) == {3.0e-3, 1.0e30}
    bad, good = runs[1.0e30], runs[3.0e-3]
    assert bad.info.status == good.info.status == "FINISHED"
    assert bad.data.tags["grokray.stop_reason"] == "diverged" and int(bad.data.tags["grokray.steps_run"]) < 100
    assert bad.data.tags["grokray.label"] == "no_grokking" and bad.data.tags["grokray.detail"] == "diverged"
    assert good.data.tags["grokray.steps_run"] == "100" and good.data.tags["grokray.label"] in (
        "true_grokking", "fake_grokking", "no_grokking")
    assert "FAILED" not in out.stdout


def test_kill_driver_and_resume(tmp_path, mlflow_uri):
    spec = write_spec(tmp_path, "resumable", parameters={"seed": {"values": [0, 1, 2]}}, max_concurrent=1,
                      max_steps=700)
    log = tmp_path / "driver.log"
    proc = start("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path, log=log)
    kill_with_one_done_one_mid_run(proc, log, tmp_path, mlflow_uri, "resumable", max_steps=700, labelled=True)
    killed_at = time.time() * 1000
    before = {r.info.run_id: r for r in child_runs(mlflow_uri, "resumable")}
    finished_before = {rid for rid, r in before.items() if r.info.status == "FINISHED"}

    out = grokray("sweep", "resume", "resumable", "--storage", str(tmp_path / "results"), uri=mlflow_uri,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # the resumed driver's counts include the labels given before the kill ("labels: no 2, true 1")
    counts = re.findall(r"labels: ([^|]+?) \|", out.stdout)[-1]
    assert sum(int(c.split()[-1]) for c in counts.split(", ")) == 3, out.stdout[-2000:]
    runs = child_runs(mlflow_uri, "resumable")
    assert len(runs) == 3 and set(before) <= {r.info.run_id for r in runs}  # no run duplicated
    client = tracking.get_client(mlflow_uri)
    for r in runs:
        assert r.info.status == "FINISHED" and "grokray.label" in r.data.tags
        assert len(client.get_metric_history(r.info.run_id, "verdict/confidence")) == 1  # labelled exactly once
        assert_steps_complete_and_unique(mlflow_uri, r, max_steps=700)
        if r.info.run_id in finished_before:  # not rerun: nothing logged after the kill
            hist = client.get_metric_history(r.info.run_id, "acc/train")
            assert max(m.timestamp for m in hist) < killed_at
    # The interrupted trial continued from its checkpoint instead of restarting from scratch.
    restored = [d for d in trial_dirs(tmp_path, "resumable")
                if any(res.get("iterations_since_restore", 0) < res.get("training_iteration", 0)
                       for res in results_of(d))]
    assert restored, "no trial was restored from a checkpoint"
    assert parent_run(mlflow_uri, "resumable").info.status == "FINISHED"


def test_ctrl_c_says_interrupted_and_resume_finishes(tmp_path, mlflow_uri):
    """Ctrl-C (SIGINT to the driver's process group): Ray Tune saves its state and returns normally,
    so the driver must tell an interrupted sweep from a finished one (it said "done" before)."""
    spec = write_spec(tmp_path, "ctrlc", parameters={"seed": {"values": [0, 1]}}, max_concurrent=1,
                      max_steps=1000)

    def first_trial_running():
        dirs = trial_dirs(tmp_path, "ctrlc")
        return bool(dirs) and 0 < (results_of(dirs[0]) or [{}])[-1].get("step", 0) < 1000

    log = tmp_path / "driver.log"
    proc = start("sweep", "run", str(spec), "--no-map", uri=mlflow_uri, cwd=tmp_path, log=log)
    try:
        wait_for(first_trial_running, 300, "a running trial", proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    text = log.read_text()
    assert code == 130, text[-3000:]
    (line,) = [ln for ln in text.splitlines() if "interrupted after" in ln]
    assert "not; continue with `grokray sweep resume ctrlc`" in line and "done:" not in text
    assert parent_run(mlflow_uri, "ctrlc").info.status == "KILLED"
    time.sleep(2)   # let the interrupted Ray release its ports

    out = grokray("sweep", "resume", "ctrlc", "--storage", str(tmp_path / "results"), uri=mlflow_uri, cwd=tmp_path)
    assert out.returncode == 0 and "sweep 'ctrlc' done: 2 trial(s), 0 failed" in out.stdout, \
        out.stdout[-3000:] + out.stderr[-3000:]
    runs = child_runs(mlflow_uri, "ctrlc")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" and "grokray.label" in r.data.tags for r in runs)
    assert parent_run(mlflow_uri, "ctrlc").info.status == "FINISHED"


def test_killed_trial_worker_restarts_from_checkpoint(tmp_path, mlflow_uri):
    spec = write_spec(tmp_path, "faulty", parameters={"seed": {"values": [0]}}, max_steps=700, max_failures=2)
    log = tmp_path / "driver.log"
    proc = start("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path, log=log)
    victim = {}

    def checkpointed_mid_run():
        dirs = trial_dirs(tmp_path, "faulty")
        if dirs and has_checkpoint(dirs[0]):
            last = results_of(dirs[0])[-1]
            if 100 <= last.get("step", 0) < 600:
                victim["pid"], victim["step"] = last["pid"], last["step"]
                return True
        return False

    try:
        wait_for(checkpointed_mid_run, 300, "a checkpointed trial in mid-run", proc, log)
        os.kill(victim["pid"], signal.SIGKILL)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            kill_group(proc)
    (run,) = child_runs(mlflow_uri, "faulty")
    assert run.info.status == "FINISHED" and "grokray.label" in run.data.tags
    assert int(run.data.tags["grokray.steps_run"]) == 700
    assert_steps_complete_and_unique(mlflow_uri, run, max_steps=700)
    results = results_of(trial_dirs(tmp_path, "faulty")[0])
    assert len({r["pid"] for r in results}) == 2  # a second worker took over
    after_restart = [r for r in results if r["pid"] != victim["pid"]]
    assert after_restart[0]["iterations_since_restore"] < after_restart[0]["training_iteration"]
    assert "restarting from its last checkpoint" in log.read_text()


def test_optuna_sweep_with_real_optuna(tmp_path, mlflow_uri):
    # The spec names another store: --tracking-uri must win over it (as `sweep submit` relies on).
    wrong = tmp_path / "not-this.db"
    spec = write_spec(tmp_path, "tpe", method="optuna", num_samples=2, max_concurrent=2,
                      parameters={"train.weight_decay": {"distribution": "log_uniform", "min": 0.01, "max": 1.0}},
                      metric={"name": "acc/train", "mode": "max"}, classifier={"enabled": False},
                      tracking={"uri": f"sqlite:///{wrong}"})
    out = grokray("sweep", "run", str(spec), "--no-map", "--tracking-uri", mlflow_uri, uri="sqlite:///" + str(wrong),
                  cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert not wrong.exists()
    runs = child_runs(mlflow_uri, "tpe")
    assert len(runs) == 2
    wds = [float(r.data.params["train.weight_decay"]) for r in runs]
    assert all(0.01 <= w <= 1.0 for w in wds) and wds[0] != wds[1]
    assert all(r.info.run_name.startswith("weight_decay=") for r in runs)
    assert all("grokray.label" not in r.data.tags for r in runs)  # classifier disabled


def test_resume_and_status_of_unknown_sweep(tmp_path, mlflow_uri):
    for cmd in (["sweep", "resume", "nope"], ["sweep", "status", "nope"]):
        out = grokray(*cmd, "--storage", str(tmp_path / "results"), uri=mlflow_uri, cwd=tmp_path, timeout=120)
        assert out.returncode == 2 and out.stderr.startswith("grokray: error: no sweep 'nope'")


def test_a_sweep_started_elsewhere_is_followed_live(tmp_path, mlflow_uri):
    """Issue 24: a sweep started in the background is followed with `sweep status NAME --follow` (the same
    progress lines as `sweep run`) and its progress read back with `sweep logs NAME`, no --address."""
    spec = write_spec(tmp_path, "followed", parameters={"seed": {"values": [0, 1]}}, max_concurrent=1,
                      max_steps=300)
    proc = start("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path, log=tmp_path / "driver.log")
    try:
        wait_for(lambda: (tmp_path / "results" / "followed" / "grokray_sweep.json").exists(), 120,
                 "the sweep's state", proc, tmp_path / "driver.log")
        followed = grokray("sweep", "status", "followed", "--follow", "--storage", str(tmp_path / "results"),
                           uri=mlflow_uri, cwd=tmp_path, timeout=400)
        assert followed.returncode == 0, followed.stderr[-2000:]
        out = followed.stdout
        assert "trial run(s)" in out and "| trials:" in out                        # the table, then the progress
        assert out.count("[grokray] finished") >= 1 and "the sweep is no longer running" in out
        proc.wait(timeout=120)
    finally:
        kill_group(proc)
    logs = grokray("sweep", "logs", "followed", "--storage", str(tmp_path / "results"), uri=mlflow_uri, cwd=tmp_path)
    assert logs.returncode == 0 and logs.stdout.count("[grokray] finished") == 2, logs.stdout[-2000:]
    assert logs.stdout.count("[grokray] label:") == 2 and "2 done" in logs.stdout
    # the example notebook (experiments/phase_map_notebook.py) runs top to bottom on this sweep
    import subprocess
    import sys
    nb = subprocess.run([sys.executable, str(ROOT / "experiments" / "phase_map_notebook.py")], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "GROKRAY_STORE": mlflow_uri, "GROKRAY_SWEEP": "followed",
                             "GROKRAY_NOTEBOOK_OUT": str(tmp_path)})
    assert nb.returncode == 0, nb.stderr[-2000:]
    assert "2 runs, 2 cells" in nb.stdout and "graph_labels" in nb.stdout
    assert (tmp_path / "notebook_phase_map.png").stat().st_size > 1000
    assert (tmp_path / "notebook_phases.png").stat().st_size > 1000
    assert (tmp_path / "notebook_curves.png").stat().st_size > 1000


def test_method_boundary_runs_like_any_sweep_and_says_why_it_chose_each_point(tmp_path, mlflow_uri):
    """Issue 21: method boundary on Ray Tune: the search proposes at most num_samples trials, each run
    carries the search's reason, and a search that ends within its budget is a finished sweep."""
    spec = write_spec(tmp_path, "bnd", method="boundary", max_steps=60, max_concurrent=2, num_samples=5,
                      # 9 values: a coarse design of 3 per facet (every 4th), 6 in all, over the budget of 5
                      parameters={"train.weight_decay": {"values": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]},
                                  "data.augmentation": {"values": ["none", "both_full"]}},
                      classifier={"enabled": False})
    out = grokray("sweep", "run", str(spec), "--no-map", uri=mlflow_uri, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = child_runs(mlflow_uri, "bnd")
    assert len(runs) == 5 and parent_run(mlflow_uri, "bnd").info.status == "FINISHED"
    reasons = [r.data.tags["grokray.search_reason"] for r in runs]
    assert all(re.match(r"trial \d/5: coarse design", x) for x in reasons), reasons
    assert {r.data.params["data.augmentation"] for r in runs} == {"none", "both_full"}   # facets, in turn
    assert "at most 5 trial(s) (boundary)" in out.stdout
    # the phase map shows which points the search chose and why (a column, and the table's summary line)
    table = grokray("phase-map", "bnd", "--csv", str(tmp_path / "bnd.csv"), uri=mlflow_uri, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "boundary search: 5 point(s) chosen: 5 coarse design" in table.stdout, table.stdout
    import pandas as pd
    assert sorted(pd.read_csv(tmp_path / "bnd.csv")["search_reason"]) == sorted(reasons)
    # the search's whole map: every grid point of both facets, the five runs' points marked as runs,
    # the same from the live state folder and from the parent run's artifact logged at the end
    smap = grokray("phase-map", "bnd", "--search", "--storage", str(tmp_path / "results"), "--csv",
                   str(tmp_path / "search.csv"), "--png", str(tmp_path / "search.png"), uri=mlflow_uri, cwd=tmp_path)
    assert smap.returncode == 0, smap.stderr
    assert (tmp_path / "search.png").stat().st_size > 5000
    assert "18 grid point(s): 5 from runs," in smap.stdout, smap.stdout
    assert "[data.augmentation=none]" in smap.stdout and "[data.augmentation=both_full]" in smap.stdout
    live = pd.read_csv(tmp_path / "search.csv", keep_default_na=False, na_values=[""])
    assert len(live) == 18 and (live["source"] == "run").sum() == 5 and not live["in_flight"].any()
    ran = {(float(r.data.params["train.weight_decay"]), r.data.params["data.augmentation"]) for r in runs}
    assert set(zip(live.loc[live["source"] == "run", "train.weight_decay"],
                   live.loc[live["source"] == "run", "data.augmentation"])) == ran
    assert live.loc[live["source"] == "run", "reason"].str.startswith("coarse design").all()
    from grokray.sweep.driver import find_sweep
    from grokray import search_map          # the Python API (grokray.search_map), by sweep name
    _, exp_dir = find_sweep("bnd", storage=str(tmp_path / "results"))
    exp_dir.rename(exp_dir.with_name("bnd-moved"))      # only the parent run's copy is left
    logged = search_map("bnd", tracking_uri=mlflow_uri)
    assert logged[["train.weight_decay", "data.augmentation", "search_label", "source"]].values.tolist() == \
        live[["train.weight_decay", "data.augmentation", "search_label", "source"]].values.tolist()


def test_the_adaptive_map_beside_the_grid_s_reproduces_the_grid_s_runs(tmp_path, mlflow_uri):
    """Issue 21 item 3 at test scale: a grid and a boundary search over the same space in one store;
    experiments.adaptive_vs_grid pairs every adaptive run with the grid's run at its config (CPU
    training is deterministic: the same run, step for step, so the same label, phase and times) and
    scores the search's whole map against the grid's, point by point."""
    space = {"train.weight_decay": {"values": [0.01, 0.1, 1.0]}, "data.augmentation": {"values": ["none", "both_full"]}}
    common = dict(max_steps=60, max_concurrent=2, parameters=space, classifier={"evidence": "never"})
    for name, method, extra in (("g", "grid", {}), ("b", "boundary", {"num_samples": 4, "boundary": {"min_coarse": 2}})):
        out = grokray("sweep", "run", str(write_spec(tmp_path, name, method=method, **common, **extra)), "--no-map",
                      uri=mlflow_uri, cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    res = subprocess.run([sys.executable, "-m", "experiments.adaptive_vs_grid", "--tracking-uri", mlflow_uri,
                          "--grid", "g", "--sweep", "b", "--storage", str(tmp_path / "results"),
                          "--replay-spec", str(tmp_path / "b.yaml"),
                          "--out", str(tmp_path / "cmp.json"), "--png", str(tmp_path / "cmp.png")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "cmp.json").read_text())
    assert (r["grid"]["trials"], r["adaptive"]["trials"]) == (6, 4)
    assert r["runs"]["matched"] == 4 and r["runs"]["identical"] == 4, r["runs"]["differences"]
    assert r["map"]["points"] == 6 and r["map"]["scored"] == 6
    # the live search proposed what its replay on the grid's runs proposes, point for point, reason for reason
    assert (r["proposals"]["compared"], r["proposals"]["same_point"], r["proposals"]["same_reason"]) == (4, 4, 4)
    assert r["proposals"]["same_points_any_order"] and r["proposals"]["facets_in_same_order"] == "2 of 2"
    # replayed in the order the live trials finished (their runs' end times): the same, whatever the clock did
    live_order = r["proposals_in_live_order"]
    assert (live_order["compared"], live_order["same_point"], live_order["same_reason"]) == (4, 4, 4)
    for f in r["map"]["facets"].values():                 # each facet: the two ends run, the middle inferred
        assert f["points"] == 3 and f["runs"] == 2
    wrong = [d for f in r["map"]["facets"].values() for d in f["disagree"]]
    assert r["map"]["agree"] >= 4 and not [d for d in wrong if d["source"] == "run"], wrong   # a run point is the grid's
    assert (tmp_path / "cmp.png").stat().st_size > 5000
    bad = subprocess.run([sys.executable, "-m", "experiments.adaptive_vs_grid", "--tracking-uri", mlflow_uri,
                          "--grid", "g", "--sweep", "g"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "is a grid sweep" in bad.stderr and "Traceback" not in bad.stderr


def test_a_killed_boundary_sweep_resumes_the_same_search(tmp_path, mlflow_uri):
    """Issue 21: the searcher's state survives a killed driver. Killed with one trial finished and
    one checkpointed mid-run, `grokray sweep resume` continues that trial and the same search:
    no point proposed twice, the proposals numbered on from where they were, the refinement
    proposed by the restored search, and its whole map resolved at the end."""
    spec = write_spec(tmp_path, "bres", method="boundary", max_steps=700, max_concurrent=1, num_samples=5,
                      parameters={"train.weight_decay": {"values": [0.01, 0.1, 1.0, 10.0, 100.0]}},
                      boundary={"min_coarse": 2}, classifier={"evidence": "never"})
    log = tmp_path / "driver.log"
    proc = start("sweep", "run", str(spec), uri=mlflow_uri, cwd=tmp_path, log=log)
    kill_with_one_done_one_mid_run(proc, log, tmp_path, mlflow_uri, "bres", max_steps=700)
    before = {r.info.run_id for r in child_runs(mlflow_uri, "bres")}
    out = grokray("sweep", "resume", "bres", "--storage", str(tmp_path / "results"), uri=mlflow_uri, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = child_runs(mlflow_uri, "bres")
    assert before <= {r.info.run_id for r in runs}                                 # no run started again
    wds = [float(r.data.params["train.weight_decay"]) for r in runs]
    assert len(wds) == len(set(wds)) and 2 <= len(runs) <= 5, wds                   # no point proposed twice
    numbers = sorted(int(re.match(r"trial (\d)/5: ", r.data.tags["grokray.search_reason"]).group(1)) for r in runs)
    assert numbers == list(range(1, len(runs) + 1)), numbers                        # numbered on, not restarted
    assert {0.01, 100.0} <= set(wds)                                               # the coarse design: the two ends
    smap = grokray("phase-map", "bres", "--search", "--storage", str(tmp_path / "results"), "--json",
                   uri=mlflow_uri, cwd=tmp_path)
    rows = [json.loads(line) for line in smap.stdout.splitlines()]
    assert len(rows) == 5 and not any(r["in_flight"] for r in rows)
    assert sum(r["source"] == "run" for r in rows) == len(runs)
    assert {r["source"] for r in rows} <= {"run", "inferred", "cell"}, rows         # every point resolved
    labels = {float(r["train.weight_decay"]): r["search_label"] for r in rows if r["source"] == "run"}
    if labels[0.01] != labels[100.0]:                       # the ends differ: the restored search refined between
        assert len(runs) >= 3 and any("refine" in r.data.tags["grokray.search_reason"] for r in runs)
    assert parent_run(mlflow_uri, "bres").info.status == "FINISHED"
