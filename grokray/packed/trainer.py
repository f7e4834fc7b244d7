"""PackedTrainer: the solo :class:`grokray.train.Trainer` for K members (same batches, schedules,
evaluations, metric names, checkpoints, per-member callbacks, exact resume on CPU), and
:class:`PackedMember`, one member as its callbacks see it."""
from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grokray.config import TrialConfig, to_plain
from grokray.data import PROBES, Batch, Dataset, load_dataset
from grokray.device import choose_device, resolve_precision
from grokray.model import LoopedTransformer
from grokray.train import (TrainResult, checkpoint_steps, circuit_readings, eval_steps, evaluate, lr_at, param_norm,
                           read_state, write_state)
from grokray.packed.groups import check_packable
from grokray.packed.model import PackedLoopedTransformer
from grokray.packed.optim import PackedAdamW


class PackedMember:
    """One member as its callbacks see it: the attributes of a solo :class:`~grokray.train.Trainer`
    that callbacks read (``cfg``, ``dataset``, ``device``, ``precision``, ``step``, ``history``,
    ``checkpoints``, ``model``, ``model_checkpoint()``), plus ``index`` and ``pack``.

    ``model`` is a solo ``LoopedTransformer`` loaded with this member's current weights; the
    pack reuses one such model for all members, so use it within the callback call.
    """

    def __init__(self, pack: PackedTrainer, index: int):
        self.pack, self.index = pack, index
        self.cfg: TrialConfig = pack.cfgs[index]
        self.dataset: Dataset = pack.datasets[index]

    device = property(lambda self: self.pack.device)
    precision = property(lambda self: self.pack.precision)
    step = property(lambda self: self.pack.member_step[self.index])
    history = property(lambda self: self.pack.histories[self.index])
    checkpoints = property(lambda self: self.pack.checkpoints[self.index])
    stop_reason = property(lambda self: self.pack.stop_reasons[self.index])
    active = property(lambda self: self.pack.active[self.index])
    model = property(lambda self: self.pack.member_model(self.index))

    def model_checkpoint(self) -> dict[str, Any]:
        return self.pack.member_checkpoint(self.index)


#: on_eval(step, metrics, member) may return a stop reason for that member (like TrainCallback).
MemberCallback = Any


def _call(callbacks: Sequence, method: str, *args: Any) -> list:
    return [getattr(cb, method)(*args) for cb in callbacks if hasattr(cb, method)]


