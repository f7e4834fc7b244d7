"""Everything MLflow: grokray's contract with the store, and how runs are read and written.

The contract is what other tools (the MLflow UI, notebooks, a re-classification months
later) rely on: tag names (:class:`Tag`), run kinds, params, artifact paths, metric prefixes.
Its names are spelled once, in :mod:`grokray.contract`, and re-exported here; every other
module reads and writes MLflow through the functions here, never by spelling a name.

What lives where (all of it importable from ``grokray.tracking``):

* :mod:`grokray.contract`: the names (core: no MLflow import);
* :mod:`grokray.tracking.store`: which store, whether it is usable, a client on it
  (:func:`get_client`, :func:`existing_client`, :func:`check_store`); importing it sets
  MLflow's quiet environment defaults;
* :mod:`grokray.tracking.runs`: finding, creating, writing and reading runs, typed records;
* :mod:`grokray.tracking.views`: the MLflow UI's saved runs view of a sweep and its link;
* :mod:`grokray.tracking.runlogger`: :class:`RunLogger`, one trial as one run.

The science core never imports this package; the trainer is observed through
:class:`RunLogger`, a :class:`~grokray.train.TrainCallback`.

Example:
    >>> Tag.LABEL, Tag.PARENT, KIND_TRIAL
    ('grokray.label', 'mlflow.parentRunId', 'trial')
    >>> checkpoint_step("checkpoints/step_0012000.pt")
    12000
    >>> # client = get_client()                       # sqlite:///$PWD/mlflow.db
    >>> # parent = find_sweep_parent(client, "quickstart"); runs = sweep_runs(client, parent)
"""
from __future__ import annotations

from grokray.contract import *  # noqa: F403 - the contract's names are tracking's (grokray.contract.__all__)
from grokray.contract import __all__ as _CONTRACT
from grokray.tracking.runlogger import RunLogger, history_csv, log_run_summary, trial_run_name
from grokray.tracking.runs import (LabelTags, RunRecord, all_experiments, checkpoint_path, checkpoints,
                                   download_checkpoint, experiment_runs, find_sweep_parent, find_trial_run,
                                   flat_params, get_or_create_experiment, iter_runs, last_logged_step, load_history,
                                   log_metrics, log_params, log_tags, log_texts, metric_history, read_json_artifact,
                                   run_lifecycle, run_trial_config, start_run, sweep_names, sweep_runs, swept_keys,
                                   swept_values)
from grokray.tracking.store import (DB_PORTS, MLFLOW_ENV, POINT_ELSEWHERE, STORE_RETRY_S, artifact_root,
                                    check_reachable, check_sqlite_file, check_store, default_tracking_uri,
                                    existing_client, get_client, is_migration_race, sqlite_path, tracking_uri,
                                    where_from)
from grokray.tracking.views import runs_view_link, save_runs_view

__all__ = [*_CONTRACT,
           # store
           "DB_PORTS", "MLFLOW_ENV", "POINT_ELSEWHERE", "STORE_RETRY_S", "artifact_root", "check_reachable",
           "check_sqlite_file", "check_store", "default_tracking_uri", "existing_client", "get_client",
           "is_migration_race", "sqlite_path", "tracking_uri", "where_from",
           # runs
           "LabelTags", "RunRecord", "all_experiments", "checkpoint_path", "checkpoints", "download_checkpoint",
           "experiment_runs", "find_sweep_parent", "find_trial_run", "flat_params", "get_or_create_experiment",
           "iter_runs", "last_logged_step", "load_history", "log_metrics", "log_params", "log_tags", "log_texts",
           "metric_history", "read_json_artifact", "run_lifecycle", "run_trial_config", "start_run", "sweep_names", "sweep_runs",
           "swept_keys", "swept_values",
           # views, the run logger
           "runs_view_link", "save_runs_view", "RunLogger", "history_csv", "log_run_summary", "trial_run_name"]
