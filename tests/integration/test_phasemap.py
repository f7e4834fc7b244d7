"""The phase map against a real MLflow store holding runs with known labels.

The runs are real MLflow runs (created with the client, tagged and logged as the sweep
driver, the trial and the classifier write them), just not trained.
"""
from __future__ import annotations

import json
import math
import os
import re
import time

import pandas as pd
import pytest

from grokray import phasemap, tracking
from grokray.phasemap import (COLORS, EMPTY_COLOR, HATCH, cells, filter_label, format_table, log_phase_map,
                              phase_map, pivot, plot_phase_map, resolve_axes)
from grokray.phasemap.axes import fmt_value
from grokray.phasemap.table import breaks

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = math.nan
SWEEP, SWEEP_EXP = "demo", "grokking-exp"
SWEPT = ["data.phi", "data.augmentation", "seed"]

# phi, augmentation, seed -> label, censored, t_generalize, bridge (None: not logged), status
DEMO = [
    (3.6, "none", 0, "no_grokking", True, None, None, "FINISHED"),
    (3.6, "none", 1, "no_grokking", False, None, 0.1, "FINISHED"),
    (3.6, "both_full", 0, "true_grokking", False, 4000.0, 0.95, "FINISHED"),
    (3.6, "both_full", 1, "no_grokking", False, None, 0.2, "FINISHED"),
    (7.2, "none", 0, "fake_grokking", False, 3000.0, 0.05, "FINISHED"),
    (7.2, "none", 1, "true_grokking", False, 5000.0, 0.9, "FINISHED"),
    (7.2, "both_full", 0, "true_grokking", False, 2000.0, 0.97, "FINISHED"),
    (7.2, "both_full", 1, None, False, None, None, "RUNNING"),        # not labelled yet
]


# --------------------------------------------------------------------------- building a store

def _parent(client, exp_id: str, name: str, swept: list[str]) -> str:
    from mlflow.entities import Param

    run = client.create_run(exp_id, run_name=name, tags={"grokray.kind": "sweep", "grokray.sweep": name})
    client.log_batch(run.info.run_id, params=[Param("sweep.swept", ",".join(swept)), Param("sweep.method", "grid")])
    return run.info.run_id


