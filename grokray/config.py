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
import re
import reprlib
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

from grokray.errors import first_line, reason


#: How a bad value is shown: bounded, so a 10,000-element list or a 300-digit number still
#: gives one readable line (and a self-referencing YAML alias structure cannot blow it up).
_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxlist = _VALUE_REPR.maxtuple = _VALUE_REPR.maxset = _VALUE_REPR.maxdict = 12
_VALUE_REPR.maxstring, _VALUE_REPR.maxother, _VALUE_REPR.maxlong, _VALUE_REPR.maxlevel = 160, 160, 40, 5


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
            msg += f" (got {_VALUE_REPR.repr(self.value)})"
        return " ".join(msg.splitlines())  # one line, whatever a problem or a source holds

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
    # NEGATIVE CONTROL, off by default (null). A step number: from that step on, the OOD test queries
    # themselves (answers included) are trained, and the first-hop atomic facts of those queries are
    # withheld from training all along. The model cannot know their bridges, so a right OOD answer
    # is a memorized whole query, never a composition: a trained model whose OOD accuracy no
    # bridge mediates (docs/calibration.md, "The negative control"). 0 = from the start.
    memorize_ood_queries: Any = None
    # With memorize_ood_queries: also withhold the SECOND-hop atomic facts of those queries, so that no
    # entity the model knows reproduces their answers (withholding the first hops alone leaves the
    # bridge inferable from the memorized compositions and its known second hops: docs/calibration.md).
    withhold_hop2: bool = False

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
    # test queries per split the bridge interchange test runs on at every evaluation (the same ones
    # each time: circuit/interchange/<split>, when the bridge starts to mediate answers); 0 = off
    circuit_sample: int = 128


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

# Limits beyond which a value is a typo (1e30, an extra zero or six), not a plan. Without them
# a number that parses and passes "must be >= 1" overflows numpy or torch (a traceback), fills
# the memory (the OOM killer), or loops for hours before the first step.
#: Steps a trial may be given, and the bound of every other count and step in a trial config.
MAX_BUDGET = 10**9
#: Seeds: numpy takes non-negative seeds only; 32 bits are every seed anyone types.
MAX_SEED = 2**32 - 1
#: Two-hop compositions (n_entities x out_degree^2) and fact-table cells (n_entities x
#: n_relations) of a graph: ~100x paper scale (800k compositions); int64 arrays of that many
#: rows already take gigabytes.
MAX_GRAPH = 10**8
#: Parameters of a model (a lower bound from the config): ~80x the paper's 12.6M-parameter block.
MAX_PARAMS = 10**9
#: Evaluations per decade of steps: beyond this every step is evaluated anyway.
MAX_EVAL_PER_DECADE = 1000
#: torch threads of one trial.
MAX_THREADS = 4096
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
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
        if k > MAX_BUDGET:
            raise ConfigError(f"k must be <= {MAX_BUDGET:,}", key=f"augmentation.{hop}.k", value=k)
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
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for k, v in raw.items():
        if v is None and defaults.get(k) is not None:   # YAML's null (or `key:` with no value) is no value
            default = defaults[k]
            shown = default if default is not dataclasses.MISSING else "its default"
            raise ConfigError(f"needs a value (null given); leave the key out to use the default ({shown!r})",
                              key=f"{prefix}.{k}", value=v)
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _check(cond: bool, problem: str, key: str, value: Any) -> None:
    if not cond:
        raise ConfigError(problem, key=key, value=value)


