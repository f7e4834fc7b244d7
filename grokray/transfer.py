"""Transferability (He et al. 2026, section 5): fine-tune a trained model on new facts, test composition.

A source run (a trained checkpoint) is fine-tuned on a small dataset built from its own
graph, and the test sets ask whether facts learned only during fine-tuning take part in
two-hop reasoning:

* **new atomic facts** ``(h, r, t)`` with random tails: on (entity, relation) pairs the
  source graph does not use (``new_pairs: unused``, the paper), or on pairs it does use,
  whose tail is replaced (``new_pairs: replace``: knowledge editing; the only option
  when ``out_degree == n_relations``, as in the CPU calibration graph);
* **retained** ID atomic facts, and the compositions of retained facts only (both hops
  retained), downsampled to ``phi x |retained|`` (``phi: null`` keeps them all).

Training rows: new atomic + retained atomic + retained compositions. Every test query is
new to the model in both phases (never a fine-tuning row, never one of the source's
training compositions); each row keeps its bridge:

=====================  ============================================================
``new_atomic``         the new facts (trained: memorization of the new knowledge)
``retained_atomic``    the retained facts (trained)
``unretained_atomic``  old facts neither retained nor replaced (forgetting)
``test_new_old``       hop 1 new, hop 2 retained (He et al.: composes for grokked models)
``test_old_new``       hop 1 retained, hop 2 new (He et al.: stays at 0)
``test_new_new``       both hops new
``test_old_old``       both hops retained, held out (ID generalization / forgetting)
=====================  ============================================================

The logit-lens metrics cover the four test sets (``lens/new_old/...``; the dataset's
``lens_splits``). The vocabulary is the source's: new facts reuse its entities and
relations, so the source weights load unchanged.

Entry points: :func:`build_transfer_dataset` / :func:`load_transfer_dataset` (seeded,
cached by a hash of the source data config and the transfer config), :func:`finetune`
(plain torch), :func:`finetune_trial` (the Ray Tune trainable of a ``kind: finetune``
sweep), :func:`resolve_sources`, :func:`parse_finetune` (the spec section), and the
transfer map (:func:`transfer_map`, :func:`format_transfer_table`,
:func:`plot_transfer_curves`). See ``docs/transfer.md``.

Example:
    >>> from grokray.config import DataConfig
    >>> from grokray.data import build_dataset
    >>> src = build_dataset(DataConfig(n_entities=60, n_relations=10, out_degree=5, phi=2.0))
    >>> tds = build_transfer_dataset(src, TransferConfig(n_new=30, n_retained=60))
    >>> tds.sizes()["new_atomic"], tds.sizes()["retained_atomic"], tds.vocab_size == src.vocab_size
    (30, 60, True)
    >>> sorted(tds.lens_splits)
    ['new_new', 'new_old', 'old_new', 'old_old']
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from grokray import tracking
from grokray.config import ConfigError, DataConfig, TrainConfig, TrialConfig, _coerce, to_plain

# Importing this module stays light (no torch, no MLflow, no Ray: the CLI registers
# add_transfer_map_args at start-up). Heavy modules are imported where they are used;
# TransferDataset (a subclass of grokray.data.Dataset, which imports torch) is built on
# first access through the module's __getattr__.

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from grokray.data.dataset import Dataset
    from grokray.train import Trainer, TrainResult

#: Bump when the transfer generator's output for given configs changes: part of the hash.
TRANSFER_VERSION = 1
NEW_PAIRS = ("unused", "replace")
#: Splits trained on during fine-tuning.
TRAIN_SPLITS = ("new_atomic", "retained_atomic", "train_inferred")
#: Test splits (compositions), by short name; the lens reads the same ones.
TEST_SPLITS = {"new_old": "test_new_old", "old_new": "test_old_new", "new_new": "test_new_new",
               "old_old": "test_old_old"}
#: Every split of a transfer dataset, in report order.
SPLITS = ("new_atomic", "retained_atomic", "unretained_atomic", "train_inferred", *TEST_SPLITS.values())
#: Human names of the test compositions (figure titles, table headers).
PRETTY = {"new_old": "new+old", "old_new": "old+new", "new_new": "new+new", "old_old": "old+old"}
#: "Memorized the new facts": acc/new_atomic at or above this, sustained (the verdict's rule).
MEMORIZE_ACC = 0.99
#: "Final" accuracy = median of the last this many evaluations: fine-tuning at CPU scale has
#: short loss spikes, and one landing on the last evaluation should not decide a run's number.
FINAL_WINDOW = 5

_P = tracking.TAG_PREFIX
_OLD, _RETAINED, _NEW = 0, 1, 2


# =========================================================================== configuration

@dataclass
class TransferConfig:
    """How the fine-tuning data is built from a source run's dataset (``transfer:`` in a spec).

    ``n_new`` and ``n_retained`` are counts (integers >= 1) or fractions (numbers strictly
    between 0 and 1) of the source's atomic facts (``n_new``) or ID atomic facts
    (``n_retained``). The defaults are the paper's ratios: 2,000 new facts for a
    40,000-fact graph (0.05) and 8,000 of the 38,000 ID facts retained (0.21).
    """
    n_new: float = 0.05          # new atomic facts: count, or fraction of the source's atomic facts
    n_retained: float = 0.21     # retained ID atomic facts: count, or fraction of the ID atomic facts
    new_pairs: str = "unused"    # unused: pairs the source graph lacks (paper) | replace: new tails on used pairs
    # training compositions / |retained|; null: every composition of retained facts not held out
    phi: float | None = None
    test_fraction: float = 0.1   # of the both-retained compositions, held out as test_old_old
    probe_size: int | None = None  # max queries per probe; null: the source's data.probe_size
    seed: int = 0                # which facts are new / retained / held out (and the new tails)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


_TRANSFER_FIELDS = tuple(f.name for f in dataclasses.fields(TransferConfig))


def _count_or_fraction(value: Any, key: str) -> int | float:
    v = _coerce(value, float, key)
    if v >= 1:
        if not float(v).is_integer():
            raise ConfigError("a count must be a whole number (a fraction must be between 0 and 1)", key=key,
                              value=value)
        return int(v)
    if v <= 0:
        raise ConfigError("must be a count >= 1 or a fraction in (0, 1)", key=key, value=value)
    return v


def transfer_config_from_dict(raw: Any, prefix: str = "transfer") -> TransferConfig:
    """Validated :class:`TransferConfig` from a mapping; one-line ConfigError naming ``prefix.key``."""
    if raw is None:
        raw = {}
    if isinstance(raw, TransferConfig):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a mapping", key=prefix, value=raw)
    for k in raw:
        if k not in _TRANSFER_FIELDS:
            raise ConfigError(f"unknown key; known keys: {', '.join(_TRANSFER_FIELDS)}", key=f"{prefix}.{k}",
                              value=raw[k])
    d = TransferConfig()
    get = lambda k: raw.get(k, getattr(d, k))  # noqa: E731
    n_new = _count_or_fraction(get("n_new"), f"{prefix}.n_new")
    n_retained = _count_or_fraction(get("n_retained"), f"{prefix}.n_retained")
    new_pairs = _coerce(get("new_pairs"), str, f"{prefix}.new_pairs")
    if new_pairs not in NEW_PAIRS:
        raise ConfigError(f"must be one of {', '.join(NEW_PAIRS)}", key=f"{prefix}.new_pairs", value=new_pairs)
    phi = get("phi")
    if phi is not None:
        phi = _coerce(phi, float, f"{prefix}.phi")
        if phi <= 0:
            raise ConfigError("must be > 0 (or null for every retained composition)", key=f"{prefix}.phi", value=phi)
    test_fraction = _coerce(get("test_fraction"), float, f"{prefix}.test_fraction")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError("must be in [0, 1)", key=f"{prefix}.test_fraction", value=test_fraction)
    probe_size = get("probe_size")
    if probe_size is not None:
        probe_size = _coerce(probe_size, int, f"{prefix}.probe_size")
        if probe_size < 1:
            raise ConfigError("must be >= 1 (or null for the source's data.probe_size)", key=f"{prefix}.probe_size",
                              value=probe_size)
    seed = _coerce(get("seed"), int, f"{prefix}.seed")
    return TransferConfig(n_new=n_new, n_retained=n_retained, new_pairs=new_pairs, phi=phi,
                          test_fraction=test_fraction, probe_size=probe_size, seed=seed)


def replace_transfer(tcfg: TransferConfig, values: Mapping[str, Any], prefix: str = "transfer") -> TransferConfig:
    """A new validated config with fields replaced (keys with or without the ``transfer.`` prefix)."""
    raw = tcfg.to_dict()
    for k, v in values.items():
        raw[k[len(prefix) + 1:] if k.startswith(prefix + ".") else k] = v
    return transfer_config_from_dict(raw, prefix)


def resolve_count(value: int | float, total: int) -> int:
    """A count as given, or ``round(fraction x total)`` (at least 1 when ``total`` > 0)."""
    if isinstance(value, int) or value >= 1:
        return int(value)
    return max(1, int(round(value * total))) if total else 0


def transfer_hash(source: DataConfig | str, tcfg: TransferConfig) -> str:
    """``tf-`` + 12 hex digits of a hash of the source data (its ``ds-`` name) and the transfer config."""
    from grokray.data.dataset import data_hash

    source_name = source if isinstance(source, str) else data_hash(source)
    payload = {"source": source_name, "transfer": to_plain(tcfg), "transfer_version": TRANSFER_VERSION}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"tf-{digest[:12]}"


# =========================================================================== the dataset

_CLASSES: dict[str, type] = {}


def _transfer_dataset_class() -> type:
    """:class:`TransferDataset`, defined on first use (its base class imports torch)."""
    if "TransferDataset" in _CLASSES:
        return _CLASSES["TransferDataset"]
    from grokray.data.dataset import Dataset

    @dataclass
    class TransferDataset(Dataset):
        """A :class:`~grokray.data.Dataset` for fine-tuning: the Trainer uses it unchanged.

        ``config`` is the SOURCE data config (the vocabulary and graph the model knows);
        ``atomic`` is the fine-tuning graph (new facts added or replaced); ``pool_size`` the
        both-retained compositions available for training after the test hold-out.
        """
        source_name: str = ""
        transfer: TransferConfig = field(default_factory=TransferConfig)
        lens_splits: dict = field(default_factory=lambda: dict(TEST_SPLITS))
        counts: dict = field(default_factory=dict)  # generator bookkeeping (dropped test queries, ...)

        def train_rows(self) -> np.ndarray:
            """Everything fine-tuned on: new atomic + retained atomic + retained compositions."""
            return np.concatenate([self.rows[k] for k in TRAIN_SPLITS])

        def sizes(self) -> dict[str, int]:
            s = {k: int(len(v)) for k, v in self.rows.items()}
            s["atomic"] = int(len(self.atomic))
            s["train"] = int(sum(len(self.rows[k]) for k in TRAIN_SPLITS))
            s["inferred_pool"] = int(self.pool_size)
            return s

        def summary(self) -> dict:
            n_ret = max(len(self.rows["retained_atomic"]), 1)
            return {"name": self.name, "kind": "transfer", "source": self.source_name, "config": to_plain(self.config),
                    "transfer": self.transfer.to_dict(), "augmentation": self.config.augmentation_name(),
                    "vocab_size": self.vocab_size, "sizes": self.sizes(),
                    "probe_sizes": {k: int(len(v)) for k, v in self.probe_rows.items()},
                    "phi_effective": len(self.rows["train_inferred"]) / n_ret, "phi_max": self.pool_size / n_ret,
                    "lens_splits": dict(self.lens_splits), "counts": dict(self.counts)}

        def _meta(self) -> dict:
            return {"name": self.name, "config": to_plain(self.config), "source": self.source_name,
                    "transfer": self.transfer.to_dict(), "lens_splits": self.lens_splits, "counts": self.counts,
                    "transfer_version": TRANSFER_VERSION}

        @classmethod
        def load(cls, path: str | os.PathLike, config: DataConfig) -> "TransferDataset":
            meta, arrays = cls._read(path)
            return cls(config, meta["name"], config.n_entities, config.n_relations, **arrays,
                       source_name=meta["source"], transfer=transfer_config_from_dict(meta["transfer"]),
                       lens_splits=dict(meta["lens_splits"]), counts=dict(meta.get("counts", {})))

    TransferDataset.__qualname__ = "TransferDataset"
    TransferDataset.__module__ = __name__
    _CLASSES["TransferDataset"] = TransferDataset
    return TransferDataset


def __getattr__(name: str) -> Any:
    if name == "TransferDataset":
        return _transfer_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _query_key(rows: np.ndarray, n_relations: int) -> np.ndarray:
    """One int64 per query ``(h, r1, r2)``: compositions are equal queries iff keys are equal."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return (rows[:, 0] * n_relations + rows[:, 1]) * (n_relations + 1) + rows[:, 2] + 1


