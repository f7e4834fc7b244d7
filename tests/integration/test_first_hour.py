"""Issue 24, the first hour of a new researcher: no traps between README and a phase map in a notebook.

Each test runs what a newcomer types (the CLI in its own process, or the Python API) and asserts
on the one line they read and on the files left behind."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import grokray
from grokray.config import ConfigError, load_trial_config
from grokray.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "grokray", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def one_line_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_a_notebook_in_a_folder_without_a_store_gets_a_hint_and_no_stray_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError) as err:
        grokray.phase_map("my-map")
    msg = str(err.value)
    assert "no MLflow store at" in msg and str(tmp_path / "mlflow.db") in msg and "tracking_uri=" in msg
    assert "MLFLOW_TRACKING_URI" in msg and "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == []                   # no mlflow.db, no .lock
    with pytest.raises(ConfigError, match="no MLflow store"):
        grokray.transfer_map("my-transfer")
    # and the CLI in that folder still says there is no store
    one_line_error(run("phase-map", "my-map", cwd=tmp_path), "no MLflow store at", "--tracking-uri")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_numbers_are_numbers_however_yaml_1_1_spells_them(tmp_path):
    spec = tmp_path / "wd.yaml"
    spec.write_text("name: wd\nparameters:\n  train.weight_decay: {values: [1e-2, 1, 10]}\n"
                    "  train.lr: {value: 3E-3}\nmax_steps: 2e3\n")
    s = load_spec(spec)
    assert [c["train.weight_decay"] for c in s.grid()] == [0.01, 1, 10]
    assert s.trial_config(s.grid()[0]).train.weight_decay == 0.01 and s.budget == 2000
    assert s.trial_config(s.grid()[0]).train.lr == 0.003
    cfg = load_trial_config(None, ["train.weight_decay=1e-2", "train.max_steps=3E4"])
    assert cfg.train.weight_decay == 0.01 and cfg.train.max_steps == 30000
    with pytest.raises(ConfigError, match="train.max_steps: must be an integer"):
        load_trial_config(None, ["train.max_steps=1.5e3x"])


def test_validate_says_what_it_filled_in_and_refuses_null(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: bare\nparameters:\n  seed: {values: [0, 1]}\n")
    out = run("sweep", "validate", str(bare), cwd=tmp_path)
    assert out.returncode == 0
    assert "filled in from defaults: base: grokray's built-in trial defaults" in out.stdout
    assert "max_steps: 12000 (the base's train.max_steps)" in out.stdout
    shipped = run("sweep", "validate", str(ROOT / "sweeps" / "phase-map.yaml"), cwd=tmp_path)
    assert "base:" not in shipped.stdout.split("filled in from defaults:")[-1]     # it names its base
    nulled = tmp_path / "null.yaml"
    nulled.write_text("name: n\nbase: {data: {augmentation: null}}\n")
    one_line_error(run("sweep", "validate", str(nulled), cwd=tmp_path), "base.data.augmentation", "needs a value")
    trial = tmp_path / "trial.yaml"
    trial.write_text("data:\n  augmentation:\n")
    one_line_error(run("data", str(trial), cwd=tmp_path), "data.augmentation: needs a value", "'none'")
    missing = tmp_path / "m.yaml"
    missing.write_text("name: m\nbase: trials/nothere.yaml\n")
    one_line_error(run("sweep", "validate", str(missing), cwd=tmp_path),
                   f"not found at {tmp_path / 'trials' / 'nothere.yaml'}")


def test_a_sweep_cell_is_inspected_directly(tmp_path):
    spec = ROOT / "sweeps" / "phase-map.yaml"
    one_line_error(run("data", str(spec), cwd=tmp_path), "is a sweep spec, not a trial config", "--cell K")
    cells = run("sweep", "validate", "--cells", str(spec), cwd=tmp_path)
    assert "cell  119: data.seed=1, train.weight_decay=3.0, data.augmentation=hop2_full, data.phi=18.0" in cells.stdout
    out = run("data", str(spec), "--cell", "7", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import json
    summary = json.loads(out.stdout)
    cell = load_spec(spec).grid()[7]
    assert summary["config"]["phi"] == cell["data.phi"] and summary["augmentation"] == cell["data.augmentation"]
    assert "cell 7:" in out.stderr and "shortcuts" in summary
    one_line_error(run("data", str(spec), "--cell", "120", cwd=tmp_path), "--cell", "0..119")


def test_the_docs_name_only_files_that_exist():
    """Every repository path README.md and docs/*.md name in backticks or links exists."""
    import re

    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for m in re.finditer(r"(?:`|\()((?:sweeps|docs|experiments|benchmarks|tests|grokray|mlflow)/[\w./-]+)", text):
            path = m.group(1).rstrip(".,)`")
            if "<" in path or "*" in path or path.endswith("/"):
                continue
            if not (ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_trial_configs_cite_readme_sections_that_exist():
    readme = (ROOT / "README.md").read_text()
    heads = {ln.lstrip("#").strip() for ln in readme.splitlines() if ln.startswith("#")}
    for path in (ROOT / "sweeps").rglob("*.yaml"):
        for m in __import__("re").finditer(r'README(?:\.md)?, "([^"]+)"', path.read_text()):
            assert m.group(1) in heads, f"{path.name} cites README section {m.group(1)!r}"
    assert yaml.safe_load((ROOT / "sweeps" / "trials" / "default.yaml").read_text())["seed"] == 0


def test_readme_shown_commands_print_what_readme_shows(tmp_path):
    """Every ``$ grokray ...`` line in README.md whose next line is its output: run it, compare the line."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    pairs = re.findall(r"^\$ (grokray [^\n]+)\n([^\n$`][^\n]*)$", text, flags=re.M)
    assert pairs, "README shows no command with its output"
    for command, shown in pairs:
        out = run(*shlex.split(command)[1:], cwd=ROOT)
        printed = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
        assert shown.strip() in printed, f"{command}: README shows {shown!r}, it printed {printed[-3:]}"
