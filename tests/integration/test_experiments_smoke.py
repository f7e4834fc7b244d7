"""The experiments run as modules against the current MLflow contract.

``python -m experiments.calibration`` tabulates labelled runs through ``grokray.tracking`` (tags,
``verdict/*`` metrics, phase-map columns) and ``python -m experiments.default_trial --from-runs``
reads their milestones. One tiny trial trained by ``grokray train`` and labelled by the current
classifier stands in for the calibration sweeps (25 minutes), so the tabulation is checked
against what grokray writes today. The modules run from a temp working directory with the
repository root on ``PYTHONPATH``; nothing may land in ``experiments/results/`` or ``docs/``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY
from grokray import tracking
from grokray.classify import classify_run
from grokray.verdict import CLASSIFIER_VERSION, LABELS

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "results"
DOCS = ROOT / "docs" / "calibration"


def _env() -> dict:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=_env(),
                          timeout=timeout)


def _files(d: Path) -> list[Path]:
    return sorted(d.rglob("*"))


@pytest.fixture
def labelled_run(tmp_path, mlflow_uri):
    """One tiny trial (regime none, 1 block x 2 loops, seed 0) trained by `grokray train` and labelled."""
    sets = [a for o in TINY for a in ("--set", o)]
    out = run(["-m", "grokray", "train", *sets, "--experiment", "calib", "--tracking-uri", mlflow_uri], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    client = tracking.get_client(mlflow_uri)
    (r,) = client.search_runs([client.get_experiment_by_name("calib").experiment_id])
    classify_run(r.info.run_id, client=client, evidence="always")   # the table's evidence columns
    return r.info.run_id


@pytest.mark.parametrize("module", ["experiments.calibration", "experiments.default_trial"])
def test_help(module, tmp_path):
    out = run(["-m", module, "--help"], tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: python -m {module}")


def test_calibration_tabulates_labelled_runs(labelled_run, mlflow_uri, tmp_path):
    before = _files(RESULTS), _files(DOCS)
    plots, res = tmp_path / "plots", tmp_path / "res"
    out = run(["-m", "experiments.calibration", "--tracking-uri", mlflow_uri, "--sweep", "calib", "--out",
               str(plots), "--results-dir", str(res), "--result", "calib"], tmp_path)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert (_files(RESULTS), _files(DOCS)) == before, "a tabulation with --out/--results-dir wrote into the repo"

    doc = json.loads((res / "calib.json").read_text())
    (row,) = doc["rows"]
    assert row["run_id"] == labelled_run
    # the regime is the augmentation plus what differs from the default trial (TINY shrinks the graph)
    assert row["regime"].split()[0] == "none" and "n_entities=30" in row["regime"].split()
    assert row["data"] == row["regime"] and (row["model"], row["seed"]) == ("1x2", 0)
    assert row["label"] in LABELS and row["label_lens"] in LABELS and row["label_interchange"] in LABELS
    assert row["classifier_version"] == CLASSIFIER_VERSION and row["split"] == "ood"
    assert row["criterion"] == "interchange" and row["stop_reason"] and row["steps_run"] == 300
    for key in ("final_target_level", "shortcut_best", "interchange", "bridge_found", "bridge_given_correct",
                "causal_r1", "max_target", "train", "id", "ood", "confidence"):
        assert key in row, key
        assert row[key] is None or (math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0), (key, row[key])
    assert row["shortcut_best"] is not None and row["final_target_level"] is not None

    head = doc["table_markdown"].splitlines()[0]
    for column in ("label (lens)", "target held (max)", "shortcut best", "interchange"):
        assert f"| {column} |" in head, head
    assert f"| {row['regime']} | 1x2 | 0 | **{row['label']}** | {row['label_lens']} |" in doc["table_markdown"]
    assert f"classifier v{CLASSIFIER_VERSION}" in doc["classifier"]

    assert (plots / "ood_curves.png").stat().st_size > 0 and (plots / "phase_map_calib.png").stat().st_size > 0
    for name in ("curves", "interchange"):   # <regime as a file name>-L1x2-s0_<evidence>.png
        assert any(p.startswith("none_n_entities=30") and p.endswith(f"-L1x2-s0_{name}.png") for p in row["plots"]), \
            row["plots"]
    assert all((plots / p).exists() for p in row["plots"])

    # an older reference (written before classifier v2: no label_lens / interchange) still compares;
    # the v1 table's row for this cell, renamed to the tiny graph's regime so the two pair up
    ref = json.loads((RESULTS / "calibration.json").read_text())
    (old,) = [r for r in ref["rows"] if (r["regime"], r["model"]) == ("none", "1x2")]
    old["regime"] = row["regime"]
    (tmp_path / "ref.json").write_text(json.dumps({**ref, "rows": [old]}))
    out = run(["-m", "experiments.calibration", "--tracking-uri", mlflow_uri, "--sweep", "calib", "--out",
               str(tmp_path / "plots2"), "--results-dir", str(res), "--result", "calib2",
               "--compare-to", str(tmp_path / "ref.json")], tmp_path)
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "label (reference)" in out.stdout
    cmp_ = json.loads((res / "calib2.json").read_text())["comparison"]
    assert cmp_["compared"] == 1 and cmp_["pairs"][0]["label_lens"][0] is None
    assert cmp_["pairs"][0]["label_lens"][1] == row["label_lens"]


def test_calibration_without_runs_is_one_line(mlflow_uri, tmp_path):
    out = run(["-m", "experiments.calibration", "--tracking-uri", mlflow_uri, "--sweep", "nope", "--out",
               str(tmp_path / "p"), "--results-dir", str(tmp_path / "r")], tmp_path, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("error: no sweep or experiment named 'nope'"), lines


def test_default_trial_reads_milestones_from_runs(labelled_run, mlflow_uri, tmp_path):
    dest = tmp_path / "default_trial.json"
    out = run(["-m", "experiments.default_trial", "--from-runs", labelled_run, "--tracking-uri", mlflow_uri,
               "--out", str(dest)], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (m,) = json.loads(dest.read_text())["runs"]
    assert m["run_id"] == labelled_run and m["final_step"] == 300 and m["seed"] == 0
    assert m["t_memorize"] is None or 0 < m["t_memorize"] <= 300
    assert 0.0 <= m["final_train"] <= 1.0 and m["minutes_total"] > 0
