"""The classifier service: (re)label MLflow runs from what MLflow holds.

For a trial run it reads the full metric history (``history.json`` artifact), the final
checkpoint and the trial config, computes the evidence (:mod:`grokray.circuits.evidence`:
shortcut baselines, the interchange test, the lens, causal patching) and the verdict
(:mod:`grokray.verdict`), and writes

* tags ``grokray.label`` (by the chosen ``criterion``), ``grokray.label_<criterion>`` for every
  criterion of :data:`grokray.criteria.REGISTRY` (``grokray.label_interchange``,
  ``grokray.label_lens``), ``grokray.criterion``, ``grokray.detail``, ``grokray.phase`` (Liu et
  al.'s), ``grokray.determined``, ``grokray.confidence``, ``grokray.classifier_version``,
  ``grokray.censored``, ``grokray.split``; the run's description (``mlflow.note.content``) is
  the verdict and its reasons in one paragraph;
* metrics ``verdict/*`` (t_memorize, t_generalize, t_circuit, delay_ratio, final_target_level,
  shortcut_best, each criterion's rate: interchange, bridge_given_correct; causal_r1, ...);
* artifacts under ``verdict/``: ``README.md`` (the paragraph), ``verdict.json``,
  ``evidence.json``, ``curves.png`` (detected steps and the shortcut baseline marked),
  ``interchange.png``, ``lens.png``, ``patching.png`` + ``patching.json``.

Idempotent: a run already labelled by this classifier version (split and criterion) is left
untouched; a run labelled otherwise is relabelled and the outcome says what changed.
A library function first (the sweep's classifier actor calls :func:`classify_run`), a
CLI second (``grokray classify``).

Example:
    >>> # outcome = classify_run("9f1c...", tracking_uri="sqlite:///mlflow.db")
    >>> # outcome.verdict.label, outcome.action   # ('true_grokking', 'labelled')
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from grokray import tracking
from grokray.circuits.evidence import CircuitEvidence, circuit_evidence
from grokray.circuits.patching import plot_patching
from grokray.config import trial_config_from_dict
from grokray.contract import (CURVES_PNG, EVIDENCE_JSON, INTERCHANGE_PNG, LENS_PNG, PATCHING_JSON, PATCHING_PNG,
                              VERDICT_JSON, VERDICT_README)
from grokray.criteria import REGISTRY
from grokray.data import load_dataset
from grokray.device import resolve_precision
from grokray.model import load_checkpoint
from grokray.plots import plot_curves
from grokray.verdict import (CLASSIFIER_VERSION, EVIDENCE_MODES, GENERALIZED, Verdict, VerdictParams,
                             classify_history)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

Tag = tracking.Tag


class RunNotClassifiable(Exception):
    """The run lacks what a verdict needs (no history: still running, or not a grokray trial)."""


@dataclass
class Outcome:
    run_id: str
    verdict: Verdict
    action: str                                # labelled | unchanged | relabelled
    previous: tracking.LabelTags | None = None  # what the run carried before, when relabelled
    run_name: str = ""

    def changes(self) -> str:
        """What a relabelling changed, in words ('' when nothing did or it is not a relabelling)."""
        if self.action != "relabelled" or self.previous is None:
            return ""
        v, old = self.verdict, self.previous
        parts = [f"v{old.classifier_version} -> v{v.classifier_version}"]
        if old.label != v.label:
            parts.append(f"label {old.label} -> {v.label}")
        if old.detail != v.detail:
            parts.append(f"detail {old.detail} -> {v.detail}")
        for crit, label in v.labels.items():
            if crit != v.criterion and old.labels.get(crit) not in (None, label):
                parts.append(f"{crit} label {old.labels[crit]} -> {label}")
        return ", ".join(parts)

    def line(self) -> str:
        v = self.verdict
        ic = "-" if v.interchange is None else f"{v.interchange:.2f}"
        sc = "-" if v.shortcut_best is None else f"{v.shortcut_best:.2f}"
        lvl = "-" if v.final_target_level is None else f"{v.final_target_level:.2f}"
        name = f"{self.run_name} ({self.run_id})" if self.run_name else self.run_id
        note = f"  ({self.changes()})" if self.changes() else ""
        return (f"{name}  {v.label:<14} {v.detail:<30} conf {v.confidence:.2f}  t_mem={v.t_memorize} "
                f"t_gen={v.t_generalize}  {v.split} {lvl} (shortcut {sc}, interchange {ic})  "
                f"[{self.action}]{note}")


def compute_verdict(client: "MlflowClient", run_id: str, split: str = "ood", n_queries: int = 200,
                    params: VerdictParams | None = None, criterion: str = "interchange",
                    evidence: str = "auto") -> tuple[Verdict, CircuitEvidence | None, list[dict], str]:
    """Verdict, evidence (or None), history and run title for ``run_id``; writes nothing.

    With ``evidence="auto"`` a run that did not generalize is labelled from its curves and the
    dataset's shortcut baseline (logged on the run) alone: the interchange test, lens and patching
    decide true vs fake, which such a run is not; skipping them keeps the classifier ahead of a
    sweep of many short trials."""
    if evidence not in EVIDENCE_MODES:
        raise ValueError(f"evidence must be one of {EVIDENCE_MODES}, not {evidence!r}")
    run = client.get_run(run_id)
    tags = run.data.tags
    history = tracking.load_history(client, run_id)
    if not history:
        raise RunNotClassifiable(f"run {run_id} has no metric history (not a grokray trial, or not started)")
    max_steps = int(tags.get(Tag.MAX_STEPS) or run.data.params.get(tracking.TrialParam.MAX_STEPS)
                    or history[-1]["step"])
    # What the curves alone support: the logged shortcut baseline, and the number of queries the
    # target accuracy was measured on (its binomial error), the same with or without a checkpoint.
    light: dict[str, Any] = {}
    shortcut = run.data.metrics.get(tracking.shortcut_metric("best", split))
    if shortcut is not None and 0 <= shortcut <= 1:
        light["shortcut_best"] = shortcut
    n_target = target_queries(client, run_id, split)
    if n_target:
        light["n_target"] = n_target
    decide = dict(max_steps=max_steps, stop_reason=tags.get(Tag.STOP_REASON), split=split, criterion=criterion,
                  params=params or VerdictParams())
    verdict = classify_history(history, evidence=light or None, **decide)
    wanted = evidence == "always" or (evidence == "auto" and verdict.behaviour in GENERALIZED)
    ev = None
    if wanted and tracking.checkpoints(client, run_id):
        with tempfile.TemporaryDirectory(prefix="grokray-classify-") as tmp:
            model, meta = load_checkpoint(tracking.download_checkpoint(client, run_id, "last", tmp))
        trial = trial_config_from_dict(meta["trial_config"])
        dataset = load_dataset(trial.data)
        torch.set_num_threads(max(1, torch.get_num_threads()))
        # run the model as it was trained: bf16 autocast for a bf16 trial (the trainer's default)
        precision = resolve_precision(trial.train.precision, next(model.parameters()).device)
        ev = circuit_evidence(model, dataset, split=split, n=n_queries, seed=0, precision=precision)
        verdict = classify_history(history, evidence={**ev.for_verdict(), **light}, **decide)
    return verdict, ev, history, run.info.run_name or run_id


def target_queries(client: "MlflowClient", run_id: str, split: str) -> int | None:
    """How many test queries the run's target accuracy was measured on (its ``dataset.json``)."""
    meta = tracking.read_json_artifact(client, run_id, tracking.DATASET_JSON) or {}
    n = (meta.get("probe_sizes") or {}).get(f"test_inferred_{split}")
    return int(n) if isinstance(n, (int, float)) and n > 0 else None


