"""Causal patching (Wang et al. 2024's causal tracing) on two-hop queries ``h r1 r2 -> t``.

For each input token type (``h``, ``r1``, ``r2``) every clean query gets a *perturbed*
twin that differs in that one token, is itself a valid composition of the atomic
graph, and has a different answer:

* ``h``:  ``h'`` with ``tail[h', r1] = b'`` and ``tail[b', r2] = t' != t``;
* ``r1``: ``r1'`` with ``tail[h, r1'] = b'`` and ``tail[b', r2] = t' != t``;
* ``r2``: ``r2'`` with ``tail[b, r2'] = t' != t`` (the bridge is unchanged).

The perturbed queries are run with a cache. Then, for every residual site
``(depth d, position p)`` (``model.resid_names``, depth 0 = ``embed``; positions
``h, r1, r2``), the CLEAN query is re-run with the state at ``(d, p)`` overwritten by
the perturbed run's state there, and we record whether the top-1 prediction at the
answer position (position 2) differs from the clean top-1. The flip rate over queries
is one cell of a ``[D, 3]`` matrix per perturbed token.

Reading a matrix (causal attention, no input re-injection):

* cells left of the perturbed position are exactly 0: those states are identical in
  the clean and the perturbed run;
* at depth 0 only the perturbed position can flip, and its rate is the rate at which
  the whole perturbed query changes the answer (the rest of the input is identical);
* at the last depth only position 2 can flip (nothing reads the last state of
  positions 0 and 1); there the rate is "the perturbed prediction differs from the
  clean one", ~1 for a model that answers both queries correctly;
* the interesting cells are the intermediate depths: where the information the answer
  needs from the perturbed token lives at that point of the computation.

:func:`r1_dependence` condenses the matrices into the number a classifier asks for:
does the (correct) answer go through the state at the r1 position mid-computation?

Cost: per perturbed token, one cached forward plus ``D x 3`` forwards over at most
``n`` queries (300 by default, as in Wang et al.): well under a second for the small
CPU models.

Example:
    >>> # model, dataset from a Trainer (trainer.model, trainer.dataset)
    >>> # result = causal_patching(model, dataset, split="train_inferred", n=300)
    >>> # result.matrices["h"].shape == (model.n_depths, 3); r1_dependence(result) -> float in [0, 1]
    >>> # result.plot("patching.png"); PatchingResult.from_json(result.to_json()) == result
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from grokray.data import Dataset
from grokray.data.graph import BRIDGE, H, R1, R2, TAIL
from grokray.device import autocast
from grokray.jsonsafe import nan_array, nan_float, plain
from grokray.model import LoopedTransformer
from grokray.plots import plot_heatmaps

#: Perturbed token types, in input-position order (the token's position is its index).
TOKENS = ("h", "r1", "r2")
POSITIONS = list(TOKENS)
ANSWER_POS = 2
#: Splits of two-hop queries patching can be run on.
QUERY_SPLITS = ("train_inferred", "test_inferred_id", "test_inferred_ood", "train_augmented")


# --------------------------------------------------------------------------- result

@dataclass
class PatchingResult:
    """Flip-rate matrices of one model on one set of queries.

    ``matrices[token][d, p]``: fraction of the queries whose top-1 answer changes when
    the clean state at ``(depth_names[d], positions[p])`` is replaced by the state of
    the query with ``token`` perturbed. NaN when no query had a valid perturbation.
    """
    depth_names: list[str]
    positions: list[str]
    matrices: dict[str, np.ndarray]          # token -> [D, 3] flip rate
    n_queries: dict[str, int]                # token -> queries with a valid perturbation (the rate's denominator)
    split: str | None = None
    step: int | None = None
    seed: int = 0
    only_correct: bool = True
    n_selected: int = 0                      # clean queries kept (before dropping those without a perturbation)
    n_examined: int = 0                      # queries looked at to find them
    clean_acc: float = float("nan")          # accuracy on the examined queries
    perturbed_acc: dict[str, float] = field(default_factory=dict)  # token -> model answers t' on the twin
    precision: str = "fp32"

    @property
    def n_depths(self) -> int:
        return len(self.depth_names)

    def summary(self) -> dict[str, float]:
        """Scalars for a metrics log: ``r1_dependence``, per-token query counts."""
        out = {"r1_dependence": r1_dependence(self), "clean_acc": self.clean_acc,
               "n_selected": float(self.n_selected)}
        out.update({f"n_queries/{k}": float(v) for k, v in self.n_queries.items()})
        return out

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; non-finite numbers become ``None``."""
        return {"depth_names": list(self.depth_names), "positions": list(self.positions),
                "matrices": {k: plain(v) for k, v in self.matrices.items()},
                "n_queries": {k: int(v) for k, v in self.n_queries.items()},
                "split": self.split, "step": self.step, "seed": self.seed, "only_correct": self.only_correct,
                "n_selected": self.n_selected, "n_examined": self.n_examined,
                "clean_acc": plain(self.clean_acc),
                "perturbed_acc": {k: plain(v) for k, v in self.perturbed_acc.items()},
                "precision": self.precision}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatchingResult":
        return cls(depth_names=list(d["depth_names"]), positions=list(d["positions"]),
                   matrices={k: nan_array(v) for k, v in d["matrices"].items()},
                   n_queries={k: int(v) for k, v in d["n_queries"].items()},
                   split=d.get("split"), step=d.get("step"), seed=int(d.get("seed", 0)),
                   only_correct=bool(d.get("only_correct", True)), n_selected=int(d.get("n_selected", 0)),
                   n_examined=int(d.get("n_examined", 0)), clean_acc=nan_float(d.get("clean_acc")),
                   perturbed_acc={k: nan_float(v) for k, v in d.get("perturbed_acc", {}).items()},
                   precision=d.get("precision", "fp32"))

    def to_json(self) -> str:
        """Strict JSON text (no NaN literals): ``PatchingResult.from_json(r.to_json()) == r``."""
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "PatchingResult":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatchingResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    # ------------------------------------------------------------ plot
    def panels(self) -> dict[str, np.ndarray]:
        """``{panel title: matrix}``, one panel per perturbed token."""
        return {f"{self.split}: perturb {k} (n={self.n_queries.get(k, 0)})": m for k, m in self.matrices.items()}

    def title(self) -> str:
        where = f"{self.split}" + (f" @{self.step}" if self.step is not None else "")
        return (f"top-1 flip rate, {where}, {'correct only' if self.only_correct else 'all queries'}, "
                f"r1 dependence {r1_dependence(self):.2f}")

    def plot(self, path: str, title: str | None = None) -> str:
        """PNG heatmap: one panel per perturbed token, rows = depths (hook names), columns = positions."""
        return plot_patching([self], path, title if title is not None else self.title())


