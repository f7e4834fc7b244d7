"""Opening an MLflow store: which URI, whether it is usable, a client on it.

* Local default needs no server: ``sqlite:///<cwd>/mlflow.db`` (artifacts beside it in
  ``mlruns/``). A new sqlite store is created whole (:mod:`grokray.sqlite_store`), and
  creating or upgrading it is serialised across processes by a lock file beside the
  database; a migration that loses a race with a process outside grokray (``mlflow ui``,
  a notebook) is waited out and retried (:func:`get_client`).
* :func:`check_store` is what every command asks before it reads or writes anything: the
  URI's form, what a local sqlite path is, whether a server answers at all.
* Readers (:func:`existing_client`) never create an empty store by mistake.

Importing this module quiets MLflow for a terminal (:data:`MLFLOW_ENV`): no telemetry (these
machines have no internet), no artifact progress bars (they garble CLI output). A variable
the user set is left as it is.

Example:
    >>> tracking_uri("sqlite:////tmp/x/mlflow.db"), sqlite_path("sqlite:////tmp/x/mlflow.db")
    ('sqlite:////tmp/x/mlflow.db', PosixPath('/tmp/x/mlflow.db'))
    >>> artifact_root("sqlite:////tmp/x/mlflow.db"), artifact_root("http://127.0.0.1:5000")
    ('/tmp/x/mlruns', None)
"""
from __future__ import annotations

import logging
import os
import socket
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from grokray import sqlite_store
from grokray.config import ConfigError, check_tracking_uri
from grokray.errors import first_line, reason
from grokray.locks import file_lock

#: Environment defaults every grokray process that talks to MLflow runs with (set at import, before MLflow reads them).
MLFLOW_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
for _name, _value in MLFLOW_ENV.items():
    os.environ.setdefault(_name, _value)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


# =========================================================================== which store

def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def tracking_uri(uri: str | None = None) -> str:
    """The explicit URI, else ``$MLFLOW_TRACKING_URI``, else the local sqlite store in the cwd."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def artifact_root(uri: str) -> str | None:
    """Where experiments of a local sqlite store keep artifacts: ``mlruns/`` beside the db file."""
    db = sqlite_path(uri)
    return str(db.parent.resolve() / "mlruns") if db is not None else None


def where_from(uri: str | None = None) -> str:
    """Where the tracking URI came from, in words (for "not found" messages)."""
    if uri:
        return "given"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "from $MLFLOW_TRACKING_URI"
    return "the default: mlflow.db in the current directory"


#: How a reader is pointed at another store, for one-line messages (notebook and command line).
POINT_ELSEWHERE = ("pass tracking_uri='sqlite:///PATH/mlflow.db' (Python) or --tracking-uri (CLI), or set "
                   "MLFLOW_TRACKING_URI")


# =========================================================================== is it usable

#: Default ports of the database servers MLflow can keep its store in.
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_sqlite_file(db: Path, uri: str, key: str = "tracking URI") -> None:
    """What a local sqlite store's path is, before a lock file is left beside it or MLflow logs a
    paragraph: not a directory, its nearest existing ancestor a directory, and a file there (when
    not empty) an SQLite database. One-line :class:`~grokray.config.ConfigError` naming ``key``."""
    if db.is_dir():
        raise ConfigError("is a directory, not an MLflow store (a sqlite file)", key=key, value=uri)
    above = next((a for a in db.absolute().parents if a.exists()), None)
    if above is not None and not above.is_dir():
        raise ConfigError(f"cannot create the store's directory: {above} is a file, not a directory", key=key,
                          value=uri)
    if db.is_file() and db.stat().st_size:
        # Through SQLite, never open(): closing any other descriptor on a database file releases every
        # POSIX lock this process holds on it (SQLite's "how to corrupt", 2.2). A long-lived process
        # (the driver, a trial, the classifier) calls this at every get_client while its MLflow
        # connections hold locks: a plain open()/close() here let another process checkpoint the WAL
        # under them, and a store came out "database disk image is malformed". SQLite's own open
        # shares the inode's locks with the process's other connections.
        import sqlite3

        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
            try:
                con.execute("PRAGMA schema_version").fetchone()
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e) or "encrypted" in str(e):
                raise ConfigError("is not an SQLite database, so not an MLflow store", key=key, value=uri) from None
            if "locked" in str(e) or "busy" in str(e):
                return                              # a writer at work: a database, whatever it holds
            raise ConfigError(f"cannot read the MLflow store: {e}", key=key, value=uri) from None


def check_store(uri: str | None, key: str = "tracking URI") -> str:
    """The tracking URI a command will open (``uri``, else ``$MLFLOW_TRACKING_URI``, else
    ``./mlflow.db``), checked before anything is read or written: its form, then what a local
    sqlite path is (:func:`check_sqlite_file`), then whether a database driver is installed and an
    http(s) or database server answers at all (MLflow would retry for minutes and end in a
    traceback). Returns the URI."""
    if uri is None and os.environ.get("MLFLOW_TRACKING_URI") is not None:
        key = "tracking URI ($MLFLOW_TRACKING_URI)"
    uri = tracking_uri(uri)
    check_tracking_uri(uri, key)
    db = sqlite_path(uri)
    if db is not None:
        check_sqlite_file(db, uri, key)
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme in DB_PORTS:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:  # the driver SQLAlchemy (so MLflow) will load for this URI
            make_url(uri).get_dialect().import_dbapi()
        except ImportError as e:
            raise ConfigError(f"the {scheme} driver is not installed ({e}); pip install it, or use sqlite:///PATH",
                              key=key, value=uri) from None
        except ArgumentError as e:
            raise ConfigError(f"not a database URL SQLAlchemy reads: {e}", key=key, value=uri) from None
    check_reachable(uri, key)
    return uri


def check_reachable(uri: str, key: str = "tracking URI") -> None:
    """An http(s) tracking server or a database server must accept a connection (a TCP connect,
    no request: authentication is not tested). MLflow would retry for minutes and end in a
    traceback. Skipped where an http proxy carries the traffic, and for socket-only databases."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("http", "https", *DB_PORTS) or not parts.hostname:
        return
    if scheme in ("http", "https") and urllib.request.getproxies().get(scheme) \
            and not urllib.request.proxy_bypass(parts.hostname):
        return
    port = parts.port or {"http": 80, "https": 443, **DB_PORTS}[scheme]
    try:
        socket.create_connection((parts.hostname, port), timeout=10).close()
    except OSError as e:
        what = "MLflow server" if scheme.startswith("http") else f"{scheme} server"
        raise ConfigError(f"cannot reach the {what} at {parts.hostname}:{port}: {reason(e)} (is it running? see "
                          "mlflow/README.md)", key=key, value=uri) from None