def label_tags(v: Verdict, examined: bool) -> tracking.LabelTags:
    return tracking.LabelTags(label=v.label, detail=v.detail, confidence=f"{v.confidence:.3f}",
                              classifier_version=v.classifier_version, split=v.split,
                              censored=str(v.censored).lower(), criterion=v.criterion,
                              evidence="checkpoint" if examined else "curves", phase=v.phase,
                              determined=str(v.determined).lower(), labels=dict(v.labels))


#: Verdict fields logged as ``verdict/<name>`` metrics (sortable columns in the MLflow UI); every
#: criterion's rate (``verdict/interchange``, ``verdict/bridge_given_correct``) is added from the registry.
VERDICT_METRICS = ("confidence", "final_target_level", "shortcut_best", "interchange_control",
                   "interchange_n", "t_memorize", "t_generalize", "t_transient", "t_circuit", "delay_ratio",
                   "log_step_gap", "bridge_found", "causal_r1", "final_train_acc", "final_target_acc",
                   "max_target_acc")


def verdict_metrics(v: Verdict) -> dict[str, float]:
    out = {f"{tracking.VERDICT_PREFIX}{k}": float(getattr(v, k)) for k in VERDICT_METRICS
           if getattr(v, k) is not None}
    for name, c in REGISTRY.items():
        rate = v.rates.get(name)
        if rate is not None:
            out[f"{tracking.VERDICT_PREFIX}{c.rate}"] = float(rate)
    out[f"{tracking.VERDICT_PREFIX}censored"] = float(v.censored)
    out[f"{tracking.VERDICT_PREFIX}determined"] = float(v.determined)
    out[f"{tracking.VERDICT_PREFIX}true_grokking"] = float(v.label == "true_grokking")
    return out


