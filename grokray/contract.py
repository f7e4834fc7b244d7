"""grokray's MLflow contract: every name a stored run is read and written by, spelled once.

What other tools (the MLflow UI, notebooks, a re-classification months later) rely on: tag
names (:class:`Tag`), run kinds, the params grokray adds to a run (:class:`SweepParam`,
:class:`TrialParam`, :class:`FinetuneParam`), metric families (``verdict/``, ``transfer/``,
``shortcut/``), artifact paths and file names. Names only: no MLflow import, no I/O, so the
science core may use them too; :mod:`grokray.tracking` re-exports every one of them and does
the reading and writing. A name changed here changes what old stores are read by: don't.

Not here: the trainer's metric keys (``acc/train``, ``lens/ood/bridge_found``, ...), which are
its history's keys before they are MLflow's (:mod:`grokray.train`), and a trial's flattened
config params (``data.phi``, ...), which are the config's dotted keys (:mod:`grokray.config`).

Example:
    >>> Tag.LABEL, Tag.PARENT, KIND_TRIAL
    ('grokray.label', 'mlflow.parentRunId', 'trial')
    >>> f"{PHASE_MAP_DIR}/{PHASE_MAP_PNG}", shortcut_metric("best", "ood")
    ('phase_map/phase_map.png', 'shortcut/best/ood')
    >>> checkpoint_step(f"{CHECKPOINT_DIR}/step_0012000.pt"), FinetuneParam.size("new_atomic")
    (12000, 'transfer.size.new_atomic')
"""
from __future__ import annotations

import re
from typing import Mapping

from grokray.criteria import LABEL_TAG_PREFIX, REGISTRY

# =========================================================================== tags

TAG_PREFIX = "grokray."


class Tag:
    """Run tag names. grokray's own start with ``grokray.``; three are MLflow's."""
    KIND = "grokray.kind"                      # sweep | trial | finetune
    SWEEP = "grokray.sweep"                    # the sweep's name (on the parent and every child)
    TRIAL_ID = "grokray.trial_id"              # Ray Tune's trial id: a restarted trial finds its run by it
    SWEPT = "grokray.swept"                    # the trial's swept values, JSON
    DATASET = "grokray.dataset"                # content hash of the data config (ds-...)
    VERSION = "grokray.version"
    DEVICE = "grokray.device"
    PRECISION = "grokray.precision"
    STOP_REASON = "grokray.stop_reason"        # max_steps | generalized | no_memorization | diverged
    STEPS_RUN = "grokray.steps_run"
    MAX_STEPS = "grokray.max_steps"
    # the verdict (grokray.classify)
    LABEL = "grokray.label"                    # true_grokking | fake_grokking | no_grokking (the chosen criterion)
    # grokray.label_<criterion>: the same decided by each criterion of grokray.criteria.REGISTRY
    # (grokray.label_interchange, grokray.label_lens): Tag.label_by(name)
    LABEL_BY_PREFIX = LABEL_TAG_PREFIX
    CRITERION = "grokray.criterion"            # which criterion drives grokray.label
    PHASE = "grokray.phase"                    # Liu et al.'s phase: grokking | comprehension | memorization | confusion
    DETERMINED = "grokray.determined"          # false: the budget did not settle the outcome (semi, censored, rising)
    EVIDENCE = "grokray.evidence"              # checkpoint (examined) | curves (labelled from curves + baselines)
    DETAIL = "grokray.detail"
    CONFIDENCE = "grokray.confidence"
    CLASSIFIER_VERSION = "grokray.classifier_version"
    SEARCH_REASON = "grokray.search_reason"    # method boundary: why the search chose this point ("trial 7/60: refine: ...")
    CENSORED = "grokray.censored"
    SPLIT = "grokray.split"
    # packed trials (resources.pack): the pack's Ray Tune trial id and the member's slot in it
    PACK = "grokray.pack"
    PACK_SLOT = "grokray.pack_slot"
    # fine-tuning runs (kind finetune)
    SOURCE_RUN = "grokray.source_run"
    SOURCE_LABEL = "grokray.source_label"
    SOURCE_SWEEP = "grokray.source_sweep"
    SOURCE_RUN_NAME = "grokray.source_run_name"
    SOURCE_CHECKPOINT = "grokray.source_checkpoint"
    SOURCE_CLASSIFIER_VERSION = "grokray.source_classifier_version"  # the classifier that labelled the source
    # MLflow's own
    PARENT = "mlflow.parentRunId"
    RUN_NAME = "mlflow.runName"
    NOTE = "mlflow.note.content"               # the run's description in the UI

    @staticmethod
    def label_by(criterion: str) -> str:
        """The tag holding the label decided by ``criterion`` (``grokray.label_interchange``, ...)."""
        return REGISTRY[criterion].tag


