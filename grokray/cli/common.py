"""What every ``grokray`` command shares: the one-line user error, argparse as grokray wants it,
the checks done before anything runs (files to write, folders to fill, the MLflow store), the
trial config a trial command works on, and how written files are named.

Heavy imports (MLflow, torch, pandas) happen inside the functions that need them: ``grokray
--help`` stays fast.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn

from grokray.config import ConfigError


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors as the one line every other user mistake gets: no usage block
    (``--help`` has it), exit code 2 as argparse's own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"grokray: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (``--queries 0`` or ``-5`` is refused by name)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer (got {text!r})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum} (got {value})")
        return value
    parse.__name__ = "count"
    return parse



# --------------------------------------------------------------------------- checks before anything runs

def check_store(uri: str | None, key: str = "tracking URI") -> str:
    """The tracking URI a command will open, checked before anything is read or written
    (:func:`grokray.tracking.store.check_store`). Returns the URI."""
    from grokray.tracking.store import check_store as check

    return check(uri, key)


def existing_client(uri: str | None):
    """A client for an existing store: a missing local sqlite file is a user error, not a new store."""
    from grokray import tracking

    check_store(uri)
    return tracking.existing_client(uri)     # unresolved: its message says where the URI came from


def check_output(path: str | None, option: str) -> None:
    """A file a command will write: not a directory, in a directory that exists and is writable;
    checked before the work, so a typo in ``--png`` costs nothing and leaves nothing."""
    if path is None:
        return
    p = Path(path)
    if not str(path) or p.is_dir():
        raise UserError(f"{option}: {path!r} is a directory (or empty), not a file name")
    parent = p.parent
    if not parent.is_dir():
        raise UserError(f"{option}: {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{option}: {path}: the directory {parent} is not writable")


def check_dir(path: str | None, option: str) -> None:
    """A directory a command will create or fill: no file in its way, its nearest existing
    ancestor a writable directory."""
    if path is None or "://" in path:
        return
    p = Path(os.path.expanduser(path)).absolute()
    if p.exists() and not p.is_dir():
        raise UserError(f"{option}: {path} is a file, not a directory")
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        raise UserError(f"{option}: {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{option}: {path}: {existing} is not writable")


def check_sweep_name(name: str | None, key: str) -> None:
    from grokray.sweep.params import check_name

    if name is not None:
        check_name(name, key)


def add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db)")


# --------------------------------------------------------------------------- a trial's config

def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("config", nargs=None if required else "?", metavar="CONFIG.yaml",
                   help="trial config (data / model / train sections), or a sweep spec with --cell; defaults if "
                        "omitted")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.phi=12.6 (repeatable)")
    p.add_argument("--cell", type=int, default=None, metavar="K",
                   help="CONFIG.yaml is a sweep spec (method grid): use its K-th trial (0-based, in the order "
                        "`grokray sweep validate --cells` lists them)")


def is_sweep_spec(path: str | None) -> bool:
    """Does ``path`` hold a sweep spec (a mapping with ``parameters`` or ``name``) rather than a trial config?"""
    if path is None:
        return False
    from grokray.config import read_yaml

    raw = read_yaml(path)
    return isinstance(raw, dict) and ("parameters" in raw or "name" in raw)


def trial_config(args: argparse.Namespace):
    """The trial config a trial command works on: CONFIG.yaml with --set, or one --cell of a sweep spec."""
    from grokray.config import load_trial_config, parse_override

    if args.cell is None:
        if is_sweep_spec(args.config):
            raise ConfigError("is a sweep spec, not a trial config: add --cell K for one of its trials "
                              "(`grokray sweep validate --cells SPEC` lists them)", key="CONFIG.yaml",
                              value=args.config)
        return load_trial_config(args.config, args.overrides)
    spec = load_sweep_spec(args.config) if args.config else None
    if spec is None or spec.method != "grid":
        raise ConfigError("needs a grid sweep spec as CONFIG.yaml", key="--cell", value=args.cell)
    cells = spec.grid() * spec.num_samples
    if not 0 <= args.cell < len(cells):
        raise ConfigError(f"must be in 0..{len(cells) - 1} ({len(cells)} trials in {args.config})", key="--cell",
                          value=args.cell)
    values = dict(cells[args.cell])
    for text in args.overrides:
        key, value = parse_override(text)
        values[key] = value
    print(f"{args.config}, cell {args.cell}: " + ", ".join(f"{k}={v}" for k, v in cells[args.cell].items()),
          file=sys.stderr)
    return spec.trial_config(values)


def load_sweep_spec(path: str):
    """A sweep spec, parsed and checked (:func:`grokray.sweep.spec.load_spec`)."""
    from grokray.sweep.spec import load_spec

    return load_spec(path)


# --------------------------------------------------------------------------- what was written

def say_written(files: list[tuple[str, str | None]], hint: str) -> None:
    """One line naming the files written where asked (``what: path``), else how to ask for them."""
    written = [f"{what}: {path}" for what, path in files if path]
    print("; ".join(written) if written else hint)


def short_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