def _name_seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def transfer_counts(source: "Dataset", tcfg: TransferConfig) -> tuple[int, int]:
    """``(n_new, n_retained)`` for this source, checked against what its graph holds."""
    n_atomic = len(source.atomic)
    n_id = int((~source.atomic_ood).sum())
    n_new = resolve_count(tcfg.n_new, n_atomic)
    n_ret = resolve_count(tcfg.n_retained, n_id)
    if n_ret > n_id:
        raise ConfigError(f"asks for {n_ret} retained facts but the source graph has {n_id} ID atomic facts",
                          key="transfer.n_retained", value=tcfg.n_retained)
    if tcfg.new_pairs == "unused":
        free = source.n_entities * source.n_relations - n_atomic
        if n_new > free:
            hint = ("out_degree == n_relations, every pair is used; " if free == 0 else "")
            raise ConfigError(f"asks for {n_new} new facts but the source graph has {free} free (entity, relation) "
                              f"pairs ({hint}lower it, or set transfer.new_pairs: replace)",
                              key="transfer.n_new", value=tcfg.n_new)
    elif n_new > n_atomic - n_ret:
        raise ConfigError(f"asks to replace {n_new} facts but only {n_atomic - n_ret} are not retained",
                          key="transfer.n_new", value=tcfg.n_new)
    return n_new, n_ret


