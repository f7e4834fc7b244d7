"""The sweep driver: a spec -> Ray Tune trials -> MLflow parent/child runs -> labels -> phase map.

``grokray sweep run SPEC`` calls :func:`run_sweep`; ``grokray sweep resume NAME``
calls :func:`resume_sweep`. A sweep lives in two places:

* ``<storage>/<name>/``: Ray Tune's experiment state and trial checkpoints, plus
  ``grokray_sweep.json`` (the resolved spec, the tracking URI and the parent run id), so
  a resume needs nothing but the name;
* MLflow: one parent run (``grokray.kind = sweep``) and one nested child run per trial,
  labelled by the classifier actor as trials finish; the phase map (PNG + CSV) is logged
  on the parent and refreshed as labels arrive.

Names are unique: an existing sweep is never overwritten (``run`` refuses, ``resume``
continues it).
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from grokray import tracking
from grokray.config import ConfigError, to_plain
from grokray.sweep.spec import SweepSpec, spec_from_dict
from grokray.sweep.trial import TrialContext, run_name, run_trial

STATE_FILE = "grokray_sweep.json"


class SweepError(Exception):
    """A user-facing sweep problem (name taken, sweep not found, ...): one line, exit 2."""


@dataclass
class SweepRecord:
    """What ``grokray_sweep.json`` holds."""
    name: str
    spec: dict                 # the spec as written, with its base inlined
    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    storage: str
    created: float

    def save(self, exp_dir: Path) -> None:
        exp_dir.mkdir(parents=True, exist_ok=True)
        tmp = exp_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, exp_dir / STATE_FILE)

    @classmethod
    def load(cls, exp_dir: Path) -> "SweepRecord":
        return cls(**json.loads((exp_dir / STATE_FILE).read_text()))

    def spec_obj(self) -> SweepSpec:
        return spec_from_dict(self.spec, source=f"{self.name} ({STATE_FILE})")


# --------------------------------------------------------------------------- helpers

def resolved_tracking_uri(spec: SweepSpec) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else sqlite in the cwd; sqlite paths made absolute
    (trial processes have other working directories)."""
    uri = tracking.tracking_uri(spec.tracking_uri)
    db = tracking.sqlite_path(uri)
    if db is not None:
        uri = f"sqlite:///{db.expanduser().resolve()}"
    return uri


def exp_dir_for(name: str, storage: str) -> Path:
    if "://" in storage:
        raise SweepError(f"storage {storage!r}: resume and status need a local or mounted path")
    return Path(os.path.expanduser(storage)).resolve() / name


def init_ray(address: str | None = None, dashboard: bool = False) -> None:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local Ray (no dashboard by default)."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in ("GROKRAY_CACHE", "GROKRAY_CHECKPOINT_EVERY_S", "MLFLOW_DISABLE_TELEMETRY",
                                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") if k in os.environ}
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:  # inside a Ray Job: its runtime_env sets these already, and Ray refuses to merge a repeat
        job_env = (json.loads(job).get("runtime_env") or {}).get("env_vars") or {}
        env = {k: v for k, v in env.items() if k not in job_env}
    # Trials checkpoint every few seconds; Tune's warning about frequent state snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Trial processes log to their own files; the driver prints the progress table and labels.
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    else:
        ray.init(include_dashboard=dashboard, runtime_env={"env_vars": env} if env else None,
                 log_to_driver=False, configure_logging=True, logging_level="WARNING")


def _trial_name(trial: Any, keys: list[str]) -> str:
    return f"{run_name(trial.config, keys)}_{trial.trial_id[-5:]}"


def _search_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for p in spec.parameters:
        if p.values is not None:
            if len(p.values) == 1:
                space[p.key] = p.values[0]
            elif spec.method == "grid":
                space[p.key] = tune.grid_search(p.values)
            else:
                space[p.key] = tune.choice(p.values)
        elif p.distribution == "uniform":
            space[p.key] = tune.uniform(p.low, p.high)
        elif p.distribution == "log_uniform":
            space[p.key] = tune.loguniform(p.low, p.high)
        elif p.distribution == "int_uniform":
            space[p.key] = tune.randint(int(p.low), int(p.high) + 1)
    return space


