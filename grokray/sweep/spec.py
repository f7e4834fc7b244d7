"""Sweep specs (``sweeps/*.yaml``): read once into a frozen, picklable :class:`SweepSpec`.

The vocabulary is the one W&B and Ray users know::

    name: phi-by-augmentation          # unique: names the Tune experiment and the MLflow parent run
    method: grid                       # grid | random | optuna
    kind: trial                        # trial | finetune (grokray.sweep.kinds)
    base: trials/default.yaml          # a trial config (path relative to this file) or an inline mapping
    parameters:                        # dotted keys into the trial config
      data.phi: {values: [3.6, 7.2, 12.6]}
      data.augmentation: {values: [none, both_full, hop2_full]}
      train.weight_decay: {distribution: log_uniform, min: 0.1, max: 1.0}   # random / optuna
      model: {values: {looped: {n_layers: 1, n_loops: 2}, flat: {n_layers: 2, n_loops: 1}}}  # named groups
      seed: {value: 0}
    max_steps: 12000                   # budget per trial (overrides train.max_steps of the base)
    num_samples: 1                     # grid: repeats of the grid; random / optuna: number of trials
    metric: {name: acc/test_inferred_ood, mode: max}   # what optuna optimises (final value)
    stopping: {memorize_by: 6000, cleanup_window: 1.0, split: ood, scheduler: fifo}
    resources: {cpu: 1, gpu: 0}        # per trial; gpu may be fractional (0.25 = four trials per GPU)
    max_concurrent: 2
    max_failures: 2                    # restarts of a trial whose worker died (from its checkpoint)
    tracking: {uri: null, experiment: null}   # default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db
    storage: null                      # default: beside a local MLflow store, else ~/grokray_results
    classifier: {enabled: true, split: ood, criterion: interchange, patching_queries: 200, evidence: auto}

:func:`load_spec` turns every mistake into one :class:`~grokray.config.ConfigError` line
naming the file, the key and the bad value. The path of one swept value, from YAML to the
trainer: ``load_spec`` (parsed and checked once) -> the Tune search space
(:mod:`grokray.sweep.driver`) -> Tune's ``config`` dict in the trial -> ``spec.trial_config(config)``
(``base.with_values``) -> ``Trainer``. No Ray import here: ``grokray sweep validate`` runs
without starting anything.

Example:
    >>> spec = spec_from_dict({"name": "demo", "parameters": {"data.phi": {"values": [3.6, 7.2]}}})
    >>> [t["data.phi"] for t in spec.grid()], spec.trial_config({"data.phi": 3.6}).data.phi
    ([3.6, 7.2], 3.6)
"""
from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from grokray.config import (MAX_BUDGET, SECTIONS, ConfigError, TrialConfig, check_tracking_uri, coerce, read_yaml,
                            to_plain, trial_config_from_dict)
from grokray.sweep.kinds import DEFAULT_KIND, KINDS, SweepKind
from grokray.sweep.params import (Parameter, check_name, int_at_least, mapping, no_unknown, parse_parameter,
                                  without_name)
from grokray.sweep.stopper import Scheduler, StopRule, parse_stopping
from grokray.criteria import CRITERIA, DEFAULT_CRITERION
from grokray.verdict import EVIDENCE_MODES, SPLITS

METHODS = ("grid", "random", "optuna", "boundary")
#: CPUs or GPUs one trial may ask for: beyond this a typo (1e30) that Tune would wait on forever.
MAX_RESOURCES = 10_000
#: Members one pack may hold (a GPU's memory ends long before).
MAX_PACK = 4096


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0
    #: Trials trained together in one process as one batched model (grokray.sweep.packing): a count,
    #: or "auto" (1 on CPU, where packing measured no faster; from free GPU memory with gpu > 0).
    pack: int | str = 1


