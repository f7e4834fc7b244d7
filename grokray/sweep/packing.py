"""Packed sweeps: the trials of a grid trained K at a time in one process, each still its own run.

With ``resources: {pack: K}`` a grid sweep of kind ``trial`` is cut into packs before Ray Tune
sees it: trials whose configs share every shape-changing key (:func:`grokray.packed.pack_key`:
the model section, entity / relation counts, batch size, precision, device) are grouped, in
grid order, into packs of at most K. Tune then runs one trial per pack (``config = {"pack":
i}``) with the pack's resources, and the one trainable
(:func:`grokray.sweep.trainable.run_trial`, through :class:`grokray.sweep.layout.Layout`) trains the members together
(:class:`grokray.packed.PackedTrainer`) while each member keeps everything a solo trial has:
its MLflow child run (found again after a restart by ``<Tune trial id>/<slot>``), the same
params, metrics, checkpoints (solo format) and tags plus ``grokray.pack`` /
``grokray.pack_slot``, its own stop rule, and its own label from the classifier actor.

``pack: auto`` is 1 on CPU (packing measured no faster there: benchmarks/) and, for a sweep
that asks for a GPU, the largest K whose members fit in 80% of the GPU's free memory (probed on
a GPU node with the trial's GPU share), capped at :data:`MAX_AUTO_PACK`.

Example:
    >>> from grokray.sweep.spec import spec_from_dict
    >>> spec = spec_from_dict({"name": "p", "parameters": {"seed": [0, 1, 2], "model.n_loops": [1, 2]}})
    >>> [len(p) for p in plan_packs(spec, 2)]     # 3 seeds x 2 shapes: each shape packs its own seeds
    [2, 1, 2, 1]
"""
from __future__ import annotations

import os
import sys
from typing import Any

from grokray.errors import first_line
from grokray.packed import group_into_packs

#: Largest pack ``pack: auto`` chooses (HFTA and our GPU benchmark: gains flatten out beyond it).
MAX_AUTO_PACK = 64


def plan_packs(spec: Any, k: int) -> list[list[dict]]:
    """The grid's trials (``num_samples`` repeats included), as packs of at most ``k`` members with
    equal shapes; each member is its dict of Tune values, in grid order."""
    values = [v for v in spec.grid() for _ in range(spec.num_samples)]
    configs = [spec.trial_config(v) for v in values]
    return [[values[i] for i in pack] for pack in group_into_packs(configs, k)]


#: Bytes a parameter costs in a pack while it trains: fp32 weights, gradients, AdamW's two moments (16 B)
#: plus the ~6 temporary [K, P] fp32 buffers :meth:`grokray.packed.PackedAdamW.update` holds at its peak.
BYTES_PER_PARAM = 16 + 6 * 4
#: The CUDA context and allocator slack of one process, counted once per pack (~0.5 GB measured on
#: current drivers; more is safe: the pack is only smaller).
CUDA_CONTEXT_BYTES = 768 * 2 ** 20
#: How long ``pack: auto`` waits for a GPU to answer its memory probe (GPU nodes autoscale from zero
#: and take minutes to set up); ``GROKRAY_PACK_PROBE_S`` overrides it.
PACK_PROBE_S = 600.0


def member_bytes(cfg: Any) -> int:
    """Device memory one member of a pack needs while training ``cfg`` (a :class:`TrialConfig`, or a
    spec: its base): :data:`BYTES_PER_PARAM` per parameter, plus the activations of one batch (forward
    + backward, ~24 floats per token, width and block application). Packs are grouped by shape, so
    :func:`resolve_pack_size` sizes them by their largest group."""
    cfg = getattr(cfg, "base", cfg)
    m, t, d = cfg.model, cfg.train, cfg.data
    vocab = d.n_entities + d.n_relations + 1
    params = vocab * m.d_model * (1 if m.tie_embeddings else 2) + m.n_layers * (
        4 * m.d_model * m.d_model + 2 * m.d_model * m.d_mlp + 9 * m.d_model) + 3 * m.d_model
    activations = t.batch_size * 3 * (m.d_model * 8 + m.d_mlp * 2) * m.n_layers * m.n_loops * 4 * 3
    return int(BYTES_PER_PARAM * params + activations)


def largest_member_bytes(spec: Any) -> int:
    """:func:`member_bytes` of the most demanding trial of the grid (every shape group), else of the base."""
    try:
        configs = [spec.trial_config(v) for v in spec.grid()]
    except Exception:  # noqa: BLE001 - a random / optuna spec has no grid: its base
        configs = []
    return max([member_bytes(c) for c in configs] or [member_bytes(spec)])


def _free_gpu_memory(gpu_share: float, timeout_s: float | None = None) -> tuple[int | None, str]:
    """Free memory of one GPU, probed by a task that holds the trial's GPU share: ``(bytes, "")``, or
    ``(None, why)``. A probe still pending at ``timeout_s`` is cancelled, never left behind."""
    import ray

    @ray.remote(num_gpus=gpu_share, num_cpus=0)
    def probe() -> int | None:
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info()
        return int(free)

    timeout_s = float(os.environ.get("GROKRAY_PACK_PROBE_S", PACK_PROBE_S)) if timeout_s is None else timeout_s
    ref = probe.remote()
    ready, _ = ray.wait([ref], timeout=timeout_s)
    if not ready:
        ray.cancel(ref, force=True)
        return None, (f"no GPU answered the memory probe within {timeout_s:g} s (GPU nodes may still be starting: "
                      "GROKRAY_PACK_PROBE_S waits longer)")
    try:
        free = ray.get(ref)
    except Exception as e:  # noqa: BLE001 - the probe's worker died: say so, decide as on CPU
        return None, f"the memory probe failed: {first_line(e)}"
    return (free, "") if free is not None else (None, "the probe's node has no CUDA device")


def resolve_pack_size(spec: Any) -> int:
    """``resources.pack`` as a number: K as given; ``auto`` from the device (module docstring).
    Needs Ray initialised for ``auto`` with a GPU. A probe that gets no answer is said in one warning
    line (stderr) with its reason, and the sweep runs unpacked."""
    pack = spec.resources.pack
    if pack != "auto":
        return int(pack)
    if spec.resources.gpu <= 0:
        return 1
    free, why = _free_gpu_memory(spec.resources.gpu)
    if free is None:
        print(f"[grokray] warning: pack: auto -> 1: {why}; set resources.pack: K to pack anyway", file=sys.stderr,
              flush=True)
        return 1
    usable = 0.8 * free * min(spec.resources.gpu, 1.0) - CUDA_CONTEXT_BYTES
    return max(1, min(MAX_AUTO_PACK, int(usable // largest_member_bytes(spec))))


def describe(packs: list[list[dict]], k: int | str) -> str:
    """How a grid was packed, for ``grokray sweep validate`` and the driver's first line."""
    sizes = [len(p) for p in packs]
    n = sum(sizes)
    return (f"packed {n} trial(s) into {len(packs)} pack(s) of at most {k} "
            f"(sizes {', '.join(map(str, sizes[:12]))}{', ...' if len(sizes) > 12 else ''}; "
            "trials share a pack when model, vocabulary, batch size, precision and device are equal)")