#: Run kinds (the ``grokray.kind`` tag): a sweep's parent run, and the two kinds of child run.
KIND_SWEEP, KIND_TRIAL, KIND_FINETUNE = "sweep", "trial", "finetune"
#: Experiment tag that makes the MLflow 3 UI open the runs table (model training) instead of GenAI traces.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: Experiment-tag prefix under which the MLflow UI keeps a saved runs view ("Views" menu).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: The experiment ``grokray train`` logs to unless told otherwise.
DEFAULT_EXPERIMENT = "grokray"


def sweep_view_id(sweep: str) -> str:
    """The id of the runs view a sweep saves on its experiment.

    >>> sweep_view_id("quickstart")
    'grokray-quickstart'
    """
    return f"grokray-{sweep}"


# =========================================================================== params

#: Param values are capped at this many characters (mlflow#6183).
PARAM_MAX = 500


class SweepParam:
    """Params of a sweep's parent run: written by the driver, read back by the maps and the CLI."""
    METHOD = "sweep.method"
    KIND = "sweep.kind"
    N_TRIALS = "sweep.n_trials"
    SWEPT = "sweep.swept"                      # the swept keys, comma-separated
    MAX_STEPS = "sweep.max_steps"
    MAX_CONCURRENT = "sweep.max_concurrent"
    RESOURCES = "sweep.resources"
    STOPPING = "sweep.stopping"                # JSON
    CRITERION = "sweep.criterion"
    EVIDENCE = "sweep.evidence"
    N_SOURCES = "sweep.n_sources"              # finetune sweeps
    BASE_PREFIX = "base."                      # + a dotted key of the base trial config: its value


class TrialParam:
    """Params of a trial run besides its config's own dotted keys (``data.phi``, ...)."""
    AUGMENTATION = "data.augmentation"         # the augmentation's name (the config holds its mapping)
    N_PARAMS = "model.n_params"                # the model's size: not a config knob
    MAX_STEPS = "train.max_steps"              # the config's budget, read back where grokray.max_steps is missing


class FinetuneParam:
    """Params a fine-tuning run adds to a trial run's: its source and its transfer data."""
    SOURCE_RUN_ID = "source.run_id"
    SOURCE_CHECKPOINT = "source.checkpoint"
    SOURCE_STEP = "source.step"
    TRANSFER_PREFIX = "transfer."              # transfer.<field> of its TransferConfig
    SIZE_PREFIX = "transfer.size."             # transfer.size.<split>: the transfer dataset's split sizes

    @staticmethod
    def transfer(field: str) -> str:
        """The param of one field of the run's transfer config (``transfer.n_new``)."""
        return FinetuneParam.TRANSFER_PREFIX + field

    @staticmethod
    def size(split: str) -> str:
        """The param of one split's size (``transfer.size.new_atomic``)."""
        return FinetuneParam.SIZE_PREFIX + split


#: The swept key naming a fine-tuning trial's source run: in ``sweep.swept``, ``grokray.swept`` and Tune's config.
SWEPT_SOURCE_RUN = "source_run"


# =========================================================================== metric families

#: Metric prefixes written after training (the verdict, a fine-tuning summary); not training curves.
VERDICT_PREFIX, TRANSFER_PREFIX = "verdict/", "transfer/"
#: The dataset's shortcut baselines, logged once per run at step 0: ``shortcut/<rule>/<split>``.
SHORTCUT_PREFIX = "shortcut/"


def shortcut_metric(rule: str, split: str) -> str:
    """The metric of one shortcut baseline: ``shortcut/<rule>/<split>``."""
    return f"{SHORTCUT_PREFIX}{rule}/{split}"