def _trial_keys(spec: SweepSpec) -> list[str]:
    """Keys that name a trial (a finetune trial is named by its source run first)."""
    if spec.finetune is not None:
        from grokray.transfer import trial_keys

        return trial_keys(spec)
    return spec.swept_keys


def _tune_config(spec: SweepSpec):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    search_alg = None
    if spec.method == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=spec.metric["name"], mode=spec.metric["mode"], seed=spec.base.seed)
        if spec.max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=spec.max_concurrent)
    scheduler = FIFOScheduler()
    if spec.stopping.scheduler == "asha":
        a = spec.stopping.asha
        scheduler = ASHAScheduler(time_attr="step", metric=a["metric"], mode=a["mode"],
                                  max_t=spec.base_for_trials().train.max_steps, grace_period=a["grace_period"],
                                  reduction_factor=a["reduction_factor"])
    return tune.TuneConfig(num_samples=spec.num_samples, search_alg=search_alg, scheduler=scheduler,
                           max_concurrent_trials=spec.max_concurrent if spec.method != "optuna" else None,
                           trial_name_creator=functools.partial(_trial_name, keys=_trial_keys(spec)),
                           trial_dirname_creator=functools.partial(_trial_name, keys=_trial_keys(spec)),
                           reuse_actors=False)


def _trainable(spec: SweepSpec, record: SweepRecord):
    from ray import tune

    if spec.finetune is not None:
        from grokray.transfer import finetune_trainable

        return finetune_trainable(spec, record)

    stop = spec.stopping
    ctx = TrialContext(sweep=record.name, base=spec.base_for_trials().to_dict(), swept_keys=spec.swept_keys,
                       tracking_uri=record.tracking_uri, experiment_id=record.experiment_id,
                       parent_run_id=record.parent_run_id,
                       stop={"memorize_by": stop.memorize_by, "memorize_acc": stop.memorize_acc, "split": stop.split,
                             "generalize_acc": stop.generalize_acc, "cleanup_window": stop.cleanup_window},
                       threads=max(1, int(spec.resources.cpu)))
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)


def _run_config(spec: SweepSpec, record: SweepRecord, callbacks: list):
    from ray import tune

    return tune.RunConfig(name=record.name, storage_path=spec.storage_path(),
                          failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                          callbacks=callbacks, verbose=0)


class PhaseMapRefresher:
    """Re-logs the phase map on the parent run as labels arrive (at most every ``every_s``)."""

    def __init__(self, record: SweepRecord, every_s: float = 20.0):
        self.record, self.every_s = record, every_s
        self.last = 0.0

    def __call__(self, summary: dict | None = None, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        try:
            if self.record.spec.get("kind") == "finetune":
                from grokray.transfer import log_transfer_map as log_map
            else:
                from grokray.phasemap import log_phase_map as log_map

            log_map(self.record.tracking_uri, self.record.parent_run_id, self.record.name, self.record.experiment)
        except Exception as e:  # the map is a view: never let it break the sweep
            print(f"[grokray] phase map not refreshed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- run / resume

def _create_parent(client, record_fields: dict, spec: SweepSpec) -> str:
    from mlflow.entities import Param

    run = client.create_run(record_fields["experiment_id"], run_name=record_fields["name"],
                            tags={"grokray.kind": "sweep", "grokray.sweep": record_fields["name"],
                                  "grokray.version": __import__("grokray").__version__,
                                  "mlflow.note.content": spec.description or f"grokray sweep {record_fields['name']}"})
    params = {"sweep.method": spec.method, "sweep.n_trials": spec.n_trials(),
              "sweep.swept": ",".join(spec.swept_keys), "sweep.max_steps": spec.base_for_trials().train.max_steps,
              "sweep.max_concurrent": spec.max_concurrent, "sweep.resources": f"{spec.resources.cpu}cpu,"
              f"{spec.resources.gpu}gpu", "sweep.stopping": json.dumps(asdict(spec.stopping))}
    params.update({f"base.{k}": v for k, v in spec.base_for_trials().flat().items()})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in tracking.flat_params(params).items()])
    return run.info.run_id


def _existing_parent(client, experiment: str, name: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`grokray.kind` = 'sweep' and tags.`grokray.sweep` = '{name}'",
                              max_results=1)
    return runs[0] if runs else None


