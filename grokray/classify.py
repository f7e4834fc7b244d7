"""The classifier service: (re)label MLflow runs from what MLflow holds.

For a trial run it reads the full metric history (``history.json`` artifact), the
final checkpoint and the trial config, computes the circuit evidence
(:mod:`grokray.circuits.evidence`) and the verdict (:mod:`grokray.verdict`), and writes

* tags ``grokray.label``, ``grokray.detail``, ``grokray.confidence``,
  ``grokray.classifier_version``, ``grokray.censored``, ``grokray.split``;
* metrics ``verdict/*`` (t_memorize, t_generalize, delay_ratio, causal_r1, ...);
* artifacts under ``verdict/``: ``verdict.json``, ``curves.png`` (detected steps marked),
  ``lens.png``, ``patching.png`` + ``patching.json``.

Idempotent: a run already labelled by this classifier version (and split) is left
untouched; a run labelled by another version is relabelled and the outcome says so.
A library function first (the sweep's classifier actor calls :func:`classify_run`), a
CLI second (``grokray classify``).

Example:
    >>> # outcome = classify_run("9f1c...", tracking_uri="sqlite:///mlflow.db")
    >>> # outcome.verdict.label, outcome.action   # ('true_grokking', 'labelled')
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from grokray import tracking
from grokray.config import trial_config_from_dict
from grokray.verdict import CLASSIFIER_VERSION, Verdict, VerdictParams, classify_history

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TAGS = ("label", "detail", "confidence", "classifier_version", "censored", "split")


class RunNotClassifiable(Exception):
    """The run lacks what a verdict needs (no history: still running, or not a grokray trial)."""


@dataclass
class Outcome:
    run_id: str
    verdict: Verdict
    action: str                       # labelled | unchanged | relabelled
    previous: dict[str, str] | None   # previous label/version when relabelled

    def line(self) -> str:
        v = self.verdict
        steps = f"t_mem={v.t_memorize} t_gen={v.t_generalize}"
        note = ""
        if self.action == "relabelled" and self.previous:
            note = (f"  (relabelled: v{self.previous.get('classifier_version')} "
                    f"{self.previous.get('label')} -> v{v.classifier_version} {v.label})")
        return f"{self.run_id}  {v.label:<14} {v.detail:<13} conf {v.confidence:.2f}  {steps}  [{self.action}]{note}"


def _final_checkpoint(client: "MlflowClient", run_id: str) -> str | None:
    files = [a.path for a in client.list_artifacts(run_id, "checkpoints") if a.path.endswith(".pt")]
    return max(files, default=None)


def _load_history(client: "MlflowClient", run_id: str, tmp: Path) -> list[dict]:
    try:
        path = client.download_artifacts(run_id, "history.json", str(tmp))
    except Exception:
        path = None
    if path and Path(path).exists():
        return json.loads(Path(path).read_text())
    # Fallback (run still going or killed before its end): rebuild from metric histories.
    run = client.get_run(run_id)
    keys = [k for k in run.data.metrics if not k.startswith("verdict/")]
    by_step: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {"step": m.step})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def compute_verdict(client: "MlflowClient", run_id: str, split: str = "ood", n_queries: int = 200,
                    params: VerdictParams | None = None, work: Path | None = None,
                    evidence: bool = True) -> tuple[Verdict, Any, list[dict], str]:
    """Verdict, circuit evidence (or None), history and run title for ``run_id``; writes nothing."""
    import torch

    from grokray.circuits.evidence import circuit_evidence
    from grokray.data import load_dataset
    from grokray.model import load_checkpoint

    run = client.get_run(run_id)
    tags = run.data.tags
    tmp = Path(work or tempfile.mkdtemp(prefix="grokray-classify-"))
    history = _load_history(client, run_id, tmp)
    if not history:
        raise RunNotClassifiable(f"run {run_id} has no metric history (not a grokray trial, or not started)")
    max_steps = int(tags.get(f"{tracking.TAG_PREFIX}max_steps") or run.data.params.get("train.max_steps") or
                    history[-1]["step"])
    stop_reason = tags.get(f"{tracking.TAG_PREFIX}stop_reason")
    ev = None
    ckpt = _final_checkpoint(client, run_id) if evidence else None
    if ckpt is not None:
        local = client.download_artifacts(run_id, ckpt, str(tmp))
        model, meta = load_checkpoint(local)
        cfg = trial_config_from_dict(meta["trial_config"])
        dataset = load_dataset(cfg.data)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        ev = circuit_evidence(model, dataset, split=split, n=n_queries, seed=0)
    verdict = classify_history(history, max_steps=max_steps, stop_reason=stop_reason,
                               evidence=ev.for_verdict() if ev is not None else None, split=split,
                               params=params or VerdictParams())
    return verdict, ev, history, run.info.run_name or run_id


def _tag_values(v: Verdict) -> dict[str, str]:
    return {"label": v.label, "detail": v.detail, "confidence": f"{v.confidence:.3f}",
            "classifier_version": v.classifier_version, "censored": str(v.censored).lower(), "split": v.split}


def _verdict_metrics(v: Verdict) -> dict[str, float]:
    out = {}
    for k in ("t_memorize", "t_generalize", "delay_ratio", "log_step_gap", "confidence", "causal_r1",
              "bridge_given_correct", "bridge_found", "final_train_acc", "final_target_acc", "max_target_acc"):
        val = getattr(v, k)
        if val is not None and not (isinstance(val, float) and math.isnan(val)):
            out[f"verdict/{k}"] = float(val)
    out["verdict/censored"] = float(v.censored)
    out["verdict/true_grokking"] = float(v.label == "true_grokking")
    return out


def write_verdict(client: "MlflowClient", run_id: str, verdict: Verdict, evidence: Any, history: list[dict],
                  title: str = "") -> None:
    """Tags, ``verdict/*`` metrics and evidence artifacts of a verdict on its run."""
    from mlflow.entities import RunTag

    from grokray.plots import plot_curves

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "verdict"
        d.mkdir()
        (d / "verdict.json").write_text(json.dumps(verdict.to_dict(), indent=2))
        plot_curves(history, d / "curves.png",
                    title=f"{title}: {verdict.label} / {verdict.detail} ({verdict.confidence:.2f})",
                    marks={"t_memorize": verdict.t_memorize, "t_generalize": verdict.t_generalize})
        if evidence is not None:
            (d / "evidence.json").write_text(json.dumps(evidence.to_dict()))
            evidence.plot_lens(str(d / "lens.png"), title=f"{title}: logit lens, final checkpoint")
            patching = evidence.patching_train or evidence.patching_target
            if patching is not None:
                patching.plot(str(d / "patching.png"))
                (d / "patching.json").write_text(patching.to_json())
            if evidence.patching_target is not None:
                evidence.patching_target.plot(str(d / f"patching_{verdict.split}.png"))
        client.log_artifacts(run_id, str(d), "verdict")
    tracking.log_metrics(client, run_id, verdict.steps_run, _verdict_metrics(verdict))
    client.log_batch(run_id, tags=[RunTag(f"{tracking.TAG_PREFIX}{k}", v) for k, v in _tag_values(verdict).items()])


def classify_run(run_id: str, tracking_uri: str | None = None, *, client: "MlflowClient | None" = None,
                 split: str = "ood", force: bool = False, n_queries: int = 200,
                 params: VerdictParams | None = None) -> Outcome:
    """Label one run (idempotent per classifier version and split); see the module docstring."""
    client = client or tracking.get_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # mlflow raises MlflowException(RESOURCE_DOES_NOT_EXIST)
        raise RunNotClassifiable(f"no run {run_id!r} at {client.tracking_uri}") from e
    tags = run.data.tags
    previous = {k: tags.get(f"{tracking.TAG_PREFIX}{k}") for k in TAGS}
    same = previous["classifier_version"] == CLASSIFIER_VERSION and previous["split"] == split
    if same and not force:
        try:
            path = client.download_artifacts(run_id, "verdict/verdict.json", tempfile.mkdtemp())
            return Outcome(run_id, Verdict.from_dict(json.loads(Path(path).read_text())), "unchanged", None)
        except Exception:
            pass  # tags without the artifact: a half-written earlier attempt; label again
    with tempfile.TemporaryDirectory(prefix="grokray-classify-") as tmp:
        verdict, ev, history, title = compute_verdict(client, run_id, split=split, n_queries=n_queries,
                                                      params=params, work=Path(tmp))
        write_verdict(client, run_id, verdict, ev, history, title)
    action = "labelled" if previous["classifier_version"] is None else "relabelled"
    return Outcome(run_id, verdict, action, previous if action == "relabelled" else None)


def trial_runs(client: "MlflowClient", experiment: str, sweep: str | None = None) -> Iterator[Any]:
    """Finished grokray trial runs of an experiment (optionally one sweep's), oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return iter(())
    flt = f"tags.`{tracking.TAG_PREFIX}kind` = 'trial'"
    if sweep:
        flt += f" and tags.`{tracking.TAG_PREFIX}sweep` = '{sweep}'"
    runs = [r for r in tracking.iter_runs(client, [exp.experiment_id], flt) if r.info.status == "FINISHED"]
    return iter(sorted(runs, key=lambda r: r.info.start_time))


def classify_experiment(experiment: str, tracking_uri: str | None = None, *, split: str = "ood",
                        force: bool = False, n_queries: int = 200, params: VerdictParams | None = None,
                        progress=None) -> list[Outcome]:
    """Label every finished trial run of an experiment."""
    client = tracking.get_client(tracking_uri)
    outcomes = []
    for run in trial_runs(client, experiment):
        out = classify_run(run.info.run_id, client=client, split=split, force=force, n_queries=n_queries,
                           params=params)
        outcomes.append(out)
        if progress is not None:
            progress(out)
    return outcomes