@dataclass(frozen=True)
class ClassifierSpec:
    enabled: bool = True
    split: str = "ood"
    #: Which criterion (grokray.criteria.REGISTRY) decides true vs fake for grokray.label; every
    #: criterion is tagged (grokray.label_<criterion>) whenever the evidence is computed.
    criterion: str = DEFAULT_CRITERION
    patching_queries: int = 200
    #: When the checkpoint is examined: ``auto`` only for runs whose curves generalized (the only
    #: runs the evidence can move between true and fake), ``always`` or ``never``.
    evidence: str = "auto"


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: TrialConfig                # the base trial config with the sweep's budget applied
    parameters: tuple[Parameter, ...]
    method: str = "grid"
    description: str = ""
    max_steps: int | None = None
    num_samples: int = 1
    metric: dict = field(default_factory=lambda: {"name": "acc/test_inferred_ood", "mode": "max"})
    stopping: StopRule = field(default_factory=StopRule)
    scheduler: Scheduler = field(default_factory=Scheduler)
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    max_failures: int = 2
    tracking_uri: str | None = None
    experiment: str | None = None
    storage: str | None = None       # None: the default (see grokray.sweep.driver.default_storage)
    classifier: ClassifierSpec = field(default_factory=ClassifierSpec)
    #: method boundary: ``min_coarse`` values per axis in the first design, ``island_probe`` (0: off)
    boundary: dict = field(default_factory=lambda: {"min_coarse": 3, "island_probe": 0})
    kind: str = DEFAULT_KIND
    kind_spec: Any = None            # the kind's own section (a FinetuneSpec for kind finetune)
    source: str | None = None        # the file it came from
    raw: dict = field(default_factory=dict)  # the spec as written, base inlined (saved with the sweep for resume)
    given: tuple[str, ...] = ()      # the top-level keys the spec wrote (the rest are defaults: filled_in)

    # ------------------------------------------------------------------ derived
    @property
    def kind_impl(self) -> SweepKind:
        return KINDS[self.kind]

    @property
    def swept_keys(self) -> list[str]:
        """Keys that actually vary (more than one value, or a distribution)."""
        return [p.key for p in self.parameters if p.values is None or len(p.values) > 1]

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    @property
    def budget(self) -> int:
        return self.base.train.max_steps

    def filled_in(self) -> list[str]:
        """What the spec as written leaves to defaults, in words (``grokray sweep validate`` says it)."""
        written = set(self.given)
        out = []
        if "base" not in written:
            out.append("base: grokray's built-in trial defaults (grokray/config.py; sweeps/trials/default.yaml is "
                       "the calibrated trial)")
        if "method" not in written:
            out.append(f"method: {self.method}")
        if "max_steps" not in written:
            out.append(f"max_steps: {self.budget} (the base's train.max_steps)")
        if "stopping" not in written:
            out.append("stopping: none beyond the budget (no memorize_by; cleanup_window "
                       f"{self.stopping.cleanup_window:g} once generalized)")
        if "resources" not in written:
            out.append(f"resources: {self.resources.cpu:g} cpu / {self.resources.gpu:g} gpu per trial")
        if "max_concurrent" not in written:
            out.append("max_concurrent: as many as the resources allow")
        if "classifier" not in written:
            c = self.classifier
            out.append(f"classifier: on, split {c.split}, criterion {c.criterion}, evidence {c.evidence}")
        if "tracking" not in written:
            out.append("tracking: $MLFLOW_TRACKING_URI, else ./mlflow.db")
        return out

    @property
    def map_split(self) -> str:
        """The split whose Liu et al. phase the map shows: the classifier's, else the stop rule's.
        A trial reports its phase on it and the boundary search refines on it, so both read one phase."""
        return self.classifier.split if self.classifier.enabled else self.stopping.split

    def alternatives(self) -> dict[str, list]:
        """Each listed parameter's values (naming a grouped value by what differs needs them all)."""
        return {p.key: list(p.values) for p in self.parameters if p.values is not None}

    def boundary_axes(self) -> tuple[dict[str, list], dict[str, list], dict[str, Any], dict[str, list]]:
        """Method boundary: ``(axes, facets, constants, replicates)``. Axes: parameters whose values
        are all numbers (refined, in the listed order); facets: the other parameters with several
        values, and ``data.seed`` (a graph is searched on its own, not interpolated); replicates:
        ``seed`` (every proposed point runs once per initialisation; replicates that disagree make
        the point mixed, so the search refines around it); constants: single values."""
        axes, facets, constants, replicates = {}, {}, {}, {}
        for p in self.parameters:
            vals = list(p.values or [])
            if len(vals) == 1:
                constants[p.key] = vals[0]
            elif p.key == "seed":
                replicates[p.key] = vals
            elif p.key.split(".")[-1] != "seed" and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in vals):
                axes[p.key] = sorted(vals)
            else:
                facets[p.key] = vals
        return axes, facets, constants, replicates

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
        """The trial config for Tune's values: the base with every value applied (names of
        grouped values dropped)."""
        # keys starting with "_" are the search's notes (method boundary: why a point was proposed), not config
        return self.base.with_values({k: without_name(v) for k, v in values.items() if not k.startswith("_")})

    def renamed(self, name: str) -> "SweepSpec":
        """The same spec under another name (``--name``), checked like the spec's own name."""
        check_name(name, "--name")
        return dataclasses.replace(self, name=name, raw={**self.raw, "name": name})


