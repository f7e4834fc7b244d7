"""Trial configuration: dataclasses, YAML loading, ``--set`` overrides, validation.

One trial is described by a :class:`TrialConfig` with three sections and a seed::

    seed: 0
    data:  {n_entities: 100, phi: 7.2, augmentation: both_full, ...}
    model: {d_model: 128, n_layers: 1, n_loops: 2, ...}
    train: {lr: 3.0e-3, weight_decay: 1.0, max_steps: 20000, ...}

The same schema is the ``base`` of a sweep spec, and a sweep's dotted parameter
names (``data.phi``, ``model.n_loops``, ``seed``) are paths into it.

This module is the one place where user input becomes typed values, so it is also
where bad input becomes a one-line :class:`ConfigError` naming the file, the key
and the value. The defaults are the calibrated small CPU trial (see README,
"Calibration"); paper-scale values live in ``sweeps/paper.yaml``.

Example:
    >>> cfg = load_trial_config(None, overrides=["data.phi=12.6", "model.n_loops=1"])
    >>> cfg.data.phi, cfg.model.n_loops
    (12.6, 1)
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A user mistake in a config or spec, reported as one line.

    ``str(err)`` reads ``FILE: KEY: problem (got VALUE)`` with the parts that are known.
    """

    def __init__(self, problem: str, *, key: str | None = None, value: Any = dataclasses.MISSING,
                 source: str | os.PathLike | None = None):
        self.problem, self.key, self.value = problem, key, value
        self.source = str(source) if source is not None else None
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [p for p in (self.source, self.key) if p]
        msg = ": ".join(parts + [self.problem])
        if self.value is not dataclasses.MISSING:
            msg += f" (got {self.value!r})"
        return msg

    def with_source(self, source: str | os.PathLike | None) -> "ConfigError":
        """The same error, attributed to ``source`` unless it already names one."""
        if self.source is not None or source is None:
            return self
        return ConfigError(self.problem, key=self.key, value=self.value, source=source)

    def with_prefix(self, prefix: str) -> "ConfigError":
        """The same error with its key placed under ``prefix`` (``data`` + ``phi`` -> ``data.phi``)."""
        key = f"{prefix}.{self.key}" if self.key else prefix
        return ConfigError(self.problem, key=key, value=self.value, source=self.source)


# --------------------------------------------------------------------------- augmentation

@dataclass(frozen=True)
class HopInjection:
    """One hop of He et al.'s augmentation: inject ``k`` queries for a ``ratio`` of OOD hop facts."""
    ratio: float = 0.0  # fraction of the OOD hop facts (those in OOD test compositions) that get queries
    k: int = 0          # queries added per chosen fact (fewer if the bridge has fewer ID facts)


#: He et al. appendix C settings as (hop1 ratio, hop2 ratio, k per injected fact as a fraction of phi).
#: He et al. equalize supervision: at phi 18 an ID fact appears in ~18 training compositions as a
#: hop, so an injected OOD fact gets k = 18 ("full") or 9 ("half"). Copying k = 18 to another phi
#: over-supervises the OOD facts and plants a shortcut (docs/calibration.md): k = round(phi) and
#: round(phi / 2) keep the papers' equalization at every phi (:func:`preset_injections`).
AUGMENTATION_PRESETS: dict[str, tuple[float, float, float]] = {
    "none": (0.0, 0.0, 0.0),
    "both_full": (1.0, 1.0, 1.0),
    "both_half": (0.5, 0.5, 0.5),
    "hop1_full": (1.0, 0.0, 1.0),
    "hop2_full": (0.0, 1.0, 1.0),
}


def preset_injections(name: str, phi: float) -> tuple[HopInjection, HopInjection]:
    """The (hop1, hop2) injections of a preset at ``phi``: ``k = round(phi x share)``.

    >>> preset_injections("both_full", 18.0)
    (HopInjection(ratio=1.0, k=18), HopInjection(ratio=1.0, k=18))
    >>> preset_injections("both_half", 7.2)
    (HopInjection(ratio=0.5, k=4), HopInjection(ratio=0.5, k=4))
    """
    r1, r2, share = AUGMENTATION_PRESETS[name]
    k = int(round(phi * share)) if share else 0
    return (HopInjection(r1, k if r1 else 0), HopInjection(r2, k if r2 else 0))


# --------------------------------------------------------------------------- sections

