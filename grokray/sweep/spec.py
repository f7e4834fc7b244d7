"""Sweep specs (``sweeps/*.yaml``): load, validate, expand to a Ray Tune search space.

The vocabulary is the one W&B and Ray users know::

    name: phi-by-augmentation          # unique: names the Tune experiment and the MLflow parent run
    method: grid                       # grid | random | optuna
    base: trials/default.yaml          # a trial config (path relative to this file) or an inline mapping
    parameters:                        # dotted keys into the trial config
      data.phi: {values: [3.6, 7.2, 12.6]}
      data.augmentation: {values: [none, both_full, hop2_full]}
      train.weight_decay: {distribution: log_uniform, min: 0.1, max: 1.0}   # random / optuna
      seed: {value: 0}
    max_steps: 12000                   # budget per trial (overrides train.max_steps of the base)
    num_samples: 1                     # grid: repeats of the grid; random / optuna: number of trials
    metric: {name: acc/test_inferred_ood, mode: max}   # what optuna optimises (final value)
    stopping: {memorize_by: 6000, cleanup_window: 1.0, split: ood, scheduler: fifo}
    resources: {cpu: 1, gpu: 0}        # per trial; gpu may be fractional (0.25 = four trials per GPU)
    max_concurrent: 2
    max_failures: 2                    # restarts of a trial whose worker died (from its checkpoint)
    tracking: {uri: null, experiment: null}   # default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db
    storage: null                      # default ~/grokray_results (absolute path or URI, shared on a cluster)
    classifier: {enabled: true, split: ood, patching_queries: 200}

:func:`load_spec` turns every mistake into one :class:`~grokray.config.ConfigError` line
naming the file, the key and the bad value. No Ray import here: ``grokray sweep validate``
runs without starting anything.

Example:
    >>> spec = spec_from_dict({"name": "demo", "parameters": {"data.phi": {"values": [3.6, 7.2]}}})
    >>> [t["data.phi"] for t in spec.grid()]
    [3.6, 7.2]
"""
from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from grokray.config import (ConfigError, TrialConfig, _coerce, read_yaml, replace_dotted, to_plain,
                            trial_config_from_dict)

METHODS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "categorical")
SCHEDULERS = ("fifo", "asha")
#: Metrics computed on training data only: the only ones a pruning scheduler may rank on.
#: Test accuracy is flat until the jump, so ranking on it kills exactly the runs that would grok.
TRAINING_METRICS = ("acc/train", "loss/train", "train_loss", "acc/train_inferred", "loss/train_inferred",
                    "acc/id_atomic", "loss/id_atomic", "acc/ood_atomic", "loss/ood_atomic",
                    "acc/train_augmented", "loss/train_augmented")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
DEFAULT_STORAGE = "~/grokray_results"


@dataclass
class Parameter:
    key: str                       # dotted trial-config key
    values: list | None = None     # grid / choice
    distribution: str | None = None
    low: float | None = None
    high: float | None = None

    @property
    def is_grid(self) -> bool:
        return self.values is not None and self.distribution in (None, "categorical")


@dataclass
class Stopping:
    """When a trial stops before its budget: only on terminal states (see grokray.sweep.stopper)."""
    memorize_by: int | None = None    # stop "no_memorization" if train acc < memorize_acc by this step
    memorize_acc: float = 0.99
    split: str = "ood"                # target split for "generalized"
    generalize_acc: float | None = None  # default: the verdict's threshold for the split
    cleanup_window: float = 1.0       # after generalizing, train this fraction of the steps so far again
    scheduler: str = "fifo"           # fifo | asha (asha on training metrics only)
    asha: dict = field(default_factory=dict)


@dataclass
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass
class ClassifierSpec:
    enabled: bool = True
    split: str = "ood"
    patching_queries: int = 200


