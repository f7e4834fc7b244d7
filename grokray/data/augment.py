"""He et al. (2026, appendix C) augmentation: inject one-OOD-hop compositions into training.

From the OOD test compositions collect the OOD hop-1 facts ``(h, r1, b)`` and the OOD
hop-2 facts ``(b, r2, t)`` that occur in them. Then

* hop-1 injection: for a ``ratio`` of the OOD hop-1 facts, add up to ``k`` queries
  ``(h, r1, r_x) -> t_x`` built from ID facts ``(b, r_x, t_x)``: the model sees the OOD
  fact used as a FIRST hop;
* hop-2 injection: for a ``ratio`` of the OOD hop-2 facts, add up to ``k`` queries
  ``(h_y, r_y, r2) -> t`` built from ID facts ``(h_y, r_y, b)``: the OOD fact as a SECOND hop.

An injected query always has exactly one OOD hop (the other is ID by construction), so
no both-OOD query, and in particular no test composition, is ever added; added queries
are deduplicated against the training compositions and each other.
"""
from __future__ import annotations

import numpy as np

from grokray.config import HopInjection
from grokray.data.graph import BRIDGE, H, R1, R2, KnowledgeGraph


def augment(graph: KnowledgeGraph, test_ood: np.ndarray, hop1: HopInjection, hop2: HopInjection,
            rng: np.random.Generator) -> np.ndarray:
    """Composition rows ``[n, 5]`` (h, r1, r2, bridge, t) to add to training, deduplicated and sorted.

    ``test_ood`` are row indices into ``graph.compositions`` (the both-OOD test set).
    """
    comps = graph.compositions
    tests = comps[test_ood]
    hop1_ood = comps[graph.hop1_ood & ~graph.hop2_ood]   # first hop OOD, second ID
    hop2_ood = comps[~graph.hop1_ood & graph.hop2_ood]   # first hop ID, second OOD
    added = []

    if hop1.ratio > 0 and hop1.k > 0 and len(tests):
        facts = np.unique(tests[:, [H, R1]], axis=0)               # OOD (h, r1) used as hop 1 in tests
        chosen = _choose(facts, hop1.ratio, rng)
        added.append(_take_per_group(hop1_ood, key_cols=[H, R1], groups=chosen, k=hop1.k, rng=rng))

    if hop2.ratio > 0 and hop2.k > 0 and len(tests):
        facts = np.unique(tests[:, [BRIDGE, R2]], axis=0)          # OOD (b, r2) used as hop 2 in tests
        chosen = _choose(facts, hop2.ratio, rng)
        added.append(_take_per_group(hop2_ood, key_cols=[BRIDGE, R2], groups=chosen, k=hop2.k, rng=rng))

    if not added:
        return np.zeros((0, 5), dtype=np.int64)
    # Deduplicate (np.unique also sorts, which keeps the output independent of injection order).
    return np.unique(np.concatenate(added), axis=0).astype(np.int64)


def _choose(facts: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    n = int(round(ratio * len(facts)))
    return facts[np.sort(rng.choice(len(facts), size=n, replace=False))] if n else facts[:0]


def _take_per_group(candidates: np.ndarray, key_cols: list[int], groups: np.ndarray, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """For each key in ``groups``, up to ``k`` random candidate rows whose ``key_cols`` equal it."""
    if not len(groups) or not len(candidates):
        return np.zeros((0, 5), dtype=np.int64)
    # Encode keys as single integers to match rows to groups with searchsorted.
    scale = int(max(candidates[:, key_cols].max(), groups.max())) + 1
    cand_key = candidates[:, key_cols[0]] * scale + candidates[:, key_cols[1]]
    group_key = groups[:, 0] * scale + groups[:, 1]
    keep = np.isin(cand_key, group_key)
    cand, cand_key = candidates[keep], cand_key[keep]
    # Random order within each group, then the first k of each group.
    order = np.lexsort((rng.random(len(cand)), cand_key))
    cand, cand_key = cand[order], cand_key[order]
    starts = np.r_[0, np.flatnonzero(np.diff(cand_key)) + 1]
    rank = np.arange(len(cand)) - np.repeat(starts, np.diff(np.r_[starts, len(cand)]))
    return cand[rank < k]
