"""grokray.sweep.boundary: the adaptive phase-boundary search, on maps whose boundaries are known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grokray.sweep.boundary import (MIXED, BoundarySearch, FacetedSearch, boundary_error, boundary_points,
                                    coarse_indices, run_oracle)


REPO = Path(__file__).resolve().parents[2]

@pytest.mark.parametrize("n, min_coarse, expected", [
    (1, 3, [0]), (2, 3, [0, 1]), (3, 3, [0, 2]), (5, 3, [0, 4]), (5, 2, [0, 4]), (9, 3, [0, 4, 8]),
    (20, 3, [0, 8, 16, 19]), (4, 2, [0, 2, 3]), (4, 3, [0, 2, 3]), (7, 3, [0, 4, 6]), (9, 4, [0, 4, 8]),
    (17, 5, [0, 4, 8, 12, 16]), (20, 2, [0, 16, 19]),
])
def test_coarse_indices(n, min_coarse, expected):
    """Every 2^k-th value and the last, at least min_coarse of them, but at most half the axis
    where a sparser lattice exists (a short axis starts from its ends)."""
    assert coarse_indices(n, min_coarse)[0] == expected


def grid_of(f, shape):
    out = np.empty(shape, dtype=object)
    for p in np.ndindex(*shape):
        out[p] = f(p)
    return out


def bump(p):
    """A boundary at column 9 that bulges to column 5 in rows 10-14: across the coarse edge at column
    8 and back between rows 8 and 16, whose corners never see it (the search before the box rule
    put it 3 steps off); found where the neighbour's refinement labels that edge."""
    return "true" if p[1] >= (5 if 10 <= p[0] <= 14 else 9) else "no"


def bulge(p):
    """A straight boundary at column 12 that bulges 2 steps right in rows 5-7: between two checked
    rows (4 and 8) that agree, found because a 4-step cell is not split on inferences alone."""
    return "no" if p[1] < {5: 13, 6: 14, 7: 13}.get(p[0], 12) else "true"


def island(p):
    """One phase with a 5 x 5 square of another around (12, 12), the centre of a coarse cell."""
    return "fake" if abs(p[0] - 12) <= 2 and abs(p[1] - 12) <= 2 else "no"


# name: (shape, truth, island_probe, most labels it may use, whole map exact)
MAPS = {
    "uniform": ((20, 20), lambda p: "no", 0, 16, True),                 # the coarse lattice, nothing else
    "vertical_line": ((20, 20), lambda p: "no" if p[0] < 11 else "true", 0, 40, True),   # cut along one axis
    "diagonal": ((20, 20), lambda p: "no" if p[0] + p[1] < 19 else "true", 0, 100, True),
    "one_axis": ((17,), lambda p: "no" if p[0] < 6 else "fake", 0, 9, True),
    "three_phases": ((12, 12), lambda p: "confusion" if p[1] > 8 else ("true" if p[0] > 5 else "no"), 0, 60, True),
    "bump": ((20, 20), bump, 0, 60, True),
    "bulge": ((20, 20), bulge, 0, 50, True),
    "island_probed": ((20, 20), island, 8, 60, True),                  # the probe at (12, 12) lands in it
    "phase_map_5x4": ((5, 4), lambda p: "confusion" if p[1] == 3 else ("generalized" if p[1] >= 4 - p[0] // 2
                                                                       else "not_generalized"), 0, 10, True),
}


@pytest.mark.parametrize("name", list(MAPS))
def test_recovers_every_boundary_within_one_step_with_few_labels(name):
    shape, f, probe, most, exact = MAPS[name]
    truth = grid_of(f, shape)
    s = BoundarySearch(shape, island_probe=probe)
    used = run_oracle(s, lambda p: f(p), batch=2)
    assert s.finished and used == s.n_labelled <= most, used
    assert boundary_error(truth, s.predict()) <= 1.0
    assert not exact or (s.predict() == truth).all()
    assert all(reason for reason in s.reasons.values())                       # every proposal says why


def test_without_the_probe_an_island_inside_a_coarse_cell_is_not_seen():
    """The limit the docstring states: no label falls in the island, so the map is one phase."""
    s = BoundarySearch((20, 20))
    run_oracle(s, island)
    assert "fake" not in s.labels.values() and set(s.predict().ravel()) == {"no"}


