"""Shared fixtures: an isolated dataset cache, tiny configs, and real MLflow stores.

A fresh MLflow sqlite store spends seconds on migrations; one store is migrated per
session and copied for each test that needs its own (0.02 s).
"""
from __future__ import annotations

import os
import sqlite3

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["GROKRAY_CACHE"] = str(tmp_path_factory.mktemp("grokray-cache"))
    yield


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory):
    from grokray import tracking
    root = tmp_path_factory.mktemp("mlflow-template")
    client = tracking.get_client(f"sqlite:///{root / 'mlflow.db'}")
    client.search_experiments()  # forces the schema migrations
    return root / "mlflow.db"


@pytest.fixture
def mlflow_uri(_migrated_store, tmp_path):
    """A real, empty, already-migrated sqlite MLflow store of this test's own."""
    db = tmp_path / "mlflow.db"
    # sqlite's backup API, not a file copy: the store is in WAL mode and recent pages may
    # still sit in the -wal file.
    src, dst = sqlite3.connect(_migrated_store), sqlite3.connect(db)
    src.backup(dst)
    src.close()
    dst.close()
    return f"sqlite:///{db}"