@dataclass
class SweepSpec:
    name: str
    base: TrialConfig
    parameters: list[Parameter]
    method: str = "grid"
    description: str = ""
    max_steps: int | None = None
    num_samples: int = 1
    metric: dict = field(default_factory=lambda: {"name": "acc/test_inferred_ood", "mode": "max"})
    stopping: Stopping = field(default_factory=Stopping)
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    max_failures: int = 2
    tracking_uri: str | None = None
    experiment: str | None = None
    storage: str = DEFAULT_STORAGE
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)
    kind: str = "trial"              # trial | finetune (grokray.transfer: fine-tune the runs of another sweep)
    finetune: Any = None             # grokray.transfer.FinetuneSpec when kind is finetune
    source: str | None = None        # the file it came from
    raw: dict = field(default_factory=dict)  # the spec as written (saved with the sweep for resume)

    # ------------------------------------------------------------------ derived
    @property
    def swept_keys(self) -> list[str]:
        """Keys that actually vary (more than one value, or a distribution)."""
        return [p.key for p in self.parameters if p.values is None or len(p.values) > 1]

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def storage_path(self) -> str:
        """Absolute storage path (or URI) for Ray Tune."""
        if "://" in self.storage:
            return self.storage
        return str(Path(os.path.expanduser(self.storage)).resolve())

    def base_for_trials(self) -> TrialConfig:
        if self.max_steps is None:
            return self.base
        return replace_dotted(self.base, {"train.max_steps": self.max_steps})

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the grid parameters (method grid), in spec order."""
        keys = [p.key for p in self.parameters]
        combos = itertools.product(*[p.values for p in self.parameters])
        return [dict(zip(keys, c)) for c in combos]

    def n_trials(self) -> int:
        if self.method == "grid":
            return len(self.grid()) * self.num_samples
        return self.num_samples

    def trial_config(self, values: Mapping[str, Any]) -> TrialConfig:
        return replace_dotted(self.base_for_trials(), values)


# --------------------------------------------------------------------------- parsing

def _mapping(value: Any, key: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping", key=key, value=value)
    return value


def _int_at_least(value: Any, minimum: int, key: str) -> int | None:
    """``value`` as an int >= ``minimum`` (None stays None), or a one-line ConfigError."""
    if value is None:
        return None
    value = _coerce(value, int, key)
    if value < minimum:
        raise ConfigError(f"must be >= {minimum}", key=key, value=value)
    return value


def _no_unknown(raw: Mapping, known: tuple[str, ...] | list[str], prefix: str) -> None:
    for k in raw:
        if k not in known:
            key = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown key; known keys: {', '.join(known)}", key=key, value=raw[k])


def _parse_parameter(key: str, raw: Any) -> Parameter:
    where = f"parameters.{key}"
    if not isinstance(raw, Mapping):
        # Shorthand: a list is `values`, a scalar is `value`.
        raw = {"values": list(raw)} if isinstance(raw, list) else {"value": raw}
    _no_unknown(raw, ("values", "value", "distribution", "min", "max"), where)
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
        if not isinstance(values, list) or not values:
            raise ConfigError("must be a non-empty list", key=f"{where}.values", value=values)
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
    low = _coerce(raw["min"], typ, f"{where}.min")
    high = _coerce(raw["max"], typ, f"{where}.max")
    if not low < high:
        raise ConfigError(f"min must be < max ({low} >= {high})", key=f"{where}.max", value=high)
    if dist == "log_uniform" and low <= 0:
        raise ConfigError("log_uniform needs min > 0", key=f"{where}.min", value=low)
    return Parameter(key, distribution=dist, low=low, high=high)


def _check_parameter_values(base: TrialConfig, p: Parameter) -> None:
    """Every value (or both bounds) must make a valid trial config: reuse the config's validation."""
    samples = p.values if p.values is not None else [p.low, p.high]
    for i, v in enumerate(samples):
        try:
            replace_dotted(base, {p.key: v})
        except ConfigError as e:
            if e.key is None or not (e.key == p.key or e.key.startswith(p.key + ".")) or (
                    e.key == p.key and e.problem.startswith("unknown key")):
                # Not a trial-config key (e.g. "data.phy"), or the value broke another key.
                raise ConfigError(e.problem, key=f"parameters.{p.key}", value=e.value) from None
            where = f"parameters.{p.key}"
            if p.values is not None and len(p.values) > 1:
                where += f".values[{i}]"
            where += e.key[len(p.key):]  # e.g. ".hop1.ratio" inside an augmentation mapping
            raise ConfigError(e.problem, key=where, value=e.value) from None


