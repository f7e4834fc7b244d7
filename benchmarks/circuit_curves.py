"""Cost of the circuit curves (the interchange test at every evaluation) against a default trial's training.

Issue 19 asks for the interchange test on a small fixed query set at every evaluation step
(``circuit/interchange/<split>``, :mod:`grokray.circuits.formation`) at <= 10% of a default
trial's training. The test runs on the correctly answered queries only, so its cost grows as
the model learns: it is measured on a model trained ``--train-steps`` steps with He et al.'s
both-hop augmentation (OOD and ID answered: the most expensive case), one thread, bf16 as trained.

Interleaved, per round: a block of ``--block`` train steps (seconds per step) and one
``circuit_metrics`` call (seconds per evaluation), plus one evaluation without the circuit curves
(probes, lens), so all three see the same load. The share is computed over the default trial's
evaluation schedule (``train.max_steps`` 12,000, 24 evaluations per decade):

    share = n_evals x circuit_s / (max_steps x step_s + n_evals x eval_s)

    python -m benchmarks.circuit_curves           # ~3 min quiet
    python -m benchmarks.circuit_curves --quick   # smoke
"""
from __future__ import annotations

import time

import torch

from benchmarks import common as C


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--train-steps", type=int, default=3000, help="steps trained before measuring (default 3000)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block", type=int, default=40, help="train steps per timed block")
    args = p.parse_args()
    if args.quick:
        args.train_steps, args.rounds, args.block = 30, 2, 5
    started, before = time.perf_counter(), C.snapshot()
    from grokray.circuits.formation import circuit_metrics
    from grokray.config import TrialConfig
    from grokray.train import Trainer, eval_steps

    torch.set_num_threads(1)
    cfg = TrialConfig()
    cfg.data.augmentation = "both_full"
    cfg.train.max_steps = 12000
    schedule = eval_steps(cfg.train.max_steps, cfg.train.eval_per_decade, cfg.train.eval_max_interval)
    trainer = Trainer(cfg)
    C.say(f"training {args.train_steps} steps (both_full, default trial) before measuring")
    for _ in range(args.train_steps):
        trainer.train_step()
    sample = cfg.train.circuit_sample
    reading = circuit_metrics(trainer.model, trainer.dataset, sample, trainer.precision, trainer.device)
    base = trainer

    def step_block() -> float:
        t0 = time.perf_counter()
        for _ in range(args.block):
            base.train_step()
        return (time.perf_counter() - t0) / args.block

    def circuit() -> float:
        t0 = time.perf_counter()
        circuit_metrics(base.model, base.dataset, sample, base.precision, base.device)
        return time.perf_counter() - t0

    def evaluation_without() -> float:
        base.cfg.train.circuit_sample = 0
        t0 = time.perf_counter()
        base.evaluate()
        seconds = time.perf_counter() - t0
        base.cfg.train.circuit_sample = sample
        return seconds

    raw = C.interleave({"step_s": step_block, "circuit_s": circuit, "eval_s": evaluation_without}, args.rounds,
                       log=C.say)
    step_s, circuit_s, eval_s = (C.median(raw[k]) for k in ("step_s", "circuit_s", "eval_s"))
    n_evals = len(schedule)
    training = cfg.train.max_steps * step_s + n_evals * eval_s
    share = n_evals * circuit_s / training
    C.say(f"step {step_s * 1e3:.1f} ms, evaluation {eval_s * 1e3:.0f} ms, circuit curves {circuit_s * 1e3:.0f} ms; "
          f"{n_evals} evaluations over {cfg.train.max_steps} steps: circuit curves = {share:.1%} of training")
    C.write_result("circuit_curves", args, {
        "trial": "default trial (sweeps/trials/default.yaml), data.augmentation both_full, 1 thread, "
                 f"{trainer.precision}",
        "trained_steps_before_measuring": args.train_steps, "circuit_sample": sample,
        "reading_at_measurement": reading,
        "seconds": {k: C.summarize(v) for k, v in raw.items()},
        "n_evaluations_default_schedule": n_evals, "max_steps": cfg.train.max_steps,
        "circuit_share_of_training": share, "target_share": 0.10,
        "formula": "n_evals x circuit_s / (max_steps x step_s + n_evals x eval_s)"}, started, before)


if __name__ == "__main__":
    main()