def shortcut_metrics(baselines: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Shortcut baselines ``{split: {rule: accuracy}}`` as run metrics ``shortcut/<rule>/<split>``.

    >>> shortcut_metrics({"ood": {"best": 0.25}})
    {'shortcut/best/ood': 0.25}
    """
    return {shortcut_metric(rule, split): float(v) for split, rules in baselines.items()
            for rule, v in rules.items()}


# =========================================================================== artifacts

#: Artifacts of a trial run (top level).
HISTORY_JSON, HISTORY_CSV, TRIAL_YAML, DATASET_JSON, CURVES_PNG = (
    "history.json", "history.csv", "trial.yaml", "dataset.json", "curves.png")
#: A trial run's checkpoints: ``checkpoints/step_0001000.pt`` (the trainer names the files).
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"step_(\d+)\.pt$")
#: A fine-tuning run's transfer curves (top level), and the same picture of a whole sweep in ``transfer_map/``.
TRANSFER_CURVES_PNG = "transfer_curves.png"
#: The verdict's folder on a trial run, and what the classifier puts in it.
VERDICT_DIR = "verdict"
VERDICT_README, VERDICT_JSON, EVIDENCE_JSON = "README.md", "verdict.json", "evidence.json"
LENS_PNG, INTERCHANGE_PNG, PATCHING_PNG, PATCHING_JSON = "lens.png", "interchange.png", "patching.png", "patching.json"
#: Artifacts of a sweep's parent run: the spec as run, a finetune sweep's resolved sources, and the
#: map folder (``phase_map/``, ``transfer_map/``) with its files.
SWEEP_YAML = "sweep.yaml"
SOURCES_JSON = "sources.json"
PHASE_MAP_DIR, TRANSFER_MAP_DIR = "phase_map", "transfer_map"
PHASE_MAP_CSV, PHASE_MAP_PNG, PHASE_MAP_TXT = "phase_map.csv", "phase_map.png", "phase_map.txt"
#: The same picture coloured by Liu et al.'s phase (``grokray phase-map --color-by phase``).
PHASE_MAP_PHASES_PNG = "phase_map_phases.png"
#: Method boundary: every grid point with the search's label and its source (grokray.sweep.search_map).
SEARCH_MAP_CSV = "search_map.csv"
TRANSFER_MAP_CSV, TRANSFER_MAP_TXT = "transfer_map.csv", "transfer_map.txt"


def checkpoint_step(path: str) -> int | None:
    """``checkpoints/step_0001000.pt`` -> 1000 (None for another file name)."""
    m = _CHECKPOINT_RE.search(path)
    return int(m.group(1)) if m else None


__all__ = ["TAG_PREFIX", "Tag", "KIND_SWEEP", "KIND_TRIAL", "KIND_FINETUNE", "EXPERIMENT_KIND_TAG", "EXPERIMENT_KIND",
           "VIEW_TAG_PREFIX", "DEFAULT_EXPERIMENT", "sweep_view_id", "PARAM_MAX", "SweepParam", "TrialParam",
           "FinetuneParam", "SWEPT_SOURCE_RUN", "VERDICT_PREFIX", "TRANSFER_PREFIX", "SHORTCUT_PREFIX",
           "shortcut_metric", "shortcut_metrics", "HISTORY_JSON", "HISTORY_CSV", "TRIAL_YAML", "DATASET_JSON",
           "CURVES_PNG", "CHECKPOINT_DIR", "TRANSFER_CURVES_PNG", "VERDICT_DIR", "VERDICT_README", "VERDICT_JSON",
           "EVIDENCE_JSON", "LENS_PNG", "INTERCHANGE_PNG", "PATCHING_PNG", "PATCHING_JSON", "SWEEP_YAML",
           "SOURCES_JSON", "PHASE_MAP_DIR", "TRANSFER_MAP_DIR", "PHASE_MAP_CSV", "PHASE_MAP_PNG", "PHASE_MAP_TXT",
           "PHASE_MAP_PHASES_PNG", "SEARCH_MAP_CSV", "TRANSFER_MAP_CSV", "TRANSFER_MAP_TXT", "checkpoint_step"]
