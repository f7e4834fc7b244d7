"""Shortcut baselines: how much of a test split a rule that never composes already answers.

A two-hop test query ``(h, r1, r2) -> t`` was never trained, but the training compositions
can make its answer guessable without the bridge: if many training compositions ending in
``r2`` share one tail, "answer the most frequent tail for this r2" scores on the test set
too. He et al.'s augmentation presets copied at another phi do exactly that (k injected
compositions per OOD second hop, more than an ID fact gets), and so does a graph with many
relations per entity. Accuracy a shortcut explains is not evidence of a circuit, so every
dataset carries these numbers and the verdict compares a run's accuracy with them.

Rules (each predicts one answer per query from the TRAINING compositions only,
``train_inferred`` + ``train_augmented``; ties go to the smallest entity id):

=========  ==========================================================================
``r2``     the most frequent tail among training compositions with the query's ``r2``
``r1r2``   ... with the query's ``(r1, r2)``; falls back to ``r2`` where none has that pair
``prior``  the most frequent tail of all training compositions (one answer for every query)
``chance`` ``1 / n_entities``: a uniform guess (expected accuracy, not a rule's)
``best``   the highest of the above: the accuracy no run may claim as evidence of a circuit
=========  ==========================================================================

on every two-hop test split (short names as the lens: ``ood`` = ``test_inferred_ood``,
``id`` = ``test_inferred_id``). Logged on every run as ``shortcut/<rule>/<split>``
(:func:`grokray.tracking.shortcut_metrics`).

Example:
    >>> from grokray.config import DataConfig
    >>> from grokray.data import build_dataset
    >>> ds = build_dataset(DataConfig(n_entities=60, n_relations=10, out_degree=10, phi=3.0))
    >>> b = shortcut_baselines(ds.rows, ds.n_entities)
    >>> sorted(b["ood"]), b["ood"]["chance"] == 1 / 60
    (['best', 'chance', 'prior', 'r1r2', 'r2'], True)
    >>> b["ood"]["best"] == max(v for k, v in b["ood"].items() if k != "best")
    True
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from grokray.data.graph import R1, R2, TAIL

RULES = ("r2", "r1r2", "prior", "chance", "best")
#: Two-hop test splits the baselines are computed on: short name -> split.
TEST_SPLITS = {"ood": "test_inferred_ood", "id": "test_inferred_id"}
#: The training compositions the rules learn from.
TRAIN_COMPOSITIONS = ("train_inferred", "train_augmented")


def _most_frequent_tail(keys: np.ndarray, tails: np.ndarray, n_entities: int) -> dict[int, int]:
    """``{key: most frequent tail}`` (ties: smallest tail id) over rows with integer ``keys``."""
    if len(keys) == 0:
        return {}
    uniq, inverse = np.unique(keys, return_inverse=True)
    counts = np.zeros((len(uniq), n_entities), dtype=np.int64)         # [keys, E]
    np.add.at(counts, (inverse, tails), 1)
    return dict(zip(uniq.tolist(), counts.argmax(1).tolist()))         # argmax: first max = smallest id


def predict(rule: str, train: np.ndarray, queries: np.ndarray, n_entities: int, n_relations: int) -> np.ndarray:
    """Each query's answer under ``rule`` (``r2``, ``r1r2`` or ``prior``), learned from ``train`` rows."""
    train = np.asarray(train, dtype=np.int64).reshape(-1, 5)
    queries = np.asarray(queries, dtype=np.int64).reshape(-1, 5)
    tails = train[:, TAIL]
    prior = int(np.bincount(tails, minlength=n_entities).argmax()) if len(tails) else 0
    if rule == "prior":
        return np.full(len(queries), prior, dtype=np.int64)
    by_r2 = _most_frequent_tail(train[:, R2], tails, n_entities)
    pred = np.array([by_r2.get(r, prior) for r in queries[:, R2].tolist()], dtype=np.int64)
    if rule == "r2":
        return pred
    if rule == "r1r2":
        pair = lambda rows: rows[:, R1] * n_relations + rows[:, R2]  # noqa: E731
        by_pair = _most_frequent_tail(pair(train), tails, n_entities)
        return np.array([by_pair.get(k, p) for k, p in zip(pair(queries).tolist(), pred.tolist())], dtype=np.int64)
    raise ValueError(f"unknown shortcut rule {rule!r}; rules: r2, r1r2, prior")


def shortcut_baselines(rows: Mapping[str, np.ndarray], n_entities: int,
                       n_relations: int | None = None) -> dict[str, dict[str, float]]:
    """``{split: {rule: accuracy}}`` for every non-empty two-hop test split (see the module docstring)."""
    n_relations = n_relations if n_relations is not None else int(
        max((r[:, [R1, R2]].max() for r in rows.values() if len(r)), default=0)) + 1
    train = np.concatenate([np.asarray(rows[k], dtype=np.int64).reshape(-1, 5) for k in TRAIN_COMPOSITIONS
                            if k in rows])
    out: dict[str, dict[str, float]] = {}
    for short, split in TEST_SPLITS.items():
        queries = np.asarray(rows.get(split, np.zeros((0, 5))), dtype=np.int64).reshape(-1, 5)
        if not len(queries):
            continue
        acc = {rule: float((predict(rule, train, queries, n_entities, n_relations) == queries[:, TAIL]).mean())
               for rule in ("r2", "r1r2", "prior")}
        acc["chance"] = 1.0 / n_entities
        acc["best"] = max(acc.values())
        out[short] = acc
    return out
