"""``grokray`` command line: thin subcommands over the library.

User mistakes (bad config, unknown run, malformed spec) end as one line on stderr,
``grokray: error: ...``, exit code 2, and no traceback.

What lives where: :mod:`grokray.cli.common` (the one-line error, the checks before anything
runs, a trial command's config), :mod:`grokray.cli.trial` (``data``, ``train``),
:mod:`grokray.cli.analysis` (``classify``, ``paths``, ``patching``), :mod:`grokray.cli.maps`
(``phase-map``, ``transfer-map``, a sweep kind's report), :mod:`grokray.cli.sweep`
(``sweep ...``). :func:`main` is the console entry point (``grokray = grokray.cli:main``).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from grokray.cli.analysis import add_classify, add_patching, add_paths, run_classify, run_patching, run_paths
from grokray.cli.common import Parser, UserError, check_sweep_name
from grokray.cli.maps import add_phase_map, add_transfer_map, run_phase_map, run_transfer_map
from grokray.cli.sweep import add_sweep
from grokray.cli.trial import Progress, add_data, add_train, run_data, run_train
from grokray.config import ConfigError


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    from grokray.version import __version__

    parser = Parser(prog="grokray", description="Grokking sweeps on Ray: train, classify, map.")
    parser.add_argument("--version", action="version", version=f"grokray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, add_args, _run) in _registry().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if _run is not None:
            p.set_defaults(_run=_run)
        add_args(p)
    return parser


def _registry() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                                   Callable[[argparse.Namespace], int]]]:
    """Subcommand name -> (help, add_arguments, run); heavy imports happen inside ``run``."""
    return {
        "train": ("train one trial and log it to MLflow", add_train, run_train),
        "data": ("generate (or load) a trial's dataset and print its split sizes", add_data, run_data),
        "classify": ("label runs true / fake / no grokking from what MLflow holds", add_classify, run_classify),
        "patching": ("causal patching of one checkpoint: flip-rate matrices, JSON and PNG", add_patching,
                     run_patching),
        "paths": ("compare the inference paths of two runs or checkpoints", add_paths, run_paths),
        "sweep": ("sweeps on Ray Tune: validate, run, resume, status, submit, logs", add_sweep, None),
        "phase-map": ("labels over the swept parameters: table, PNG, CSV", add_phase_map, run_phase_map),
        "transfer-map": ("a finetune sweep per source label: steps to memorize, accuracy per composition, curves",
                         add_transfer_map, run_transfer_map),
    }


def _check_args(args: argparse.Namespace) -> None:
    """What every command's options must be, by their text alone, before the command starts:
    ``--tracking-uri`` a URI MLflow can use (``--tracking-uri foo://x`` fails here on every
    command, also where the store would be opened late or not at all; named "tracking URI" as
    every store error is), a sweep name a name."""
    from grokray.config import check_tracking_uri

    if getattr(args, "tracking_uri", None) is not None:
        check_tracking_uri(args.tracking_uri, "tracking URI")
    if getattr(args, "command", None) == "sweep":
        key = "NAME" if args.sweep_command in ("resume", "status", "logs") else "--name"
        check_sweep_name(getattr(args, "name", None), key)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_args(args)
        return int(args._run(args) or 0)
    except (ConfigError, UserError) as e:
        print(f"grokray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("grokray: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "UserError", "Progress"]
