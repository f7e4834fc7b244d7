"""No traceback for any user mistake, on any command.

Every ``grokray`` command is run on malformed input: sweep specs and trial configs (the corpus in
tests/specs/bad_input/, plus binary, non-UTF-8, empty and unreadable files written here), ``--set``
overrides, options (tracking URIs, names, counts, output paths), and stores or runs that do not
exist. Each must end the same way: exit code 2, exactly one line on stderr starting with
``grokray: error:`` and naming what is wrong (file, key, value), nothing on stdout, no traceback,
and nothing written: the working directory, the home directory (``~/grokray_results``), the
default MLflow store's folder and the test store are listed before and after each case.

Most cases run ``grokray.cli.main`` in this process (the imports are paid once); a few run
``python -m grokray`` for real to prove the end-to-end path (exit status, stderr, no traceback).
The sweep driver, the trainer and job submission are replaced by tripwires: a bad input that got
past the checks would fail the test instead of starting Ray or training.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from grokray.cli import main

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "specs" / "bad_input"
SPECS = sorted(CORPUS.glob("*.yaml"))
TRIALS = sorted((CORPUS / "trials").glob("*.yaml"))
TINY_BASE = ROOT / "tests" / "specs" / "tiny_base.yaml"
NO_JOB_SERVER = "http://127.0.0.1:9"   # never contacted: every case fails before
CLOSED = "http://127.0.0.1:1"          # nothing listens on port 1: connection refused at once


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), path
    return first[len("# expect: "):]


# --------------------------------------------------------------------------- the sandbox

class Sandbox:
    """A temp working directory, home, default store location and a real store, watched for writes."""

    def __init__(self, root: Path, store: tuple[str, Path, list[str]]):
        self.root, self.cwd, self.home = root, root / "cwd", root / "home"
        self.default_db = root / "default-store" / "mlflow.db"   # $MLFLOW_TRACKING_URI: must never appear
        self.store_uri, self.store_db, self.run_ids = store
        self.cwd.mkdir()
        self.home.mkdir()

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.root / "input" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def state(self) -> tuple:
        """Every path under the watched folders, and the store's experiment and run counts."""
        # sqlite's -wal / -shm files come and go with connections; the row counts say what the store holds
        paths = sorted(str(p) for d in (self.cwd, self.home, self.default_db.parent, self.store_db.parent)
                       if d.exists() for p in d.rglob("*") if not p.name.endswith(("-wal", "-shm", "-journal")))
        con = sqlite3.connect(self.store_db)
        try:
            counts = tuple(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("experiments", "runs"))
        finally:
            con.close()
        return paths, counts


def _forbidden(*args, **kwargs):
    raise AssertionError("a bad input reached the sweep driver, the trainer or the job server")


@pytest.fixture(scope="module")
def store(_migrated_store, tmp_path_factory):
    """A store holding one sweep (parent + two trial runs over data.phi) and a run without checkpoints."""
    from mlflow.entities import Metric, Param

    from grokray import tracking

    root = tmp_path_factory.mktemp("bad-input-store")
    db = root / "mlflow.db"
    src, dst = sqlite3.connect(_migrated_store), sqlite3.connect(db)
    src.backup(dst)
    src.close()
    dst.close()
    uri = f"sqlite:///{db}"
    client = tracking.get_client(uri)
    exp = tracking.get_or_create_experiment(client, "bad-input")
    parent = client.create_run(exp, run_name="sw", tags={"grokray.kind": "sweep", "grokray.sweep": "sw"}).info.run_id
    client.log_batch(parent, params=[Param("sweep.swept", "data.phi"), Param("sweep.method", "grid"),
                                     Param("sweep.kind", "trial")])
    run_ids = []
    for i, phi in enumerate((1.0, 2.0)):
        run = client.create_run(exp, run_name=f"phi={phi}", tags={
            "grokray.kind": "trial", "grokray.sweep": "sw", "grokray.trial_id": f"t{i}",
            "grokray.swept": json.dumps({"data.phi": phi}), "mlflow.parentRunId": parent})
        client.log_batch(run.info.run_id, metrics=[Metric("acc/train", 1.0, 0, 10)], params=[Param("data.phi", phi)])
        client.set_terminated(run.info.run_id)
        run_ids.append(run.info.run_id)
    return uri, db, run_ids