# --------------------------------------------------------------------------- checks

def _check_parameter_values(base: TrialConfig, p: Parameter) -> None:
    """Every value (or both bounds) must make a valid trial config: reuse the config's validation."""
    for i, v in enumerate(p.samples()):
        try:
            base.with_values({p.key: without_name(v)})
        except ConfigError as e:
            if e.key is None or not (e.key == p.key or e.key.startswith(p.key + ".")) or (
                    e.key == p.key and e.problem.startswith("unknown key")):
                if p.key in SECTIONS and e.key and e.key.startswith(p.key + "."):
                    raise ConfigError(e.problem, key=p.where(i) + e.key[len(p.key):], value=e.value) from None
                # Not a trial-config key (e.g. "data.phy"), or the value broke another key.
                raise ConfigError(e.problem, key=f"parameters.{p.key}", value=e.value) from None
            raise ConfigError(e.problem, key=p.where(i) + e.key[len(p.key):], value=e.value) from None


def _check_no_key_twice(parameters: list[Parameter]) -> None:
    """A key set by a grouped value and by a dotted parameter, or by two groups: which would win
    is an accident of order, so it is refused."""
    setters: dict[str, str] = {}
    for p in parameters:
        keys = {p.key}
        if p.key in SECTIONS:
            keys = {f"{p.key}.{k}" for v in (p.values or []) if isinstance(v, Mapping)
                    for k in without_name(v)}
        for k in sorted(keys):
            if k in setters and setters[k] != p.key:
                raise ConfigError(f"set twice: by parameters.{setters[k]} and by parameters.{p.key}; keep one",
                                  key=f"parameters.{p.key}", value=k)
            setters[k] = p.key


# --------------------------------------------------------------------------- parsing

_TOP_KEYS = ("name", "description", "method", "kind", "base", "parameters", "max_steps", "num_samples", "metric",
             "stopping", "resources", "max_concurrent", "max_failures", "tracking", "storage", "classifier", "boundary")


def spec_from_dict(raw: Any, *, source: str | os.PathLike | None = None) -> SweepSpec:
    """Build and validate a :class:`SweepSpec`; every problem is a one-line ConfigError."""
    try:
        return _spec_from_dict(raw, source)
    except ConfigError as e:
        raise e.with_source(source) from None


def _base(raw: Mapping, source: str | os.PathLike | None) -> TrialConfig:
    """``base:`` a path (relative to the spec file) or an inline trial config."""
    base_raw = raw.get("base")
    if isinstance(base_raw, str) and not base_raw.strip():
        raise ConfigError("must be a path to a trial config or an inline mapping", key="base", value=base_raw)
    if isinstance(base_raw, str):
        path = Path(base_raw)
        if not path.is_absolute() and source is not None:
            path = Path(source).parent / path
        try:
            return trial_config_from_dict(read_yaml(path), source=path)
        except ConfigError as e:
            if e.problem == "file not found":
                raise ConfigError(f"base trial config not found at {path.resolve()} (a path is relative to the spec's own "
                                  "folder)", key="base", value=base_raw) from None
            raise
    if base_raw is not None and not isinstance(base_raw, Mapping):
        raise ConfigError("must be a path to a trial config or an inline mapping", key="base", value=base_raw)
    try:
        return trial_config_from_dict(base_raw)
    except ConfigError as e:
        raise e.with_prefix("base") from None


