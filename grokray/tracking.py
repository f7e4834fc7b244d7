"""Everything MLflow: the store, experiments, runs, batched logging, artifacts.

The science core never imports this module; the trainer is observed through
:class:`RunLogger`, a :class:`~grokray.train.TrainCallback`.

* Local default needs no server: ``sqlite:///<cwd>/mlflow.db`` (artifacts beside it
  in ``mlruns/``). A new sqlite store is put in WAL mode so a few concurrent writers
  (trials, the classifier) do not trip over "database is locked".
* One ``log_batch`` per evaluation (20 metrics: ~0.03 s, against ~0.5 s one by one).
* Params are flattened dotted keys, values capped at 500 characters (mlflow#6183).
* A restarted trial never logs a step twice: :class:`RunLogger` skips evaluations at or
  before the last step the run already holds.

Example:
    >>> # client = get_client()                       # sqlite:///$PWD/mlflow.db
    >>> # exp_id = get_or_create_experiment(client, "grokray")
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # these machines have no internet
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars garble CLI output

import grokray

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from grokray.train import Trainer, TrainResult

PARAM_MAX = 500
TAG_PREFIX = "grokray."
DEFAULT_EXPERIMENT = "grokray"


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


def _prepare_sqlite(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        # WAL lets readers proceed during a write; persistent once set on the file.
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=WAL")
        con.close()


def get_client(uri: str | None = None) -> "MlflowClient":
    """An MlflowClient for ``uri`` (see :func:`tracking_uri`); a local sqlite store is created if missing."""
    from mlflow.tracking import MlflowClient

    from mlflow.exceptions import MlflowException

    from grokray.config import ConfigError

    uri = tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        _prepare_sqlite(db)
    try:
        return MlflowClient(tracking_uri=uri)
    except MlflowException:  # MLflow's own message is a paragraph: one line for a user mistake
        raise ConfigError("not a tracking URI MLflow can use (sqlite:///PATH, http(s)://HOST:PORT, file:PATH, "
                          "postgresql://...)", key="tracking URI", value=uri) from None


def get_or_create_experiment(client: "MlflowClient", name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root(client.tracking_uri)
    location = f"{root}/{_safe(name)}" if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def flat_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """Dotted config -> MLflow params: strings, capped at 500 characters."""
    out = {}
    for k, v in flat.items():
        s = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
        out[k] = s if len(s) <= PARAM_MAX else s[:PARAM_MAX - 3] + "..."
    return out


def log_metrics(client: "MlflowClient", run_id: str, step: int, metrics: Mapping[str, float]) -> None:
    """One ``log_batch`` call for a whole evaluation; NaN/inf are logged as NaN (MLflow accepts them)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v) if v is not None else math.nan, now, int(step)) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for i in range(0, len(batch), 1000):  # MLflow's per-request limit
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def last_logged_step(client: "MlflowClient", run_id: str, key: str = "acc/train") -> int:
    """The largest step at which ``key`` was logged in the run, -1 if never."""
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def trial_run_name(cfg: Any) -> str:
    """A short human name from the usual swept values: ``phi7.2-none-L1x2-wd1-s0``."""
    d, m, t = cfg.data, cfg.model, cfg.train
    return (f"phi{d.phi:g}-{d.augmentation_name()}-L{m.n_layers}x{m.n_loops}-wd{t.weight_decay:g}"
            f"-s{cfg.seed}")


class RunLogger:
    """Trainer callback that records one trial as one MLflow run.

    Create it with :func:`start_trial_run` (new run) or with an existing ``run_id`` (a
    restarted trial); it logs params once, one batch of metrics per evaluation, every
    checkpoint, and at the end the curves PNG, the history and the final tags.
    """

    def __init__(self, client: "MlflowClient", run_id: str, log_checkpoints: bool = True):
        self.client, self.run_id = client, run_id
        self.log_checkpoints = log_checkpoints
        self.skip_until = last_logged_step(client, run_id)

    def on_start(self, trainer: "Trainer") -> None:
        if self.skip_until >= 0:
            return  # params and dataset were logged by the first attempt
        from mlflow.entities import Param, RunTag

        cfg = trainer.cfg
        params = flat_params(cfg.flat())
        params["data.augmentation"] = cfg.data.augmentation_name()
        params["model.n_params"] = str(trainer.model.num_params())
        tags = {f"{TAG_PREFIX}dataset": trainer.dataset.name, f"{TAG_PREFIX}version": grokray.__version__,
                f"{TAG_PREFIX}device": str(trainer.device), f"{TAG_PREFIX}precision": trainer.precision}
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "dataset.json").write_text(json.dumps(trainer.dataset.summary(), indent=2))
            import yaml
            (Path(tmp) / "trial.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            self.client.log_artifacts(self.run_id, tmp)

    def on_eval(self, step: int, metrics: dict[str, float], trainer: "Trainer") -> None:
        if step > self.skip_until:
            log_metrics(self.client, self.run_id, step, metrics)
        return None

    def on_checkpoint(self, step: int, path: Path, trainer: "Trainer") -> None:
        if self.log_checkpoints:
            self.client.log_artifact(self.run_id, str(path), "checkpoints")

    def on_end(self, result: "TrainResult", trainer: "Trainer") -> None:
        log_run_summary(self.client, self.run_id, result.history, result.stop_reason, result.steps_run,
                        trainer.cfg.train.max_steps, title=trial_run_name(trainer.cfg))


def log_run_summary(client: "MlflowClient", run_id: str, history: list[dict], stop_reason: str,
                    steps_run: int, max_steps: int, title: str = "") -> None:
    """Curves PNG, full history (JSON + CSV) and the end-of-training tags."""
    from mlflow.entities import RunTag

    from grokray.plots import plot_curves

    with tempfile.TemporaryDirectory() as tmp:
        plot_curves(history, Path(tmp) / "curves.png", title=title)
        (Path(tmp) / "history.json").write_text(json.dumps(history))
        keys = sorted({k for h in history for k in h} - {"step"})
        lines = [",".join(["step"] + keys)]
        lines += [",".join([str(h["step"])] + [repr(h.get(k, "")) if k in h else "" for k in keys])
                  for h in history]
        (Path(tmp) / "history.csv").write_text("\n".join(lines) + "\n")
        client.log_artifacts(run_id, tmp)
    tags = {f"{TAG_PREFIX}stop_reason": stop_reason, f"{TAG_PREFIX}steps_run": str(steps_run),
            f"{TAG_PREFIX}max_steps": str(max_steps)}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def start_trial_run(client: "MlflowClient", experiment_id: str, run_name: str,
                    parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and return its id."""
    all_tags = {f"{TAG_PREFIX}kind": "trial", **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(client: "MlflowClient", run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=status)


def download_artifact(client: "MlflowClient", run_id: str, path: str, dst: str | os.PathLike) -> str:
    return client.download_artifacts(run_id, path, str(dst))


def iter_runs(client: "MlflowClient", experiment_ids: Iterable[str], filter_string: str = "",
              max_results: int = 1000):
    """All runs matching ``filter_string``, paging through search results."""
    token = None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=max_results,
                                  page_token=token)
        yield from page
        token = page.token
        if not token:
            break