def plot_patching(results: Sequence[PatchingResult], path: str, title: str = "") -> str:
    """Several patching results in one PNG, one row of panels each (e.g. train_inferred and the target split)."""
    panels = {name: m for r in results for name, m in r.panels().items()}
    return plot_heatmaps(panels, path, row_labels=[short_depth_name(n) for n in results[0].depth_names],
                         col_labels=results[0].positions, title=title, ncols=max(len(r.matrices) for r in results))


def short_depth_name(name: str) -> str:
    """A hook name without its ``.resid_post`` suffix (the names the README documents).

    >>> short_depth_name("loop.1.layer.0.resid_post"), short_depth_name("embed")
    ('loop.1.layer.0', 'embed')
    """
    return name.removesuffix(".resid_post")


def r1_dependence(result: PatchingResult, token: str = "h") -> float:
    """Does the answer go through the r1-position state mid-computation?

    The flip rate for the ``h`` perturbation at position ``r1``, maximised over the
    intermediate depths ``1 .. D-2`` (after a block application that is not the last).

    Why this cell: with causal attention, perturbing ``h`` leaves the r1 *token*
    unchanged, so the r1 state at depth 0 is identical in both runs (rate 0). A flip at
    (depth d, r1) therefore means information about ``h`` (in a two-hop circuit: the
    bridge ``h --r1--> b``) has been written to the r1 position by depth ``d`` and later
    blocks read it from there to produce the answer. A model that instead answers from
    ``h`` directly at r2 (memorised lookup ``(h, r1, r2) -> t`` or a shortcut) does not
    care what sits at r1 and scores ~0. The last depth is excluded because nothing
    reads the final state of position r1 (the answer is at r2, which never looks back
    after the last block): it is always exactly 0, and the lens reading there is just
    the atomic query ``(h, r1) -> b`` (cpu-probes.md, "Logit lens lessons").

    With only correctly answered queries (``only_correct=True``, the default of
    :func:`causal_patching`) this reads "among correctly answered queries, the fraction
    whose answer depends on the r1 state at the most important intermediate depth".
    NaN when the model has no intermediate depth (``n_layers * n_loops == 1``) or no
    query had a valid perturbation.

    >>> r = PatchingResult(["embed", "l0", "l1"], POSITIONS,
    ...                    {"h": np.array([[0.9, 0, 0], [0.2, 0.7, 0.4], [0, 0, 1.0]])}, {"h": 10})
    >>> r1_dependence(r)
    0.7
    """
    mat = result.matrices.get(token)
    if mat is None or result.n_queries.get(token, 0) == 0 or mat.shape[0] < 3:
        return float("nan")
    return float(np.max(mat[1:-1, POSITIONS.index("r1")]))