#: Verdict metrics that only the checkpoint's evidence gives.
EVIDENCE_METRICS = ("interchange", "interchange_control", "interchange_n", "carry", "causal_r1")


def verdict_readme(v: Verdict, title: str, examined: bool = True) -> str:
    """``verdict/README.md``: the verdict and its reasons, then the numbers, for the artifact viewer."""
    rows = [("label", v.label), ("detail", v.detail), ("confidence", f"{v.confidence:.2f}"),
            ("Liu et al.'s phase", v.phase + ("" if v.determined else " (undetermined: the budget did not settle it)")),
            *((f"label by the {c.name} criterion", v.labels.get(c.name, "-")) for c in REGISTRY.values()),
            (f"held {v.split.upper()} accuracy", v.final_target_level), ("best shortcut baseline", v.shortcut_best),
            ("interchange (answers follow a swapped bridge)", v.interchange),
            ("same-bridge control (answer kept)", v.interchange_control),
            ("lens: bridge found among correct answers", v.bridge_given_correct),
            ("t_memorize / t_generalize / delay ratio", f"{v.t_memorize} / {v.t_generalize} / "
                                                        f"{'-' if v.delay_ratio is None else f'{v.delay_ratio:.1f}'}"),
            ("t_circuit (the logged interchange curve held its threshold)", v.t_circuit)]
    fmt = lambda x: "-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))  # noqa: E731
    table = "\n".join(f"| {k} | {fmt(x)} |" for k, x in rows)
    where = (f"Evidence: `{EVIDENCE_JSON}`; pictures: `{CURVES_PNG}`, `{INTERCHANGE_PNG}`, `{LENS_PNG}`, "
             f"`{PATCHING_PNG}`."
             if examined else "Labelled from the curves and the logged shortcut baselines (the checkpoint was not "
                              "examined: its evidence cannot change a label of a run that did not generalize); "
                              f"picture: `{CURVES_PNG}`.")
    return (f"# {title}: {v.label}\n\n{v.summary()}\n\n| what | value |\n|---|---|\n{table}\n\n"
            f"Classifier v{v.classifier_version}, criterion {v.criterion}, target split {v.split}. {where}\n")


def write_verdict(client: "MlflowClient", run_id: str, verdict: Verdict, evidence: CircuitEvidence | None,
                  history: list[dict], title: str = "") -> None:
    """Tags, description, ``verdict/*`` metrics and evidence artifacts of a verdict on its run."""
    with tempfile.TemporaryDirectory(prefix="grokray-verdict-") as tmp:
        d = Path(tmp)
        (d / VERDICT_README).write_text(verdict_readme(verdict, title, examined=evidence is not None))
        (d / VERDICT_JSON).write_text(json.dumps(verdict.to_dict(), indent=2))
        plot_curves(history, d / CURVES_PNG,
                    title=f"{title}: {verdict.label} / {verdict.detail} ({verdict.confidence:.2f})",
                    marks={"t_memorize": verdict.t_memorize, "t_generalize": verdict.t_generalize,
                           "t_transient": verdict.t_transient, "t_circuit": verdict.t_circuit},
                    baselines={f"{verdict.split.upper()} shortcut (best rule)": verdict.shortcut_best})
        if evidence is not None:
            (d / EVIDENCE_JSON).write_text(json.dumps(evidence.to_dict()))
            evidence.plot_lens(str(d / LENS_PNG), title=f"{title}: logit lens, final checkpoint")
            evidence.plot_interchange(str(d / INTERCHANGE_PNG), title=f"{title}: bridge interchange test")
            patchings = [p for p in (evidence.patching_train, evidence.patching_target) if p is not None]
            if patchings:   # one figure: Wang et al.'s matrices on train_inferred, then on the target split
                plot_patching(patchings, str(d / PATCHING_PNG),
                              title=f"{title}: causal patching, top-1 flip rate of correct answers")
                (d / PATCHING_JSON).write_text(patchings[0].to_json())
        client.log_artifacts(run_id, str(d), tracking.VERDICT_DIR)
        client.log_artifact(run_id, str(d / CURVES_PNG))   # also the run's top-level curves.png
    metrics = verdict_metrics(verdict)
    if evidence is None:   # a relabelling without the checkpoint: no stale evidence number stays current
        had = client.get_run(run_id).data.metrics
        metrics.update({f"{tracking.VERDICT_PREFIX}{k}": float("nan") for k in EVIDENCE_METRICS
                        if f"{tracking.VERDICT_PREFIX}{k}" in had and f"{tracking.VERDICT_PREFIX}{k}" not in metrics})
    tracking.log_metrics(client, run_id, verdict.steps_run, metrics)
    tracking.log_tags(client, run_id, {**label_tags(verdict, evidence is not None).tags(), Tag.NOTE: verdict.summary()})