@pytest.mark.parametrize("kind, most_median", [("smooth_map", 0.25), ("island_map", 0.25)])
def test_every_replayed_start_recovers_the_smooth_boundary(kind, most_median):
    """The replay benchmark's 20 x 20 maps (its first 20 starts): every smooth boundary recovered
    within one step, at a median share under the goal; island maps under the goal too (their
    recovery is a rate, measured by the benchmark's robustness section)."""
    bench = pytest.importorskip("benchmarks.boundary_search")
    rng = np.random.default_rng(7)
    runs = [bench.replay(getattr(bench, kind)(rng)) for _ in range(20)]
    assert np.median([r["share"] for r in runs]) <= most_median
    if kind == "smooth_map":
        assert all(r["recovered"] for r in runs)


def test_every_monotone_phase_map_is_exact():
    """All 77 5 x 4 maps whose generalization moves to lower weight decay as phi grows: each map
    exact, at a median of 11 of 20 points (55%; the floor for a search that infers only between
    agreeing labels is 10)."""
    bench = pytest.importorskip("benchmarks.boundary_search")
    maps = bench.monotone_phase_maps()
    runs = [bench.replay(m) for m in maps]
    assert len(maps) == 77 and all(r["exact"] for r in runs)
    assert np.median([r["used"] for r in runs]) == 11 and np.median([bench.floor_points(m) for m in maps]) == 10
    assert bench.fixed_guess_recovers(maps) == 77          # one step on 5 x 4: a guess passes it


def test_a_label_found_on_a_settled_cells_edge_opens_it_again():
    s = BoundarySearch((9, 9))
    for p in [(0, 0), (0, 4), (0, 8), (4, 0), (4, 4), (4, 8), (8, 0), (8, 4), (8, 8)]:
        s.observe(p, "no")
    assert s.finished and len(s.settled) == 4
    s.observe((2, 4), "true")                                # on the edge the two upper cells share
    assert not s.finished and len(s.settled) == 2
    assert s.propose() in {(0, 2), (2, 0), (2, 2), (4, 2), (0, 6), (2, 6), (2, 8), (4, 6)}


def test_a_cell_is_cut_only_along_the_axis_its_boundary_crosses():
    s = BoundarySearch((9, 9))
    for p in [(0, 0), (0, 4), (0, 8), (4, 0), (4, 4), (4, 8), (8, 0), (8, 4), (8, 8)]:
        s.observe(p, "no" if p[1] < 4 else "true")           # a boundary between columns 0 and 4
    need = set(iter(s.propose, None))
    assert need == {(0, 2), (4, 2), (8, 2)}                 # the midpoints across it, no centre (2, 2)


def test_nothing_is_inferred_in_a_cell_mixed_only_inside():
    s = BoundarySearch((9, 9), min_coarse=2, island_probe=8)
    for p in [(0, 0), (0, 8), (8, 0), (8, 8)]:
        s.observe(p, "no")
    assert s.propose() == (4, 4)
    s.observe((4, 4), "fake")                                # an island at the centre
    s._refine()
    assert s.inferred == {}                                  # its edges' midpoints are labelled, not guessed


def test_a_budget_ends_the_search_and_the_map_is_still_filled():
    truth = lambda p: "no" if p[0] < 11 else "true"
    s = BoundarySearch((20, 20))
    assert run_oracle(s, truth, budget=10) == 10 and s.n_labelled == 10
    assert all(v is not None for v in s.predict().ravel())


def test_disagreeing_replicates_mark_a_point_mixed_and_refine_around_it():
    s = BoundarySearch((9,))
    for p in (0, 4, 8):
        s.observe((p,), "no")
    assert s.finished                                       # uniform: nothing to do
    s.observe((4,), "true")                                 # another seed at 4 disagrees
    assert s.labels[(4,)] == MIXED and not s.finished and s.propose() in ((2,), (6,))


def test_state_round_trip_continues_the_same_search():
    truth = lambda p: "no" if p[0] + 2 * p[1] < 20 else "true"
    a = BoundarySearch((16, 10))
    run_oracle(a, truth, budget=12)
    b = BoundarySearch.from_state(a.state_dict())
    assert run_oracle(a, truth) == run_oracle(b, truth)
    assert (a.predict() == b.predict()).all() and a.labels == b.labels


def test_facets_are_searched_separately_and_in_turn():
    f = FacetedSearch(["none", "both_full"], (9,))
    seen = [f.propose()[0] for _ in range(4)]
    assert seen == ["none", "both_full", "none", "both_full"]