def prepare_sweep(spec: SweepSpec, name: str | None = None) -> tuple[SweepRecord, Path]:
    """Check the name is free, create the MLflow parent run and write ``grokray_sweep.json``."""
    name = name or spec.name
    if name != spec.name:
        spec_raw = {**spec.raw, "name": name}
    else:
        spec_raw = dict(spec.raw)
    spec_raw["base"] = spec.base.to_dict()  # inline: the resumed sweep must not depend on files
    exp_dir = exp_dir_for(name, spec.storage_path())
    if exp_dir.exists():
        raise SweepError(f"sweep {name!r} already exists at {exp_dir}; continue it with "
                         f"`grokray sweep resume {name}` or pick another --name")
    uri = resolved_tracking_uri(spec)
    client = tracking.get_client(uri)
    if _existing_parent(client, spec.experiment_name, name) is not None:
        raise SweepError(f"sweep {name!r} already has an MLflow parent run in experiment "
                         f"{spec.experiment_name!r} at {uri}; pick another --name")
    experiment_id = tracking.get_or_create_experiment(client, spec.experiment_name)
    fields = {"name": name, "experiment_id": experiment_id}
    parent = _create_parent(client, fields, spec_from_dict(spec_raw, source=spec.source))
    record = SweepRecord(name=name, spec=to_plain(spec_raw), tracking_uri=uri, experiment=spec.experiment_name,
                         experiment_id=experiment_id, parent_run_id=parent, storage=spec.storage_path(),
                         created=time.time())
    record.save(exp_dir)
    import tempfile

    import yaml
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(record.spec, sort_keys=False))
        client.log_artifact(parent, str(Path(tmp) / "sweep.yaml"))
    return record, exp_dir


def _warn_cluster_store(record: SweepRecord, address: str | None) -> None:
    if (address or os.environ.get("RAY_ADDRESS")) and tracking.sqlite_path(record.tracking_uri) is not None:
        print(f"[grokray] warning: tracking store {record.tracking_uri} is a local sqlite file; trials on other "
              "nodes cannot write to it. On a cluster use the head's MLflow server (see mlflow/README.md).",
              file=sys.stderr, flush=True)


def _finish(record: SweepRecord, results: Any, refresher: PhaseMapRefresher, started: float) -> "SweepSummary":
    client = tracking.get_client(record.tracking_uri)
    refresher(force=True)
    errors = [r for r in results if r.error is not None] if results is not None else []
    status = "FAILED" if results is not None and errors and len(errors) == len(results) else "FINISHED"
    client.set_terminated(record.parent_run_id, status=status)
    return SweepSummary(record=record, n_trials=len(results) if results is not None else 0, n_errors=len(errors),
                        seconds=time.time() - started)


@dataclass
class SweepSummary:
    record: SweepRecord
    n_trials: int
    n_errors: int
    seconds: float


def run_sweep(spec: SweepSpec, name: str | None = None, address: str | None = None,
              dashboard: bool = False) -> SweepSummary:
    """Run a sweep to the end (trials, labels, phase map); see the module docstring."""
    from ray import tune

    from grokray.sweep.classifier import ClassifierCallback
    from grokray.sweep.progress import FINETUNE_COLUMNS, TRIAL_COLUMNS, ProgressTable

    started = time.time()
    sources = None
    if spec.finetune is not None:  # resolve the source runs and build their data before creating anything
        from grokray.transfer import prepare_sweep_sources

        sources = prepare_sweep_sources(spec, resolved_tracking_uri(spec))
    record, exp_dir = prepare_sweep(spec, name)
    spec = record.spec_obj()
    _warn_cluster_store(record, address)
    init_ray(address, dashboard)
    refresher = PhaseMapRefresher(record)
    columns = FINETUNE_COLUMNS if spec.finetune is not None else TRIAL_COLUMNS
    callbacks: list = [ProgressTable(spec.base_for_trials().train.max_steps, columns=columns)]
    if spec.classifier.enabled:
        callbacks.append(ClassifierCallback(record.name, record.tracking_uri, spec.classifier.split,
                                            spec.classifier.patching_queries, refresh=refresher))
    n_trials = spec.n_trials() * (len(sources) if sources is not None else 1)
    print(f"[grokray] sweep {record.name!r}: {n_trials} trial(s) ({spec.method}), MLflow experiment "
          f"{record.experiment!r} (parent run {record.parent_run_id}) at {record.tracking_uri}; state in {exp_dir}",
          flush=True)
    space = _search_space(spec)
    if sources is not None:
        from grokray.transfer import log_sources, source_space

        space.update(source_space(sources))
        log_sources(tracking.get_client(record.tracking_uri), record.parent_run_id, sources)
        print(f"[grokray] fine-tuning {len(sources)} source run(s): "
              + ", ".join(f"{s['run_name'] or s['run_id']} ({s['label']})" for s in sources), flush=True)
    tuner = tune.Tuner(_trainable(spec, record), param_space=space, tune_config=_tune_config(spec),
                       run_config=_run_config(spec, record, callbacks))
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        tracking.get_client(record.tracking_uri).set_terminated(record.parent_run_id, status="KILLED")
        raise SweepError(f"interrupted; continue with `grokray sweep resume {record.name}`") from None
    return _finish(record, results, refresher, started)


