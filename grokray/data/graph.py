"""The random knowledge graph of Wang et al. (2024) / He et al. (2026), seeded and vectorised.

Atomic facts ``(h, r, t)``: every entity is the head of ``out_degree`` distinct
relations, each pointing to a uniformly random tail. A random ``ood_fraction`` of
the FACTS (not entities) is out-of-distribution: trained as atomic facts but never
seen inside a training composition.

Inferred facts ``(h, r1, r2) -> t`` with bridge ``b`` exist whenever ``(h, r1, b)`` and
``(b, r2, t)`` are atomic. Both hops ID: the training pool (minus a
``test_id_fraction`` held out as test_inferred_id). Both hops OOD: test_inferred_ood.
Exactly one hop OOD: not used, except where augmentation injects them.

Arrays, not Python objects, so paper scale (40k atomic facts, 800k compositions)
takes well under a second.

Example:
    >>> from grokray.config import DataConfig
    >>> g = build_graph(DataConfig(n_entities=50, n_relations=10, out_degree=5))
    >>> g.atomic.shape, int(g.atomic_ood.sum())
    ((250, 3), 22)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grokray.config import ConfigError, DataConfig

# Column layout of composition arrays.
H, R1, R2, BRIDGE, TAIL = range(5)


@dataclass
class KnowledgeGraph:
    n_entities: int
    n_relations: int
    atomic: np.ndarray        # [n_atomic, 3] int64: (h, r, t)
    atomic_ood: np.ndarray    # [n_atomic] bool
    tail: np.ndarray          # [n_entities, n_relations] int64: t, or -1 where (h, r) is not a fact
    fact_index: np.ndarray    # [n_entities, n_relations] int64: row in `atomic`, or -1
    compositions: np.ndarray  # [n_comp, 5] int64: (h, r1, r2, bridge, t), every two-hop path
    hop1_ood: np.ndarray      # [n_comp] bool: (h, r1, b) is OOD
    hop2_ood: np.ndarray      # [n_comp] bool: (b, r2, t) is OOD

    def is_ood(self, h: np.ndarray, r: np.ndarray) -> np.ndarray:
        return self.atomic_ood[self.fact_index[h, r]]


def build_graph(cfg: DataConfig, rng: np.random.Generator | None = None) -> KnowledgeGraph:
    """Generate the atomic facts, the fact-level OOD split and every two-hop composition."""
    if cfg.out_degree > cfg.n_relations:
        raise ConfigError(f"must be <= data.n_relations ({cfg.n_relations})", key="data.out_degree",
                          value=cfg.out_degree)
    rng = rng if rng is not None else np.random.default_rng(cfg.seed)
    E, R, d = cfg.n_entities, cfg.n_relations, cfg.out_degree

    # Each head picks d distinct relations: the first d of a random permutation of R.
    rels = np.argsort(rng.random((E, R)), axis=1)[:, :d]                 # [E, d]
    tails = rng.integers(0, E, size=(E, d))                              # [E, d]
    heads = np.repeat(np.arange(E), d)                                   # [E*d]
    atomic = np.stack([heads, rels.reshape(-1), tails.reshape(-1)], 1).astype(np.int64)  # [E*d, 3]

    n_atomic = len(atomic)
    n_ood = int(round(cfg.ood_fraction * n_atomic))
    atomic_ood = np.zeros(n_atomic, dtype=bool)
    atomic_ood[rng.choice(n_atomic, size=n_ood, replace=False)] = True

    tail = np.full((E, R), -1, dtype=np.int64)
    tail[atomic[:, 0], atomic[:, 1]] = atomic[:, 2]
    fact_index = np.full((E, R), -1, dtype=np.int64)
    fact_index[atomic[:, 0], atomic[:, 1]] = np.arange(n_atomic)

    # Compositions: for each atomic (h, r1, b), each of b's d relations r2.
    b = atomic[:, 2]                                                     # [n_atomic]
    first = np.repeat(np.arange(n_atomic), d)                            # [n_atomic*d] row of hop 1
    second = (b[:, None] * d + np.arange(d)[None, :]).reshape(-1)        # row of hop 2 (heads are blocked by d)
    comps = np.stack([atomic[first, 0], atomic[first, 1], atomic[second, 1], atomic[first, 2],
                      atomic[second, 2]], 1)                             # [n_comp, 5]
    return KnowledgeGraph(E, R, atomic, atomic_ood, tail, fact_index, comps,
                          atomic_ood[first], atomic_ood[second])


@dataclass
class Splits:
    """Index arrays into the graph's atomic facts / compositions, plus the downsampled training pool."""
    id_atomic: np.ndarray        # rows of graph.atomic
    ood_atomic: np.ndarray
    train_inferred: np.ndarray   # rows of graph.compositions (both hops ID), downsampled to phi
    test_inferred_id: np.ndarray  # rows (both hops ID), held out
    test_inferred_ood: np.ndarray  # rows (both hops OOD)
    pool_size: int               # both-ID compositions available for training before downsampling


def max_phi(graph: KnowledgeGraph, cfg: DataConfig) -> float:
    """The largest phi the training pool of this graph allows."""
    both_id = int((~graph.hop1_ood & ~graph.hop2_ood).sum())
    n_test = int(round(cfg.test_id_fraction * both_id))
    n_id_atomic = int((~graph.atomic_ood).sum())
    return (both_id - n_test) / max(n_id_atomic, 1)


def split(graph: KnowledgeGraph, cfg: DataConfig, rng: np.random.Generator) -> Splits:
    """The papers' splits; raises ConfigError when phi asks for more compositions than the pool holds."""
    id_atomic = np.flatnonzero(~graph.atomic_ood)
    ood_atomic = np.flatnonzero(graph.atomic_ood)

    both_id = np.flatnonzero(~graph.hop1_ood & ~graph.hop2_ood)
    both_ood = np.flatnonzero(graph.hop1_ood & graph.hop2_ood)
    both_id = rng.permutation(both_id)
    n_test = int(round(cfg.test_id_fraction * len(both_id)))
    test_id, pool = np.sort(both_id[:n_test]), both_id[n_test:]

    n_train = int(round(cfg.phi * len(id_atomic)))
    if n_train > len(pool):
        allowed = len(pool) / max(len(id_atomic), 1)
        raise ConfigError(f"needs {n_train} training compositions but the pool holds {len(pool)} "
                          f"(max phi {allowed:.2f} for this graph)", key="data.phi", value=cfg.phi)
    train = np.sort(rng.permutation(pool)[:n_train])
    return Splits(id_atomic, ood_atomic, train, test_id, both_ood, len(pool))
