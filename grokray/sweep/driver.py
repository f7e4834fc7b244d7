"""The sweep driver: a spec -> Ray Tune trials -> MLflow parent/child runs -> labels -> a report.

``grokray sweep run SPEC`` calls :func:`run_sweep`; ``grokray sweep resume NAME`` calls
:func:`resume_sweep`. A sweep lives in two places, kept together by default:

* ``<storage>/<name>/``: Ray Tune's experiment state and trial checkpoints, plus
  ``grokray_sweep.json`` (the resolved spec, the tracking URI and the parent run id), so
  a resume needs nothing but the name. The default storage sits beside a local MLflow
  store (``<dir of mlflow.db>/grokray_results``), so the store and the sweeps that wrote
  to it travel together; with a remote store it is ``~/grokray_results/<store>``
  (:func:`default_storage`);
* MLflow: one parent run (``grokray.kind = sweep``) and one nested child run per trial,
  labelled by the classifier actor as trials finish; the report (phase map or transfer
  map) is logged on the parent by a ``map_logger`` the caller hands in (the presentation
  layer: :mod:`grokray.cli`) and refreshed as labels arrive.

Names are unique: an existing sweep is never overwritten (``run`` refuses, ``resume``
continues it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from grokray import tracking
from grokray.contract import PHASE_MAP_DIR, SEARCH_MAP_CSV
from grokray.version import __version__
from grokray.sweep.classifier import ClassifierCallback, get_classifier
from grokray.sweep.progress import RESUME_LOG_ENV, SweepProgress
from grokray.sweep.spec import SweepSpec, spec_from_dict
from grokray.sweep.layout import Layout
from grokray.sweep.trainable import TrialContext, run_trial, trial_label

STATE_FILE = "grokray_sweep.json"
#: Ray's switch that hides the GPUs from a worker that asked for none (set by :func:`init_ray`).
ACCEL_OVERRIDE = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"
#: The progress lines of a sweep's driver, kept beside its state (``grokray sweep logs NAME``, ``status --follow``).
PROGRESS_LOG = "progress.log"
#: Where sweeps lived before the default storage moved beside the store (still searched).
LEGACY_STORAGE = "~/grokray_results"
#: A map logger: ``(tracking_uri, parent_run_id, sweep, experiment)`` -> logs the sweep's report.
MapLogger = Callable[[str, str, str, str], Any]


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
    #: A packed sweep's packs (each a list of member values), fixed when the sweep starts so that a
    #: resume (perhaps on other hardware, where ``pack: auto`` would choose otherwise) finds them.
    packs: list | None = None

    def save(self, exp_dir: Path) -> None:
        exp_dir.mkdir(parents=True, exist_ok=True)
        tmp = exp_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, exp_dir / STATE_FILE)

    @classmethod
    def load(cls, exp_dir: Path) -> "SweepRecord":
        try:
            return cls(**json.loads((exp_dir / STATE_FILE).read_text()))
        except (ValueError, TypeError) as e:
            raise SweepError(f"{exp_dir / STATE_FILE}: unreadable sweep state ({type(e).__name__}: {e})") from None

    def spec_obj(self) -> SweepSpec:
        """The spec, parsed from the record (once per driver process)."""
        return spec_from_dict(self.spec, source=f"{self.name} ({STATE_FILE})")


# --------------------------------------------------------------------------- where things are

def resolved_tracking_uri(spec: SweepSpec) -> str:
    """The spec's URI, else $MLFLOW_TRACKING_URI, else sqlite in the cwd; sqlite paths made absolute
    (trial processes have other working directories)."""
    return absolute_uri(tracking.tracking_uri(spec.tracking_uri))


def absolute_uri(uri: str) -> str:
    db = tracking.sqlite_path(uri)
    return f"sqlite:///{db.expanduser().resolve()}" if db is not None else uri


def default_storage(uri: str) -> str:
    """Where a sweep's Tune state lives by default: beside a local sqlite store, else under
    ``~/grokray_results/<a name for the store>`` (keyed by store, then by sweep name)."""
    db = tracking.sqlite_path(uri)
    if db is not None:
        return str(db.expanduser().resolve().parent / "grokray_results")
    key = "".join(c if c.isalnum() else "_" for c in uri.split("://", 1)[-1])[:60]
    digest = hashlib.sha256(uri.encode()).hexdigest()[:8]
    return str(Path(os.path.expanduser(LEGACY_STORAGE)) / f"{key}-{digest}")


def storage_path(storage: str) -> str:
    """Absolute storage path (or URI) for Ray Tune."""
    if "://" in storage:
        return storage
    return str(Path(os.path.expanduser(storage)).resolve())


def exp_dir_for(name: str, storage: str) -> Path:
    if "://" in storage:
        raise SweepError(f"storage {storage!r}: resume and status need a local or mounted path")
    return Path(os.path.expanduser(storage)).resolve() / name


def find_sweep(name: str, storage: str | None = None, tracking_uri: str | None = None) -> tuple[SweepRecord, Path]:
    """A sweep's record and state folder: under ``storage`` if given, else beside the store
    (``tracking_uri``, default as everywhere), else in the legacy ``~/grokray_results``.

    Raises:
        SweepError: one line: no such sweep, or a sweep whose driver died before its state existed.
    """
    uri = absolute_uri(tracking.tracking_uri(tracking_uri))
    places = [storage] if storage else [default_storage(uri), LEGACY_STORAGE]
    for place in places:
        exp_dir = exp_dir_for(name, place)
        if (exp_dir / STATE_FILE).exists():
            return SweepRecord.load(exp_dir), exp_dir
    where = " or ".join(str(exp_dir_for(name, p).parent) for p in places)
    db = tracking.sqlite_path(uri)
    if db is None or db.exists():
        client = tracking.get_client(uri)
        parent = tracking.find_sweep_parent(client, name)
        if parent is not None:
            raise SweepError(f"sweep {name!r} has an MLflow parent run ({parent.info.run_id}) but no saved state "
                             f"under {where}: its driver died before the state was written; run it again under "
                             "another --name")
    raise SweepError(f"no sweep {name!r} under {where} (use --storage, or --tracking-uri for the store it wrote to)")


# --------------------------------------------------------------------------- Ray and Tune

class _DropRayNotice(logging.Filter):
    """Ray >= 2.59 announces on every local start that token authentication is on: true, kept on,
    and nothing a sweep's user has to act on. Other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