@pytest.fixture
def sandbox(store, tmp_path, monkeypatch):
    box = Sandbox(tmp_path, store)
    monkeypatch.chdir(box.cwd)
    monkeypatch.setenv("HOME", str(box.home))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{box.default_db}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for target in ("grokray.sweep.driver.run_sweep", "grokray.sweep.driver.resume_sweep",
                   "grokray.sweep.jobs.submit", "grokray.train.Trainer"):
        monkeypatch.setattr(target, _forbidden)  # imports the module, then replaces the name
    return box


def refused(box: Sandbox, capsys, argv: list, expect: str | None = None) -> str:
    """Run ``grokray ARGV`` in-process; assert the one-line refusal and that nothing was written.
    Returns the error line (after ``grokray: error: ``)."""
    before = box.state()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert code == 2, (argv, code, out.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("grokray: error: "), (argv, out.err[-2000:])
    assert "Traceback" not in out.err and out.out == "", (argv, out.out[-500:])
    if expect is not None:
        assert expect in lines[0], (argv, lines[0])
    assert box.state() == before, argv
    return lines[0][len("grokray: error: "):]


# --------------------------------------------------------------------------- specs and trial configs

def test_every_malformed_spec_is_refused_alike_by_validate_run_and_submit(sandbox, capsys):
    for path in SPECS:
        want = f"{path}: {expected(path)}"
        line = refused(sandbox, capsys, ["sweep", "validate", path])
        assert line.startswith(want), (line, want)
        assert refused(sandbox, capsys, ["sweep", "run", path]) == line
        assert refused(sandbox, capsys, ["sweep", "run", path, "--tracking-uri", sandbox.store_uri]) == line
        assert refused(sandbox, capsys, ["sweep", "submit", path, "--address", NO_JOB_SERVER]) == line
    assert not (sandbox.home / "grokray_results").exists() and not sandbox.default_db.exists()


def test_every_malformed_trial_config_is_refused_by_data_train_and_a_spec_base(sandbox, capsys):
    for path in TRIALS:
        want = f"{path}: {expected(path)}"
        for argv in (["data", path], ["train", path], ["train", path, "--no-track"]):
            line = refused(sandbox, capsys, argv)
            assert line.startswith(want), (argv, line, want)
        spec = sandbox.write(f"base-{path.stem}.yaml", f"name: x\nbase: {path}\n")
        for argv in (["sweep", "validate", spec], ["sweep", "run", spec]):
            assert refused(sandbox, capsys, argv).startswith(want), argv  # named by the base file


FILES = [  # (name, bytes, the problem named after the file)
    ("png.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "not UTF-8 text (byte 0x89 at offset 0): a binary file"),
    ("elf.yaml", b"\x7fELF\x02\x01\x01\x00\x00\x00", "a binary file, not YAML text (a NUL byte at offset 7)"),
    ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 9)"),
    ("utf16.yaml", "name: x\n".encode("utf-16"), "UTF-16 or UTF-32 text, not UTF-8"),
    ("empty.yaml", b"", "file is empty"),
    ("blank.yaml", b"\n  \n\t\n", "file is empty"),
    ("null.yaml", b"~\n", "file holds no YAML document (only comments, or null)"),
]


@pytest.mark.parametrize("name, data, problem", FILES, ids=[f[0] for f in FILES])
def test_unreadable_files_on_every_command_that_reads_one(sandbox, capsys, name, data, problem):
    path = sandbox.write(name, data)
    want = f"{path}: {problem}"
    for argv in (["sweep", "validate", path], ["sweep", "run", path], ["sweep", "submit", path, "--address",
                                                                         NO_JOB_SERVER],
                 ["data", path], ["train", path], ["train", path, "--set", "train.max_steps=5"]):
        line = refused(sandbox, capsys, argv)
        assert line.startswith(want), (argv, line, want)
    spec = sandbox.write(f"base-{name}", f"name: x\nbase: {path}\n")  # the same file as a spec's base
    assert refused(sandbox, capsys, ["sweep", "validate", spec]).startswith(want)


def test_nesting_too_deep_for_the_parser(sandbox, capsys):
    """PyYAML recurses per nesting level: a RecursionError, not a traceback (PyYAML takes ~1 s on it)."""
    path = sandbox.write("deep.yaml", "name: x\nbase: " + "[" * 1000 + "]" * 1000 + "\n")
    for argv in (["sweep", "validate", path], ["data", path]):
        assert refused(sandbox, capsys, argv) == f"{path}: invalid YAML: nested too deeply"


def test_missing_files_directories_and_permissions(sandbox, capsys, tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    missing = tmp_path / "missing.yaml"
    for argv in (["sweep", "validate", missing], ["sweep", "run", missing], ["data", missing], ["train", missing]):
        assert refused(sandbox, capsys, argv) == f"{missing}: file not found"
    for argv in (["sweep", "validate", folder], ["sweep", "run", folder], ["data", folder], ["train", folder]):
        assert refused(sandbox, capsys, argv) == f"{folder}: is a directory, not a YAML file"
    for argv in (["data", ""], ["sweep", "validate", ""]):
        refused(sandbox, capsys, argv, "no file given (an empty path)")
    spec = sandbox.write("base-missing.yaml", "name: x\nbase: nope/trial.yaml\n")
    refused(sandbox, capsys, ["sweep", "validate", spec], f"{spec}: base: base trial config not found at "
                                                          f"{Path(spec).parent / 'nope'}")
    spec = sandbox.write("base-folder.yaml", f"name: x\nbase: {folder}\n")
    assert refused(sandbox, capsys, ["sweep", "validate", spec]) == f"{folder}: is a directory, not a YAML file"
    if os.geteuid() != 0:  # root reads anything
        locked = sandbox.write("locked.yaml", f"name: x\nbase: {TINY_BASE}\n")
        locked.chmod(0)
        try:
            for argv in (["sweep", "validate", locked], ["data", locked]):
                assert refused(sandbox, capsys, argv) == f"{locked}: permission denied: cannot read the file"
        finally:
            locked.chmod(0o600)


# --------------------------------------------------------------------------- --set

OVERRIDES = [  # (override, the start of the error line)
    ("train.max_steps=1e30", "train.max_steps: must be <= 1,000,000,000 (got 1000000000000000019884624838656)"),
    ("train.max_steps=0", "train.max_steps: must be >= 1 (got 0)"),
    ("phi", "--set: an override must look like key=value (got 'phi')"),
    ("=3", "--set: an override must look like key=value (got '=3')"),
    (".phi=1", "--set: a dotted key has an empty part"),
    ("data..phi=1", "--set: a dotted key has an empty part"),
    ("model=3", "model: must be a mapping (got 3)"),
    ("data=[1, 2]", "data: must be a mapping (got [1, 2])"),
    ("trian.lr=1", "trian: unknown key; known keys: data, model, seed, train"),
    ("data.phy=1", "data.phy: unknown key; known keys: n_entities"),
    ("model.n_loops.x=3", "model.n_loops: must be an integer (got {'x': 3})"),
    ("model.n_loops=0", "model.n_loops: must be >= 1 (got 0)"),
    ("data.n_entities=-5", "data.n_entities: must be >= 2 (got -5)"),
    ("data.phi=nan", "data.phi: must be finite (got 'nan')"),
    ("train.lr=.inf", "train.lr: must be finite (got inf)"),
    ("train.lr=1e400", "train.lr: must be finite (got '1e400')"),
    ("seed=-1", "seed: must be in [0, 4294967295]"),
    ("data.seed=99999999999999999999", "data.seed: must be in [0, 4294967295]"),
    ("model.d_model=99999999999999999999", "model.d_model: must be <= 1,000,000,000 (got 99999999999999999999)"),
    ("model.d_model=100000", "model.d_model: a model of at least 40,"),
    ("data.n_entities=100000000", "data.n_entities: a graph of "),
    ("train.device=cuda:x", "train.device: must be auto, cpu, cuda or cuda:N (got 'cuda:x')"),
    ("train.threads=100000", "train.threads: must be in [0, 4096] (got 100000)"),
    ("train.eval_per_decade=1e9", "train.eval_per_decade: must be in [1, 1000] (got 1000000000)"),
    ("train.checkpoint_steps=[10, 100000000000000]", "train.checkpoint_steps: must be 'log', 'none' or a list"),
    ("data.augmentation={hop1: {}, hop1: {}}", "data.augmentation: invalid YAML value: duplicate key 'hop1'"),
    ("data.augmentation={hop1: {ratio: 1, k: 1e30}}", "data.augmentation.hop1.k: k must be <= 1,000,000,000"),
    ("data.augmentation=[a]", "data.augmentation: must be a preset name or a mapping"),
    ("train.betas=(0.9,x)", "train.betas[1]: must be a number (got 'x')"),
    ("data.phi=" + "[" * 1000, "data.phi: must be a number (got '[[[["),
]


def test_every_bad_override_on_data_and_train(sandbox, capsys):
    for override, want in OVERRIDES:
        for argv in (["data", "--set", override], ["train", "--set", override],
                     ["data", TINY_BASE, "--set", override]):
            line = refused(sandbox, capsys, argv)
            if TINY_BASE in argv:  # a value checked with the file's config is attributed to the file
                line = line.removeprefix(f"{TINY_BASE}: ")
            assert line.startswith(want), (argv, line, want)
            assert len(line) < 600, line  # a bad value is shown, bounded


# --------------------------------------------------------------------------- options

def test_a_bad_tracking_uri_on_every_command_that_takes_one(sandbox, capsys):
    spec = sandbox.write("ok.yaml", f"name: ok\nbase: {TINY_BASE}\n")
    commands = [["train"], ["classify", "abc"], ["patching", "abc"], ["paths", "abc", "def"], ["phase-map", "sw"],
                ["transfer-map", "sw"], ["sweep", "run", spec], ["sweep", "resume", "sw"], ["sweep", "status", "sw"],
                ["sweep", "submit", spec, "--address", NO_JOB_SERVER]]
    uris = [("foo://x", "not a tracking URI MLflow can use"), ("", "is empty"), ("/just/a/path", "not a tracking URI"),
            ("sqlite://mlflow.db", "a sqlite tracking URI is sqlite:///PATH"), ("sqlite:///", "sqlite:///PATH"),
            ("http:///api", "needs a host"), ("http://localhost:99999", "Port out of range"),
            ("http://[::1", "not a valid URL"), ("file:/tmp/mlruns", "MLflow 3 refuses file stores")]
    for uri, problem in uris:
        for command in commands:
            line = refused(sandbox, capsys, [*command, "--tracking-uri", uri])
            assert line.startswith("tracking URI: ") and problem in line and f"(got {uri!r})" in line, line
    assert not (sandbox.home / "grokray_results").exists()


def test_tracking_uris_that_name_no_store(sandbox, capsys, tmp_path, monkeypatch):
    spec = sandbox.write("ok.yaml", f"name: ok\nbase: {TINY_BASE}\n")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    junk = sandbox.write("junk.db", b"not a database at all, just text" * 4)
    readers = [["classify", "abc"], ["patching", "abc"], ["phase-map", "sw"], ["transfer-map", "sw"],
               ["sweep", "status", "sw"], ["sweep", "resume", "sw"]]
    writers = [["train"], ["sweep", "run", spec]]
    for uri, problem in [(f"sqlite:///{folder}", "is a directory, not an MLflow store"),
                         (f"sqlite:///{junk}", "is not an SQLite database, so not an MLflow store"),
                         (CLOSED, "cannot reach the MLflow server at 127.0.0.1:1")]:
        for command in readers + writers:
            line = refused(sandbox, capsys, [*command, "--tracking-uri", uri])
            assert line.startswith("tracking URI: ") and problem in line, (command, line)
    line = refused(sandbox, capsys, ["phase-map", "sw", "--tracking-uri", "postgresql://u@127.0.0.1:1/db"])
    assert line.startswith("tracking URI: ") and "postgresql" in line  # no driver, or no server
    # reading commands never create a store; the default one ($MLFLOW_TRACKING_URI here) does not exist
    for command in readers:
        if command[:2] in (["sweep", "status"], ["sweep", "resume"]):
            refused(sandbox, capsys, command, "no sweep 'sw' under")
        else:
            refused(sandbox, capsys, command, f"tracking URI: no MLflow store at {sandbox.default_db}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    for command in [*readers, *writers]:
        refused(sandbox, capsys, command, "tracking URI ($MLFLOW_TRACKING_URI): not a tracking URI MLflow can use")


def test_names_counts_and_arguments(sandbox, capsys):
    spec = sandbox.write("ok.yaml", f"name: ok\nbase: {TINY_BASE}\n")
    name_rule = "must be 1-100 characters of letters, digits"
    cases = [
        (["sweep", "run", spec, "--name", "my sweep!"], f"--name: {name_rule}"),
        (["sweep", "run", spec, "--name", "../escape"], f"--name: {name_rule}"),
        (["sweep", "submit", spec, "--address", NO_JOB_SERVER, "--name", "a/b"], f"--name: {name_rule}"),
        (["sweep", "resume", "../etc"], f"NAME: {name_rule}"),
        (["sweep", "status", ".."], f"NAME: {name_rule}"),
        (["sweep", "logs", "x y", "--address", NO_JOB_SERVER], f"NAME: {name_rule}"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["sweep"], "the following arguments are required: SUBCOMMAND"),
        (["sweep", "frobnicate"], "argument SUBCOMMAND: invalid choice: 'frobnicate'"),
        (["sweep", "validate"], "the following arguments are required: SPEC.yaml"),
        (["sweep", "logs", "x"], "no sweep 'x' under"),
        (["data", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--set"], "argument --set: expected one argument"),
        (["classify", "x", "--queries", "0"], "argument --queries: must be >= 1 (got 0)"),
        (["classify", "x", "--queries", "many"], "argument --queries: must be an integer (got 'many')"),
        (["classify", "x", "--split", "test"], "argument --split: invalid choice: 'test'"),
        (["patching", "x", "--step", "-1"], "argument --step: must be >= 0 (got -1)"),
        (["paths", "a", "b", "--queries", "-3"], "argument --queries: must be >= 1 (got -3)"),
        (["paths", "a", "b", "--step-b", "x"], "argument --step-b: must be an integer (got 'x')"),
        (["classify"], "give RUN_ID(s) or --experiment NAME (one of the two)"),
        (["classify", "--experiment", ""], "--experiment: an MLflow experiment name cannot be empty"),
        (["train", "--experiment", " "], "--experiment: an MLflow experiment name cannot be empty"),
    ]
    for argv, want in cases:
        line = refused(sandbox, capsys, argv, want)
        if argv and argv[0] != "frobnicate" and "argument" in want:
            assert line.endswith("--help`)"), line  # argparse's refusals point at the help, in the same line


def test_runs_sweeps_checkpoints_and_axes_that_do_not_exist(sandbox, capsys, tmp_path):
    import torch

    uri = ["--tracking-uri", sandbox.store_uri]
    folder = tmp_path / "a-folder"
    folder.mkdir()
    junk = sandbox.write("junk.pt", b"not a checkpoint")
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    run_id = "0123456789abcdef0123456789abcdef"
    cases = [
        (["classify", run_id, *uri], f"no run '{run_id}' at {sandbox.store_uri}"),
        (["classify", "--experiment", "nope", *uri], "--experiment: no experiment named 'nope'"),
        (["phase-map", "nope", *uri], "no sweep or experiment named 'nope'"),
        (["phase-map", "sw", "--x", "data.nope", *uri], "x 'data.nope' is not a parameter of this map; available "
                                                         "parameters: data.phi"),
        (["phase-map", "sw", "--y", "zzz", *uri], "y 'zzz' is not a parameter of this map"),
        (["phase-map", "sw", "--x", "phi", "--y", "data.phi", *uri], "x and y are both 'data.phi'"),
        (["phase-map", "it's", *uri], "no sweep or experiment named \"it's\""),
        (["phase-map", "nope", "--search", *uri], "no sweep 'nope' in"),
        (["phase-map", "sw", "--search", *uri], "sweep 'sw' is a grid sweep: a search map is drawn by method: boundary"),
        (["phase-map", "sw", "--storage", folder, *uri], "--storage: only with --search"),
        (["phase-map", "sw", "--search", "--x", "data.phi", *uri], "--x lays out the runs' map; the search map is"),
        (["phase-map", "sw", "--search", "--storage", folder, *uri], f"no sweep 'sw' under {folder}"),
        (["transfer-map", "nope", *uri], "no sweep named 'nope'"),
        (["transfer-map", "sw", *uri], "sweep 'sw' is a trial sweep, not a finetune sweep; its map is `grokray "
                                       "phase-map sw`"),
        (["sweep", "status", "nope", *uri], "no sweep 'nope' in the MLflow store at"),
        (["sweep", "resume", "nope", *uri], "no sweep 'nope' under"),
        (["sweep", "resume", "nope", "--storage", "s3://bucket/x"], "resume and status need a local or mounted path"),
        (["sweep", "status", "nope", "--storage", folder], f"no sweep 'nope' under {folder}"),
        (["patching", "nope", *uri], "nope: not a checkpoint file and no MLflow run with that id"),
        (["patching", sandbox.run_ids[0], *uri], f"run {sandbox.run_ids[0]} has no checkpoints"),
        (["paths", sandbox.run_ids[0], sandbox.run_ids[1], *uri], f"run {sandbox.run_ids[0]} has no checkpoints"),
        (["patching", tmp_path / "missing.pt"], "missing.pt: checkpoint file not found"),
        (["patching", junk], f"{junk}: not a checkpoint (a grokray checkpoint is a torch .pt archive"),
        (["patching", folder], f"{folder}: is a directory, not a checkpoint file"),
        (["patching", other], f"{other}: a torch file, but not a grokray checkpoint (no model, model_config"),
        (["paths", junk, other], f"{junk}: not a checkpoint"),
        (["paths", tmp_path / "missing.pt", junk], "missing.pt: checkpoint file not found"),
    ]
    for argv, want in cases:
        refused(sandbox, capsys, argv, want)


def test_output_paths_are_checked_before_the_work(sandbox, capsys, tmp_path):
    uri = ["--tracking-uri", sandbox.store_uri]
    folder = tmp_path / "a-folder"
    folder.mkdir()
    afile = sandbox.write("a-file", "x")
    nowhere = tmp_path / "no-such-dir" / "out"
    spec = sandbox.write("ok.yaml", f"name: ok\nbase: {TINY_BASE}\n")
    cases = [
        (["phase-map", "sw", "--png", f"{nowhere}.png", *uri], f"--png: {nowhere}.png: the directory"),
        (["phase-map", "sw", "--csv", folder, *uri], f"--csv: '{folder}' is a directory"),
        (["phase-map", "name", "--png", "sub/name.png", *uri], "--png: sub/name.png: the directory sub does not exist"),
        (["transfer-map", "sw", "--png", folder, *uri], f"--png: '{folder}' is a directory"),
        (["transfer-map", "sw", "--csv", f"{nowhere}.csv", *uri], f"--csv: {nowhere}.csv: the directory"),
        (["patching", "x.pt", "--out", f"{nowhere}.json"], f"--out: {nowhere}.json: the directory"),
        (["patching", "x.pt", "--png", folder], f"--png: '{folder}' is a directory"),
        (["paths", "a.pt", "b.pt", "--png", f"{nowhere}.png"], f"--png: {nowhere}.png: the directory"),
        (["train", "--out", afile], f"--out: {afile} is a file, not a directory"),
        (["sweep", "run", spec, "--tracking-uri", f"sqlite:///{afile}/mlflow.db"], f"{afile} is a file, not a dir"),
        (["sweep", "run", sandbox.write("st.yaml", f"name: st\nbase: {TINY_BASE}\nstorage: {afile}\n")],
         f"storage: {afile} is a file, not a directory"),
    ]
    for argv, want in cases:
        refused(sandbox, capsys, argv, want)


def test_a_sweep_a_local_ray_could_never_schedule(sandbox, capsys):
    for kind in ("cpu", "gpu"):
        spec = sandbox.write(f"{kind}.yaml", f"name: big\nbase: {TINY_BASE}\nresources: {{{kind}: 9999}}\n")
        assert main(["sweep", "validate", str(spec)]) == 0  # a valid spec: a cluster may have that many
        capsys.readouterr()
        refused(sandbox, capsys, ["sweep", "run", spec], f"resources.{kind}: a trial asks for 9999 {kind.upper()}(s) "
                                                         "but this machine has")


def test_no_cuda_device_is_named_before_training(sandbox, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(sandbox, capsys, ["train", "--set", "train.device=cuda", "--no-track"],
            "train.device: no CUDA device on this machine (use auto or cpu) (got 'cuda')")


# --------------------------------------------------------------------------- real processes

def test_end_to_end_as_a_process(tmp_path):
    """The path a user takes: ``python -m grokray``, exit status 2, one stderr line, nothing written."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    binary = tmp_path / "spec.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(HOME=str(home), MPLCONFIGDIR=str(tmp_path / "mpl"), MLFLOW_DISABLE_TELEMETRY="true")
    cases = [
        (["sweep", "run", binary], f"{binary}: not UTF-8 text (byte 0x89 at offset 0): a binary file"),
        (["data", CORPUS / "trials" / "duplicate_key.yaml"],
         f"{CORPUS / 'trials' / 'duplicate_key.yaml'}: invalid YAML: line 4, column 3: duplicate key 'phi'"),
        (["train", "--set", "train.max_steps=1e30"], "train.max_steps: must be <= 1,000,000,000"),
        (["classify", "abc", "--tracking-uri", "foo://x"], "tracking URI: not a tracking URI MLflow can use"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ]
    for argv, want in cases:
        out = subprocess.run([sys.executable, "-m", "grokray", *map(str, argv)], capture_output=True, text=True,
                             cwd=cwd, env=env, timeout=300)
        assert out.returncode == 2, (argv, out.returncode, out.stderr[-3000:])
        assert "Traceback" not in out.stderr and out.stdout == "", (argv, out.stderr[-3000:])
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"grokray: error: {want}"), (argv, out.stderr[-3000:])
    assert sorted(p.name for p in cwd.iterdir()) == []                       # no mlflow.db, no grokray_results
    assert sorted(p.name for p in home.iterdir()) == []                      # no ~/grokray_results
