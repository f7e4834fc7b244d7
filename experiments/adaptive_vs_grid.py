"""The adaptive phase map beside the grid's (issue 21, item 3): cell by cell, run by run.

Reads two sweeps of one store, no training: a grid (``sweeps/phase-map.yaml``) and an adaptive
search of the same space (``sweeps/phase-map-adaptive.yaml``, ``method: boundary``). Reports:

* **Trials and cost**: trials the search ran against the grid's, and the core-hours of each
  (the runs' active training seconds, :func:`experiments.phase_map_analysis.active_seconds`).
* **Runs**: every adaptive run beside the grid's run at the same config (training on CPU is
  deterministic, so they should be the same run): label, detail, phase, ``t_memorize`` and
  ``t_generalize`` equal or not (:func:`compare_runs`).
* **The map**: the search's whole map (:mod:`grokray.sweep.search_map`: every grid point, from a
  run or from the search's rule) against the grid's behaviour at every point (Liu et al.'s phase
  as the search reads it: grokking / comprehension / not_generalized / confusion), per facet:
  points that agree, those that do not (with where the search's label came from), and the
  boundary error in grid steps (:func:`grokray.sweep.boundary.boundary_error`; <= 1 is "recovered")
  (:func:`compare_maps`).
* Optionally, the replay's prediction (``benchmarks/results/boundary_search.json``, ``store.adaptive``:
  the same searcher replayed on the grid's runs before the sweep ran): trials per facet and
  predicted map against what the real search did.

The figure: one panel per facet (graphs in rows, augmentations in columns), phi across, weight
decay up; a cell is the search's label in Liu et al.'s phase colours, solid where a run gave it,
pale where the search's rule did, hatched where unresolved; a red frame where the grid disagrees,
the grid's label written under.

Usage::

    python -m experiments.adaptive_vs_grid --tracking-uri sqlite:////work/store/mlflow.db \\
        [--grid phase-map] [--sweep phase-map-adaptive] [--storage DIR] \\
        [--replay benchmarks/results/boundary_search.json] [--replay-spec sweeps/phase-map-adaptive.yaml] \\
        [--out experiments/results/adaptive_vs_grid.json] [--png docs/phase-map/adaptive-vs-grid.png]

A sweep the search has not finished is compared as far as it went (``finished: false`` in the JSON).
An adaptive sweep may cover part of the grid: a key the grid sweeps and it holds at one value
(``sweeps/phase-map-adaptive-seed1.yaml``: ``data.augmentation`` both_full) restricts the grid to
that value (:func:`restrict_to_held`); one it holds that the grid holds elsewhere (``seed`` 1
against the grid's 0) makes every difference in the runs the initialisation's, not the search's.
A reader never creates a store: a wrong path is one line saying where it looked (exit 2).
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from experiments.store_args import store_parser
from grokray.sweep.search_map import facet_name, map_keys, plain_value

#: What must be equal for two runs to be "the same run".
RUN_FIELDS = ("label", "detail", "phase", "t_memorize", "t_generalize")


def behaviour(phase: Any) -> str | None:
    """The label the search refines on, from a run's phase tag (None: no phase yet).

    >>> behaviour("memorization"), behaviour("grokking"), behaviour(None)
    ('not_generalized', 'grokking', None)
    """
    from grokray.sweep.boundary import PHASE_BEHAVIOUR

    return PHASE_BEHAVIOUR.get(phase) if isinstance(phase, str) else None


def _key(row: Any, keys: Sequence[str]) -> tuple:
    return tuple(round(float(row[k]), 9) if isinstance(row[k], (int, float, np.number)) and not isinstance(row[k], bool)
                 else row[k] for k in keys)


def _same(a: Any, b: Any) -> bool:
    na, nb = a is None or a != a, b is None or b != b    # None and NaN alike
    return (na and nb) or (not na and not nb and a == b)


def compare_runs(grid: pd.DataFrame, adaptive: pd.DataFrame, keys: Sequence[str]) -> dict:
    """Each adaptive run beside the grid's run with the same ``keys``: how many have every field
    of :data:`RUN_FIELDS` equal, and every difference.

    >>> g = pd.DataFrame({"x": [1.0, 2.0], "label": ["no_grokking", "true_grokking"], "detail": ["m", "g"],
    ...                   "phase": ["memorization", "grokking"], "t_memorize": [100.0, 100.0],
    ...                   "t_generalize": [None, 900.0]})
    >>> a = g.copy(); a.loc[1, "t_generalize"] = 950.0
    >>> r = compare_runs(g, a, ["x"])
    >>> r["matched"], r["identical"], r["same_label"], r["differences"][0]["fields"]
    (2, 1, 2, {'t_generalize': [900, 950]})
    """
    by_key: dict[tuple, list] = {}
    for _, r in grid.iterrows():
        by_key.setdefault(_key(r, keys), []).append(r)
    diffs, identical, same_label, matched, unmatched, ambiguous = [], 0, 0, 0, [], []
    for _, r in adaptive.iterrows():
        k = _key(r, keys)
        found = by_key.get(k, [])
        if len(found) != 1:           # none, or several grid runs there (a key both sweeps do not name)
            (unmatched if not found else ambiguous).append(dict(zip(keys, map(plain_value, k))))
            continue
        g = found[0]
        matched += 1
        fields = {f: [plain_value(g.get(f)), plain_value(r.get(f))] for f in RUN_FIELDS if not _same(g.get(f), r.get(f))}
        same_label += "label" not in fields and "phase" not in fields
        identical += not fields
        if fields:
            diffs.append({**dict(zip(keys, map(plain_value, k))), "fields": fields})
    return {"matched": matched, "identical": identical, "same_label": same_label, "differences": diffs,
            "not_in_grid": unmatched, "ambiguous": ambiguous}


def compare_maps(grid: pd.DataFrame, search: pd.DataFrame, facets: Sequence[str], axes: Sequence[str]) -> dict:
    """The search's map (one row per grid point: ``search_label``, ``source``) against the grid's
    behaviour at each point, per facet: agreeing points, disagreements (with the search's source)
    and the boundary error in grid steps.

    >>> grid = pd.DataFrame({"f": ["a"] * 3, "x": [1, 2, 3], "phase": ["memorization", "grokking", "grokking"]})
    >>> search = pd.DataFrame({"f": ["a"] * 3, "x": [1, 2, 3],
    ...                        "search_label": ["not_generalized", "not_generalized", "grokking"],
    ...                        "source": ["run", "cell", "run"]})
    >>> r = compare_maps(grid, search, ["f"], ["x"])
    >>> r["points"], r["agree"], r["facets"]["f=a"]["disagree"], r["facets"]["f=a"]["boundary_error"]
    (3, 2, [{'x': 2, 'grid': 'grokking', 'search': 'not_generalized', 'source': 'cell'}], 1.0)
    """
    from grokray.sweep.boundary import boundary_error

    seen: dict[tuple, set] = {}
    for _, r in grid.iterrows():
        seen.setdefault(_key(r, [*facets, *axes]), set()).add(behaviour(r.get("phase")))
    # several grid runs at a point (initialisations): one behaviour, or mixed as the search reads them
    truth = {k: (None if None in v else v.pop() if len(v) == 1 else "mixed") for k, v in seen.items()}
    out, points, agree, scored = {}, 0, 0, 0
    groups = search.groupby(list(facets), sort=False, dropna=False) if facets else [((), search)]
    for combo, part in groups:
        combo = combo if isinstance(combo, tuple) else (combo,)
        name = facet_name(facets, combo)
        levels = [sorted(part[a].unique()) for a in axes]
        t = np.full([len(v) for v in levels], None, dtype=object)
        p = np.full(t.shape, None, dtype=object)
        disagree, missing = [], 0
        for _, r in part.iterrows():
            ix = tuple(v.index(r[a]) for a, v in zip(axes, levels))
            want = truth.get(_key(r, [*facets, *axes]))
            got = r["search_label"] if isinstance(r["search_label"], str) else None
            t[ix], p[ix] = want, got
            if want is None:
                missing += 1
            elif got != want:
                disagree.append({**{a: plain_value(r[a]) for a in axes}, "grid": want, "search": got, "source": r["source"]})
        n = int(t.size)
        ok = n - missing - len(disagree)
        complete = missing == 0 and all(v is not None for v in p.flat)
        err = boundary_error(t, p) if complete else None
        out[name] = {"points": n, "runs": int((part["source"] == "run").sum()), "agree": ok, "disagree": disagree,
                     "grid_unlabelled": missing,
                     "boundary_error": err if err is None or np.isfinite(err) else "inf"}
        points, agree, scored = points + n, agree + ok, scored + (n - missing)
    return {"points": points, "scored": scored, "agree": agree, "facets": out}


def compare_replay(replay: dict, maps: dict, search: pd.DataFrame, facets: Sequence[str]) -> dict:
    """The replay's prediction (``store.adaptive`` of ``benchmarks/results/boundary_search.json``)
    against the real search, per facet (joined on :func:`facet_name`): trials, and the points
    whose predicted label differs from the search's map (the replay's axis order, ``replay["axes"]``).

    >>> search = pd.DataFrame({"g": [0, 0], "x": [1.0, 2.0], "search_label": ["grokking", "mixed"],
    ...                        "source": ["run", "run"]})
    >>> replay = {"axes": ["x"], "facets": {"g=0": {"labelled": 2, "predicted": ["grokking", "__mixed__"]}}}
    >>> compare_replay(replay, {"facets": {"g=0": {"runs": 2}}}, search, ["g"])
    {'g=0': {'replay_runs': 2, 'real_runs': 2, 'map_points_differ': 0}}
    """
    from grokray.sweep.boundary import MIXED

    axes = list(replay.get("axes") or [])
    groups = dict(iter(search.groupby(list(facets), sort=False))) if facets else {(): search}
    parts = {facet_name(facets, c if isinstance(c, tuple) else (c,)): g for c, g in groups.items()}
    out = {}
    for name, f in (replay.get("facets") or {}).items():
        real, part = maps["facets"].get(name), parts.get(name)
        row = {"replay_runs": f.get("labelled"), "real_runs": real["runs"] if real else None}
        if part is not None and "predicted" in f and all(a in part for a in axes):
            predicted = np.array(f["predicted"], dtype=object)
            levels = [sorted(part[a].unique()) for a in axes]
            if list(predicted.shape) == [len(v) for v in levels]:
                row["map_points_differ"] = int(sum(
                    ("mixed" if (v := predicted[tuple(lv.index(r[a]) for a, lv in zip(axes, levels))]) == MIXED else v)
                    != r["search_label"] for _, r in part.iterrows()))
        out[name] = row
    return out


def compare_proposals(replayed: list[dict], adaptive: pd.DataFrame, keys: Sequence[str],
                      facets: Sequence[str] = ()) -> dict:
    """The live search's proposals (each run's ``search_reason``: ``trial k/N: why``, in ``k`` order)
    against the replay's (:func:`benchmarks.boundary_search.replay_searcher`'s ``proposals``), one
    by one: the same point, the same reason, and where they first part; then as sets (the same
    points, in any order) and per facet (each facet's own sequence). Facets are searched in turn,
    and with trials in flight the turn passes in the order trials finish, which a replay can only
    assume: two searches can interleave their facets differently and still choose the same points
    in each facet in the same order.

    >>> runs = pd.DataFrame({"f": ["a", "b"], "x": [1.0, 1.0],
    ...                      "search_reason": ["trial 2/2: coarse design", "trial 1/2: coarse design"]})
    >>> r = compare_proposals([{"f": "a", "x": 1.0, "reason": "trial 1/2: coarse design"},
    ...                        {"f": "b", "x": 1.0, "reason": "trial 2/2: coarse design"}], runs, ["f", "x"], ["f"])
    >>> r["same_point"], r["first_divergence"]["trial"], r["same_points_any_order"], r["facets_in_same_order"]
    (0, 1, True, '2 of 2')
    """
    import re

    real = []
    for _, r in adaptive.iterrows():
        m = re.match(r"trial (\d+)/\d+: ", str(r.get("search_reason") or ""))
        if m:
            real.append((int(m.group(1)), r))
    real.sort(key=lambda t: t[0])
    same_point = same_reason = 0
    first = None
    for (k, r), p in zip(real, replayed):
        point = _key(r, keys) == _key(p, keys)
        same_point += point
        same_reason += point and r["search_reason"] == p["reason"]
        if not point and first is None:
            first = {"trial": k, "live": {key: plain_value(r[key]) for key in keys}, "replay": {key: plain_value(p[key]) for key in keys}}
    n = min(len(real), len(replayed))
    live_pts = [_key(r, keys) for _, r in real[:n]]
    replay_pts = [_key(p, keys) for p in replayed[:n]]
    in_facet = {}
    for f in dict.fromkeys(pt[:len(facets)] for pt in live_pts + replay_pts):
        in_facet[facet_name(facets, f)] = ([pt for pt in live_pts if pt[:len(facets)] == f]
                                           == [pt for pt in replay_pts if pt[:len(facets)] == f])
    return {"compared": n, "live": len(real), "replayed": len(replayed),
            "same_point": int(same_point), "same_reason": int(same_reason), "first_divergence": first,
            "same_points_any_order": sorted(live_pts, key=repr) == sorted(replay_pts, key=repr),
            "facets_in_same_order": f"{sum(in_facet.values())} of {len(in_facet)}", "facet_order": in_facet}


def restrict_to_held(grid: pd.DataFrame, held: dict[str, str]) -> pd.DataFrame:
    """The grid's runs at the values another sweep held (``key -> value`` as its runs' params, strings,
    compared as the grid's values print).

    >>> grid = pd.DataFrame({"aug": ["none", "both_full", "none"], "x": [0.1, 0.1, 1.0]})
    >>> restrict_to_held(grid, {"aug": "none"})["x"].tolist()
    [0.1, 1.0]
    """
    keep = np.ones(len(grid), dtype=bool)
    for k, v in held.items():
        keep &= (grid[k].map(lambda g: str(plain_value(g))) == str(v)).to_numpy()
    return grid[keep]


def finishing_in_live_order(adaptive: pd.DataFrame, keys: Sequence[str]) -> Callable[[list[dict]], int]:
    """A replay's ``ends_first`` rule (:func:`benchmarks.boundary_search.replay_searcher`): of the
    configs in flight, the one whose live run ended first (``end_time``, as
    :func:`experiments.phase_map_analysis.load` reads it), which decides the order the search serves
    its facets in. A point with two runs (replicates) counts its later end, its last label; a point
    the live sweep has no ended run for, last; ties, the earlier proposed.

    >>> live = pd.DataFrame({"x": [1.0, 2.0], "end_time": [2000, 1000]})
    >>> finishing_in_live_order(live, ["x"])([{"x": 1.0}, {"x": 2.0}, {"x": 3.0}])
    1
    """
    ends: dict[tuple, float] = {}
    for _, r in adaptive.iterrows():
        if pd.notna(r["end_time"]):
            ends[_key(r, keys)] = max(float(r["end_time"]), ends.get(_key(r, keys), 0.0))
    return lambda cfgs: min(range(len(cfgs)), key=lambda j: (ends.get(_key(cfgs[j], keys), float("inf")), j))


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = store_parser(__doc__, "phase-map-adaptive", "experiments/results/adaptive_vs_grid.json",
                      "docs/phase-map/adaptive-vs-grid.png")
    ap.add_argument("--grid", default="phase-map", help="the grid sweep of the same space")
    ap.add_argument("--storage", default=None, help="the adaptive sweep's Ray Tune storage, where its spec set one")
    ap.add_argument("--replay", type=Path, default=None, metavar="JSON",
                    help="the replay's prediction to compare with (benchmarks/results/boundary_search.json)")
    ap.add_argument("--replay-spec", type=Path, default=None, metavar="YAML",
                    help="replay this boundary spec's searcher on the grid's runs now and compare its proposals, "
                         "in order, with the live search's (sweeps/phase-map-adaptive.yaml)")
    a = ap.parse_args(argv)
    from grokray.config import ConfigError
    from grokray.phasemap.search import load_search_map, plot_search_map
    from grokray.sweep.search_map import SearchStateError

    from experiments.phase_map_analysis import load

    try:
        grid, _ = load(a.tracking_uri, a.grid)
        adaptive, _ = load(a.tracking_uri, a.sweep)
        search = load_search_map(a.sweep, a.tracking_uri, a.storage)
        replay = json.loads(a.replay.read_text())["store"]["adaptive"] if a.replay else None
    except (ConfigError, LookupError, SearchStateError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"adaptive_vs_grid: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    facets, axes = map_keys(search)
    keys = [*facets, *axes]
    # keys the grid sweeps and the adaptive sweep holds at one value: compare with that part of the grid
    held_keys = [k for k in grid.attrs.get("params", []) if k not in keys and k not in adaptive.columns]
    held: dict[str, str] = {}
    if held_keys and len(adaptive):
        from experiments.phase_map_analysis import with_params
        params = with_params(a.tracking_uri, adaptive, held_keys)
        held = {k: params[k].iloc[0] for k in held_keys if params[k].nunique() == 1 and params[k].iloc[0] is not None}
        grid = restrict_to_held(grid, held)
    missing = [k for k in keys if k not in grid.columns or k not in adaptive.columns]
    if missing or not axes:
        print(f"adaptive_vs_grid: {', '.join(missing) or 'no numeric axis'} not swept by both {a.grid!r} and "
              f"{a.sweep!r}", file=sys.stderr)
        return 2
    # a replicate both sweeps name (init seeds) pairs runs too; a key only one names leaves pairs ambiguous
    labelled = adaptive[adaptive["label"].notna()]           # a run still training has nothing to compare yet
    runs = compare_runs(grid, labelled, keys + [k for k in ("seed",) if k in grid.columns and k in adaptive.columns])
    runs["not_labelled_yet"] = int(len(adaptive) - len(labelled))
    maps = compare_maps(grid, search, facets, axes)
    unresolved = int((search["source"].isin(["nearest", "none"])).sum())
    in_flight = int(search["in_flight"].astype(bool).sum())
    result = {
        "grid": {"sweep": a.grid, "trials": int(len(grid)), "core_hours": round(float(grid["train_seconds"].sum()) / 3600, 3),
                 **({"restricted_to": held} if held else {})},
        "adaptive": {"sweep": a.sweep, "trials": int(len(adaptive)),
                     "core_hours": round(float(adaptive["train_seconds"].sum()) / 3600, 3),
                     "unresolved_points": unresolved, "in_flight": in_flight,
                     "finished": unresolved == 0 and in_flight == 0 and bool(adaptive["label"].notna().all())},
        "share_of_grid_trials": round(len(adaptive) / max(len(grid), 1), 3),
        "runs": runs, "map": maps,
        "recovered": all(isinstance(f["boundary_error"], (int, float)) and f["boundary_error"] <= 1.0
                         for f in maps["facets"].values()),
        "exact": maps["agree"] == maps["points"],
        "tracking_uri": a.tracking_uri, "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if a.replay_spec is not None:
        from benchmarks.boundary_search import replay_searcher
        from grokray.config import ConfigError as SpecError
        try:
            replayed = replay_searcher(str(a.replay_spec), grid)
        except (SpecError, OSError) as e:
            print(f"adaptive_vs_grid: --replay-spec {a.replay_spec}: {e}".replace("\n", " "), file=sys.stderr)
            return 2
        result["proposals"] = compare_proposals(replayed["proposals"], adaptive, keys, facets)
        # the same replay with the trials completing in the order the live sweep's did (its runs' end
        # times): what is left of a difference is then the search's, not the clock's
        if adaptive["end_time"].notna().any():
            in_live_order = replay_searcher(str(a.replay_spec), grid, ends_first=finishing_in_live_order(adaptive, keys))
            result["proposals_in_live_order"] = compare_proposals(in_live_order["proposals"], adaptive, keys, facets)
    if replay is not None:
        result["replay"] = {"predicted_trials": replay.get("used"), "facets": compare_replay(replay, maps, search, facets)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=plain_value) + "\n")
    compare = {name: {"disagree": f["disagree"], "subtitle": f"{f['runs']} runs, {f['agree']}/{f['points']} agree, "
                                                          f"boundary error {f['boundary_error']}"}
               for name, f in maps["facets"].items()}
    plot_search_map(search, a.png, compare=compare, against="grid",
                    title=f"{a.sweep}" + "".join(f", {k}={v}" for k, v in held.items())
                          + f": {len(adaptive)} trials against the grid's {len(grid)}; "
                          f"{maps['agree']}/{maps['points']} points agree with {a.grid}")
    if held:
        print(f"{a.grid} restricted to the values {a.sweep} held: "
              + ", ".join(f"{k}={v}" for k, v in held.items()) + f" ({len(grid)} runs)")
    print(f"{a.sweep}: {len(adaptive)} trials ({result['share_of_grid_trials']:.0%} of {a.grid}'s {len(grid)}), "
          f"{result['adaptive']['core_hours']} core-hours against {result['grid']['core_hours']}; runs identical to "
          f"the grid's: {runs['identical']}/{runs['matched']} labelled (same label and phase: {runs['same_label']}); map: "
          f"{maps['agree']}/{maps['points']} points agree, boundaries recovered: {result['recovered']}"
          + ("" if result["adaptive"]["finished"] else f" (search not finished: {unresolved} points unresolved, "
             f"{in_flight} in flight)"))
    if "proposals" in result:
        p = result["proposals"]
        print(f"proposals: {p['same_point']} of the first {p['compared']} are the replay's, in order "
              f"({p['same_reason']} with the same reason)"
              + (f"; first apart at trial {p['first_divergence']['trial']}" if p["first_divergence"] else "")
              + f"; the same points in any order: {p['same_points_any_order']}; each facet's own sequence the "
                f"replay's: {p['facets_in_same_order']}")
    if "proposals_in_live_order" in result:
        p = result["proposals_in_live_order"]
        print(f"replayed in the live sweep's completion order: {p['same_point']} of the first {p['compared']} "
              f"proposals are the live search's, in order ({p['same_reason']} with the same reason)")
    print(f"wrote {a.out} and {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