def quiet_startup() -> None:
    """Silence start-up output that means nothing to a sweep's user (warnings that matter stay):
    Tune's experiment banner and TensorBoard hint (grokray prints its own progress; TensorBoard is
    not installed), Ray's token-authentication notice."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # the legacy reporter prints nothing at verbose=0
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DropRayNotice())


def init_ray(address: str | None = None, dashboard: bool = False) -> None:
    """Connect to ``address`` / ``$RAY_ADDRESS``, or start a local Ray (no dashboard by default)."""
    import ray

    if ray.is_initialized():
        return
    quiet_startup()
    # Ray 2.60 no longer hides the GPUs from a worker that asked for none: ask it to (CPU trials must not
    # land on GPU 0 outside Ray's accounting); trials also resolve `auto` from what Ray assigned them
    # (grokray.sweep.trainable.trial_device).
    os.environ.setdefault(ACCEL_OVERRIDE, "1")
    env = {k: os.environ[k] for k in ("GROKRAY_CACHE", "GROKRAY_CHECKPOINT_EVERY_S", "MLFLOW_DISABLE_TELEMETRY",
                                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", ACCEL_OVERRIDE) if k in os.environ}
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


def search_space(spec: SweepSpec, prepared: Any = None) -> dict[str, Any]:
    """Tune's search space of the spec's trials (a packed sweep's layout lays them out in packs)."""
    from ray import tune

    if spec.method == "boundary":  # the searcher proposes whole configs (grokray.sweep.boundary_searcher)
        return dict(spec.kind_impl.search_space(spec, prepared))
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
    space.update(spec.kind_impl.search_space(spec, prepared))
    return space


class _TrialNamer:
    """Tune's trial (and folder) names: the readable values plus the end of the trial id."""

    def __init__(self, spec: SweepSpec, layout: Layout):
        self.spec, self.layout = spec, layout

    def __setstate__(self, state: dict) -> None:
        # Tune pickles the namer into its experiment state; one saved by an older grokray has no
        # layout, and a resume with this one crashed on it (the phase-map sweep, 2026-12-05)
        self.__dict__.update(state)
        self.__dict__.setdefault("layout", Layout())

    def __call__(self, trial: Any) -> str:
        return (self.layout.trial_name(trial.config, trial.trial_id)
                or f"{trial_label(self.spec, trial.config)}_{trial.trial_id[-5:]}")


def _tune_config(spec: SweepSpec, layout: Layout):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    search_alg = None
    if spec.method == "boundary":
        from ray.tune.search import ConcurrencyLimiter

        from grokray.sweep.boundary_searcher import searcher_for

        search_alg = searcher_for(spec)
        if spec.max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=spec.max_concurrent)
    if spec.method == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric=spec.metric["name"], mode=spec.metric["mode"], seed=spec.base.seed)
        if spec.max_concurrent:
            search_alg = ConcurrencyLimiter(search_alg, max_concurrent=spec.max_concurrent)
    scheduler = FIFOScheduler()
    s = spec.scheduler
    if s.name == "asha":
        scheduler = ASHAScheduler(time_attr="step", metric=s.metric, mode=s.mode, max_t=spec.budget,
                                  grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    namer = _TrialNamer(spec, layout)
    # reuse_actors: a trial process (torch and grokray imported, datasets in memory) runs the next
    # trial too, instead of a fresh process per trial (~2-3 s each on 2 cores: the fixed cost that
    # dominated sweeps of short trials). Tune still starts a new one after a worker dies.
    return tune.TuneConfig(num_samples=spec.num_samples, search_alg=search_alg, scheduler=scheduler,
                           max_concurrent_trials=spec.max_concurrent if spec.method not in ("optuna", "boundary")
                           else None,
                           trial_name_creator=namer, trial_dirname_creator=namer, reuse_actors=True)


def _trainable(spec: SweepSpec, record: SweepRecord, layout: Layout):
    from ray import tune

    ctx = TrialContext(spec=spec, tracking_uri=record.tracking_uri, experiment_id=record.experiment_id,
                       parent_run_id=record.parent_run_id, layout=layout)
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources)


