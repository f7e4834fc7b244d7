"""One lifecycle for 1..K members (grokray/sweep/layout.py, grokray/sweep/trainable.py): what the layout
says about a Tune trial, and what the one reporter reports for a trial of one and of a pack."""
from dataclasses import dataclass

import pytest

from grokray.sweep.layout import Layout, Running
from grokray.sweep.trainable import TuneReporter

PACKS = (({"seed": 0}, {"seed": 1}), ({"seed": 2},))


@pytest.mark.parametrize("layout, config, members, ids, n_tune, name", [
    (Layout(), {"seed": 3, "data.phi": 7.2}, [{"seed": 3, "data.phi": 7.2}], ["t_00001"], 6, None),
    (Layout(PACKS, 2), {"pack": 0}, [{"seed": 0}, {"seed": 1}], ["t_00001/0", "t_00001/1"], 2, "pack000_00001"),
    (Layout(PACKS, 2), {"pack": 1}, [{"seed": 2}], ["t_00001/0"], 2, "pack001_00001"),
])
def test_a_layout_names_the_members_of_a_tune_trial(layout, config, members, ids, n_tune, name):
    assert layout.members(config) == members
    assert layout.trial_ids("t_00001", len(members)) == ids
    assert layout.n_tune_trials(6) == n_tune
    assert layout.trial_name(config, "t_00001") == name


def test_a_layout_is_saved_and_found_again_as_it_was():
    saved = Layout(PACKS, 2).saved()
    assert saved == [[{"seed": 0}, {"seed": 1}], [{"seed": 2}]]
    assert Layout.from_saved(saved) == Layout(PACKS, 2)
    assert Layout.from_saved(None) == Layout() and Layout().saved() is None


def test_member_tags_carry_the_pack_and_the_search_reason():
    from grokray.sweep.boundary import REASON_KEY, REASON_TAG
    assert Layout().member_tags("t", [{REASON_KEY: "coarse"}]) == [{REASON_TAG: "coarse"}]
    tags = Layout(PACKS, 2).member_tags("t", [{"seed": 0}, {"seed": 1}])
    assert [t["grokray.pack_slot"] for t in tags] == ["0", "1"] and {t["grokray.pack"] for t in tags} == {"t"}


@dataclass
class Result:
    steps_run: int
    stop_reason: str
    history: list


@pytest.mark.parametrize("run_ids, results, want", [
    (["a"], [Result(900, "generalized", [{"acc/train": 1.0}])],
     {"step": 900, "mlflow_run_id": "a", "stop_reason": "generalized", "steps_run": 900}),
    (["a", "b"], [Result(900, "generalized", [{"acc/train": 1.0}]), Result(1200, "max_steps", [{"acc/train": 0.5}])],
     {"step": 1200, "mlflow_run_id": "b", "slot": 1, "mlflow_run_ids": ["a", "b"],
      "stop_reason": "generalized, max_steps", "steps_run": 1200}),
])
def test_one_reporter_for_a_trial_of_one_and_a_pack(run_ids, results, want):
    final = TuneReporter(run_ids, ("acc/train",)).final(results)
    assert {k: final[k] for k in want} == want
    assert {"phase", "t_memorize", "t_generalize"} <= set(final)   # what method: boundary refines on
    assert ("members" in final) == (len(run_ids) > 1) and ("slot" in final) == (len(run_ids) > 1)
    if len(run_ids) > 1:
        assert [m["steps_run"] for m in final["members"]] == [900, 1200]


def test_running_puts_extra_callbacks_last_for_every_member():
    class Trainer:
        def run(self, callbacks):
            self.seen = callbacks
            return "result"
    t = Trainer()
    assert Running.solo(t, ["logger"]).run("reporter", "progress") == ["result"]
    assert t.seen == ["logger", "reporter", "progress"]
    packed = Running(t, [["l0"], ["l1"]], [{}, {}], packed=True)
    packed.run("reporter")
    assert t.seen == [["l0", "reporter"], ["l1", "reporter"]]


def test_a_trial_namer_saved_before_layouts_still_names_trials_after_a_resume():
    """Tune restores the namer from its pickled experiment state; one pickled by an older grokray has
    no layout (the phase-map sweep's resume crashed on it: AttributeError 'layout')."""
    import pickle

    from grokray.sweep.driver import _TrialNamer
    from grokray.sweep.spec import spec_from_dict

    spec = spec_from_dict({"name": "n", "parameters": {"seed": [0, 1]}})
    old = _TrialNamer(spec, Layout())
    del old.layout                                     # what an older grokray pickled
    restored = pickle.loads(pickle.dumps(old))

    class T:
        config, trial_id = {"seed": 1}, "abcde_00001"
    assert restored(T()).endswith("_00001") and "seed=1" in restored(T())
    T.config = {"pack": 3}
    assert restored(T()) == "pack003_00001"
