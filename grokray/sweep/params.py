"""The ``parameters:`` of a sweep spec: one swept key each, and the small parsing helpers every
spec section shares (so each section turns bad input into the same one-line error).

A parameter is a dotted key into the trial config (``data.phi``, ``model.n_loops``,
``seed``), or a section name with grouped values (``model: {values: [{n_layers: 1,
n_loops: 2}, ...]}``) that set several keys together, or a key a sweep kind owns
(``transfer.n_new`` in a fine-tuning sweep)::

    data.phi: {values: [3.6, 7.2]}                         # grid / choice
    train.weight_decay: {distribution: log_uniform, min: 0.1, max: 1.0}
    seed: 0                                                # shorthand for {value: 0}

Example:
    >>> parse_parameter("data.phi", [3.6, 7.2])
    Parameter(key='data.phi', values=[3.6, 7.2], distribution=None, low=None, high=None)
    >>> parse_parameter("lr", {"distribution": "log_uniform", "min": 1e-4, "max": 1e-2}).is_grid
    False
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from grokray.config import MAX_BUDGET, ConfigError, coerce

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "categorical")
#: A sweep name: it names a folder, a Ray Tune experiment and MLflow filter values.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Parameter:
    key: str                       # dotted trial-config key (or a section name, or a kind's key)
    values: list | None = None     # grid / choice
    distribution: str | None = None
    low: float | None = None
    high: float | None = None

    @property
    def is_grid(self) -> bool:
        return self.values is not None and self.distribution in (None, "categorical")

    def samples(self) -> list:
        """The values to validate: every listed value, or both bounds of a distribution."""
        return list(self.values) if self.values is not None else [self.low, self.high]

    def where(self, i: int) -> str:
        """Where sample ``i`` (see :meth:`samples`) sits in the spec, for an error message: a
        listed value, or a distribution's ``min`` (0) or ``max`` (1)."""
        base = f"parameters.{self.key}"
        if self.values is None:
            return base + (".min", ".max")[i]
        return base + (f".values[{i}]" if len(self.values) > 1 else "")


def value_name(value: Any) -> str | None:
    """The ``name:`` a grouped value carries (``{name: clean, augmentation: none}``), if any."""
    return str(value["name"]) if isinstance(value, Mapping) and "name" in value else None


def without_name(value: Any) -> Any:
    """A grouped value without its ``name:`` key (what is applied to the trial config)."""
    if isinstance(value, Mapping) and "name" in value:
        return {k: v for k, v in value.items() if k != "name"}
    return value


def mapping(value: Any, key: str) -> Mapping:
    """``value`` as a mapping (None: empty), or a one-line ConfigError naming ``key``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping", key=key, value=value)
    return value


def check_name(name: Any, key: str = "name") -> str:
    """A sweep name (it names a folder, a Ray Tune experiment, a Ray job and MLflow filter values)
    or a one-line ConfigError: ``../x`` or ``my sweep!`` never reaches the file system."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):  # fullmatch: "x\n" is no name
        raise ConfigError("must be 1-100 characters of letters, digits, '.', '_' or '-', starting with a "
                          "letter or digit", key=key, value=name)
    return name


def int_at_least(value: Any, minimum: int, key: str, maximum: int | None = MAX_BUDGET) -> int | None:
    """``value`` as an int in ``[minimum, maximum]`` (None stays None), or a one-line ConfigError.
    The default maximum is the trial budget's: a count beyond it is a typo, not a plan."""
    if value is None:
        return None
    value = coerce(value, int, key)
    if value < minimum:
        raise ConfigError(f"must be >= {minimum}", key=key, value=value)
    if maximum is not None and value > maximum:
        raise ConfigError(f"must be <= {maximum:,}", key=key, value=value)
    return value


def no_unknown(raw: Mapping, known: tuple[str, ...] | list[str], prefix: str) -> None:
    """A one-line ConfigError for the first key of ``raw`` not in ``known``."""
    for k in raw:
        if k not in known:
            key = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown key; known keys: {', '.join(known)}", key=key, value=raw[k])


def parse_parameter(key: str, raw: Any) -> Parameter:
    """One entry of ``parameters:`` (shorthands: a list is ``values``, a scalar is ``value``)."""
    where = f"parameters.{key}"
    if not isinstance(raw, Mapping):
        raw = {"values": list(raw)} if isinstance(raw, list) else {"value": raw}
    no_unknown(raw, ("values", "value", "distribution", "min", "max"), where)
    if "value" in raw:
        if len(raw) > 1:
            raise ConfigError("'value' cannot be combined with other keys", key=where, value=dict(raw))
        return Parameter(key, values=[raw["value"]])
    dist = raw.get("distribution")
    if dist is not None and dist not in DISTRIBUTIONS:
        raise ConfigError(f"unknown distribution; choose one of {', '.join(DISTRIBUTIONS)}",
                          key=f"{where}.distribution", value=dist)
    if "values" in raw:
        values = raw["values"]
        if isinstance(values, Mapping) and values:  # named grouped values: {name: {...}, ...}
            values = [{"name": str(n), **v} if isinstance(v, Mapping) else v for n, v in values.items()]
        if not isinstance(values, list) or not values:
            raise ConfigError("must be a non-empty list (or a mapping of named values)", key=f"{where}.values",
                              value=values)
        if dist not in (None, "categorical"):
            raise ConfigError("'values' goes with no distribution or 'categorical'", key=f"{where}.distribution",
                              value=dist)
        return Parameter(key, values=list(values), distribution=dist)
    if dist is None or dist == "categorical":
        raise ConfigError("needs 'values', 'value', or a distribution with min and max", key=where, value=dict(raw))
    for bound in ("min", "max"):
        if bound not in raw:
            raise ConfigError(f"distribution {dist} needs '{bound}'", key=where, value=dict(raw))
    typ = int if dist == "int_uniform" else float
    low = coerce(raw["min"], typ, f"{where}.min")
    high = coerce(raw["max"], typ, f"{where}.max")
    if not low < high:
        raise ConfigError(f"min must be < max ({low} >= {high})", key=f"{where}.max", value=high)
    if dist == "log_uniform" and low <= 0:
        raise ConfigError("log_uniform needs min > 0", key=f"{where}.min", value=low)
    return Parameter(key, distribution=dist, low=low, high=high)