@dataclass
class DataConfig:
    """The two-hop knowledge graph and its splits (Wang et al. / He et al. generator)."""
    n_entities: int = 100        # |E|; paper scale 2000
    n_relations: int = 20        # |R|; paper scale 200
    out_degree: int = 20         # distinct relations per head entity; paper 20
    # atomic FACTS (not entities) held out of compositions; paper 5% of 40k facts. The OOD test set
    # grows with its square: 0.09 gives ~330 both-OOD queries at this size (0.05: ~106, one query
    # = one point of accuracy) and still allows phi 18.
    ood_fraction: float = 0.09
    test_id_fraction: float = 0.005  # both-ID compositions held out as test_inferred_id; paper 0.5%
    phi: float = 7.2             # |train_inferred| / |ID atomic|; the paper's knob for grokking speed
    # preset name (none, both_full, both_half, hop1_full, hop2_full) or
    # {hop1: {ratio, k}, hop2: {ratio, k}}
    augmentation: Any = "none"
    probe_size: int = 1000       # max queries per evaluation probe (papers: 3000)
    seed: int = 0                # graph seed; separate from the trial seed so seeds share data

    def injections(self) -> tuple[HopInjection, HopInjection]:
        """The (hop1, hop2) injection this config asks for (preset resolved)."""
        return resolve_augmentation(self.augmentation, self.phi)

    def augmentation_name(self) -> str:
        """Preset name if the injection matches one at this phi, else a compact description."""
        hop1, hop2 = self.injections()
        if isinstance(self.augmentation, str):
            return self.augmentation
        for name in AUGMENTATION_PRESETS:
            if preset_injections(name, self.phi) == (hop1, hop2):
                return name
        return f"hop1({hop1.ratio:g},{hop1.k})+hop2({hop2.ratio:g},{hop2.k})"


