"""The ``trial`` sweep kind: train fresh models from the spec's base trial config.

A trial's config is the base with Tune's values applied (``spec.base.with_values(config)``);
it is logged to its MLflow child run (:class:`grokray.tracking.RunLogger`), stopped by the
spec's :class:`~grokray.sweep.stopper.StopRule`, and labelled by the classifier actor.
"""
from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Mapping

from grokray import tracking
from grokray.config import ConfigError
from grokray.data.graph import build_graph, max_phi
from grokray.sweep.kinds.base import Built
from grokray.sweep.stopper import StopCallback
from grokray.sweep.placement import trial_device
from grokray.train import Trainer

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from grokray.sweep.params import Parameter
    from grokray.sweep.spec import SweepSpec

REPORTED = ("acc/train", "loss/train", "train_loss", "acc/train_inferred", "acc/id_atomic", "acc/ood_atomic",
            "acc/test_inferred_id", "acc/test_inferred_ood", "lens/ood/bridge_found", "lens/id/bridge_found",
            "param_norm")


class TrialKind:
    name = tracking.KIND_TRIAL
    spec_keys: tuple[str, ...] = ()
    map_name = tracking.PHASE_MAP_DIR
    reported = REPORTED
    progress_columns = (("ID", "acc/test_inferred_id"), ("OOD", "acc/test_inferred_ood"))
    labelled = True
    packable = True

    def parse(self, raw: Mapping[str, Any], parameters: "list[Parameter]") -> None:
        return None

    def check(self, spec: "SweepSpec") -> None:
        check_phi_feasible(spec)

    def owns(self, key: str) -> bool:
        return False

    def trial_keys(self, spec: "SweepSpec") -> list[str]:
        return list(spec.swept_keys)

    def n_trials_note(self, spec: "SweepSpec") -> str:
        return ""

    def prepare(self, spec: "SweepSpec", tracking_uri: str) -> None:
        return None

    def search_space(self, spec: "SweepSpec", prepared: Any) -> dict[str, Any]:
        return {}

    def log_prepared(self, client: "MlflowClient", parent_run_id: str, prepared: Any) -> list[str]:
        return []

    def view_columns(self, spec: "SweepSpec") -> list[str]:
        """The label, its evidence and its times first: what a reader of a labelled sweep looks for."""
        verdict = [f"metrics.`{tracking.VERDICT_PREFIX}{k}`" for k in (
            "final_target_level", "shortcut_best", "interchange", "t_memorize", "t_generalize", "delay_ratio")]
        return [f"tags.`{t}`" for t in (tracking.Tag.LABEL, tracking.Tag.DETAIL, tracking.Tag.CONFIDENCE)] + verdict

    def reading(self, spec: "SweepSpec", link: str) -> str:
        split = spec.classifier.split.upper()
        return (
            f"**Reading the results.** [Open this sweep's trials with grokray's columns]({link}) (the runs "
            f"page's *Views* menu: \"grokray: {spec.name}\"). One row per trial, named by its swept values: "
            "`grokray.label` true_grokking / fake_grokking / no_grokking; `grokray.detail` how (grokking, "
            "comprehension, transient, semi, memorization; censored = stopped at its step budget without "
            "generalizing, not proof of no grokking); `grokray.confidence` 0-1, a ranking score; "
            f"`verdict/final_target_level` the {split} accuracy the run held at the end; `verdict/shortcut_best` "
            f"what the best rule that never composes scores on {split} (a level not clearly above it is fake "
            "grokking); `verdict/interchange` the share of correct answers that follow a swapped bridge entity "
            "(true grokking needs it high); `verdict/t_memorize` / `verdict/t_generalize` the steps at which train "
            f"accuracy held 0.99 / {split} accuracy held its threshold; `verdict/delay_ratio` "
            "t_generalize / t_memorize. A column with no value in any trial is not shown. Click a trial for its "
            "evidence: its description is the verdict with its reasons, its Artifacts `verdict/` hold README.md, "
            "curves.png and, where the classifier examined the checkpoint (runs that generalized; tag "
            "grokray.evidence), interchange.png, lens.png, patching.png. This run's Artifacts hold the phase map "
            "(`phase_map/phase_map.png`, `.txt`, `.csv`): the labels over the swept values.")

    def build(self, spec: "SweepSpec", config: Mapping[str, Any], client: "MlflowClient", run_id: str,
              work_dir: str) -> Built:
        cfg = spec.trial_config(config)
        trainer = Trainer(cfg, work_dir=work_dir, device=trial_device(cfg.train.device))
        logger = tracking.RunLogger(client, run_id, draw_curves=not spec.classifier.enabled)
        return Built(trainer, [logger, StopCallback(spec.stopping)])


def check_phi_feasible(spec: "SweepSpec") -> None:
    """phi above what the pool allows fails at validate time, not in the middle of a sweep (a finetune
    sweep's data comes from its sources: checked when it starts)."""
    phi_param = next((p for p in spec.parameters if p.key == "data.phi"), None)
    graph_keys = ("data.n_entities", "data.n_relations", "data.out_degree", "data.ood_fraction",
                  "data.test_id_fraction", "data.seed")
    graph_params = [p for p in spec.parameters if p.key in graph_keys]
    if any(p.values is None for p in graph_params):
        return  # a graph drawn from a distribution: checked when the trial builds its data
    phis = (phi_param.values if phi_param and phi_param.values is not None
            else [phi_param.high] if phi_param else [spec.base.data.phi])
    combos = itertools.product(*[[(p.key, v) for v in p.values] for p in graph_params]) if graph_params else [()]
    for combo in combos:
        cfg = spec.base.with_values(dict(combo))
        allowed = max_phi(build_graph(cfg.data), cfg.data)
        for i, phi in enumerate(phis):
            if float(phi) > allowed + 1e-9:
                key = phi_param.where(i) if phi_param else "base.data.phi"
                at = ", ".join(f"{k}={v}" for k, v in combo)
                raise ConfigError(f"exceeds the largest phi the pool allows ({allowed:.2f}"
                                  + (f" at {at}" if at else "") + ")", key=key, value=phi)