def _check_counts(cfg: TrialConfig) -> None:
    """Every integer of the config (``train.max_steps`` first among them) at most MAX_BUDGET, seeds
    in [0, MAX_SEED]: a huge int is refused here, by name, instead of overflowing numpy or torch later."""
    for name, cls in SECTIONS.items():
        section = getattr(cfg, name)
        for f in dataclasses.fields(cls):
            value = getattr(section, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and f.name != "seed":
                _check(value <= MAX_BUDGET, f"must be <= {MAX_BUDGET:,}", f"{name}.{f.name}", value)
    for key, seed in (("seed", cfg.seed), ("data.seed", cfg.data.seed)):
        _check(0 <= seed <= MAX_SEED, f"must be in [0, {MAX_SEED}] (2**32 - 1)", key, seed)


def _largest(cfg: TrialConfig, keys: tuple[str, ...]) -> tuple[str, Any]:
    """The key (and value) among ``keys`` furthest above its default: the one to name when a
    product of them is absurd."""
    default = TrialConfig()

    def get(c: TrialConfig, key: str) -> Any:
        section, name = key.split(".")
        return getattr(getattr(c, section), name)
    key = max(keys, key=lambda k: get(cfg, k) / max(get(default, k), 1))
    return key, get(cfg, key)


def _check_sizes(cfg: TrialConfig) -> None:
    """The graph and the model a config asks for fit MAX_GRAPH and MAX_PARAMS (after every
    factor's own range is checked)."""
    d, m = cfg.data, cfg.model
    compositions, cells = d.n_entities * d.out_degree ** 2, d.n_entities * d.n_relations
    for size, what, keys in ((compositions, "n_entities x out_degree^2 two-hop compositions",
                              ("data.n_entities", "data.out_degree")),
                             (cells, "n_entities x n_relations fact-table cells", ("data.n_entities",
                                                                                    "data.n_relations"))):
        if size > MAX_GRAPH:
            key, value = _largest(cfg, keys)
            raise ConfigError(f"a graph of {size:,} {what}: more than {MAX_GRAPH:,} is not a graph this "
                              "generator builds in memory", key=key, value=value)
    params = m.n_layers * (4 * m.d_model ** 2 + 2 * m.d_model * m.d_mlp) + (d.n_entities + d.n_relations) * m.d_model
    if params > MAX_PARAMS:
        key, value = _largest(cfg, ("model.d_model", "model.d_mlp", "model.n_layers", "data.n_entities"))
        raise ConfigError(f"a model of at least {params:,} parameters: more than {MAX_PARAMS:,} is a typo for "
                          "this study", key=key, value=value)


def validate(cfg: TrialConfig) -> TrialConfig:
    """Check ranges and cross-field constraints; raises ConfigError naming the key and value."""
    d, m, t = cfg.data, cfg.model, cfg.train
    _check_counts(cfg)
    _check(d.n_entities >= 2, "must be >= 2", "data.n_entities", d.n_entities)
    _check(d.n_relations >= 1, "must be >= 1", "data.n_relations", d.n_relations)
    _check(1 <= d.out_degree, "must be >= 1", "data.out_degree", d.out_degree)
    _check(d.out_degree <= d.n_relations, f"must be <= data.n_relations ({d.n_relations})",
           "data.out_degree", d.out_degree)
    _check(0.0 <= d.ood_fraction < 1.0, "must be in [0, 1)", "data.ood_fraction", d.ood_fraction)
    _check(0.0 <= d.test_id_fraction < 1.0, "must be in [0, 1)", "data.test_id_fraction", d.test_id_fraction)
    _check(d.phi >= 0.0, "must be >= 0", "data.phi", d.phi)
    _check(d.probe_size >= 1, "must be >= 1", "data.probe_size", d.probe_size)
    late = d.memorize_ood_queries
    _check(late is None or (isinstance(late, int) and not isinstance(late, bool) and late >= 0),
           "must be null (off) or a step number >= 0", "data.memorize_ood_queries", late)
    _check(not d.withhold_hop2 or late is not None, "needs data.memorize_ood_queries (it withholds the second "
           "hops of the memorized OOD queries)", "data.withhold_hop2", d.withhold_hop2)
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
    _check(bool(_DEVICE_RE.fullmatch(t.device)), "must be auto, cpu, cuda or cuda:N", "train.device", t.device)
    _check(0 <= t.threads <= MAX_THREADS, f"must be in [0, {MAX_THREADS}]", "train.threads", t.threads)
    _check(1 <= t.eval_per_decade <= MAX_EVAL_PER_DECADE, f"must be in [1, {MAX_EVAL_PER_DECADE}]",
           "train.eval_per_decade", t.eval_per_decade)
    _check(t.eval_max_interval >= 1, "must be >= 1", "train.eval_max_interval", t.eval_max_interval)
    _check(t.lens_sample >= 0, "must be >= 0", "train.lens_sample", t.lens_sample)
    _check(t.circuit_sample >= 0, "must be >= 0", "train.circuit_sample", t.circuit_sample)
    cs = t.checkpoint_steps
    if isinstance(cs, str):
        _check(cs in ("log", "none"), "must be 'log', 'none' or a list of steps", "train.checkpoint_steps", cs)
    else:
        ok = isinstance(cs, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool)
                                                   and 0 <= s <= MAX_BUDGET for s in cs)
        _check(ok, f"must be 'log', 'none' or a list of integer steps in [0, {MAX_BUDGET:,}]",
               "train.checkpoint_steps", cs)
        t.checkpoint_steps = list(cs)
    _check_sizes(cfg)
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
    if any(not part.strip() for part in key.split(".")):
        raise ConfigError("a dotted key has an empty part (section.key, e.g. data.phi)", key="--set", value=text)
    try:
        value = load_yaml_text(raw_value) if raw_value.strip() else None
    except DuplicateKeyError as e:
        raise ConfigError(f"invalid YAML value: {e.problem}", key=key, value=raw_value) from None
    except (yaml.YAMLError, RecursionError):
        value = raw_value  # not YAML: the string itself (the key's type check names it if wrong)
    if isinstance(value, float) and not math.isfinite(value) and "inf" not in raw_value.lower() \
            and "nan" not in raw_value.lower():
        value = raw_value  # 1e400 overflowed: keep it as written, so the error names what the user typed
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


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key written twice in one mapping.

    Plain ``yaml.safe_load`` keeps the last of two equal keys without a word, so a sweep
    spec with two ``parameters:`` blocks or a trial config with ``phi`` set twice would run
    something other than what its reader sees. Merge keys (``<<: *defaults``) still
    override as YAML means them; only keys written out twice are refused. Construction
    stays the safe loader's: no Python objects are ever built.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if earlier is not key_node:
                    raise DuplicateKeyError(
                        None, None, f"duplicate key {key!r} (first on line {earlier.start_mark.line + 1})",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads a float only with a dot: ``1e-2`` and ``3E4`` would stay strings, and a
# weight-decay axis is exactly where people write 1e-2. The loader also takes YAML 1.2's floats with an
# exponent and no dot (on its own copy of the resolvers: PyYAML's SafeLoader is left as it is).
UniqueKeyLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml_text(text: str) -> Any:
    """Safe-load one YAML document with :class:`UniqueKeyLoader` (yaml errors propagate)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: safe


def _yaml_problem(e: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a PyYAML error, in one line."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(e, "problem", None) or first_line(e)
    return where + problem


def _read_text(path: str | os.PathLike) -> str:
    """A file's text as UTF-8; every way a path can fail to be a readable text file is a ConfigError."""
    if not str(path):
        raise ConfigError("no file given (an empty path)", value=str(path))
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError("file not found", source=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", source=path) from None
    except PermissionError:
        raise ConfigError("permission denied: cannot read the file", source=path) from None
    except OSError as e:  # ELOOP, ENAMETOOLONG, EIO, a FIFO that fails, ...
        raise ConfigError(f"cannot read the file: {reason(e)}", source=path) from None
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ConfigError("UTF-16 or UTF-32 text, not UTF-8: save it as UTF-8", source=path) from None
        what = "a binary file" if nul >= 0 else "text in another encoding, or a binary file"
        raise ConfigError(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}): {what}; a spec or "
                          "trial config is UTF-8 YAML", source=path) from None
    if nul >= 0:
        raise ConfigError(f"a binary file, not YAML text (a NUL byte at offset {nul})", source=path)
    return text


