"""grokray.sweep.search_map: the whole map a boundary search stands behind, read from the state
Tune saves, each point's label and where it came from."""
from __future__ import annotations

import json
import os
import re

import pytest

from grokray.sweep.boundary_searcher import BoundarySearcher
from grokray.sweep.search_map import SearchStateError, read_search_state, search_map

AXES = {"train.weight_decay": [0.1, 0.3, 1.0, 3.0], "data.phi": [3.6, 5.4, 7.2, 12.6, 18.0]}
FACETS = {"data.augmentation": ["none", "both_full"]}


def truth(cfg: dict) -> dict:
    """A phase per config: grokking above a diagonal in both_full, memorization elsewhere."""
    late = cfg["data.augmentation"] == "both_full" and cfg["data.phi"] * cfg["train.weight_decay"] >= 7
    return {"phase": "grokking" if late else "memorization"}


def run_search(budget: int, in_flight: int = 0) -> BoundarySearcher:
    """Drive the searcher as Tune does, one trial at a time; leave ``in_flight`` trials unfinished."""
    s, n, open_ = BoundarySearcher(AXES, FACETS, {}, budget=budget, min_coarse=2), 0, []
    while isinstance(cfg := s.suggest(f"t{n}"), dict):
        open_.append((f"t{n}", cfg))
        n += 1
        if len(open_) > in_flight:
            tid, c = open_.pop(0)
            s.on_trial_complete(tid, truth(c))
    return s


def test_every_grid_point_once_and_the_runs_are_the_searchers_trials():
    s = run_search(budget=40)
    m = search_map(s.axes, s.facets, s.get_state())
    assert len(m) == 2 * 4 * 5
    assert not m.duplicated(["data.augmentation", "train.weight_decay", "data.phi"]).any()
    assert (m["source"] == "run").sum() == s.proposed           # every finished trial is one run point
    runs = m[m["source"] == "run"]
    for _, r in runs.iterrows():                                  # a run point carries the trial's own label
        want = "grokking" if truth(r.to_dict())["phase"] == "grokking" else "not_generalized"
        assert r["search_label"] == want
    assert runs["reason"].notna().all()


def test_a_finished_search_maps_the_truth_and_says_which_points_it_did_not_run():
    s = run_search(budget=40)
    assert s.search.finished
    m = search_map(s.axes, s.facets, s.get_state())
    want = [("grokking" if truth(r)["phase"] == "grokking" else "not_generalized") for r in m.to_dict("records")]
    assert m["search_label"].tolist() == want
    # `none` is uniform: its 20 points rest on its coarse design (weight decay 0.1 / 1.0 / 3.0 x phi
    # 3.6 / 18), the other 14 on the search's rule
    none = m[m["data.augmentation"] == "none"]
    assert (none["source"] == "run").sum() == 6 and set(none["source"]) <= {"run", "cell", "inferred"}


@pytest.mark.parametrize("budget, in_flight, sources", [
    (0, 0, {"none"}),                          # nothing run: nothing known, no label
    (2, 2, {"none"}),                          # two proposed, neither finished: in flight, no label yet
    (1, 0, {"run", "nearest", "none"}),        # one point of facet 1 known: its nearest everywhere; facet 2 none
])
def test_sources_before_the_search_resolves_anything(budget, in_flight, sources):
    s = run_search(budget=budget, in_flight=in_flight)
    m = search_map(s.axes, s.facets, s.get_state())
    assert set(m["source"]) == sources
    assert m["in_flight"].sum() == min(in_flight, budget)
    assert m.loc[m["source"] == "none", "search_label"].isna().all()


def test_replicates_that_disagree_read_mixed():
    s = BoundarySearcher({"train.weight_decay": [0.1, 1.0, 3.0]}, {}, {}, budget=2, replicates={"seed": [0, 1]})
    a, b = s.suggest("a"), s.suggest("b")
    assert a["train.weight_decay"] == b["train.weight_decay"] and {a["seed"], b["seed"]} == {0, 1}
    s.on_trial_complete("a", {"phase": "grokking"})
    s.on_trial_complete("b", {"phase": "memorization"})
    m = search_map(s.axes, s.facets, s.get_state())
    assert m.loc[m["source"] == "run", "search_label"].tolist() == ["mixed"]


