"""Everything MLflow, and the one place that knows grokray's MLflow contract.

The contract is what other tools (the MLflow UI, notebooks, a re-classification months
later) rely on: tag names (:class:`Tag`), run kinds, artifact paths, metric prefixes, how a
sweep's parent run and its trials are found, where checkpoints and histories live. Every
other module reads and writes MLflow through the functions here, never by spelling a tag.

The science core never imports this module; the trainer is observed through
:class:`RunLogger`, a :class:`~grokray.train.TrainCallback`.

* Local default needs no server: ``sqlite:///<cwd>/mlflow.db`` (artifacts beside it in
  ``mlruns/``). A new sqlite store is put in WAL mode, and creating or upgrading it
  (MLflow's schema migrations) is serialised across processes by a lock file beside the
  database; a migration that loses a race with a process outside grokray (``mlflow ui``,
  a notebook) is waited out and retried (:func:`get_client`).
* One ``log_batch`` per evaluation (20 metrics: ~0.03 s, against ~0.5 s one by one).
* Params are flattened dotted keys, values capped at 500 characters (mlflow#6183).
* A restarted trial never logs a step twice: :class:`RunLogger` skips evaluations at or
  before the last step the run already holds.
* Experiments grokray creates are tagged as model training (``mlflow.experimentKind``); the
  MLflow 3.17 UI nevertheless opens every experiment in the view the browser last chose
  (GenAI by default, mlflow#24498), so each sweep saves a runs view (:func:`save_runs_view`)
  whose link (:func:`runs_view_link`) asks for the model-training view.

Example:
    >>> Tag.LABEL, Tag.PARENT, KIND_TRIAL
    ('grokray.label', 'mlflow.parentRunId', 'trial')
    >>> checkpoint_step("checkpoints/step_0012000.pt")
    12000
    >>> # client = get_client()                       # sqlite:///$PWD/mlflow.db
    >>> # parent = find_sweep_parent(client, "quickstart"); runs = sweep_runs(client, parent)
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from grokray.version import __version__
from grokray.config import ConfigError, TrialConfig, check_tracking_uri, trial_config_from_dict
from grokray.errors import first_line
from grokray.criteria import LABEL_TAG_PREFIX, REGISTRY, labels_from_tags
from grokray import sqlite_store
from grokray.locks import file_lock
from grokray.plots import plot_curves

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # these machines have no internet
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars garble CLI output

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from grokray.train import Trainer, TrainResult


# =========================================================================== the contract: names

TAG_PREFIX = "grokray."


class Tag:
    """Run tag names. grokray's own start with ``grokray.``; three are MLflow's."""
    KIND = "grokray.kind"                      # sweep | trial | finetune
    SWEEP = "grokray.sweep"                    # the sweep's name (on the parent and every child)
    TRIAL_ID = "grokray.trial_id"              # Ray Tune's trial id: a restarted trial finds its run by it
    SWEPT = "grokray.swept"                    # the trial's swept values, JSON
    DATASET = "grokray.dataset"                # content hash of the data config (ds-...)
    VERSION = "grokray.version"
    DEVICE = "grokray.device"
    PRECISION = "grokray.precision"
    STOP_REASON = "grokray.stop_reason"        # max_steps | generalized | no_memorization | diverged
    STEPS_RUN = "grokray.steps_run"
    MAX_STEPS = "grokray.max_steps"
    # the verdict (grokray.classify)
    LABEL = "grokray.label"                    # true_grokking | fake_grokking | no_grokking (the chosen criterion)
    # grokray.label_<criterion>: the same decided by each criterion of grokray.criteria.REGISTRY
    # (grokray.label_interchange, grokray.label_lens): Tag.label_by(name)
    LABEL_BY_PREFIX = LABEL_TAG_PREFIX
    CRITERION = "grokray.criterion"            # which criterion drives grokray.label
    PHASE = "grokray.phase"                    # Liu et al.'s phase: grokking | comprehension | memorization | confusion
    DETERMINED = "grokray.determined"          # false: the budget did not settle the outcome (semi, censored, rising)
    EVIDENCE = "grokray.evidence"              # checkpoint (examined) | curves (labelled from curves + baselines)
    DETAIL = "grokray.detail"
    CONFIDENCE = "grokray.confidence"
    CLASSIFIER_VERSION = "grokray.classifier_version"
    CENSORED = "grokray.censored"
    SPLIT = "grokray.split"
    # packed trials (resources.pack): the pack's Ray Tune trial id and the member's slot in it
    PACK = "grokray.pack"
    PACK_SLOT = "grokray.pack_slot"
    # fine-tuning runs (kind finetune)
    SOURCE_RUN = "grokray.source_run"
    SOURCE_LABEL = "grokray.source_label"
    SOURCE_SWEEP = "grokray.source_sweep"
    SOURCE_RUN_NAME = "grokray.source_run_name"
    SOURCE_CHECKPOINT = "grokray.source_checkpoint"
    # MLflow's own
    PARENT = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    NOTE = "mlflow.note.content"               # the run's description in the UI

    @staticmethod
    def label_by(criterion: str) -> str:
        """The tag holding the label decided by ``criterion`` (``grokray.label_interchange``, ...)."""
        return REGISTRY[criterion].tag


class SweepParam:
    """Params of a sweep's parent run: written by the driver, read back by the maps and the CLI."""
    METHOD = "sweep.method"
    KIND = "sweep.kind"
    N_TRIALS = "sweep.n_trials"
    SWEPT = "sweep.swept"                      # the swept keys, comma-separated
    MAX_STEPS = "sweep.max_steps"
    MAX_CONCURRENT = "sweep.max_concurrent"
    RESOURCES = "sweep.resources"
    STOPPING = "sweep.stopping"                # JSON
    CRITERION = "sweep.criterion"
    EVIDENCE = "sweep.evidence"
    N_SOURCES = "sweep.n_sources"              # finetune sweeps


