"""The training loop: AdamW, warm-up + constant/step lr, log-spaced evaluation, checkpoints.

Plain PyTorch, no Ray or MLflow: the caller observes a run through callbacks
(:class:`TrainCallback`) and may stop it by returning a reason from ``on_eval``.

* Data lives on the device as one tensor; a step indexes a slice of a per-epoch
  permutation, so a step costs the same for any dataset size.
* The loss is cross-entropy on the answer token only, computed in float32 even under
  bf16 autocast (softmax collapse in low precision, Prieto et al. 2025).
* Evaluation follows :func:`eval_steps`, which depends only on config keys, so every
  trial of a sweep is evaluated at the same steps: ``eval_per_decade`` log-spaced
  points per factor 10, never more than ``eval_max_interval`` steps apart.
* Per evaluation: accuracy and loss on every probe, the parameter norm, the lr, the
  logit-lens bridge metrics (:mod:`grokray.circuits.lens`) and the circuit curves (the
  interchange test on a fixed query set, :mod:`grokray.circuits.formation`):
  :func:`circuit_readings`, shared with the packed trainer.
* :meth:`Trainer.state_dict` is everything needed to resume bit-exactly on CPU.

Example:
    >>> from grokray.config import TrialConfig
    >>> cfg = TrialConfig(); cfg.train.max_steps = 3; cfg.train.lens_sample = 0
    >>> cfg.data.n_entities, cfg.data.phi = 30, 2.0
    >>> result = Trainer(cfg).run()
    >>> result.steps_run, sorted(result.history[-1])[:3]
    (3, ['acc/id_atomic', 'acc/ood_atomic', 'acc/test_inferred_id'])
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from grokray.circuits.formation import circuit_metrics
from grokray.circuits.lens import lens_metrics
from grokray.config import TrialConfig, TrainConfig, to_plain
from grokray.data import PROBES, Batch, Dataset, load_dataset
from grokray.device import adamw_kernel, autocast, choose_device, resolve_precision
from grokray.model import LoopedTransformer

#: Probes evaluated at every evaluation and their short names in progress output.
SHORT = {"train": "train", "train_inferred": "tr_inf", "id_atomic": "id_at", "ood_atomic": "ood_at",
         "train_augmented": "aug", "test_inferred_id": "ID", "test_inferred_ood": "OOD"}


# --------------------------------------------------------------------------- schedules

def eval_steps(max_steps: int, per_decade: int, max_interval: int, extra: list[int] | tuple = ()) -> list[int]:
    """Evaluation steps: 0, log-spaced points (``per_decade`` per factor 10), every
    ``max_interval`` steps, the ``extra`` steps, and ``max_steps``; sorted, unique.

    Depends on nothing but its arguments, so trials with the same keys share the schedule.

    >>> eval_steps(100, 4, 50)
    [0, 1, 2, 3, 6, 10, 18, 32, 50, 56, 100]
    """
    steps = {0, max_steps, *[s for s in extra if 0 <= s <= max_steps]}
    k = 0
    while (s := int(round(10 ** (k / per_decade)))) <= max_steps:
        steps.add(s)
        k += 1
    steps.update(range(max_interval, max_steps + 1, max_interval))
    return sorted(steps)


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """Steps whose weights are kept: three per decade from step 100 (snapped to evaluation
    steps) for ``"log"``, the given list otherwise. The final step is always added by the trainer."""
    spec = cfg.checkpoint_steps
    if spec == "none":
        return []
    if spec != "log":
        return sorted(set(int(s) for s in spec if s <= cfg.max_steps))
    evals = eval_steps(cfg.max_steps, cfg.eval_per_decade, cfg.eval_max_interval)
    out, k = set(), 6
    while (target := 10 ** (k / 3)) <= cfg.max_steps:
        out.add(min((s for s in evals if s >= target), default=cfg.max_steps))
        k += 1
    return sorted(out)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant, or dropped by
    ``lr_drop_factor`` from ``lr_drop_step`` on (``lr_schedule: step``)."""
    lr = cfg.lr
    if cfg.lr_schedule == "step" and step >= cfg.lr_drop_step:
        lr *= cfg.lr_drop_factor
    if cfg.warmup_steps and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    return lr


# --------------------------------------------------------------------------- evaluation

def answer_logits(model: LoopedTransformer, batch: Batch) -> torch.Tensor:
    """Logits at each query's answer position, ``[N, V]``; only those positions are unembedded."""
    resid = model.residual(batch.tokens)                                   # [N, T, d]
    picked = resid[torch.arange(len(batch), device=resid.device), batch.answer_pos]  # [N, d]
    return model.decode(picked)                                           # [N, V]


