"""The ``trial`` sweep kind: train fresh models from the spec's base trial config.

A trial's config is the base with Tune's values applied (``spec.base.with_values(config)``);
it is logged to its MLflow child run (:class:`grokray.tracking.RunLogger`), stopped by the
spec's :class:`~grokray.sweep.stopper.StopRule`, and labelled by the classifier actor.
"""
from __future__ import annotations

from typing import Any, Mapping

from grokray import tracking
from grokray.sweep.kinds.base import Built
from grokray.sweep.stopper import StopCallback
from grokray.sweep.trainable import trial_device
from grokray.train import Trainer

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

    def parse(self, raw: Mapping[str, Any], parameters: list) -> None:
        return None

    def owns(self, key: str) -> bool:
        return False

    def trial_keys(self, spec: Any) -> list[str]:
        return list(spec.swept_keys)

    def n_trials_note(self, spec: Any) -> str:
        return ""

    def prepare(self, spec: Any, tracking_uri: str) -> None:
        return None

    def search_space(self, spec: Any, prepared: Any) -> dict[str, Any]:
        return {}

    def log_prepared(self, client: Any, parent_run_id: str, prepared: Any) -> list[str]:
        return []

    def build(self, spec: Any, config: Mapping[str, Any], client: Any, run_id: str, work_dir: str) -> Built:
        cfg = spec.trial_config(config)
        trainer = Trainer(cfg, work_dir=work_dir, device=trial_device(cfg.train.device))
        logger = tracking.RunLogger(client, run_id, draw_curves=not spec.classifier.enabled)
        return Built(trainer, [logger, StopCallback(spec.stopping)])
