"""Where a trial process trains: the device Ray's placement and ``train.device`` give it.

Its own module because both the one trainable and the layout's pack builder ask it, and the
layout must not import the trainable (which imports the layout).
"""
from __future__ import annotations


def trial_device(spec_device: str) -> str | None:
    """The device a trial process trains on, from ``train.device`` and what Ray assigned it: ``auto``
    with no GPU assigned is the CPU (:func:`grokray.device.resolve_auto`); None leaves the config's
    choice (outside Ray, or a device named explicitly)."""
    if spec_device != "auto":
        return None
    import ray
    import torch

    from grokray.device import resolve_auto

    try:
        assigned = bool(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return None
    return resolve_auto(spec_device, assigned, torch.cuda.is_available())
