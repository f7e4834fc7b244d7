"""Where and in what precision a model runs: device choice, bf16 autocast, the AdamW kernel.

Shared by training (:mod:`grokray.train`) and analysis (:mod:`grokray.circuits`), which
must run a model exactly as it was trained: one module, so neither imports the other for it.

Example:
    >>> import torch
    >>> choose_device("cpu"), resolve_precision("fp32", torch.device("cpu"))
    (device(type='cpu'), 'fp32')
    >>> with autocast("bf16", torch.device("cpu")):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
"""
from __future__ import annotations

import contextlib

import torch


def resolve_auto(spec: str, gpus_assigned: bool | None, cuda_available: bool) -> str:
    """The device name ``train.device`` means where it runs.

    ``auto`` is CUDA only when CUDA is available AND the process was given a GPU: a Ray trial that
    asked for ``gpu: 0`` sees every GPU of its node (Ray 2.60 no longer hides them from a worker
    that asked for none, ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``), and must not train on one outside
    Ray's accounting. ``gpus_assigned=None``: not under a scheduler (a plain ``grokray train``).

    >>> resolve_auto("auto", None, True), resolve_auto("auto", False, True), resolve_auto("auto", True, False)
    ('cuda', 'cpu', 'cpu')
    >>> resolve_auto("cuda:1", False, True)   # named explicitly: the user's choice
    'cuda:1'
    """
    if spec != "auto":
        return spec
    return "cuda" if cuda_available and gpus_assigned is not False else "cpu"


def choose_device(spec: str = "auto", gpus_assigned: bool | None = None) -> torch.device:
    """``auto`` -> CUDA when available (and, under Ray, when a GPU was assigned), else CPU; otherwise
    the named device (``cpu``, ``cuda:1``). See :func:`resolve_auto`."""
    return torch.device(resolve_auto(spec, gpus_assigned, torch.cuda.is_available()))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware supports it (CUDA bf16, or a CPU with native bf16), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else a no-op. Losses stay float32
    (the caller casts logits up: softmax collapse in low precision, Prieto et al. 2025)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """AdamW's implementation: the fused kernel on CPU and CUDA (one kernel for all
    parameters; on CPU the optimizer step takes ~0.16 ms instead of ~0.44 ms with
    ``foreach``), ``foreach`` elsewhere. Same update rule either way.
    """
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