@torch.no_grad()
def evaluate(model: LoopedTransformer, probes: dict[str, Batch], precision: str, device: torch.device,
             chunk: int = 8192) -> dict[str, float]:
    """``acc/<probe>`` and ``loss/<probe>`` for every non-empty probe."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for name, batch in probes.items():
        if len(batch) == 0:
            continue
        correct, loss_sum = 0, 0.0
        for i in range(0, len(batch), chunk):
            b = batch.index(slice(i, i + chunk))
            with autocast(precision, device):
                logits = answer_logits(model, b)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, b.target, reduction="sum").item()
            correct += (logits.argmax(-1) == b.target).sum().item()
        out[f"acc/{name}"] = correct / len(batch)
        out[f"loss/{name}"] = loss_sum / len(batch)
    model.train(was_training)
    return out


def circuit_readings(model: LoopedTransformer, dataset: Dataset, cfg: TrainConfig, precision: str,
                     device: torch.device) -> dict[str, float]:
    """What one evaluation reads of the model's circuit: the lens metrics (``lens_sample``) and the
    interchange curves (``circuit_sample``); each off at 0."""
    out: dict[str, float] = {}
    if cfg.lens_sample > 0:
        out.update(lens_metrics(model, dataset, cfg.lens_sample, precision=precision, device=device))
    if cfg.circuit_sample > 0:
        out.update(circuit_metrics(model, dataset, cfg.circuit_sample, precision=precision, device=device))
    return out


def param_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().float().pow(2).sum()) for p in model.parameters()))


# --------------------------------------------------------------------------- trainer

class TrainCallback(Protocol):
    """Observer of a run. Every method is optional."""

    def on_start(self, trainer: "Trainer") -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float], trainer: "Trainer") -> str | None: ...
    def on_checkpoint(self, step: int, path: Path, trainer: "Trainer") -> None: ...
    def on_end(self, result: "TrainResult", trainer: "Trainer") -> None: ...


@dataclass
class TrainResult:
    steps_run: int
    stop_reason: str            # max_steps | diverged | <reason returned by a callback>
    history: list[dict[str, float]]
    checkpoints: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


def _call(callbacks: list, method: str, *args: Any) -> list:
    return [getattr(cb, method)(*args) for cb in callbacks if hasattr(cb, method)]


def write_state(state: dict, path: str | os.PathLike) -> None:
    """A trainer's resumable state (solo or packed) to ``path``, whole or not at all (a temp file
    renamed into place: a restart never reads a half-written state)."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_state(path: str | os.PathLike) -> dict:
    """What :func:`write_state` wrote, loaded on the CPU with ``weights_only``: the batch-order
    generator is a CPU generator whose state must stay a CPU tensor; ``load_state_dict`` copies
    weights, and the optimizer its moments, to the model's device."""
    return torch.load(path, map_location="cpu", weights_only=True)