class PackedTrainer:
    """K trials of one :func:`pack_key` trained as one packed program, each exactly as its solo
    :class:`~grokray.train.Trainer` would (up to floating-point summation order).

    Per member: its dataset (``load_dataset(cfg.data)``), the solo initialization
    (``torch.manual_seed(cfg.seed)`` then ``LoopedTransformer``), the solo batch sequence
    (a CPU generator seeded with ``cfg.seed``, one ``randperm`` per epoch over its own
    training rows), its lr schedule (``lr_at``), weight decay and betas, its evaluation
    schedule (``eval_steps`` with its checkpoint steps), the solo metric names, its
    checkpoints (``work_dirs[k]``, the solo checkpoint format), its callbacks and its stop
    (max_steps, divergence, or a reason returned by one of its callbacks). A stopped member
    is frozen (``active[k] = False``): its weights, optimizer state and batch order stay
    bitwise constant, but the batched kernels still compute it, counted in
    ``frozen_member_steps``.

    ``eval_mode``: ``"member"`` evaluates each member with the solo ``evaluate`` on a solo
    model loaded with its weights (the solo numbers, exactly); ``"packed"`` evaluates the
    probes of all members in one packed forward (same accuracies, losses equal up to
    summation order; much faster on a GPU). The lens metrics always run on the solo model.

    ``cuda_graph``: on CUDA, capture the whole step (batch gather, forward, loss, backward,
    AdamW) in a CUDA graph after ``graph_warmup`` eager steps and replay it; per-step
    inputs (batch rows, lr and the active mask) are copied into static device buffers.
    Ignored on CPU.

    ``time/seconds`` in a member's history is the pack's training wall time.
    """

    def __init__(self, cfgs: Sequence[TrialConfig], datasets: Sequence[Dataset] | None = None,
                 device: torch.device | str | None = None, work_dirs: Sequence[str | os.PathLike | None] | None = None,
                 eval_mode: str = "member", cuda_graph: bool = False, graph_warmup: int = 3):
        cfgs = list(cfgs)
        check_packable(cfgs)
        if eval_mode not in ("member", "packed"):
            raise ValueError(f"eval_mode must be 'member' or 'packed' (got {eval_mode!r})")
        self.cfgs, self.K = cfgs, len(cfgs)
        K, c0 = self.K, cfgs[0]
        threads = max(c.train.threads for c in cfgs)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device) if device is not None else choose_device(c0.train.device)
        self.precision = resolve_precision(c0.train.precision, self.device)
        self.eval_mode = eval_mode
        self.datasets = list(datasets) if datasets is not None else [load_dataset(c.data) for c in cfgs]
        if len(self.datasets) != K:
            raise ValueError(f"need one dataset per member ({K}), got {len(self.datasets)}")
        vocab = {ds.vocab_size for ds in self.datasets}
        if len(vocab) != 1:
            raise ValueError(f"members' datasets have different vocab sizes {sorted(vocab)}")
        self.work_dirs = [Path(w) if w is not None else None for w in (work_dirs or [None] * K)]

        # Models: the solo initialization, member by member, then stacked.
        models = []
        for c in cfgs:
            torch.manual_seed(c.seed)
            models.append(LoopedTransformer(c.model, self.datasets[0].vocab_size))
        self.model = PackedLoopedTransformer.from_models(models, device=self.device)
        self.optimizer = PackedAdamW(self.model, [c.train.weight_decay for c in cfgs],
                                     [tuple(c.train.betas) for c in cfgs])
        # One solo model on the device, reloaded with a member's weights for evaluation / callbacks.
        self._solo = models[0].to(self.device)
        self._solo_holds: tuple[int, int] | None = None                   # (member, weights version)
        self._version = 0

        # Data: each distinct dataset's training rows once on the device; member k's rows
        # start at row_offset[k]. A batch is one gather of K x B global row numbers.
        B = c0.train.batch_size
        blocks, first_row, probes_by_ds = [], {}, {}
        self.n_train, self.row_offset, self.probes = [], [], []
        rows_so_far = 0
        for ds in self.datasets:
            if ds.name not in first_row:
                enc = ds.encode(ds.train_rows())
                first_row[ds.name] = rows_so_far
                rows_so_far += len(enc)
                blocks.append(enc)
                names = [p for p in PROBES if p in ds.probe_rows] + [p for p in ds.probe_rows if p not in PROBES]
                probes_by_ds[ds.name] = {n: ds.encode(ds.probe_rows[n]).to(self.device) for n in names}
            self.row_offset.append(first_row[ds.name])
            self.n_train.append(len(ds.train_rows()))
            self.probes.append(probes_by_ds[ds.name])
        for k, n in enumerate(self.n_train):
            if n < B:
                raise ValueError(f"member {k} has {n} training rows, fewer than train.batch_size {B}: "
                                 "its solo batches would be smaller, so it cannot be packed")
        train = Batch(*(torch.cat(t) for t in zip(*((b.tokens, b.answer_pos, b.target, b.bridge) for b in blocks))))
        self.train_data = train.to(self.device)
        self.batch_size = B

        # Batch order per member, as Trainer._next_indices.
        self.generators = []
        for c in cfgs:
            g = torch.Generator(device="cpu")
            g.manual_seed(c.seed)
            self.generators.append(g)
        self.perms: list[torch.Tensor] = [torch.empty(0, dtype=torch.long) for _ in range(K)]
        self.cursors = [0] * K
        # The same orders side by side, so that one gather draws every member's batch (a loop of K
        # slices costs ~2 ms a step at K = 128, as much as the GPU step itself).
        self._perm_rows = torch.zeros(K, max(self.n_train), dtype=torch.long)   # [K, n_max]
        self._row_offset = torch.tensor(self.row_offset, dtype=torch.long)[:, None]  # [K, 1]
        self._arange_b = torch.arange(B)                                   # [B]
        self._idx_host = torch.zeros(K, B, dtype=torch.long)              # [K, B] global rows of the last batch

        # Schedules and per-member state.
        self.eval_schedules = [eval_steps(c.train.max_steps, c.train.eval_per_decade, c.train.eval_max_interval,
                                          extra=checkpoint_steps(c.train)) for c in cfgs]
        self.checkpoint_schedules = [set(checkpoint_steps(c.train)) for c in cfgs]
        self.step = 0                                                     # packed steps taken
        self.member_step = [0] * K                                        # steps each member trained
        self.active = [True] * K
        self.stop_reasons: list[str | None] = [None] * K
        self.ended = [False] * K                                          # on_end already called
        self.histories: list[list[dict[str, float]]] = [[] for _ in range(K)]
        self.checkpoints: list[dict[int, str]] = [{} for _ in range(K)]
        self.frozen_member_steps = [0] * K                                # steps computed while frozen
        self.seconds = 0.0
        self.members = [PackedMember(self, k) for k in range(K)]
        self._last_losses: torch.Tensor | None = None                     # [K] losses of the last step
        self._last_loss_valid = [False] * K                               # a step trained it since run() began
        self._padded: dict[str, tuple] | None = None                      # probes padded for eval_mode="packed"

        # CUDA: static device inputs, pinned staging ring, optional graph.
        self.cuda_graph = bool(cuda_graph) and self.device.type == "cuda"
        self.graph_warmup = graph_warmup
        self._graph = None
        self._graph_losses: torch.Tensor | None = None
        self.graph_error: str | None = None                               # why capture failed, if it did
        self._eager_steps = 0
        if self.device.type == "cuda":
            n_coef = len(PackedAdamW.COEFS)
            self._idx_dev = torch.zeros(K, B, dtype=torch.long, device=self.device)
            self._coef_dev = torch.zeros(K, n_coef, dtype=torch.float32, device=self.device)
            ring = 4  # the host may run this many steps ahead of the GPU
            self._idx_pin = [torch.zeros(K, B, dtype=torch.long).pin_memory() for _ in range(ring)]
            self._coef_pin = [torch.zeros(K, n_coef, dtype=torch.float32).pin_memory() for _ in range(ring)]
            self._ring_events: list = [None] * ring
            self._ring_i = 0

    # ------------------------------------------------------------------ batches
    def _draw_indices(self) -> torch.Tensor:
        """``[K, B]`` global training rows: each active member's next solo batch; a frozen member
        repeats its last batch without touching its generator."""
        B = self.batch_size
        for k in range(self.K):
            n = self.datasets[k].rows_in_play(self.member_step[k])                # Trainer._next_indices
            if self.active[k] and (self.cursors[k] + B > len(self.perms[k]) or len(self.perms[k]) != n):
                self.perms[k] = torch.randperm(n, generator=self.generators[k])
                self._perm_rows[k, :n] = self.perms[k]
                self.cursors[k] = 0
        # A frozen member's cursor may sit at the end of its order: read row 0, then drop it below.
        cursor = torch.tensor([c if a else 0 for c, a in zip(self.cursors, self.active)])[:, None]   # [K, 1]
        rows = self._perm_rows.gather(1, cursor + self._arange_b) + self._row_offset   # [K, B]
        active = torch.tensor(self.active)[:, None]                       # [K, 1]
        self._idx_host = torch.where(active, rows, self._idx_host)
        for k in range(self.K):
            if self.active[k]:
                self.cursors[k] += B
        return self._idx_host

    def _autocast(self, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
        return contextlib.nullcontext()

    def _compute_step(self, idx: torch.Tensor, coef: torch.Tensor, cache_enabled: bool = True) -> torch.Tensor:
        """Gather, forward, per-member float32 loss, backward, AdamW: device code only (capturable)."""
        tokens = self.train_data.tokens[idx]                              # [K, B, T]
        answer_pos = self.train_data.answer_pos[idx]                      # [K, B]
        target = self.train_data.target[idx]                              # [K, B]
        with self._autocast(cache_enabled):
            logits = self.model.answer_logits(tokens, answer_pos)         # [K, B, V]
        K, B, V = logits.shape
        # Cross entropy on the answer token in float32, the mean over each member's own batch.
        losses = F.cross_entropy(logits.float().reshape(K * B, V), target.reshape(K * B),
                                 reduction="none").view(K, B).mean(1)     # [K]
        self.optimizer.zero_grad()
        with warnings.catch_warnings():
            # The grads are strided views into flat_grad (on purpose); autograd warns that such a
            # layout "may impair performance", which only concerns grads it would allocate itself.
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            # The sum's gradient w.r.t. member k's weights is exactly member k's loss gradient.
            losses.sum().backward()
        self.optimizer.update(coef)
        return losses.detach()

    def train_step(self) -> torch.Tensor:
        """One packed step; returns the members' batch losses ``[K]`` (float32, not synced)."""
        lrs = [lr_at(self.member_step[k], c.train) for k, c in enumerate(self.cfgs)]
        idx_host = self._draw_indices()
        coef_host = self.optimizer.prepare(lrs, self.active)
        if self.device.type != "cuda":
            # the step's inputs go where the model is (a no-op on the CPU; the meta device in shape tests)
            losses = self._compute_step(idx_host.to(self.device), coef_host.to(self.device))
        else:
            losses = self._cuda_step(idx_host, coef_host)
        for k in range(self.K):
            if self.active[k]:
                self.member_step[k] += 1
                self._last_loss_valid[k] = True
            else:
                self.frozen_member_steps[k] += 1
        self.step += 1
        self._version += 1
        self._last_losses = losses
        return losses

    def _cuda_step(self, idx_host: torch.Tensor, coef_host: torch.Tensor) -> torch.Tensor:
        # Events, streams and graphs belong to a device: create them on the pack's (train.device cuda:1
        # must not watch cuda:0's stream), whatever the current device is.
        with torch.cuda.device(self.device):
            return self._cuda_step_here(idx_host, coef_host)

    def _cuda_step_here(self, idx_host: torch.Tensor, coef_host: torch.Tensor) -> torch.Tensor:
        # Stage the step's inputs through a ring of pinned buffers into the static device
        # buffers: the copy is async, and a slot is reused only after the GPU has read it.
        slot = self._ring_i % len(self._idx_pin)
        self._ring_i += 1
        if self._ring_events[slot] is not None:
            self._ring_events[slot].synchronize()
        self._idx_pin[slot].copy_(idx_host)
        self._coef_pin[slot].copy_(coef_host)
        self._idx_dev.copy_(self._idx_pin[slot], non_blocking=True)
        self._coef_dev.copy_(self._coef_pin[slot], non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self._ring_events[slot] = ev
        if not self.cuda_graph:
            return self._compute_step(self._idx_dev, self._coef_dev)
        if self._graph is not None:
            self._graph.replay()
            return self._graph_losses.clone()
        if self._eager_steps < self.graph_warmup:
            # Warm-up steps (real training steps) on a side stream, as torch.cuda.graphs asks.
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                losses = self._compute_step(self._idx_dev, self._coef_dev, cache_enabled=False)
            torch.cuda.current_stream().wait_stream(s)
            self._eager_steps += 1
            return losses
        # Capture (records, does not run), then replay this very step.
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._graph_losses = self._compute_step(self._idx_dev, self._coef_dev, cache_enabled=False)
        except Exception as e:  # an op that cannot be captured: train on, eagerly, and say so
            self.cuda_graph, self.graph_error = False, f"{type(e).__name__}: {e}"
            warnings.warn(f"CUDA graph capture of the packed step failed, continuing eagerly: {self.graph_error}")
            torch.cuda.synchronize()
            return self._compute_step(self._idx_dev, self._coef_dev)
        self._graph = graph
        self._graph.replay()
        return self._graph_losses.clone()

    # ------------------------------------------------------------------ members as solo models
    def member_model(self, k: int) -> LoopedTransformer:
        """A solo model holding member k's current weights (one shared model: reloaded per call)."""
        if self._solo_holds != (k, self._version):
            self._solo.load_state_dict(self.model.member_state_dict(k, clone=False))
            self._solo_holds = (k, self._version)
        return self._solo

    def member_checkpoint(self, k: int) -> dict[str, Any]:
        """Member k in the solo trainer's checkpoint format (``Trainer.model_checkpoint``)."""
        cfg, ds = self.cfgs[k], self.datasets[k]
        return {"model": {n: t.cpu() for n, t in self.model.member_state_dict(k).items()},
                "model_config": to_plain(cfg.model), "vocab_size": ds.vocab_size,
                "n_ctx": 3, "step": self.member_step[k], "dataset": ds.name, "trial_config": cfg.to_dict()}

    def save_member_checkpoint(self, k: int) -> Path:
        wd = self.work_dirs[k]
        assert wd is not None
        step = self.member_step[k]
        path = wd / "checkpoints" / f"step_{step:07d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.member_checkpoint(k), path)
        self.checkpoints[k][step] = str(path)
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, members: Sequence[int]) -> dict[int, dict[str, float]]:
        """The solo trainer's metrics (probes, param_norm, lr, lens) for each of ``members``."""
        out: dict[int, dict[str, float]] = {}
        packed = self._evaluate_packed() if self.eval_mode == "packed" else None
        norms = None
        if packed is not None:
            norms = self.model.flat.detach().double().pow(2).sum(1).sqrt().tolist()
        for k in members:
            cfg = self.cfgs[k]
            if packed is None:
                model = self.member_model(k)
                metrics = evaluate(model, self.probes[k], self.precision, self.device)
                metrics["param_norm"] = param_norm(model)
            else:
                metrics = packed[k]
                metrics["param_norm"] = norms[k]                      # tied weights sit in flat once, as in parameters()
            metrics["lr"] = lr_at(self.member_step[k], cfg.train)
            metrics.update(circuit_readings(self.member_model(k), self.datasets[k], cfg.train, self.precision,
                                            self.device))
            out[k] = metrics
        return out

    def _padded_probes(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each probe of all members padded to one length (built once): name -> (tokens [K, N, 3],
        answer_pos [K, N], target [K, N], valid [K, N], sizes [K])."""
        if self._padded is None:
            K, dev = self.K, self.device
            names: list[str] = []
            for pr in self.probes:
                names += [n for n in pr if n not in names]
            self._padded = {}
            for name in names:
                sizes = [len(pr[name]) if name in pr else 0 for pr in self.probes]
                n_max = max(sizes)
                if n_max == 0:
                    continue
                tokens = torch.zeros(K, n_max, 3, dtype=torch.long, device=dev)   # padding: token 0 ...
                pos = torch.ones(K, n_max, dtype=torch.long, device=dev)          # ... read at position 1
                target = torch.zeros(K, n_max, dtype=torch.long, device=dev)
                for k, pr in enumerate(self.probes):
                    if sizes[k]:
                        b = pr[name]
                        tokens[k, :sizes[k]], pos[k, :sizes[k]], target[k, :sizes[k]] = b.tokens, b.answer_pos, b.target
                valid = torch.arange(n_max, device=dev)[None] < torch.tensor(sizes, device=dev)[:, None]  # [K, N]
                self._padded[name] = (tokens, pos, target, valid, sizes)
        return self._padded

    @torch.no_grad()
    def _evaluate_packed(self) -> list[dict[str, float]]:
        """``acc/<probe>``, ``loss/<probe>`` for every member in packed forwards (probes padded to one length)."""
        K = self.K
        out: list[dict[str, float]] = [{} for _ in range(K)]
        was_training = self.model.training
        self.model.eval()
        chunk = max(64, 65536 // K)                                       # rows per member per forward
        for name, (tokens, pos, target, valid, sizes) in self._padded_probes().items():
            loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
            correct = torch.zeros(K, dtype=torch.long, device=self.device)
            for i in range(0, tokens.shape[1], chunk):
                sl = slice(i, i + chunk)
                with self._autocast():
                    logits = self.model.answer_logits(tokens[:, sl], pos[:, sl]).float()   # [K, n, V]
                n, V = logits.shape[1:]
                ce = F.cross_entropy(logits.reshape(K * n, V), target[:, sl].reshape(-1),
                                     reduction="none").view(K, n)         # [K, n]
                v = valid[:, sl]
                loss_sum += torch.where(v, ce, torch.zeros_like(ce)).sum(1).double()
                correct += ((logits.argmax(-1) == target[:, sl]) & v).sum(1)
            loss_sum, correct = loss_sum.tolist(), correct.tolist()
            for k in range(K):
                if sizes[k]:
                    out[k][f"acc/{name}"] = correct[k] / sizes[k]
                    out[k][f"loss/{name}"] = loss_sum[k] / sizes[k]
        self.model.train(was_training)
        return out

    # ------------------------------------------------------------------ loop
    def _next_eval(self, k: int) -> int | None:
        last = self.histories[k][-1]["step"] if self.histories[k] else -1
        return next((s for s in self.eval_schedules[k] if s > last and s >= self.member_step[k]), None)

    def run(self, callbacks: Sequence[Sequence[MemberCallback]] | None = None,
            until_step: int | None = None) -> list[TrainResult]:
        """Train every active member to its max_steps (or its stop); resumes from the current step.

        ``callbacks[k]``: member k's callbacks (``on_start(member)``, ``on_eval(step, metrics,
        member)`` -> stop reason or None, ``on_checkpoint(step, path, member)``,
        ``on_end(result, member)``), with ``member`` a :class:`PackedMember`.
        ``until_step``: pause once the pack reaches this step (members stay active, no
        ``on_end``; their results say ``stop_reason=None``), e.g. to save a state and resume.
        """
        cbs = [list(c) for c in callbacks] if callbacks is not None else [[] for _ in range(self.K)]
        if len(cbs) != self.K:
            raise ValueError(f"need one callback list per member ({self.K}), got {len(cbs)}")
        self.model.train()
        for k in range(self.K):
            if self.active[k]:
                _call(cbs[k], "on_start", self.members[k])
        self._last_loss_valid = [False] * self.K
        t0, seconds0 = time.perf_counter(), self.seconds
        while True:
            due = {k: s for k in range(self.K) if self.active[k] and (s := self._next_eval(k)) is not None}
            if not due:
                break
            target = min(due.values())
            if until_step is not None and target > until_step:
                while self.step < until_step:
                    self.train_step()
                break
            while self.step < target:
                self.train_step()
            members = [k for k, s in due.items() if s == target]
            metrics_by_member = self.evaluate(members)
            losses = self._last_losses.tolist() if self._last_losses is not None else None
            self.seconds = seconds0 + time.perf_counter() - t0
            for k in members:
                metrics = metrics_by_member[k]
                if losses is not None and self._last_loss_valid[k]:
                    metrics["train_loss"] = float(losses[k])
                metrics["time/seconds"] = self.seconds
                self._finish_eval(k, metrics, cbs[k])
        self.seconds = seconds0 + time.perf_counter() - t0
        results = []
        for k in range(self.K):
            result = TrainResult(self.member_step[k], self.stop_reasons[k], self.histories[k],
                                 dict(self.checkpoints[k]), self.seconds)
            if not self.active[k] and not self.ended[k]:
                self.ended[k] = True
                _call(cbs[k], "on_end", result, self.members[k])
            results.append(result)
        return results

    def _finish_eval(self, k: int, metrics: dict[str, float], callbacks: list) -> None:
        """Log member k's evaluation, checkpoint, ask its callbacks, and freeze it if it stops (as Trainer.run)."""
        step, cfg = self.member_step[k], self.cfgs[k]
        self.histories[k].append({"step": step, **metrics})
        diverged = not (math.isfinite(metrics.get("train_loss", 0.0)) and math.isfinite(metrics["param_norm"]))
        done = step >= cfg.train.max_steps
        if self.work_dirs[k] is not None and (step in self.checkpoint_schedules[k] or diverged or done):
            path = self.save_member_checkpoint(k)
            _call(callbacks, "on_checkpoint", step, path, self.members[k])
        reasons = [r for r in _call(callbacks, "on_eval", step, metrics, self.members[k]) if r]
        reason = "diverged" if diverged else reasons[0] if reasons else "max_steps" if done else None
        if reason is None:
            return
        if reason != "max_steps" and self.work_dirs[k] is not None and step not in self.checkpoints[k]:
            path = self.save_member_checkpoint(k)
            _call(callbacks, "on_checkpoint", step, path, self.members[k])
        self.freeze(k, reason)

    def freeze(self, k: int, reason: str = "stopped") -> None:
        """Stop member k: from now on its weights, optimizer state and batch order stay as they are."""
        self.active[k] = False
        self.stop_reasons[k] = reason

    def stats(self) -> dict[str, Any]:
        """Packed steps, member-steps trained and member-steps spent on frozen members."""
        trained, frozen = sum(self.member_step), sum(self.frozen_member_steps)
        return {"steps": self.step, "members": self.K, "member_steps_trained": trained,
                "member_steps_frozen": frozen, "useful_fraction": trained / max(trained + frozen, 1),
                "seconds": self.seconds}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly (CPU): weights, optimizer, data order, histories, stops."""
        return {"format": "grokray.packed/1", "trial_configs": [c.to_dict() for c in self.cfgs],
                "model": {n: t.detach().clone() for n, t in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "members": [{"step": self.member_step[k], "generator": self.generators[k].get_state(),
                             "perm": self.perms[k], "cursor": self.cursors[k], "last_rows": self._idx_host[k].clone(),
                             "history": [dict(h) for h in self.histories[k]], "checkpoints": dict(self.checkpoints[k]),
                             "active": self.active[k], "stop_reason": self.stop_reasons[k], "ended": self.ended[k],
                             "frozen_steps": self.frozen_member_steps[k]} for k in range(self.K)],
                "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if [c.to_dict() for c in self.cfgs] != state["trial_configs"]:
            raise ValueError("the saved pack was trained with other trial configs (or another member order)")
        self.model.load_state_dict(state["model"])                        # in place, into the flat buffer
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        for k, m in enumerate(state["members"]):
            self.member_step[k] = int(m["step"])
            self.generators[k].set_state(m["generator"])
            self.perms[k], self.cursors[k] = m["perm"], int(m["cursor"])
            self._perm_rows[k, :len(m["perm"])] = m["perm"]
            self._idx_host[k] = m["last_rows"]
            self.histories[k] = [dict(h) for h in m["history"]]
            self.checkpoints[k] = {int(s): p for s, p in m["checkpoints"].items()}
            self.active[k], self.stop_reasons[k], self.ended[k] = bool(m["active"]), m["stop_reason"], bool(m["ended"])
            self.frozen_member_steps[k] = int(m["frozen_steps"])
        self.seconds = float(state.get("seconds", 0.0))
        self._version += 1

    def save_state(self, path: str | os.PathLike) -> None:
        write_state(self.state_dict(), path)

    def load_state(self, path: str | os.PathLike) -> None:
        self.load_state_dict(read_state(path))
