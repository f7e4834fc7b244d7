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
resolved the point; ``none``: nothing known yet in the facet), ``in_flight`` (proposed, a trial of it not finished or a
replicate of it still queued; after a kill: the trials ``resume`` continues) and ``reason`` (why the search
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
from typing import Any, Sequence

import numpy as np
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
    path = latest_state_file(exp_dir)
    if path is None:
        return None
    try:
        state = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SearchStateError(f"{path}: not a boundary search's state (not JSON: another searcher's "
                               "pickle?)") from None
    if not isinstance(state, dict) or not isinstance(state.get("searches"), dict):
        raise SearchStateError(f"{path}: not a boundary search's state (no 'searches')")
    return state


def latest_state_file(exp_dir: str | Path) -> Path | None:
    """The newest session's searcher state in ``exp_dir`` (None: none). By name, its session stamp,
    as Tune picks its own: a resumed sweep has one file per session, and Tune's end-of-run sync
    rewrites the old ones last, so modification times lie."""
    files = sorted(Path(exp_dir).glob(STATE_GLOB), key=lambda f: f.name)
    return files[-1] if files else None


def search_map(axes: dict[str, list], facets: dict[str, list], state: dict, where: str = "the state") -> pd.DataFrame:
    """Every grid point of every facet with the search's label and its source (see the module
    docstring); ``axes`` and ``facets`` as :meth:`grokray.sweep.spec.SweepSpec.boundary_axes` gives
    them (the searcher's own order). A grouped facet value (a mapping) is written by its name, as
    the phase map writes it.

    Raises:
        SearchStateError: the state is not this grid's (another spec's, or edited), naming ``where``.
    """
    from grokray.sweep.naming import value_label

    combos = [tuple(c) for c in itertools.product(*facets.values())] or [()]
    shape = [len(v) for v in axes.values()]
    try:
        searches = {int(f): BoundarySearch.from_state(raw) for f, raw in state["searches"].items()}
        # in flight: handed to Tune and not finished, or a replicate the searcher holds queued (its point
        # was proposed, the other seeds are still to run)
        in_flight = ({(int(f), tuple(p)) for f, p in state.get("trials", {}).values()}
                     | {(int(f), tuple(p)) for f, p, _rep in state.get("queue", [])})
    except (KeyError, TypeError, ValueError) as e:
        raise SearchStateError(f"{where}: not a boundary search's state ({type(e).__name__}: {e})") from None
    for f, s in searches.items():
        if list(s.shape) != shape or not 0 <= f < len(combos):
            raise SearchStateError(f"{where}: a search of shape {list(s.shape)} in facet {f}, but the spec's grid is "
                                   f"{shape} in {len(combos)} facet(s): the state is another spec's")
    rows = []
    for f, combo in enumerate(combos):
        s = searches.get(f)
        pred, src = s.predict_with_sources() if s is not None else (None, None)
        names = {k: value_label(v, facets[k]) if isinstance(v, (dict, list)) else v for k, v in zip(facets, combo)}
        for ix in itertools.product(*[range(n) for n in shape]):
            label, source = (pred[ix], src[ix] or "none") if pred is not None else (None, "none")
            rows.append({**names, **{k: v[i] for (k, v), i in zip(axes.items(), ix)},
                         "search_label": "mixed" if label == MIXED else label, "source": source,
                         "in_flight": (f, ix) in in_flight,
                         "reason": (s.reasons.get(ix) if s is not None else None) or None})
    return pd.DataFrame(rows, columns=[*facets, *axes, *COLUMNS])


#: How each source reads in a one-line count (:func:`describe_sources`).
SOURCE_WORDS = {"run": "from runs", "inferred": "inferred from agreeing neighbours", "cell": "inside agreeing cells",
                "nearest": "unresolved (nearest known label)", "none": "not reached"}


def describe_sources(df: pd.DataFrame) -> str:
    """``N grid point(s): a from runs, b inferred ...``: where a search map's labels came from.

    >>> describe_sources(pd.DataFrame({"source": ["run", "run", "cell", "nearest"]}))
    '4 grid point(s): 2 from runs, 1 inside agreeing cells, 1 unresolved (nearest known label)'
    """
    counts = df["source"].value_counts()
    parts = [f"{int(counts.get(s, 0))} {w}" for s, w in SOURCE_WORDS.items() if counts.get(s, 0) or s == "run"]
    return f"{len(df)} grid point(s): " + ", ".join(parts)


def sweep_search_map(spec: Any, exp_dir: str | Path) -> pd.DataFrame | None:
    """The search map of a ``method: boundary`` sweep from its state folder (None: not a boundary
    sweep, or no state saved yet)."""
    if spec.method != "boundary":
        return None
    state = read_search_state(exp_dir)
    if state is None:
        return None
    axes, facets, _, _ = spec.boundary_axes()
    return search_map(axes, facets, state, where=str(latest_state_file(exp_dir)))


def facet_name(facets: Sequence[str], combo: Sequence[Any]) -> str:
    """A facet's name, as the replay benchmark writes it (``data.seed=0, data.augmentation=none``;
    ``""`` without facets), so the two can be joined on it.

    >>> facet_name(["data.seed", "data.augmentation"], [np.int64(0), "none"]), facet_name([], [])
    ('data.seed=0, data.augmentation=none', '')
    """
    return ", ".join(f"{k}={plain_value(v)}" for k, v in zip(facets, combo))


def map_keys(search: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(facets, axes)`` of a search map (its parameter columns), by the rule of :meth:`grokray.sweep.spec.SweepSpec.boundary_axes`:
    numeric parameters are refined axes, except ``*.seed`` (a graph is a facet); the rest are facets.

    >>> map_keys(pd.DataFrame({"data.seed": [0], "train.weight_decay": [0.1], "data.augmentation": ["none"],
    ...                          "data.phi": [3.6], "search_label": ["grokking"], "source": ["run"],
    ...                          "in_flight": [False], "reason": [None]}))
    (['data.seed', 'data.augmentation'], ['train.weight_decay', 'data.phi'])
    """
    keys = [c for c in search.columns if c not in COLUMNS]
    axes = [k for k in keys if k.split(".")[-1] != "seed" and pd.api.types.is_numeric_dtype(search[k])
            and not pd.api.types.is_bool_dtype(search[k])]
    return [k for k in keys if k not in axes], axes


def plain_value(v: Any) -> Any:
    """A value as a spec writes it: a numpy scalar as Python's, a whole float as an int, NaN as None
    (facet names, the keys of a disagreement list, JSON).

    >>> plain_value(np.float64(1.0)), plain_value(np.int64(3)), plain_value(0.5), plain_value(float("nan"))
    (1, 3, 0.5, None)
    """
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if v != v else int(v) if v.is_integer() else v
    return v


__all__ = ["SearchStateError", "read_search_state", "latest_state_file", "search_map", "sweep_search_map",
           "describe_sources", "SOURCE_WORDS", "facet_name", "map_keys", "plain_value"]