def test_boundary_error_counts_steps():
    a = grid_of(lambda p: "no" if p[0] < 5 else "true", (10, 3))
    b = grid_of(lambda p: "no" if p[0] < 7 else "true", (10, 3))
    assert boundary_error(a, a) == 0.0 and boundary_error(a, b) == 2.0
    assert boundary_points(grid_of(lambda p: "x", (3, 3))) == set()
    assert boundary_error(a, grid_of(lambda p: "no", (10, 3))) == float("inf")


def test_the_tune_searcher_saves_and_restores_mid_search(tmp_path):
    """method boundary's searcher: a driver killed mid-search resumes the same search (Tune saves and
    restores the searcher's state with the experiment)."""
    from grokray.sweep.boundary_searcher import BoundarySearcher

    def make():
        return BoundarySearcher({"train.weight_decay": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]},
                                {"data.augmentation": ["none", "both_full"]}, {"seed": 0}, budget=40)

    def label(cfg):   # generalized between weight decays 0.1 and 1.0, with both_full only
        ok = cfg["data.augmentation"] == "both_full" and 0.1 <= cfg["train.weight_decay"] <= 1.0
        return {"stop_reason": "generalized"} if ok else {"acc/test_inferred_ood": 0.02}

    a = make()
    for i in range(6):
        cfg = a.suggest(f"t{i}")
        assert cfg["seed"] == 0 and cfg["_boundary_reason"].startswith(f"trial {i + 1}/40:")
        if i < 4:
            a.on_trial_complete(f"t{i}", label(cfg))
    a.save(str(tmp_path / "searcher.json"))
    b = make()
    b.restore(str(tmp_path / "searcher.json"))
    for s in (a, b):                       # the two in flight complete, then both searches run out
        for t in ("t4", "t5"):
            trial = s.trials[t]
            s.on_trial_complete(t, label({"data.augmentation": s.combos[trial[0]][0],
                                          "train.weight_decay": s.axes["train.weight_decay"][trial[1][0]]}))
    seq = []
    for s in (a, b):
        out, i = [], 100
        while (cfg := s.suggest(f"t{i}")) not in (None, "FINISHED"):
            out.append((cfg["data.augmentation"], cfg["train.weight_decay"]))
            s.on_trial_complete(f"t{i}", label(cfg))
            i += 1
        seq.append(out)
    assert seq[0] == seq[1] and len(seq[0]) > 0
    assert a.proposed == b.proposed <= 40


def test_init_seeds_are_replicates_and_their_disagreement_refines():
    from grokray.sweep.boundary_searcher import BoundarySearcher
    from grokray.sweep.spec import spec_from_dict

    spec = spec_from_dict({"name": "b", "method": "boundary", "num_samples": 30,
                           "parameters": {"train.weight_decay": [0.1, 0.3, 1.0, 3.0, 10.0], "seed": [0, 1],
                                          "data.seed": [0, 1], "data.augmentation": ["none"]}})
    axes, facets, constants, replicates = spec.boundary_axes()
    assert (list(axes), list(facets), constants, replicates) == (
        ["train.weight_decay"], ["data.seed"], {"data.augmentation": "none"}, {"seed": [0, 1]})
    s = BoundarySearcher(axes, facets, constants, budget=30, replicates=replicates)
    a, b = s.suggest("a"), s.suggest("b")
    assert (a["train.weight_decay"], a["data.seed"], a["seed"]) == (b["train.weight_decay"], b["data.seed"], 1 - b["seed"])
    s.on_trial_complete("a", {"stop_reason": "generalized"})
    s.on_trial_complete("b", {"acc/test_inferred_ood": 0.0})           # the other seed did not: mixed
    facet, point = 0, (0,)
    assert s.search.searches[facet].labels[point] == "__mixed__"


# --------------------------------------------------------------------------- the real phase map as an oracle

PHASE_MAP_GRID = {"data.seed": [0, 1], "train.weight_decay": [0.1, 0.3, 1.0, 3.0],
                  "data.augmentation": ["none", "both_full", "hop2_full"], "data.phi": [3.6, 5.4, 7.2, 12.6, 18.0]}


def phase_map_frame(rows):
    """A frame shaped like :func:`grokray.phase_map`'s (the columns the oracle reads, plus a few)."""
    import pandas as pd

    cols = ["data.seed", "train.weight_decay", "data.augmentation", "data.phi", "label", "detail", "phase",
            "determined", "final_ood_acc", "censored", "status", "run_id"]
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    df.attrs.update(params=list(PHASE_MAP_GRID), kind="sweep", sweep="phase-map")
    return df