def find_sweep(name: str, storage: str | None = None) -> tuple[SweepRecord, Path]:
    from grokray.sweep.spec import DEFAULT_STORAGE

    exp_dir = exp_dir_for(name, storage or DEFAULT_STORAGE)
    if not (exp_dir / STATE_FILE).exists():
        raise SweepError(f"no sweep {name!r} under {exp_dir.parent} (use --storage if it was run elsewhere)")
    return SweepRecord.load(exp_dir), exp_dir


def unlabelled_finished_runs(record: SweepRecord) -> list[str]:
    """Finished trial runs of the sweep without a label (their driver died before labelling)."""
    client = tracking.get_client(record.tracking_uri)
    flt = (f"tags.`grokray.sweep` = '{record.name}' and tags.`grokray.kind` = 'trial' "
           "and attributes.status = 'FINISHED'")
    runs = list(tracking.iter_runs(client, [record.experiment_id], flt))
    return [r.info.run_id for r in runs if "grokray.label" not in r.data.tags]


def resume_sweep(name: str, storage: str | None = None, address: str | None = None,
                 dashboard: bool = False) -> SweepSummary:
    """Continue an interrupted sweep: finished trials are kept, running ones restart from their
    last checkpoint, finished-but-unlabelled ones are labelled."""
    import ray
    from ray import tune

    from grokray.sweep.classifier import get_classifier

    started = time.time()
    record, exp_dir = find_sweep(name, storage)
    spec = record.spec_obj()
    if not tune.Tuner.can_restore(str(exp_dir)):
        raise SweepError(f"sweep {name!r} at {exp_dir} has no Ray Tune state to resume (it was interrupted "
                         "before its first trial started); remove the directory and run it again")
    _warn_cluster_store(record, address)
    init_ray(address, dashboard)
    client = tracking.get_client(record.tracking_uri)
    client.update_run(record.parent_run_id, status="RUNNING")
    backlog = []
    if spec.classifier.enabled:
        actor = get_classifier(record.name, record.tracking_uri, spec.classifier.split,
                               spec.classifier.patching_queries, PhaseMapRefresher(record))
        pending = unlabelled_finished_runs(record)
        if pending:
            print(f"[grokray] labelling {len(pending)} finished trial(s) the interrupted driver did not label",
                  flush=True)
        backlog = [actor.classify.remote(run_id) for run_id in pending]
    print(f"[grokray] resuming sweep {name!r} from {exp_dir}", flush=True)
    tuner = tune.Tuner.restore(str(exp_dir), trainable=_trainable(spec, record), resume_unfinished=True,
                               resume_errored=True)
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        client.set_terminated(record.parent_run_id, status="KILLED")
        raise SweepError(f"interrupted; continue with `grokray sweep resume {name}`") from None
    for summary in ray.get(backlog):
        line = summary.get("line") or summary.get("error")
        print(f"[grokray] label: {line}", flush=True)
    return _finish(record, results, PhaseMapRefresher(record), started)


__all__ = ["SweepError", "SweepRecord", "SweepSummary", "run_sweep", "resume_sweep", "find_sweep", "prepare_sweep",
           "init_ray", "ConfigError"]
