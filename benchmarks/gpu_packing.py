"""Packed trials on one GPU: member-steps/s of solo trials, concurrent solo processes and packs.

A member-step is one training step of one trial; a pack of K members makes K member-steps
per step. Variants (default trial, ``sweeps/trials/default.yaml``, bf16 on CUDA):

* ``solo_eager``: ``grokray.train.Trainer.train_step`` as shipped (the baseline of every ratio);
* ``solo_graph``: the same model and data, the step (gather, forward, loss, backward, fused
  AdamW with a tensor lr) captured once with ``torch.cuda.graph`` and replayed. Not
  ``Trainer.train_step`` itself, which cannot be captured as it is: it sets the lr as a python
  float (a graph would bake in the first value) and copies each batch's rows from pageable
  host memory (not capturable); here the rows go through pinned buffers into a static one;
* ``procs4`` / ``procs8``: 4 / 8 processes (spawned), each one ``Trainer`` on the same GPU,
  started together at a barrier; member-steps/s = all steps / (last end - first start);
* ``packed{K}_eager`` / ``packed{K}_graph``: ``grokray.packed.PackedTrainer`` with K members
  (seeds 0..K-1, lr spread 1e-3..3e-3), eager and with ``cuda_graph=True``;
* ``reference``: the papers'-style reference (HF ``GPT2Block`` looped, ``DataLoader``, fp32;
  ``benchmarks/models.py``) moved to the GPU; skipped with a note without ``transformers``.

In-process variants and the process pools are interleaved (A, B, C, ... rotating, C.interleave);
ratios are medians of per-round ratios against ``solo_eager``. Per variant: peak memory
(``torch.cuda.max_memory_allocated`` above what was allocated before the variant was built;
per process for the pools) and the mean GPU utilization while it ran (pynvml or nvidia-smi,
when present). Before timing, correctness checks, each with a pass/fail threshold
(:data:`THRESHOLDS`, written into the JSON as ``check_results: [{name, value, threshold, rule,
passed}]``; the raw measurements stay under ``checks``): packed vs solo forward on the device (fp32
and the trial's precision), packed graph vs packed eager after the same steps, and packed vs solo
TRAINING: K members trained packed for a few hundred steps against the same K configs trained solo
by ``grokray.train.Trainer`` (fused AdamW), final loss on the training set per member, with both
wall times and their ratio. The exit code is 1 when a check fails, so an unattended run says so.

The process pools fail fast: a worker that dies without a word (killed, crashed in CUDA) is seen
within ~2 s, and no wait on a worker exceeds ``--worker-timeout`` (120 s; in the JSON).

    python -m benchmarks.gpu_packing                 # CUDA: <= ~10 min, benchmarks/results/gpu_packing.json
    python -m benchmarks.gpu_packing --quick         # CUDA, fewer rounds and sizes (temp JSON)
    python -m benchmarks.gpu_packing --cpu-smoke     # no GPU needed: every CPU code path at tiny sizes (CI)

Without CUDA and without ``--cpu-smoke`` it prints one line and exits 0.
"""
from __future__ import annotations

import math
import queue as _queue
import shutil
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import common as C

NAME = "gpu_packing"
#: Tiny shape for --cpu-smoke: exercises the code paths, measures nothing.
SMOKE = ["data.n_entities=30", "data.n_relations=6", "data.out_degree=4", "data.phi=2.0", "model.d_model=32",
         "model.n_heads=2", "model.d_mlp=64", "train.batch_size=64", "train.lens_sample=0"]
#: Seconds the driver waits on the process pool's workers at any one point (start-up, a round, the
#: end) before it gives up on them; a worker that exits early is noticed within ~2 s regardless.
WORKER_TIMEOUT_S = 120.0

