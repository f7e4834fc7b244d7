"""The bridge-carry test: does a correct answer's own hop-1 state hold its bridge, in a form the second hop reads?

The interchange test (:mod:`grokray.circuits.interchange`) puts ANOTHER query's hop-1 state
into the clean run and asks whether the answer follows. That shows the second hop *reads* the
hop-1 state; it does not show that the clean answer was computed from a bridge. Measured on the
trained negative control (``data.memorize_ood_queries``: OOD test queries memorized whole, their
first hops, and optionally their second hops, never trained, so the model cannot know their
bridges): interchange 0.64-0.71, because a composing model's second hop follows any
recognizable bridge it is handed, whatever produced the clean answer (docs/calibration.md,
"The negative control").

This test goes the other way. Take the clean query ``(h, r1, r2) -> t`` with bridge ``b`` and
a *recipient* query ``(h', r1', r2')`` with another bridge ``b'`` and another second relation
``r2'`` such that ``(b, r2')`` is a trained fact. Patch the clean run's hop-1 state (the r1
position under causal attention; h and r1 without the mask) at one intermediate depth into
the recipient's run. If the clean state holds ``b``, the recipient now answers
``tail(b, r2')``: the bridge the clean answer went through is there, and it is ``b``. A model
that answered ``(h, r1, r2)`` from memory holds no usable ``b`` for it, and the recipient's
answer does not become ``tail(b, r2')`` (chance: one entity in ``|E|``).

* Recipients are never queries trained as a whole (a memorized recipient answers from memory);
  ``tail(b', r2') != tail(b, r2')`` so success cannot be the recipient's own answer.
* Reported per intermediate depth and as the best over depths: ``success`` over the correctly
  answered clean queries that have a recipient; fewer than ``min_queries`` is insufficient (None).
* A model with one block application has no intermediate state: None (never mediated).

Example:
    >>> # res = carry_test(model, dataset, "test_inferred_ood", n=200)
    >>> # res.best, res.best_depth, res.n_queries
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grokray.circuits.interchange import MIN_QUERIES, hop1_positions, patched_rate
from grokray.circuits.patching import select_queries
from grokray.data import Dataset
from grokray.data.graph import H, R1, R2, TAIL
from grokray.jsonsafe import nan_array, plain
from grokray.model import LoopedTransformer


@dataclass
class CarryResult:
    split: str
    depth_names: list[str]
    n_selected: int                    # correctly answered clean queries examined
    n_queries: int                     # ... that had a recipient
    success: np.ndarray = field(default_factory=lambda: np.zeros(0))   # [D_int] recipient answered tail(b, r2')
    min_queries: int = MIN_QUERIES

    @property
    def sufficient(self) -> bool:
        return len(self.depth_names) > 0 and self.n_queries >= self.min_queries

    @property
    def best(self) -> float | None:
        return float(np.max(self.success)) if self.sufficient else None

    @property
    def best_depth(self) -> str | None:
        return self.depth_names[int(np.argmax(self.success))] if self.sufficient else None

    def why_none(self) -> str:
        if not self.depth_names:
            return "no intermediate state (one block application): no hop-1 state can carry a bridge"
        if self.n_queries < self.min_queries:
            return f"insufficient: {self.n_queries} correctly answered {self.split} queries with a recipient"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return plain({"split": self.split, "depth_names": self.depth_names, "n_selected": self.n_selected,
                      "n_queries": self.n_queries, "success": self.success, "min_queries": self.min_queries,
                      "best": self.best, "best_depth": self.best_depth})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CarryResult":
        return cls(split=d["split"], depth_names=list(d["depth_names"]), n_selected=int(d["n_selected"]),
                   n_queries=int(d["n_queries"]), success=nan_array(d["success"]),
                   min_queries=int(d.get("min_queries", MIN_QUERIES)))


def choose_recipients(clean: np.ndarray, dataset: Dataset, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One recipient row ``(h', r1', r2', b', t')`` per clean row and whether it has one, with
    ``(b, r2')`` a trained fact, ``t' = tail(b', r2') != tail(b, r2')``, never a query trained whole.

    >>> from grokray.config import DataConfig
    >>> from grokray.data import build_dataset
    >>> ds = build_dataset(DataConfig(n_entities=40, n_relations=8, out_degree=6, phi=2.0))
    >>> clean = ds.rows["test_inferred_id"][:5]
    >>> rec, ok = choose_recipients(clean, ds)
    >>> bool(ok.any()), bool((rec[ok][:, 2] != clean[ok][:, 2]).all())
    (True, True)
    """
    clean = np.asarray(clean, dtype=np.int64).reshape(-1, 5)
    tail = dataset.tail
    trained_facts = np.zeros_like(tail, dtype=bool)
    rows = dataset.train_rows()
    atomic = rows[rows[:, R2] < 0]
    trained_facts[atomic[:, H], atomic[:, R1]] = True
    heads, rels = np.nonzero(trained_facts)
    bridges = tail[heads, rels]
    rng = np.random.default_rng([seed, 13])
    out = clean.copy()
    ok = np.zeros(len(clean), dtype=bool)
    for i, (h, r1, r2, b, t) in enumerate(clean.tolist()):
        u, v = rng.random(), rng.random()
        second = np.flatnonzero(trained_facts[b] & (np.arange(tail.shape[1]) != r2))   # r2' with (b, r2') trained
        if not len(second):
            continue
        r2b = int(second[int(u * len(second))])
        want = int(tail[b, r2b])
        t2 = np.where(bridges >= 0, tail[np.clip(bridges, 0, None), r2b], -1)
        cand = np.flatnonzero((bridges != b) & (t2 >= 0) & (t2 != want)
                              & ~dataset.is_trained(heads, rels, np.full(len(heads), r2b)))
        if not len(cand):
            continue
        j = cand[int(v * len(cand))]
        out[i] = (int(heads[j]), int(rels[j]), r2b, int(bridges[j]), want)   # TAIL holds the success answer
        ok[i] = True
    return out, ok


@torch.no_grad()
def carry_test(model: LoopedTransformer, dataset: Dataset, split: str = "test_inferred_ood", n: int = 200, *,
               seed: int = 0, precision: str = "fp32", device: torch.device | str | None = None,
               min_queries: int = MIN_QUERIES, rows: np.ndarray | None = None) -> CarryResult:
    """The bridge-carry test of ``model`` on up to ``n`` correctly answered queries of ``split``."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    clean, _, _ = select_queries(model, dataset, split, n, seed, True, rows, precision, device)
    depths = list(model.resid_names[1:-1])
    positions = hop1_positions(model)
    recipients, ok = choose_recipients(clean, dataset, seed)
    enc = lambda r: dataset.encode(r).tokens.to(device)  # noqa: E731
    if ok.any():
        # the clean run's hop-1 state is the source, the recipient is the run patched
        clean_t, recip_t = enc(clean[ok]), enc(recipients[ok])
        want = torch.from_numpy(recipients[ok][:, TAIL]).to(device)
        success = [patched_rate(model, recip_t, clean_t, want, depth, positions, precision, device) for depth in depths]
    else:
        success = [float("nan")] * len(depths)
    model.train(was_training)
    return CarryResult(split=split, depth_names=depths, n_selected=len(clean), n_queries=int(ok.sum()),
                       success=np.array(success, dtype=float), min_queries=min_queries)


__all__ = ["CarryResult", "carry_test", "choose_recipients"]
