"""Packed sweeps: the trials of a grid trained K at a time in one process, each still its own run.

With ``resources: {pack: K}`` a grid sweep of kind ``trial`` is cut into packs before Ray Tune
sees it: trials whose configs share every shape-changing key (:func:`grokray.packed.pack_key`:
the model section, entity / relation counts, batch size, precision, device) are grouped, in
grid order, into packs of at most K. Tune then runs one trial per pack (``config = {"pack":
i}``) with the pack's resources, and :func:`run_pack` trains the members together
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

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grokray.errors import first_line
from grokray import tracking
from grokray.config import to_plain
from grokray.packed import PackedTrainer, group_into_packs
from grokray.sweep.stopper import StopCallback
from grokray.sweep.trainable import (CHECKPOINT_EVERY_S, TrialContext, find_or_create_run, restore_state,
                                    trial_device)

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


class PackReporter:
    """Member callback: a Tune result per member evaluation, a pack checkpoint every few seconds."""

    def __init__(self, run_ids: list[str], reported: tuple[str, ...], every_s: float | None = None):
        self.run_ids, self.reported = run_ids, reported
        self.every_s = CHECKPOINT_EVERY_S if every_s is None else every_s
        self.last_ckpt = time.monotonic()

    def result(self, step: int, metrics: dict, slot: int) -> dict:
        out = {k: metrics[k] for k in self.reported if k in metrics}
        out.update(step=step, slot=slot, mlflow_run_id=self.run_ids[slot], mlflow_run_ids=list(self.run_ids),
                   pid=os.getpid())
        return out

    def on_eval(self, step: int, metrics: dict, member: Any) -> None:
        from ray import tune

        pack = member.pack
        if time.monotonic() - self.last_ckpt >= self.every_s:
            with tempfile.TemporaryDirectory(prefix="grokray-ckpt-") as d:
                pack.save_state(Path(d) / "state.pt")
                (Path(d) / "meta.json").write_text(json.dumps({"run_ids": self.run_ids, "step": pack.step}))
                tune.report(self.result(step, metrics, member.index), checkpoint=tune.Checkpoint.from_directory(d))
            self.last_ckpt = time.monotonic()
        else:
            tune.report(self.result(step, metrics, member.index))
        return None


def run_pack(config: dict, ctx: TrialContext) -> None:
    """The Tune trainable of a packed sweep: ``config["pack"]`` indexes ``ctx.packs``."""
    import torch
    from ray import tune

    torch.set_num_threads(ctx.threads)
    spec = ctx.spec
    members = ctx.packs[config["pack"]]
    tune_id = tune.get_context().get_trial_id()
    client = tracking.get_client(ctx.tracking_uri)
    keys = spec.kind_impl.trial_keys(spec)
    run_ids = [find_or_create_run(client, ctx, f"{tune_id}/{slot}", {k: v[k] for k in keys if k in v},
                                  tags={tracking.Tag.PACK: tune_id, tracking.Tag.PACK_SLOT: str(slot)})
               for slot, v in enumerate(members)]
    statuses = ["FAILED"] * len(members)
    results = None
    try:
        with tempfile.TemporaryDirectory(prefix="grokray-pack-") as work:
            cfgs = [spec.trial_config(v) for v in members]
            pack = PackedTrainer(cfgs, work_dirs=[Path(work) / str(slot) for slot in range(len(members))],
                                 device=trial_device(cfgs[0].train.device))
            restore_state(pack)
            reporter = PackReporter(run_ids, spec.kind_impl.reported)
            draw = not spec.classifier.enabled   # the classifier draws curves.png
            results = pack.run([[tracking.RunLogger(client, rid, draw_curves=draw), StopCallback(spec.stopping),
                                 reporter] for rid in run_ids])
            statuses = ["FINISHED"] * len(members)
    finally:
        for rid, status in zip(run_ids, statuses):
            client.set_terminated(rid, status=status)
    last = max(results, key=lambda r: r.steps_run)
    final = reporter.result(last.steps_run, last.history[-1], results.index(last))
    final.update(stop_reason=", ".join(sorted({r.stop_reason for r in results})), steps_run=last.steps_run,
                 members=[{"run_id": rid, "stop_reason": r.stop_reason, "steps_run": r.steps_run}
                          for rid, r in zip(run_ids, results)])
    tune.report(to_plain(final))