def read_yaml(path: str | os.PathLike) -> Any:
    """Safe-load a YAML file (duplicate keys refused); a missing, unreadable, binary, non-UTF-8,
    empty or malformed file becomes a one-line ConfigError naming it.

    An empty file (or one holding only comments) is an error, not an empty mapping: every
    caller asks for a spec or a trial config, and a file with nothing in it is a file that
    was truncated or not saved, or the wrong file; no file at all is how to ask for defaults.
    """
    text = _read_text(path)
    if not text.strip():
        raise ConfigError("file is empty", source=path)
    try:
        doc = load_yaml_text(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {_yaml_problem(e)}", source=path) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", source=path) from None
    if doc is None:
        raise ConfigError("file holds no YAML document (only comments, or null)", source=path)
    return doc


# --------------------------------------------------------------------------- tracking URIs

#: URI schemes MLflow's tracking client accepts (``+driver`` suffixes allowed for the databases).
URI_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def check_tracking_uri(uri: Any, key: str = "tracking.uri") -> str | None:
    """A tracking URI MLflow can open, checked by its text alone (no I/O, no MLflow import: a spec's
    ``tracking.uri`` at ``sweep validate``, every command's ``--tracking-uri`` before anything
    starts), or a one-line ConfigError naming ``key``.

    Beyond the scheme: ``sqlite://x.db`` (two slashes) is a SQLAlchemy error deep in MLflow, an
    http URI without a host or with a port out of range fails only at the first request, and
    MLflow 3 refuses file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set.
    """
    if uri is None:
        return None
    if not isinstance(uri, str):
        raise ConfigError("must be a string", key=key, value=uri)
    if not uri.strip():
        raise ConfigError("is empty: give a tracking URI such as sqlite:///mlflow.db", key=key, value=uri)
    scheme = uri.split(":", 1)[0].split("+", 1)[0]  # "databricks" alone is a URI too
    if scheme not in URI_SCHEMES:
        raise ConfigError(f"not a tracking URI MLflow can use (scheme one of {', '.join(URI_SCHEMES)})", key=key,
                          value=uri)
    if scheme == "sqlite" and not re.match(r"^sqlite(\+\w+)?:///.", uri):
        raise ConfigError("a sqlite tracking URI is sqlite:///PATH (three slashes, then a relative path; four for "
                          "an absolute one)", key=key, value=uri)
    if scheme in ("http", "https"):
        try:
            parts = urlsplit(uri)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as e:
            raise ConfigError(f"not a valid URL: {e}", key=key, value=uri) from None
        if not parts.hostname:
            raise ConfigError("an http(s) tracking URI needs a host: http(s)://HOST:PORT", key=key, value=uri)
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        raise ConfigError("MLflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///PATH",
                          key=key, value=uri)
    return uri


def load_trial_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrialConfig:
    """Read a trial YAML (or start from defaults if ``path`` is None) and apply ``key=value`` overrides."""
    raw = read_yaml(path) if path is not None else {}
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
