"""Which store-opening errors :func:`grokray.tracking.store._open_sqlite` waits out as another process's
migration, and which it reports at once. Messages are the ones seen from MLflow / sqlite / alembic."""
from __future__ import annotations

import pytest

from grokray.tracking.store import is_migration_race

CASES = [
    ("(sqlite3.OperationalError) table experiments already exists", True),
    ("(sqlite3.OperationalError) database is locked", True),
    ("(sqlite3.OperationalError) no such table: experiments", True),
    ("(sqlite3.IntegrityError) UNIQUE constraint failed: experiments.name", True),
    # alembic's version row was moved by the other process first (CI, stop 17)
    ("Online migration expected to match one row when updating 'c3d9e7f1a2b4' to '6f8d9c3b2a1e' "
     "in 'alembic_version'; 0 found", True),
    ("(sqlite3.OperationalError) unable to open database file", False),
    ("(sqlite3.DatabaseError) file is not a database", False),
    ("Detected out-of-date database schema (found version 1, but expected 2)", False),
]


@pytest.mark.parametrize("message,is_race", CASES)
def test_is_migration_race(message, is_race):
    assert is_migration_race(RuntimeError(message)) is is_race


def test_a_race_seen_only_in_the_cause_still_counts():
    try:
        try:
            raise RuntimeError("database is locked")
        except RuntimeError as inner:
            raise ValueError("cannot open") from inner
    except ValueError as outer:
        assert is_migration_race(outer)
