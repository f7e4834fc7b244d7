"""Sweep specs: every malformed spec gives its one-line error; the shipped specs validate."""
import subprocess
import sys
from pathlib import Path

import pytest

from grokray.cli import main
from grokray.config import ConfigError
from grokray.sweep.spec import load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((ROOT / "tests" / "specs" / "bad").glob("*.yaml"))
SHIPPED = sorted((ROOT / "sweeps").glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first[len("# expect: "):]


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_spec_is_one_line_naming_file_key_value(path, capsys):
    code = main(["sweep", "validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"grokray: error: {path}: {expected(path)}"), err


def test_validate_as_a_process_exit_code_and_no_traceback():
    bad = ROOT / "tests" / "specs" / "bad" / "bad_value.yaml"
    out = subprocess.run([sys.executable, "-m", "grokray", "sweep", "validate", str(bad)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"grokray: error: {bad}: {expected(bad)}"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_specs_validate(path, capsys):
    assert main(["sweep", "validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: OK: sweep")


def test_grid_expansion_counts_and_budget():
    spec = spec_from_dict({"name": "g", "base": {"train": {"max_steps": 50}}, "max_steps": 777, "num_samples": 2,
                           "parameters": {"data.phi": [3.6, 7.2, 12.6], "data.augmentation": ["none", "both_full"],
                                          "seed": {"value": 3}}})
    assert spec.n_trials() == 12 and spec.swept_keys == ["data.phi", "data.augmentation"]
    assert spec.budget == 777 and spec.base.train.max_steps == 777
    cfg = spec.trial_config({"data.phi": 12.6, "data.augmentation": "both_full", "seed": 3})
    assert (cfg.data.phi, cfg.data.augmentation, cfg.seed, cfg.train.max_steps) == (12.6, "both_full", 3, 777)


@pytest.mark.parametrize("raw, problem", [
    ({"name": "r", "method": "random", "parameters": {"train.lr": {"distribution": "log_uniform", "min": 0,
                                                                    "max": 1}}}, "log_uniform needs min > 0"),
    ({"name": "r", "parameters": {"seed": {"value": 1, "values": [1]}}}, "'value' cannot be combined"),
    ({"name": "r", "stopping": {"asha": {"metric": "acc/train"}}}, "asha settings given but"),
    ({"name": "r", "resources": {"gpu": 1.5}}, "above 1 a GPU count must be whole"),
    ({"name": "r", "metric": {"name": "acc/train", "mode": "up"}}, "must be min or max"),
])
def test_more_spec_errors(raw, problem):
    with pytest.raises(ConfigError, match=problem):
        spec_from_dict(raw)


def test_asha_on_a_training_metric_is_accepted():
    spec = spec_from_dict({"name": "a", "stopping": {"scheduler": "asha", "asha": {"metric": "loss/train"}}})
    s = spec.scheduler
    assert (s.name, s.metric, s.mode, s.grace_period, s.reduction_factor) == ("asha", "loss/train", "min", 1000, 3)


def test_relative_base_is_resolved_against_the_spec_file(tmp_path):
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / "t.yaml").write_text("data: {phi: 3.6}\n")
    (tmp_path / "s.yaml").write_text("name: rel\nbase: trials/t.yaml\n")
    assert load_spec(tmp_path / "s.yaml").base.data.phi == 3.6