def _spec_from_dict(raw: Any, source: str | os.PathLike | None) -> SweepSpec:
    if not isinstance(raw, Mapping):
        raise ConfigError("a sweep spec must be a mapping", value=type(raw).__name__)
    kind_name = raw.get("kind", DEFAULT_KIND)
    if not isinstance(kind_name, str) or kind_name not in KINDS:
        raise ConfigError(f"must be one of {', '.join(KINDS)}", key="kind", value=kind_name)
    kind = KINDS[kind_name]
    for other in KINDS.values():
        for k in other.spec_keys:
            if k in raw and k not in kind.spec_keys:
                raise ConfigError(f"only for kind: {other.name}", key=k, value=raw[k])
    no_unknown(raw, (*_TOP_KEYS, *kind.spec_keys), "")
    name = check_name(raw.get("name"))
    method = raw.get("method", "grid")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"must be one of {', '.join(METHODS)}", key="method", value=method)

    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError("must be a string", key="description", value=description)

    base = _base(raw, source)  # its train.max_steps is checked against MAX_BUDGET there (config.validate)
    max_steps = int_at_least(raw.get("max_steps"), 1, "max_steps", maximum=MAX_BUDGET)
    if max_steps is not None:
        base = base.with_values({"train.max_steps": max_steps})

    parameters = [parse_parameter(str(k), v) for k, v in mapping(raw.get("parameters"), "parameters").items()]
    kind_spec = kind.parse(raw, parameters)
    for p in parameters:
        if not kind.owns(p.key):
            _check_parameter_values(base, p)
        if method in ("grid", "boundary") and p.values is None:
            raise ConfigError(f"method {method} needs 'values' (a distribution needs method random or optuna)",
                              key=f"parameters.{p.key}", value=p.distribution)
    _check_no_key_twice(parameters)
    num_samples = int_at_least(raw.get("num_samples", 1), 1, "num_samples", maximum=100_000)

    metric = dict(mapping(raw.get("metric"), "metric")) or {"name": "acc/test_inferred_ood", "mode": "max"}
    no_unknown(metric, ("name", "mode"), "metric")
    if not isinstance(metric.get("name"), str) or not metric["name"]:
        raise ConfigError("needs a metric name", key="metric.name", value=metric.get("name"))
    metric.setdefault("mode", "max")
    if metric["mode"] not in ("min", "max"):
        raise ConfigError("must be min or max", key="metric.mode", value=metric["mode"])

    stopping, scheduler = parse_stopping(raw.get("stopping"))
    resources = _parse_resources(mapping(raw.get("resources"), "resources"))
    max_concurrent = int_at_least(raw.get("max_concurrent"), 1, "max_concurrent")
    max_failures = int_at_least(raw.get("max_failures", 2), 0, "max_failures")

    tracking = mapping(raw.get("tracking"), "tracking")
    no_unknown(tracking, ("uri", "experiment"), "tracking")
    for k in ("uri", "experiment"):
        if tracking.get(k) is not None and not isinstance(tracking[k], str):
            raise ConfigError("must be a string", key=f"tracking.{k}", value=tracking[k])
    check_tracking_uri(tracking.get("uri"), "tracking.uri")
    if tracking.get("experiment") is not None and not tracking["experiment"].strip():
        raise ConfigError("must not be empty (leave it out for the sweep's name)", key="tracking.experiment",
                          value=tracking["experiment"])
    storage = raw.get("storage")
    if storage is not None and (not isinstance(storage, str) or not storage):
        raise ConfigError("must be a path or URI string", key="storage", value=storage)

    classifier = _parse_classifier(mapping(raw.get("classifier"), "classifier"), kind.labelled)

    if resources.pack != 1 and (method != "grid" or not kind.packable):
        raise ConfigError(f"packing needs method grid and kind trial (the pack plan is the grid's; this spec has "
                          f"method {method}, kind {kind_name})", key="resources.pack", value=resources.pack)

    if method == "optuna":
        if not parameters:
            raise ConfigError("method optuna needs at least one parameter to search", key="parameters", value={})
        for p in parameters:
            for i, v in enumerate(p.values or []):
                if not (v is None or isinstance(v, (bool, int, float, str))):
                    raise ConfigError("method optuna takes plain values (numbers, strings, booleans) as choices",
                                      key=f"parameters.{p.key}.values[{i}]", value=v)

    boundary = dict(mapping(raw.get("boundary"), "boundary"))
    no_unknown(boundary, ("min_coarse", "island_probe"), "boundary")
    if boundary and method != "boundary":
        raise ConfigError("only for method: boundary", key="boundary", value=boundary)
    boundary = {"min_coarse": int_at_least(boundary.get("min_coarse", 3), 2, "boundary.min_coarse"),
                "island_probe": int_at_least(boundary.get("island_probe", 0), 0, "boundary.island_probe")}

    written = to_plain(raw)
    written["base"] = base.to_dict()  # inline: a resumed sweep must not depend on files
    spec = SweepSpec(name=name, base=base, parameters=tuple(parameters), method=method,
                     description=description or "", max_steps=max_steps, num_samples=num_samples,
                     metric=metric, stopping=stopping, scheduler=scheduler, resources=resources,
                     max_concurrent=max_concurrent, max_failures=max_failures, tracking_uri=tracking.get("uri"),
                     experiment=tracking.get("experiment"), storage=storage, classifier=classifier,
                     kind=kind_name, kind_spec=kind_spec, source=str(source) if source is not None else None,
                     raw=written, given=tuple(str(k) for k in raw), boundary=boundary)
    kind.check(spec)
    return spec