def _check_phi_feasible(spec: "SweepSpec") -> None:
    """phi above what the pool allows fails at validate time, not in the middle of a sweep."""
    from grokray.data.graph import build_graph, max_phi

    phi_param = next((p for p in spec.parameters if p.key == "data.phi"), None)
    graph_keys = ("data.n_entities", "data.n_relations", "data.out_degree", "data.ood_fraction",
                  "data.test_id_fraction", "data.seed")
    graph_params = [p for p in spec.parameters if p.key in graph_keys]
    if any(p.values is None for p in graph_params):
        return  # a graph drawn from a distribution: checked when the trial builds its data
    phis = (phi_param.values if phi_param and phi_param.values is not None
            else [phi_param.high] if phi_param else [spec.base.data.phi])
    combos = itertools.product(*[[(p.key, v) for v in p.values] for p in graph_params]) if graph_params else [()]
    for combo in combos:
        cfg = replace_dotted(spec.base, dict(combo))
        allowed = max_phi(build_graph(cfg.data), cfg.data)
        for i, phi in enumerate(phis):
            if float(phi) > allowed + 1e-9:
                key = "parameters.data.phi" if phi_param else "base.data.phi"
                if phi_param and phi_param.values is not None and len(phi_param.values) > 1:
                    key += f".values[{i}]"
                at = ", ".join(f"{k}={v}" for k, v in combo)
                raise ConfigError(f"exceeds the largest phi the pool allows ({allowed:.2f}"
                                  + (f" at {at}" if at else "") + ")", key=key, value=phi)


def spec_from_dict(raw: Any, *, source: str | os.PathLike | None = None) -> SweepSpec:
    """Build and validate a :class:`SweepSpec`; every problem is a one-line ConfigError."""
    try:
        return _spec_from_dict(raw, source)
    except ConfigError as e:
        raise e.with_source(source) from None


_TOP_KEYS = ("name", "description", "method", "base", "parameters", "max_steps", "num_samples", "metric",
             "stopping", "resources", "max_concurrent", "max_failures", "tracking", "storage", "classifier",
             "kind", "source", "transfer")
KINDS = ("trial", "finetune")


