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
    ({"name": "r", "classifier": {"evidence": "sometimes"}}, "classifier.evidence.*auto, always, never"),
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


# --------------------------------------------------------------------------- issue 12: no traceback for any mistake

@pytest.mark.parametrize("parameters, key, first, second", [
    ({"model": {"values": [{"n_loops": 2}]}, "model.n_loops": {"values": [1]}}, "parameters.model.n_loops",
     "parameters.model", "parameters.model.n_loops"),
    ({"model.n_loops": [1, 2], "model": {"values": {"a": {"n_layers": 2}, "b": {"n_loops": 1}}}}, "parameters.model",
     "parameters.model.n_loops", "parameters.model"),
])
def test_a_key_set_by_a_group_and_a_dotted_parameter_names_both(parameters, key, first, second):
    with pytest.raises(ConfigError) as err:
        spec_from_dict({"name": "t", "parameters": parameters})
    assert str(err.value) == f"{key}: set twice: by {first} and by {second}; keep one (got 'model.n_loops')"


@pytest.mark.parametrize("uri, problem", [
    ("foo://x", "not a tracking URI MLflow can use"), ("", "is empty"), ("mlflow.db", "not a tracking URI"),
    ("sqlite://mlflow.db", "sqlite:///PATH"), ("sqlite:///", "sqlite:///PATH"), ("http:///x", "needs a host"),
    ("http://h:99999", "Port out of range"), ("https://[::1", "not a valid URL"),
    ("file:/tmp/mlruns", "MLflow 3 refuses file stores"), (5, "must be a string"),
])
def test_tracking_uris_mlflow_cannot_use_fail_at_validate(uri, problem, monkeypatch):
    from grokray.config import check_tracking_uri

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match=f"^tracking.uri: .*{problem}") as err:
        spec_from_dict({"name": "t", "tracking": {"uri": uri}})
    assert f"(got {uri!r})" in str(err.value)
    with pytest.raises(ConfigError, match=f"^tracking URI: .*{problem}"):
        check_tracking_uri(uri, "tracking URI")


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "sqlite+pysqlite:///x.db",
                                 "http://127.0.0.1:5000", "https://mlflow.example.org", "postgresql://u@h:5432/db",
                                 "postgresql+psycopg2://u@h/db", "databricks", "mysql://u@h/db"])
def test_tracking_uris_mlflow_can_use_pass(uri):
    assert spec_from_dict({"name": "t", "tracking": {"uri": uri}}).tracking_uri == uri


def test_file_stores_pass_when_mlflow_allows_them(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert spec_from_dict({"name": "t", "tracking": {"uri": "file:/tmp/mlruns"}}).tracking_uri == "file:/tmp/mlruns"


@pytest.mark.parametrize("raw, problem", [
    ({"name": "r", "max_steps": 1e30}, "^max_steps: must be <= 1,000,000,000"),
    ({"name": "r", "base": {"train": {"max_steps": 1e30}}}, r"^base\.train\.max_steps: must be <= 1,000,000,000"),
    ({"name": "r", "parameters": {"train.max_steps": [100, 1e30]}},
     r"^parameters\.train\.max_steps\.values\[1\]: must be <= 1,000,000,000"),
    ({"name": "r", "method": "random", "parameters": {"seed": {"distribution": "int_uniform", "min": 0,
                                                              "max": 1e30}}}, r"^parameters\.seed\.max: must be in"),
    ({"name": "r", "max_failures": 1e30}, "^max_failures: must be <= 1,000,000,000"),
    ({"name": "r", "max_concurrent": 1e30}, "^max_concurrent: must be <= 1,000,000,000"),
    ({"name": "r", "stopping": {"memorize_by": 1e30}}, r"^stopping\.memorize_by: must be <= 1,000,000,000"),
    ({"name": "r", "resources": {"cpu": 1e6}}, r"^resources\.cpu: must be <= 10,000"),
    ({"name": "r", "kind": ["trial"]}, r"^kind: must be one of trial, finetune \(got \['trial'\]\)"),
    ({"name": "r", "method": {"grid": 1}}, "^method: must be one of"),
    ({"name": "r", "description": ["a"]}, "^description: must be a string"),
    ({"name": "r", "base": [1]}, r"^base: must be a path to a trial config or an inline mapping \(got \[1\]\)"),
    ({"name": "r", "base": ""}, "^base: "),
    ({"name": "r", "tracking": {"experiment": ""}}, r"^tracking\.experiment: must not be empty"),
])
def test_absurd_and_mistyped_spec_values(raw, problem):
    with pytest.raises(ConfigError, match=problem):
        spec_from_dict(raw)


def test_renamed_checks_the_name_like_the_spec_does():
    spec = spec_from_dict({"name": "ok"})
    assert spec.renamed("ok-2").name == "ok-2"
    for bad in ("../x", "a b", "", "x" * 101):
        with pytest.raises(ConfigError, match="^--name: must be 1-100 characters"):
            spec.renamed(bad)


def test_duplicate_keys_in_a_spec_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: a\nparameters:\n  seed: [0, 1]\n  data.phi: [1.0]\n  seed: [2]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: invalid YAML: line 5, column 3: duplicate key 'seed' "
                                          r"\(first on line 3\)$"):
        load_spec(path)


def test_the_readme_sweep_example_validates(tmp_path):
    """The spec the README shows is a spec grokray accepts (docs drift otherwise)."""
    import shutil

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml\nname: ") + len("```yaml\n")
    example = readme[start:readme.index("```", start)]
    shutil.copytree(ROOT / "sweeps" / "trials", tmp_path / "trials")
    (tmp_path / "example.yaml").write_text(example)
    spec = load_spec(tmp_path / "example.yaml")
    assert spec.name == "phi-by-augmentation" and spec.classifier.evidence == "auto"
    assert spec.resources.pack == 1 and spec.classifier.criterion == "interchange"