def _run_config(record: SweepRecord, spec: SweepSpec, callbacks: list):
    from ray import tune

    return tune.RunConfig(name=record.name, storage_path=storage_path(record.storage),
                          failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                          callbacks=callbacks, verbose=0)


class MapRefresher:
    """Re-logs the sweep's report on its parent run as labels arrive (at most every ``every_s``).

    Picklable (the classifier actor calls it after each new label): ``map_logger`` is a
    module-level function of the presentation layer, pickled by reference.
    """

    def __init__(self, record: SweepRecord, map_logger: MapLogger | None, every_s: float = 20.0):
        self.record, self.map_logger, self.every_s = record, map_logger, every_s
        self.last = 0.0

    def __call__(self, summary: dict | None = None, force: bool = False) -> None:
        if self.map_logger is None or (not force and time.monotonic() - self.last < self.every_s):
            return
        self.last = time.monotonic()
        try:
            self.map_logger(self.record.tracking_uri, self.record.parent_run_id, self.record.name,
                            self.record.experiment)
        except Exception as e:  # the map is a view: never let it break the sweep
            print(f"[grokray] map not refreshed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- run / resume

def _create_parent(client: Any, experiment_id: str, spec: SweepSpec) -> str:
    """The sweep's parent run, and a saved view of its trials in the MLflow UI.

    The view (MLflow 3.17's "Views" menu of the runs table: an experiment tag
    ``mlflow.sharedViewState.<id>`` holding ``{name, createdAt, updatedAt, state}``, the state a
    JSON string of the runs page's search facets and UI state) filters the runs table to this
    sweep's trials, shows grokray's columns (label, detail, confidence, the ``verdict/*``
    numbers, the swept params) and sorts by run name. The parent's description (its
    ``mlflow.note.content``) says how to read those columns and links the view; the link also
    carries ``workflowType=machine_learning``, without which the 3.17 UI opens an experiment in
    its GenAI view whatever the experiment's ``mlflow.experimentKind`` tag says.
    """
    from grokray.config import SECTIONS, flatten
    from grokray.sweep.params import without_name

    parent = tracking.start_run(client, experiment_id, spec.name, kind=tracking.KIND_SWEEP, tags={
        tracking.Tag.SWEEP: spec.name, tracking.Tag.VERSION: __version__})
    P = tracking.SweepParam
    params = {P.METHOD: spec.method, P.KIND: spec.kind, P.N_TRIALS: spec.n_trials(),
              P.SWEPT: ",".join(spec.swept_keys), P.MAX_STEPS: spec.budget, P.MAX_CONCURRENT: spec.max_concurrent,
              P.RESOURCES: f"{spec.resources.cpu}cpu,{spec.resources.gpu}gpu",
              P.STOPPING: json.dumps(spec.stopping.to_dict()), P.CRITERION: spec.classifier.criterion,
              P.EVIDENCE: spec.classifier.evidence}
    params.update({f"{tracking.SweepParam.BASE_PREFIX}{k}": v for k, v in spec.base.flat().items()})
    tracking.log_params(client, parent, params)

    # The swept values as param columns: a grouped value of a section (``model: {n_layers, n_loops}``)
    # is logged as the section's own params.
    swept: list[str] = []
    for p in spec.parameters:
        if p.key not in spec.swept_keys:
            continue
        groups = [v for v in (p.values or []) if isinstance(v, dict)]
        keys = ([f"{p.key}.{k.split('.')[0]}" for v in groups for k in flatten(without_name(v))]
                if p.key in SECTIONS and groups else [p.key])
        swept += [k for k in keys if k not in swept]
    columns = spec.kind_impl.view_columns(spec) + [f"params.`{k}`" for k in swept]
    link = tracking.save_runs_view(
        client, experiment_id, tracking.sweep_view_id(spec.name), f"grokray: {spec.name}",
        search_filter=f"tags.`{tracking.Tag.PARENT}` = '{parent}'",   # children only, one flat row each
        order_by=f"tags.`{tracking.Tag.RUN_NAME}`", columns=columns)   # label first, not params
    link = link or tracking.runs_view_link(experiment_id)

    reading = spec.kind_impl.reading(spec, link)
    tracking.log_tags(client, parent, {
        tracking.Tag.NOTE: f"{spec.description or f'grokray sweep {spec.name}'}\n\n{reading}"})
    return parent


def prepare_sweep(spec: SweepSpec, name: str | None = None) -> tuple[SweepRecord, Path, SweepSpec]:
    """Check the name is free, create the MLflow parent run and write ``grokray_sweep.json``."""
    import yaml

    if name and name != spec.name:
        spec = spec.renamed(name)
    uri = resolved_tracking_uri(spec)
    storage = storage_path(spec.storage or default_storage(uri))
    exp_dir = exp_dir_for(spec.name, storage)
    if exp_dir.exists():
        raise SweepError(f"sweep {spec.name!r} already exists at {exp_dir}; continue it with "
                         f"`grokray sweep resume {spec.name}` or pick another --name")
    client = tracking.get_client(uri)
    exp = client.get_experiment_by_name(spec.experiment_name)
    if exp is not None and tracking.find_sweep_parent(client, spec.name, [exp.experiment_id]) is not None:
        raise SweepError(f"sweep {spec.name!r} already has an MLflow parent run in experiment "
                         f"{spec.experiment_name!r} at {uri}; pick another --name")
    experiment_id = tracking.get_or_create_experiment(client, spec.experiment_name)
    parent = _create_parent(client, experiment_id, spec)
    record = SweepRecord(name=spec.name, spec=spec.raw, tracking_uri=uri, experiment=spec.experiment_name,
                         experiment_id=experiment_id, parent_run_id=parent, storage=storage, created=time.time())
    record.save(exp_dir)
    tracking.log_texts(client, parent, {tracking.SWEEP_YAML: yaml.safe_dump(record.spec, sort_keys=False)})
    return record, exp_dir, spec


def _warn_cluster_store(record: SweepRecord, address: str | None) -> None:
    if (address or os.environ.get("RAY_ADDRESS")) and tracking.sqlite_path(record.tracking_uri) is not None:
        print(f"[grokray] warning: tracking store {record.tracking_uri} is a local sqlite file; trials on other "
              "nodes cannot write to it. On a cluster use the head's MLflow server (see mlflow/README.md).",
              file=sys.stderr, flush=True)


@dataclass
class SweepSummary:
    record: SweepRecord
    n_trials: int
    n_errors: int
    seconds: float
    n_unfinished: int = 0     # > 0: the sweep was interrupted (Ctrl-C / SIGINT); `resume` continues it
    n_ended: int = 0          # trials that finished or failed (Tune creates a grid's trials lazily: n_trials
                              # counts only those created so far)


def _finish(record: SweepRecord, results: Any, refresher: MapRefresher, started: float,
            expected: int | None = None) -> SweepSummary:
    """Mark the parent run and count what ran. Ray Tune ends ``fit()`` normally on SIGINT (it saves its
    state first), so an interrupted sweep is told by trials that neither finished nor failed, or by
    fewer trials than the spec makes (``expected``, where it is known)."""
    client = tracking.get_client(record.tracking_uri)
    refresher(force=True)
    n = len(results) if results is not None else 0
    n_errors = results.num_errors if results is not None else 0
    unfinished = (n - results.num_terminated - n_errors if results is not None else 0) + max(0, (expected or 0) - n)
    if unfinished:
        status = "KILLED"
    else:
        status = "FAILED" if n and n_errors == n else "FINISHED"
    client.set_terminated(record.parent_run_id, status=status)
    ended = results.num_terminated + n_errors if results is not None else 0
    return SweepSummary(record=record, n_trials=n, n_errors=n_errors, seconds=time.time() - started,
                        n_unfinished=unfinished, n_ended=ended)


def _callbacks(spec: SweepSpec, record: SweepRecord, refresher: MapRefresher, n_trials: int | None) -> list:
    log = exp_dir_for(record.name, record.storage) / PROGRESS_LOG
    progress = SweepProgress(spec.budget, n_trials, columns=spec.kind_impl.progress_columns, log_path=str(log))
    callbacks: list = [progress]
    if spec.classifier.enabled:
        # first: at the end it waits for the last labels, so the progress's final summary counts them
        callbacks.insert(0, ClassifierCallback(record.name, record.tracking_uri, spec.classifier,
                                               refresh=refresher, progress=progress))
    return callbacks


def _log_search_map(record: SweepRecord, spec: SweepSpec, exp_dir: Path) -> None:
    """Method boundary: the search's whole map (every grid point, its label and source) on the
    parent run, ``phase_map/search_map.csv`` (:mod:`grokray.sweep.search_map`), from the state Tune
    saved as ``fit()`` returned. A state that cannot be read is said in one line; the sweep's runs
    are unaffected."""
    from grokray.sweep.search_map import describe_sources, sweep_search_map

    try:
        df = sweep_search_map(spec, exp_dir)
        if df is None:
            return
        with tempfile.TemporaryDirectory(prefix="grokray-search-map-") as tmp:
            path = Path(tmp) / SEARCH_MAP_CSV
            df.to_csv(path, index=False)
            tracking.get_client(record.tracking_uri).log_artifact(record.parent_run_id, str(path), PHASE_MAP_DIR)
    except Exception as e:  # a by-product: the sweep's runs, labels and parent run must still be finished
        print(f"[grokray] search map not logged: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              flush=True)
        return
    print(f"[grokray] search map: {describe_sources(df)} ({PHASE_MAP_DIR}/{SEARCH_MAP_CSV} on the parent run)",
          flush=True)


def _fit(tuner: Any, record: SweepRecord) -> Any:
    try:
        return tuner.fit()
    except KeyboardInterrupt:
        tracking.get_client(record.tracking_uri).set_terminated(record.parent_run_id, status="KILLED")
        raise SweepError(f"interrupted; continue with `grokray sweep resume {record.name}`") from None


def run_sweep(spec: SweepSpec, name: str | None = None, address: str | None = None, dashboard: bool = False,
              map_logger: MapLogger | None = None) -> SweepSummary:
    """Run a sweep to the end (trials, labels, report); see the module docstring."""
    from ray import tune

    started = time.time()
    kind = spec.kind_impl
    prepared = kind.prepare(spec, resolved_tracking_uri(spec))  # e.g. resolve sources: before creating anything
    record, exp_dir, spec = prepare_sweep(spec, name)
    _warn_cluster_store(record, address)
    init_ray(address, dashboard)
    layout = Layout.plan(spec)                  # fixed now: a resume finds the same packs in the record
    record.packs = layout.saved()
    record.save(exp_dir)
    refresher = MapRefresher(record, map_logger)
    space = search_space(spec, prepared)
    n_trials = _count_trials(spec, space)
    print(f"[grokray] sweep {record.name!r}: {'at most ' if spec.method == 'boundary' else ''}{n_trials} trial(s) "
          f"({spec.method}), MLflow experiment {record.experiment!r} (parent run {record.parent_run_id}) at "
          f"{record.tracking_uri}; state in {exp_dir}", flush=True)
    for line in [layout.describe(), *kind.log_prepared(tracking.get_client(record.tracking_uri),
                                                        record.parent_run_id, prepared)]:
        if line:
            print(f"[grokray] {line}", flush=True)
    n_tune = layout.n_tune_trials(n_trials)
    tuner = tune.Tuner(_trainable(spec, record, layout), param_space=layout.search_space(space),
                       tune_config=_tune_config(spec, layout),
                       run_config=_run_config(record, spec, _callbacks(spec, record, refresher, n_tune)))
    # method boundary: num_samples is a budget, and the search may resolve every boundary with fewer
    expected = None if spec.method == "boundary" else n_tune
    results = _fit(tuner, record)
    _log_search_map(record, spec, exp_dir)
    return _finish(record, results, refresher, started, expected=expected)


def _count_trials(spec: SweepSpec, space: dict[str, Any]) -> int:
    """Trials Tune will run: the spec's count times the kind's extra grid entries."""
    extra = 1
    for key, value in space.items():
        if key not in {p.key for p in spec.parameters} and isinstance(value, dict) and "grid_search" in value:
            extra *= len(value["grid_search"])
    return spec.n_trials() * extra


def resume_sweep(name: str, storage: str | None = None, address: str | None = None, dashboard: bool = False,
                 tracking_uri: str | None = None, map_logger: MapLogger | None = None) -> SweepSummary:
    """Continue an interrupted sweep: finished trials are kept, running ones restart from their
    last checkpoint, finished-but-unlabelled ones are labelled."""
    from ray import tune

    started = time.time()
    record, exp_dir = find_sweep(name, storage, tracking_uri)
    spec = record.spec_obj()
    if not tune.Tuner.can_restore(str(exp_dir)):
        raise SweepError(f"sweep {name!r} at {exp_dir} has no Ray Tune state to resume (it was interrupted "
                         "before its first trial started); remove the directory and run it again")
    _warn_cluster_store(record, address)
    init_ray(address, dashboard)
    client = tracking.get_client(record.tracking_uri)
    client.update_run(record.parent_run_id, status="RUNNING")
    refresher = MapRefresher(record, map_logger)
    if spec.classifier.enabled:
        # the restored ClassifierCallback labels what the interrupted driver left unlabelled (its setup)
        get_classifier(record.name, record.tracking_uri, spec.classifier, refresher)
    print(f"[grokray] resuming sweep {name!r} from {exp_dir}", flush=True)
    os.environ[RESUME_LOG_ENV] = str(exp_dir / PROGRESS_LOG)   # for a restored display that kept no log
    tuner = tune.Tuner.restore(str(exp_dir), trainable=_trainable(spec, record, Layout.from_saved(record.packs)),
                               resume_unfinished=True, resume_errored=True)
    results = _fit(tuner, record)
    _log_search_map(record, spec, exp_dir)
    return _finish(record, results, refresher, started)


__all__ = ["SweepError", "SweepRecord", "SweepSummary", "run_sweep", "resume_sweep", "find_sweep", "prepare_sweep",
           "init_ray", "default_storage"]
