"""The ``finetune`` sweep kind: fine-tune the labelled runs of other sweeps on new facts.

He et al. (2026, section 5) at sweep scale: one trial per source run (and per other grid
point); each trial downloads its source's checkpoint, builds the fine-tuning data from the
source's graph (:mod:`grokray.transfer`), trains with the spec's ``train.*`` and ``seed``,
and records how the new facts compose. Its runs are tagged with their source run and label;
the transfer map (:mod:`grokray.transfermap`) reads them. They are not labelled.

The spec adds two sections to an ordinary sweep spec::

    kind: finetune
    source: {sweep: calibration, label: [true, fake]}   # or {runs: [RUN_ID, ...]}; checkpoint: last | STEP
    transfer: {n_new: 0.05, n_retained: 0.21, new_pairs: unused}
    parameters:
      transfer.seed: {values: [0, 1]}                     # transfer.*, train.* and seed may be swept

Example:
    >>> kind = FinetuneKind()
    >>> spec = kind.parse({"kind": "finetune", "source": {"sweep": "calibration", "label": "true"}}, [])
    >>> spec.source.label, spec.transfer.n_new
    (['true_grokking'], 0.05)
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from grokray import tracking
from grokray.config import MAX_BUDGET, ConfigError, check_tracking_uri, to_plain
from grokray.contract import SOURCES_JSON, SWEPT_SOURCE_RUN, TRANSFER_CURVES_PNG, FinetuneParam
from grokray.plots import plot_transfer_curves
from grokray.sweep.kinds.base import Built
from grokray.sweep.naming import run_name
from grokray.sweep.params import NAME_RE, Parameter
from grokray.transfer import (SPLITS, TEST_SPLITS, TransferConfig, load_transfer_dataset, prepare_finetune,
                              replace_transfer, transfer_config_from_dict, transfer_hash, transfer_summary)
from grokray.verdict import LABELS, SHORT_LABELS, label_name

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from grokray.sweep.spec import SweepSpec
    from grokray.train import Trainer, TrainResult

#: Metrics every finetune Tune result carries (besides step / run id).
REPORTED = ("acc/train", "train_loss", "acc/new_atomic", "acc/retained_atomic", "acc/unretained_atomic",
            *(f"acc/{s}" for s in TEST_SPLITS.values()), *(f"lens/{s}/bridge_found" for s in TEST_SPLITS),
            "param_norm")
#: The Tune search-space key holding a trial's source run id (also in ``sweep.swept`` and ``grokray.swept``).
SOURCE_RUN = SWEPT_SOURCE_RUN


# =========================================================================== the spec section

@dataclass(frozen=True)
class SourceSpec:
    """``source:`` of a finetune sweep: which runs to fine-tune, and from which checkpoint."""
    sweep: str | tuple[str, ...] | None = None   # a sweep name, or several
    label: list[str] | None = None    # full label names; None: every labelled run
    runs: list[str] | None = None
    checkpoint: str | int = "last"
    tracking_uri: str | None = None   # where the source runs live (default: the sweep's store)
    experiment: str | None = None     # restrict the sweep lookup to this experiment


@dataclass(frozen=True)
class FinetuneSpec:
    """The ``kind: finetune`` part of a sweep spec (the rest is an ordinary sweep spec)."""
    source: SourceSpec
    transfer: TransferConfig
    transfer_keys: tuple[str, ...] = ()  # parameters that sweep transfer.* keys

    def transfer_config(self, values: Mapping[str, Any]) -> TransferConfig:
        return replace_transfer(self.transfer, {k: v for k, v in values.items() if k.startswith("transfer.")})

    def to_dict(self) -> dict[str, Any]:
        return {"source": to_plain(dataclasses.asdict(self.source)), "transfer": self.transfer.to_dict()}


_SOURCE_KEYS = tuple(f.name for f in dataclasses.fields(SourceSpec))
_TRANSFER_FIELDS = tuple(f.name for f in dataclasses.fields(TransferConfig))
#: Top-level spec keys a finetune sweep does not take, and why.
_NOT_FOR_FINETUNE = {
    "stopping": "a finetune sweep trains every run for max_steps (the transfer curves need the whole schedule)",
    "classifier": "finetune runs are not labelled (the transfer map reads them); remove the classifier section",
}


def _labels(label: str | Sequence[str] | None) -> list[str] | None:
    if label is None:
        return None
    items = [label] if isinstance(label, str) else list(label)
    if not items:
        raise ConfigError("must name at least one label", key="source.label", value=label)
    out = []
    for x in items:
        try:
            full = label_name(str(x))
        except ValueError:
            full = None
        if full is None:
            raise ConfigError(f"unknown label; use one of {', '.join(LABELS)} (or true, fake, no)",
                              key="source.label", value=x)
        out.append(full)
    return out


def _parse_source(src_raw: Any) -> SourceSpec:
    if not isinstance(src_raw, Mapping):
        raise ConfigError("kind: finetune needs a mapping {sweep: NAME, label: LABEL} or {runs: [RUN_ID, ...]}",
                          key="source", value=src_raw)
    for k in src_raw:
        if k not in _SOURCE_KEYS:
            raise ConfigError(f"unknown key; known keys: {', '.join(_SOURCE_KEYS)}", key=f"source.{k}",
                              value=src_raw[k])
    sweep, runs = src_raw.get("sweep"), src_raw.get("runs")
    if (sweep is None) == (runs is None):
        raise ConfigError("give sweep or runs (one of the two)", key="source", value=dict(src_raw))
    for i, name in enumerate([sweep] if isinstance(sweep, str) or sweep is None else list(sweep) or [""]):
        if name is not None and (not isinstance(name, str) or not NAME_RE.match(name)):
            key = "source.sweep" if isinstance(sweep, str) or not isinstance(sweep, list) else f"source.sweep[{i}]"
            raise ConfigError("must be a sweep name (or a list of them)", key=key, value=name)
    if runs is not None:
        if not isinstance(runs, list) or not runs:
            raise ConfigError("must be a non-empty list of MLflow run ids", key="source.runs", value=runs)
        for i, r in enumerate(runs):
            if not isinstance(r, str) or not r.isalnum():
                raise ConfigError("must be an MLflow run id", key=f"source.runs[{i}]", value=r)
    checkpoint = src_raw.get("checkpoint", "last")
    if checkpoint != "last":
        if isinstance(checkpoint, bool) or not isinstance(checkpoint, int) or not 0 <= checkpoint <= MAX_BUDGET:
            raise ConfigError(f"must be last or a step (an integer in [0, {MAX_BUDGET:,}])", key="source.checkpoint",
                              value=checkpoint)
    for k in ("tracking_uri", "experiment"):
        if src_raw.get(k) is not None and not isinstance(src_raw[k], str):
            raise ConfigError("must be a string", key=f"source.{k}", value=src_raw[k])
    check_tracking_uri(src_raw.get("tracking_uri"), "source.tracking_uri")
    return SourceSpec(sweep=tuple(sweep) if isinstance(sweep, list) else sweep, label=_labels(src_raw.get("label")),
                      runs=list(runs) if runs else None, checkpoint=checkpoint,
                      tracking_uri=src_raw.get("tracking_uri"), experiment=src_raw.get("experiment"))


# =========================================================================== sources (MLflow)

def _source_dict(run: Any) -> dict[str, Any]:
    """A source run as the sweep records it (``sources.json``) and names its trials."""
    rec = tracking.RunRecord.of(run)
    return {"run_id": rec.run_id, "label": rec.label, "run_name": rec.run_name, "sweep": rec.sweep,
            "swept": rec.swept, "experiment_id": rec.experiment_id, "status": rec.status,
            "classifier_version": run.data.tags.get(tracking.Tag.CLASSIFIER_VERSION)}


def _experiment_ids(client: "MlflowClient", experiment: str | None) -> list[str] | None:
    if experiment is None:
        return None
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ConfigError(f"no MLflow experiment with that name at {client.tracking_uri}", key="source.experiment",
                          value=experiment)
    return [exp.experiment_id]


def resolve_sources(client: "MlflowClient", *, sweep: str | Sequence[str] | None = None,
                    label: str | Sequence[str] | None = None, runs: Sequence[str] | None = None,
                    experiment: str | None = None) -> list[dict[str, Any]]:
    """The source runs to fine-tune: ``[{run_id, label, run_name, sweep, swept, ...}]``.

    Either every FINISHED trial run of ``sweep`` whose label is ``label`` (a label, a short
    form ``true``/``fake``/``no``, or a list; ``None``: every labelled run), or the explicit
    ``runs`` (checked against ``label`` when both are given). One-line ConfigError for an
    unknown sweep or run, or an empty selection.
    """
    labels = _labels(label)
    if isinstance(sweep, (list, tuple)):  # several sweeps: their runs together
        return [s for name in sweep for s in resolve_sources(client, sweep=name, label=label,
                                                             experiment=experiment)]
    if (sweep is None) == (runs is None):
        raise ConfigError("give source.sweep or source.runs (one of the two)", key="source",
                          value={"sweep": sweep, "runs": runs})
    if runs is not None:
        if isinstance(runs, str) or not list(runs):
            raise ConfigError("must be a non-empty list of MLflow run ids", key="source.runs", value=runs)
        out = []
        for i, rid in enumerate(runs):
            try:
                run = client.get_run(str(rid))
            except Exception:
                raise ConfigError(f"no MLflow run with that id at {client.tracking_uri}", key=f"source.runs[{i}]",
                                  value=rid) from None
            info = _source_dict(run)
            if labels is not None and info["label"] not in labels:
                raise ConfigError(f"run is labelled {info['label'] or 'nothing yet'}, not {' or '.join(labels)}",
                                  key=f"source.runs[{i}]", value=rid)
            out.append(info)
        return out
    if not isinstance(sweep, str) or not sweep or "'" in sweep or "\\" in sweep:
        raise ConfigError("must be a sweep name", key="source.sweep", value=sweep)
    parent = tracking.find_sweep_parent(client, sweep, _experiment_ids(client, experiment))
    if parent is None:
        raise ConfigError(f"no sweep with that name in the MLflow store at {client.tracking_uri}", key="source.sweep",
                          value=sweep)
    found = sorted((_source_dict(r) for r in tracking.sweep_runs(client, parent)),
                   key=lambda s: (s["run_name"], s["run_id"]))
    chosen = [s for s in found if s["status"] == "FINISHED" and s["label"] is not None
              and (labels is None or s["label"] in labels)]
    if not chosen:
        have: dict[str, int] = {}
        for s in found:
            k = s["label"] or ("unlabelled" if s["status"] == "FINISHED" else s["status"].lower())
            have[k] = have.get(k, 0) + 1
        present = ", ".join(f"{k} {v}" for k, v in sorted(have.items())) or "no trial runs"
        want = " or ".join(labels) if labels else "any label"
        raise ConfigError(f"sweep has no finished trial run labelled {want} (it has: {present})",
                          key="source.sweep", value=sweep)
    return chosen


def _checked_checkpoint(client: "MlflowClient", run_id: str, checkpoint: str | int) -> str:
    try:
        return tracking.checkpoint_path(client, run_id, checkpoint)
    except LookupError as e:
        key = "source.checkpoint" if checkpoint != "last" else "source.runs"
        raise ConfigError(str(e), key=key, value=checkpoint if checkpoint != "last" else run_id) from None


def prepare_sources(fspec: FinetuneSpec, tracking_uri: str, transfer_values: Sequence[Mapping[str, Any]] = ({},),
                    cache: str | None = None) -> list[dict[str, Any]]:
    """At sweep start: resolve the source runs and build (cache) every transfer dataset the
    sweep will need, so an impossible request fails once, before any trial, as one line.

    ``transfer_values``: the grid of ``transfer.*`` values (``[{}]`` when not swept).
    Each source dict gains ``data`` (its data config as a plain dict).
    """
    client = tracking.get_client(fspec.source.tracking_uri or tracking_uri)
    sources = resolve_sources(client, sweep=fspec.source.sweep, label=fspec.source.label, runs=fspec.source.runs,
                              experiment=fspec.source.experiment)
    seen: set[str] = set()
    for s in sources:
        _checked_checkpoint(client, s["run_id"], fspec.source.checkpoint)
        try:
            cfg = tracking.run_trial_config(client, s["run_id"])
        except LookupError as e:
            raise ConfigError(str(e), key="source.runs", value=s["run_id"]) from None
        s["data"] = to_plain(cfg.data)
        for values in transfer_values:
            tcfg = fspec.transfer_config(values)
            name = transfer_hash(cfg.data, tcfg)
            if name not in seen:
                seen.add(name)
                load_transfer_dataset(cfg.data, tcfg, cache)
    return sources


# =========================================================================== a trial

class FinetuneLogger(tracking.RunLogger):
    """RunLogger that also records the source and, at the end, the transfer summary as
    ``transfer/*`` metrics and a ``transfer_curves.png``."""

    def __init__(self, client: "MlflowClient", run_id: str, tcfg: TransferConfig, source: Mapping[str, Any]):
        super().__init__(client, run_id,
                         extra_params={FinetuneParam.transfer(k): v for k, v in tcfg.to_dict().items()})
        self.source = dict(source)

    def on_start(self, trainer: "Trainer") -> None:
        first = self.skip_until < 0
        super().on_start(trainer)
        if first:
            sizes = trainer.dataset.sizes()
            tracking.log_params(self.client, self.run_id, {
                FinetuneParam.SOURCE_RUN_ID: self.source.get("run_id"),
                FinetuneParam.SOURCE_CHECKPOINT: self.source.get("checkpoint"),
                FinetuneParam.SOURCE_STEP: trainer.source_step,
                **{FinetuneParam.size(k): sizes[k] for k in SPLITS if k in sizes}})

    def on_end(self, result: "TrainResult", trainer: "Trainer") -> None:
        super().on_end(result, trainer)
        log_transfer_summary(self.client, self.run_id, result.history, self.source.get("label"))


def log_transfer_summary(client: "MlflowClient", run_id: str, history: Sequence[Mapping[str, Any]],
                         label: str | None = None) -> dict[str, float]:
    """``transfer/<key>`` metrics (:func:`~grokray.transfer.transfer_summary`) and ``transfer_curves.png``."""
    summary = transfer_summary(history)
    last = int(history[-1]["step"]) if history else 0
    tracking.log_metrics(client, run_id, last, {f"{tracking.TRANSFER_PREFIX}{k}": v for k, v in summary.items()})
    with tempfile.TemporaryDirectory(prefix="grokray-transfer-") as tmp:
        plot_transfer_curves({label: [history]}, Path(tmp) / TRANSFER_CURVES_PNG, title=f"fine-tuning {run_id[:12]}")
        client.log_artifact(run_id, str(Path(tmp) / TRANSFER_CURVES_PNG))
    return summary


def finetune_run_name(source: Mapping[str, Any], values: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``true:<source run name>|tf_n_new=0.1`` (short source label, source name, other swept values)."""
    # transfer.seed -> tf_seed: its last segment alone would read like the trial seed.
    shown = {k.replace("transfer.", "tf_", 1): v for k, v in values.items()}
    rest = run_name(shown, [k.replace("transfer.", "tf_", 1) for k in keys if k != SOURCE_RUN])
    name = f"{SHORT_LABELS.get(source.get('label'), '?')}:{source.get('run_name') or str(source.get('run_id'))[:12]}"
    return name + (f"|{rest}" if rest != "trial" else "")


# =========================================================================== the kind

@dataclass
class FinetuneKind:
    name: str = tracking.KIND_FINETUNE
    spec_keys: tuple[str, ...] = ("source", "transfer")
    map_name: str = tracking.TRANSFER_MAP_DIR
    reported: tuple[str, ...] = REPORTED
    progress_columns: tuple = (("new+old", "acc/test_new_old"), ("old+new", "acc/test_old_new"))
    labelled: bool = False
    packable: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def parse(self, raw: Mapping[str, Any], parameters: list[Parameter]) -> FinetuneSpec:
        for key, why in _NOT_FOR_FINETUNE.items():
            if raw.get(key):
                raise ConfigError(f"not allowed with kind: finetune: {why}", key=key, value=raw[key])
        source = _parse_source(raw.get("source"))
        transfer = transfer_config_from_dict(raw.get("transfer"))
        keys = []
        for p in parameters:
            section = p.key.split(".")[0]
            if section in ("data", "model"):
                raise ConfigError("a finetune sweep takes data and model from its source runs; sweep train.*, "
                                  "transfer.* or seed", key=f"parameters.{p.key}", value=p.values)
            if p.key == SOURCE_RUN:
                raise ConfigError("source_run is set from source: (one trial per source run)",
                                  key=f"parameters.{SOURCE_RUN}", value=p.values)
            if section != "transfer":
                continue
            field_name = p.key[len("transfer."):]
            if field_name not in _TRANSFER_FIELDS:
                raise ConfigError(f"unknown key; known keys: {', '.join('transfer.' + f for f in _TRANSFER_FIELDS)}",
                                  key=f"parameters.{p.key}", value=p.values)
            for i, v in enumerate(p.samples()):
                try:
                    replace_transfer(transfer, {field_name: v})
                except ConfigError as e:
                    raise ConfigError(e.problem, key=p.where(i), value=e.value) from None
            keys.append(p.key)
        return FinetuneSpec(source=source, transfer=transfer, transfer_keys=tuple(keys))

    def check(self, spec: "SweepSpec") -> None:
        return None   # its sources and their data are checked when the sweep starts (prepare)

    def owns(self, key: str) -> bool:
        return key.startswith("transfer.") or key == SOURCE_RUN

    def trial_keys(self, spec: "SweepSpec") -> list[str]:
        """``source_run`` first, then the spec's swept keys."""
        return [SOURCE_RUN, *spec.swept_keys]

    def n_trials_note(self, spec: "SweepSpec") -> str:
        src = spec.kind_spec.source
        what = f"sweep {src.sweep!r}" if src.sweep else f"{len(src.runs)} run(s)"
        return f" per source run (fine-tuning {what}{', labels ' + '/'.join(src.label) if src.label else ''})"

    @staticmethod
    def transfer_grid(spec: "SweepSpec") -> list[dict[str, Any]]:
        """Every combination of the grid values of the ``transfer.*`` parameters (``[{}]`` when none)."""
        ps = [p for p in spec.parameters if p.key.startswith("transfer.") and p.values is not None]
        return [dict(zip([p.key for p in ps], combo)) for combo in itertools.product(*[p.values for p in ps])]

    def prepare(self, spec: "SweepSpec", tracking_uri: str) -> list[dict[str, Any]]:
        return prepare_sources(spec.kind_spec, tracking_uri, self.transfer_grid(spec))

    def search_space(self, spec: "SweepSpec", prepared: list[dict[str, Any]]) -> dict[str, Any]:
        from ray import tune

        return {SOURCE_RUN: tune.grid_search([s["run_id"] for s in prepared])}

    def log_prepared(self, client: "MlflowClient", parent_run_id: str, prepared: list[dict[str, Any]]) -> list[str]:
        tracking.log_texts(client, parent_run_id, {SOURCES_JSON: json.dumps(list(prepared), indent=2, default=str)})
        tracking.log_params(client, parent_run_id, {tracking.SweepParam.N_SOURCES: len(prepared)})
        return [f"fine-tuning {len(prepared)} source run(s): "
                + ", ".join(f"{s['run_name'] or s['run_id']} ({s['label']})" for s in prepared)]

    def view_columns(self, spec: "SweepSpec") -> list[str]:
        return [f"metrics.`{m}`" for m in self.reported]

    def reading(self, spec: "SweepSpec", link: str) -> str:
        return (f"**Reading the results.** [Open this sweep's runs with its columns]({link}) (the runs page's "
                f"*Views* menu: \"grokray: {spec.name}\"). This run's Artifacts hold the {self.map_name}.")

    def build(self, spec: "SweepSpec", config: Mapping[str, Any], client: "MlflowClient", run_id: str,
              work_dir: str) -> Built:
        fspec: FinetuneSpec = spec.kind_spec
        source_run = config[SOURCE_RUN]
        tcfg = fspec.transfer_config(config)
        cfg = spec.trial_config({k: v for k, v in config.items() if not self.owns(k)})
        src_client = tracking.get_client(fspec.source.tracking_uri) if fspec.source.tracking_uri else client
        source = _source_dict(src_client.get_run(source_run))
        source["checkpoint"] = fspec.source.checkpoint
        keys = self.trial_keys(spec)
        values = {k: config[k] for k in keys if k in config}
        # The source is on the run before anything can fail: a FAILED run still says what it fine-tuned.
        tracking.log_tags(client, run_id, {
            tracking.Tag.SOURCE_RUN: source_run, tracking.Tag.SOURCE_LABEL: source["label"] or "",
            tracking.Tag.SOURCE_SWEEP: source["sweep"] or "", tracking.Tag.SOURCE_RUN_NAME: source["run_name"],
            tracking.Tag.SOURCE_CHECKPOINT: str(fspec.source.checkpoint),
            tracking.Tag.SOURCE_CLASSIFIER_VERSION: source.get("classifier_version") or "",
            tracking.Tag.RUN_NAME: finetune_run_name(source, values, keys)})
        _checked_checkpoint(src_client, source_run, fspec.source.checkpoint)
        ckpt = tracking.download_checkpoint(src_client, source_run, fspec.source.checkpoint,
                                            Path(work_dir) / "source")
        trainer = prepare_finetune(ckpt, tcfg, cfg.train, Path(work_dir) / "run", seed=cfg.seed)
        return Built(trainer, [FinetuneLogger(client, run_id, tcfg, source)])
