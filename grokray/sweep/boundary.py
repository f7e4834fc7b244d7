"""Adaptive phase-boundary search: label a grid's phase map with a fraction of its trials.

A grid spends most of its trials deep inside a phase, where every neighbour has the same label.
This search samples a coarse lattice of the grid first, then refines only the cells whose labels
disagree (adaptive mesh refinement, as physics maps phase diagrams; level-set estimation,
Gotovos et al. 2013), until every label boundary is resolved to one grid step or the trial budget
is spent. The rule:

1. **Coarse design.** Along each axis of ``n`` values take every ``stride``-th index and the last
   (``stride``: the largest power of two leaving at least ``min_coarse`` values, but no more than
   half the axis where a sparser lattice exists: a 5-value axis starts from its two ends). The
   coarse lattice cuts the grid into cells (boxes between neighbouring coarse indices).
2. **A cell is mixed when any two labels known in its closed box differ** (its corners, but also
   a point on an edge or inside it: labelled by a neighbour's refinement, an island probe, or a
   point whose replicates disagree, :data:`MIXED`); else it is uniform and settled. A settled
   cell in which a different label turns up later is opened again, so a boundary that crosses a
   settled cell's edge and comes back is caught where the neighbour's refinement labels that edge.
3. **Split a mixed cell in two along the axes the boundary crosses** (an axis with an edge whose
   ends differ), or along every axis spanning more than one step when none of those does. Of the
   new points, one between known points that agree (the ends of its edge, the corners of its face)
   with no other label known between them and at most ``infer_span`` (4) steps apart takes their
   label without a trial; the others (a crossed edge's midpoint, a centre) are the next to label.
   In a cell whose corners all agree (mixed by what is inside it: an island) nothing is inferred;
   a cell spanning ``infer_span`` steps or more is never split on inferences alone: its middle new
   point is labelled (a boundary that bulges between two checked rows shows there).
4. **Islands.** With ``island_probe`` the centre of a uniform cell spanning ``island_probe`` steps
   or more is labelled once, so an island smaller than a coarse cell is not missed for certain.
5. **Order.** The largest cells first (coarse to fine everywhere before fine anywhere), so a
   budget that ends early leaves a map resolved evenly.
6. **Stop** when the budget is spent or no mixed cell can be split (every boundary is between
   neighbouring grid points).

What it assumes, and so can miss: a boundary that crosses an edge of at most ``infer_span`` steps
and comes back between its two agreeing ends (a bump, or an island pressed against an edge), and
an island that no label falls on. ``python -m benchmarks.boundary_search`` measures both.

:meth:`BoundarySearch.predict` fills the map: a point's own label (observed or inferred), else its
uniform cell's, else its nearest known point's (ties: the lowest index). Categorical axes
(augmentation) are facets: one search per facet value (:class:`FacetedSearch`). Pure Python and
numpy, no Ray: the Tune searcher (``method: boundary``) and the replay benchmark drive it.

Example: a 9 x 9 map whose label flips at x = 5 is found with 17 of its 81 points.

    >>> truth = lambda p: "no" if p[0] < 5 else "true"
    >>> s = BoundarySearch((9, 9))
    >>> while (point := s.propose()) is not None:
    ...     s.observe(point, truth(point))
    >>> s.n_labelled, bool((s.predict() == [[truth((i, j)) for j in range(9)] for i in range(9)]).all())
    (17, True)
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Sequence

import numpy as np

from grokray.contract import Tag

#: The label of a point whose replicates disagree: every cell that has it as a corner is mixed.
MIXED = "__mixed__"

Point = tuple[int, ...]


def coarse_indices(n: int, min_coarse: int = 3) -> tuple[list[int], int]:
    """The coarse indices of an axis of ``n`` values and their stride: every ``stride``-th index and
    the last, ``stride`` the largest power of two that leaves at least ``min_coarse`` values, and no
    more than half the axis's values where a sparser lattice allows it (a 5-value axis starts from
    its two ends: three of five would be most of the axis).

    >>> coarse_indices(20), coarse_indices(9), coarse_indices(5), coarse_indices(4), coarse_indices(2)
    (([0, 8, 16, 19], 8), ([0, 4, 8], 4), ([0, 4], 4), ([0, 2, 3], 2), ([0, 1], 1))
    """
    def lattice(m: int) -> tuple[list[int], int]:
        if n <= m:
            return list(range(n)), 1
        stride = 1
        while len(range(0, n, stride * 2)) >= m:   # the doubled lattice still has enough points
            stride *= 2
        return sorted(set(range(0, n, stride)) | {n - 1}), stride

    for m in range(max(min_coarse, 2), 1, -1):
        idx, stride = lattice(m)
        if 2 * len(idx) <= n or m == 2:
            return idx, stride
    return lattice(2)


@dataclass
class BoundarySearch:
    """The refinement of one facet's grid (``shape``: the number of values of each numeric axis)."""
    shape: tuple[int, ...]
    min_coarse: int = 3
    island_probe: int = 0          # label the centre of a uniform cell spanning >= this many steps (0: never)
    labels: dict[Point, Any] = field(default_factory=dict)
    pending: set[Point] = field(default_factory=set)
    reasons: dict[Point, str] = field(default_factory=dict)   # why each point was proposed
    cells: list[tuple[Point, Point]] = field(default_factory=list)
    probed: set[tuple[Point, Point]] = field(default_factory=set)
    inferred: dict[Point, Any] = field(default_factory=dict)   # labels taken from agreeing corners, no trial
    settled: list[tuple[Point, Point]] = field(default_factory=list)   # cells whose known points agree: uniform
    #: Infer a new point's label from agreeing corners only across at most this many steps: a boundary can
    #: dip across a long edge and back between two agreeing ends (measured on the replay maps).
    infer_span: int = 4

    def __post_init__(self) -> None:
        self.shape = tuple(int(n) for n in self.shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"shape must have positive sizes (got {self.shape})")
        self._grid = np.full(self.shape, None, dtype=object)      # every known label (observed or inferred)
        for p, lab in [*self.inferred.items(), *self.labels.items()]:
            self._grid[p] = lab
        if not self.cells and not self.settled and not self.labels:
            axes = [coarse_indices(n, self.min_coarse)[0] for n in self.shape]
            self.cells = [(tuple(a[i] for a, i in zip(axes, ix)), tuple(a[min(i + 1, len(a) - 1)] for a, i in zip(axes, ix)))
                          for ix in itertools.product(*[range(max(len(a) - 1, 1)) for a in axes])]
            self._coarse = set(itertools.product(*axes))
        else:
            self._coarse = set()

    # ------------------------------------------------------------------ labels
    @property
    def n_labelled(self) -> int:
        return len(self.labels)

    def observe(self, point: Sequence[int], label: Hashable) -> None:
        """A label for ``point``; a second, different label for the same point makes it :data:`MIXED`.
        A settled cell that holds the point and has another label is open again."""
        p = tuple(int(i) for i in point)
        self.pending.discard(p)
        if p in self.labels and self.labels[p] != label:
            self.labels[p] = MIXED
        else:
            self.labels[p] = label
        self.inferred.pop(p, None)
        self._grid[p] = self.labels[p]
        reopened = [c for c in self.settled if self._holds(c, p) and self._values(c) != {self.labels[p]}]
        if reopened:
            self.settled = [c for c in self.settled if c not in reopened]
            self.cells += reopened

    def known(self, p: Point) -> Any:
        """A point's label: observed, else inferred from agreeing corners, else None."""
        return self.labels.get(p, self.inferred.get(p))

    # ------------------------------------------------------------------ cells
    @staticmethod
    def _holds(cell: tuple[Point, Point], p: Point) -> bool:
        return all(a <= c <= b for c, a, b in zip(p, *cell))

    def _values(self, cell: tuple[Point, Point]) -> set:
        """The known labels in a cell's closed box (its corners, edges, faces and inside)."""
        lo, hi = cell
        return set(self._grid[tuple(slice(a, b + 1) for a, b in zip(lo, hi))].ravel().tolist()) - {None}

    def _corners(self, cell: tuple[Point, Point]) -> list[Point]:
        lo, hi = cell
        return sorted(set(itertools.product(*[sorted({a, b}) for a, b in zip(lo, hi)])))

    def _split_axes(self, cell: tuple[Point, Point]) -> list[int]:
        """The axes to cut a mixed cell along: those whose edges the boundary crosses (an edge along
        the axis whose ends differ), if any spans more than one step; else every axis spanning more."""
        lo, hi = cell
        long = [ax for ax in range(len(lo)) if hi[ax] - lo[ax] > 1]
        crossed = []
        for ax in long:
            for c in self._corners(cell):
                if c[ax] == lo[ax]:
                    d = list(c)
                    d[ax] = hi[ax]
                    if self.known(c) != self.known(tuple(d)) or MIXED in (self.known(c), self.known(tuple(d))):
                        crossed.append(ax)
                        break
        return crossed or long

    def _split(self, cell: tuple[Point, Point]) -> list[tuple[Point, Point]]:
        """The sub-cells of a mixed cell cut in two along :meth:`_split_axes`. A new point between
        known points that agree (the ends of its edge, the corners of its face), with no other label
        known between them and at most :attr:`infer_span` steps apart, takes their label without a
        trial (:attr:`inferred`); none does in a cell whose corners all agree (what differs is inside
        it, an island, and may reach any of its edges), and in a cell spanning :attr:`infer_span`
        steps or more at least the middle new point is left to label."""
        lo, hi = cell
        axes = self._split_axes(cell)
        mids = [sorted({a, (a + b) // 2, b}) if ax in axes else sorted({a, b}) for ax, (a, b) in enumerate(zip(lo, hi))]
        island = len({self.known(c) for c in self._corners(cell)}) == 1
        new, guessed = [], {}
        for p in itertools.product(*mids):
            if self.known(p) is not None:
                continue
            new.append(p)
            between = [(a, b) if c not in (a, b) else (c, c) for c, a, b in zip(p, lo, hi)]
            if island or max(b - a for a, b in between) > self.infer_span:
                continue
            values = self._values((tuple(a for a, _ in between), tuple(b for _, b in between)))
            ends = itertools.product(*[sorted({a, b}) for a, b in between])
            if len(values) == 1 and MIXED not in values and all(self.known(e) is not None for e in ends):
                guessed[p] = values.pop()
        if new and len(guessed) == len(new) and max(b - a for a, b in zip(lo, hi)) >= self.infer_span:
            guessed.pop(new[len(new) // 2])   # a long mixed cell is not split on guesses alone: check one
        for p, lab in guessed.items():
            self.inferred[p] = lab
            self._grid[p] = lab
        return [(tuple(m[i] for m, i in zip(mids, ix)), tuple(m[min(i + 1, len(m) - 1)] for m, i in zip(mids, ix)))
                for ix in itertools.product(*[range(max(len(m) - 1, 1)) for m in mids])]

    def _refine(self) -> list[tuple[Point, str]]:
        """Split every fully labelled mixed cell, settle the uniform ones; the points the open cells
        still need, with reasons, in the order to label them."""
        need: list[tuple[int, Point, str]] = []
        changed = True
        while changed:
            changed = False
            kept: list[tuple[Point, Point]] = []
            for cell in self.cells:
                lo, hi = cell
                span = max(b - a for a, b in zip(lo, hi))
                missing = [c for c in self._corners(cell) if self.known(c) is None]
                if missing:
                    kept.append(cell)
                    why = ("coarse design" if all(c in self._coarse for c in missing)
                           else f"refine: corners of a {span}-step cell")
                    need += [(span, c, why) for c in missing]
                    continue
                values = self._values(cell)
                if len(values) > 1 or MIXED in values:
                    if span > 1:
                        kept += self._split(cell)
                        changed = True
                    continue                          # span 1: resolved, the boundary is between neighbours
                centre = tuple((a + b) // 2 for a, b in zip(lo, hi))
                if self.island_probe and span >= self.island_probe and centre not in self.labels:
                    kept.append(cell)                 # uniform so far: its centre is labelled once (islands)
                    need.append((span, centre, f"island probe: centre of a uniform {span}-step cell"))
                    self.probed.add(cell)
                else:
                    self.settled.append(cell)
            self.cells = kept
        out: dict[Point, tuple[int, str]] = {}
        for span, p, why in need:
            if p not in self.pending and p not in self.labels and (p not in out or out[p][0] < span):
                out[p] = (span, why)
        return [(p, why) for p, (span, why) in sorted(out.items(), key=lambda kv: (-kv[1][0], kv[0]))]

    def propose(self) -> Point | None:
        """The next point to label (marked pending), or None: nothing to do until a pending label
        arrives, or nothing left (:attr:`finished`)."""
        need = self._refine()
        if not need:
            return None
        point, why = need[0]
        self.pending.add(point)
        self.reasons[point] = why
        return point

    @property
    def finished(self) -> bool:
        """No pending point and nothing to propose: every boundary is resolved to one step."""
        return not self.pending and not self._refine()

    # ------------------------------------------------------------------ the map
    def predict(self) -> np.ndarray:
        """Every grid point's label: its own (observed or inferred); else, inside a cell whose known
        points agree, that label (the refinement's own assumption); else its nearest known point's
        (squared index distance; ties to the lowest index). An object array of ``shape``."""
        return self.predict_with_sources()[0]

    def predict_with_sources(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict` and, per point, where its label came from: ``run`` (observed),
        ``inferred`` (from agreeing neighbours, no trial), ``cell`` (inside a cell whose known points
        agree), ``nearest`` (the nearest known point's), None (nothing known)."""
        known = sorted({**self.inferred, **self.labels}.items())
        out = np.empty(self.shape, dtype=object)
        src = np.empty(self.shape, dtype=object)
        if not known:
            return out, src
        for cell in [*self.settled, *self.cells]:
            values = self._values(cell)
            if len(values) == 1 and MIXED not in values and all(self.known(c) is not None for c in self._corners(cell)):
                lo, hi = cell
                box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
                out[box], src[box] = values.pop(), "cell"
        for p, lab in known:
            out[p], src[p] = lab, "run" if p in self.labels else "inferred"
        pts = np.array([p for p, _ in known])
        for p in itertools.product(*[range(n) for n in self.shape]):
            if out[p] is None:
                out[p], src[p] = known[int(np.argmin(((pts - np.array(p)) ** 2).sum(1)))][1], "nearest"
        return out, src

    def state_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "min_coarse": self.min_coarse, "island_probe": self.island_probe,
                "infer_span": self.infer_span,
                "labels": [[list(p), lab] for p, lab in self.labels.items()],
                "pending": [list(p) for p in self.pending],
                "reasons": [[list(p), r] for p, r in self.reasons.items()],
                "cells": [[list(lo), list(hi)] for lo, hi in self.cells],
                "probed": [[list(lo), list(hi)] for lo, hi in self.probed], "coarse": [list(p) for p in self._coarse],
                "settled": [[list(lo), list(hi)] for lo, hi in self.settled],
                "inferred": [[list(p), lab] for p, lab in self.inferred.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "BoundarySearch":
        s = cls(tuple(state["shape"]), state["min_coarse"], state["island_probe"], infer_span=state.get("infer_span", 4),
                labels={tuple(p): lab for p, lab in state["labels"]}, pending={tuple(p) for p in state["pending"]},
                reasons={tuple(p): r for p, r in state["reasons"]},
                cells=[(tuple(lo), tuple(hi)) for lo, hi in state["cells"]],
                probed={(tuple(lo), tuple(hi)) for lo, hi in state["probed"]},
                inferred={tuple(p): lab for p, lab in state.get("inferred", [])},
                settled=[(tuple(lo), tuple(hi)) for lo, hi in state.get("settled", [])])
        s._coarse = {tuple(p) for p in state["coarse"]}
        return s


def boundary_points(labels: np.ndarray) -> set[Point]:
    """Grid points with a neighbour (one step along one axis) of another label.

    >>> sorted(boundary_points(np.array([["a", "a", "b"], ["a", "a", "b"]], dtype=object)))
    [(0, 1), (0, 2), (1, 1), (1, 2)]
    """
    out: set[Point] = set()
    for p in itertools.product(*[range(n) for n in labels.shape]):
        for ax in range(labels.ndim):
            q = list(p)
            q[ax] += 1
            if q[ax] < labels.shape[ax] and labels[tuple(q)] != labels[p]:
                out.add(p)
                out.add(tuple(q))
    return out


def boundary_error(truth: np.ndarray, predicted: np.ndarray) -> float:
    """The Hausdorff distance (in grid steps, Chebyshev) between the true and the predicted boundary
    points: <= 1 means every boundary was found to within one grid step and none was invented.
    0 when neither map has a boundary; inf when only one has."""
    a, b = boundary_points(truth), boundary_points(predicted)
    if not a and not b:
        return 0.0
    if not a or not b:
        return float("inf")
    A, B = np.array(sorted(a)), np.array(sorted(b))

    def directed(X: np.ndarray, Y: np.ndarray) -> float:
        return float(max(np.abs(Y - x).max(1).min() for x in X))

    return max(directed(A, B), directed(B, A))


@dataclass
class FacetedSearch:
    """One :class:`BoundarySearch` per facet value (categorical axes); proposals round-robin over
    the facets that have something to propose."""
    facets: list[Hashable]
    shape: tuple[int, ...]
    min_coarse: int = 3
    island_probe: int = 0
    searches: dict = field(default_factory=dict)
    _turn: int = 0

    def __post_init__(self) -> None:
        if not self.searches:
            self.searches = {f: BoundarySearch(self.shape, self.min_coarse, self.island_probe) for f in self.facets}

    def propose(self) -> tuple[Hashable, Point] | None:
        for k in range(len(self.facets)):
            f = self.facets[(self._turn + k) % len(self.facets)]
            p = self.searches[f].propose()
            if p is not None:
                self._turn = (self._turn + k + 1) % len(self.facets)
                return f, p
        return None

    def observe(self, facet: Hashable, point: Sequence[int], label: Hashable) -> None:
        self.searches[facet].observe(point, label)

    @property
    def n_labelled(self) -> int:
        return sum(s.n_labelled for s in self.searches.values())

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.searches.values())


def run_oracle(search: BoundarySearch, truth: Any, budget: int | None = None, batch: int = 1) -> int:
    """Drive ``search`` with an oracle (``truth(point) -> label``), ``batch`` points in flight at a
    time (as ``max_concurrent`` trials would be), until it finishes or ``budget`` labels are spent.
    Returns the number of labels used."""
    used = 0
    while budget is None or used < budget:
        flight = []
        while len(flight) < batch and (budget is None or used + len(flight) < budget):
            p = search.propose()
            if p is None:
                break
            flight.append(p)
        if not flight:
            break
        for p in flight:
            search.observe(p, truth(p))
        used += len(flight)
    return used


def grid_of(values: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """The axes' values as lists (a helper for specs): ``[[3.6, 7.2], [0.1, 1.0]]``."""
    return [list(v) for v in values]


# =========================================================================== the Ray Tune searcher

#: The config key that carries why the search proposed a trial (a tag on its run, never a trial key).
REASON_KEY = "_boundary_reason"
#: Tag on a trial's run: the round of the search and why it proposed the point.
REASON_TAG = Tag.SEARCH_REASON


#: Liu et al.'s phase -> the label the search refines on (memorization: it did not generalize).
PHASE_BEHAVIOUR = {"grokking": "grokking", "comprehension": "comprehension", "memorization": "not_generalized",
                   "confusion": "confusion", "diverged": "diverged"}


def behaviour_label(result: dict | None, generalize_acc: float = 0.5, split: str = "ood") -> str:
    """The label the search refines on, from a trial's final Tune result: Liu et al.'s phase the
    trial reported (:func:`grokray.sweep.trainable.curve_phase`: the verdict's reading of its
    curves, the same the classifier tags on the run, so a replay from the store sees what the live
    search saw): ``grokking`` (generalized late, t_generalize / t_memorize above the verdict's
    delay), ``comprehension`` (generalized, not late), ``not_generalized`` (memorization),
    ``confusion``, ``diverged``; ``failed``. A result without a phase (an older trainable) is read
    off its stop reason and last accuracy instead: ``generalized``, ``confusion``, ``diverged``,
    ``not_generalized``. The classifier's labels (true / fake / no) arrive later from its actor; the
    search does not wait for them, so true and fake grokking are one label here (the map so far
    has no fake cell; a spec that needs them apart is a search on the classifier's labels, not built).

    >>> behaviour_label({"stop_reason": "generalized", "phase": "grokking"}), behaviour_label({"stop_reason": "generalized"})
    ('grokking', 'generalized')
    >>> behaviour_label({"acc/test_inferred_ood": 0.7, "phase": "memorization"}), behaviour_label({"acc/test_inferred_ood": 0.1})
    ('not_generalized', 'not_generalized')
    """
    if not result:
        return "failed"
    if result.get("phase") in PHASE_BEHAVIOUR:
        return PHASE_BEHAVIOUR[result["phase"]]
    if result.get("stop_reason") == "generalized":
        return "generalized"
    if result.get("stop_reason") == "no_memorization":
        return "confusion"
    if result.get("stop_reason") == "diverged":
        return "diverged"
    acc = result.get(f"acc/test_inferred_{split}")
    return "generalized" if acc is not None and acc >= generalize_acc else "not_generalized"
