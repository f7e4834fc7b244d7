"""Proof by replay: how many trials the adaptive boundary search needs to recover a grid's phase boundaries.

A finished grid is an oracle: its labels are known, so the search (:mod:`grokray.sweep.boundary`)
can be replayed on it without training. For each map: labels used (as a share of the grid) until
the search finishes, and whether its predicted map (every point the label of its nearest labelled
point) recovers every label boundary of the true map to within one grid step (Hausdorff distance
between the boundary point sets <= 1), over several random instances, two labels in flight at a
time (as a 2-core sweep runs them).

Maps:

* ``smooth_20x20``: one smooth boundary (a random sine curve) across a 20 x 20 grid;
* ``island_20x20``: the same plus a disk (radius 2-3) of a third label inside one phase; run
  without and with the island probe (the centre of every uniform cell spanning >= 4 steps is
  labelled once);
* ``phase_map_5x4``: grids shaped like ``sweeps/phase-map.yaml``'s facets (5 phi x 4 weight
  decays), with Liu et al.-shaped phases (confusion at high weight decay, memorization at low,
  grokking between, its extent moving with phi): a stand-in until the real map is finished, then
  ``--phase-map NAME`` replays the real one.

Goal (issue 21): the boundaries for at most 25% of the trials on the 20 x 20 maps, 50% on the
phase-map grid.

    python -m benchmarks.boundary_search            # ~10 s; writes benchmarks/results/boundary_search.json
    python -m benchmarks.boundary_search --quick
"""
from __future__ import annotations

import math
import time

import numpy as np

from benchmarks import common as C
from grokray.sweep.boundary import BoundarySearch, boundary_error, run_oracle


def smooth_map(rng: np.random.Generator, n: int = 20) -> np.ndarray:
    a, w, ph, c = rng.uniform(2, 5), rng.uniform(0.15, 0.4), rng.uniform(0, 2 * math.pi), rng.uniform(7, 12)
    m = np.empty((n, n), dtype=object)
    for i in range(n):
        for j in range(n):
            m[i, j] = "true" if j > c + a * math.sin(w * i + ph) else "no"
    return m


def island_map(rng: np.random.Generator, n: int = 20) -> np.ndarray:
    m = smooth_map(rng, n)
    r = rng.uniform(2.0, 3.2)
    ci, cj = rng.integers(4, n - 4), rng.integers(4, n - 4)
    for i in range(n):
        for j in range(n):
            if (i - ci) ** 2 + (j - cj) ** 2 <= r * r:
                m[i, j] = "fake"
    return m


def phase_map_grid(rng: np.random.Generator) -> np.ndarray:
    """5 phi x 4 weight decays: confusion above a weight decay, grokking in a band below it whose
    lower edge moves with phi, memorization below (labels as the phase map shows them)."""
    m = np.empty((5, 4), dtype=object)
    top = rng.integers(2, 4)                     # wd index at and above which nothing fits
    for i in range(5):
        low = max(0, int(rng.integers(1, 3)) - (1 if i >= 3 else 0))
        for j in range(4):
            m[i, j] = "confusion" if j >= top else ("grokking" if j >= low else "memorization")
    return m


def replay(truth: np.ndarray, island_probe: int = 0, batch: int = 2, min_coarse: int = 3) -> dict:
    s = BoundarySearch(truth.shape, island_probe=island_probe, min_coarse=min_coarse)
    used = run_oracle(s, lambda p: truth[p], batch=batch)
    err = boundary_error(truth, s.predict())
    return {"used": used, "grid": int(truth.size), "share": used / truth.size, "boundary_error": err,
            "recovered": bool(err <= 1.0), "finished": s.finished}


def summarize(runs: list[dict]) -> dict:
    shares = [r["share"] for r in runs]
    return {"instances": len(runs), "median_share": float(np.median(shares)), "max_share": float(max(shares)),
            "recovered": sum(r["recovered"] for r in runs), "runs": runs}


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--phase-map", default=None, help="also replay a finished sweep's map (its name; needs the store)")
    args = p.parse_args()
    if args.quick:
        args.instances = 3
    started, before = time.perf_counter(), C.snapshot()
    results = {}
    # a 5-value axis starts from its two ends (min_coarse 2): three values of five would be 60% of the grid
    for name, make, probe, coarse in (("smooth_20x20", smooth_map, 0, 3), ("island_20x20", island_map, 0, 3),
                                      ("island_20x20_probe4", island_map, 4, 3), ("phase_map_5x4", phase_map_grid, 0, 2)):
        rng = np.random.default_rng(7)
        runs = [replay(make(rng), island_probe=probe, min_coarse=coarse) for _ in range(args.instances)]
        results[name] = summarize(runs)
        r = results[name]
        C.say(f"{name}: median {r['median_share']:.0%} of the grid (max {r['max_share']:.0%}), "
              f"boundaries recovered in {r['recovered']}/{r['instances']}")
    goals = {"smooth_20x20": 0.25, "island_20x20": 0.25, "island_20x20_probe4": 0.25, "phase_map_5x4": 0.5}
    verdicts = {k: {"goal_share": g, "median_share": results[k]["median_share"],
                    "met": results[k]["median_share"] <= g and results[k]["recovered"] == results[k]["instances"]}
                for k, g in goals.items()}
    for k, v in verdicts.items():
        r = results[k]
        C.say(f"goal {k}: median <= {v['goal_share']:.0%} and every boundary recovered in every instance: "
              f"{'met' if v['met'] else 'NOT met'} (median {r['median_share']:.0%}, {r['recovered']}/{r['instances']})")
    C.write_result("boundary_search", args, {"maps": results, "goals": verdicts,
                                             "in_flight": 2, "recovery": "Hausdorff distance between true and "
                                             "predicted boundary points <= 1 grid step (Chebyshev)"}, started, before)


if __name__ == "__main__":
    main()
