"""``grokray`` command line: thin subcommands over the library.

User mistakes (bad config, unknown run, malformed spec) end as one line on stderr,
``grokray: error: ...``, exit code 2, and no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from grokray.config import ConfigError

class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit 2."""


def _fmt_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


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
        print(f"step {step:>7}/{self.max_steps} {100 * step / self.max_steps:5.1f}%  {_fmt_duration(elapsed):>6}"
              f"  loss {m.get('train_loss', float('nan')):.3f}  train {g('acc/train')}  ID {g('acc/test_inferred_id')}"
              f"  OOD {g('acc/test_inferred_ood')}  bridge(OOD) {g('lens/ood/bridge_found')}"
              f"  eta {_fmt_duration(eta)}", file=self.stream, flush=True)
        return None


# --------------------------------------------------------------------------- data

def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("config", nargs=None if required else "?", metavar="CONFIG.yaml",
                   help="trial config (data / model / train sections); defaults if omitted")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.phi=12.6 (repeatable)")


def _add_data(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the dataset summary as JSON")


def _run_data(args: argparse.Namespace) -> int:
    from grokray.config import load_trial_config
    from grokray.data import load_dataset

    cfg = load_trial_config(args.config, args.overrides)
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
    return 0


# --------------------------------------------------------------------------- train

def _add_train(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db)")
    p.add_argument("--experiment", default="grokray", help="MLflow experiment name (default: grokray)")
    p.add_argument("--run-name", default=None, help="MLflow run name (default: built from the config)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--out", default=None, help="keep checkpoints in this directory (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _run_train(args: argparse.Namespace) -> int:
    from grokray.config import load_trial_config
    from grokray.data import load_dataset

    cfg = load_trial_config(args.config, args.overrides)
    dataset = load_dataset(cfg.data)  # fails fast on an impossible phi before anything is logged
    from grokray.train import Trainer

    callbacks: list = []
    client = run_id = None
    with tempfile.TemporaryDirectory(prefix="grokray-train-") as tmp:
        work = Path(args.out) if args.out else Path(tmp)
        trainer = Trainer(cfg, dataset=dataset, work_dir=work)
        name = args.run_name
        if not args.no_track:
            from grokray import tracking
            client = tracking.get_client(args.tracking_uri)
            exp_id = tracking.get_or_create_experiment(client, args.experiment)
            name = name or tracking.trial_run_name(cfg)
            run_id = tracking.start_trial_run(client, exp_id, name)
            callbacks.append(tracking.RunLogger(client, run_id))
        if not args.quiet:
            callbacks.append(Progress(cfg.train.max_steps))
            print(f"grokray train: {dataset.name}, {len(trainer.train_data):,} training queries, "
                  f"{trainer.model.num_params():,} parameters, {trainer.device}/{trainer.precision}"
                  + (f", MLflow run {run_id} ({name})" if run_id else ""), flush=True)
        status = "FAILED"
        try:
            result = trainer.run(callbacks)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if client is not None:
                client.set_terminated(run_id, status=status)
    last = result.history[-1]
    print(f"done: {result.stop_reason} after {result.steps_run} steps in {_fmt_duration(result.seconds)}; "
          f"train {last.get('acc/train', float('nan')):.3f}  ID {last.get('acc/test_inferred_id', float('nan')):.3f}  "
          f"OOD {last.get('acc/test_inferred_ood', float('nan')):.3f}")
    if run_id:
        print(f"MLflow run {run_id} in experiment '{args.experiment}' at {client.tracking_uri}")
    return 0


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    from grokray import __version__

    parser = argparse.ArgumentParser(prog="grokray", description="Grokking sweeps on Ray: train, classify, map.")
    parser.add_argument("--version", action="version", version=f"grokray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, add_args, _run) in _registry().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=_run)
    return parser


def _registry() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                                   Callable[[argparse.Namespace], int]]]:
    """Subcommand name -> (help, add_arguments, run); heavy imports happen inside ``run``."""
    return {
        "train": ("train one trial and log it to MLflow", _add_train, _run_train),
        "data": ("generate (or load) a trial's dataset and print its split sizes", _add_data, _run_data),
    }


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ConfigError, UserError) as e:
        print(f"grokray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grokray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
