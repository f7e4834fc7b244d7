# %% [markdown]
# # A grokray phase map in a notebook
#
# A notebook in the percent format (`# %%` cells: VS Code, PyCharm and Jupyter with jupytext open it as
# one), run from top to bottom by the test suite on a tiny sweep so it cannot rot
# (`tests/e2e/test_sweep.py::test_a_sweep_started_elsewhere_is_followed_live`).
#
# Point it at a store and a sweep (defaults: the phase-map sweep in `./mlflow.db`):
#
#     GROKRAY_STORE=sqlite:////work/store/mlflow.db GROKRAY_SWEEP=phase-map python experiments/phase_map_notebook.py
#
# A reader never creates a store: a wrong path is one line saying where it looked.

# %%
import os
from pathlib import Path

import grokray
from grokray import tracking
from grokray.plots import plot_curves

STORE = os.environ.get("GROKRAY_STORE", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
SWEEP = os.environ.get("GROKRAY_SWEEP", "phase-map")
OUT = Path(os.environ.get("GROKRAY_NOTEBOOK_OUT", "."))

# %% [markdown]
# ## One row per run
# The swept values, the label and Liu et al.'s phase, whether the budget settled it, the steps.

# %%
runs = grokray.phase_map(SWEEP, tracking_uri=STORE)
params = runs.attrs["params"]
print(runs[[*params, "label", "detail", "phase", "determined", "t_generalize", "delay_ratio",
            "final_ood_acc"]].to_string(max_rows=20))

# %% [markdown]
# ## One row per cell
# Replicates (`seed`) aggregated; graphs (`data.seed`) shown side by side when they disagree
# (`graph_labels`); medians and ranges over the runs of a cell.

# %%
x = next((p for p in params if p.endswith("weight_decay")), params[0])
cells = grokray.pivot(runs, x)
print(cells[["label", "n_label", "n", "graph_labels", "phase", "n_undetermined", "median_t_generalize",
             "min_t_generalize", "max_t_generalize"]].to_string())

# %% [markdown]
# ## The map as a picture, and one cell's curves

# %%
grokray.plot_phase_map(runs, OUT / "notebook_phase_map.png")
grokray.plot_phase_map(runs, OUT / "notebook_phases.png", color_by="phase")   # Liu et al.'s phases as colours
client = tracking.existing_client(STORE)
labelled = runs[runs["label"].notna()]
pick = labelled.iloc[0] if len(labelled) else runs.iloc[0]
history = tracking.load_history(client, pick["run_id"])
plot_curves(history, OUT / "notebook_curves.png", title=f"{pick['run_name']}: {pick['label']} ({pick['detail']})")
print(f"{len(runs)} runs, {len(cells)} cells; curves of {pick['run_name']} ({len(history)} evaluations)")