class Trainer:
    """One trial: dataset, model, optimizer and schedules built from a :class:`TrialConfig`.

    ``work_dir`` receives checkpoints (``checkpoints/step_0001000.pt``).
    """

    def __init__(self, cfg: TrialConfig, dataset: Dataset | None = None, work_dir: str | os.PathLike | None = None,
                 device: torch.device | str | None = None):
        self.cfg = cfg
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = torch.device(device) if device is not None else choose_device(tc.device)
        self.precision = resolve_precision(tc.precision, self.device)
        self.dataset = dataset if dataset is not None else load_dataset(cfg.data)
        self.work_dir = Path(work_dir) if work_dir is not None else None

        torch.manual_seed(cfg.seed)
        self.model = LoopedTransformer(cfg.model, self.dataset.vocab_size).to(self.device)
        # AdamW on matrices and embeddings; no weight decay on biases and norms (GPT-2 practice).
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr_at(0, tc), betas=tc.betas, **adamw_kernel(self.device))

        self.train_data = self.dataset.encode(self.dataset.train_rows()).to(self.device)
        # The papers' probes first, in their usual order; datasets with other probes (transfer) keep theirs.
        names = [p for p in PROBES if p in self.dataset.probe_rows]
        names += [p for p in self.dataset.probe_rows if p not in names]
        self.probes = {name: self.dataset.encode(self.dataset.probe_rows[name]).to(self.device) for name in names}
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(cfg.seed)
        self.perm: torch.Tensor = torch.empty(0, dtype=torch.long)
        self.cursor = 0

        self.step = 0
        self.history: list[dict[str, float]] = []
        self.checkpoints: dict[int, str] = {}
        self.eval_schedule = eval_steps(tc.max_steps, tc.eval_per_decade, tc.eval_max_interval,
                                        extra=checkpoint_steps(tc))
        self.checkpoint_schedule = set(checkpoint_steps(tc))
        self.seconds = 0.0  # training wall time accumulated across resumes

    # ------------------------------------------------------------------ batches
    def _next_indices(self) -> torch.Tensor:
        # The rows in play: all of them, except the negative control's OOD queries before their step
        # (they sit last; the epoch in progress ends when they come in).
        n, bs = self.dataset.rows_in_play(self.step), self.cfg.train.batch_size
        bs = min(bs, n)
        if self.cursor + bs > len(self.perm) or len(self.perm) != n:
            self.perm = torch.randperm(n, generator=self.generator)
            self.cursor = 0
        idx = self.perm[self.cursor:self.cursor + bs]
        self.cursor += bs
        return idx.to(self.device, non_blocking=True)

    def train_step(self) -> torch.Tensor:
        """One optimizer step at ``self.step``; returns the batch loss (0-dim float32, not synced)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg.train)
        batch = self.train_data.index(self._next_indices())
        with autocast(self.precision, self.device):
            logits = answer_logits(self.model, batch)                    # [B, V]
        loss = F.cross_entropy(logits.float(), batch.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        metrics = evaluate(self.model, self.probes, self.precision, self.device)
        metrics["param_norm"] = param_norm(self.model)
        metrics["lr"] = lr_at(self.step, self.cfg.train)
        metrics.update(circuit_readings(self.model, self.dataset, self.cfg.train, self.precision, self.device))
        return metrics

    def save_checkpoint(self) -> Path:
        assert self.work_dir is not None
        path = self.work_dir / "checkpoints" / f"step_{self.step:07d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.model_checkpoint(), path)
        self.checkpoints[self.step] = str(path)
        return path

    def model_checkpoint(self) -> dict[str, Any]:
        """Weights plus what is needed to rebuild the model; loadable with ``weights_only=True``."""
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "model_config": to_plain(self.cfg.model), "vocab_size": self.dataset.vocab_size,
                "n_ctx": 3, "step": self.step, "dataset": self.dataset.name,
                "trial_config": self.cfg.to_dict()}

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue this run exactly (CPU): weights, optimizer, data order, history."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "generator": self.generator.get_state(), "perm": self.perm,
                "cursor": self.cursor, "history": self.history, "checkpoints": self.checkpoints,
                "seconds": self.seconds, "trial_config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.cursor = int(state["step"]), int(state["cursor"])
        self.generator.set_state(state["generator"])
        self.perm = state["perm"]
        self.history = [dict(h) for h in state["history"]]
        self.checkpoints = {int(k): v for k, v in state["checkpoints"].items()}
        self.seconds = float(state.get("seconds", 0.0))

    def save_state(self, path: str | os.PathLike) -> None:
        write_state(self.state_dict(), path)

    def load_state(self, path: str | os.PathLike) -> None:
        self.load_state_dict(read_state(path))

    # ------------------------------------------------------------------ loop
    def run(self, callbacks: list | tuple = ()) -> TrainResult:
        """Train to ``max_steps`` (or until diverged / a callback stops it); resumes from ``self.step``."""
        callbacks = list(callbacks)
        max_steps = self.cfg.train.max_steps
        evals = [s for s in self.eval_schedule if s >= self.step]
        if self.history and evals and evals[0] == self.history[-1]["step"]:
            evals = evals[1:]  # resumed right after an evaluation: do not log that step twice
        self.model.train()
        _call(callbacks, "on_start", self)
        stop_reason = "max_steps"
        t0 = time.perf_counter()
        seconds0 = self.seconds
        last_loss = None
        for target in evals:
            while self.step < target:
                last_loss = self.train_step()
            metrics = self.evaluate()
            if last_loss is not None:
                metrics["train_loss"] = float(last_loss)
            self.seconds = seconds0 + time.perf_counter() - t0
            metrics["time/seconds"] = self.seconds
            self.history.append({"step": self.step, **metrics})
            diverged = not (math.isfinite(metrics.get("train_loss", 0.0)) and math.isfinite(metrics["param_norm"]))
            if self.work_dir is not None and (self.step in self.checkpoint_schedule or diverged
                                              or self.step == max_steps):
                path = self.save_checkpoint()
                _call(callbacks, "on_checkpoint", self.step, path, self)
            reasons = [r for r in _call(callbacks, "on_eval", self.step, metrics, self) if r]
            if diverged:
                stop_reason = "diverged"
                break
            if reasons:
                stop_reason = reasons[0]
                break
        if stop_reason != "max_steps" and self.work_dir is not None and self.step not in self.checkpoints:
            path = self.save_checkpoint()
            _call(callbacks, "on_checkpoint", self.step, path, self)
        result = TrainResult(self.step, stop_reason, self.history, dict(self.checkpoints), self.seconds)
        _call(callbacks, "on_end", result, self)
        return result