def _trial(client, exp_id: str, *, params: dict, swept: dict | None = None, sweep: str | None = None,
           parent: str | None = None, label: str | None = None, censored: bool = False,
           t_generalize: float | None = None, bridge: float | None = None, status: str = "FINISHED",
           steps_run: int = 3000, lens_bridge: float = 0.33, i: int = 0) -> str:
    """One trial run as the trainer (+ the classifier, when ``label``) leave it."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {"grokray.kind": "trial"}
    if sweep:
        tags.update({"grokray.sweep": sweep, "grokray.trial_id": f"t{i:05d}",
                     "grokray.swept": json.dumps(swept, sort_keys=True), "mlflow.parentRunId": parent})
    name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in (swept or params).items())
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    last = steps_run if status == "FINISHED" else 700
    metrics = [Metric("acc/train", 0.5, 0, 100), Metric("acc/train", 1.0, 0, last),
               Metric("acc/test_inferred_id", 0.9, 0, last), Metric("acc/test_inferred_ood", 0.8 if t_generalize
                                                                        else 0.1, 0, last),
               Metric("lens/ood/bridge_found", lens_bridge, 0, last)]
    run_tags = []
    if status == "FINISHED":
        run_tags += [RunTag("grokray.steps_run", str(steps_run)), RunTag("grokray.max_steps", "3000"),
                     RunTag("grokray.stop_reason", "max_steps")]
    if label is not None:
        detail = {"true_grokking": "grokking", "fake_grokking": "grokking", "no_grokking": "memorization"}[label]
        run_tags += [RunTag(f"grokray.{k}", v) for k, v in {
            "label": label, "detail": "censored" if censored else detail, "confidence": "0.900",
            "classifier_version": "3", "censored": str(censored).lower(), "split": "ood"}.items()]
        verdict = {"t_memorize": 500.0, "t_generalize": t_generalize, "delay_ratio":
                   t_generalize / 500.0 if t_generalize else None, "bridge_given_correct": bridge,
                   "causal_r1": 0.5, "confidence": 0.9, "censored": float(censored)}
        metrics += [Metric(f"verdict/{k}", v, 0, steps_run) for k, v in verdict.items() if v is not None]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()], tags=run_tags)
    if status != "RUNNING":
        client.set_terminated(run_id, status=status)
    return run_id


def _config(phi, aug, seed, n_loops=2, extra=None) -> dict:
    return {"data.phi": phi, "data.augmentation": aug, "seed": seed, "model.n_loops": n_loops,
            "model.n_params": 1000 + 17 * n_loops, "train.max_steps": 3000, "train.lr": 0.001, **(extra or {})}


@pytest.fixture
def store(mlflow_uri):
    """The demo sweep (8 runs) in experiment ``grokking-exp`` with a loose trial beside it, an
    experiment named like the sweep, and a plain experiment ``other-exp``."""
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, SWEEP_EXP)
    parent = _parent(client, exp, SWEEP, SWEPT)
    ids = {}
    for i, (phi, aug, seed, label, cens, tgen, bridge, status) in enumerate(DEMO):
        swept = {"data.phi": phi, "data.augmentation": aug, "seed": seed}
        ids[(phi, aug, seed)] = _trial(client, exp, params=_config(phi, aug, seed), swept=swept, sweep=SWEEP,
                                       parent=parent, label=label, censored=cens, t_generalize=tgen, bridge=bridge,
                                       status=status, i=i)
    _trial(client, exp, params=_config(12.6, "none", 0), label="no_grokking")          # `grokray train`
    same_name = tracking.get_or_create_experiment(client, SWEEP)                         # loses to the sweep
    _trial(client, same_name, params=_config(1.0, "none", 0), label="no_grokking")
    other = tracking.get_or_create_experiment(client, "other-exp")
    for phi in (3.6, 7.2):
        for n_loops in (1, 2):
            _trial(client, other, params=_config(phi, "none", 0, n_loops=n_loops), label="true_grokking",
                   t_generalize=1000.0 * n_loops)
    return {"uri": mlflow_uri, "client": client, "parent": parent, "ids": ids, "exp": exp}


def _frame(rows: list[tuple], params: list[str]) -> pd.DataFrame:
    """An in-memory map (as phase_map returns) from (param values..., label, censored, t_generalize)."""
    n = len(params)
    df = pd.DataFrame([{**dict(zip(params, r[:n])), "label": r[n], "censored": r[n + 1], "t_generalize": r[n + 2],
                        "run_id": f"r{i}"} for i, r in enumerate(rows)],
                      columns=[*params, "label", "censored", "t_generalize", "run_id"])
    df.attrs["params"] = list(params)
    return df


# --------------------------------------------------------------------------- phase_map

def test_sweep_frame_columns_dtypes_and_values(store):
    df = phase_map(SWEEP, store["uri"])
    assert len(df) == len(DEMO)
    assert list(df.columns) == [*SWEPT, *phasemap.COLUMNS]
    assert df.attrs["params"] == SWEPT
    assert df.attrs["sweep"] == SWEEP and df.attrs["kind"] == "sweep" and df.attrs["experiment"] == SWEEP_EXP
    assert df.attrs["parent_run_id"] == store["parent"]
    dtypes = {c: str(t) for c, t in df.dtypes.items()}
    assert dtypes["data.phi"] == "float64" and dtypes["seed"] == "int64"
    assert pd.api.types.is_string_dtype(df["data.augmentation"])              # object, or str on pandas 3
    assert dtypes["label"] == "object" and df["label"].tolist()[-1] is None   # None, not NaN, when unlabelled
    for c in ("confidence", "t_memorize", "t_generalize", "delay_ratio", "final_train_acc", "final_id_acc",
              "final_ood_acc", "bridge_rate"):
        assert dtypes[c] == "float64", c
    assert dtypes["censored"] == "bool" and dtypes["steps_run"] == "int64"
    assert set(df["run_id"]) == set(store["ids"].values())

    by = {(r["data.phi"], r["data.augmentation"], r["seed"]): r for r in df.to_dict("records")}
    for phi, aug, seed, label, cens, tgen, bridge, status in DEMO:
        r = by[(phi, aug, seed)]
        assert r["run_id"] == store["ids"][(phi, aug, seed)]
        assert r["label"] == label and r["censored"] is cens and r["status"] == status
        assert r["run_name"] == f"phi={phi},augmentation={aug},seed={seed}"
        assert r["final_train_acc"] == 1.0 and r["final_id_acc"] == 0.9      # the latest step, not the first
        if label is None:                                                    # running, not classified
            assert r["detail"] is None and r["classifier_version"] is None and math.isnan(r["confidence"])
            assert r["steps_run"] == 700 and math.isnan(r["t_memorize"])
            assert r["bridge_rate"] == pytest.approx(0.33)                  # the lens metric meanwhile
            continue
        assert r["classifier_version"] == "3" and r["confidence"] == pytest.approx(0.9)
        assert r["detail"] == ("censored" if cens else "grokking" if label != "no_grokking" else "memorization")
        assert r["steps_run"] == 3000 and r["t_memorize"] == 500.0
        assert (math.isnan(r["t_generalize"]) if tgen is None else r["t_generalize"] == tgen)
        assert (math.isnan(r["delay_ratio"]) if tgen is None else r["delay_ratio"] == pytest.approx(tgen / 500))
        assert r["bridge_rate"] == pytest.approx(0.33 if bridge is None else bridge)  # verdict, else lens
        assert r["final_ood_acc"] == (0.8 if tgen else 0.1)


def test_swept_mapping_values_read_as_their_pairs(mlflow_uri):
    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "x")
    parent = _parent(client, exp, "dicts", ["data.augmentation", "train.weight_decay"])
    aug = {"hop1": {"ratio": 0.5, "k": 1}, "hop2": {"ratio": 0.0, "k": 0}}
    _trial(client, exp, params=_config(3.6, "hop1(0.5,1)+hop2(0,0)", 0), sweep="dicts", parent=parent,
           swept={"data.augmentation": aug, "train.weight_decay": 1}, label="no_grokking")
    _trial(client, exp, params={}, sweep="dicts", parent=parent, status="RUNNING", i=1,   # params not logged yet
           swept={"data.augmentation": aug, "train.weight_decay": 0.1})
    df = phase_map("dicts", mlflow_uri)
    # the same swept value is one cell key whether or not the run has logged its params yet
    keys = list(df["data.augmentation"])
    assert keys[0] == keys[1] and "hop1.k=1" in keys[0] and "hop1.ratio=0.5" in keys[0] and "{" not in keys[0]
    assert sorted(df["train.weight_decay"]) == [0.1, 1]                       # JSON types kept
    assert format_table(df, "train.weight_decay", facets=[]).splitlines()[1].split() == ["?", "0/1", "no", "1/1"]


def test_experiment_name_resolution(store):
    df = phase_map("other-exp", store["uri"])
    assert df.attrs["kind"] == "experiment" and df.attrs["sweep"] is None and df.attrs["experiment"] == "other-exp"
    assert df.attrs["params"] == ["data.phi", "model.n_loops"]                # differing config params only
    assert str(df["data.phi"].dtype) == "float64" and str(df["model.n_loops"].dtype) == "int64"
    assert len(df) == 4 and set(df["label"]) == {"true_grokking"}
    pv = pivot(df, "n_loops", "phi")
    assert pv["median_t_generalize"].tolist() == [1000.0, 2000.0, 1000.0, 2000.0]

    whole = phase_map(SWEEP_EXP, store["uri"])                               # sweep children + loose trial
    assert len(whole) == len(DEMO) + 1 and "data.phi" in whole.attrs["params"]
    assert "model.n_params" not in whole.attrs["params"]


def test_sweep_name_wins_over_experiment_name(store):
    df = phase_map(SWEEP, store["uri"])                                       # experiment "demo" exists too
    assert df.attrs["kind"] == "sweep" and len(df) == len(DEMO)


def test_unknown_name_is_a_lookup_error(store):
    with pytest.raises(LookupError) as err:
        phase_map("no-such-thing", store["uri"])
    msg = str(err.value)
    assert "'no-such-thing'" in msg and store["uri"] in msg and "\n" not in msg


# --------------------------------------------------------------------------- pivot / table / filter

# (augmentation, phi) -> label, n_label, n, tie, n_true, n_fake, n_no, n_unlabelled, n_censored, median t_gen
EXPECTED_CELLS = {
    ("none", 3.6): ("no_grokking", 2, 2, False, 0, 0, 2, 0, 1, NAN),
    ("both_full", 3.6): ("no_grokking", 1, 2, True, 1, 0, 1, 0, 0, 4000.0),     # tie true/no -> no
    ("none", 7.2): ("fake_grokking", 1, 2, True, 1, 1, 0, 0, 0, 4000.0),        # tie true/fake -> fake
    ("both_full", 7.2): ("true_grokking", 1, 2, False, 1, 0, 0, 1, 0, 2000.0),  # unlabelled runs do not vote
}


def test_pivot_majority_and_counts(store):
    df = phase_map(SWEEP, store["uri"])
    pv = pivot(df, "phi", "augmentation")                                     # short names resolve
    assert pv.index.names == ["data.augmentation", "data.phi"]
    assert set(pv.index) == set(EXPECTED_CELLS)
    for cell, want in EXPECTED_CELLS.items():
        row = pv.loc[cell]
        got = (row["label"], row["n_label"], row["n"], row["tie"], row["n_true_grokking"], row["n_fake_grokking"],
               row["n_no_grokking"], row["n_unlabelled"], row["n_censored"])
        assert got == want[:-1], cell
        assert (math.isnan(row["median_t_generalize"]) if math.isnan(want[-1])
                else row["median_t_generalize"] == want[-1]), cell
    one_axis = pivot(df, "data.augmentation", facets=[])                     # aggregated over phi
    assert one_axis.loc["none", "n"] == 4 and one_axis.loc["none", "label"] == "no_grokking"
    assert one_axis.loc["both_full", "label"] == "true_grokking"
    faceted = pivot(df, "data.augmentation")                                  # phi varies: a facet by default
    assert faceted.index.names == ["data.phi", "data.augmentation"] and len(faceted) == 4


@pytest.mark.parametrize("labels, want", [
    (["true_grokking", "no_grokking"], ("no_grokking", 1, True)),
    (["true_grokking", "fake_grokking"], ("fake_grokking", 1, True)),
    (["fake_grokking", "no_grokking"], ("no_grokking", 1, True)),
    (["true_grokking", "fake_grokking", "no_grokking"], ("no_grokking", 1, True)),
    (["true_grokking", "true_grokking", "no_grokking", "no_grokking", "fake_grokking"], ("no_grokking", 2, True)),
    (["true_grokking", "true_grokking", "no_grokking"], ("true_grokking", 2, False)),
    (["true_grokking", None, None], ("true_grokking", 1, False)),
    ([None, None], (None, 0, False)),
    ([], (None, 0, False)),
])
def test_tie_rule(labels, want):
    assert phasemap.majority(labels) == want


def test_filter_label(store):
    df = phase_map(SWEEP, store["uri"])
    assert len(filter_label(df, "true_grokking")) == 3 and len(filter_label(df, "true")) == 3
    assert len(filter_label(df, "fake")) == 1 and len(filter_label(df, "no_grokking")) == 3
    running = filter_label(df, None)
    assert running["status"].tolist() == ["RUNNING"] and len(filter_label(df, "unlabelled")) == 1
    assert filter_label(df, "no").attrs["params"] == SWEPT
    with pytest.raises(ValueError, match="true_grokking"):
        filter_label(df, "grokked")


def test_format_table(store):
    df = phase_map(SWEEP, store["uri"])
    text = format_table(df, "data.phi", "data.augmentation")
    lines = text.splitlines()
    assert lines[:3] == ["data.augmentation \\ data.phi  3.6      7.2",
                         "both_full                     no 1/2   true 1/2",
                         "none                          no* 2/2  fake 1/2"]
    assert "\n".join(lines[3:]) == phasemap.TABLE_LEGEND
    assert "ties -> no > fake > true" in lines[3] and "undetermined" in lines[5] and "Liu et al." in lines[6]
    single = format_table(df, "augmentation", facets=[]).splitlines()
    assert single[:2] == ["data.augmentation  both_full  none", "                   true 2/4   no* 2/4"]
    faceted = format_table(df, "augmentation").split("\n\n")                 # one table per phi
    assert [b.splitlines()[0] for b in faceted] == ["[data.phi=3.6]", "[data.phi=7.2]"]


def test_bad_axis_names_list_the_parameters(store):
    df = phase_map(SWEEP, store["uri"])
    for call in (lambda: pivot(df, "phy"), lambda: format_table(df, "data.phi", "aug"),
                 lambda: cells(df, "nope"), lambda: pivot(df, "phi", "phi")):
        with pytest.raises(ValueError, match="data.phi, data.augmentation, seed"):
            call()


# --------------------------------------------------------------------------- cells / PNG

def test_cells_colours_hatches_and_texts(store, tmp_path):
    df = phase_map(SWEEP, store["uri"])
    assert resolve_axes(df) == ("data.phi", "data.augmentation", [])   # 2 vs 2 values: sweep order; seed aggregated
    grid = cells(df)
    assert grid.attrs["x_levels"] == [3.6, 7.2] and grid.attrs["y_levels"] == ["both_full", "none"]
    assert grid.attrs["panels"] == [""]
    got = {(r["y_value"], r["x_value"]): (r["row"], r["col"], r["color"], r["hatch"], r["text"])
           for r in grid.to_dict("records")}
    assert got == {
        ("both_full", 3.6): (0, 0, COLORS["no_grokking"], "", "4k\n1/2"),
        ("both_full", 7.2): (0, 1, COLORS["true_grokking"], "", "2k\n1/2"),
        ("none", 3.6): (1, 0, COLORS["no_grokking"], HATCH, "-\n2/2"),
        ("none", 7.2): (1, 1, COLORS["fake_grokking"], "", "4k\n1/2"),
    }
    # only the running run: a grey, unlabelled cell
    running = cells(filter_label(df, None), "data.phi", "data.augmentation")
    assert running["color"].tolist() == [COLORS[None]] and running["text"].tolist() == ["-\n0/1"]

    path = plot_phase_map(df, tmp_path / "map.png")
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_facets_when_three_parameters_vary(tmp_path):
    rows = [(phi, aug, loops, seed, "true_grokking" if loops == 2 and phi > 5 else "no_grokking", False,
             1000.0 * loops if loops == 2 and phi > 5 else NAN)
            for phi in (3.6, 7.2, 12.6) for aug in ("none", "both_full") for loops in (1, 2) for seed in (0, 1)]
    rows = [r for r in rows if not (r[0] == 12.6 and r[1] == "none" and r[2] == 1)]   # a hole in the grid
    df = _frame(rows, ["data.phi", "data.augmentation", "model.n_loops", "seed"])
    x, y, facets = resolve_axes(df)
    assert (x, y, facets) == ("data.phi", "data.augmentation", ["model.n_loops"])      # 3 > 2 > 2 values
    grid = cells(df)
    assert grid.attrs["panels"] == ["model.n_loops=1", "model.n_loops=2"]
    assert len(grid) == 2 * 3 * 2                                            # every panel: the full grid
    hole = grid[(grid["panel"] == "model.n_loops=1") & (grid["x_value"] == 12.6) & (grid["y_value"] == "none")]
    assert hole[["color", "text", "n"]].values.tolist() == [[EMPTY_COLOR, "", 0]]
    grok = grid[(grid["panel"] == "model.n_loops=2") & (grid["x_value"] == 7.2)]
    assert set(grok["color"]) == {COLORS["true_grokking"]} and set(grok["text"]) == {"2k\n2/2"}
    assert format_table(df, "phi", "augmentation").count("[model.n_loops=") == 2
    assert "." in format_table(df, "phi", "augmentation").split("\n\n")[0].splitlines()[-1].split()  # the hole
    pv = pivot(df, "phi", "augmentation")
    assert pv.index.names == ["model.n_loops", "data.augmentation", "data.phi"] and len(pv) == 11

    data = open(plot_phase_map(df, tmp_path / "facets.png"), "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_one_and_zero_parameters_and_binning(tmp_path):
    one = _frame([(3.6, "no_grokking", True, NAN), (7.2, "true_grokking", False, 900.0)], ["data.phi"])
    grid = cells(one)
    assert (grid.attrs["x"], grid.attrs["y"]) == ("data.phi", None) and grid["row"].tolist() == [0, 0]
    assert grid["text"].tolist() == ["-\n1/1", "900\n1/1"] and grid["hatch"].tolist() == [HATCH, ""]
    assert open(plot_phase_map(one, tmp_path / "one.png"), "rb").read()[:8] == PNG_MAGIC

    zero = _frame([("true_grokking", False, 1500.0), ("true_grokking", False, 2500.0), (None, False, NAN)], [])
    grid = cells(zero)
    assert len(grid) == 1 and grid["text"].tolist() == ["2k\n2/3"] and grid.attrs["x"] is None
    assert format_table(zero, None).splitlines()[:2] == ["all runs", "true 2/3"]
    assert open(plot_phase_map(zero, tmp_path / "zero.png"), "rb").read()[:8] == PNG_MAGIC

    wd = [10 ** (-3 + 3 * i / 39) for i in range(40)]                        # a random sweep: 40 distinct values
    cont = _frame([(w, "true_grokking" if w > 0.05 else "no_grokking", False, NAN) for w in wd],
                  ["train.weight_decay"])
    grid = cells(cont)
    assert len(grid) == phasemap.N_BINS and grid["n"].sum() == 40
    assert grid["x_value"].iloc[0] == "0.001..0.00316"
    assert grid["label"].tolist()[0] == "no_grokking" and grid["label"].tolist()[-1] == "true_grokking"


def test_empty_map_plots(tmp_path):
    df = _frame([], ["data.phi"])
    assert format_table(df, "data.phi").splitlines()[0] == "data.phi"
    assert open(plot_phase_map(df, tmp_path / "empty.png"), "rb").read()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- sizes sweeps really have

# Swept values as the phase map reads them (grokray.sweep.naming): named groups by their name,
# unnamed mappings by the pairs in which they differ.
MODELS = [{"n_layers": a, "n_loops": b, "d_model": d} for a, b, d in
          [(1, 2, 128), (2, 1, 128), (1, 4, 256), (4, 1, 256), (2, 2, 64), (1, 8, 64), (8, 1, 512), (3, 3, 96)]]
AUGS = [{"hop1": {"ratio": r1, "k": k1}, "hop2": {"ratio": r2, "k": k2}} for r1, k1, r2, k2 in
        [(1, 7, 1, 1), (1, 7, 1, 4), (0.5, 3, 0, 0), (0.25, 1, 1, 2), (1, 1, 0.5, 7), (0, 0, 1, 7), (0.75, 5, 0.25, 3),
         (1, 2, 1, 3)]]
DATA = [{"name": "shortcut", "augmentation": "hop2_full", "phi": 3.6}, {"name": "clean", "augmentation": "none"}]
LONG = "a_category_name_without_any_comma_that_goes_on_and_on_for_seventy_characters"


def _names(values: list) -> list[str]:
    from grokray.sweep.naming import value_label
    return [value_label(v, values) for v in values]


def _map(xs: list, ys: list | None, x: str, y: str | None, facet: tuple[str, list] | None = None,
         seeds: int = 1) -> pd.DataFrame:
    """A full grid of runs over ``xs`` x ``ys`` (x ``facet`` values, x ``seeds``), every label, some
    censored, some unlabelled."""
    labels = ["true_grokking", "fake_grokking", "no_grokking", None]
    rows = []
    for f in (facet[1] if facet else [None]):
        for i, xv in enumerate(xs):
            for j, yv in enumerate(ys or [None]):
                for s in range(seeds):
                    rows.append(((xv, yv, f, s)[:2 if y else 1] + ((f,) if facet else ()) + (s,) +
                                 (labels[(i + 2 * j + s) % 4], (i + j) % 5 == 0,
                                  1000.0 * (i + 1) * (j + 1) * 7 if (i + j) % 3 else NAN)))
    params = [x] + ([y] if y else []) + ([facet[0]] if facet else []) + ["seed"]
    df = _frame(rows, params)
    df.attrs["sweep"] = "a-sweep-with-a-rather-long-name-for-its-title"
    return df


MAPS = {   # name: (frame, x, y, widest table line allowed)
    "named groups": (_map(_names(DATA), ["none", "both_full"], "data", "data.augmentation"), "data",
                     "data.augmentation", 100),
    "unnamed pairs": (_map(_names(MODELS[:2]), ["none", "both_full", "hop2_full"], "model", "data.augmentation"),
                      "model", "data.augmentation", 100),
    "long 4x3": (_map(_names(MODELS[:4]), _names(AUGS[:3]), "model", "data.augmentation"), "model",
                 "data.augmentation", 100),
    # 8 columns of "fake* 1/1" cannot fit 100 characters beside a row label: keys keep it near
    "long 8x8": (_map(_names(MODELS), _names(AUGS), "model", "data.augmentation"), "model", "data.augmentation",
                 30 + 8 * (len("fake* 1/1") + 2)),
    "long y 8x8": (_map(_names(MODELS), _names(AUGS), "data.augmentation", "model"), "data.augmentation",
                   "model", 30 + 8 * (len("fake* 1/1") + 2)),
    "numbers 8x8, 3 seeds": (_map([0.001 * 2 ** i for i in range(8)], [1.8 * (i + 1) for i in range(8)],
                                  "train.weight_decay", "data.phi", seeds=3), "train.weight_decay", "data.phi", 100),
    "no commas": (_map([LONG, "short"], [LONG + "_as_a_row", "s"], "data.augmentation", "train.lr_schedule"),
                  "data.augmentation", "train.lr_schedule", 100),
    "facets": (_map(_names(MODELS[:4]), [0.01, 0.1, 1.0], "model", "train.weight_decay",
                    facet=("data.augmentation", _names(AUGS[:5]))), "model", "train.weight_decay", 100),
    "one parameter, 8 long values": (_map(_names(AUGS), None, "data.augmentation", None), "data.augmentation",
                                     None, 30 + 8 * (len("fake* 1/1") + 2)),
}


def _texts(fig):
    """Every visible, non-empty text of a drawn figure with its box in pixels."""
    from matplotlib.text import Text
    renderer = fig.canvas.get_renderer()
    return [(t.get_text(), t.get_window_extent(renderer), t.get_fontsize()) for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip()]


@pytest.mark.parametrize("case", list(MAPS))
def test_picture_texts_fit_and_never_overlap(case, tmp_path):
    import warnings

    from grokray.plots import plt
    df, x, y, _ = MAPS[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # e.g. "constrained layout not applied"
        fig = phasemap.phase_map_figure(df, x, y)
        try:
            fig.canvas.draw()
            texts = _texts(fig)
            w, h = fig.bbox.width, fig.bbox.height
            fig.savefig(tmp_path / "map.png", dpi=phasemap.DPI)
        finally:
            plt.close(fig)
    assert (tmp_path / "map.png").read_bytes()[:8] == PNG_MAGIC
    grid = cells(df, x, y)
    assert len([t for t in texts if re.fullmatch(r"\S+\n\d+/\d+", t[0])]) == (grid["n"] > 0).sum()  # each cell's
    outside = [t for t, b, _ in texts if b.x0 < -0.5 or b.y0 < -0.5 or b.x1 > w + 0.5 or b.y1 > h + 0.5]
    assert not outside, outside
    overlapping = [(a[0], b[0]) for i, a in enumerate(texts) for b in texts[i + 1:]
                   if _intersect(a[1], b[1])]
    assert not overlapping, overlapping[:5]
    assert min(size for _, _, size in texts) >= 8                      # readable, never shrunk to fit
    assert w <= 30 * phasemap.DPI + 1 and h <= 30 * phasemap.DPI + 1


def _intersect(a, b, tol: float = 0.5) -> bool:
    return a.x0 + tol < b.x1 and b.x0 + tol < a.x1 and a.y0 + tol < b.y1 and b.y0 + tol < a.y1


@pytest.mark.parametrize("case", list(MAPS))
def test_tick_labels_wrap_whole_values(case):
    df, x, y, _ = MAPS[case]
    grid = cells(df, x, y)
    fig = phasemap.phase_map_figure(df, x, y)
    try:
        ax = fig.axes[0]
        shown = [t.get_text() for t in ax.get_xticklabels()] + [t.get_text() for t in ax.get_yticklabels()]
    finally:
        from grokray.plots import plt
        plt.close(fig)
    values = [fmt_value(v) for v in grid.attrs["x_levels"]] + (
        [fmt_value(v) for v in grid.attrs["y_levels"]] if y else [""])
    for label, value in zip(shown, values):
        lines = label.split("\n")
        assert len(lines) <= phasemap.LABEL_LINES
        assert "".join(lines) == value or ("".join(lines)[:-1] in value and label.endswith("\u2026")), (label, value)


@pytest.mark.parametrize("case", list(MAPS))
def test_table_stays_narrow_and_keeps_every_value(case):
    df, x, y, widest = MAPS[case]
    text = format_table(df, x, y)
    lines = text.splitlines()
    assert max(map(len, lines)) <= widest, "\n" + text
    legend = text.index(phasemap.TABLE_LEGEND)
    assert text.endswith(phasemap.TABLE_LEGEND) and legend > 0
    grid = cells(df, x, y)
    for v in [*grid.attrs["x_levels"], *(grid.attrs["y_levels"] if y else [])]:
        for piece in re.split(r"[,._=]", fmt_value(v)):              # every value, whole or wrapped
            assert piece in text, (piece, text)
    n_rows = len(grid.attrs["y_levels"]) * len(grid.attrs["panels"])
    assert sum(1 for ln in lines if re.search(r"\b\d+/\d+\b", ln)) == n_rows   # one line of cells per row


def test_table_keys_explain_the_columns_they_replace():
    df, x, y, _ = MAPS["long 8x8"]
    text = format_table(df, x, y)
    header = text.splitlines()[0].split()
    assert header[-8:] == [f"x{i}" for i in range(1, 9)]
    for i, name in enumerate(cells(df, x, y).attrs["x_levels"], start=1):      # in the table's column order
        assert f"x{i} = {name}" in text.replace("\n", " ")
    # a table that fits keeps its labels on one header line
    small = format_table(*MAPS["unnamed pairs"][:3])
    assert small.splitlines()[0].split()[-2:] == _names(MODELS[:2])


def test_breaks_after_commas_then_dots():
    assert breaks("n_layers=1,n_loops=2,d_model=128", 12) == ["n_layers=1,", "n_loops=2,", "d_model=128"]
    assert breaks("model.n_loops=1, data.augmentation=none", 20) == ["model.n_loops=1,", "data.augmentation=",
                                                                     "none"]
    assert breaks("train.weight_decay", 10) == ["train.", "weight_", "decay"]
    assert breaks("short", 10) == ["short"] and breaks("", 10) == [""]


# --------------------------------------------------------------------------- log_phase_map

def test_log_phase_map_artifacts_on_the_parent(store, tmp_path):
    client, parent = store["client"], store["parent"]
    log_phase_map(store["uri"], parent, SWEEP, SWEEP_EXP)
    names = sorted(a.path for a in client.list_artifacts(parent, "phase_map"))
    assert names == ["phase_map/phase_map.csv", "phase_map/phase_map.png", "phase_map/phase_map.txt",
                     "phase_map/phase_map_phases.png"]

    from mlflow.entities import RunTag
    running = store["ids"][(7.2, "both_full", 1)]
    client.log_batch(running, tags=[RunTag("grokray.label", "no_grokking"), RunTag("grokray.censored", "true")])
    log_phase_map(store["uri"], parent, SWEEP, SWEEP_EXP)                     # replaces the previous files
    csv = pd.read_csv(client.download_artifacts(parent, "phase_map/phase_map.csv", str(tmp_path)))
    assert len(csv) == len(DEMO) and list(csv.columns) == [*SWEPT, *phasemap.COLUMNS]
    assert csv.loc[csv["run_id"] == running, "label"].tolist() == ["no_grokking"]
    png = client.download_artifacts(parent, "phase_map/phase_map.png", str(tmp_path))
    assert open(png, "rb").read()[:8] == PNG_MAGIC
    txt = open(client.download_artifacts(parent, "phase_map/phase_map.txt", str(tmp_path))).read()
    assert "no* 1/2" in txt                                                    # (both_full, 7.2): tie -> no, censored


# --------------------------------------------------------------------------- many runs: one search

N_RUNS = int(os.environ.get("GROKRAY_TEST_PHASEMAP_RUNS", "250"))   # 1000: ~35 s to create in sqlite


def test_many_runs_one_search(mlflow_uri, monkeypatch, tmp_path):
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking import MlflowClient

    client = tracking.get_client(mlflow_uri)
    exp = tracking.get_or_create_experiment(client, "big")
    swept_keys = ["data.phi", "train.weight_decay", "model.n_loops", "seed"]
    parent = _parent(client, exp, "big", swept_keys)
    grid = [(phi, wd, loops, seed) for phi in (1.8, 3.6, 5.4, 7.2, 9.0) for wd in (0.01, 0.03, 0.1, 0.3, 1.0)
            for loops in (1, 2) for seed in range(100)]
    grid = sorted(grid, key=lambda g: (g[3], g))[:N_RUNS]
    t0 = time.perf_counter()
    expected = []
    for i, (phi, wd, loops, seed) in enumerate(grid):
        label = ("true_grokking" if phi * wd * loops > 1.5 else "fake_grokking" if phi * wd > 0.5
                 else "no_grokking")
        swept = dict(zip(swept_keys, (phi, wd, loops, seed)))
        run_id = client.create_run(exp, run_name=f"t{i}", tags={
            "grokray.kind": "trial", "grokray.sweep": "big", "grokray.trial_id": f"t{i}",
            "grokray.swept": json.dumps(swept), "mlflow.parentRunId": parent}).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in swept.items()],
                         metrics=[Metric("acc/train", 1.0, 0, 3000),
                                  Metric("verdict/t_generalize", 100.0 * i, 0, 3000)],
                         tags=[RunTag("grokray.label", label), RunTag("grokray.censored", "false"),
                               RunTag("grokray.steps_run", "3000")])
        expected.append({**swept, "label": label})
    created = time.perf_counter() - t0

    calls: dict[str, int] = {}
    filters: list[str] = []

    def spy(cls, name):
        real = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            calls[f"{cls.__name__}.{name}"] = calls.get(f"{cls.__name__}.{name}", 0) + 1
            if name == "search_runs" and cls is MlflowClient:
                filters.append(kwargs.get("filter_string", args[1] if len(args) > 1 else ""))
            return real(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, wrapper)

    spy(MlflowClient, "search_runs")
    for name in ("_search_runs", "get_run", "get_metric_history", "search_experiments", "get_experiment",
                 "get_experiment_by_name", "get_param", "get_metric"):
        if hasattr(SqlAlchemyStore, name):
            spy(SqlAlchemyStore, name)
    t0 = time.perf_counter()
    df = phase_map("big", mlflow_uri)
    read = time.perf_counter() - t0
    print(f"\n{len(grid)} runs: created in {created:.1f} s, phase_map read in {read:.2f} s, store calls {calls}")

    assert len(df) == len(grid) and df.attrs["params"] == swept_keys
    trial_searches = [f for f in filters if "'trial'" in f]
    assert len(trial_searches) == 1 and calls["MlflowClient.search_runs"] == 2   # the parent, then the trials
    assert calls["SqlAlchemyStore._search_runs"] == 2 and calls.get("SqlAlchemyStore.search_experiments") == 1
    assert sum(v for k, v in calls.items() if "search" not in k) == 0          # no per-run request
    assert read < 0.01 * len(grid) + 1.0

    got = df[[*swept_keys, "label"]].sort_values(swept_keys).reset_index(drop=True)
    want = pd.DataFrame(expected)[[*swept_keys, "label"]].sort_values(swept_keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)

    pv = pivot(df, "phi", "weight_decay")                                    # n_loops: facets; seeds aggregated
    assert pv.index.names == ["model.n_loops", "train.weight_decay", "data.phi"]
    want_counts = want.groupby(["model.n_loops", "train.weight_decay", "data.phi"]).size()
    assert pv["n"].sort_index().tolist() == want_counts.sort_index().tolist()
    assert (pv["n_label"] == pv["n"]).all()                                  # labels depend on the cell only
    t0 = time.perf_counter()
    data = open(plot_phase_map(df, tmp_path / "big.png"), "rb").read()
    assert data[:8] == PNG_MAGIC
    print(f"plot in {time.perf_counter() - t0:.2f} s")


# --------------------------------------------------------------------------- the command line

def _cli(*args, cwd):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "grokray", "phase-map", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, timeout=300)


def test_cli_table_png_csv_and_json(store, tmp_path):
    out = _cli(SWEEP, "--x", "data.phi", "--y", "data.augmentation", "--csv", "runs.csv",
               "--tracking-uri", store["uri"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    df = phase_map(SWEEP, store["uri"])
    assert format_table(df, "data.phi", "data.augmentation") in out.stdout
    assert list(tmp_path.glob("*.png")) == []                   # a picture only where asked
    assert "--png FILE" not in out.stdout.splitlines()[-1] and out.stdout.splitlines()[-1] == "runs: runs.csv"
    csv = pd.read_csv(tmp_path / "runs.csv")
    assert len(csv) == len(df) == len(DEMO) and sorted(csv["run_id"]) == sorted(df["run_id"])

    js = _cli(SWEEP, "--json", "--png", "m.png", "--tracking-uri", store["uri"], cwd=tmp_path)
    assert js.returncode == 0, js.stderr
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    assert len(rows) == len(DEMO)
    assert sorted((r["run_id"], r["label"]) for r in rows) == sorted(
        (rid, None if pd.isna(lab) else lab) for rid, lab in zip(df["run_id"], df["label"]))
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC


def test_cli_bad_axis_is_one_line(store, tmp_path):
    out = _cli(SWEEP, "--x", "data.nope", "--tracking-uri", store["uri"], cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith("grokray: error: ") and "data.nope" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and list(tmp_path.glob("*.png")) == []


def test_graphs_are_not_outvoted_and_the_phase_is_shown():
    """Issue 20: two graphs that disagree read true|no (not `no 1/2`); Liu et al.'s phase beside the label;
    an undetermined run stars its cell; per-cell spreads over seeds for a notebook."""
    import pandas as pd

    df = pd.DataFrame({"data.phi": [7.2] * 4 + [3.6] * 2, "data.seed": [0, 0, 1, 1, 0, 1], "seed": [0, 1] * 3,
                       "label": ["true_grokking", "true_grokking", "no_grokking", "no_grokking", "no_grokking",
                                 "no_grokking"],
                       "phase": ["grokking", "grokking", "comprehension", "comprehension", "memorization",
                                 "memorization"],
                       "determined": [True, True, True, True, False, True], "censored": [False] * 6,
                       "t_generalize": [4000.0, 6000.0, 900.0, 1100.0, float("nan"), float("nan")]})
    df.attrs["params"] = ["data.phi", "data.seed", "seed"]
    pv = pivot(df, "data.phi")
    hi, lo = pv.loc[7.2], pv.loc[3.6]
    assert hi["graph_labels"] == {0: "true_grokking", 1: "no_grokking"} and not hi["graphs_agree"]
    assert lo["graphs_agree"] and lo["n_undetermined"] == 1
    assert (hi["median_t_generalize"], hi["min_t_generalize"], hi["max_t_generalize"]) == (2550.0, 900.0, 6000.0)
    table = format_table(df, "data.phi").splitlines()
    assert table[1].split() == ["no*", "2/2", "M", "true|no", "2/4", "C"]   # phase ties: the weaker claim
    by_graph = format_table(df, "data.phi", facets=["data.seed"]).split("\n\n")
    assert [b.splitlines()[0] for b in by_graph] == ["[data.seed=0]", "[data.seed=1]"]
    assert by_graph[0].splitlines()[2].split()[3:5] == ["true", "2/2"]


def test_colour_by_phase_and_two_facets_as_a_table_of_panels():
    """Issue 20: the map at its real size reads as Liu et al.'s phase diagram: cells coloured by
    phase (the label written in them), and weight decay x graph laid out as a table of panels
    (weight decay across, graphs down), not one long row."""
    import pandas as pd

    from grokray.phasemap.axes import PHASE_COLORS
    from grokray.plots import plt
    rows = [(wd, g, aug, phi, "no_grokking", "memorization" if phi < 7 else "comprehension")
            for wd in (0.1, 0.3, 1.0) for g in (0, 1) for aug in ("none", "both_full") for phi in (3.6, 12.6)]
    df = pd.DataFrame(rows, columns=["train.weight_decay", "data.seed", "data.augmentation", "data.phi", "label",
                                     "phase"])
    df = df.assign(t_generalize=[float("nan") if r[3] < 7 else 2000.0 for r in rows], censored=False, determined=True)
    df.attrs["params"] = ["train.weight_decay", "data.seed", "data.augmentation", "data.phi"]
    xy, facets = ("data.phi", "data.augmentation"), ["train.weight_decay", "data.seed"]
    grid = cells(df, *xy, facets=facets, color_by="phase")
    got = {(r["panel"], r["y_value"], r["x_value"]): (r["color"], r["text"]) for r in grid.to_dict("records")}
    assert got[("train.weight_decay=0.1, data.seed=0", "none", 3.6)] == (PHASE_COLORS["memorization"], "-\n1/1 no")
    assert got[("train.weight_decay=1, data.seed=1", "both_full", 12.6)] == (PHASE_COLORS["comprehension"],
                                                                              "2k\n1/1 no")
    assert grid.attrs["panel_index"] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    with pytest.raises(ValueError, match="color_by"):
        cells(df, *xy, color_by="rainbow")
    fig = phasemap.phase_map_figure(df, *xy, facets=facets, color_by="phase")
    try:
        boxes = [ax.get_position() for ax in fig.axes]
    finally:
        plt.close(fig)
    assert len(boxes) == 6
    assert boxes[0].x0 == pytest.approx(boxes[1].x0) and boxes[1].y0 < boxes[0].y0       # graph 1 below graph 0
    assert boxes[2].y0 == pytest.approx(boxes[0].y0) and boxes[2].x0 > boxes[0].x0       # next weight decay right
    assert boxes[4].x0 > boxes[2].x0