#: Pass/fail thresholds of the correctness checks (compared with ``<=``), and why these values.
THRESHOLDS = {
    # max |packed - solo| logit / max(1, max |logit|). fp32 (torch leaves TF32 off for matmuls): the same
    # arithmetic per member in another kernel (baddbmm vs addmm), ~1e-6 expected; TF32 would give ~1e-3.
    "forward_packed_vs_solo_fp32": 1e-4,
    # bf16 autocast: another kernel may round an intermediate one bf16 ulp (2^-8 = 4e-3) apart, and that
    # propagates through 2 loops; tests/unit/test_packed.py allows 2e-2 abs + 2e-2 rel on CPU.
    "forward_packed_vs_solo_bf16": 5e-2,
    # packed graph vs eager after 12 steps (trial precision): the same kernels replayed, so only a kernel
    # that picks another algorithm under capture (cuBLAS) can differ, by rounding. Max |loss diff| ...
    "graph_vs_eager_loss": 1e-3,
    # ... and ||flat_graph - flat_eager|| / ||flat_eager||.
    "graph_vs_eager_params": 1e-3,
    # max over members of |loss/train packed - solo| / max(|solo|, 0.01) after a few hundred steps. Two
    # bf16 kernels of the same step ended 1.1% apart in final loss/train after 1,000 steps
    # (results/fastpath.json, fast_bf16 vs shipped_bf16): rounding noise grows along a trajectory. A
    # packing bug (another member's lr or weight decay, an AdamW step off by one) moves it far more.
    "train_packed_vs_solo_fp32": 0.05,
    "train_packed_vs_solo_bf16": 0.10,
}


# --------------------------------------------------------------------------- configs

def trial_configs(n: int, smoke: bool, precision: str | None) -> list:
    """n default-trial configs that share a pack: seeds 0..n-1, lr spread over 1e-3..3e-3."""
    from benchmarks.models import default_config

    out = []
    for i in range(n):
        lr = 3e-3 if n == 1 else 1e-3 + 2e-3 * i / (n - 1)
        ov = (SMOKE if smoke else []) + [f"seed={i}", f"train.lr={lr:.6g}", "train.threads=0"]
        out.append(default_config(*ov, precision=precision))
    return out


def training_configs(n: int, smoke: bool, precision: str | None) -> list:
    """n default-trial configs for the packed-vs-solo training check: seeds 0..n-1, lr spread over
    1e-3..3e-3 and weight decay over 1.0..0.1, so a member trained with another's hyper-parameters shows."""
    from benchmarks.models import default_config

    out = []
    for i in range(n):
        lr = 3e-3 if n == 1 else 1e-3 + 2e-3 * i / (n - 1)
        wd = 1.0 if n == 1 else 1.0 - 0.9 * i / (n - 1)
        ov = (SMOKE if smoke else []) + [f"seed={i}", f"train.lr={lr:.6g}", f"train.weight_decay={wd:.6g}",
                                         "train.threads=0"]
        out.append(default_config(*ov, precision=precision))
    return out


# --------------------------------------------------------------------------- GPU utilization

class UtilSampler:
    """Mean GPU utilization (%) over a window, sampled every 0.1 s from pynvml or nvidia-smi."""

    def __init__(self, index: int):
        self.index, self.source = index, None
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            self.source = "pynvml"
        except Exception:
            if shutil.which("nvidia-smi"):
                self._read = self._smi
                self.source = "nvidia-smi"

    def _smi(self) -> float:
        out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5).stdout
        return float(out.strip().splitlines()[0])

    def measure(self, fn: Callable[[], float]) -> tuple[float, float | None]:
        """Run ``fn`` while sampling; (fn's result, mean utilization or None)."""
        if self.source is None:
            return fn(), None
        samples: list[float] = []
        stop = threading.Event()

        def loop():
            while not stop.is_set():
                try:
                    samples.append(self._read())
                except Exception:
                    pass
                stop.wait(0.1)

        th = threading.Thread(target=loop, daemon=True)
        th.start()
        try:
            value = fn()
        finally:
            stop.set()
            th.join()
        return value, (sum(samples) / len(samples) if samples else None)


# --------------------------------------------------------------------------- variants

