"""The phase-map analysis's pure parts: the grouped log-log fit, the stop-rule savings and the
graph-disagreement finder (experiments/phase_map_analysis.py)."""
import numpy as np
import pandas as pd
import pytest

from experiments import phase_map_analysis as pma



@pytest.mark.parametrize("slope, offsets", [(-1.0, [0.0, 1.0]), (-0.5, [2.0, -1.0, 0.3]), (0.7, [0.0])])
def test_the_fit_recovers_a_known_slope_with_free_intercepts(slope, offsets):
    rows = []
    for g, off in enumerate(offsets):
        for x in (0.1, 0.3, 1.0, 3.0):
            rows.append({"x": x, "t": float(np.exp(off) * x ** slope), "g": g})
    fit = pma.grouped_loglog_fit(pd.DataFrame(rows), "x", "t", ["g"])
    assert fit["slope"] == pytest.approx(slope, abs=1e-9)
    assert fit["se"] == pytest.approx(0.0, abs=1e-9)
    assert (fit["n_groups"], fit["n_points"]) == (len(offsets), 4 * len(offsets))


def test_the_fit_skips_groups_that_say_nothing_about_the_slope():
    df = pd.DataFrame({"x": [1, 2, 5, 1, np.nan], "t": [10, 5, 7, np.nan, 3], "g": [0, 0, 1, 2, 2]})
    fit = pma.grouped_loglog_fit(df, "x", "t", ["g"])
    assert (fit["n_groups"], fit["n_points"]) == (1, 2)      # g=1 one x; g=2 no complete pair
    assert fit["slope"] == pytest.approx(-1.0)
    assert fit["se"] is None                                  # no residual degrees of freedom
    empty = pma.grouped_loglog_fit(df.iloc[2:3], "x", "t", ["g"])
    assert empty["slope"] is None and empty["n_groups"] == 0


def test_stop_savings_count_each_reason():
    df = pd.DataFrame({"steps_run": [12000, 6000, 3000, 12000],
                       "stop_reason": ["max_steps", "no_memorization", "generalized", "max_steps"]})
    s = pma.stop_savings(df, 12000)
    assert s["steps_run"] == 33000 and s["steps_if_all_ran_to_budget"] == 48000
    assert s["saved_fraction"] == pytest.approx(0.3125)
    assert s["by_stop_reason"]["no_memorization"] == {"trials": 1, "steps_run": 6000, "steps_saved": 6000}
    assert s["by_stop_reason"]["max_steps"]["steps_saved"] == 0


def test_graph_disagreements_name_the_cell_and_both_graphs():
    base = {"detail": "x", "phase": "G", "t_memorize": 800.0, "t_generalize": np.nan, "final_id_acc": 0.9,
            "final_ood_acc": 0.1, "shortcut_best": 0.05, "interchange": np.nan}
    df = pd.DataFrame([{**base, "data.phi": 7.2, "data.seed": 0, "label": "true_grokking"},
                       {**base, "data.phi": 7.2, "data.seed": 1, "label": "no_grokking"},
                       {**base, "data.phi": 18.0, "data.seed": 0, "label": "no_grokking"},
                       {**base, "data.phi": 18.0, "data.seed": 1, "label": "no_grokking"}])
    out = pma.graph_disagreements(df, ["data.phi"])
    assert len(out) == 1 and out[0]["cell"] == {"data.phi": 7.2}
    assert out[0]["graphs"]["0"]["label"] == "true_grokking" and out[0]["graphs"]["1"]["label"] == "no_grokking"
    assert out[0]["graphs"]["1"]["t_generalize"] is None