def _parse_classifier(raw: Mapping, labelled: bool) -> ClassifierSpec:
    no_unknown(raw, ("enabled", "split", "criterion", "patching_queries", "evidence"), "classifier")
    c = ClassifierSpec(enabled=coerce(raw.get("enabled", True), bool, "classifier.enabled") and labelled,
                       split=raw.get("split", "ood"), criterion=raw.get("criterion", DEFAULT_CRITERION),
                       patching_queries=int_at_least(raw.get("patching_queries", 200), 1,
                                                     "classifier.patching_queries", maximum=100_000),
                       evidence=raw.get("evidence", "auto"))
    if c.evidence not in EVIDENCE_MODES:
        raise ConfigError(f"must be one of {', '.join(EVIDENCE_MODES)}", key="classifier.evidence", value=c.evidence)
    if c.split not in SPLITS:
        raise ConfigError(f"must be one of {', '.join(SPLITS)}", key="classifier.split", value=c.split)
    if c.criterion not in CRITERIA:
        raise ConfigError(f"must be one of {', '.join(CRITERIA)}", key="classifier.criterion", value=c.criterion)
    return c


def _parse_resources(raw: Mapping) -> Resources:
    no_unknown(raw, ("cpu", "gpu", "pack"), "resources")
    pack = raw.get("pack", 1)
    if pack != "auto":
        pack = int_at_least(pack, 1, "resources.pack", maximum=MAX_PACK)
    r = Resources(cpu=coerce(raw.get("cpu", 1), float, "resources.cpu"),
                  gpu=coerce(raw.get("gpu", 0), float, "resources.gpu"), pack=pack)
    if r.cpu <= 0:
        raise ConfigError("must be > 0", key="resources.cpu", value=r.cpu)
    if r.gpu < 0:
        raise ConfigError("must be >= 0", key="resources.gpu", value=r.gpu)
    for k in ("cpu", "gpu"):
        if getattr(r, k) > MAX_RESOURCES:
            raise ConfigError(f"must be <= {MAX_RESOURCES:,} (no node has more; Tune would wait forever)",
                              key=f"resources.{k}", value=getattr(r, k))
    if r.gpu > 1 and not float(r.gpu).is_integer():
        raise ConfigError("above 1 a GPU count must be whole", key="resources.gpu", value=r.gpu)
    return r


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate ``sweeps/NAME.yaml``."""
    return spec_from_dict(read_yaml(path), source=path)