class SoloGraph:
    """A solo trainer's step captured in a CUDA graph (see the module docstring for why not
    ``Trainer.train_step`` itself). Same model, data, batch order and schedule as the trainer."""

    def __init__(self, trainer, warmup: int = 3):
        import torch
        import torch.nn.functional as F

        from grokray.train import answer_logits, lr_at

        self.t, self.lr_at = trainer, lr_at
        dev, tc = trainer.device, trainer.cfg.train
        decay = [p for p in trainer.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in trainer.model.parameters() if p.dim() < 2]
        self.lr = torch.tensor(lr_at(trainer.step, tc), device=dev)   # read by the graph at every replay
        groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        try:
            self.opt = torch.optim.AdamW(groups, lr=self.lr, betas=tc.betas, fused=True, capturable=True)
            self.kernel = "fused"
        except (ValueError, RuntimeError):                              # a torch without fused + capturable
            self.opt = torch.optim.AdamW(groups, lr=self.lr, betas=tc.betas, foreach=True, capturable=True)
            self.kernel = "foreach"
        self.idx = torch.zeros(min(tc.batch_size, len(trainer.train_data)), dtype=torch.long, device=dev)
        self.pinned = [torch.zeros_like(self.idx, device="cpu").pin_memory() for _ in range(4)]
        self.events: list = [None] * 4
        self.i = 0
        bf16 = trainer.precision == "bf16"

        def step():
            batch = trainer.train_data.index(self.idx)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                logits = answer_logits(trainer.model, batch)
            loss = F.cross_entropy(logits.float(), batch.target)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return loss.detach()

        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(warmup):                                      # real steps
                self._stage()
                step()
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = step()

    def _stage(self) -> None:
        import torch
        slot = self.i % len(self.pinned)
        self.i += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        n = len(self.idx)
        t = self.t
        if t.cursor + n > len(t.perm):                                   # Trainer._next_indices, without its copy
            t.perm, t.cursor = torch.randperm(len(t.train_data), generator=t.generator), 0
        self.pinned[slot].copy_(t.perm[t.cursor:t.cursor + n])
        t.cursor += n
        self.idx.copy_(self.pinned[slot], non_blocking=True)
        self.lr.fill_(self.lr_at(t.step, t.cfg.train))
        ev = torch.cuda.Event()
        ev.record()
        self.events[slot] = ev
        t.step += 1

    def train_step(self):
        self._stage()
        self.graph.replay()
        return self.loss


class DeviceReference:
    """The papers'-style reference (``models.ReferenceTrainer``) with its model on ``device``;
    the DataLoader stays on the host, as in the papers' code."""

    def __init__(self, cfg, dataset, device):
        from benchmarks.models import ReferenceTrainer
        self.ref = ReferenceTrainer(cfg, dataset, attn="eager", precision="fp32")
        self.ref.model.to(device)                                        # same Parameter objects: the optimizer follows
        self.device = device

    def train_step(self):
        import torch.nn.functional as F
        r = self.ref
        batch = {k: v.to(self.device, non_blocking=True) for k, v in r._next().items()}
        logits = r.model(batch["input_ids"])
        loss = F.cross_entropy(logits.float().view(-1, r.vocab), batch["labels"].view(-1), ignore_index=-100)
        r.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        r.optimizer.step()
        r.scheduler.step()
        return loss.detach()


def _proc_worker(rank: int, cfg_dict: dict, device: str, steps: int, rounds: int, warmup: int, barrier, out_q) -> None:
    """One solo trial in its own process: warm up, then ``rounds`` timed runs of ``steps`` steps,
    each started at the shared barrier. A barrier the driver aborted (rounds it will not time) ends it."""
    try:
        import torch
        torch.set_num_threads(1)
        from grokray.config import trial_config_from_dict
        from grokray.train import Trainer

        cfg = trial_config_from_dict(cfg_dict)
        t = Trainer(cfg, device=device)
        cuda = t.device.type == "cuda"
        for _ in range(warmup):
            t.train_step()
        if cuda:
            torch.cuda.synchronize()
        # Peak memory after the warm-up is the steady state: the driver may end the pool before "done".
        out_q.put(("ready", rank, torch.cuda.max_memory_allocated() if cuda else None))
        for r in range(rounds):
            barrier.wait(timeout=600)                                     # a safety net only: the driver aborts it
            t0 = time.time()
            for _ in range(steps):
                loss = t.train_step()
            float(loss)                                                   # waits for the GPU
            out_q.put(("round", rank, (r, t0, time.time())))
        peak = torch.cuda.max_memory_allocated() if cuda else None
        out_q.put(("done", rank, peak))
    except threading.BrokenBarrierError:
        return                                                            # released by the driver
    except BaseException:
        out_q.put(("error", rank, traceback.format_exc()))