# --------------------------------------------------------------------------- queries

def patch_queries(dataset: Dataset, split: str = "train_inferred", n: int | None = 300, seed: int = 0) -> np.ndarray:
    """Up to ``n`` rows ``(h, r1, r2, bridge, t)`` of a two-hop split, in a seeded random order.

    ``n=None`` returns the whole split, shuffled. The order is a pure function of
    ``(dataset, split, seed)``, and the first ``n`` rows for a larger ``n`` extend those
    for a smaller one.

    >>> from grokray.data import build_dataset
    >>> from grokray.config import DataConfig
    >>> ds = build_dataset(DataConfig(n_entities=30, n_relations=6, out_degree=4, phi=2.0))
    >>> patch_queries(ds, "train_inferred", n=5).shape
    (5, 5)
    """
    if split not in dataset.rows:
        raise ValueError(f"unknown split {split!r}; two-hop splits: {', '.join(QUERY_SPLITS)}")
    rows = dataset.rows[split]
    if len(rows) and (rows[:, R2] < 0).any():
        raise ValueError(f"split {split!r} holds atomic facts; patching needs two-hop queries")
    order = np.random.default_rng([seed, 7]).permutation(len(rows))
    if n is not None:
        order = order[:n]
    return rows[order]


def perturb_queries(rows: np.ndarray, token: str, tail: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Replace ``token`` of every two-hop row with a same-type token giving a valid composition with another answer.

    ``rows [N, 5]`` are ``(h, r1, r2, bridge, t)``; ``tail [E, R]`` is the atomic graph
    (``Dataset.tail``, -1 where no fact). Among the valid replacements one is picked
    uniformly with ``np.random.default_rng([seed, token index])``; the pick for row ``i``
    depends only on the seed, ``i`` and the row itself.

    Returns ``(perturbed [N, 5], ok [N] bool)``; rows with ``ok == False`` have no valid
    replacement and their perturbed row is meaningless.

    >>> tail = np.array([[1, 2], [2, 0], [0, 1]])     # 3 entities, 2 relations, complete graph
    >>> rows = np.array([[0, 0, 1, 1, 0]])             # 0 -r0-> 1 -r1-> 0
    >>> perturb_queries(rows, "r2", tail)             # r2' = r0: 1 -r0-> 2
    (array([[0, 0, 0, 1, 2]]), array([ True]))
    """
    if token not in TOKENS:
        raise ValueError(f"token must be one of {TOKENS}, got {token!r}")
    rows = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
    n_entities, n_relations = tail.shape
    h, r1, r2, b, t = (rows[:, c] for c in (H, R1, R2, BRIDGE, TAIL))
    if token == "h":                                     # candidates h' over entities
        cand_bridge = tail[:, r1].T                      # [N, E] b' = tail[h', r1]
        cand_tail = _follow(tail, cand_bridge, r2[:, None])
        own = h
    elif token == "r1":                                  # candidates r1' over relations
        cand_bridge = tail[h]                            # [N, R] b' = tail[h, r1']
        cand_tail = _follow(tail, cand_bridge, r2[:, None])
        own = r1
    else:                                                # candidates r2' over relations
        cand_bridge = np.broadcast_to(b[:, None], (len(rows), n_relations))
        cand_tail = tail[b]                              # [N, R] t' = tail[b, r2']
        own = r2
    n_cand = cand_tail.shape[1]
    valid = (cand_bridge >= 0) & (cand_tail >= 0) & (cand_tail != t[:, None]) \
        & (np.arange(n_cand)[None, :] != own[:, None])   # [N, C]
    n_valid = valid.sum(1)                               # [N]
    rng = np.random.default_rng([seed, TOKENS.index(token)])
    u = rng.random(len(rows))                            # one draw per row, used or not
    k = np.minimum((u * n_valid).astype(np.int64), np.maximum(n_valid - 1, 0))  # which valid candidate
    choice = np.argmax(np.cumsum(valid, 1) > k[:, None], axis=1)                # [N] candidate index
    ok = n_valid > 0
    out = rows.copy()
    col = {"h": H, "r1": R1, "r2": R2}[token]
    idx = np.arange(len(rows))
    out[:, col] = choice
    out[:, BRIDGE] = cand_bridge[idx, choice]
    out[:, TAIL] = cand_tail[idx, choice]
    return out, ok


def _follow(tail: np.ndarray, bridge: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """``tail[bridge, rel]`` with -1 wherever ``bridge`` is -1."""
    return np.where(bridge >= 0, tail[np.clip(bridge, 0, None), rel], -1)


@torch.no_grad()
def predict_answers(model: LoopedTransformer, tokens: torch.Tensor, precision: str, device: torch.device,
                 chunk: int = 4096) -> torch.Tensor:
    """Top-1 prediction at the answer position of two-hop ``tokens [N, 3]`` -> ``[N]`` (chunked)."""
    out = []
    for i in range(0, len(tokens), chunk):
        with autocast(precision, device):
            logits = model(tokens[i:i + chunk].to(device))                 # [n, 3, V]
        out.append(logits[:, ANSWER_POS].float().argmax(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=device)


def select_queries(models: LoopedTransformer | Sequence[LoopedTransformer], dataset: Dataset,
                   split: str = "train_inferred", n: int = 300, seed: int = 0, only_correct: bool = True,
                   rows: np.ndarray | None = None, precision: str = "fp32",
                   device: torch.device | str | None = None, chunk: int = 4096) -> tuple[np.ndarray, int, float]:
    """The queries to patch: up to ``n`` rows, optionally only those every model answers correctly.

    Walks the seeded order of :func:`patch_queries` (or the given ``rows``) in chunks
    and stops once ``n`` queries are kept, so a large split is never evaluated whole.

    Returns ``(rows [<=n, 5], n_examined, accuracy of the first model on the examined rows)``.
    """
    models = [models] if isinstance(models, LoopedTransformer) else list(models)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    pool = patch_queries(dataset, split, None, seed) if rows is None else np.asarray(rows, np.int64).reshape(-1, 5)
    if not only_correct:
        kept = pool[:n]
        acc = float("nan")
        if len(kept):
            dev = _device(models[0], device)
            pred = predict_answers(models[0].eval(), dataset.encode(kept).tokens, precision, dev).cpu().numpy()
            acc = float((pred == kept[:, TAIL]).mean())
        return kept, len(kept), acc
    kept_parts, n_kept, n_examined, n_right_first = [], 0, 0, 0
    step = max(chunk, 2 * n)
    for start in range(0, len(pool), step):
        part = pool[start:start + step]
        tokens = dataset.encode(part).tokens
        ok = np.ones(len(part), dtype=bool)
        for i, model in enumerate(models):
            dev = _device(model, device)
            right = predict_answers(model.eval(), tokens, precision, dev).cpu().numpy() == part[:, TAIL]
            if i == 0:
                first_right = right
            ok &= right
        # Count examined rows only up to the n-th kept one, so the accuracy is not biased by the chunking.
        need = n - n_kept
        cut = len(part) if ok.sum() < need else int(np.nonzero(np.cumsum(ok) == need)[0][0]) + 1
        kept_parts.append(part[:cut][ok[:cut]])
        n_kept += int(ok[:cut].sum())
        n_examined += cut
        n_right_first += int(first_right[:cut].sum())
        if n_kept >= n:
            break
    kept = np.concatenate(kept_parts) if kept_parts else pool[:0]
    acc = n_right_first / n_examined if n_examined else float("nan")
    return kept, n_examined, acc


def _device(model: LoopedTransformer, device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else next(model.parameters()).device


# --------------------------------------------------------------------------- patching

@torch.no_grad()
def flip_matrix(model: LoopedTransformer, clean_tokens: torch.Tensor, source_tokens: torch.Tensor,
                precision: str = "fp32", device: torch.device | str | None = None) -> np.ndarray:
    """Per-query flips ``[D, 3, N]`` (bool) from patching ``source`` states into the ``clean`` run.

    ``clean_tokens`` and ``source_tokens`` are ``[N, 3]``. Cell ``[d, p, i]`` is True when
    query ``i``'s top-1 prediction at position 2 differs from its clean top-1 after the
    residual state at ``(model.resid_names[d], p)`` is replaced by the source run's state
    there. One forward per ``(d, p)`` site, batched over queries. ``source == clean``
    gives all False.
    """
    device = _device(model, device)
    was_training = model.training
    model.eval()
    clean_tokens, source_tokens = clean_tokens.to(device), source_tokens.to(device)
    n_depths, n_pos = model.n_depths, clean_tokens.shape[1]
    flips = np.zeros((n_depths, n_pos, len(clean_tokens)), dtype=bool)
    if len(clean_tokens):
        with autocast(precision, device):
            clean_logits = model(clean_tokens)                             # [N, T, V]
            _, source_cache = model.run_with_cache(source_tokens)          # name -> [N, T, d]
        clean_pred = clean_logits[:, ANSWER_POS].float().argmax(-1)        # [N]
        for d, name in enumerate(model.resid_names):
            source_state = source_cache[name]                              # [N, T, d]
            for p in range(n_pos):
                def patch(x: torch.Tensor, _name: str, p: int = p, src: torch.Tensor = source_state) -> torch.Tensor:
                    x = x.clone()
                    x[:, p] = src[:, p].to(x.dtype)
                    return x
                with autocast(precision, device):
                    logits = model.run_with_hooks(clean_tokens, [(name, patch)])   # [N, T, V]
                pred = logits[:, ANSWER_POS].float().argmax(-1)
                flips[d, p] = (pred != clean_pred).cpu().numpy()
    model.train(was_training)
    return flips


@torch.no_grad()
def causal_patching(model: LoopedTransformer, dataset: Dataset, split: str = "train_inferred", n: int = 300,
                    *, seed: int = 0, only_correct: bool = True, rows: np.ndarray | None = None,
                    tokens: Sequence[str] = TOKENS, precision: str = "fp32",
                    device: torch.device | str | None = None, step: int | None = None) -> PatchingResult:
    """Wang et al.'s causal tracing: flip-rate matrices ``[D, 3]`` per perturbed token.

    Queries: up to ``n`` rows of ``split`` in the seeded order of :func:`patch_queries`
    (or of ``rows`` if given), restricted to those the model answers correctly when
    ``only_correct`` (Wang et al. analyse 300 training-inferred queries). Each token in
    ``tokens`` is perturbed with :func:`perturb_queries`; queries without a valid
    perturbation are dropped for that token (``result.n_queries``).

    The perturbation of a query depends only on ``seed``, the query and its position in
    the selected list, so two models patched on the same ``rows`` with
    ``only_correct=False`` see identical perturbations (used by :mod:`grokray.circuits.paths`).
    """
    device = _device(model, device)
    was_training = model.training
    model.eval()
    selected, n_examined, clean_acc = select_queries(model, dataset, split, n, seed, only_correct, rows,
                                                     precision, device)
    matrices: dict[str, np.ndarray] = {}
    n_queries: dict[str, int] = {}
    perturbed_acc: dict[str, float] = {}
    for token in tokens:
        perturbed, ok = perturb_queries(selected, token, dataset.tail, seed)
        clean_rows, twin_rows = selected[ok], perturbed[ok]
        n_queries[token] = int(ok.sum())
        if not len(clean_rows):
            matrices[token] = np.full((model.n_depths, len(POSITIONS)), np.nan)
            perturbed_acc[token] = float("nan")
            continue
        clean_tokens = dataset.encode(clean_rows).tokens                   # [N, 3]
        twin_tokens = dataset.encode(twin_rows).tokens                     # [N, 3]
        flips = flip_matrix(model, clean_tokens, twin_tokens, precision, device)   # [D, 3, N]
        matrices[token] = flips.mean(-1)                                   # [D, 3]
        twin_pred = predict_answers(model, twin_tokens, precision, device).cpu().numpy()
        perturbed_acc[token] = float((twin_pred == twin_rows[:, TAIL]).mean())
    model.train(was_training)
    return PatchingResult(depth_names=list(model.resid_names), positions=list(POSITIONS), matrices=matrices,
                          n_queries=n_queries, split=split,
                          step=step, seed=seed, only_correct=only_correct, n_selected=len(selected),
                          n_examined=n_examined, clean_acc=clean_acc, perturbed_acc=perturbed_acc,
                          precision=precision)
