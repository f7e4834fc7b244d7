"""Metric histories: the curve arithmetic the verdict, the stop rule, the plots and the
transfer summary share.

A history is the trainer's list of per-evaluation dicts (``{"step": 1000, "acc/train":
0.99, ...}``). Everything here is pure numpy on such lists, so the stop rule and the
verdict cannot disagree about when a curve crossed, held or fell back.

* :func:`clean_history` sorts, deduplicates and drops entries without a finite step;
  :func:`metric_series` reads one metric as ``(steps, values)`` with missing / non-finite
  values dropped.
* :func:`running_median` smooths a noisy test accuracy (a ~300-query set swings a few
  points per evaluation).
* :func:`first_sustained` is the first step from which a curve holds a threshold for a few
  evaluations; :func:`held_from` is the start of the FINAL stretch that holds it to the end
  of the curve: a transient that falls back has a ``first_sustained`` step but no
  ``held_from`` step. Generalization is decided on :func:`held_from`.
* :func:`rising` says whether a curve is still climbing (the stop rule never kills a run
  whose target accuracy is on its way up).

Example:
    >>> import numpy as np
    >>> steps = np.array([10, 20, 30, 40, 50, 60])
    >>> acc = np.array([0.1, 0.7, 0.7, 0.2, 0.8, 0.8])
    >>> first_sustained(steps, acc, 0.5, 2), held_from(steps, acc, 0.5, 2)
    (20, 50)
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: Metrics whose non-finite value means the run diverged (the trainer's own test).
DIVERGENCE_KEYS = ("train_loss", "param_norm")


def is_number(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _as_float(value: Any, where: str) -> float:
    if not is_number(value):
        raise ValueError(f"{where}: must be a number (got {value!r})")
    return float(value)


class Series(NamedTuple):
    """One metric over steps: finite values only, sorted by step."""
    steps: np.ndarray   # int64
    values: np.ndarray  # float64

    def last(self) -> float | None:
        return float(self.values[-1]) if len(self.values) else None


def clean_history(history: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Entries sorted by step, the last one kept for a duplicated step; entries without a
    finite ``step`` are dropped (their count is returned). A negative, fractional or
    non-numeric step, or an entry that is not a mapping, is a ValueError.

    >>> clean_history([{"step": 5, "a": 1}, {"step": 1}, {"step": 5, "a": 2}, {"a": 3}])
    ([{'step': 1}, {'step': 5, 'a': 2}], 1)
    """
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Iterable):
        raise ValueError(f"history: must be a sequence of dicts (got {history!r})")
    by_step: dict[int, dict[str, Any]] = {}
    dropped = 0
    for i, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            raise ValueError(f"history[{i}]: must be a dict (got {entry!r})")
        step = entry.get("step")
        if step is None or (is_number(step) and not math.isfinite(step)):
            dropped += 1
            continue
        step_f = _as_float(step, f"history[{i}]['step']")
        if step_f < 0 or not step_f.is_integer():
            raise ValueError(f"history[{i}]['step']: must be a non-negative integer (got {step!r})")
        by_step[int(step_f)] = {**entry, "step": int(step_f)}
    return [by_step[s] for s in sorted(by_step)], dropped


def metric_series(entries: list[dict[str, Any]], key: str) -> Series:
    """``key`` over cleaned entries; missing, ``None`` and non-finite values dropped."""
    steps, values = [], []
    for entry in entries:
        value = entry.get(key)
        if value is None:
            continue
        value = _as_float(value, f"history step {entry['step']} {key!r}")
        if math.isfinite(value):
            steps.append(entry["step"])
            values.append(value)
    return Series(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64))


def series(history: Iterable[Mapping[str, Any]], key: str) -> Series:
    """:func:`metric_series` of a raw history (cleaned first)."""
    return metric_series(clean_history(history)[0], key)