class ProcPool:
    """N processes, one Trainer each, alive for the whole run; each call = one timed round.

    Every wait on the workers is bounded by ``timeout_s`` and checks, once a second, that they are
    alive: a worker killed by the OOM killer or a CUDA abort sends no "error" message, and used to
    leave the driver waiting 600 s for it."""

    def __init__(self, n: int, cfgs: list, device: str, steps: int, rounds: int, warmup: int,
                 timeout_s: float = WORKER_TIMEOUT_S):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self.n, self.steps, self.rounds, self.round, self.timeout_s = n, steps, rounds, 0, timeout_s
        self.barrier = ctx.Barrier(n + 1)
        self.q = ctx.Queue()
        self._early: list = []
        self.peak_bytes: list = []
        self.procs = [ctx.Process(target=_proc_worker, args=(i, cfgs[i].to_dict(), device, steps, rounds, warmup,
                                                             self.barrier, self.q), daemon=True)
                      for i in range(n)]
        for p in self.procs:
            p.start()
        try:
            self.peak_bytes = [m[2] for m in sorted(self._collect("ready"), key=lambda m: m[1])]
        except BaseException:
            self.close()
            raise

    def _dead(self) -> dict[int, int]:
        """Workers that have exited: rank -> exit code."""
        return {i: p.exitcode for i, p in enumerate(self.procs) if p.exitcode is not None}

    def _collect(self, kind: str, timeout: float | None = None) -> list:
        """n messages of ``kind``, one per worker; others that arrive meanwhile (a fast worker's next one)
        are kept. Raises on a worker's error, on a worker that exited without sending ``kind``, and after
        ``timeout`` seconds (default the per-worker timeout)."""
        timeout = self.timeout_s if timeout is None else timeout
        got = [m for m in self._early if m[0] == kind][:self.n]
        self._early = [m for m in self._early if m not in got]
        deadline = time.monotonic() + timeout
        grace = False                                                     # one more poll for a dead worker's last words
        while len(got) < self.n:
            try:
                msg = self.q.get(timeout=1.0)
            except _queue.Empty:
                missing = set(range(self.n)) - {m[1] for m in got}
                dead = {r: c for r, c in self._dead().items() if r in missing}
                if dead:
                    if grace:
                        raise RuntimeError(f"process pool: worker(s) exited without sending '{kind}' "
                                           f"(rank: exit code {dead}; negative = killed by that signal)") from None
                    grace = True
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"process pool: waited {timeout:.0f} s (--worker-timeout) for '{kind}' "
                                       f"from worker(s) {sorted(missing)}") from None
                continue
            if msg[0] == "error":
                raise RuntimeError(f"worker {msg[1]} failed:\n{msg[2]}")
            (got if msg[0] == kind else self._early).append(msg)
        return got

    def run_round(self) -> float:
        """Member-steps/s of one round: n x steps over the span from the first start to the last end."""
        if dead := self._dead():
            raise RuntimeError(f"process pool: worker(s) exited before round {self.round} (rank: exit code {dead})")
        self.barrier.wait(timeout=self.timeout_s)
        msgs = self._collect("round")
        t0 = min(m[2][1] for m in msgs)
        t1 = max(m[2][2] for m in msgs)
        self.round += 1
        return self.n * self.steps / (t1 - t0)

    def close(self) -> None:
        """End the workers: after the last round collect their final peak memory; otherwise (budget
        reached, a round failed) abort the barrier they wait at, so they exit at once."""
        if self.round >= self.rounds and not self._dead():
            try:
                self.peak_bytes = [m[2] for m in sorted(self._collect("done"), key=lambda m: m[1])]
            except Exception:
                pass
        self.barrier.abort()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()                                            # only our own children
                p.join(timeout=5)


# --------------------------------------------------------------------------- checks

def check(name: str, value: Any, threshold: Any, rule: str = "<=") -> dict[str, Any]:
    """One pass/fail entry of the JSON's ``check_results``: ``value <= threshold`` (a NaN fails), or
    ``value == threshold`` for ``rule="=="``."""
    if rule == "<=":
        passed = isinstance(value, (int, float)) and math.isfinite(value) and value <= threshold
    else:
        passed = value == threshold
    return {"name": name, "value": value, "threshold": threshold, "rule": rule, "passed": bool(passed)}