def build_transfer_dataset(source: "Dataset", tcfg: TransferConfig) -> "TransferDataset":
    """The fine-tuning data for ``source`` (deterministic in ``tcfg`` and the source); no caching.

    Raises ConfigError (``transfer.<key>``) when the source graph cannot hold what ``tcfg`` asks.
    """
    from grokray.data.dataset import _atomic_rows, _sample

    tcfg = transfer_config_from_dict(tcfg)
    E, R = source.n_entities, source.n_relations
    atomic, ood = source.atomic, source.atomic_ood
    n_new, n_ret = transfer_counts(source, tcfg)
    rng = np.random.default_rng([tcfg.seed, _name_seed(source.name)])

    retained = np.sort(rng.choice(np.flatnonzero(~ood), size=n_ret, replace=False))   # rows of `atomic`
    kind = np.zeros((E, R), dtype=np.int8)                                                # 0: old / no fact
    kind[atomic[retained, 0], atomic[retained, 1]] = _RETAINED
    if tcfg.new_pairs == "unused":
        free = np.flatnonzero(source.tail.reshape(-1) < 0)
        pick = np.sort(rng.choice(free, size=n_new, replace=False))
        heads, rels = np.divmod(pick, R)
        new = np.stack([heads, rels, rng.integers(0, E, size=n_new)], 1).astype(np.int64)
        ft_atomic = np.concatenate([atomic, new])
        ft_ood = np.concatenate([ood, np.zeros(n_new, dtype=bool)])
        replaced = np.zeros(0, dtype=np.int64)
    else:
        candidates = np.setdiff1d(np.arange(len(atomic)), retained)
        replaced = np.sort(rng.choice(candidates, size=n_new, replace=False))
        old_tail = atomic[replaced, 2]
        new_tail = (old_tail + rng.integers(1, E, size=n_new)) % E                    # uniform over the others
        new = np.stack([atomic[replaced, 0], atomic[replaced, 1], new_tail], 1).astype(np.int64)
        ft_atomic = atomic.copy()
        ft_atomic[replaced, 2] = new_tail
        ft_ood = ood.copy()
    tail = source.tail.copy()
    tail[new[:, 0], new[:, 1]] = new[:, 2]
    kind[new[:, 0], new[:, 1]] = _NEW

    # Every composition whose two hops are retained or new, with its bridge.
    hop1 = np.concatenate([atomic[retained], new])                                     # [m, 3]
    i, r2 = np.nonzero(kind[hop1[:, 2]] > 0)                                           # hop 2 = (bridge, r2)
    b = hop1[i, 2]
    comps = np.stack([hop1[i, 0], hop1[i, 1], r2, b, tail[b, r2]], 1).astype(np.int64)  # [n, 5]
    k1, k2 = kind[hop1[i, 0], hop1[i, 1]], kind[b, r2]
    # Queries the source trained on (its compositions) are never test queries: every test
    # query is new to the model in both phases.
    src_train = np.concatenate([source.rows.get("train_inferred", np.zeros((0, 5), np.int64)),
                                source.rows.get("train_augmented", np.zeros((0, 5), np.int64))])
    seen = np.isin(_query_key(comps, R), _query_key(src_train, R))

    old_old = np.flatnonzero((k1 == _RETAINED) & (k2 == _RETAINED))
    unseen_oo = rng.permutation(old_old[~seen[old_old]])
    n_test = min(int(round(tcfg.test_fraction * len(old_old))), len(unseen_oo))
    test_oo = np.sort(unseen_oo[:n_test])
    pool = np.setdiff1d(old_old, test_oo)
    if tcfg.phi is None:
        train = pool
    else:
        n_train = int(round(tcfg.phi * n_ret))
        if n_train > len(pool):
            raise ConfigError(f"needs {n_train} training compositions but the retained facts have {len(pool)} "
                              f"(max phi {len(pool) / max(n_ret, 1):.2f}; null uses them all)",
                              key="transfer.phi", value=tcfg.phi)
        train = np.sort(rng.permutation(pool)[:n_train])

    def test(k_1: int, k_2: int) -> np.ndarray:
        return comps[(k1 == k_1) & (k2 == k_2) & ~seen]

    untouched = np.ones(len(atomic), dtype=bool)
    untouched[retained] = False
    untouched[replaced] = False
    rows = {
        "new_atomic": _atomic_rows(new),
        "retained_atomic": _atomic_rows(atomic[retained]),
        "unretained_atomic": _atomic_rows(atomic[untouched]),
        "train_inferred": comps[train],
        "test_new_old": test(_NEW, _RETAINED),
        "test_old_new": test(_RETAINED, _NEW),
        "test_new_new": test(_NEW, _NEW),
        "test_old_old": comps[test_oo],
    }
    probe_size = tcfg.probe_size or source.config.probe_size
    probe_rng = np.random.default_rng([tcfg.seed, _name_seed(source.name), 1])  # probes never shift the splits
    train_all = np.concatenate([rows[k] for k in TRAIN_SPLITS])
    probes = {"train": _sample(train_all, probe_size, probe_rng)}
    for name in SPLITS:
        probes[name] = _sample(rows[name], probe_size, probe_rng)
    with_new = (k1 == _NEW) | (k2 == _NEW)
    counts = {"n_new": n_new, "n_retained": n_ret, "old_old_compositions": int(len(old_old)),
              "old_old_source_trained": int(seen[old_old].sum()),
              "new_dropped_source_trained": int((seen & with_new).sum())}
    return _transfer_dataset_class()(source.config, transfer_hash(source.name, tcfg), E, R, ft_atomic, ft_ood, rows,
                                     probes, int(len(pool)), source_name=source.name, transfer=tcfg,
                                     lens_splits=dict(TEST_SPLITS), counts=counts)


def load_transfer_dataset(source_data_cfg: DataConfig, tcfg: TransferConfig,
                          cache: str | os.PathLike | None = None) -> "TransferDataset":
    """The transfer dataset for (source data, ``tcfg``): from memory, the disk cache, or built once.

    Same protocol as :func:`grokray.data.load_dataset` (file lock, atomic rename), under
    ``<cache>/datasets/tf-<hash>.npz``; the source dataset is loaded (or built) the same way.
    """
    from grokray.data import load_dataset
    from grokray.data.dataset import _MEMORY, _file_lock, cache_dir

    tcfg = transfer_config_from_dict(tcfg)
    name = transfer_hash(source_data_cfg, tcfg)
    if name in _MEMORY:
        return _MEMORY[name]  # type: ignore[return-value]
    root = Path(cache) if cache is not None else cache_dir()
    target = root / "datasets" / f"{name}.npz"
    if not target.exists():
        with _file_lock(target.with_suffix(".lock")):
            if not target.exists():
                ds = build_transfer_dataset(load_dataset(source_data_cfg, cache), tcfg)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
                os.close(fd)
                try:
                    ds.save(tmp)
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    ds = _transfer_dataset_class().load(target, source_data_cfg)
    _MEMORY[name] = ds
    return ds


# =========================================================================== fine-tuning

def _train_section(train_cfg: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    from grokray.config import trial_config_from_dict, validate

    if train_cfg is None:
        return TrainConfig()
    if isinstance(train_cfg, TrainConfig):
        return validate(TrialConfig(train=dataclasses.replace(train_cfg))).train
    return trial_config_from_dict({"train": dict(train_cfg)}).train


def prepare_finetune(checkpoint_path: str | os.PathLike, tcfg: TransferConfig | Mapping[str, Any],
                     train_cfg: TrainConfig | Mapping[str, Any] | None = None,
                     work_dir: str | os.PathLike | None = None, *, seed: int = 0,
                     cache: str | os.PathLike | None = None, device: Any = None) -> "Trainer":
    """A :class:`~grokray.train.Trainer` on the transfer data, holding the source weights.

    The source model and data come from the checkpoint (its ``trial_config``); the trial
    config is the source's data and model with ``train_cfg`` and ``seed`` (batch order).
    The optimizer starts fresh.
    """
    from grokray.config import trial_config_from_dict, validate
    from grokray.model import load_checkpoint
    from grokray.train import Trainer

    model, ckpt = load_checkpoint(str(checkpoint_path))
    if "trial_config" not in ckpt:
        raise ConfigError("not a grokray trial checkpoint (no trial_config)", key="checkpoint",
                          value=str(checkpoint_path))
    src = trial_config_from_dict(ckpt["trial_config"])
    cfg = validate(TrialConfig(seed=int(seed), data=src.data, model=src.model, train=_train_section(train_cfg)))
    tds = load_transfer_dataset(src.data, transfer_config_from_dict(tcfg), cache)
    if ckpt.get("dataset") and ckpt["dataset"] != tds.source_name:
        raise ConfigError(f"the checkpoint was trained on {ckpt['dataset']} but its data config now generates "
                          f"{tds.source_name} (generator version changed?)", key="checkpoint",
                          value=str(checkpoint_path))
    trainer = Trainer(cfg, dataset=tds, work_dir=work_dir, device=device)
    trainer.model.load_state_dict(model.state_dict())
    trainer.source_step = int(ckpt.get("step", -1))  # type: ignore[attr-defined]
    return trainer


def finetune(checkpoint_path: str | os.PathLike, tcfg: TransferConfig | Mapping[str, Any],
             train_cfg: TrainConfig | Mapping[str, Any] | None = None, work_dir: str | os.PathLike | None = None,
             callbacks: Sequence[Any] = (), *, seed: int = 0, cache: str | os.PathLike | None = None,
             device: Any = None) -> tuple["Trainer", "TrainResult"]:
    """Fine-tune the checkpoint's model on its transfer data; returns ``(trainer, result)``.

    Every evaluation (the step-0 one is the source model itself) holds ``acc/<split>`` for
    the train probe and every split, and ``lens/<new_old|old_new|new_new|old_old>/...``.
    """
    trainer = prepare_finetune(checkpoint_path, tcfg, train_cfg, work_dir, seed=seed, cache=cache, device=device)
    return trainer, trainer.run(list(callbacks))


# =========================================================================== summaries of a history

def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(h["step"], float(h[key])) for h in history if h.get(key) is not None and math.isfinite(float(h[key]))]
    if not pts:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    s, v = zip(*sorted(pts))
    return np.asarray(s), np.asarray(v)


