"""A fresh local MLflow store opened by several processes at once (issue: "a fresh sqlite store
opened by two processes at once kills the sweep").

Each round starts, at the same moment, on a store that does not exist yet: grokray commands
(``grokray train``, which creates the store and logs a run) and processes that are not grokray's
(a plain MLflow client polling ``search_experiments``, as a notebook or ``mlflow ui`` would).
Every grokray command must succeed in every round: grokray's processes take turns on the lock
beside the database and build a missing store whole before linking it into place; the two plain
clients race each other's migrations and can leave the file half-migrated (``duplicate column``,
``_alembic_tmp_* already exists``), which grokray waits on, then replaces (it holds no runs).
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from grokray import sqlite_store, tracking
from grokray.config import ConfigError
from helpers import TINY

ROUNDS = 4
GROKRAY_PROCESSES = 3
PLAIN_CLIENTS = 2

PLAIN_CLIENT = """
import sys, time
from mlflow.tracking import MlflowClient
end = time.monotonic() + 20
ok = 0
while time.monotonic() < end and ok < 5:
    try:
        MlflowClient(tracking_uri=sys.argv[1]).search_experiments()
        ok += 1
    except Exception:
        pass            # not grokray's process: it may lose races; only grokray's must not
    time.sleep(0.2)
"""


def test_grokray_commands_and_a_plain_client_on_one_fresh_store(tmp_path):
    sets = [a for o in [*TINY, "train.max_steps=3", "train.lens_sample=0"] for a in ("--set", o)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "GROKRAY_CACHE": str(tmp_path / "cache")}
    failures = []
    for r in range(ROUNDS):
        db = tmp_path / f"round{r}" / "mlflow.db"
        uri = f"sqlite:///{db}"
        procs = [subprocess.Popen([sys.executable, "-c", PLAIN_CLIENT, uri], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env) for _ in range(PLAIN_CLIENTS)]
        grok = [subprocess.Popen([sys.executable, "-m", "grokray", "train", *sets, "--quiet", "--experiment",
                                  f"e{i % 2}", "--tracking-uri", uri], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
                for i in range(GROKRAY_PROCESSES)]
        for p in grok:
            out, err = p.communicate(timeout=300)
            if p.returncode != 0:
                failures.append(f"round {r}: exit {p.returncode}: {err.strip()[-500:]}")
        for p in procs:
            p.wait(timeout=60)
        if not failures:
            client = tracking.get_client(uri)
            runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
            assert len(runs) == GROKRAY_PROCESSES and all(run.info.status == "FINISHED" for run in runs)
            assert Path(f"{db}.lock").exists()
    assert not failures, "\n".join(failures)


def test_an_unusable_store_is_one_line_and_leaves_nothing_half_created(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    uri = f"sqlite:///{blocker}/sub/mlflow.db"
    out = subprocess.run([sys.executable, "-m", "grokray", "train", *[a for o in TINY for a in ("--set", o)],
                          "--tracking-uri", uri], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "GROKRAY_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("grokray: error: tracking URI: cannot ") and str(blocker) in out.stderr
    assert blocker.read_text().startswith("a file")


def _half_created(db: Path) -> None:
    """What a process that died in MLflow's migrations leaves: the initial tables, no version row
    past them, and one of alembic's batch-copy tables."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    with engine.begin() as con:
        con.exec_driver_sql("CREATE TABLE _alembic_tmp_params (key VARCHAR(250))")
    engine.dispose()


def test_a_store_left_half_created_is_replaced_when_it_holds_no_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "STALL_S", 0.5)
    db = tmp_path / "mlflow.db"
    _half_created(db)
    assert sqlite_store.schema_version(db) is None and not sqlite_store.holds_data(db)
    client = tracking.get_client(f"sqlite:///{db}")
    assert sqlite_store.schema_version(db) == sqlite_store.head_revision()
    run = client.create_run(client.create_experiment("after"))
    client.log_metric(run.info.run_id, "acc", 0.5, step=1)
    assert client.get_metric_history(run.info.run_id, "acc")[0].value == 0.5
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))


def test_a_store_behind_with_runs_is_reported_in_one_line_and_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "STALL_S", 0.5)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = tracking.get_client(uri)
    run_id = client.create_run(client.create_experiment("kept")).info.run_id
    old = [r.revision for r in sqlite_store._script_directory().walk_revisions()][5]
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = ?", (old,))
    con.commit()
    con.close()
    with pytest.raises(ConfigError) as err:
        tracking.get_client(uri)
    line = str(err.value)
    assert "\n" not in line and "holds runs" in line and old in line and "mlflow db upgrade" in line and str(db) in line
    assert sqlite_store.schema_version(db) == old
    con = sqlite3.connect(db)
    assert con.execute("SELECT run_uuid FROM runs").fetchall() == [(run_id,)]
    con.close()


def test_opening_a_client_never_opens_the_database_file_outside_sqlite(mlflow_uri, monkeypatch):
    """Closing any descriptor on a database file drops every POSIX lock the process holds on it
    (SQLite's "how to corrupt", 2.2). get_client runs again and again in processes whose MLflow
    connections hold locks (the driver, trials, the classifier); a header read with open() there
    let another process checkpoint the WAL under them and corrupted a real store ("database disk
    image is malformed", 2026-12-05). The store is checked through SQLite only."""
    import builtins

    from grokray import tracking

    db = str(tracking.sqlite_path(mlflow_uri))
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "locks")
    real_open = builtins.open

    def guarded(file, *a, **k):
        assert str(file) != db, "the database file was opened outside SQLite"
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    again = tracking.get_client(mlflow_uri)                  # while `client` holds connections
    run_id = tracking.start_run(again, exp, "r")
    assert client.get_run(run_id).info.run_name == "r"
    tracking.existing_client(mlflow_uri).set_terminated(run_id)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_file_that_is_not_sqlite_is_still_one_line(tmp_path):
    from grokray import tracking
    from grokray.config import ConfigError

    bad = tmp_path / "mlflow.db"
    bad.write_bytes(b"definitely not a database, but long enough to have a header" * 4)
    with pytest.raises(ConfigError, match="is not an SQLite database"):
        tracking.get_client(f"sqlite:///{bad}")
