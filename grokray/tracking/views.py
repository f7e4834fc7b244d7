"""The MLflow UI's saved runs view of a sweep, and the link that opens it.

Experiments grokray creates are tagged as model training (``mlflow.experimentKind``); the
MLflow 3.17 UI nevertheless opens every experiment in the view the browser last chose
(GenAI by default, mlflow#24498), so each sweep saves a runs view (:func:`save_runs_view`)
whose link (:func:`runs_view_link`) asks for the model-training view.
"""
from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from grokray.contract import VIEW_TAG_PREFIX

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def runs_view_link(experiment_id: str, view_id: str | None = None) -> str:
    """The UI fragment (after ``http://host:port/``) that opens an experiment's runs in the
    model-training view, through the saved view ``view_id`` when given.

    >>> runs_view_link("3", "grokray-quickstart")
    '#/experiments/3/runs?viewStateShareKey=grokray-quickstart&workflowType=machine_learning'
    """
    view = f"viewStateShareKey={view_id}&" if view_id else ""
    return f"#/experiments/{experiment_id}/runs?{view}workflowType=machine_learning"


def save_runs_view(client: "MlflowClient", experiment_id: str, view_id: str, name: str, *, search_filter: str,
                   order_by: str, columns: list[str]) -> str | None:
    """Save a runs view on the experiment (MLflow 3.17's shared-view tag): the filter, the sort
    and the columns in their order, each wide enough for its header. Returns its link, or None
    when the store refused the tag (the runs are still there; only the view is lost).

    A view cannot expand, pin or hide runs; a filter on ``mlflow.parentRunId`` gives one flat
    row per child run (without a filter the UI nests children under a collapsed parent)."""
    state = {"searchFilter": search_filter, "orderByKey": order_by, "orderByAsc": True,
             "selectedColumns": columns, "columnOrder": columns,
             "columnWidths": {c: max(100, 8 * len(c.split("`")[1] if "`" in c else c) + 28) for c in columns}}
    now = int(time.time() * 1000)
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    try:
        client.set_experiment_tag(experiment_id, f"{VIEW_TAG_PREFIX}{view_id}", json.dumps(envelope))
    except Exception as e:  # noqa: BLE001 - a store that refuses the tag loses the view, not the caller's work
        logging.getLogger(__name__).warning("could not save the MLflow UI view %s: %s", view_id, e)
        return None
    return runs_view_link(experiment_id, view_id)

