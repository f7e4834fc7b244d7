"""The map a boundary search has drawn: every grid point of every facet, with the search's label
and where that label came from.

A ``method: boundary`` sweep trains only some points of its grid; the search labels the others by
its rule (:mod:`grokray.sweep.boundary`): between agreeing neighbours (*inferred*), inside a cell
whose known points agree (*cell*), or from the nearest known point (*nearest*). The phase map of the runs
shows only the trained points; this is the whole map the search stands behind, so a user can
compare it with a grid's, cell by cell, and see which cells rest on a run
(:func:`grokray.phasemap.search.load_search_map` reads it by sweep name).

Ray Tune saves the searcher with the experiment (``searcher-state-<session>.pkl`` beside the
trials; :class:`~grokray.sweep.boundary_searcher.BoundarySearcher` writes it as JSON, read here
with ``json``, never unpickled), so the map can be read while the sweep runs, after it ends, and
after ``grokray sweep resume``. The sweep driver logs it on the parent run when a sweep ends
(``phase_map/search_map.csv``, :data:`grokray.contract.SEARCH_MAP_CSV`).

One row per grid point: the facet keys, the axis keys, ``search_label`` (the behaviour the
search refines on: grokking / comprehension / not_generalized / confusion / diverged / failed, or
``mixed`` where replicates disagree), ``source`` (``run``: a trial's label; ``inferred``: taken
from agreeing neighbours without a trial; ``cell``: inside a cell whose known points agree, the
refinement's own assumption; ``nearest``: the nearest known point's, where the search has not
resolved the point; ``none``: nothing known yet in the facet), ``in_flight`` (proposed, its trial not finished) and ``reason`` (why the search
proposed the point, for the points it proposed).

Example: a 1-D facet of 5 points whose label flips between the third and fourth, searched to the
end, then read back from the state Tune would save:

    >>> from grokray.sweep.boundary_searcher import BoundarySearcher
    >>> s = BoundarySearcher({"train.weight_decay": [0.1, 0.3, 1.0, 3.0, 10.0]}, {}, {}, budget=9, min_coarse=2)
    >>> n = 0
    >>> while isinstance(cfg := s.suggest(f"t{n}"), dict):
    ...     s.on_trial_complete(f"t{n}", {"phase": "grokking" if cfg["train.weight_decay"] >= 3 else "memorization"})
    ...     n += 1
    >>> m = search_map(s.axes, s.facets, s.get_state())
    >>> m[["train.weight_decay", "search_label", "source"]].values.tolist()  # doctest: +NORMALIZE_WHITESPACE
    [[0.1, 'not_generalized', 'run'], [0.3, 'not_generalized', 'cell'], [1.0, 'not_generalized', 'run'],
     [3.0, 'grokking', 'run'], [10.0, 'grokking', 'run']]
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pandas as pd

from grokray.sweep.boundary import MIXED, BoundarySearch

#: Tune's name for a searcher's saved state in the experiment folder (Searcher.CKPT_FILE_TMPL).
STATE_GLOB = "searcher-state-*.pkl"
COLUMNS = ("search_label", "source", "in_flight", "reason")


class SearchStateError(ValueError):
    """A searcher state that is not a boundary search's (one line: the file and what is wrong)."""


def read_search_state(exp_dir: str | Path) -> dict | None:
    """The newest boundary-search state Tune saved in ``exp_dir`` (None: none saved yet).

    Raises:
        SearchStateError: the file is not a boundary search's JSON state.
    """
    # the newest session's by name (its session stamp, as Tune picks its own state): a resumed sweep
    # has one file per session, and Tune's end-of-run sync rewrites old ones, so modification times lie
    files = sorted(Path(exp_dir).glob(STATE_GLOB), key=lambda f: f.name)
    if not files:
        return None
    try:
        state = json.loads(files[-1].read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SearchStateError(f"{files[-1]}: not a boundary search's state (not JSON: another searcher's "
                               "pickle?)") from None
    if not isinstance(state, dict) or not isinstance(state.get("searches"), dict):
        raise SearchStateError(f"{files[-1]}: not a boundary search's state (no 'searches')")
    return state


def search_map(axes: dict[str, list], facets: dict[str, list], state: dict) -> pd.DataFrame:
    """Every grid point of every facet with the search's label and its source (see the module
    docstring); ``axes`` and ``facets`` as :meth:`grokray.sweep.spec.SweepSpec.boundary_axes` gives
    them (the searcher's own order)."""
    combos = [tuple(c) for c in itertools.product(*facets.values())] or [()]
    in_flight = {(int(f), tuple(p)) for f, p in state.get("trials", {}).values()}
    rows = []
    for f, combo in enumerate(combos):
        raw = state["searches"].get(str(f))
        s = BoundarySearch.from_state(raw) if raw is not None else None
        pred, src = s.predict_with_sources() if s is not None else (None, None)
        for ix in itertools.product(*[range(len(v)) for v in axes.values()]):
            label, source = (pred[ix], src[ix] or "none") if pred is not None else (None, "none")
            rows.append({**dict(zip(facets, combo)), **{k: v[i] for (k, v), i in zip(axes.items(), ix)},
                         "search_label": "mixed" if label == MIXED else label, "source": source,
                         "in_flight": (f, ix) in in_flight,
                         "reason": (s.reasons.get(ix) if s is not None else None) or None})
    return pd.DataFrame(rows, columns=[*facets, *axes, *COLUMNS])


def sweep_search_map(spec: Any, exp_dir: str | Path) -> pd.DataFrame | None:
    """The search map of a ``method: boundary`` sweep from its state folder (None: not a boundary
    sweep, or no state saved yet)."""
    if spec.method != "boundary":
        return None
    state = read_search_state(exp_dir)
    if state is None:
        return None
    axes, facets, _, _ = spec.boundary_axes()
    return search_map(axes, facets, state)


__all__ = ["SearchStateError", "read_search_state", "search_map", "sweep_search_map"]