def classify_run(run_id: str, tracking_uri: str | None = None, *, client: "MlflowClient | None" = None,
                 split: str = "ood", criterion: str = "interchange", force: bool = False, n_queries: int = 200,
                 params: VerdictParams | None = None, evidence: str = "auto") -> Outcome:
    """Label one run (idempotent per classifier version, split and criterion); see the module docstring."""
    client = client or tracking.existing_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:  # mlflow raises MlflowException(RESOURCE_DOES_NOT_EXIST)
        raise RunNotClassifiable(f"no run {run_id!r} at {client.tracking_uri}") from e
    previous = tracking.LabelTags.of(run.data.tags)
    name = run.info.run_name or ""
    same = (previous.classifier_version, previous.split, previous.criterion) == (CLASSIFIER_VERSION, split, criterion)
    if same and not force:
        stored = tracking.read_json_artifact(client, run_id, f"{tracking.VERDICT_DIR}/{VERDICT_JSON}")
        if stored is not None and not _lacks_wanted_evidence(client, run_id, previous, stored, evidence):
            return Outcome(run_id, Verdict.from_dict(stored), "unchanged", None, name)
        # else: tags without the artifact (a half-written earlier attempt), or a verdict labelled
        # from the curves that this evidence mode would examine: label again
    verdict, ev, history, title = compute_verdict(client, run_id, split=split, n_queries=n_queries, params=params,
                                                  criterion=criterion, evidence=evidence)
    write_verdict(client, run_id, verdict, ev, history, title)
    action = "labelled" if previous.classifier_version is None else "relabelled"
    return Outcome(run_id, verdict, action, previous if action == "relabelled" else None, name)


def _lacks_wanted_evidence(client: "MlflowClient", run_id: str, previous: tracking.LabelTags, stored: dict,
                           evidence: str) -> bool:
    """Was the stored verdict labelled from the curves while ``evidence`` would examine the
    checkpoint (and the run has one)? Verdicts written before ``grokray.evidence`` existed were
    always examined when a checkpoint existed."""
    if previous.evidence != "curves" or evidence == "never":
        return False
    wanted = evidence == "always" or stored.get("behaviour") in GENERALIZED
    return wanted and bool(tracking.checkpoints(client, run_id))


def trial_runs(client: "MlflowClient", experiment: str) -> list[Any]:
    """Finished grokray trial runs of an experiment, oldest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return tracking.experiment_runs(client, exp.experiment_id, status="FINISHED")


def classify_experiment(experiment: str, tracking_uri: str | None = None, *, split: str = "ood",
                        criterion: str = "interchange", force: bool = False, n_queries: int = 200,
                        params: VerdictParams | None = None, progress=None, evidence: str = "auto") -> list[Outcome]:
    """Label every finished trial run of an experiment."""
    client = tracking.existing_client(tracking_uri)
    outcomes = []
    for run in trial_runs(client, experiment):
        out = classify_run(run.info.run_id, client=client, split=split, criterion=criterion, force=force,
                           n_queries=n_queries, params=params, evidence=evidence)
        outcomes.append(out)
        if progress is not None:
            progress(out)
    return outcomes