def swept_keys(run: "Run") -> list[str]:
    """The swept keys a sweep's parent run declares (:attr:`SweepParam.SWEPT`), in spec order."""
    return [k for k in run.data.params.get(SweepParam.SWEPT, "").split(",") if k]


KIND_SWEEP, KIND_TRIAL, KIND_FINETUNE = "sweep", "trial", "finetune"
#: Experiment tag that makes the MLflow 3 UI open the runs table (model training) instead of GenAI traces.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

#: Artifact paths of a trial run.
HISTORY_JSON, HISTORY_CSV, TRIAL_YAML, DATASET_JSON, CURVES_PNG = (
    "history.json", "history.csv", "trial.yaml", "dataset.json", "curves.png")
CHECKPOINT_DIR = "checkpoints"
#: Artifacts of a sweep's parent run: the spec as run, and the map folder (``phase_map/``, ``transfer_map/``).
SWEEP_YAML = "sweep.yaml"
PHASE_MAP_DIR, TRANSFER_MAP_DIR = "phase_map", "transfer_map"
VERDICT_DIR = "verdict"
#: Metric prefixes written after training (the verdict, a fine-tuning summary); not training curves.
VERDICT_PREFIX, TRANSFER_PREFIX = "verdict/", "transfer/"
#: The dataset's shortcut baselines, logged once per run at step 0: ``shortcut/<rule>/<split>``.
SHORTCUT_PREFIX = "shortcut/"