@dataclass
class ModelConfig:
    """The looped (parameter-sharing) transformer; ``n_loops=1`` is the non-shared baseline."""
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512             # 4 x d_model, as GPT-2
    n_layers: int = 1            # distinct blocks in the shared stack
    n_loops: int = 2             # times the stack is applied; Wang et al. and Kohli et al.: >=2 for OOD
    reinject_input: bool = False  # add the input embedding before every loop after the first (TRM-style)
    # Causal attention (GPT-2, Wang et al.): the r1 position never sees r2, so hop 1 must be
    # computed there. false: every position sees the whole query (He et al.'s TRM), which also
    # allows answers that never form the bridge at r1.
    causal: bool = True
    tie_embeddings: bool = False  # unembedding = token embedding^T (GPT-2, as in Wang et al.)
    # "torch": PyTorch's defaults (embeddings N(0, 1), linear layers Kaiming-uniform); the large
    # initial norm is what makes the small CPU trials grok within minutes (calibration).
    # "gpt2": N(0, 0.02), residual projections scaled by 1/sqrt(2 x block applications).
    init: str = "torch"


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpoint schedule of one trial."""
    lr: float = 3e-3
    weight_decay: float = 1.0    # He et al. use 1.0; Wang et al. 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 200      # linear warm-up from 0, then the schedule below
    lr_schedule: str = "step"    # constant | step (multiply by lr_drop_factor at lr_drop_step)
    lr_drop_step: int = 800      # calibrated: memorization completes at ~1000, ID generalizes ~10x later
    lr_drop_factor: float = 0.2
    batch_size: int = 512
    max_steps: int = 12000
    precision: str = "bf16"      # fp32 | bf16 (autocast; loss always float32) | auto
    device: str = "auto"         # auto (cuda if available) | cpu | cuda | cuda:N
    threads: int = 0             # torch threads; 0 leaves torch's default (Ray sets 1 per trial)
    eval_per_decade: int = 24    # log-spaced evaluations per factor of 10 in steps
    eval_max_interval: int = 500  # ... but never more than this many steps apart
    # steps whose weights are kept for later analysis: "log" (a few per decade + last), or a list
    checkpoint_steps: Any = "log"
    lens_sample: int = 256       # test queries per split the logit lens decodes at every evaluation


@dataclass
class TrialConfig:
    seed: int = 0                # model init and batch order
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def with_values(self, values: Mapping[str, Any]) -> "TrialConfig":
        """A new validated config with dotted keys replaced (a sweep trial's values); see
        :func:`replace_dotted`. One-line ConfigError for a bad key or value."""
        return replace_dotted(self, values)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. ``{'data.phi': 7.2, 'train.betas': (0.9, 0.98), 'seed': 0}``."""
        return flatten(self.to_dict())


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
PRECISIONS = ("fp32", "bf16", "auto")
INITS = ("torch", "gpt2")
LR_SCHEDULES = ("constant", "step")


# --------------------------------------------------------------------------- helpers

def to_plain(obj: Any) -> Any:
    """Dataclasses, tuples and mappings -> JSON/YAML-friendly dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve_augmentation(value: Any, phi: float = 18.0) -> tuple[HopInjection, HopInjection]:
    """Preset name (resolved at ``phi``) or ``{hop1: {ratio, k}, hop2: {ratio, k}}`` -> validated (hop1, hop2)."""
    if value is None:
        value = "none"
    if isinstance(value, str):
        if value not in AUGMENTATION_PRESETS:
            raise ConfigError(f"unknown augmentation preset; choose one of {', '.join(AUGMENTATION_PRESETS)}",
                              key="augmentation", value=value)
        return preset_injections(value, phi)
    if not isinstance(value, Mapping):
        raise ConfigError("must be a preset name or a mapping {hop1: {ratio, k}, hop2: {ratio, k}}",
                          key="augmentation", value=value)
    unknown = set(value) - {"hop1", "hop2"}
    if unknown:
        raise ConfigError("unknown key; expected hop1 and/or hop2", key=f"augmentation.{sorted(unknown)[0]}",
                          value=value[sorted(unknown)[0]])
    hops = []
    for hop in ("hop1", "hop2"):
        spec = value.get(hop) or {}
        if not isinstance(spec, Mapping):
            raise ConfigError("must be a mapping {ratio, k}", key=f"augmentation.{hop}", value=spec)
        bad = set(spec) - {"ratio", "k"}
        if bad:
            k = sorted(bad)[0]
            raise ConfigError("unknown key; expected ratio and k", key=f"augmentation.{hop}.{k}", value=spec[k])
        ratio = coerce(spec.get("ratio", 0.0), float, f"augmentation.{hop}.ratio")
        k = coerce(spec.get("k", 0), int, f"augmentation.{hop}.k")
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError("ratio must be in [0, 1]", key=f"augmentation.{hop}.ratio", value=ratio)
        if k < 0:
            raise ConfigError("k must be >= 0", key=f"augmentation.{hop}.k", value=k)
        hops.append(HopInjection(ratio, k))
    return hops[0], hops[1]


def coerce(value: Any, typ: Any, key: str) -> Any:
    """Convert a YAML/CLI value to ``typ`` or raise a one-line ConfigError."""
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError("must be true or false", key=key, value=value)
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError("must be an integer", key=key, value=value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError("must be an integer", key=key, value=value)
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError("must be a number", key=key, value=value)
        try:
            # PyYAML reads "3e-3" as a string (YAML 1.1 wants "3.0e-3"): accept it.
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError("must be a number", key=key, value=value) from None
        if not math.isfinite(f):
            raise ConfigError("must be finite", key=key, value=value)
        return f
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError("must be a string", key=key, value=value)
        return value
    if origin is tuple:
        args = typing.get_args(typ)
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"must be a list of {len(args)} values", key=key, value=value)
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"unsupported config type {typ!r} for {key}")  # programming error, not user input


def _build_section(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping", key=prefix, value=raw)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for k in raw:
        if k not in names:
            raise ConfigError(f"unknown key; known keys: {', '.join(names)}", key=f"{prefix}.{k}", value=raw[k])
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _check(cond: bool, problem: str, key: str, value: Any) -> None:
    if not cond:
        raise ConfigError(problem, key=key, value=value)


def validate(cfg: TrialConfig) -> TrialConfig:
    """Check ranges and cross-field constraints; raises ConfigError naming the key and value."""
    d, m, t = cfg.data, cfg.model, cfg.train
    _check(d.n_entities >= 2, "must be >= 2", "data.n_entities", d.n_entities)
    _check(d.n_relations >= 1, "must be >= 1", "data.n_relations", d.n_relations)
    _check(1 <= d.out_degree, "must be >= 1", "data.out_degree", d.out_degree)
    _check(d.out_degree <= d.n_relations, f"must be <= data.n_relations ({d.n_relations})",
           "data.out_degree", d.out_degree)
    _check(0.0 <= d.ood_fraction < 1.0, "must be in [0, 1)", "data.ood_fraction", d.ood_fraction)
    _check(0.0 <= d.test_id_fraction < 1.0, "must be in [0, 1)", "data.test_id_fraction", d.test_id_fraction)
    _check(d.phi >= 0.0, "must be >= 0", "data.phi", d.phi)
    _check(d.probe_size >= 1, "must be >= 1", "data.probe_size", d.probe_size)
    try:
        resolve_augmentation(d.augmentation, d.phi)
    except ConfigError as e:
        raise e.with_prefix("data") from None
    _check(m.d_model >= 1, "must be >= 1", "model.d_model", m.d_model)
    _check(m.n_heads >= 1, "must be >= 1", "model.n_heads", m.n_heads)
    _check(m.d_model % m.n_heads == 0, f"must divide model.d_model ({m.d_model})", "model.n_heads", m.n_heads)
    _check(m.d_mlp >= 1, "must be >= 1", "model.d_mlp", m.d_mlp)
    _check(m.n_layers >= 1, "must be >= 1", "model.n_layers", m.n_layers)
    _check(m.n_loops >= 1, "must be >= 1", "model.n_loops", m.n_loops)
    _check(m.init in INITS, f"must be one of {', '.join(INITS)}", "model.init", m.init)
    _check(t.lr > 0, "must be > 0", "train.lr", t.lr)
    _check(t.weight_decay >= 0, "must be >= 0", "train.weight_decay", t.weight_decay)
    for i, b in enumerate(t.betas):
        _check(0.0 <= b < 1.0, "must be in [0, 1)", f"train.betas[{i}]", b)
    _check(t.warmup_steps >= 0, "must be >= 0", "train.warmup_steps", t.warmup_steps)
    _check(t.lr_schedule in LR_SCHEDULES, f"must be one of {', '.join(LR_SCHEDULES)}",
           "train.lr_schedule", t.lr_schedule)
    _check(t.lr_drop_step >= 0, "must be >= 0", "train.lr_drop_step", t.lr_drop_step)
    _check(t.lr_drop_factor > 0, "must be > 0", "train.lr_drop_factor", t.lr_drop_factor)
    _check(t.batch_size >= 1, "must be >= 1", "train.batch_size", t.batch_size)
    _check(t.max_steps >= 1, "must be >= 1", "train.max_steps", t.max_steps)
    _check(t.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}", "train.precision", t.precision)
    _check(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
           "must be auto, cpu, cuda or cuda:N", "train.device", t.device)
    _check(t.threads >= 0, "must be >= 0", "train.threads", t.threads)
    _check(t.eval_per_decade >= 1, "must be >= 1", "train.eval_per_decade", t.eval_per_decade)
    _check(t.eval_max_interval >= 1, "must be >= 1", "train.eval_max_interval", t.eval_max_interval)
    _check(t.lens_sample >= 0, "must be >= 0", "train.lens_sample", t.lens_sample)
    cs = t.checkpoint_steps
    if isinstance(cs, str):
        _check(cs in ("log", "none"), "must be 'log', 'none' or a list of steps", "train.checkpoint_steps", cs)
    else:
        ok = isinstance(cs, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in cs)
        _check(ok, "must be 'log', 'none' or a list of non-negative integer steps", "train.checkpoint_steps", cs)
        t.checkpoint_steps = list(cs)
    return cfg


def trial_config_from_dict(raw: Any, *, source: str | os.PathLike | None = None) -> TrialConfig:
    """Build and validate a TrialConfig from a plain mapping (as read from YAML)."""
    try:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError("a trial config must be a mapping with data / model / train sections",
                              value=type(raw).__name__)
        known = {"seed", *SECTIONS}
        for k in raw:
            if k not in known:
                raise ConfigError(f"unknown key; known keys: {', '.join(sorted(known))}", key=str(k), value=raw[k])
        sections = {name: _build_section(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
        seed = coerce(raw.get("seed", 0), int, "seed")
        return validate(TrialConfig(seed=seed, **sections))
    except ConfigError as e:
        raise e.with_source(source) from None


def parse_override(text: str) -> tuple[str, Any]:
    """``"data.phi=12.6"`` -> ``("data.phi", 12.6)``; the value is read as YAML (safely)."""
    if "=" not in text:
        raise ConfigError("an override must look like key=value", key="--set", value=text)
    key, _, raw_value = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError("an override must look like key=value", key="--set", value=text)
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return key, value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``raw['data']['phi'] = value`` for ``key='data.phi'``, creating sections as needed."""
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError("cannot set a sub-key of a non-mapping value", key=key, value=child)
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | os.PathLike) -> Any:
    """Safe-load a YAML file; missing files and syntax errors become one-line ConfigErrors."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError("file not found", source=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", source=path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML: {where}{problem}", source=path) from None


def load_trial_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrialConfig:
    """Read a trial YAML (or start from defaults if ``path`` is None) and apply ``key=value`` overrides."""
    raw = read_yaml(path) if path is not None else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("a trial config must be a mapping with data / model / train sections",
                          value=type(raw).__name__, source=path)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    return trial_config_from_dict(raw, source=path)


def replace_dotted(cfg: TrialConfig, values: Mapping[str, Any]) -> TrialConfig:
    """A new validated config with dotted keys replaced (used by sweeps).

    A whole section given as a mapping is merged key by key, so one swept value can set
    several keys together (``model: {n_layers: 2, n_loops: 1}``).
    """
    raw = cfg.to_dict()
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for sub, v in value.items():
                set_dotted(raw, f"{key}.{sub}", v)
        else:
            set_dotted(raw, key, value)
    return trial_config_from_dict(raw)
