"""grokray.sweep.search_map: the whole map a boundary search stands behind, read from the state
Tune saves, each point's label and where it came from."""
from __future__ import annotations

import json
import os

import numpy as np
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
    assert np.isfinite(len(m))