def divergence_step(entries: list[dict[str, Any]]) -> int | None:
    """First step with a non-finite ``train_loss`` or ``param_norm`` (the trainer's rule)."""
    for entry in entries:
        for key in DIVERGENCE_KEYS:
            value = entry.get(key)
            if value is not None and not math.isfinite(_as_float(value, f"history step {entry['step']} {key!r}")):
                return entry["step"]
    return None


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Median over ``window`` consecutive values, centred where possible and shifted inward
    at the ends so every window holds ``min(window, n)`` values (a spike at the last
    evaluation is filtered too).

    >>> running_median(np.array([0.1, 0.1, 0.9, 0.1, 0.8, 0.8]), 3).tolist()
    [0.1, 0.1, 0.1, 0.8, 0.8, 0.8]
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if window <= 1 or n == 0:
        return values.copy()
    w = min(window, n)
    medians = np.median(sliding_window_view(values, w), axis=1)        # window starting at each index
    return medians[np.clip(np.arange(n) - window // 2, 0, n - w)]


def window_minima(values: np.ndarray, sustain: int) -> np.ndarray:
    """``min(values[i:i+sustain])`` for every ``i`` (windows truncated at the end)."""
    if len(values) == 0:
        return np.empty(0)
    padded = np.concatenate([np.asarray(values, dtype=np.float64), np.full(sustain - 1, np.inf)])
    return sliding_window_view(padded, sustain).min(axis=1)


def first_sustained(steps: np.ndarray, values: np.ndarray, threshold: float, sustain: int) -> int | None:
    """First step from which ``values >= threshold`` for ``sustain`` consecutive
    evaluations (at the end of the curve, all remaining ones).

    >>> first_sustained(np.array([0, 10, 20, 30]), np.array([0.0, 1.0, 0.0, 1.0]), 0.5, 2)
    30
    """
    hits = np.flatnonzero(window_minima(values, sustain) >= threshold)
    return int(steps[hits[0]]) if len(hits) else None


def held_from(steps: np.ndarray, values: np.ndarray, threshold: float, sustain: int) -> int | None:
    """Start of the final stretch over which ``values >= threshold`` holds to the end of the
    curve, if that stretch spans at least ``sustain`` evaluations (or the whole curve when it
    is shorter); None when the curve ends below the threshold.

    >>> held_from(np.array([0, 10, 20, 30, 40]), np.array([0.9, 0.9, 0.1, 0.9, 0.9]), 0.5, 2)
    30
    >>> held_from(np.array([0, 10, 20]), np.array([0.9, 0.9, 0.1]), 0.5, 2) is None
    True
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or values[-1] < threshold:
        return None
    below = np.flatnonzero(values < threshold)
    start = int(below[-1]) + 1 if len(below) else 0
    if len(values) - start < min(sustain, len(values)):
        return None
    return int(steps[start])


def sustained_level(values: np.ndarray, sustain: int) -> float | None:
    """The highest level held for ``sustain`` evaluations: ``max_i min(values[i:i+sustain])``.
    ``first_sustained(..., t, sustain)`` is not None exactly when this is ``>= t``."""
    return float(window_minima(values, sustain).max()) if len(values) else None


def final_level(values: np.ndarray, sustain: int) -> float | None:
    """The level the curve holds at its end: the minimum of its last ``sustain`` values.
    ``held_from(..., t, sustain)`` is not None exactly when this is ``>= t``."""
    values = np.asarray(values, dtype=np.float64)
    return float(values[-sustain:].min()) if len(values) else None


def rising(steps: np.ndarray, values: np.ndarray, *, decades: float = 0.3, min_rise: float = 0.05) -> bool:
    """Whether the curve's last value is at least ``min_rise`` above its minimum over the
    last ``decades`` of steps (a log-step window: the trainer evaluates log-spaced).

    >>> rising(np.array([1000, 1500, 2000]), np.array([0.10, 0.14, 0.22]))
    True
    >>> rising(np.array([1000, 1500, 2000]), np.array([0.22, 0.20, 0.21]))
    False
    """
    steps = np.asarray(steps, dtype=np.float64)
    if len(steps) < 2:
        return False
    window = steps >= max(steps[-1], 1.0) / 10 ** decades
    return bool(values[-1] - np.min(values[window]) >= min_rise)


def step_ratio(t_late: int, t_early: int) -> float:
    """``t_late / t_early`` with both clamped to >= 1 step."""
    return max(t_late, 1) / max(t_early, 1)
