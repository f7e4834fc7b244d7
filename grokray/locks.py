"""Cross-process file locks (``flock``): how grokray's processes take turns on shared files
(the dataset cache, a fresh MLflow sqlite store).

Example:
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d, file_lock(pathlib.Path(d) / "x.lock"):
    ...     pass
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created, with its folder, if missing) for the block.
    The lock file stays: removing it while another process waits on it would split the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