def shortcut_metrics(baselines: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Shortcut baselines ``{split: {rule: accuracy}}`` as run metrics ``shortcut/<rule>/<split>``."""
    return {f"{SHORTCUT_PREFIX}{rule}/{split}": float(v) for split, rules in baselines.items()
            for rule, v in rules.items()}

PARAM_MAX = 500
DEFAULT_EXPERIMENT = "grokray"
_CHECKPOINT_RE = re.compile(r"step_(\d+)\.pt$")


# =========================================================================== the store

def default_tracking_uri() -> str:
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def tracking_uri(uri: str | None = None) -> str:
    """The explicit URI, else ``$MLFLOW_TRACKING_URI``, else the local sqlite store in the cwd."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def artifact_root(uri: str) -> str | None:
    """Where experiments of a local sqlite store keep artifacts: ``mlruns/`` beside the db file."""
    db = sqlite_path(uri)
    return str(db.parent.resolve() / "mlruns") if db is not None else None


#: How long :func:`get_client` waits out another process migrating the same sqlite store.
STORE_RETRY_S = 60.0
#: Words of the errors a concurrent migration by another process causes. The last is alembic's
#: check that its version row moved as expected; it fails when the other process moved it first
#: (seen in CI: "Online migration expected to match one row when updating ... 0 found").
_RACE_WORDS = ("already exists", "locked", "duplicate", "no such table", "unique constraint",
               "migration expected to match one row")


def _is_migration_race(error: BaseException) -> bool:
    """A failure another process's concurrent schema creation explains (sqlite only)."""
    seen = error
    while seen is not None:
        text = str(seen).lower()
        if any(w in text for w in _RACE_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False




def _open_sqlite(uri: str, db: Path) -> "MlflowClient":
    """A client on a local sqlite store, made whole first under ``<db>.lock``.

    grokray processes take turns on the lock; :func:`grokray.sqlite_store.ensure_store` creates a
    missing store whole (never migrated in place), waits on one another process is migrating, and
    replaces one left half-created. A residual race ("database is locked") is retried until
    :data:`STORE_RETRY_S`.
    """
    from mlflow.tracking import MlflowClient

    if db.is_dir():
        raise ConfigError("is a directory, not a sqlite MLflow store", key="tracking URI", value=uri)
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the directory of the MLflow store: {e.strerror}", key="tracking URI",
                          value=uri) from None
    deadline = time.monotonic() + STORE_RETRY_S
    delay = 0.2
    # MLflow logs its schema migrations at INFO ("Creating initial MLflow database tables..."):
    # routine, not for a user's terminal. Real problems still raise, below.
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with file_lock(db.with_name(db.name + ".lock")):
        try:
            sqlite_store.ensure_store(db, artifact_root(uri), timeout_s=STORE_RETRY_S)
        except sqlite_store.StoreError as e:
            raise ConfigError(str(e), key="tracking URI", value=uri) from None
        except Exception as e:  # noqa: BLE001 - an unusable path or file: one line naming the store
            reason = getattr(e, "strerror", None) or first_line(e)
            raise ConfigError(f"cannot create the MLflow store: {reason[:300]}", key="tracking URI",
                              value=uri) from None
        while True:
            try:
                return MlflowClient(tracking_uri=uri)   # a whole store at head: no migration runs here
            except Exception as e:  # noqa: BLE001 - classified below, re-raised as one line
                if _is_migration_race(e) and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                reason = first_line(e)
                raise ConfigError(f"cannot open the MLflow store: {reason[:300]}", key="tracking URI",
                                  value=uri) from None


def get_client(uri: str | None = None) -> "MlflowClient":
    """An MlflowClient for ``uri`` (see :func:`tracking_uri`); a local sqlite store is created if missing.

    An unusable URI or store is a one-line :class:`~grokray.config.ConfigError` naming it.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    check_tracking_uri(uri, "tracking URI")
    db = sqlite_path(uri)
    if db is not None:
        return _open_sqlite(uri, db)
    try:
        return MlflowClient(tracking_uri=uri)
    except (MlflowException, ImportError, ValueError) as e:
        # MLflow's own message is a paragraph (or a missing database driver's traceback): one line.
        reason = first_line(e, 200)
        raise ConfigError(f"cannot open the MLflow store: {reason}", key="tracking URI", value=uri) from None


def where_from(uri: str | None = None) -> str:
    """Where the tracking URI came from, in words (for "not found" messages)."""
    if uri:
        return "given"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "from $MLFLOW_TRACKING_URI"
    return "the default: mlflow.db in the current directory"


#: How a reader is pointed at another store, for one-line messages (notebook and command line).
POINT_ELSEWHERE = ("pass tracking_uri='sqlite:///PATH/mlflow.db' (Python) or --tracking-uri (CLI), or set "
                   "MLFLOW_TRACKING_URI")


def existing_client(uri: str | None = None) -> "MlflowClient":
    """A client for a store that must already exist: a missing local sqlite file is a one-line
    ConfigError saying where it looked and how to point elsewhere. Readers (the phase map, the
    transfer map, the classifier, ``grokray phase-map``) never create an empty store by mistake:
    nothing is written when the store is not there."""
    given = uri
    uri = tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise ConfigError(f"no MLflow store at {db} ({where_from(given)}); {POINT_ELSEWHERE}",
                          key="tracking URI", value=uri)
    return get_client(uri)


# =========================================================================== experiments and runs

#: Experiment-tag prefix under which the MLflow UI keeps a saved runs view ("Views" menu).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def sweep_view_id(sweep: str) -> str:
    """The id of the runs view a sweep saves on its experiment."""
    return f"grokray-{sweep}"


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


def get_or_create_experiment(client: "MlflowClient", name: str) -> str:
    """The experiment's id (restored if deleted, created if missing), tagged for the training view."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    root = artifact_root(client.tracking_uri)
    location = f"{root}/{_safe(name)}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def all_experiments(client: "MlflowClient") -> list[Any]:
    """Every active experiment of the store (paged)."""
    out, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def iter_runs(client: "MlflowClient", experiment_ids: Iterable[str], filter_string: str = "",
              max_results: int = 1000) -> Iterator["Run"]:
    """All runs matching ``filter_string``, paging through search results."""
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=max_results,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            break


def _quoted(value: str, what: str) -> str:
    """A value safe inside a single-quoted filter string (sweep names and ids never hold quotes)."""
    if "'" in value or "\\" in value:
        raise ConfigError(f"a {what} cannot contain quotes or backslashes", value=value)
    return value


def find_sweep_parent(client: "MlflowClient", name: str, experiment_ids: list[str] | None = None) -> "Run | None":
    """A sweep's parent run (``grokray.kind = sweep``, ``grokray.sweep = name``), the newest if
    several, searched in ``experiment_ids`` (default: every experiment)."""
    if "'" in name or "\\" in name:
        return None
    ids = experiment_ids if experiment_ids is not None else [e.experiment_id for e in all_experiments(client)]
    if not ids:
        return None
    found = client.search_runs(ids, filter_string=f"tags.`{Tag.KIND}` = '{KIND_SWEEP}' and "
                                                  f"tags.`{Tag.SWEEP}` = '{name}'",
                               max_results=10, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def sweep_names(client: "MlflowClient", experiment_ids: list[str] | None = None, limit: int = 20) -> list[str]:
    """Names of the sweeps in a store (newest first, at most ``limit``), for "not found" messages."""
    ids = experiment_ids if experiment_ids is not None else [e.experiment_id for e in all_experiments(client)]
    if not ids:
        return []
    found = client.search_runs(ids, filter_string=f"tags.`{Tag.KIND}` = '{KIND_SWEEP}'", max_results=200,
                               order_by=["attributes.start_time DESC"])
    names: list[str] = []
    for run in found:
        name = run.data.tags.get(Tag.SWEEP)
        if name and name not in names:
            names.append(name)
    return names[:limit]


def sweep_runs(client: "MlflowClient", parent: "Run", kind: str | None = KIND_TRIAL,
               status: str | None = None) -> list["Run"]:
    """The child runs of a sweep's parent (of one ``kind``, optionally one ``status``), oldest first."""
    flt = f"tags.`{Tag.PARENT}` = '{parent.info.run_id}'"
    if kind is not None:
        flt += f" and tags.`{Tag.KIND}` = '{kind}'"
    if status is not None:
        flt += f" and attributes.status = '{status}'"
    runs = list(iter_runs(client, [parent.info.experiment_id], flt))
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def experiment_runs(client: "MlflowClient", experiment_id: str, kind: str = KIND_TRIAL,
                    status: str | None = None) -> list["Run"]:
    """Every run of one ``kind`` in an experiment (any sweep, or none), oldest first."""
    flt = f"tags.`{Tag.KIND}` = '{kind}'" + (f" and attributes.status = '{status}'" if status else "")
    runs = list(iter_runs(client, [experiment_id], flt))
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def find_trial_run(client: "MlflowClient", experiment_id: str, sweep: str, trial_id: str) -> "Run | None":
    """The run a Ray Tune trial created before (a restart finds it again by its trial id)."""
    found = client.search_runs([experiment_id], max_results=1,
                               filter_string=f"tags.`{Tag.SWEEP}` = '{_quoted(sweep, 'sweep name')}' and "
                                             f"tags.`{Tag.TRIAL_ID}` = '{_quoted(trial_id, 'trial id')}'")
    return found[0] if found else None


def start_run(client: "MlflowClient", experiment_id: str, run_name: str, kind: str = KIND_TRIAL,
              parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Create a run of ``kind`` (nested under ``parent_run_id`` if given) and return its id."""
    all_tags = {Tag.KIND: kind, **(tags or {})}
    if parent_run_id:
        all_tags[Tag.PARENT] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def swept_values(run: "Run") -> dict[str, Any]:
    """A trial run's swept values (its ``grokray.swept`` tag), ``{}`` when absent or unreadable."""
    try:
        values = json.loads(run.data.tags.get(Tag.SWEPT) or "{}")
    except ValueError:
        return {}
    return values if isinstance(values, dict) else {}


# =========================================================================== writing

def flat_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """Dotted config -> MLflow params: strings, capped at 500 characters."""
    out = {}
    for k, v in flat.items():
        s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
        out[k] = s if len(s) <= PARAM_MAX else s[:PARAM_MAX - 3] + "..."
    return out


def log_params(client: "MlflowClient", run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in flat_params(params).items()])


def log_tags(client: "MlflowClient", run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(client: "MlflowClient", run_id: str, step: int, metrics: Mapping[str, float]) -> None:
    """One ``log_batch`` call for a whole evaluation; NaN/inf are logged as NaN (MLflow accepts them)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v) if v is not None else math.nan, now, int(step)) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(batch), 1000):  # MLflow's per-request limit
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def log_texts(client: "MlflowClient", run_id: str, files: Mapping[str, str], artifact_path: str | None = None
              ) -> None:
    """Write ``{file name: text}`` as artifacts in one upload."""
    with tempfile.TemporaryDirectory(prefix="grokray-artifacts-") as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        client.log_artifacts(run_id, tmp, artifact_path)


def last_logged_step(client: "MlflowClient", run_id: str, key: str = "acc/train") -> int:
    """The largest step at which ``key`` was logged in the run, -1 if never."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


# =========================================================================== reading

def checkpoint_step(path: str) -> int | None:
    """``checkpoints/step_0001000.pt`` -> 1000 (None for another file name)."""
    m = _CHECKPOINT_RE.search(path)
    return int(m.group(1)) if m else None


def checkpoints(client: "MlflowClient", run_id: str) -> dict[int, str]:
    """``{step: artifact path}`` of a run's checkpoints, in step order."""
    found = {}
    for a in client.list_artifacts(run_id, CHECKPOINT_DIR):
        step = checkpoint_step(a.path)
        if step is not None:
            found[step] = a.path
    return dict(sorted(found.items()))


def checkpoint_path(client: "MlflowClient", run_id: str, step: int | str | None = "last") -> str:
    """The artifact path of a run's checkpoint at ``step`` (``"last"``/None: the final one).

    Raises:
        LookupError: one line: the run has no checkpoints, or none at that step (listing those it has).
    """
    have = checkpoints(client, run_id)
    if not have:
        raise LookupError(f"run {run_id} has no checkpoints")
    if step in (None, "last"):
        return have[max(have)]
    if int(step) not in have:
        raise LookupError(f"run {run_id} has no checkpoint at step {step} (has: {', '.join(map(str, have))})")
    return have[int(step)]


def download_checkpoint(client: "MlflowClient", run_id: str, step: int | str | None, dst: str | os.PathLike) -> str:
    """Download a run's checkpoint (see :func:`checkpoint_path`) into ``dst``; the local path."""
    path = checkpoint_path(client, run_id, step)
    Path(dst).mkdir(parents=True, exist_ok=True)
    return client.download_artifacts(run_id, path, str(dst))


def read_json_artifact(client: "MlflowClient", run_id: str, path: str) -> Any:
    """A run's JSON artifact, or None when it has none at ``path``."""
    with tempfile.TemporaryDirectory(prefix="grokray-read-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception:  # MLflow raises several types for a missing artifact
            return None
        return json.loads(Path(local).read_text())


def metric_history(client: "MlflowClient", run_id: str, keys: Iterable[str]) -> list[dict]:
    """A history rebuilt from the logged metric curves of ``keys`` (one request per key)."""
    by_step: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(int(m.step), {"step": int(m.step)})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def load_history(client: "MlflowClient", run_id: str) -> list[dict]:
    """A run's full metric history: its ``history.json`` (written when training ends), else (a
    run still going, or killed) rebuilt from its logged curves."""
    history = read_json_artifact(client, run_id, HISTORY_JSON)
    if history is not None:
        return history
    run = client.get_run(run_id)
    keys = [k for k in run.data.metrics if not k.startswith((VERDICT_PREFIX, TRANSFER_PREFIX, SHORTCUT_PREFIX))]
    return metric_history(client, run_id, keys)


def run_trial_config(client: "MlflowClient", run_id: str) -> TrialConfig:
    """A trial run's config (its ``trial.yaml`` artifact).

    Raises:
        LookupError: the run has no trial.yaml (not a grokray trial run).
    """
    import yaml

    with tempfile.TemporaryDirectory(prefix="grokray-read-") as tmp:
        try:
            local = client.download_artifacts(run_id, TRIAL_YAML, tmp)
        except Exception:
            raise LookupError(f"run {run_id} has no {TRIAL_YAML} (not a grokray trial run?)") from None
        return trial_config_from_dict(yaml.safe_load(Path(local).read_text()))


# =========================================================================== typed records

@dataclass(frozen=True)
class RunRecord:
    """What other modules need to know of one grokray run, read from its tags."""
    run_id: str
    run_name: str
    status: str
    experiment_id: str
    kind: str | None
    sweep: str | None
    label: str | None
    swept: dict = field(default_factory=dict)

    @classmethod
    def of(cls, run: "Run") -> "RunRecord":
        tags = run.data.tags
        return cls(run_id=run.info.run_id, run_name=run.info.run_name or "", status=run.info.status,
                   experiment_id=run.info.experiment_id, kind=tags.get(Tag.KIND), sweep=tags.get(Tag.SWEEP),
                   label=tags.get(Tag.LABEL), swept=swept_values(run))


@dataclass(frozen=True)
class LabelTags:
    """A verdict as it is stored on its run: the ``grokray.label*`` tags.

    ``labels`` holds the label by every criterion the run was labelled by
    (``grokray.label_<criterion>``, :mod:`grokray.criteria`)."""
    label: str | None
    detail: str | None
    confidence: str | None
    classifier_version: str | None
    split: str | None
    censored: str | None = None
    criterion: str | None = None
    evidence: str | None = None
    phase: str | None = None
    determined: str | None = None
    labels: dict = field(default_factory=dict)

    _TAGS = {"label": Tag.LABEL, "detail": Tag.DETAIL, "confidence": Tag.CONFIDENCE,
             "classifier_version": Tag.CLASSIFIER_VERSION, "split": Tag.SPLIT, "censored": Tag.CENSORED,
             "criterion": Tag.CRITERION, "evidence": Tag.EVIDENCE, "phase": Tag.PHASE, "determined": Tag.DETERMINED}

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> "LabelTags":
        return cls(**{name: tags.get(tag) for name, tag in cls._TAGS.items()}, labels=labels_from_tags(tags))

    def tags(self) -> dict[str, str]:
        out = {tag: getattr(self, name) for name, tag in self._TAGS.items() if getattr(self, name) is not None}
        out.update({Tag.label_by(c): label for c, label in self.labels.items()})
        return out


# =========================================================================== a trial run

def trial_run_name(cfg: Any) -> str:
    """A short human name from the usual swept values: ``phi7.2-none-L1x2-wd1-s0``."""
    d, m, t = cfg.data, cfg.model, cfg.train
    return (f"phi{d.phi:g}-{d.augmentation_name()}-L{m.n_layers}x{m.n_loops}-wd{t.weight_decay:g}"
            f"-s{cfg.seed}")


class RunLogger:
    """Trainer callback that records one trial as one MLflow run.

    Create it with :func:`start_run` (new run) or with an existing ``run_id`` (a restarted
    trial); it logs params once, one batch of metrics per evaluation, every checkpoint, and at
    the end the curves PNG, the history and the final tags. ``extra_params`` are logged with
    the config's (e.g. a fine-tuning run's transfer config). ``draw_curves=False`` leaves
    ``curves.png`` to the classifier, which draws it anyway (with the steps it found marked):
    one plot less at the end of every trial of a labelled sweep.
    """

    def __init__(self, client: "MlflowClient", run_id: str, log_checkpoints: bool = True,
                 extra_params: Mapping[str, Any] | None = None, draw_curves: bool = True):
        self.client, self.run_id = client, run_id
        self.log_checkpoints, self.draw_curves = log_checkpoints, draw_curves
        self.extra_params = dict(extra_params or {})
        self.skip_until = last_logged_step(client, run_id)

    def on_start(self, trainer: "Trainer") -> None:
        if self.skip_until >= 0:
            return  # params and dataset were logged by the first attempt
        import yaml
        from mlflow.entities import Param, RunTag

        cfg = trainer.cfg
        params = flat_params({**cfg.flat(), **self.extra_params})
        params["data.augmentation"] = cfg.data.augmentation_name()
        params["model.n_params"] = str(trainer.model.num_params())
        tags = {Tag.DATASET: trainer.dataset.name, Tag.VERSION: __version__, Tag.DEVICE: str(trainer.device),
                Tag.PRECISION: trainer.precision}
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        # The dataset's shortcut baselines: constants of the run, logged once (at step 0).
        log_metrics(self.client, self.run_id, 0, shortcut_metrics(trainer.dataset.baselines()))
        log_texts(self.client, self.run_id, {DATASET_JSON: json.dumps(trainer.dataset.summary(), indent=2),
                                             TRIAL_YAML: yaml.safe_dump(cfg.to_dict(), sort_keys=False)})

    def on_eval(self, step: int, metrics: dict[str, float], trainer: "Trainer") -> None:
        if step > self.skip_until:
            log_metrics(self.client, self.run_id, step, metrics)
        return None

    def on_checkpoint(self, step: int, path: Path, trainer: "Trainer") -> None:
        if self.log_checkpoints:
            self.client.log_artifact(self.run_id, str(path), CHECKPOINT_DIR)

    def on_end(self, result: "TrainResult", trainer: "Trainer") -> None:
        ood = (trainer.dataset.baselines().get("ood") or {}).get("best")
        log_run_summary(self.client, self.run_id, result.history, result.stop_reason, result.steps_run,
                        trainer.cfg.train.max_steps, title=trial_run_name(trainer.cfg),
                        baselines={"OOD shortcut (best rule)": ood} if self.draw_curves else None)


def history_csv(history: list[dict]) -> str:
    """A history as CSV text: one row per evaluation, one column per metric."""
    keys = sorted({k for h in history for k in h} - {"step"})
    lines = [",".join(["step"] + keys)]
    lines += [",".join([str(h["step"])] + [repr(h[k]) if k in h else "" for k in keys]) for h in history]
    return "\n".join(lines) + "\n"


def log_run_summary(client: "MlflowClient", run_id: str, history: list[dict], stop_reason: str,
                    steps_run: int, max_steps: int, title: str = "",
                    baselines: Mapping[str, float | None] | None = None) -> None:
    """Curves PNG (with ``baselines`` drawn as lines; none when ``baselines`` is None: the classifier
    draws it), full history (JSON + CSV) and the end-of-training tags."""
    with tempfile.TemporaryDirectory(prefix="grokray-summary-") as tmp:
        if baselines is not None:
            plot_curves(history, Path(tmp) / CURVES_PNG, title=title, baselines=baselines)
        (Path(tmp) / HISTORY_JSON).write_text(json.dumps(history))
        (Path(tmp) / HISTORY_CSV).write_text(history_csv(history))
        client.log_artifacts(run_id, tmp)
    log_tags(client, run_id, {Tag.STOP_REASON: stop_reason, Tag.STEPS_RUN: steps_run, Tag.MAX_STEPS: max_steps})
