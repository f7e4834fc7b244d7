"""The run-phase map: every run's label over the swept parameters, as a table and a picture.

:func:`phase_map` reads a sweep (or a whole MLflow experiment) into a DataFrame with
one row per trial run: the swept values, the label (``true_grokking`` /
``fake_grokking`` / ``no_grokking``, ``None`` while unlabelled), the verdict's steps and
the final accuracies. One experiment listing and one run search resolve the name, one
paged run search fetches every trial run (a thousand runs: one request); nothing is
requested per run.

Views of that frame:

* :func:`pivot`: per cell, the majority label, counts per label, ``n``, ``n_censored``
  and the median ``t_generalize``;
* :func:`format_table`: the same as a terminal table (``true 2/3``, ``no* 1/1``);
* :func:`plot_phase_map`: a phase-diagram PNG, small multiples when more than two
  parameters vary; :func:`cells` computes what it draws (colour, hatch, text per cell);
* :func:`log_phase_map`: CSV + PNG (+ the text table) on the sweep's parent run under
  ``phase_map/``; the sweep driver refreshes it as labels arrive.

Where each lives (all importable from ``grokray.phasemap``): reading the store into the frame
in :mod:`grokray.phasemap.read`, axes and cells in :mod:`grokray.phasemap.axes`, the table in
:mod:`grokray.phasemap.table`, the picture in :mod:`grokray.phasemap.figure`, the parent run's
artifacts in :mod:`grokray.phasemap.artifacts`.

Rules shared by every view:

* **Replicates are aggregated, everything else is separated.** A parameter whose last
  dotted segment is ``seed`` (``seed``, ``data.seed``) is a replicate: the runs of a cell
  differ only in it. Every other parameter that takes more than one value is an axis
  (``x`` columns, ``y`` rows) or a facet (one table / panel per combination). Pass
  ``facets=[]`` to aggregate over the non-axis parameters instead.
* **Majority label, ties to the weaker claim.** A cell's label is the most frequent
  label among its labelled runs; a tie goes to the label that claims less, in the order
  ``no_grokking`` > ``fake_grokking`` > ``true_grokking`` (:data:`TIE_ORDER`): a cell
  claims grokking only when most of its runs do. A cell whose runs are all unlabelled
  has label ``None``.
* **Graphs are not replicates.** ``data.seed`` draws the graph and its split: a cell aggregates
  over graphs but shows each graph's own majority when they disagree (``true|no``), never a
  ``no 1/2`` that hides it; ``grokray phase-map NAME --by data.seed`` (``facets=[..., "data.seed"]``)
  splits the map by graph.
* **Undetermined** runs (censored at the step budget, ``semi``, or still rising at its end: they
  might still grok); a cell with at least one is starred in the table and hatched in the picture.
* **Liu et al.'s phase** (grokking / comprehension / memorization / confusion, the verdict's
  ``phase``) is shown beside the label: ``G``/``C``/``M``/``X``.
* **Default axes** (:func:`resolve_axes`): ``x`` is the non-replicate parameter with the
  most distinct values, ``y`` the next one (ties: the order the sweep lists them); the
  rest are facets. Replicates are an axis only when nothing else varies.
* Numeric parameters with more than :data:`MAX_LEVELS` distinct values (random or
  optuna sweeps) are binned into :data:`N_BINS` intervals (log-spaced when positive and
  spanning a decade or more).

Example (a hand-made frame; :func:`phase_map` gives the real one):

    >>> import pandas as pd
    >>> df = pd.DataFrame({"data.phi": [3.6, 3.6, 7.2, 7.2, 7.2],
    ...                    "seed": [0, 1, 0, 1, 2],
    ...                    "label": ["no_grokking", "no_grokking", "true_grokking", "true_grokking", None],
    ...                    "censored": [True, False, False, False, False],
    ...                    "t_generalize": [float("nan"), float("nan"), 4000.0, 6000.0, float("nan")]})
    >>> pv = pivot(df, "data.phi")        # seeds are replicates: aggregated per cell
    >>> row = pv.loc[7.2]
    >>> row["label"], int(row["n_label"]), int(row["n"]), float(row["median_t_generalize"])
    ('true_grokking', 2, 3, 5000.0)
    >>> print(format_table(df, "data.phi"))  # doctest: +ELLIPSIS
    data.phi  3.6      7.2
              no* 2/2  true 2/3
    true/fake/no = majority label (ties -> no > fake > true), ? = unlabelled;
    ...
    >>> # df = phase_map("phi-by-augmentation")              # a sweep name, or an experiment name
    >>> # plot_phase_map(df, "phase_map.png")                # x / y / facets chosen as above
"""
from __future__ import annotations

from grokray.phasemap.artifacts import log_phase_map
from grokray.phasemap.axes import (COLORS, EMPTY_COLOR, GRAPH, HATCH, MAX_LEVELS, N_BINS, PHASE_LETTERS,
                                   PHASE_TIE_ORDER, PIVOT_COLUMNS, TIE_ORDER, cells, filter_label, is_replicate,
                                   majority, params_of, pivot, resolve_axes)
from grokray.phasemap.figure import DPI, LABEL_LINES, X_LABEL_CHARS, Y_LABEL_CHARS, phase_map_figure, plot_phase_map
from grokray.phasemap.read import COLUMNS, CRITERION_COLUMNS, FLOAT_COLUMNS, NOT_CONFIG, phase_map
from grokray.phasemap.table import HEADER_LINES, ROW_CHARS, TABLE_LEGEND, TABLE_WIDTH, format_table
from grokray.verdict import LABELS

__all__ = ["phase_map", "pivot", "filter_label", "format_table", "plot_phase_map", "phase_map_figure", "cells",
           "log_phase_map", "resolve_axes", "majority", "params_of", "is_replicate", "LABELS", "TIE_ORDER", "COLORS",
           "COLUMNS",
           # the rest of the constants the views share (tests and notebooks read them)
           "CRITERION_COLUMNS", "FLOAT_COLUMNS", "NOT_CONFIG", "EMPTY_COLOR", "HATCH", "MAX_LEVELS", "N_BINS", "GRAPH",
           "PHASE_TIE_ORDER", "PHASE_LETTERS", "PIVOT_COLUMNS", "TABLE_LEGEND", "TABLE_WIDTH", "ROW_CHARS",
           "HEADER_LINES", "DPI", "LABEL_LINES", "X_LABEL_CHARS", "Y_LABEL_CHARS"]