def transfer_summary(history: Sequence[Mapping[str, Any]], sustain: int | None = None) -> dict[str, float]:
    """The transfer map's numbers from one fine-tuning history (NaN where a metric is missing).

    ``t_memorize_new``: first step from which ``acc/new_atomic >= 0.99`` for ``sustain``
    evaluations (the verdict's rule; NaN if never); ``t_new_old``: the same for
    ``acc/test_new_old >= 0.9``; ``init_/final_/max_<x>`` for each test composition and the
    atomic probes (``init`` is the step-0 evaluation: the source model; ``final`` the median
    of the last :data:`FINAL_WINDOW` evaluations); ``forget_<x>`` = init - final for
    ``old_old``, ``retained`` and ``unretained`` atomic facts; ``bridge_<x>``: final
    ``lens/<x>/bridge_found`` (same median).
    """
    from grokray.verdict import VerdictParams, first_sustained

    sustain = sustain or VerdictParams().sustain
    out: dict[str, float] = {}
    steps, vals = _series(history, "acc/new_atomic")
    t = first_sustained(steps, vals, MEMORIZE_ACC, sustain) if len(vals) else None
    out["t_memorize_new"] = float(t) if t is not None else math.nan
    steps, vals = _series(history, "acc/test_new_old")
    t = first_sustained(steps, vals, 0.9, sustain) if len(vals) else None
    out["t_new_old"] = float(t) if t is not None else math.nan
    keys = {**{short: f"acc/{split}" for short, split in TEST_SPLITS.items()},
            "new_atomic": "acc/new_atomic", "retained": "acc/retained_atomic", "unretained": "acc/unretained_atomic"}
    for short, key in keys.items():
        s, v = _series(history, key)
        out[f"init_{short}"] = float(v[0]) if len(v) and s[0] == 0 else math.nan
        out[f"final_{short}"] = float(np.median(v[-FINAL_WINDOW:])) if len(v) else math.nan
        out[f"max_{short}"] = float(v.max()) if len(v) else math.nan
    for short in ("old_old", "retained", "unretained"):
        out[f"forget_{short}"] = out[f"init_{short}"] - out[f"final_{short}"]
    for short in TEST_SPLITS:
        _, v = _series(history, f"lens/{short}/bridge_found")
        out[f"bridge_{short}"] = float(np.median(v[-FINAL_WINDOW:])) if len(v) else math.nan
    return out


# =========================================================================== MLflow: sources

def _label_name(label: str) -> str:
    from grokray.phasemap import _label_name as name

    try:
        full = name(label)
    except ValueError:
        full = "?"
    if full is None or full == "?":
        from grokray.phasemap import LABELS

        raise ConfigError(f"unknown label; use one of {', '.join(LABELS)} (or true, fake, no)", key="source.label",
                          value=label)
    return full


def _labels(label: str | Sequence[str] | None) -> list[str] | None:
    if label is None:
        return None
    items = [label] if isinstance(label, str) else list(label)
    if not items:
        raise ConfigError("must name at least one label", key="source.label", value=label)
    return [_label_name(str(x)) for x in items]


def _source_info(run: Any) -> dict[str, Any]:
    tags = run.data.tags
    try:
        swept = json.loads(tags.get(f"{_P}swept") or "{}")
    except ValueError:
        swept = {}
    return {"run_id": run.info.run_id, "label": tags.get(f"{_P}label"), "run_name": run.info.run_name or "",
            "sweep": tags.get(f"{_P}sweep"), "swept": swept if isinstance(swept, dict) else {},
            "experiment_id": run.info.experiment_id, "status": run.info.status}


def _experiment_ids(client: "MlflowClient", experiment: str | None) -> list[str]:
    from grokray.phasemap import _all_experiments

    if experiment is None:
        return [e.experiment_id for e in _all_experiments(client)]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no MLflow experiment with that name at {client.tracking_uri}", key="source.experiment",
                          value=experiment)
    return [exp.experiment_id]