def _spec_from_dict(raw: Any, source: str | os.PathLike | None) -> SweepSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError("a sweep spec must be a mapping", value=type(raw).__name__)
    _no_unknown(raw, _TOP_KEYS, "")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError("must be 1-100 characters of letters, digits, '.', '_' or '-', starting with a "
                          "letter or digit", key="name", value=name)
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"must be one of {', '.join(METHODS)}", key="method", value=method)
    kind = raw.get("kind", "trial")
    if kind not in KINDS:
        raise ConfigError(f"must be one of {', '.join(KINDS)}", key="kind", value=kind)
    finetune = None
    if kind == "finetune":
        from grokray.transfer import parse_finetune

        finetune = parse_finetune(raw, source)
    else:
        for k in ("source", "transfer"):
            if k in raw:
                raise ConfigError("only for kind: finetune", key=k, value=raw[k])

    # base: a path (relative to the spec file) or an inline trial config.
    base_raw = raw.get("base")
    if isinstance(base_raw, str):
        path = Path(base_raw)
        if not path.is_absolute() and source is not None:
            path = Path(source).parent / path
        try:
            base = trial_config_from_dict(read_yaml(path), source=path)
        except ConfigError as e:
            if e.problem == "file not found":
                raise ConfigError("base trial config not found", key="base", value=base_raw) from None
            raise
    else:
        try:
            base = trial_config_from_dict(_mapping(base_raw, "base"))
        except ConfigError as e:
            raise e.with_prefix("base") from None

    params_raw = _mapping(raw.get("parameters"), "parameters")
    parameters = [_parse_parameter(str(k), v) for k, v in params_raw.items()]
    for p in parameters:
        if finetune is None or not finetune.owns(p.key):  # transfer.* values: checked by parse_finetune
            _check_parameter_values(base, p)
        if method == "grid" and p.values is None:
            raise ConfigError("method grid needs 'values' (a distribution needs method random or optuna)",
                              key=f"parameters.{p.key}", value=p.distribution)

    max_steps = _int_at_least(raw.get("max_steps"), 1, "max_steps")
    num_samples = _int_at_least(raw.get("num_samples", 1), 1, "num_samples")

    metric = dict(_mapping(raw.get("metric"), "metric")) or {"name": "acc/test_inferred_ood", "mode": "max"}
    _no_unknown(metric, ("name", "mode"), "metric")
    if not isinstance(metric.get("name"), str) or not metric["name"]:
        raise ConfigError("needs a metric name", key="metric.name", value=metric.get("name"))
    metric.setdefault("mode", "max")
    if metric["mode"] not in ("min", "max"):
        raise ConfigError("must be min or max", key="metric.mode", value=metric["mode"])

    stopping = _parse_stopping(_mapping(raw.get("stopping"), "stopping"))
    resources = _parse_resources(_mapping(raw.get("resources"), "resources"))
    max_concurrent = _int_at_least(raw.get("max_concurrent"), 1, "max_concurrent")
    max_failures = _int_at_least(raw.get("max_failures", 2), 0, "max_failures")

    tracking = _mapping(raw.get("tracking"), "tracking")
    _no_unknown(tracking, ("uri", "experiment"), "tracking")
    for k in ("uri", "experiment"):
        if tracking.get(k) is not None and not isinstance(tracking[k], str):
            raise ConfigError("must be a string", key=f"tracking.{k}", value=tracking[k])
    storage = raw.get("storage") or DEFAULT_STORAGE
    if not isinstance(storage, str):
        raise ConfigError("must be a path or URI string", key="storage", value=storage)

    classifier_raw = _mapping(raw.get("classifier"), "classifier")
    _no_unknown(classifier_raw, ("enabled", "split", "patching_queries"), "classifier")
    classifier = ClassifierSpec(
        enabled=_coerce(classifier_raw.get("enabled", True), bool, "classifier.enabled"),
        split=classifier_raw.get("split", "ood"),
        patching_queries=_coerce(classifier_raw.get("patching_queries", 200), int, "classifier.patching_queries"))
    if classifier.split not in ("ood", "id"):
        raise ConfigError("must be ood or id", key="classifier.split", value=classifier.split)
    if classifier.patching_queries < 1:
        raise ConfigError("must be >= 1", key="classifier.patching_queries", value=classifier.patching_queries)
    if finetune is not None:
        classifier.enabled = False  # finetune runs are read by the transfer map, not labelled

    if method == "optuna":
        if not parameters:
            raise ConfigError("method optuna needs at least one parameter to search", key="parameters", value={})
        for p in parameters:
            for i, v in enumerate(p.values or []):
                if not (v is None or isinstance(v, (bool, int, float, str))):
                    raise ConfigError("method optuna takes plain values (numbers, strings, booleans) as choices",
                                      key=f"parameters.{p.key}.values[{i}]", value=v)

    spec = SweepSpec(name=name, base=base, parameters=parameters, method=method,
                     description=str(raw.get("description") or ""), max_steps=max_steps, num_samples=num_samples,
                     metric=metric, stopping=stopping, resources=resources, max_concurrent=max_concurrent,
                     max_failures=max_failures, tracking_uri=tracking.get("uri"),
                     experiment=tracking.get("experiment"), storage=storage, classifier=classifier,
                     kind=kind, finetune=finetune,
                     source=str(source) if source is not None else None, raw=to_plain(raw))
    if max_steps is not None:
        spec.base_for_trials()  # validates the budget against the base config
    if finetune is None:
        _check_phi_feasible(spec)  # a finetune sweep's data comes from its sources: checked at sweep start
    return spec


