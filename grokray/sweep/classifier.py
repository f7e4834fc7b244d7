"""The circuit-classification Ray actor of a sweep, and the Tune callback that feeds it.

One named actor per sweep (``grokray-classifier-<sweep>`` in namespace ``grokray``)
labels each finished trial's MLflow run with :func:`grokray.classify.classify_run`
while the sweep goes on. Labelling is idempotent per classifier version, and the actor
handles one run at a time, so a trial is labelled exactly once even when the callback
and a resume both submit it.

The callback holds no actor handle in its state (Tune pickles callbacks with the
experiment; a resumed driver gets a new actor by name).
"""
from __future__ import annotations

import sys
import time
from typing import Any

import ray
from ray.tune import Callback

from grokray import tracking
from grokray.classify import RunNotClassifiable, classify_run

NAMESPACE = "grokray"


def actor_name(sweep: str) -> str:
    return f"grokray-classifier-{sweep}"


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
class ClassifierActor:
    """Labels runs one at a time; ``num_cpus=0`` so it never holds a trial's slot."""

    def __init__(self, tracking_uri: str, settings: Any, refresh: Any = None):
        import torch

        torch.set_num_threads(1)
        self.tracking_uri, self.settings = tracking_uri, settings  # settings: the spec's ClassifierSpec
        self.refresh = refresh  # called after each new label (the phase map on the parent run)
        self.client = None
        self.done: dict[str, dict] = {}

    def classify(self, run_id: str) -> dict:
        from grokray import tracking

        if self.client is None:
            self.client = tracking.get_client(self.tracking_uri)
        t0 = time.perf_counter()
        try:
            out = classify_run(run_id, client=self.client, split=self.settings.split,
                               criterion=self.settings.criterion, n_queries=self.settings.patching_queries,
                               evidence=self.settings.evidence)
        except RunNotClassifiable as e:
            return {"run_id": run_id, "error": str(e)}
        summary = {"run_id": run_id, "run_name": out.run_name, "action": out.action, "label": out.verdict.label,
                   "detail": out.verdict.detail, "confidence": out.verdict.confidence, "line": out.line(),
                   "seconds": time.perf_counter() - t0}
        self.done[run_id] = summary
        if self.refresh is not None and out.action != "unchanged":
            self.refresh()
        return summary

    def labelled(self) -> dict[str, dict]:
        return dict(self.done)


def get_classifier(sweep: str, tracking_uri: str, settings: Any, refresh: Any = None):
    """The sweep's classifier actor, created on first use (shared by name afterwards);
    ``settings``: the spec's :class:`~grokray.sweep.spec.ClassifierSpec`."""
    return ClassifierActor.options(name=actor_name(sweep), namespace=NAMESPACE, get_if_exists=True,
                                   lifetime=None).remote(tracking_uri, settings, refresh)


class ClassifierCallback(Callback):
    """Submits every completed trial's run to the classifier actor; reports labels as they arrive.

    ``refresh`` (picklable, e.g. :class:`grokray.sweep.driver.MapRefresher`) runs in the
    actor after each new label, off the driver's event loop.
    """

    def __init__(self, sweep: str, tracking_uri: str, settings: Any, refresh: Any = None, progress: Any = None):
        self.sweep, self.tracking_uri, self.settings = sweep, tracking_uri, settings
        self.progress = progress  # a SweepProgress: label lines go through it (and its label counts)
        self.refresh = refresh
        self._pending: dict[str, Any] = {}
        self._actor = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pending"], state["_actor"] = {}, None
        return state

    @property
    def actor(self):
        if self._actor is None:
            self._actor = get_classifier(self.sweep, self.tracking_uri, self.settings, self.refresh)
        return self._actor

    def setup(self, **info: Any) -> None:
        """On a resume: the label counts start from the labels the sweep's runs already carry (the
        restored progress display was pickled when the sweep began, with none), and finished runs
        the interrupted driver did not label are submitted like any other."""
        try:
            client = tracking.get_client(self.tracking_uri)
            parent = tracking.find_sweep_parent(client, self.sweep)
            runs = tracking.sweep_runs(client, parent, status="FINISHED") if parent is not None else []
        except Exception as e:   # labels then come as trials finish; this must not stop the sweep
            print(f"[grokray] could not read the sweep's earlier runs: {e}", file=sys.stderr, flush=True)
            return
        labelled = [r.data.tags[tracking.Tag.LABEL] for r in runs if tracking.Tag.LABEL in r.data.tags]
        if self.progress is not None:
            self.progress.board.count_stored(labelled)
        unlabelled = [r.info.run_id for r in runs if tracking.Tag.LABEL not in r.data.tags]
        if unlabelled:
            print(f"[grokray] labelling {len(unlabelled)} finished trial(s) the interrupted driver did not label",
                  flush=True)
        for run_id in unlabelled:
            self.submit(run_id)

    def submit(self, run_id: str) -> None:
        if run_id and run_id not in self._pending:
            self._pending[run_id] = self.actor.classify.remote(run_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        for run_id in result.get("mlflow_run_ids") or [result.get("mlflow_run_id")]:   # a pack: every member
            if run_id:
                self.submit(run_id)

    def _collect(self, timeout: float) -> None:
        if not self._pending:
            return
        refs = list(self._pending.values())
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for run_id, ref in list(self._pending.items()):
            if ref in ready:
                del self._pending[run_id]
                try:
                    summary = ray.get(ref)
                except Exception as e:  # keep the sweep going; the run stays unlabelled and says why
                    summary = {"run_id": run_id, "error": f"{type(e).__name__}: {e}"}
                self._report(summary)

    def _report(self, summary: dict) -> None:
        if "error" in summary:
            print(f"[grokray] classifier: {summary['run_id']}: {summary['error']}", file=sys.stderr, flush=True)
        elif self.progress is not None:
            self.progress.label(summary)
        else:
            print(f"[grokray] label: {summary['line']}", flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._collect(timeout=0)

    def wait(self) -> None:
        """Block until every submitted run is labelled."""
        while self._pending:
            self._collect(timeout=5.0)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.wait()
