"""Names of trials and of swept values, short enough to read in a terminal, a run table and a
phase map.

A scalar value reads as itself (``phi=7.2``). A grouped value (a mapping: ``model:
{n_layers: 2, n_loops: 1}``, or an augmentation ``{hop1: {...}, hop2: {...}}``) reads as its
``name:`` when the spec gives one, else as the ``key=value`` pairs in which it differs from
the other values of its parameter (``n_layers=2,n_loops=1``; ``hop2.k=4``).

Example:
    >>> vals = [{"hop1": {"ratio": 1, "k": 7}, "hop2": {"ratio": 1, "k": 1}},
    ...         {"hop1": {"ratio": 1, "k": 7}, "hop2": {"ratio": 1, "k": 4}}]
    >>> value_label(vals[1], vals)
    'hop2.k=4'
    >>> value_label({"name": "clean", "augmentation": "none"})
    'clean'
    >>> run_name({"data.phi": 7.2, "model": {"n_layers": 2, "n_loops": 1}}, ["data.phi", "model"])
    'phi=7.2,n_layers=2,n_loops=1'
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from grokray.config import SECTIONS, flatten
from grokray.sweep.params import value_name, without_name


def fmt(value: Any) -> str:
    """A scalar as a short string: floats with ``:g``, the rest with ``str`` (lists as JSON)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def value_label(value: Any, alternatives: Sequence[Any] | None = None) -> str:
    """How one swept value reads (module docstring); ``alternatives``: all values of its parameter."""
    name = value_name(value)
    if name is not None:
        return name
    if not isinstance(value, Mapping):
        return fmt(value)
    flat = flatten(without_name(value))
    if alternatives:
        others = [flatten(without_name(a)) for a in alternatives if isinstance(a, Mapping)]
        differ = [k for k in flat if any(o.get(k, object()) != flat[k] for o in others)]
        if differ:
            flat = {k: flat[k] for k in differ}
    return ",".join(f"{k}={fmt(v)}" for k, v in flat.items()) or "{}"


def run_name(values: Mapping[str, Any], keys: Sequence[str],
             alternatives: Mapping[str, Sequence[Any]] | None = None) -> str:
    """``phi=7.2,augmentation=none,seed=0`` from a trial's swept values (last segment of each key,
    the whole key where two keys end alike: ``data.seed`` beside ``seed``); a grouped section
    value without a name reads as its own pairs.

    >>> run_name({"data.seed": 1, "seed": 0, "data.phi": 7.2}, ["data.seed", "seed", "data.phi"])
    'data.seed=1,seed=0,phi=7.2'
    """
    parts = []
    ends = [k.split(".")[-1] for k in keys]
    for k in keys:
        v = values.get(k)
        label = value_label(v, (alternatives or {}).get(k))
        if isinstance(v, Mapping) and k in SECTIONS and value_name(v) is None:
            parts.append(label)
        else:
            end = k.split(".")[-1]
            parts.append(f"{end if ends.count(end) == 1 else k}={label}")
    return ",".join(parts) or "trial"
