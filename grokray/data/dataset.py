"""Tensors for training and evaluation, named by a content hash and cached on disk.

A :class:`Dataset` holds every split as rows ``(h, r1, r2, bridge, t)`` (atomic facts
have ``r2 = bridge = -1``) and turns them into model inputs:

* tokens: entities are ``0..E-1``, relations ``E..E+R-1``, and ``PAD = E+R``;
* atomic fact ``h r PAD``, answer read at position 1; composition ``h r1 r2``,
  answer read at position 2. With causal attention the pad never matters; without
  (``model.causal: false``) it is one constant token every atomic fact sees.

The dataset is a pure function of its :class:`~grokray.config.DataConfig`; its name is
``ds-`` + a hash of that config (augmentation preset resolved), so a hundred trials
on the same data generate it once. Writers take a file lock and publish with an
atomic rename, so trials that create it at the same moment are safe.

Example:
    >>> from grokray.config import DataConfig
    >>> ds = build_dataset(DataConfig(n_entities=60, n_relations=10, out_degree=5, phi=3.0))
    >>> ds.sizes()["atomic"], ds.vocab_size
    (300, 71)
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from grokray.config import DataConfig, to_plain
from grokray.data.augment import augment
from grokray.data.cache import cached
from grokray.data.shortcuts import shortcut_baselines
from grokray.data.graph import BRIDGE, H, R1, R2, TAIL, build_graph, split

#: Bump when the generator's output for a given config changes: it is part of the hash.
#: 2: augmentation presets inject k = round(phi) (full) / round(phi / 2) (half) queries per OOD
#: fact (He et al.'s equalized supervision) instead of a fixed 18 / 9.
GENERATOR_VERSION = 2

#: Evaluation probes, in the order metrics are reported.
PROBES = ("train", "train_inferred", "id_atomic", "ood_atomic", "train_augmented",
          "test_inferred_id", "test_inferred_ood")
#: Splits the generator produces (probes are sampled from / equal to them).
SPLITS = ("id_atomic", "ood_atomic", "train_inferred", "train_augmented", "test_inferred_id",
          "test_inferred_ood")


def data_hash(cfg: DataConfig) -> str:
    """``ds-`` + 12 hex digits of a hash of everything that determines the data."""
    hop1, hop2 = cfg.injections()
    payload = to_plain(cfg)
    if payload.get("memorize_ood_queries") is None:   # keys added later hash only when set: old names hold
        payload.pop("memorize_ood_queries", None)
    if not payload.get("withhold_hop2"):
        payload.pop("withhold_hop2", None)
    payload["augmentation"] = {"hop1": to_plain(hop1), "hop2": to_plain(hop2)}
    payload["generator_version"] = GENERATOR_VERSION
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"ds-{digest[:12]}"


@dataclass
class Batch:
    """Model inputs for a set of queries (all tensors share the first dimension N)."""
    tokens: torch.Tensor      # [N, 3] int64
    answer_pos: torch.Tensor  # [N] int64: 1 for atomic facts, 2 for compositions
    target: torch.Tensor      # [N] int64: the answer entity
    bridge: torch.Tensor      # [N] int64: the bridge entity, -1 for atomic facts

    def __len__(self) -> int:
        return len(self.target)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(t.to(device) for t in (self.tokens, self.answer_pos, self.target, self.bridge)))

    def index(self, idx: torch.Tensor | slice) -> "Batch":
        return Batch(self.tokens[idx], self.answer_pos[idx], self.target[idx], self.bridge[idx])


@dataclass
class Dataset:
    config: DataConfig
    name: str
    n_entities: int
    n_relations: int
    atomic: np.ndarray                 # [n_atomic, 3] (h, r, t): the whole graph
    atomic_ood: np.ndarray             # [n_atomic] bool
    rows: dict[str, np.ndarray]        # split -> [n, 5] (h, r1, r2, bridge, t)
    probe_rows: dict[str, np.ndarray]  # probe -> [n, 5], at most probe_size each
    pool_size: int
    #: {split: {rule: accuracy}} of the shortcut baselines (grokray.data.shortcuts); computed once,
    #: stored with the dataset, recomputed only for a file written before they existed.
    shortcuts: dict | None = field(default=None, repr=False)
    _tail: np.ndarray | None = field(default=None, repr=False)
    _trained_keys: np.ndarray | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- vocabulary
    @property
    def pad(self) -> int:
        return self.n_entities + self.n_relations

    @property
    def vocab_size(self) -> int:
        return self.n_entities + self.n_relations + 1

    def relation_token(self, r: np.ndarray | int) -> np.ndarray | int:
        return r + self.n_entities

    @property
    def tail(self) -> np.ndarray:
        """``[E, R]`` lookup of the atomic graph: tail entity, or -1 where (h, r) is not a fact."""
        if self._tail is None:
            t = np.full((self.n_entities, self.n_relations), -1, dtype=np.int64)
            t[self.atomic[:, 0], self.atomic[:, 1]] = self.atomic[:, 2]
            self._tail = t
        return self._tail

    def query_keys(self, h: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
        """One integer per two-hop query ``(h, r1, r2)`` (for set tests with numpy)."""
        n_rel = self.n_relations
        return (np.asarray(h, np.int64) * n_rel + np.asarray(r1, np.int64)) * n_rel + np.asarray(r2, np.int64)

    def trained_queries(self) -> np.ndarray:
        """Sorted keys (:meth:`query_keys`) of every two-hop query trained as a whole (train_inferred,
        train_augmented, the negative control's train_ood_queries): a model may answer these by
        memory, so a correct answer to one is no evidence of composing."""
        if self._trained_keys is None:
            rows = self.train_rows()
            two_hop = rows[rows[:, R2] >= 0]
            self._trained_keys = np.unique(self.query_keys(two_hop[:, H], two_hop[:, R1], two_hop[:, R2]))
        return self._trained_keys

    def is_trained(self, h: np.ndarray, r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
        """Per query: was it trained as a whole? (bool array)"""
        keys = self.trained_queries()
        q = self.query_keys(h, r1, r2)
        idx = np.clip(np.searchsorted(keys, q), 0, max(len(keys) - 1, 0))
        return (keys[idx] == q) if len(keys) else np.zeros(q.shape, dtype=bool)

    # ---------------------------------------------------------------- tensors
    def encode(self, rows: np.ndarray) -> Batch:
        """Rows ``(h, r1, r2, bridge, t)`` -> model inputs (``r2 = -1`` marks an atomic fact)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
        atomic = rows[:, R2] < 0
        tokens = np.stack([rows[:, H], rows[:, R1] + self.n_entities,
                           np.where(atomic, self.pad, rows[:, R2] + self.n_entities)], 1)
        return Batch(torch.from_numpy(tokens), torch.from_numpy(np.where(atomic, 1, 2)),
                     torch.from_numpy(rows[:, TAIL].copy()), torch.from_numpy(rows[:, BRIDGE].copy()))

    def train_rows(self) -> np.ndarray:
        """Everything trained on: all atomic facts (ID and OOD), train_inferred, train_augmented, and
        last, the negative control's memorized OOD queries (``train_ood_queries``, when the data has
        them: :meth:`late_rows` of them enter training only from ``config.memorize_ood_queries``)."""
        return np.concatenate([self.rows[k] for k in TRAIN_SPLITS if k in self.rows])

    def late_rows(self) -> int:
        """How many of :meth:`train_rows` (the last ones) are the negative control's OOD queries."""
        return int(len(self.rows.get("train_ood_queries", ())))

    def rows_in_play(self, step: int) -> int:
        """How many leading rows of :meth:`train_rows` batches draw from at ``step``.

        >>> from grokray.config import DataConfig
        >>> ds = build_dataset(DataConfig(n_entities=30, n_relations=6, out_degree=4, phi=2.0,
        ...                               memorize_ood_queries=100))
        >>> n = len(ds.train_rows()); ds.rows_in_play(99) == n - ds.late_rows(), ds.rows_in_play(100) == n
        (True, True)
        """
        start = self.config.memorize_ood_queries
        n = sum(len(self.rows[k]) for k in TRAIN_SPLITS if k in self.rows)
        return n if start is None or step >= start else n - self.late_rows()

    def sizes(self) -> dict[str, int]:
        s = {k: int(len(v)) for k, v in self.rows.items()}
        s["atomic"] = int(len(self.atomic))
        s["train"] = int(sum(len(self.rows[k]) for k in TRAIN_SPLITS if k in self.rows))
        s["inferred_pool"] = int(self.pool_size)
        return s

    def baselines(self) -> dict[str, dict[str, float]]:
        """The shortcut baselines of every two-hop test split (:mod:`grokray.data.shortcuts`)."""
        if self.shortcuts is None:
            self.shortcuts = shortcut_baselines(self.rows, self.n_entities, self.n_relations)
        return self.shortcuts

    def summary(self) -> dict:
        n_id = len(self.rows["id_atomic"])
        return {"name": self.name, "config": to_plain(self.config),
                "augmentation": self.config.augmentation_name(),
                "vocab_size": self.vocab_size, "sizes": self.sizes(),
                "probe_sizes": {k: int(len(v)) for k, v in self.probe_rows.items()},
                "phi_effective": len(self.rows["train_inferred"]) / max(n_id, 1),
                "phi_max": self.pool_size / max(n_id, 1), "shortcuts": self.baselines()}

    # ---------------------------------------------------------------- persistence
    def meta_json(self) -> dict:
        """The JSON :meth:`save` stores beside the arrays; subclasses add their own fields."""
        return {"name": self.name, "config": to_plain(self.config), "generator_version": GENERATOR_VERSION,
                "shortcuts": self.baselines()}

    def save(self, path: str | os.PathLike) -> None:
        arrays = {"atomic": self.atomic, "atomic_ood": self.atomic_ood,
                  "pool_size": np.array(self.pool_size, dtype=np.int64), "meta": np.array(json.dumps(self.meta_json()))}
        arrays.update({f"rows__{k}": v for k, v in self.rows.items()})
        arrays.update({f"probe__{k}": v for k, v in self.probe_rows.items()})
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @staticmethod
    def read_arrays(path: str | os.PathLike) -> tuple[dict, dict]:
        """A saved dataset's meta JSON and its arrays, keyed by the constructor's field names."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {"atomic": z["atomic"], "atomic_ood": z["atomic_ood"], "pool_size": int(z["pool_size"]),
                      "rows": {k[len("rows__"):]: z[k] for k in z.files if k.startswith("rows__")},
                      "probe_rows": {k[len("probe__"):]: z[k] for k in z.files if k.startswith("probe__")}}
        return meta, arrays

    @classmethod
    def load(cls, path: str | os.PathLike, config: DataConfig) -> "Dataset":
        meta, arrays = cls.read_arrays(path)
        return cls(config, meta["name"], config.n_entities, config.n_relations, **arrays,
                   shortcuts=meta.get("shortcuts"))


#: The splits trained on, in the order of :meth:`Dataset.train_rows` (the late ones last).
TRAIN_SPLITS = ("id_atomic", "ood_atomic", "train_inferred", "train_augmented", "train_ood_queries")


def negative_control(rows: dict[str, np.ndarray], hop2: bool = False) -> dict[str, np.ndarray]:
    """The negative control's splits (``data.memorize_ood_queries``): the OOD test queries as
    training rows (``train_ood_queries``), and their first-hop atomic facts moved out of
    ``ood_atomic`` into ``withheld_hop1`` (never trained); with ``hop2`` (``data.withhold_hop2``)
    their second-hop facts too (``withheld_hop2``)."""
    ood = rows["test_inferred_ood"]
    first = {(h, r) for h, r in ood[:, [H, R1]].tolist()}
    second = {(b, r) for b, r in ood[:, [BRIDGE, R2]].tolist()} if hop2 else set()
    atomic = rows["ood_atomic"]
    pairs = atomic[:, [H, R1]].tolist()
    out1 = np.array([(h, r) in first for h, r in pairs], dtype=bool)
    out2 = np.array([(h, r) in second for h, r in pairs], dtype=bool) & ~out1
    out = {**rows, "ood_atomic": atomic[~(out1 | out2)], "withheld_hop1": atomic[out1],
           "train_ood_queries": ood.copy()}
    if hop2:
        out["withheld_hop2"] = atomic[out2]
    return out


def atomic_rows(atomic: np.ndarray) -> np.ndarray:
    n = len(atomic)
    minus = np.full(n, -1, dtype=np.int64)
    return np.stack([atomic[:, 0], atomic[:, 1], minus, minus, atomic[:, 2]], 1)


def sample_rows(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(rows) <= n:
        return rows
    return rows[np.sort(rng.choice(len(rows), size=n, replace=False))]


def build_dataset(cfg: DataConfig) -> Dataset:
    """Generate the dataset for ``cfg`` (deterministic in ``cfg.seed``); no caching."""
    rng = np.random.default_rng(cfg.seed)
    graph = build_graph(cfg, rng)
    splits = split(graph, cfg, rng)
    comps = graph.compositions
    hop1, hop2 = cfg.injections()
    added = augment(graph, splits.test_inferred_ood, hop1, hop2, rng)
    # Defensive dedup against everything trained or tested (disjoint by construction: an injected
    # query has exactly one OOD hop, training compositions none, test compositions zero or two).
    taken = {tuple(q) for q in comps[np.concatenate([splits.train_inferred, splits.test_inferred_id,
                                                     splits.test_inferred_ood])][:, :3].tolist()}
    added = added[[tuple(q) not in taken for q in added[:, :3].tolist()]] if len(added) else added

    rows = {
        "id_atomic": atomic_rows(graph.atomic[splits.id_atomic]),
        "ood_atomic": atomic_rows(graph.atomic[splits.ood_atomic]),
        "train_inferred": comps[splits.train_inferred],
        "train_augmented": added.reshape(-1, 5),
        "test_inferred_id": comps[splits.test_inferred_id],
        "test_inferred_ood": comps[splits.test_inferred_ood],
    }
    if cfg.memorize_ood_queries is not None:
        rows = negative_control(rows, hop2=cfg.withhold_hop2)
    probe_rng = np.random.default_rng([cfg.seed, 1])  # probes never shift the splits
    # The train probe is what memorization is read on: the negative control's late OOD queries are
    # not in it (their accuracy is the test_inferred_ood curve itself).
    train_all = np.concatenate([rows["id_atomic"], rows["ood_atomic"], rows["train_inferred"],
                                rows["train_augmented"]])
    probes = {"train": sample_rows(train_all, cfg.probe_size, probe_rng)}
    for name in SPLITS:
        probes[name] = sample_rows(rows[name], cfg.probe_size, probe_rng)
    ds = Dataset(cfg, data_hash(cfg), cfg.n_entities, cfg.n_relations, graph.atomic, graph.atomic_ood,
                 rows, probes, splits.pool_size)
    ds.baselines()
    return ds


# --------------------------------------------------------------------------- cached access

def load_dataset(cfg: DataConfig, cache: str | os.PathLike | None = None) -> Dataset:
    """The dataset for ``cfg``: from this process's memory, from the disk cache
    (:mod:`grokray.data.cache`), or generated once."""
    return cached(data_hash(cfg), lambda: build_dataset(cfg), Dataset.save, lambda path: Dataset.load(path, cfg),
                  cache)
