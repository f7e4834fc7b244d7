"""The on-disk dataset cache: content-addressed ``.npz`` files, created once under a lock.

A dataset is a pure function of its config, so its file is named by a hash of that config
(``ds-<hash>.npz`` for a trial's data, ``tf-<hash>.npz`` for fine-tuning data). A hundred
trials starting together ask for it at once: the first generates it while holding a lock
file beside it and publishes it with an atomic rename; the others wait on the lock and load
it. A process keeps what it loaded in memory, so later trials in the same worker reuse it.

``$GROKRAY_CACHE`` (default ``~/.cache/grokray``) is the root; files live under
``<root>/datasets/``.

Example:
    >>> import numpy as np, tempfile
    >>> tmp = tempfile.TemporaryDirectory(); root = tmp.name
    >>> calls = []
    >>> def build():
    ...     calls.append(1)
    ...     return np.arange(3)
    >>> save = lambda arr, path: np.save(open(path, "wb"), arr)
    >>> load = lambda path: np.load(path)
    >>> cached("ds-demo", build, save, load, root).tolist(), cached("ds-demo", build, save, load, root).tolist()
    ([0, 1, 2], [0, 1, 2])
    >>> len(calls)   # built once, then read from memory
    1
    >>> tmp.cleanup()
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from grokray.locks import file_lock

_MEMORY: dict[str, Any] = {}


def cache_dir() -> Path:
    """``$GROKRAY_CACHE`` or ``~/.cache/grokray``."""
    root = os.environ.get("GROKRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "grokray")
    return Path(root)


def cached(name: str, build: Callable[[], Any], save: Callable[[Any, str], None], load: Callable[[str], Any],
           cache: str | os.PathLike | None = None) -> Any:
    """The object named ``name``: from this process's memory, from ``<cache>/datasets/<name>.npz``,
    or built with ``build()``, saved with ``save(obj, path)`` and published atomically.

    ``load(path)`` reads a published file. Concurrent callers serialise on ``<name>.lock``.
    """
    if name in _MEMORY:
        return _MEMORY[name]
    root = Path(cache) if cache is not None else cache_dir()
    target = root / "datasets" / f"{name}.npz"
    if not target.exists():
        with file_lock(target.with_suffix(".lock")):
            if not target.exists():
                obj = build()
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
                os.close(fd)
                try:
                    save(obj, tmp)
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    obj = load(str(target))
    _MEMORY[name] = obj
    return obj


def forget(prefix: str = "") -> list[str]:
    """Drop this process's in-memory copies whose name starts with ``prefix``; the names dropped."""
    names = [k for k in _MEMORY if k.startswith(prefix)]
    for k in names:
        del _MEMORY[k]
    return names
