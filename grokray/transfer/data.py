"""Fine-tuning data (He et al. 2026, section 5): new facts, retained facts, and test compositions
that ask whether facts learned only during fine-tuning take part in two-hop reasoning.

A source run's dataset is turned into a small fine-tuning dataset built from its own graph:

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
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from grokray.config import MAX_BUDGET, MAX_SEED, ConfigError, DataConfig, coerce, to_plain
from grokray.data import Dataset, data_hash, load_dataset
from grokray.data.cache import cached
from grokray.data.dataset import atomic_rows, sample_rows

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
    v = coerce(value, float, key)
    if v > MAX_BUDGET:
        raise ConfigError(f"must be <= {MAX_BUDGET:,}", key=key, value=value)
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
    new_pairs = coerce(get("new_pairs"), str, f"{prefix}.new_pairs")
    if new_pairs not in NEW_PAIRS:
        raise ConfigError(f"must be one of {', '.join(NEW_PAIRS)}", key=f"{prefix}.new_pairs", value=new_pairs)
    phi = get("phi")
    if phi is not None:
        phi = coerce(phi, float, f"{prefix}.phi")
        if phi <= 0:
            raise ConfigError("must be > 0 (or null for every retained composition)", key=f"{prefix}.phi", value=phi)
    test_fraction = coerce(get("test_fraction"), float, f"{prefix}.test_fraction")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError("must be in [0, 1)", key=f"{prefix}.test_fraction", value=test_fraction)
    probe_size = get("probe_size")
    if probe_size is not None:
        probe_size = coerce(probe_size, int, f"{prefix}.probe_size")
        if probe_size < 1:
            raise ConfigError("must be >= 1 (or null for the source's data.probe_size)", key=f"{prefix}.probe_size",
                              value=probe_size)
    seed = coerce(get("seed"), int, f"{prefix}.seed")
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"must be in [0, {MAX_SEED}]", key=f"{prefix}.seed", value=seed)
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
    source_name = source if isinstance(source, str) else data_hash(source)
    payload = {"source": source_name, "transfer": to_plain(tcfg), "transfer_version": TRANSFER_VERSION}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"tf-{digest[:12]}"


# =========================================================================== the dataset

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

    def meta_json(self) -> dict:
        return {"name": self.name, "config": to_plain(self.config), "source": self.source_name,
                "transfer": self.transfer.to_dict(), "lens_splits": self.lens_splits, "counts": self.counts,
                "transfer_version": TRANSFER_VERSION, "shortcuts": self.baselines()}

    @classmethod
    def load(cls, path: str | os.PathLike, config: DataConfig) -> "TransferDataset":
        meta, arrays = cls.read_arrays(path)
        return cls(config, meta["name"], config.n_entities, config.n_relations, **arrays,
                   shortcuts=meta.get("shortcuts"), source_name=meta["source"], transfer=transfer_config_from_dict(meta["transfer"]),
                   lens_splits=dict(meta["lens_splits"]), counts=dict(meta.get("counts", {})))


def _query_key(rows: np.ndarray, n_relations: int) -> np.ndarray:
    """One int64 per query ``(h, r1, r2)``: compositions are equal queries iff keys are equal."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    return (rows[:, 0] * n_relations + rows[:, 1]) * (n_relations + 1) + rows[:, 2] + 1


def _name_seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)


def transfer_counts(source: Dataset, tcfg: TransferConfig) -> tuple[int, int]:
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


def build_transfer_dataset(source: Dataset, tcfg: TransferConfig) -> TransferDataset:
    """The fine-tuning data for ``source`` (deterministic in ``tcfg`` and the source); no caching.

    Raises ConfigError (``transfer.<key>``) when the source graph cannot hold what ``tcfg`` asks.
    """
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
        "new_atomic": atomic_rows(new),
        "retained_atomic": atomic_rows(atomic[retained]),
        "unretained_atomic": atomic_rows(atomic[untouched]),
        "train_inferred": comps[train],
        "test_new_old": test(_NEW, _RETAINED),
        "test_old_new": test(_RETAINED, _NEW),
        "test_new_new": test(_NEW, _NEW),
        "test_old_old": comps[test_oo],
    }
    probe_size = tcfg.probe_size or source.config.probe_size
    probe_rng = np.random.default_rng([tcfg.seed, _name_seed(source.name), 1])  # probes never shift the splits
    train_all = np.concatenate([rows[k] for k in TRAIN_SPLITS])
    probes = {"train": sample_rows(train_all, probe_size, probe_rng)}
    for name in SPLITS:
        probes[name] = sample_rows(rows[name], probe_size, probe_rng)
    with_new = (k1 == _NEW) | (k2 == _NEW)
    counts = {"n_new": n_new, "n_retained": n_ret, "old_old_compositions": int(len(old_old)),
              "old_old_source_trained": int(seen[old_old].sum()),
              "new_dropped_source_trained": int((seen & with_new).sum())}
    return TransferDataset(source.config, transfer_hash(source.name, tcfg), E, R, ft_atomic, ft_ood, rows,
                                     probes, int(len(pool)), source_name=source.name, transfer=tcfg,
                                     lens_splits=dict(TEST_SPLITS), counts=counts)


def load_transfer_dataset(source_data_cfg: DataConfig, tcfg: TransferConfig,
                          cache: str | os.PathLike | None = None) -> TransferDataset:
    """The transfer dataset for (source data, ``tcfg``): from memory, the disk cache
    (:mod:`grokray.data.cache`, ``tf-<hash>.npz``), or built once from the source dataset
    (itself loaded or built the same way)."""
    tcfg = transfer_config_from_dict(tcfg)
    return cached(transfer_hash(source_data_cfg, tcfg),
                  lambda: build_transfer_dataset(load_dataset(source_data_cfg, cache), tcfg),
                  TransferDataset.save, lambda path: TransferDataset.load(path, source_data_cfg), cache)