# =========================================================================== a client

#: How long :func:`get_client` waits out another process migrating the same sqlite store.
STORE_RETRY_S = 60.0
#: Words of the errors a concurrent migration by another process causes. The last is alembic's
#: check that its version row moved as expected; it fails when the other process moved it first
#: (seen in CI: "Online migration expected to match one row when updating ... 0 found").
_RACE_WORDS = ("already exists", "locked", "duplicate", "no such table", "unique constraint",
               "migration expected to match one row")


def is_migration_race(error: BaseException) -> bool:
    """A failure another process's concurrent schema creation explains (sqlite only)."""
    seen = error
    while seen is not None:
        text = str(seen).lower()
        if any(w in text for w in _RACE_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _open_sqlite(uri: str, db: Path) -> "MlflowClient":
    """A client on a local sqlite store, made whole first under ``<db>.lock``.

    grokray processes take turns on the lock; :func:`grokray.sqlite_store.ensure_store` creates a
    missing store whole (never migrated in place), waits on one another process is migrating, and
    replaces one left half-created. A residual race ("database is locked") is retried until
    :data:`STORE_RETRY_S`.
    """
    from mlflow.tracking import MlflowClient

    check_sqlite_file(db, uri)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the directory of the MLflow store: {e.strerror}", key="tracking URI",
                          value=uri) from None
    deadline = time.monotonic() + STORE_RETRY_S
    delay = 0.2
    # MLflow logs its schema migrations at INFO ("Creating initial MLflow database tables..."):
    # routine, not for a user's terminal. Real problems still raise, below.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with file_lock(db.with_name(db.name + ".lock")):
        try:
            sqlite_store.ensure_store(db, artifact_root(uri), timeout_s=STORE_RETRY_S)
        except sqlite_store.StoreError as e:
            raise ConfigError(str(e), key="tracking URI", value=uri) from None
        except Exception as e:  # noqa: BLE001 - an unusable path or file: one line naming the store
            raise ConfigError(f"cannot create the MLflow store: {reason(e)[:300]}", key="tracking URI",
                              value=uri) from None
        while True:
            try:
                return MlflowClient(tracking_uri=uri)   # a whole store at head: no migration runs here
            except Exception as e:  # noqa: BLE001 - classified below, re-raised as one line
                if is_migration_race(e) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise ConfigError(f"cannot open the MLflow store: {first_line(e)[:300]}", key="tracking URI",
                                  value=uri) from None


def get_client(uri: str | None = None) -> "MlflowClient":
    """An MlflowClient for ``uri`` (see :func:`tracking_uri`); a local sqlite store is created if missing.

    An unusable URI or store is a one-line :class:`~grokray.config.ConfigError` naming it.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    check_tracking_uri(uri, "tracking URI")
    db = sqlite_path(uri)
    if db is not None:
        return _open_sqlite(uri, db)
    try:
        return MlflowClient(tracking_uri=uri)
    except (MlflowException, ImportError, ValueError) as e:
        # MLflow's own message is a paragraph (or a missing database driver's traceback): one line.
        raise ConfigError(f"cannot open the MLflow store: {first_line(e, 200)}", key="tracking URI",
                          value=uri) from None


def existing_client(uri: str | None = None) -> "MlflowClient":
    """A client for a store that must already exist: a missing local sqlite file is a one-line
    ConfigError saying where it looked and how to point elsewhere. Readers (the phase map, the
    transfer map, the classifier, ``grokray phase-map``) never create an empty store by mistake:
    nothing is written when the store is not there."""
    given = uri
    uri = tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise ConfigError(f"no MLflow store at {db} ({where_from(given)}); {POINT_ELSEWHERE}",
                          key="tracking URI", value=uri)
    return get_client(uri)
