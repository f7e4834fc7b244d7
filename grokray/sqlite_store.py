"""A local sqlite MLflow store, created whole and opened safely beside other processes.

MLflow creates a sqlite store by running its schema migrations (about 60) in place, in the
first process that opens the file. Two processes doing that on one file at once break each
other (``table ... already exists``, ``duplicate column name``, alembic's ``Online migration
expected to match one row ... 0 found``), and one that dies half-way leaves a file every later
migration trips over. So grokray never migrates a store in place:

* a store that does not exist yet is built privately (``.<name>.creating-<pid>`` beside it),
  fully migrated and in WAL mode, and hard-linked into place only if nothing is there yet
  (atomic, never clobbers): any process opening the path sees no file or a whole store;
* a store that exists but is not at MLflow's head schema is waited on while another process is
  visibly migrating it (its version or its files change);
* one that nobody has touched for :data:`STALL_S` is left half-created: it is replaced by a whole
  one if it holds no runs, and reported in one line (with ``mlflow db upgrade``) if it does.

grokray's own processes take turns on ``<db>.lock`` (held by the caller,
:func:`grokray.tracking.get_client`); the rules above cover processes that are not grokray's.

Example:
    >>> import tempfile, pathlib
    >>> db = pathlib.Path(tempfile.mkdtemp()) / "mlflow.db"
    >>> ensure_store(db, str(db.parent / "mlruns"))
    'created'
    >>> schema_version(db) == head_revision(), ensure_store(db, str(db.parent / "mlruns"))
    (True, 'ready')
"""
from __future__ import annotations

import functools
import os
import sqlite3
import time
from pathlib import Path

#: Seconds without any change to a store below MLflow's head schema after which no process is
#: taken to be migrating it. One migration step takes well under a second here (~6 s all of them),
#: and a wrong guess is cheap: only a store without data is ever replaced, and the process that
#: was migrating it fails as it would have on the race anyway.
STALL_S = 3.0

#: Tables whose rows are a user's data: a half-created store holding any is never replaced.
_DATA_TABLES = {"runs": 0, "experiments": 1, "registered_models": 0}   # the Default experiment is not data


class StoreError(Exception):
    """A local store that cannot be made usable; the message is one line."""


@functools.lru_cache(maxsize=1)
def _script_directory():
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return ScriptDirectory.from_config(_get_alembic_config(db_url=""))


def head_revision() -> str:
    """The schema revision this MLflow creates and expects."""
    return _script_directory().get_current_head()


def _known_revisions() -> set[str]:
    return {rev.revision for rev in _script_directory().walk_revisions()}


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)


def schema_version(db: Path) -> str | None:
    """The alembic revision ``db`` is at; None before migrations wrote one. Raises
    ``sqlite3.OperationalError`` ("database is locked") while another process writes it."""
    con = _read_only(db)
    try:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise
    finally:
        con.close()


def holds_data(db: Path) -> bool:
    """Whether ``db`` holds runs, experiments beyond Default, or registered models."""
    con = _read_only(db)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return any(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] > allowed
                   for t, allowed in _DATA_TABLES.items() if t in tables)
    finally:
        con.close()


def _footprint(db: Path) -> tuple:
    """What changes while some process migrates ``db``: its files' sizes and times."""
    out = []
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            st = path.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


def _build_path(db: Path) -> Path:
    return db.with_name(f".{db.name}.creating-{os.getpid()}")


def _remove_db_files(path: Path, main: bool = True) -> None:
    """Remove a database's side files (write-ahead log, shared memory, rollback journal) and, with
    ``main``, the database itself. A stale journal left beside a file would be replayed into it."""
    sides = [path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")]
    for p in ([path] if main else []) + sides:
        p.unlink(missing_ok=True)


def build_store(db: Path, artifact_root: str) -> Path:
    """A whole store at head schema, in WAL mode, built beside ``db`` under a private name; returned
    closed (no ``-wal`` left), ready to be linked into place."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = _build_path(db)
    _remove_db_files(tmp)
    try:
        con = sqlite3.connect(tmp)
        con.execute("PRAGMA journal_mode=WAL")   # persistent in the file; readers never block the writer
        con.close()
        SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root).engine.dispose()
        con = sqlite3.connect(tmp)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
    except BaseException:
        _remove_db_files(tmp)
        raise
    _remove_db_files(tmp, main=False)
    return tmp


def _remove_stale_builds(db: Path) -> None:
    """Builds left by grokray processes that died mid-way (the caller holds the store's lock)."""
    for p in db.parent.glob(f".{db.name}.creating-*"):
        p.unlink(missing_ok=True)


def ensure_store(db: Path, artifact_root: str, *, timeout_s: float = 60.0, stall_s: float | None = None) -> str:
    """Make ``db`` a whole store at MLflow's head schema; returns what was done: ``'created'``,
    ``'ready'`` (already whole, or another process finished it) or ``'replaced'`` (it was left
    half-created and held no data). Call with the store's lock held. Raises :class:`StoreError`."""
    stall_s = STALL_S if stall_s is None else stall_s
    _remove_stale_builds(db)
    if not db.exists():
        tmp = build_store(db, artifact_root)
        try:
            os.link(tmp, db)            # fails if another process created db meanwhile: wait on it below
            return "created"
        except FileExistsError:
            pass
        except OSError:
            # A filesystem without hard links: a rename, which could clobber a file created in the
            # last instant (grokray's own processes hold the lock; only others could).
            if not db.exists():
                os.rename(tmp, db)
                return "created"
        finally:
            tmp.unlink(missing_ok=True)
    head = head_revision()
    started = last_change = time.monotonic()
    last = None
    while True:
        now = time.monotonic()
        try:
            version = schema_version(db)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise StoreError(f"cannot read the MLflow store: {e}") from None
            version = "(being written)"
            last_change = now                      # a writer holds it: someone is at work
        except sqlite3.DatabaseError as e:
            raise StoreError(f"not an MLflow sqlite store: {e}") from None
        if version == head:
            return "ready"
        shown = version or "none"
        footprint = (version, _footprint(db))
        if footprint != last:
            last, last_change = footprint, now
        elif now - last_change >= stall_s:
            # Nobody has migrated it for stall_s: a process died half-way, or an older / newer MLflow made it.
            if version is not None and version not in _known_revisions():
                raise StoreError(f"schema version {version} is not one this MLflow knows (expects {head}): "
                                 "made by a newer MLflow?")
            if holds_data(db):
                raise StoreError(f"holds runs at schema version {shown}, this MLflow expects {head}: "
                                 "back it up, then run `mlflow db upgrade <uri>`")
            tmp = build_store(db, artifact_root)
            _remove_db_files(db, main=False)
            os.replace(tmp, db)
            return "replaced"
        if now - started > timeout_s:
            raise StoreError(f"still at schema version {shown} after {timeout_s:.0f} s "
                             f"(expects {head}): another process keeps migrating it")
        time.sleep(0.2)
