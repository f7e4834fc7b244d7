"""The bridge interchange test: does a correct answer follow the bridge the model computed?

For a correctly answered two-hop query ``(h, r1, r2) -> t`` with bridge ``b``, take a
*source* query ``(h', r1', r2)`` whose first hop gives another bridge ``b'`` (with
``t' = tail(b', r2) != t``), run it, and patch its residual state into the clean run
where hop 1 lives, at one intermediate depth at a time. If the clean run now answers
``t'``, its answer was computed from the bridge representation it held there: change the
bridge, and the answer follows. This is the interchange intervention of causal
abstraction (Geiger et al.), the cross-query patching Ye et al. (2025) use on this task,
and basis-free: it needs no decoding of ``b`` (the logit lens reads only the
unembedding's basis; a non-shared stack may hold ``b`` in another one).

* **Where hop 1 lives.** With causal attention the r1 position sees ``(h, r1)`` and not ``r2``:
  it is patched first. The answer position r2 also sees ``(h, r1)`` and may hold the bridge
  too (measured: a looped model trained with both hops augmented at phi 18 keeps the bridge in
  the r1 AND r2 states after its first loop; swapping r1 alone moves 0.32 of its answers,
  swapping both 0.92), so r1 and r2 are also patched together, but only at depths where the
  r2 state does not already hold the answer: patched alone there, it must not carry the
  source's answer over (``answer_leak`` <= :data:`LEAK_MAX`), else the depth is past hop 2 and
  only r1 counts. The source shares ``r2``, so a rule that reads r2 gains nothing from the swap.
  Without the causal mask (``model.causal: false``) every position sees the whole query; the
  h and r1 positions are patched together and r2, which reads the answer, never is.
* **Which depths.** The intermediate states: after a block application that is not the
  last (``model.resid_names[1:-1]``). A model with one block application has none, so it
  cannot pass: one block cannot route an answer through an intermediate bridge state.
* **Sources.** Another query of the same split that the model answers correctly, with the
  same ``r2`` and another bridge (so ``(b', r2)`` is the same kind of fact as ``(b, r2)``, both
  OOD on the OOD split, and one the model can compose: success then measures mediation, not
  the model's accuracy); if the split has none, any atomic fact ``(h', r1') -> b'`` of the graph
  with ``(b', r2)`` a fact (so a model that answers no such query, like a rule reading r2, is
  still tested, and fails). **Never a query trained as a whole** (``Dataset.trained_queries``):
  patching in the hop-1 state of a query the model has memorized carries that query's identity,
  and a memorizing model then answers the source's memorized answer, ``t'``, without any bridge.
  Measured: the trained negative control (``data.memorize_ood_queries``: OOD test queries
  memorized, their first hops never trained, so no bridge exists) scored interchange 1.00 with
  same-split sources before this rule (docs/calibration.md, "The negative control").
* **Control.** A source with the SAME bridge (another ``(h'', r1'')`` with
  ``tail(h'', r1'') = b``, the same ``r2``) must leave the answer at ``t``: the patch itself does
  not break the run. Sources and controls count only where the model answers them correctly.

Reported per depth and as the maximum over depths: ``success`` (answer becomes ``t'``) and
``control`` (answer stays ``t``), over the correctly answered queries that have a source.
Fewer than ``min_queries`` such queries is reported as insufficient (``None``), not as a rate.

Example:
    >>> # res = interchange_test(model, dataset, split="test_inferred_ood", n=200)
    >>> # res.best, res.best_depth, res.control_best, res.n_queries
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from grokray.circuits.patching import ANSWER_POS, predict_answers, select_queries
from grokray.data import Dataset
from grokray.data.graph import BRIDGE, H, R1, R2, TAIL
from grokray.device import autocast
from grokray.jsonsafe import nan_array, plain
from grokray.model import LoopedTransformer

#: Fewer correctly answered queries with a source than this: the rate is reported as insufficient.
MIN_QUERIES = 20
#: The r2 state alone may carry at most this share of the source's answers for r1 + r2 to be
#: patched together at a depth (above it, the r2 state already holds the answer).
LEAK_MAX = 0.2


@dataclass
class InterchangeResult:
    split: str
    depth_names: list[str]            # the intermediate depths patched
    positions: list[list[int]]        # the positions whose swap is reported, per depth
    n_selected: int                   # correctly answered queries examined
    n_queries: int                    # ... that had a source with another bridge
    n_control: int                    # ... that had a same-bridge source
    success: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [D_int] answer became tail(b', r2)
    control: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [D_int] answer stayed t (same bridge)
    hop1_only: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [D_int] success with hop 1's positions alone
    answer_leak: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [D_int] r2 alone carries t' (causal)
    clean_acc: float = float("nan")   # accuracy of the model on the examined queries
    min_queries: int = MIN_QUERIES

    @property
    def sufficient(self) -> bool:
        return len(self.depth_names) > 0 and self.n_queries >= self.min_queries

    @property
    def best(self) -> float | None:
        """The highest success rate over depths; None without an intermediate depth or enough queries."""
        return float(np.max(self.success)) if self.sufficient else None

    @property
    def best_depth(self) -> str | None:
        return self.depth_names[int(np.argmax(self.success))] if self.sufficient else None

    @property
    def control_best(self) -> float | None:
        """The control keep-rate at the depth of the best success (None if not measurable)."""
        if not self.sufficient or self.n_control < self.min_queries:
            return None
        return float(self.control[int(np.argmax(self.success))])

    def why_none(self) -> str:
        """Why :attr:`best` is None (empty when it is not)."""
        if not self.depth_names:
            return "no intermediate state (one block application): the answer cannot route through a bridge state"
        if self.n_queries < self.min_queries:
            return (f"insufficient: {self.n_queries} correctly answered {self.split} queries with a source "
                    f"(< {self.min_queries})")
        return ""

    def to_dict(self) -> dict[str, Any]:
        return plain({"split": self.split, "depth_names": self.depth_names, "positions": self.positions,
                      "n_selected": self.n_selected, "n_queries": self.n_queries, "n_control": self.n_control,
                      "success": self.success, "control": self.control, "hop1_only": self.hop1_only,
                      "answer_leak": self.answer_leak, "clean_acc": self.clean_acc,
                      "min_queries": self.min_queries, "best": self.best, "best_depth": self.best_depth,
                      "control_best": self.control_best})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InterchangeResult":
        return cls(split=d["split"], depth_names=list(d["depth_names"]), positions=[list(p) for p in d["positions"]],
                   n_selected=int(d["n_selected"]), n_queries=int(d["n_queries"]), n_control=int(d["n_control"]),
                   success=nan_array(d["success"]), control=nan_array(d["control"]),
                   hop1_only=nan_array(d.get("hop1_only", [])), answer_leak=nan_array(d.get("answer_leak", [])),
                   clean_acc=float("nan") if d.get("clean_acc") is None else float(d["clean_acc"]),
                   min_queries=int(d.get("min_queries", MIN_QUERIES)))


def hop1_positions(model: LoopedTransformer) -> list[int]:
    """Where hop 1 lives for sure: the r1 position under causal attention, h and r1 without the mask."""
    return [R1] if model.cfg.causal else [H, R1]


def choose_sources(clean: np.ndarray, pool: np.ndarray, tail: np.ndarray, seed: int = 0,
                   same_bridge: bool = False, trained=None) -> tuple[np.ndarray, np.ndarray]:
    """One source row ``(h', r1', r2, b', t')`` per clean row, and whether it has one.

    ``same_bridge=False``: ``b' != b`` and ``t' = tail(b', r2) != t``, from ``pool`` rows with the
    same ``r2`` first, else from the whole graph (any fact ``(h', r1') -> b'``).
    ``same_bridge=True`` (the control): ``b' = b`` from another ``(h', r1')``, so ``t' = t``.
    ``trained(h, r1, r2) -> bool array``: queries trained as a whole, never taken as a source.
    The pick for a row depends only on ``seed``, its index and the row.

    >>> tail = np.array([[1, 2], [2, 0], [0, 1]])         # 3 entities, 2 relations
    >>> clean = np.array([[0, 0, 1, 1, 0]])               # 0 -r0-> 1 -r1-> 0
    >>> src, ok = choose_sources(clean, clean[:0], tail)
    >>> ok.tolist(), int(src[0, 3]) != 1, int(src[0, 4]) == int(tail[src[0, 3], 1])
    ([True], True, True)
    """
    clean = np.asarray(clean, dtype=np.int64).reshape(-1, 5)
    pool = np.asarray(pool, dtype=np.int64).reshape(-1, 5)
    n_ent, n_rel = tail.shape
    heads, rels = np.nonzero(tail >= 0)                          # every atomic fact (h', r1')
    bridges = tail[heads, rels]
    rng = np.random.default_rng([seed, 11, int(same_bridge)])
    out = clean.copy()
    ok = np.zeros(len(clean), dtype=bool)
    if trained is not None and len(pool):
        pool = pool[~trained(pool[:, H], pool[:, R1], pool[:, R2])]
    for i, (h, r1, r2, b, t) in enumerate(clean.tolist()):
        u = rng.random()                                         # one draw per row, used or not
        fresh = ~trained(heads, rels, np.full(len(heads), r2)) if trained is not None else True
        if same_bridge:
            cand = np.flatnonzero((bridges == b) & ~((heads == h) & (rels == r1)) & fresh)
            src_h, src_r, src_b = heads, rels, bridges
        else:
            in_pool = pool[(pool[:, R2] == r2) & (pool[:, BRIDGE] != b) & (pool[:, TAIL] != t)]
            if len(in_pool):
                j = int(u * len(in_pool))
                out[i] = in_pool[j]
                ok[i] = True
                continue
            t2 = np.where(bridges >= 0, tail[np.clip(bridges, 0, None), r2], -1)
            cand = np.flatnonzero((bridges != b) & (t2 >= 0) & (t2 != t) & fresh)
            src_h, src_r, src_b = heads, rels, bridges
        if len(cand):
            j = cand[int(u * len(cand))]
            b2 = int(src_b[j])
            out[i] = (int(src_h[j]), int(src_r[j]), r2, b2, int(tail[b2, r2]))
            ok[i] = tail[b2, r2] >= 0
    return out, ok


@torch.no_grad()
def _patched_predictions(model: LoopedTransformer, clean_tokens: torch.Tensor, source_tokens: torch.Tensor,
                         depth: str, positions: list[int], precision: str, device: torch.device) -> torch.Tensor:
    """The clean run's answer with the source's states at ``positions`` patched in at ``depth``."""
    with autocast(precision, device):
        _, cache = model.run_with_cache(source_tokens, [depth])
        source = cache[depth]                                              # [N, T, d]

        def patch(x: torch.Tensor, _name: str) -> torch.Tensor:
            x = x.clone()
            x[:, positions] = source[:, positions].to(x.dtype)
            return x

        logits = model.run_with_hooks(clean_tokens, [(depth, patch)])      # [N, T, V]
    return logits[:, ANSWER_POS].float().argmax(-1)


def patched_rate(model: LoopedTransformer, clean: torch.Tensor, source: torch.Tensor, want: torch.Tensor, depth: str,
                 positions: list[int], precision: str, device: torch.device) -> float:
    """Share of the ``clean`` runs answering ``want`` with ``source``'s states at ``positions`` patched in
    at ``depth`` (NaN for no query). The interchange test and the bridge-carry test both read this."""
    if len(clean) == 0:
        return float("nan")
    pred = _patched_predictions(model, clean, source, depth, positions, precision, device)
    return float((pred == want).float().mean())


@torch.no_grad()
def interchange_test(model: LoopedTransformer, dataset: Dataset, split: str = "test_inferred_ood", n: int = 200,
                     *, seed: int = 0, precision: str = "fp32", device: torch.device | str | None = None,
                     min_queries: int = MIN_QUERIES, rows: np.ndarray | None = None) -> InterchangeResult:
    """The interchange test of ``model`` on up to ``n`` correctly answered queries of ``split``.

    ``rows``: a fixed query set (``[N, 5]`` rows of ``split``) to draw both the clean queries and
    the sources from, instead of the whole split: the same queries at every step of a run
    (:mod:`grokray.circuits.formation`)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    clean, _, clean_acc = select_queries(model, dataset, split, n, seed, True, rows, precision, device)
    depths = list(model.resid_names[1:-1])
    hop1 = hop1_positions(model)
    tail = dataset.tail
    rows = dataset.rows[split] if rows is None else np.asarray(rows, np.int64).reshape(-1, 5)
    answered = rows[predict_answers(model, dataset.encode(rows).tokens, precision, device).cpu().numpy()
                    == rows[:, TAIL]] if len(rows) else rows
    source, ok = choose_sources(clean, answered, tail, seed, trained=dataset.is_trained)
    control, ok_c = choose_sources(clean, answered, tail, seed, same_bridge=True, trained=dataset.is_trained)
    enc = lambda r: dataset.encode(r).tokens.to(device)  # noqa: E731
    # A same-bridge control shows the patch is harmless only where the model answers the control
    # query itself. (Sources are taken among the queries it answers where the split has one: see
    # choose_sources; a model that answers none, e.g. an r2 rule, still gets a source to fail on.)
    if ok_c.any():
        right = predict_answers(model, enc(control[ok_c]), precision, device).cpu().numpy() == control[ok_c][:, TAIL]
        ok_c[np.flatnonzero(ok_c)[~right]] = False
    clean_s, src, want_s = enc(clean[ok]), enc(source[ok]), torch.from_numpy(source[ok][:, TAIL]).to(device)
    clean_c, ctl, want_c = enc(clean[ok_c]), enc(control[ok_c]), torch.from_numpy(clean[ok_c][:, TAIL]).to(device)
    success, keep, alone, leak, used = [], [], [], [], []
    for depth in depths:
        def rate(positions: list[int], c: bool = False) -> float:
            args = (clean_c, ctl, want_c) if c else (clean_s, src, want_s)
            return patched_rate(model, *args, depth, positions, precision, device)

        s_hop1 = rate(hop1)
        positions, s = hop1, s_hop1
        lk = float("nan")
        if model.cfg.causal:
            lk = rate([R2])
            both = [*hop1, R2]
            if lk <= LEAK_MAX:
                s_both = rate(both)
                if s_both > s_hop1:
                    positions, s = both, s_both
        success.append(s)
        alone.append(s_hop1)
        leak.append(lk)
        keep.append(rate(positions, c=True))
        used.append(positions)
    model.train(was_training)
    return InterchangeResult(split=split, depth_names=depths, positions=used, n_selected=len(clean),
                             n_queries=int(ok.sum()), n_control=int(ok_c.sum()), success=np.array(success),
                             control=np.array(keep), hop1_only=np.array(alone), answer_leak=np.array(leak),
                             clean_acc=float(clean_acc), min_queries=min_queries)
