"""Strict-JSON conversions shared by every result that is written as JSON (verdicts, patching
matrices, path comparisons): numpy to plain Python, NaN / inf to ``null`` and back.

Example:
    >>> import numpy as np
    >>> plain({"a": np.array([1.0, np.nan]), "b": (np.float32(0.5), float("inf"))})
    {'a': [1.0, None], 'b': [0.5, None]}
    >>> nan_array([[1.0, None]]).tolist()
    [[1.0, nan]]
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


def plain(x: Any) -> Any:
    """numpy arrays / scalars, tuples, mappings -> JSON-able Python; non-finite floats -> None."""
    if isinstance(x, np.ndarray):
        return plain(x.tolist())
    if isinstance(x, Mapping):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def nan_float(x: Any) -> float:
    """``None`` -> NaN, else ``float(x)`` (the inverse of :func:`plain` for one number)."""
    return float("nan") if x is None else float(x)


def nan_array(x: Any) -> np.ndarray:
    """Nested lists with ``None`` -> a float array with NaN."""
    def fill(v: Any) -> Any:
        return [fill(u) for u in v] if isinstance(v, list) else (float("nan") if v is None else v)

    return np.array(fill(x), dtype=float)
