"""The grokray command line as a user runs it: real processes, exit codes, one-line errors."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY

GROKRAY = [sys.executable, "-m", "grokray"]
QUICKSTART = Path(__file__).resolve().parents[2] / "sweeps" / "quickstart.yaml"


def run(*args, cwd=None, env=None):
    return subprocess.run([*GROKRAY, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_data_json_prints_split_sizes():
    out = run("data", *sets(TINY), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["sizes"]["atomic"] == 30 * 4 and summary["name"].startswith("ds-")
    assert summary["sizes"]["train_inferred"] == round(2.0 * summary["sizes"]["id_atomic"])


def test_data_table():
    out = run("data", *sets(TINY))
    assert out.returncode == 0 and "train_inferred" in out.stdout and "test_inferred_ood" in out.stdout


def test_train_logs_a_run_to_the_local_store(tmp_path):
    out = run("train", *sets(TINY), "--set", "train.max_steps=40", "--experiment", "cli", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "step      40/40" in out.stdout and "done: max_steps after 40 steps" in out.stdout
    assert (tmp_path / "mlflow.db").exists()  # default store: sqlite in the working directory
    from grokray import tracking
    client = tracking.get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["grokray.steps_run"] == "40"
    assert runs[0].data.metrics["acc/train"] > 0


def test_train_from_yaml_with_out_dir_and_no_tracking(tmp_path):
    cfg = tmp_path / "trial.yaml"
    cfg.write_text("\n".join(["data: {n_entities: 30, n_relations: 6, out_degree: 4, phi: 2.0}",
                              "model: {d_model: 32, n_heads: 2, d_mlp: 64}",
                              "train: {max_steps: 10, precision: fp32, lens_sample: 8}"]))
    out = run("train", str(cfg), "--no-track", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "checkpoints" / "step_0000010.pt").exists()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("args, message", [
    (["data", "--set", "data.phi=40"], "grokray: error: data.phi: needs"),
    (["data", "--set", "data.augmentation=hop3_full"], "grokray: error: data.augmentation: unknown augmentation preset"),
    (["train", "--set", "train.lr=fast"], "grokray: error: train.lr: must be a number (got 'fast')"),
    (["train", "missing.yaml"], "grokray: error: missing.yaml: file not found"),
    (["data", "--set", "phi"], "grokray: error: --set: an override must look like key=value (got 'phi')"),
    (["phase-map", "x", "--tracking-uri", "bogus://x"], "grokray: error: tracking URI: not a tracking URI MLflow"),
    (["sweep", "run", str(QUICKSTART), "--name", "never", "--tracking-uri", "bogus://x"],
     "grokray: error: tracking URI: not a tracking URI MLflow"),
])
def test_user_errors_are_one_line_exit_2_no_traceback(args, message, tmp_path):
    out = run(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing half-written


def test_patching_of_one_checkpoint_writes_matrices_and_heatmaps(tmp_path):
    out = run("train", *sets(TINY), "--set", "train.max_steps=300", "--no-track", "--out", str(tmp_path / "run"),
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1]
    out = run("patching", str(ckpt), "--queries", "40", "--out", "p.json", "--png", "p.png", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    from grokray.circuits.patching import PatchingResult
    result = PatchingResult.from_json((tmp_path / "p.json").read_text())
    assert result.step == 300 and result.split == "train_inferred" and result.n_selected > 0
    assert set(result.matrices) == {"h", "r1", "r2"}
    for token, mat in result.matrices.items():
        assert mat.shape == (len(result.depth_names), 3)
        col = result.positions.index(token)
        # At the embedding, only the perturbed token's own position differs: patching it runs the
        # perturbed query (most answers flip), patching any other position changes nothing.
        assert mat[0, col] > 0.5 and all(mat[0, c] == 0 for c in range(3) if c != col), (token, mat)
        # Causal attention: positions before the perturbed token never see it.
        assert (mat[:, :col] == 0).all(), (token, mat)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "perturbed r1" in out.stdout and "heatmaps: p.png" in out.stdout

    bad = run("patching", str(ckpt), "--split", "id_atomic", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("grokray: error: --split: ")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("raise_, status", [(None, "FINISHED"), (RuntimeError("boom"), "FAILED"),
                                            (KeyboardInterrupt(), "KILLED")])
def test_every_training_run_ends_its_mlflow_runs_through_one_lifecycle(mlflow_uri, raise_, status):
    """`grokray train`, a sweep trial and each member of a pack end their runs through
    tracking.run_lifecycle: FINISHED, FAILED (any error, also while building), KILLED on Ctrl-C."""
    from grokray import tracking
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "lifecycle")
    ids = [tracking.start_run(client, exp, f"m{i}") for i in range(2)]
    with pytest.raises(type(raise_)) if raise_ is not None else contextlib.nullcontext():
        with tracking.run_lifecycle(client, ids):
            if raise_ is not None:
                raise raise_
    assert [client.get_run(i).info.status for i in ids] == [status, status]
