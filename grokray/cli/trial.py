"""``grokray data`` and ``grokray train``: one trial's dataset, one trial trained (and logged).

:class:`Progress` prints the trainer's progress lines (durations as :func:`grokray.fmt.duration`
writes them).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from grokray.cli.common import UserError, add_config_args, add_tracking, check_dir, check_store, trial_config
from grokray.config import ConfigError
from grokray.contract import DEFAULT_EXPERIMENT
from grokray.fmt import duration


class Progress:
    """Trainer callback printing one line per evaluation, at most every ``every`` seconds."""

    def __init__(self, max_steps: int, every: float = 3.0, stream=None):
        self.max_steps, self.every = max_steps, every
        self.stream = stream or sys.stdout
        self.last = -1e9
        self.t0 = time.perf_counter()

    def on_eval(self, step: int, m: dict, trainer) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and step < self.max_steps:
            return None
        self.last = now
        elapsed = m.get("time/seconds", now - self.t0)
        eta = elapsed / step * (self.max_steps - step) if step else 0.0

        def g(k: str) -> str:
            v = m.get(k)
            return "  -  " if v is None else f"{v:.3f}"
        print(f"step {step:>7}/{self.max_steps} {100 * step / self.max_steps:5.1f}%  {duration(elapsed):>6}"
              f"  loss {m.get('train_loss', float('nan')):.3f}  train {g('acc/train')}  ID {g('acc/test_inferred_id')}"
              f"  OOD {g('acc/test_inferred_ood')}  bridge(OOD) {g('lens/ood/bridge_found')}"
              f"  eta {duration(eta)}", file=self.stream, flush=True)
        return None


# --------------------------------------------------------------------------- data

def add_data(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the dataset summary as JSON")


def run_data(args: argparse.Namespace) -> int:
    from grokray.data import load_dataset

    cfg = trial_config(args)
    ds = load_dataset(cfg.data)
    summary = ds.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"dataset {summary['name']}  (augmentation: {summary['augmentation']}, vocab {summary['vocab_size']})")
    print(f"phi {summary['phi_effective']:.2f} (pool allows up to {summary['phi_max']:.2f})")
    for k, v in summary["sizes"].items():
        probe = summary["probe_sizes"].get(k)
        print(f"  {k:<20} {v:>9,}" + (f"   probe {probe:,}" if probe is not None else ""))
    print("shortcut baselines (accuracy of answering without composing; grokray.data.shortcuts):")
    for split, rules in summary["shortcuts"].items():
        print(f"  {split:<4} " + "  ".join(f"{rule} {acc:.3f}" for rule, acc in rules.items()))
    return 0


# --------------------------------------------------------------------------- train

def add_train(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    add_tracking(p)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                   help=f"MLflow experiment name (default: {DEFAULT_EXPERIMENT})")
    p.add_argument("--run-name", default=None, help="MLflow run name (default: built from the config)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--out", default=None, help="keep checkpoints in this directory (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run_train(args: argparse.Namespace) -> int:
    from grokray.data import load_dataset

    cfg = trial_config(args)
    check_dir(args.out, "--out")
    if not args.experiment.strip():
        raise UserError("--experiment: an MLflow experiment name cannot be empty")
    if not args.no_track:
        check_store(args.tracking_uri)
    if cfg.train.device.startswith("cuda"):  # the trial runs here: its device must exist here
        import torch

        index = int(cfg.train.device.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device on this machine (use auto or cpu)", key="train.device",
                              value=cfg.train.device)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"this machine has {torch.cuda.device_count()} CUDA device(s)", key="train.device",
                              value=cfg.train.device)
    dataset = load_dataset(cfg.data)  # fails fast on an impossible phi before anything is logged
    from grokray.train import Trainer

    from grokray import tracking
    from grokray.sweep.layout import Running

    callbacks: list = []
    client = run_id = None
    with tempfile.TemporaryDirectory(prefix="grokray-train-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        trainer = Trainer(cfg, dataset=dataset, work_dir=work)
        name = args.run_name
        if not args.no_track:
            client = tracking.get_client(args.tracking_uri)
            exp_id = tracking.get_or_create_experiment(client, args.experiment)
            name = name or tracking.trial_run_name(cfg)
            run_id = tracking.start_run(client, exp_id, name)
            callbacks.append(tracking.RunLogger(client, run_id))
        progress = [] if args.quiet else [Progress(cfg.train.max_steps)]
        if progress:
            print(f"grokray train: {dataset.name}, {len(trainer.train_data):,} training queries, "
                  f"{trainer.model.num_params():,} parameters, {trainer.device}/{trainer.precision}"
                  + (f", MLflow run {run_id} ({name})" if run_id else ""), flush=True)
        # the same lifecycle as a sweep trial (a pack of one): callbacks, then run, then the run's end state
        with tracking.run_lifecycle(client, [run_id] if run_id else []):
            result, = Running.solo(trainer, callbacks).run(*progress)
    last = result.history[-1]
    print(f"done: {result.stop_reason} after {result.steps_run} steps in {duration(result.seconds)}; "
          f"train {last.get('acc/train', float('nan')):.3f}  ID {last.get('acc/test_inferred_id', float('nan')):.3f}  "
          f"OOD {last.get('acc/test_inferred_ood', float('nan')):.3f}")
    if run_id:
        print(f"MLflow run {run_id} in experiment '{args.experiment}' at {client.tracking_uri}")
    return 0