def correctness_checks(cfgs: list, device, cuda: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Packed vs solo forward on this device; packed graph vs packed eager after the same steps.
    Returns the measurements and their pass/fail entries (:data:`THRESHOLDS`)."""
    import torch

    from grokray.data import load_dataset
    from grokray.device import autocast, resolve_precision
    from grokray.model import LoopedTransformer
    from grokray.packed import PackedLoopedTransformer, PackedTrainer

    out: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    ds = load_dataset(cfgs[0].data)
    models = []
    for c in cfgs[:4]:
        torch.manual_seed(c.seed)
        models.append(LoopedTransformer(c.model, ds.vocab_size).to(device))
    packed = PackedLoopedTransformer.from_models(models, device=device)
    tokens = ds.encode(ds.probe_rows["train"]).tokens.to(device)[:256]
    toks = torch.stack([tokens] * len(models))
    for prec in dict.fromkeys(("fp32", resolve_precision(cfgs[0].train.precision, torch.device(device)))):
        with torch.no_grad(), autocast(prec, torch.device(device)):
            a = packed(toks).float()
            b = torch.stack([m(tokens) for m in models]).float()
        diff, scale = float((a - b).abs().max()), float(b.abs().max())
        out[f"forward_max_abs_diff_packed_vs_solo_{prec}"] = diff
        out[f"forward_logit_scale_{prec}"] = scale
        name = f"forward_packed_vs_solo_{prec}"
        results.append(check(name, diff / max(1.0, scale), THRESHOLDS[name]))
    if cuda:
        n = min(8, len(cfgs))
        eager, graph = PackedTrainer(cfgs[:n], device=device), PackedTrainer(cfgs[:n], device=device, cuda_graph=True)
        for _ in range(12):
            le, lg = eager.train_step(), graph.train_step()
        torch.cuda.synchronize()
        ref = eager.model.flat.double()
        g = out["graph_vs_eager_after_12_steps"] = {
            "graph_captured": graph._graph is not None, "graph_error": graph.graph_error,
            "max_abs_param_diff": float((eager.model.flat - graph.model.flat).abs().max()),
            "rel_param_diff": float((graph.model.flat.double() - ref).norm() / ref.norm()),
            "max_abs_loss_diff": float((le - lg).abs().max()), "losses_finite": bool(torch.isfinite(lg).all())}
        results += [check("graph_captured", g["graph_captured"], True, "=="),
                    check("graph_losses_finite", g["losses_finite"], True, "=="),
                    check("graph_vs_eager_loss", g["max_abs_loss_diff"], THRESHOLDS["graph_vs_eager_loss"]),
                    check("graph_vs_eager_params", g["rel_param_diff"], THRESHOLDS["graph_vs_eager_params"])]
    return out, results


def training_comparison(k: int, steps: int, smoke: bool, precision: str | None, device, cuda: bool
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """K members trained packed (eager, as a packed sweep trial trains them) vs each config trained solo by
    ``grokray.train.Trainer`` (fused AdamW, ``grokray.device.adamw_kernel``) for the same ``steps``, from the
    same initializations and batch orders: the final loss on the whole training set per member, and the wall
    times of the training steps (the first 5 of each run, with their one-off kernel loads, not timed).
    Returns the measurements and the pass/fail entry (:data:`THRESHOLDS`)."""
    import torch

    from grokray.data import load_dataset
    from grokray.packed import PackedTrainer
    from grokray.train import Trainer, evaluate

    cfgs = training_configs(k, smoke, precision)
    ds = load_dataset(cfgs[0].data)
    warm = min(5, steps)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def train_loss(model, probes, prec, dev) -> float:
        return evaluate(model, {"train": probes["train"]}, prec, dev)["loss/train"]

    pack = PackedTrainer(cfgs, datasets=[ds] * k, device=device)
    for _ in range(warm):
        pack.train_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps - warm):
        pack.train_step()
    sync()
    packed_s = time.perf_counter() - t0
    prec = pack.precision
    packed_loss = [train_loss(pack.member_model(i), pack.probes[i], prec, pack.device) for i in range(k)]
    del pack
    solo_loss, solo_s, kernel = [], 0.0, None
    for cfg in cfgs:
        t = Trainer(cfg, dataset=ds, device=device)
        kernel = "fused" if t.optimizer.defaults.get("fused") else "foreach" if t.optimizer.defaults.get("foreach") \
            else "for-loop"
        for _ in range(warm):
            t.train_step()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps - warm):
            t.train_step()
        sync()
        solo_s += time.perf_counter() - t0
        solo_loss.append(train_loss(t.model, t.probes, t.precision, t.device))
        del t
    rel = [abs(p - q) / max(abs(q), 0.01) for p, q in zip(packed_loss, solo_loss)]
    out = {"members": k, "steps": steps, "timed_steps": steps - warm, "precision": prec, "solo_adamw": kernel,
           "lr": [c.train.lr for c in cfgs], "weight_decay": [c.train.weight_decay for c in cfgs],
           "loss_train_packed": packed_loss, "loss_train_solo": solo_loss, "rel_loss_diff": rel,
           "packed_seconds": packed_s, "solo_seconds_total": solo_s,
           "solo_over_packed_wall": solo_s / packed_s if packed_s > 0 else None}
    name = f"train_packed_vs_solo_{prec}"
    return out, check(name, max(rel), THRESHOLDS[name])


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: run every CPU code path at tiny sizes")
    ap.add_argument("--ks", default=None, help="pack sizes, comma-separated (default 8,32,64,128)")
    ap.add_argument("--procs", default=None, help="concurrent solo processes, comma-separated (default 4,8)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="target seconds per timed run of a variant")
    ap.add_argument("--budget", type=float, default=540.0, help="stop starting rounds after this many seconds")
    ap.add_argument("--worker-timeout", type=float, default=WORKER_TIMEOUT_S,
                    help="seconds to wait on the process pools' workers at any one point (default %(default)g)")
    ap.add_argument("--train-steps", type=int, default=None,
                    help="steps of the packed-vs-solo training check (default 400; --quick 200; --cpu-smoke 20)")
    args = ap.parse_args(argv)
    started, before = time.perf_counter(), C.snapshot()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("gpu_packing: no CUDA device, skipped (--cpu-smoke runs the code paths on CPU)")
        return 0
    smoke = args.cpu_smoke
    if smoke:
        args.quick = True                         # writes to a temp file unless --out says otherwise
        cuda = False
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)

    from grokray.data import load_dataset
    from grokray.packed import PackedTrainer
    from grokray.train import Trainer

    ks = [int(k) for k in (args.ks or ("2,3" if smoke else "8,32" if args.quick else "8,32,64,128")).split(",")]
    procs = [int(n) for n in (args.procs or ("2" if smoke else "4" if args.quick else "4,8")).split(",")]
    rounds = args.rounds or (2 if smoke else 3 if args.quick else 5)
    target_s = args.seconds or (0.05 if smoke else 1.0 if args.quick else 1.5)
    warmup = 2 if smoke else 10
    precision = None if cuda else "fp32"          # the trial's own (bf16) on CUDA; fp32 for the CPU smoke
    cfgs = trial_configs(max(ks + procs + [1]), smoke, precision)
    ds = load_dataset(cfgs[0].data)
    notes: list[str] = []
    C.say(f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'}; K {ks}; processes {procs}; rounds {rounds}")

    sampler = UtilSampler(torch.cuda.current_device()) if cuda else None
    if cuda and sampler.source is None:
        notes.append("GPU utilization not measured: neither pynvml nor nvidia-smi is available")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    # ---- build each variant: memory above the baseline, warm-up, steps per timed run
    variants: dict[str, dict[str, Any]] = {}

    def add(name: str, build: Callable[[], Any], members: int) -> None:
        info: dict[str, Any] = {"members": members}
        variants[name] = info
        try:
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() if cuda else 0
            obj = build()
            step = obj.train_step
            for _ in range(warmup):
                step()
            sync()
            if cuda:
                info["peak_memory_mib"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            if name.endswith("_graph") and isinstance(obj, PackedTrainer):   # a failed capture falls back to eager
                info["graph_captured"] = obj._graph is not None
                if obj.graph_error:
                    info["graph_error"] = obj.graph_error
            if isinstance(obj, SoloGraph):
                info["adamw_kernel"] = obj.kernel
            t0 = time.perf_counter()
            for _ in range(3):
                out = step()
            out.cpu()                                                    # waits for the device
            per_step = (time.perf_counter() - t0) / 3
            info["steps_per_run"] = max(2, min(2000, int(target_s / max(per_step, 1e-6))))
            info["_obj"] = obj
            C.say(f"built {name}: {1000 * per_step:.2f} ms/step, {info['steps_per_run']} steps per run"
                  + (f", peak {info['peak_memory_mib']:.0f} MiB" if cuda else ""))
        except Exception as e:  # a variant that cannot run is reported, not fatal
            info["error"] = f"{type(e).__name__}: {e}"
            info["traceback"] = traceback.format_exc()[-3000:]
            C.say(f"{name} FAILED: {info['error']}")

    add("solo_eager", lambda: Trainer(cfgs[0], dataset=ds, device=device), 1)
    if cuda:
        add("solo_graph", lambda: SoloGraph(Trainer(cfgs[0], dataset=ds, device=device)), 1)
    else:
        variants["solo_graph"] = {"members": 1, "skipped": "needs CUDA (torch.cuda.graphs)"}
    for k in ks:
        add(f"packed{k}_eager", lambda k=k: PackedTrainer(cfgs[:k], datasets=[ds] * k, device=device), k)
        if cuda:
            add(f"packed{k}_graph", lambda k=k: PackedTrainer(cfgs[:k], datasets=[ds] * k, device=device,
                                                               cuda_graph=True), k)
        else:
            variants[f"packed{k}_graph"] = {"members": k, "skipped": "needs CUDA (torch.cuda.graphs)"}
    try:
        import transformers  # noqa: F401
        add("reference", lambda: DeviceReference(trial_configs(1, smoke, "fp32")[0], ds, device), 1)
    except ImportError:
        variants["reference"] = {"members": 1, "skipped": "needs the optional 'transformers' package "
                                                          "(pip install -e '.[bench]')"}

    # ---- correctness before timing
    check_results: list[dict[str, Any]] = []
    try:
        checks, check_results = correctness_checks(cfgs, device, cuda)
    except Exception as e:
        checks = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        check_results.append({**check("correctness_checks_ran", False, True, "=="), "error": checks["error"]})
    train_steps = args.train_steps or (20 if smoke else 200 if args.quick else 400)
    train_k = 2 if smoke else 4
    checks["train_packed_vs_solo"] = {}
    # fp32 (the arithmetic the tolerance is about) and, on CUDA, the trial's own precision (what sweeps run).
    for prec in (["fp32"] if not cuda else ["fp32", None]):
        try:
            info, result = training_comparison(train_k, train_steps, smoke, prec, device, cuda)
            checks["train_packed_vs_solo"][info["precision"]] = info
            check_results.append(result)
            C.say(f"trained {train_k} members {train_steps} steps ({info['precision']}): "
                  f"packed {info['packed_seconds']:.2f} s, solo {info['solo_seconds_total']:.2f} s in all "
                  f"(x{info['solo_over_packed_wall'] or 0:.2f}); "
                  f"max relative loss/train difference {result['value']:.2e}")
        except Exception as e:
            key = prec or "trial"
            checks["train_packed_vs_solo"][key] = {"error": f"{type(e).__name__}: {e}",
                                                   "traceback": traceback.format_exc()[-3000:]}
            check_results.append({**check(f"train_packed_vs_solo_{key}_ran", False, True, "=="),
                                  "error": checks["train_packed_vs_solo"][key]["error"]})
    for r in check_results:
        C.say(f"check {r['name']}: {r['value']!r} {r['rule']} {r['threshold']!r}: {'pass' if r['passed'] else 'FAIL'}")

    # ---- the process pools (spawned once, one round per call)
    solo_steps = variants["solo_eager"].get("steps_per_run", 10)
    pools: dict[str, ProcPool] = {}
    for n in procs:
        name = f"procs{n}"
        variants[name] = {"members": n, "steps_per_run_per_process": solo_steps}
        try:
            pools[name] = ProcPool(n, cfgs, str(device), solo_steps, rounds, warmup, args.worker_timeout)
            C.say(f"started {name}")
        except Exception as e:
            variants[name]["error"] = f"{type(e).__name__}: {e}"
            variants[name]["traceback"] = traceback.format_exc()[-3000:]
            C.say(f"{name} FAILED: {variants[name]['error']}")

    # ---- interleaved timing
    utils: dict[str, list[float]] = {}

    def timed(name: str) -> Callable[[], float]:
        info = variants[name]
        if name in pools:
            pool = pools[name]

            def run_pool() -> float:
                value, util = sampler.measure(pool.run_round) if sampler else (pool.run_round(), None)
                if util is not None:
                    utils.setdefault(name, []).append(util)
                return value
            return run_pool
        obj, steps, k = info["_obj"], info["steps_per_run"], info["members"]
        work = C.rate(obj.train_step, steps, k)                        # member-steps per second

        def run() -> float:
            sync()
            value, util = sampler.measure(work) if sampler else (work(), None)
            if util is not None:
                utils.setdefault(name, []).append(util)
            return value
        return run

    runnable = {n: timed(n) for n, v in variants.items() if "_obj" in v or n in pools}
    raw: dict[str, list[float]] = {n: [] for n in runnable}
    names = list(runnable)
    done_rounds = 0
    for r in range(rounds):
        if time.perf_counter() - started > args.budget:
            notes.append(f"stopped after {done_rounds} of {rounds} rounds: --budget {args.budget:.0f} s reached")
            break
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            try:
                raw[n].append(runnable[n]())
            except Exception as e:
                variants[n]["error"] = f"round {r}: {type(e).__name__}: {e}"
                variants[n]["traceback"] = traceback.format_exc()[-3000:]
                names.remove(n)
        done_rounds += 1
        C.say(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {raw[n][-1]:.4g}" for n in names if raw[n]))
    for name, pool in pools.items():
        pool.close()
        if pool.peak_bytes and pool.peak_bytes[0] is not None:
            variants[name]["peak_memory_mib_per_process"] = max(pool.peak_bytes) / 2 ** 20

    # ---- figures
    base = raw.get("solo_eager", [])
    for name, info in variants.items():
        info.pop("_obj", None)
        vals = raw.get(name) or []
        if vals and "error" not in info:
            info["member_steps_per_s"] = C.summarize(vals)
            if base and name != "solo_eager":
                info["ratio_vs_solo_eager"] = C.paired_ratios(vals, base[:len(vals)])
            if name in utils:
                info["gpu_util_percent_mean"] = sum(utils[name]) / len(utils[name])
    for name, info in variants.items():
        if "member_steps_per_s" in info:
            ratio = info.get("ratio_vs_solo_eager", {}).get("median_of_paired")
            C.say(f"  {name:<16} {info['member_steps_per_s']['median']:>10.1f} member-steps/s"
                  + (f"  x{ratio:.2f} vs solo_eager" if ratio else "")
                  + (f"  peak {info['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in info else "")
                  + (f"  util {info['gpu_util_percent_mean']:.0f}%" if "gpu_util_percent_mean" in info else ""))
        else:
            C.say(f"  {name:<16} {info.get('skipped') or info.get('error')}")
    if not cuda:
        notes.append("CPU smoke run: tiny shapes, a few steps; the numbers exercise the code, they are not figures")
    payload = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cpu_smoke": smoke,
               "config": {"trial": cfgs[0].to_dict(), "ks": ks, "processes": procs, "rounds": rounds,
                          "rounds_done": done_rounds, "target_seconds_per_run": target_s, "warmup_steps": warmup,
                          "gpu_util_source": sampler.source if sampler else None,
                          "worker_timeout_s": args.worker_timeout, "train_check_steps": train_steps,
                          "train_check_members": train_k,
                          "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None},
               "unit": "member-steps/s (trials x training steps per second)",
               "variants": variants, "checks": checks, "check_results": check_results,
               "checks_passed": all(r["passed"] for r in check_results), "notes": notes}
    C.write_result(NAME, args, payload, started, before)
    failed = [r["name"] for r in check_results if not r["passed"]]
    C.say(f"checks: {len(check_results) - len(failed)} passed" + (f", FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
