"""Sweep kinds (:class:`~grokray.sweep.kinds.base.SweepKind`): ``trial`` trains fresh models,
``finetune`` fine-tunes the labelled runs of other sweeps. ``KINDS`` maps a spec's ``kind:``
to its implementation; :func:`kind_of` is the kind of a spec as written (``trial`` when it
names none)."""
from __future__ import annotations

from typing import Any, Mapping

from grokray.contract import KIND_TRIAL
from grokray.sweep.kinds.base import Built, SweepKind
from grokray.sweep.kinds.finetune import FinetuneKind
from grokray.sweep.kinds.trial import TrialKind

KINDS: dict[str, SweepKind] = {"trial": TrialKind(), "finetune": FinetuneKind()}
#: The kind of a spec that names none.
DEFAULT_KIND = KIND_TRIAL


def kind_of(raw: Mapping[str, Any]) -> SweepKind:
    """The kind of a spec as written (a sweep's saved ``grokray_sweep.json`` spec, a YAML mapping).

    >>> kind_of({"name": "demo"}).name, kind_of({"kind": "finetune"}).map_name
    ('trial', 'transfer_map')
    """
    return KINDS[raw.get("kind", DEFAULT_KIND)]


__all__ = ["Built", "SweepKind", "KINDS", "DEFAULT_KIND", "kind_of"]