def resolve_sources(client: "MlflowClient", *, sweep: str | None = None, label: str | Sequence[str] | None = None,
                    runs: Sequence[str] | None = None, experiment: str | None = None) -> list[dict[str, Any]]:
    """The source runs to fine-tune: ``[{run_id, label, run_name, sweep, swept, ...}]``.

    Either every FINISHED trial run of ``sweep`` whose label is ``label`` (a label, a short
    form ``true``/``fake``/``no``, or a list; ``None``: every labelled run), or the explicit
    ``runs`` (checked against ``label`` when both are given). One-line ConfigError for an
    unknown sweep or run, or an empty selection.
    """
    labels = _labels(label)
    if isinstance(sweep, (list, tuple)):  # several sweeps: their runs together
        return [s for name in sweep for s in resolve_sources(client, sweep=name, label=label,
                                                             experiment=experiment)]
    if (sweep is None) == (runs is None):
        raise ConfigError("give source.sweep or source.runs (one of the two)", key="source",
                          value={"sweep": sweep, "runs": runs})
    if runs is not None:
        if isinstance(runs, str) or not list(runs):
            raise ConfigError("must be a non-empty list of MLflow run ids", key="source.runs", value=runs)
        out = []
        for i, rid in enumerate(runs):
            try:
                run = client.get_run(str(rid))
            except Exception:
                raise ConfigError(f"no MLflow run with that id at {client.tracking_uri}", key=f"source.runs[{i}]",
                                  value=rid) from None
            info = _source_info(run)
            if labels is not None and info["label"] not in labels:
                raise ConfigError(f"run is labelled {info['label'] or 'nothing yet'}, not {' or '.join(labels)}",
                                  key=f"source.runs[{i}]", value=rid)
            out.append(info)
        return out
    if not isinstance(sweep, str) or not sweep or "'" in sweep or "\\" in sweep:
        raise ConfigError("must be a sweep name", key="source.sweep", value=sweep)
    from grokray.phasemap import _find_parent

    parent = _find_parent(client, sweep, _experiment_ids(client, experiment))
    if parent is None:
        raise ConfigError(f"no sweep with that name in the MLflow store at {client.tracking_uri}", key="source.sweep",
                          value=sweep)
    flt = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{_P}kind` = 'trial'"
    found = [_source_info(r) for r in tracking.iter_runs(client, [parent.info.experiment_id], flt)]
    found.sort(key=lambda s: (s["run_name"], s["run_id"]))
    finished = [s for s in found if s["status"] == "FINISHED"]
    chosen = [s for s in finished if s["label"] is not None and (labels is None or s["label"] in labels)]
    if not chosen:
        have: dict[str, int] = {}
        for s in found:
            k = s["label"] or ("unlabelled" if s["status"] == "FINISHED" else s["status"].lower())
            have[k] = have.get(k, 0) + 1
        present = ", ".join(f"{k} {v}" for k, v in sorted(have.items())) or "no trial runs"
        want = " or ".join(labels) if labels else "any label"
        raise ConfigError(f"sweep has no finished trial run labelled {want} (it has: {present})",
                          key="source.sweep", value=sweep)
    return chosen


def _check_checkpoint(client: "MlflowClient", run_id: str, checkpoint: str | int) -> str:
    """The artifact path of the run's checkpoint (``"last"`` or a step); ConfigError if it has none."""
    files = sorted(a.path for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".pt"))
    if not files:
        raise ConfigError("source run has no checkpoints", key="source.runs", value=run_id)
    if checkpoint == "last":
        return files[-1]
    want = f"checkpoints/step_{int(checkpoint):07d}.pt"
    if want not in files:
        steps = ", ".join(str(int(f.split("_")[-1][:-3])) for f in files)
        raise ConfigError(f"source run {run_id} has no checkpoint at that step (has: {steps})",
                          key="source.checkpoint", value=checkpoint)
    return want


def download_checkpoint(client: "MlflowClient", run_id: str, checkpoint: str | int, dst: str | os.PathLike) -> str:
    """Download the run's ``checkpoints/step_*.pt`` (``"last"`` or a step) to ``dst``; the local path."""
    path = _check_checkpoint(client, run_id, checkpoint)
    Path(dst).mkdir(parents=True, exist_ok=True)
    return client.download_artifacts(run_id, path, str(dst))


def source_trial_config(client: "MlflowClient", run_id: str) -> TrialConfig:
    """A source run's trial config (its ``trial.yaml`` artifact)."""
    import yaml

    from grokray.config import trial_config_from_dict

    with tempfile.TemporaryDirectory(prefix="grokray-src-") as tmp:
        try:
            path = client.download_artifacts(run_id, "trial.yaml", tmp)
        except Exception:
            raise ConfigError("source run has no trial.yaml artifact (not a grokray trial run?)", key="source.runs",
                              value=run_id) from None
        return trial_config_from_dict(yaml.safe_load(Path(path).read_text()))


# =========================================================================== the spec section

@dataclass
class SourceSpec:
    """``source:`` of a finetune sweep: which runs to fine-tune, and from which checkpoint."""
    sweep: str | list[str] | None = None   # a sweep name, or several
    label: list[str] | None = None    # full label names; None: every labelled run
    runs: list[str] | None = None
    checkpoint: str | int = "last"
    tracking_uri: str | None = None   # where the source runs live (default: the sweep's store)
    experiment: str | None = None     # restrict the sweep lookup to this experiment


@dataclass
class FinetuneSpec:
    """The ``kind: finetune`` part of a sweep spec (the rest is an ordinary :class:`SweepSpec`)."""
    source: SourceSpec
    transfer: TransferConfig
    transfer_keys: list[str] = field(default_factory=list)  # parameters that sweep transfer.* keys

    def owns(self, key: str) -> bool:
        """Parameters this section validates (the trial-config checks must skip them)."""
        return key.startswith("transfer.")

    def transfer_config(self, values: Mapping[str, Any]) -> TransferConfig:
        return replace_transfer(self.transfer, {k: v for k, v in values.items() if self.owns(k)})

    def to_dict(self) -> dict[str, Any]:
        return {"source": to_plain(self.source), "transfer": self.transfer.to_dict()}


#: Top-level spec keys this section reads (spec.py adds them to its known keys).
FINETUNE_KEYS = ("kind", "source", "transfer")
_SOURCE_KEYS = tuple(f.name for f in dataclasses.fields(SourceSpec))
#: Top-level spec keys a finetune sweep does not take, and why.
_NOT_FOR_FINETUNE = {
    "stopping": "a finetune sweep trains every run for max_steps (the transfer curves need the whole schedule)",
    "classifier": "finetune runs are not labelled (the transfer map reads them); remove the classifier section",
}


def parse_finetune(raw: Mapping[str, Any], source_file: str | os.PathLike | None = None) -> FinetuneSpec:
    """The finetune section of a sweep spec (``kind``, ``source``, ``transfer`` and the
    ``transfer.*`` parameters); one-line ConfigError naming the file, key and value."""
    try:
        return _parse_finetune(raw)
    except ConfigError as e:
        raise e.with_source(source_file) from None


def _parse_finetune(raw: Mapping[str, Any]) -> FinetuneSpec:
    from grokray.sweep.spec import NAME_RE, _parse_parameter

    if not isinstance(raw, Mapping):
        raise ConfigError("a sweep spec must be a mapping", value=type(raw).__name__)
    if raw.get("kind") != "finetune":
        raise ConfigError("must be finetune for a fine-tuning sweep", key="kind", value=raw.get("kind"))
    for key, why in _NOT_FOR_FINETUNE.items():
        if raw.get(key):
            raise ConfigError(f"not allowed with kind: finetune: {why}", key=key, value=raw[key])

    src_raw = raw.get("source")
    if not isinstance(src_raw, Mapping):
        raise ConfigError("kind: finetune needs a mapping {sweep: NAME, label: LABEL} or {runs: [RUN_ID, ...]}",
                          key="source", value=src_raw)
    for k in src_raw:
        if k not in _SOURCE_KEYS:
            raise ConfigError(f"unknown key; known keys: {', '.join(_SOURCE_KEYS)}", key=f"source.{k}",
                              value=src_raw[k])
    sweep, runs = src_raw.get("sweep"), src_raw.get("runs")
    if (sweep is None) == (runs is None):
        raise ConfigError("give sweep or runs (one of the two)", key="source", value=dict(src_raw))
    for i, name in enumerate([sweep] if isinstance(sweep, str) or sweep is None else list(sweep) or [""]):
        if name is not None and (not isinstance(name, str) or not NAME_RE.match(name)):
            key = "source.sweep" if isinstance(sweep, str) or not isinstance(sweep, list) else f"source.sweep[{i}]"
            raise ConfigError("must be a sweep name (or a list of them)", key=key, value=name)
    if runs is not None:
        if not isinstance(runs, list) or not runs:
            raise ConfigError("must be a non-empty list of MLflow run ids", key="source.runs", value=runs)
        for i, r in enumerate(runs):
            if not isinstance(r, str) or not r.isalnum():
                raise ConfigError("must be an MLflow run id", key=f"source.runs[{i}]", value=r)
    checkpoint = src_raw.get("checkpoint", "last")
    if checkpoint != "last":
        if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or checkpoint < 0:
            raise ConfigError("must be last or a step (an integer >= 0)", key="source.checkpoint", value=checkpoint)
    for k in ("tracking_uri", "experiment"):
        if src_raw.get(k) is not None and not isinstance(src_raw[k], str):
            raise ConfigError("must be a string", key=f"source.{k}", value=src_raw[k])
    source = SourceSpec(sweep=sweep, label=_labels(src_raw.get("label")), runs=list(runs) if runs else None,
                        checkpoint=checkpoint, tracking_uri=src_raw.get("tracking_uri"),
                        experiment=src_raw.get("experiment"))

    transfer = transfer_config_from_dict(raw.get("transfer"))
    params = raw.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise ConfigError("must be a mapping", key="parameters", value=params)
    keys = []
    for key, praw in params.items():
        key = str(key)
        section = key.split(".")[0]
        if section in ("data", "model"):
            raise ConfigError("a finetune sweep takes data and model from its source runs; sweep train.*, "
                              "transfer.* or seed", key=f"parameters.{key}", value=praw)
        if key == "source_run":
            raise ConfigError("source_run is set from source: (one trial per source run)", key="parameters.source_run",
                              value=praw)
        if section != "transfer":
            continue
        p = _parse_parameter(key, praw)
        field_name = key[len("transfer."):]
        if field_name not in _TRANSFER_FIELDS:
            raise ConfigError(f"unknown key; known keys: {', '.join('transfer.' + f for f in _TRANSFER_FIELDS)}",
                              key=f"parameters.{key}", value=praw)
        samples = p.values if p.values is not None else [p.low, p.high]
        for i, v in enumerate(samples):
            try:
                replace_transfer(transfer, {field_name: v})
            except ConfigError as e:
                where = f"parameters.{key}" + (f".values[{i}]" if p.values is not None and len(p.values) > 1 else "")
                raise ConfigError(e.problem, key=where, value=e.value) from None
        keys.append(key)
    return FinetuneSpec(source=source, transfer=transfer, transfer_keys=keys)


def prepare_sources(fspec: FinetuneSpec, tracking_uri: str, transfer_values: Iterable[Mapping[str, Any]] = ({},),
                    cache: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """At sweep start: resolve the source runs and build (cache) every transfer dataset the
    sweep will need, so an impossible request fails once, before any trial, as one line.

    ``transfer_values``: the grid of ``transfer.*`` values (``[{}]`` when not swept).
    Each source dict gains ``data`` (its data config as a plain dict).
    """
    client = tracking.get_client(fspec.source.tracking_uri or tracking_uri)
    sources = resolve_sources(client, sweep=fspec.source.sweep, label=fspec.source.label, runs=fspec.source.runs,
                              experiment=fspec.source.experiment)
    seen: set[str] = set()
    for s in sources:
        _check_checkpoint(client, s["run_id"], fspec.source.checkpoint)
        cfg = source_trial_config(client, s["run_id"])
        s["data"] = to_plain(cfg.data)
        for values in transfer_values:
            tcfg = fspec.transfer_config(values)
            name = transfer_hash(cfg.data, tcfg)
            if name not in seen:
                seen.add(name)
                load_transfer_dataset(cfg.data, tcfg, cache)
    return sources


def transfer_grid(spec: Any) -> list[dict[str, Any]]:
    """Every combination of the grid values of a sweep spec's ``transfer.*`` parameters
    (``[{}]`` when none is swept; distributions are left to the trials)."""
    ps = [p for p in spec.parameters if spec.finetune.owns(p.key) and p.values is not None]
    return [dict(zip([p.key for p in ps], combo)) for combo in itertools.product(*[p.values for p in ps])]


def prepare_sweep_sources(spec: Any, tracking_uri: str, cache: str | os.PathLike | None = None
                          ) -> list[dict[str, Any]]:
    """:func:`prepare_sources` for a ``kind: finetune`` :class:`~grokray.sweep.spec.SweepSpec`
    (the driver calls it before it creates anything)."""
    return prepare_sources(spec.finetune, tracking_uri, transfer_grid(spec), cache)


def trial_keys(spec: Any) -> list[str]:
    """The keys that name a finetune trial: ``source_run`` first, then the spec's swept keys."""
    return ["source_run", *spec.swept_keys]


def finetune_trainable(spec: Any, record: Any) -> Any:
    """The Tune trainable of a finetune sweep (``record``: the driver's SweepRecord)."""
    from ray import tune

    f = spec.finetune
    ctx = FinetuneContext(sweep=record.name, base=spec.base_for_trials().to_dict(), transfer=f.transfer.to_dict(),
                          swept_keys=trial_keys(spec), tracking_uri=record.tracking_uri,
                          experiment_id=record.experiment_id, parent_run_id=record.parent_run_id,
                          checkpoint=f.source.checkpoint, source_tracking_uri=f.source.tracking_uri,
                          threads=max(1, int(spec.resources.cpu)))
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(finetune_trial, ctx=ctx), resources)


def source_space(sources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"source_run": tune.grid_search([...])}``: one trial per source run (per other grid point)."""
    from ray import tune

    return {"source_run": tune.grid_search([s["run_id"] for s in sources])}


def log_sources(client: "MlflowClient", parent_run_id: str, sources: Sequence[Mapping[str, Any]]) -> None:
    """``sources.json`` on the sweep's parent run and a ``sweep.n_sources`` param."""
    from mlflow.entities import Param

    with tempfile.TemporaryDirectory(prefix="grokray-sources-") as tmp:
        (Path(tmp) / "sources.json").write_text(json.dumps(list(sources), indent=2, default=str))
        client.log_artifact(parent_run_id, str(Path(tmp) / "sources.json"))
    client.log_batch(parent_run_id, params=[Param("sweep.n_sources", str(len(sources)))])


# =========================================================================== the Tune trainable

#: Metrics every finetune Tune result carries (besides step / run id).
REPORTED = ("acc/train", "train_loss", "acc/new_atomic", "acc/retained_atomic", "acc/unretained_atomic",
            *(f"acc/{s}" for s in TEST_SPLITS.values()), *(f"lens/{s}/bridge_found" for s in TEST_SPLITS),
            "param_norm")


@dataclass
class FinetuneContext:
    """What a finetune trial needs besides its swept values (``tune.with_parameters``).

    Duck-compatible with :class:`grokray.sweep.trial.TrialContext` for
    :func:`~grokray.sweep.trial.find_or_create_run`.
    """
    sweep: str
    base: dict                     # the base trial config (plain dict, budget applied): train + seed are used
    transfer: dict                 # the base transfer config (plain dict)
    swept_keys: list[str]          # "source_run" first, then the spec's swept keys
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    checkpoint: Any = "last"       # source checkpoint: "last" or a step
    source_tracking_uri: str | None = None
    threads: int = 1


def _finetune_reporter(run_id: str):
    from grokray.sweep import trial
    from grokray.sweep.trial import TuneReporter

    class FinetuneReporter(TuneReporter):
        """TuneReporter with the transfer metrics in every result."""

        def result(self, step: int, metrics: dict) -> dict:
            out = super().result(step, metrics)
            out.update({k: metrics[k] for k in REPORTED if k in metrics})
            return out

    return FinetuneReporter(run_id, every_s=trial.CHECKPOINT_EVERY_S)


class FinetuneLogger(tracking.RunLogger):
    """RunLogger that also records the transfer config, the source and, at the end, the
    :func:`transfer_summary` as ``transfer/*`` metrics and a ``transfer_curves.png``."""

    def __init__(self, client: "MlflowClient", run_id: str, tcfg: TransferConfig, source: Mapping[str, Any],
                 log_checkpoints: bool = True):
        super().__init__(client, run_id, log_checkpoints)
        self.tcfg, self.source = tcfg, dict(source)

    def on_start(self, trainer: "Trainer") -> None:
        first = self.skip_until < 0
        super().on_start(trainer)
        if not first:
            return
        from mlflow.entities import Param

        params = {f"transfer.{k}": v for k, v in self.tcfg.to_dict().items()}
        params.update({"source.run_id": self.source.get("run_id"), "source.checkpoint": self.source.get("checkpoint"),
                       "source.step": getattr(trainer, "source_step", None)})
        sizes = trainer.dataset.sizes()
        params.update({f"transfer.size.{k}": sizes[k] for k in SPLITS if k in sizes})
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in tracking.flat_params(params).items()])

    def on_end(self, result: "TrainResult", trainer: "Trainer") -> None:
        super().on_end(result, trainer)
        log_transfer_summary(self.client, self.run_id, result.history, self.source.get("label"))


def log_transfer_summary(client: "MlflowClient", run_id: str, history: Sequence[Mapping[str, Any]],
                         label: str | None = None) -> dict[str, float]:
    """``transfer/<key>`` metrics (:func:`transfer_summary`) and ``transfer_curves.png`` on a run."""
    summary = transfer_summary(history)
    last = int(history[-1]["step"]) if history else 0
    tracking.log_metrics(client, run_id, last, {f"transfer/{k}": v for k, v in summary.items()})
    with tempfile.TemporaryDirectory(prefix="grokray-transfer-") as tmp:
        plot_transfer_curves({label: [history]}, Path(tmp) / "transfer_curves.png",
                             title=f"fine-tuning {run_id[:12]}")
        client.log_artifact(run_id, str(Path(tmp) / "transfer_curves.png"))
    return summary


def finetune_run_name(source: Mapping[str, Any], values: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``true:<source run name>|tf_n_new=0.1`` (short source label, source name, other swept values)."""
    from grokray.phasemap import SHORT
    from grokray.sweep.trial import run_name

    # transfer.seed -> tf_seed: its last segment alone would read like the trial seed.
    shown = {k.replace("transfer.", "tf_", 1): v for k, v in values.items()}
    rest = run_name(shown, [k.replace("transfer.", "tf_", 1) for k in keys if k != "source_run"])
    name = f"{SHORT.get(source.get('label'), '?')}:{source.get('run_name') or str(source.get('run_id'))[:12]}"
    return name + (f"|{rest}" if rest != "trial" else "")


def finetune_trial(config: dict, ctx: FinetuneContext) -> None:
    """The Tune trainable of a finetune sweep: ``config["source_run"]`` is the source MLflow
    run id; ``transfer.*`` keys override the base transfer config, the rest the base trial
    config (``train.*``, ``seed``). Restarts from the Tune checkpoint like
    :func:`grokray.sweep.trial.run_trial` (the MLflow child run is found again by its trial id).
    """
    import torch
    from mlflow.entities import RunTag
    from ray import tune

    from grokray.config import replace_dotted, trial_config_from_dict
    from grokray.sweep.trial import find_or_create_run, report_final, restore_from_tune_checkpoint

    torch.set_num_threads(max(1, ctx.threads))
    source_run = config["source_run"]
    tcfg = replace_transfer(transfer_config_from_dict(ctx.transfer),
                            {k: v for k, v in config.items() if k.startswith("transfer.")})
    cfg = replace_dotted(trial_config_from_dict(ctx.base),
                         {k: v for k, v in config.items() if k != "source_run" and not k.startswith("transfer.")})
    client = tracking.get_client(ctx.tracking_uri)
    src_client = tracking.get_client(ctx.source_tracking_uri) if ctx.source_tracking_uri else client
    source = _source_info(src_client.get_run(source_run))
    source["checkpoint"] = ctx.checkpoint
    values = {k: config[k] for k in ctx.swept_keys if k in config}
    run_id = find_or_create_run(client, ctx, tune.get_context().get_trial_id(), values)

    tags = {f"{_P}kind": "finetune", f"{_P}source_run": source_run, f"{_P}source_label": source["label"] or "",
            f"{_P}source_sweep": source["sweep"] or "", f"{_P}source_run_name": source["run_name"],
            f"{_P}source_checkpoint": str(ctx.checkpoint),
            "mlflow.runName": finetune_run_name(source, values, ctx.swept_keys)}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    status = "FAILED"  # also when the source checkpoint cannot be fetched or loaded
    try:
        with tempfile.TemporaryDirectory(prefix="grokray-finetune-") as work:
            ckpt = download_checkpoint(src_client, source_run, ctx.checkpoint, Path(work) / "source")
            trainer = prepare_finetune(ckpt, tcfg, cfg.train, Path(work) / "run", seed=cfg.seed)
            restore_from_tune_checkpoint(trainer)
            reporter = _finetune_reporter(run_id)
            result = trainer.run([FinetuneLogger(client, run_id, tcfg, source), reporter])
            status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    report_final(reporter, result)


# =========================================================================== the transfer map

#: Columns of :func:`transfer_map` after the source columns and the swept parameters.
SUMMARY_KEYS = ("t_memorize_new", "t_new_old",
                *(f"{p}_{s}" for s in (*TEST_SPLITS, "new_atomic", "retained", "unretained")
                  for p in ("init", "final", "max")),
                "forget_old_old", "forget_retained", "forget_unretained", *(f"bridge_{s}" for s in TEST_SPLITS))
MAP_COLUMNS = ("source_label", "source_run", "source_run_name", "source_sweep")
TAIL_COLUMNS = ("steps_run", "status", "run_id", "run_name")
_HISTORY_KEYS = ("acc/new_atomic", "acc/retained_atomic", "acc/unretained_atomic",
                 *(f"acc/{s}" for s in TEST_SPLITS.values()), *(f"lens/{s}/bridge_found" for s in TEST_SPLITS))


def _finetune_runs(client: "MlflowClient", sweep: str) -> tuple[Any, list[Any]]:
    from grokray.phasemap import _all_experiments, _find_parent

    parent = _find_parent(client, sweep, [e.experiment_id for e in _all_experiments(client)])
    if parent is None:
        raise LookupError(f"no sweep named {sweep!r} at {client.tracking_uri}")
    flt = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`{_P}kind` = 'finetune'"
    runs = sorted(tracking.iter_runs(client, [parent.info.experiment_id], flt),
                  key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return parent, runs


def _metric_history(client: "MlflowClient", run_id: str, keys: Iterable[str] = _HISTORY_KEYS) -> list[dict]:
    by_step: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(int(m.step), {"step": int(m.step)})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def _row(client: "MlflowClient", run: Any, params: list[str]) -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    summary = {k: metrics.get(f"transfer/{k}") for k in SUMMARY_KEYS}
    if any(v is None for v in summary.values()):  # still running (or killed): from the metric histories
        summary = transfer_summary(_metric_history(client, run.info.run_id))
    try:
        swept = json.loads(tags.get(f"{_P}swept") or "{}")
    except ValueError:
        swept = {}
    steps = tags.get(f"{_P}steps_run")
    row = {"source_label": tags.get(f"{_P}source_label") or None, "source_run": tags.get(f"{_P}source_run"),
           "source_run_name": tags.get(f"{_P}source_run_name"), "source_sweep": tags.get(f"{_P}source_sweep") or None}
    row.update({k: swept.get(k) if not isinstance(swept.get(k), (dict, list)) else json.dumps(swept.get(k))
                for k in params})
    row.update({k: float(v) if v is not None else math.nan for k, v in summary.items()})
    row.update(steps_run=int(steps) if steps is not None and steps.isdigit() else int(max(
        (h["step"] for h in _metric_history(client, run.info.run_id, ["acc/train"])), default=0)),
        status=run.info.status, run_id=run.info.run_id, run_name=run.info.run_name or "")
    return row


def transfer_map(sweep: str, tracking_uri: str | None = None) -> "pd.DataFrame":
    """One row per finetune run of ``sweep``: source label / run, the swept values (besides
    ``source_run``), :func:`transfer_summary`'s numbers, ``steps_run``, ``status``, ``run_id``.

    Finished runs are read from their ``transfer/*`` metrics (one search for all runs);
    runs without them (still running) from their metric histories.
    ``df.attrs``: ``sweep``, ``params``, ``parent_run_id``, ``tracking_uri``.

    Raises:
        LookupError: no sweep of that name at the tracking URI.
    """
    import pandas as pd

    client = tracking.get_client(tracking_uri)
    parent, runs = _finetune_runs(client, sweep)
    params = [k for k in parent.data.params.get("sweep.swept", "").split(",") if k and k != "source_run"]
    rows = [_row(client, r, params) for r in runs]
    columns = [*MAP_COLUMNS, *params, *SUMMARY_KEYS, *TAIL_COLUMNS]
    df = pd.DataFrame(rows, columns=columns)
    for c in SUMMARY_KEYS:
        df[c] = df[c].astype("float64")
    df["steps_run"] = df["steps_run"].astype("int64")
    df.attrs.update(sweep=sweep, params=params, parent_run_id=parent.info.run_id, tracking_uri=client.tracking_uri)
    return df


def _label_order(labels: Iterable[Any]) -> list[Any]:
    from grokray.phasemap import LABELS

    present = list(dict.fromkeys(None if (v is None or v != v) else v for v in labels))
    return [lab for lab in LABELS if lab in present] + sorted(str(x) for x in present
                                                             if x not in LABELS and x is not None) + (
        [None] if None in present else [])


def _med(values: "pd.Series") -> float:
    v = values.astype(float).dropna()
    return float(v.median()) if len(v) else math.nan


TABLE_LEGEND = ("per source label: runs; memorized = runs whose new-fact accuracy reached 0.99 (sustained) / runs, "
                "t_mem = median first step; accuracy columns = median over runs of the final exact match (median of "
                "a run's last 5 evaluations) on the test compositions (hop 1 + hop 2: new = learned in fine-tuning, "
                "old = retained); forget = median drop from step 0")


def format_transfer_table(df: "pd.DataFrame") -> str:
    """Per source label: runs, memorized k/n and median steps to memorize the new facts, median
    final accuracy per composition type (and the lens bridge rate on old+new), median forgetting."""
    from grokray.phasemap import SHORT

    def f(v: float) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"

    def steps(v: float) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.0f}"

    header = ["source", "runs", "memorized", "t_mem", "new", "new+old", "old+new", "new+new", "old+old",
              "bridge old+new", "forget old+old", "forget retained"]
    body = []
    for lab in _label_order(df["source_label"]) if len(df) else []:
        g = df[df["source_label"].isna()] if lab is None else df[df["source_label"] == lab]
        mem = g["t_memorize_new"].astype(float)
        body.append([SHORT.get(lab, str(lab)), str(len(g)), f"{int(mem.notna().sum())}/{len(g)}", steps(_med(mem)),
                     f(_med(g["final_new_atomic"])), f(_med(g["final_new_old"])), f(_med(g["final_old_new"])),
                     f(_med(g["final_new_new"])), f(_med(g["final_old_old"])), f(_med(g["bridge_old_new"])),
                     f(_med(g["forget_old_old"])), f(_med(g["forget_retained"]))])
    if not body:
        body = [["(no finetune runs)"] + [""] * (len(header) - 1)]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip() for r in [header, *body]]
    return "\n".join(lines) + "\n" + TABLE_LEGEND


def transfer_histories(df: "pd.DataFrame", tracking_uri: str | None = None) -> dict[Any, list[list[dict]]]:
    """``{source label: [history, ...]}`` for the runs of a :func:`transfer_map` frame
    (each run's ``history.json``; its metric histories while it runs)."""
    client = tracking.get_client(tracking_uri or df.attrs.get("tracking_uri"))
    out: dict[Any, list[list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="grokray-histories-") as tmp:
        for rec in df.to_dict("records"):
            history = None
            try:
                path = client.download_artifacts(rec["run_id"], "history.json", str(Path(tmp) / rec["run_id"]))
                history = json.loads(Path(path).read_text())
            except Exception:
                history = _metric_history(client, rec["run_id"])
            lab = rec["source_label"] if isinstance(rec["source_label"], str) else None
            out.setdefault(lab, []).append(history)
    return out


CURVE_PANELS = (("acc/new_atomic", "new atomic facts (memorization)"), ("acc/test_new_old", "new+old (hop 1 new)"),
                ("acc/test_old_new", "old+new (hop 2 new)"), ("acc/test_new_new", "new+new"))


def plot_transfer_curves(histories_by_label: Mapping[Any, Sequence[Sequence[Mapping[str, Any]]]],
                         path: str | os.PathLike, title: str | None = None,
                         panels: Sequence[tuple[str, str]] = CURVE_PANELS) -> str:
    """He et al. figure 3 style: accuracy vs fine-tuning step on the new facts, new+old,
    old+new and new+new, one line per run, coloured by source label. Returns ``path``."""
    from matplotlib.lines import Line2D

    from grokray.phasemap import COLORS, OTHER_COLOR
    from grokray.plots import plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), dpi=110, squeeze=False,
                             sharey=True, layout="constrained")
    n_runs = 0
    for ax, (key, name) in zip(axes[0], panels):
        for lab, histories in histories_by_label.items():
            color = COLORS.get(lab, OTHER_COLOR)
            for history in histories:
                s, v = _series(history, key)
                if len(s):
                    ax.plot(s, v, color=color, lw=1.2, alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("fine-tuning step", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("exact-match accuracy", fontsize=8)
    handles = []
    for lab, histories in histories_by_label.items():
        n_runs += len(histories)
        text = (lab or "unlabelled source").replace("_", " ") + f" ({len(histories)})"
        handles.append(Line2D([], [], color=COLORS.get(lab, OTHER_COLOR), lw=2, label=text))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=8,
                   frameon=False)
    fig.suptitle(title or f"transfer: accuracy during fine-tuning ({n_runs} run{'' if n_runs == 1 else 's'}, "
                 "coloured by the source's label)", fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def log_transfer_map(tracking_uri: str, parent_run_id: str, sweep: str, experiment: str | None = None
                     ) -> "pd.DataFrame":
    """``transfer_map/`` on the sweep's parent run: CSV, table text and the curves PNG
    (same signature as :func:`grokray.phasemap.log_phase_map`, for the driver's refresher)."""
    df = transfer_map(sweep, tracking_uri)
    client = tracking.get_client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="grokray-transfermap-") as tmp:
        d = Path(tmp)
        df.to_csv(d / "transfer_map.csv", index=False)
        (d / "transfer_map.txt").write_text(format_transfer_table(df) + "\n")
        done = df[df["status"] == "FINISHED"]
        done.attrs = dict(df.attrs)
        plot_transfer_curves(transfer_histories(done, tracking_uri), d / "transfer_curves.png",
                             title=f"transfer: {sweep}")
        client.log_artifacts(parent_run_id, str(d), "transfer_map")
    return df


# =========================================================================== CLI (registered by grokray.cli)

def add_transfer_map_args(p: Any) -> None:
    """Arguments of ``grokray transfer-map SWEEP``."""
    p.add_argument("name", metavar="SWEEP", help="a finetune sweep name")
    p.add_argument("--png", default=None, help="write the transfer curves here (default: SWEEP_transfer.png)")
    p.add_argument("--csv", default=None, help="also write one row per finetune run as CSV")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of the table")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db)")


def run_transfer_map(args: Any) -> int:
    """``grokray transfer-map``: the table (or JSON lines), the curves PNG, optionally a CSV."""
    from grokray.cli import UserError, _existing_client

    client = _existing_client(args.tracking_uri)
    try:
        df = transfer_map(args.name, client.tracking_uri)
    except LookupError as e:
        raise UserError(str(e).strip("'\"")) from None
    if args.csv:
        df.to_csv(args.csv, index=False)
    png = args.png or f"{args.name}_transfer.png"
    plot_transfer_curves(transfer_histories(df, client.tracking_uri), png, title=f"transfer: {args.name}")
    if args.json:
        print(df.to_json(orient="records", lines=True), end="")
        return 0
    print(f"{args.name}: {len(df)} finetune run(s)")
    print(format_transfer_table(df))
    print(f"transfer curves: {png}" + (f"; runs: {args.csv}" if args.csv else ""))
    return 0


__all__ = ["TransferConfig", "TransferDataset", "transfer_config_from_dict", "build_transfer_dataset",
           "load_transfer_dataset", "prepare_finetune", "finetune", "transfer_summary", "resolve_sources",
           "download_checkpoint", "FinetuneSpec", "SourceSpec", "parse_finetune", "prepare_sources", "log_sources",
           "prepare_sweep_sources", "transfer_grid", "trial_keys", "finetune_trainable", "source_space",
           "FinetuneContext", "finetune_trial", "transfer_map", "format_transfer_table", "plot_transfer_curves",
           "transfer_histories", "log_transfer_map", "add_transfer_map_args", "run_transfer_map"]
