"""Sweep kinds (:class:`~grokray.sweep.kinds.base.SweepKind`): ``trial`` trains fresh models,
``finetune`` fine-tunes the labelled runs of other sweeps. ``KINDS`` maps a spec's ``kind:``
to its implementation."""
from grokray.sweep.kinds.base import Built, SweepKind
from grokray.sweep.kinds.finetune import FinetuneKind
from grokray.sweep.kinds.trial import TrialKind

KINDS: dict[str, SweepKind] = {"trial": TrialKind(), "finetune": FinetuneKind()}

__all__ = ["Built", "SweepKind", "KINDS"]