def run_row(seed, wd, aug, phi, behaviour, **kw):
    """A finished run whose phase-map row reads as ``behaviour``."""
    row = {"data.seed": seed, "train.weight_decay": wd, "data.augmentation": aug, "data.phi": phi,
           "status": "FINISHED", "label": "no_grokking", "phase": "memorization", "detail": "censored",
           "final_ood_acc": 0.02, "run_id": f"{seed}-{wd}-{aug}-{phi}"}
    row.update({"grokking": {"label": "true_grokking", "phase": "grokking", "detail": "grokking",
                             "final_ood_acc": 0.97},
                "comprehension": {"phase": "comprehension", "detail": "comprehension", "final_ood_acc": 0.85},
                "confusion": {"phase": "confusion", "detail": "confusion"},
                "not_generalized": {}}[behaviour])
    row.update(kw)
    return row


@pytest.mark.parametrize("row, expected", [
    ({"status": "RUNNING", "label": None}, None),                                       # not labelled yet
    ({"status": "FAILED", "label": None}, "failed"),
    ({"label": "no_grokking", "phase": "memorization", "final_ood_acc": 0.31}, "not_generalized"),   # semi
    ({"label": "no_grokking", "phase": "comprehension", "final_ood_acc": 0.80}, "comprehension"),
    ({"label": "fake_grokking", "phase": "grokking", "final_ood_acc": 0.9}, "grokking"),
    ({"label": "true_grokking", "final_ood_acc": 0.9}, "generalized"),                   # labelled before phases
    ({"label": "no_grokking", "phase": "memorization", "final_ood_acc": 0.62}, "not_generalized"),  # the phase wins
    ({"label": "no_grokking", "final_ood_acc": 0.62}, "generalized"),            # no phase tagged: ended >= 0.5
    ({"label": "no_grokking", "phase": "confusion", "final_ood_acc": float("nan")}, "confusion"),
    ({"label": "no_grokking", "phase": "diverged"}, "diverged"),
])
def test_a_runs_behaviour_is_what_the_search_would_have_seen(row, expected):
    bench = pytest.importorskip("benchmarks.boundary_search")
    assert bench.run_behaviour({"status": "FINISHED", **row}) == expected


def test_a_partly_finished_phase_map_has_no_complete_facet_yet():
    """Today's store: the weight-decay-0.1 block on both graphs, two runs of 0.3 still running."""
    bench = pytest.importorskip("benchmarks.boundary_search")
    rows = [run_row(seed, 0.1, aug, phi, "comprehension" if (aug, phi) == ("both_full", 18.0) else "not_generalized")
            for seed in (0, 1) for aug in PHASE_MAP_GRID["data.augmentation"] for phi in PHASE_MAP_GRID["data.phi"]]
    rows += [run_row(0, 0.3, "none", 3.6, "not_generalized"),
             run_row(0, 0.3, "hop2_full", 3.6, "not_generalized", status="RUNNING", label=None, phase=None)]
    grids, status = bench.store_oracles(phase_map_frame(rows), PHASE_MAP_GRID)
    assert grids == {} and len(status) == 6 and all(s["points"] == 20 for s in status.values())
    assert bench.store_summary(status) == "no complete facet yet (31 of 120 points labelled)"
    # without the declared grid only the values run so far are known: still not complete (wd 0.3 started)
    assert bench.store_oracles(phase_map_frame(rows))[0] == {}