def _parse_stopping(raw: Mapping) -> Stopping:
    _no_unknown(raw, ("memorize_by", "memorize_acc", "split", "generalize_acc", "cleanup_window", "scheduler",
                      "asha"), "stopping")
    s = Stopping()
    s.memorize_by = _int_at_least(raw.get("memorize_by"), 1, "stopping.memorize_by")
    s.memorize_acc = _coerce(raw.get("memorize_acc", s.memorize_acc), float, "stopping.memorize_acc")
    if not 0 < s.memorize_acc <= 1:
        raise ConfigError("must be in (0, 1]", key="stopping.memorize_acc", value=s.memorize_acc)
    s.split = raw.get("split", s.split)
    if s.split not in ("ood", "id"):
        raise ConfigError("must be ood or id", key="stopping.split", value=s.split)
    if raw.get("generalize_acc") is not None:
        s.generalize_acc = _coerce(raw["generalize_acc"], float, "stopping.generalize_acc")
        if not 0 < s.generalize_acc <= 1:
            raise ConfigError("must be in (0, 1]", key="stopping.generalize_acc", value=s.generalize_acc)
    s.cleanup_window = _coerce(raw.get("cleanup_window", s.cleanup_window), float, "stopping.cleanup_window")
    if s.cleanup_window < 0 or not math.isfinite(s.cleanup_window):
        raise ConfigError("must be >= 0", key="stopping.cleanup_window", value=s.cleanup_window)
    s.scheduler = raw.get("scheduler", s.scheduler)
    if s.scheduler not in SCHEDULERS:
        raise ConfigError(f"must be one of {', '.join(SCHEDULERS)}", key="stopping.scheduler", value=s.scheduler)
    asha = dict(_mapping(raw.get("asha"), "stopping.asha"))
    _no_unknown(asha, ("metric", "mode", "grace_period", "reduction_factor"), "stopping.asha")
    if s.scheduler == "asha":
        metric = asha.get("metric", "acc/train")
        if metric not in TRAINING_METRICS:
            raise ConfigError("ASHA may only rank trials on a training metric: test accuracy stays flat until "
                              "the grokking jump, so pruning on it kills the runs that would grok; use one of "
                              f"{', '.join(TRAINING_METRICS)}", key="stopping.asha.metric", value=metric)
        asha["metric"] = metric
        asha.setdefault("mode", "min" if metric.startswith("loss") or metric == "train_loss" else "max")
        if asha["mode"] not in ("min", "max"):
            raise ConfigError("must be min or max", key="stopping.asha.mode", value=asha["mode"])
        for k, default in (("grace_period", 1000), ("reduction_factor", 3)):
            asha[k] = _coerce(asha.get(k, default), int, f"stopping.asha.{k}")
            if asha[k] < (2 if k == "reduction_factor" else 1):
                raise ConfigError("too small", key=f"stopping.asha.{k}", value=asha[k])
    elif asha:
        raise ConfigError("asha settings given but stopping.scheduler is not asha", key="stopping.asha", value=asha)
    s.asha = asha
    return s


def _parse_resources(raw: Mapping) -> Resources:
    _no_unknown(raw, ("cpu", "gpu"), "resources")
    r = Resources(cpu=_coerce(raw.get("cpu", 1), float, "resources.cpu"),
                  gpu=_coerce(raw.get("gpu", 0), float, "resources.gpu"))
    if r.cpu <= 0:
        raise ConfigError("must be > 0", key="resources.cpu", value=r.cpu)
    if r.gpu < 0:
        raise ConfigError("must be >= 0", key="resources.gpu", value=r.gpu)
    if r.gpu > 1 and not float(r.gpu).is_integer():
        raise ConfigError("above 1 a GPU count must be whole", key="resources.gpu", value=r.gpu)
    return r


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate ``sweeps/NAME.yaml``."""
    raw = read_yaml(path)
    return spec_from_dict(raw, source=path)