def test_a_point_whose_replicates_are_queued_is_in_flight_until_the_last_one_finishes():
    s = BoundarySearcher({"train.weight_decay": [0.1, 1.0, 3.0]}, {}, {}, budget=6, replicates={"seed": [0, 1, 2]})
    a = s.suggest("a")                                # seed 0 handed to Tune, seeds 1 and 2 queued
    flying = lambda: search_map(s.axes, s.facets, s.get_state())["in_flight"].tolist()
    assert flying() == [True, False, False]
    s.on_trial_complete("a", {"phase": "grokking"})   # its first label is known, two replicates are not run
    assert s.get_state()["trials"] == {} and len(s.get_state()["queue"]) == 2
    assert flying() == [True, False, False]
    b, c = s.suggest("b"), s.suggest("c")
    assert [x["train.weight_decay"] for x in (a, b, c)] == [0.1] * 3 and sorted(x["seed"] for x in (a, b, c)) == [0, 1, 2]
    s.on_trial_complete("b", {"phase": "grokking"})
    assert flying() == [True, False, False]           # c still runs
    s.on_trial_complete("c", {"phase": "grokking"})
    assert flying() == [False, False, False]


def test_the_state_tune_saves_reads_back_and_a_foreign_one_is_one_line(tmp_path):
    assert read_search_state(tmp_path) is None                       # nothing saved yet
    s = run_search(budget=12)
    s.save(str(tmp_path / "searcher-state-2026-12-05.pkl"))          # Tune's name; our JSON inside
    m = search_map(s.axes, s.facets, read_search_state(tmp_path))
    assert m.equals(search_map(s.axes, s.facets, s.get_state()))
    # a resumed sweep has one state per session: the newest session's counts, whatever the files' times
    old = tmp_path / "searcher-state-2026-12-04_09-00-00.pkl"
    run_search(budget=2).save(str(old))
    os.utime(old, (4e9, 4e9))
    assert read_search_state(tmp_path)["proposed"] == 12
    (tmp_path / "searcher-state-2026-12-06.pkl").write_bytes(b"\x80\x04\x95binary pickle")
    with pytest.raises(SearchStateError, match=r"searcher-state-2026-12-06.pkl: not a boundary search's state"):
        read_search_state(tmp_path)
    (tmp_path / "searcher-state-2026-12-06.pkl").write_text(json.dumps({"live_trials": []}))
    with pytest.raises(SearchStateError, match="no 'searches'"):
        read_search_state(tmp_path)


@pytest.mark.parametrize("state, says", [
    ({"searches": {"0": {"labels": []}}}, "not a boundary search's state (KeyError"),      # no shape
    (None, "a search of shape [4, 5] in facet 2, but the spec's grid is [4, 5] in 2 facet(s)"),   # another spec's
])
def test_a_state_that_is_not_this_grids_is_one_line_naming_it(state, says):
    if state is None:                      # three facets searched, the spec has two
        s = BoundarySearcher(AXES, {"data.augmentation": ["none", "both_full", "hop2_full"]}, {}, budget=3,
                             min_coarse=2)
        for i in range(3):
            s.on_trial_complete(f"t{i}", truth(s.suggest(f"t{i}")) if i < 2 else {"phase": "grokking"})
        state = s.get_state()
    with pytest.raises(SearchStateError, match=re.escape(f"sweeps/x: {says}")):
        search_map(AXES, FACETS, state, where="sweeps/x")


def test_grouped_facet_values_are_written_by_name_and_the_table_reads_them():
    """A facet of grouped values (model: {small: {...}, big: {...}}) is named in the map, as in the
    phase map, so the table can group by it (a raw mapping cannot be a key)."""
    from grokray.phasemap.table import format_search_map

    facets = {"model": [{"name": "small", "n_layers": 1}, {"name": "big", "n_layers": 2}]}
    s = BoundarySearcher({"data.phi": [3.6, 7.2, 18.0]}, facets, {}, budget=4, min_coarse=2)
    n = 0
    while isinstance(cfg := s.suggest(f"t{n}"), dict):
        s.on_trial_complete(f"t{n}", {"phase": "grokking" if cfg["data.phi"] > 5 else "memorization"})
        n += 1
    m = search_map(s.axes, s.facets, s.get_state())
    assert m["model"].tolist() == ["small"] * 3 + ["big"] * 3
    text = format_search_map(m)
    assert "[model=small]" in text and "[model=big]" in text and "6 grid point(s): 4 from runs" in text


def test_a_one_axis_map_without_facets_is_one_row():
    from grokray.phasemap.table import format_search_map

    s = BoundarySearcher({"train.weight_decay": [0.1, 1.0, 10.0]}, {}, {}, budget=3, min_coarse=2)
    n = 0
    while isinstance(cfg := s.suggest(f"t{n}"), dict):
        s.on_trial_complete(f"t{n}", {"phase": "confusion" if cfg["train.weight_decay"] > 5 else "memorization"})
        n += 1
    lines = format_search_map(search_map(s.axes, s.facets, s.get_state())).splitlines()
    assert lines[0].split() == ["train.weight_decay", "0.1", "1", "10"]
    assert lines[1].split() == ["mem*", "mem*", "conf*"]