def test_a_complete_facet_becomes_an_oracle_grid_and_replays():
    bench = pytest.importorskip("benchmarks.boundary_search")
    phis, wds = PHASE_MAP_GRID["data.phi"], PHASE_MAP_GRID["train.weight_decay"]

    def truth(i, j):   # confusion at wd 3.0, generalized from wd 1.0 (from 0.3 at the two largest phi)
        return "confusion" if j == 3 else ("grokking" if j >= (1 if i >= 3 else 2) else "not_generalized")

    rows = [run_row(0, wd, "both_full", phi, truth(i, j)) for i, phi in enumerate(phis) for j, wd in enumerate(wds)]
    rows.append(run_row(0, 0.3, "both_full", 3.6, "grokking", run_id="replicate"))      # a second seed disagrees
    rows.append(run_row(1, 0.1, "both_full", 3.6, "not_generalized"))                  # graph 1: one point
    rows.append(run_row(1, 0.1, "none", 3.6, "not_generalized", status="FAILED", label=None))
    grids, status = bench.store_oracles(phase_map_frame(rows), PHASE_MAP_GRID)
    name = "data.augmentation=both_full, data.seed=0"
    assert list(grids) == [name] and grids[name].shape == (5, 4)
    expected = grid_of(lambda p: truth(*p), (5, 4))
    expected[0, 1] = MIXED
    assert (grids[name] == expected).all()
    assert status["data.augmentation=none, data.seed=1"]["labelled"] == 1            # a failed run is a label
    assert bench.store_summary(status) == "1 of 6 facets complete (22 of 120 points labelled)"
    r = bench.replay(grids[name])
    assert r["finished"] and r["recovered"]


def test_the_adaptive_specs_own_searcher_replays_on_a_finished_grid():
    """sweeps/phase-map-adaptive.yaml's searcher, driven by a whole grid's runs (two in flight):
    it must recover every facet's map exactly with fewer trials than the grid, and say so; a grid
    with a hole stops the replay at the first config it has no run for."""
    bench = pytest.importorskip("benchmarks.boundary_search")
    phis, wds = PHASE_MAP_GRID["data.phi"], PHASE_MAP_GRID["train.weight_decay"]

    def truth(aug, i, j):   # confusion at wd 3.0; both_full groks at wd 1.0 and comprehends at the largest phi
        if j == 3:
            return "confusion"
        if aug != "both_full":
            return "not_generalized"
        return "comprehension" if i == 4 else ("grokking" if j == 2 else "not_generalized")

    rows = [run_row(seed, wd, aug, phi, truth(aug, i, j)) for seed in (0, 1) for aug in PHASE_MAP_GRID["data.augmentation"]
            for i, phi in enumerate(phis) for j, wd in enumerate(wds)]
    r = bench.replay_searcher(str(REPO / "sweeps" / "phase-map-adaptive.yaml"), phase_map_frame(rows))
    assert r["missing"] is None and r["grid"] == 120 and r["in_flight"] == 2
    assert r["recovered"] and r["exact"] and r["finished"]
    assert 36 <= r["used"] < 60                         # at least the 6 x 6 coarse points, under the budget
    assert all(f["wrong_points"] == 0 for f in r["facets"].values())
    hole = [row for row in rows if not (row["data.seed"] == 1 and row["train.weight_decay"] == 3.0)]
    r = bench.replay_searcher(str(REPO / "sweeps" / "phase-map-adaptive.yaml"), phase_map_frame(hole))
    assert r["missing"]["data.seed"] == 1 and r["missing"]["train.weight_decay"] == 3.0 and not r["exact"]


@pytest.mark.parametrize("history_phase", ["grokking", "comprehension", "memorization", "confusion", "diverged"])
def test_the_live_search_and_the_replay_read_one_label_for_one_phase(history_phase):
    """A trial's final result carries the verdict's phase (curve_phase); the classifier tags the same
    phase on the run; the search (behaviour_label) and the replay (run_behaviour) must agree on it,
    whatever the last raw accuracy reads (a dip at the end, a late spike)."""
    from grokray.sweep.boundary import behaviour_label
    bench = pytest.importorskip("benchmarks.boundary_search")
    for acc in (0.05, 0.7):
        live = behaviour_label({"phase": history_phase, "acc/test_inferred_ood": acc, "stop_reason": "max_steps"})
        replay = bench.run_behaviour({"status": "FINISHED", "label": "no_grokking", "phase": history_phase,
                                      "final_ood_acc": acc})
        assert live == replay


@pytest.mark.parametrize("argv, says", [
    (["--adaptive-spec", "sweeps/phase-map-adaptive.yaml"], "needs --from-store"),
    (["--from-store", "sqlite:////nowhere/m.db", "--sweep", "s", "--adaptive-spec", "sweeps/phase-map.yaml"],
     "not a method: boundary spec"),
    (["--from-store", "sqlite:////nowhere/m.db", "--sweep", "s", "--adaptive-spec", "sweeps/no-such.yaml"],
     "--adaptive-spec sweeps/no-such.yaml"),
])
def test_replay_arguments_that_cannot_work_are_one_line_and_exit_2(argv, says):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "benchmarks.boundary_search", "--quick", *argv], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr
