"""Runs in an MLflow store, read and written by grokray's contract (:mod:`grokray.contract`).

How a sweep's parent run and its trials are found (:func:`find_sweep_parent`,
:func:`sweep_runs`, :func:`experiment_runs`, :func:`find_trial_run`), how a run is created
and written (params flattened to dotted keys and capped at 500 characters, mlflow#6183; one
``log_batch`` per evaluation: 20 metrics in ~0.03 s against ~0.5 s one by one), where its
checkpoints and history are and how they are read back, and the typed records other modules
use (:class:`RunRecord`, :class:`LabelTags`). Every function takes the client
(:func:`grokray.tracking.store.get_client`).

Example:
    >>> flat_params({"data.phi": 7.2, "model": {"n_loops": 2}})
    {'data.phi': '7.2', 'model': '{"n_loops": 2}'}
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from grokray.config import ConfigError, TrialConfig, trial_config_from_dict
from grokray.contract import (CHECKPOINT_DIR, EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, HISTORY_JSON, KIND_SWEEP,
                              KIND_TRIAL, PARAM_MAX, SHORTCUT_PREFIX, TRANSFER_PREFIX, TRIAL_YAML, VERDICT_PREFIX,
                              SweepParam, Tag, checkpoint_step)
from grokray.criteria import labels_from_tags
from grokray.tracking.store import artifact_root

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


# =========================================================================== experiments and runs

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


@contextmanager
def run_lifecycle(client: "MlflowClient | None", run_ids: list[str]) -> Iterator[None]:
    """The end of every training run's MLflow runs, one place for all: a solo ``grokray train``, a
    sweep trial, each member of a pack. The block completes: FINISHED; Ctrl-C: KILLED (and re-raised);
    anything else, including a trainer that cannot be built: FAILED. ``client`` None: nothing logged.

    Example::

        with run_lifecycle(client, [run_id]):
            result = trainer.run(callbacks)
    """
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if client is not None:
            for run_id in run_ids:
                client.set_terminated(run_id, status=status)


def swept_values(run: "Run") -> dict[str, Any]:
    """A trial run's swept values (its ``grokray.swept`` tag), ``{}`` when absent or unreadable."""
    try:
        values = json.loads(run.data.tags.get(Tag.SWEPT) or "{}")
    except ValueError:
        return {}
    return values if isinstance(values, dict) else {}


def swept_keys(run: "Run") -> list[str]:
    """The swept keys a sweep's parent run declares (:attr:`SweepParam.SWEPT`), in spec order."""
    return [k for k in run.data.params.get(SweepParam.SWEPT, "").split(",") if k]


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
