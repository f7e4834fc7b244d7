"""``grokray`` command line: thin subcommands over the library.

User mistakes (bad config, unknown run, malformed spec) end as one line on stderr,
``grokray: error: ...``, exit code 2, and no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, NoReturn
from urllib.parse import urlsplit

from grokray.errors import first_line
from grokray.criteria import DEFAULT_CRITERION, REGISTRY
from grokray.config import ConfigError


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the one line every other user mistake gets: no usage block
    (``--help`` has it), exit code 2 as argparse's own."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"grokray: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _count(minimum: int) -> Callable[[str], int]:
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

#: Default ports of the database servers MLflow can keep its store in.
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _check_store(uri: str | None, key: str = "tracking URI") -> str:
    """The tracking URI a command will open (``uri``, else ``$MLFLOW_TRACKING_URI``, else
    ``./mlflow.db``), checked before anything is read or written: its form, then what a local
    sqlite path is (a directory or a file that is not SQLite would leave a lock file beside it
    and a paragraph of MLflow logging), then whether an http(s) server answers at all (MLflow
    would retry for minutes and end in a traceback). Returns the URI.
    """
    from grokray import tracking
    from grokray.config import check_tracking_uri

    if uri is None and os.environ.get("MLFLOW_TRACKING_URI") is not None:
        key = "tracking URI ($MLFLOW_TRACKING_URI)"
    uri = tracking.tracking_uri(uri)
    check_tracking_uri(uri, key)
    db = tracking.sqlite_path(uri)
    if db is not None:
        if db.is_dir():
            raise ConfigError("is a directory, not an MLflow store (a sqlite file)", key=key, value=uri)
        above = next((a for a in db.absolute().parents if a.exists()), None)
        if above is not None and not above.is_dir():
            raise ConfigError(f"cannot create the store's directory: {above} is a file, not a directory", key=key,
                              value=uri)
        if db.is_file() and db.stat().st_size:
            try:
                with open(db, "rb") as fh:
                    header = fh.read(16)
            except OSError as e:
                raise ConfigError(f"cannot read the MLflow store: {e.strerror}", key=key, value=uri) from None
            if header != b"SQLite format 3\0":
                raise ConfigError("is not an SQLite database, so not an MLflow store", key=key, value=uri)
    scheme = urlsplit(uri).scheme.split("+", 1)[0]
    if scheme in _DB_PORTS:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:  # the driver SQLAlchemy (so MLflow) will load for this URI
            make_url(uri).get_dialect().import_dbapi()
        except ImportError as e:
            raise ConfigError(f"the {scheme} driver is not installed ({e}); pip install it, or use sqlite:///PATH",
                              key=key, value=uri) from None
        except ArgumentError as e:
            raise ConfigError(f"not a database URL SQLAlchemy reads: {e}", key=key, value=uri) from None
    _check_reachable(uri, key)
    return uri


def _check_reachable(uri: str, key: str) -> None:
    """An http(s) tracking server or a database server must accept a connection (a TCP connect,
    no request: authentication is not tested). MLflow would retry for minutes and end in a
    traceback. Skipped where an http proxy carries the traffic, and for socket-only databases."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("http", "https", *_DB_PORTS) or not parts.hostname:
        return
    if scheme in ("http", "https") and urllib.request.getproxies().get(scheme) \
            and not urllib.request.proxy_bypass(parts.hostname):
        return
    port = parts.port or {"http": 80, "https": 443, **_DB_PORTS}[scheme]
    try:
        socket.create_connection((parts.hostname, port), timeout=10).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        what = "MLflow server" if scheme.startswith("http") else f"{scheme} server"
        raise ConfigError(f"cannot reach the {what} at {parts.hostname}:{port}: {why} (is it running? see "
                          "mlflow/README.md)", key=key, value=uri) from None


def _check_output(path: str | None, option: str) -> None:
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


def _check_dir(path: str | None, option: str) -> None:
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


def _check_sweep_name(name: str | None, key: str) -> None:
    from grokray.sweep.params import check_name

    if name is not None:
        check_name(name, key)


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
                   help="trial config (data / model / train sections), or a sweep spec with --cell; defaults if "
                        "omitted")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set data.phi=12.6 (repeatable)")
    p.add_argument("--cell", type=int, default=None, metavar="K",
                   help="CONFIG.yaml is a sweep spec (method grid): use its K-th trial (0-based, in the order "
                        "`grokray sweep validate --cells` lists them)")


def _is_sweep_spec(path: str | None) -> bool:
    """Does ``path`` hold a sweep spec (a mapping with ``parameters`` or ``name``) rather than a trial config?"""
    if path is None:
        return False
    from grokray.config import read_yaml

    raw = read_yaml(path)
    return isinstance(raw, dict) and ("parameters" in raw or "name" in raw)


def _trial_config(args: argparse.Namespace):
    """The trial config a trial command works on: CONFIG.yaml with --set, or one --cell of a sweep spec."""
    from grokray.config import load_trial_config, parse_override

    if args.cell is None:
        if _is_sweep_spec(args.config):
            raise ConfigError("is a sweep spec, not a trial config: add --cell K for one of its trials "
                              "(`grokray sweep validate --cells SPEC` lists them)", key="CONFIG.yaml",
                              value=args.config)
        return load_trial_config(args.config, args.overrides)
    spec = _load_spec(args.config) if args.config else None
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


def _add_data(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the dataset summary as JSON")


def _run_data(args: argparse.Namespace) -> int:
    from grokray.data import load_dataset

    cfg = _trial_config(args)
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
    from grokray.data import load_dataset

    cfg = _trial_config(args)
    _check_dir(args.out, "--out")
    if not args.experiment.strip():
        raise UserError("--experiment: an MLflow experiment name cannot be empty")
    if not args.no_track:
        _check_store(args.tracking_uri)
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
            run_id = tracking.start_run(client, exp_id, name)
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


# --------------------------------------------------------------------------- classify / paths

def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db)")


def _existing_client(uri: str | None):
    """A client for an existing store: a missing local sqlite file is a user error, not a new store."""
    from grokray import tracking

    _check_store(uri)
    return tracking.existing_client(uri)     # unresolved: its message says where the URI came from


def _add_classify(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run id(s) to label")
    p.add_argument("--experiment", default=None, help="label every finished trial run of this experiment")
    p.add_argument("--split", choices=["ood", "id"], default="ood", help="target test split (default: ood)")
    p.add_argument("--criterion", choices=list(REGISTRY), default=DEFAULT_CRITERION,
                   help="which criterion decides true vs fake for grokray.label (default: %(default)s): "
                        + "; ".join(f"{c.name} = {c.summary}" for c in REGISTRY.values())
                        + ". Every criterion is tagged (grokray.label_<criterion>) whenever the evidence is computed")
    p.add_argument("--evidence", choices=["auto", "always", "never"], default="auto",
                   help="when to load the checkpoint for circuit evidence (interchange, lens, patching): auto = "
                        "only for runs whose curves generalized, the only runs it can move between true and fake "
                        "(default); always; never = curves and shortcut baselines only")
    p.add_argument("--force", action="store_true", help="relabel even if this classifier version already did")
    p.add_argument("--queries", type=_count(1), default=200, help="queries for causal patching (default: 200)")
    p.add_argument("--json", action="store_true", help="print verdicts as JSON lines")
    _add_tracking(p)


def _run_classify(args: argparse.Namespace) -> int:
    from grokray.classify import RunNotClassifiable, classify_run, trial_runs

    if bool(args.run_ids) == (args.experiment is not None):
        raise UserError("give RUN_ID(s) or --experiment NAME (one of the two)")
    if args.experiment is not None and not args.experiment.strip():
        raise UserError("--experiment: an MLflow experiment name cannot be empty")
    client = _existing_client(args.tracking_uri)
    if args.experiment:
        if client.get_experiment_by_name(args.experiment) is None:
            raise UserError(f"--experiment: no experiment named {args.experiment!r} at {client.tracking_uri}")
        run_ids = [r.info.run_id for r in trial_runs(client, args.experiment)]
        if not args.json:
            print(f"classifying {len(run_ids)} finished trial run(s) of '{args.experiment}'", flush=True)
    else:
        run_ids = args.run_ids
    for run_id in run_ids:
        try:
            out = classify_run(run_id, client=client, split=args.split, criterion=args.criterion, force=args.force,
                               n_queries=args.queries, evidence=args.evidence)
        except RunNotClassifiable as e:
            raise UserError(str(e)) from None
        if args.json:
            print(json.dumps({"run_id": run_id, "action": out.action, **out.verdict.to_dict()}), flush=True)
        else:
            print(out.line(), flush=True)
    return 0


def _add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="MLflow run id or checkpoint file (.pt)")
    p.add_argument("run_b", metavar="RUN_B", help="MLflow run id or checkpoint file (.pt)")
    p.add_argument("--step-a", type=_count(0), default=None, help="checkpoint step of RUN_A (default: last)")
    p.add_argument("--step-b", type=_count(0), default=None, help="checkpoint step of RUN_B (default: last)")
    p.add_argument("--split", default="test_inferred_id",
                   help="queries to compare on (default: test_inferred_id; or train_inferred)")
    p.add_argument("--queries", type=_count(1), default=300, help="number of queries (default: 300)")
    p.add_argument("--png", default=None, help="also draw the side-by-side heatmaps here")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _add_tracking(p)


def _resolve_checkpoint(ref: str, step: int | None, tracking_uri: str | None, tmp: str) -> str:
    from grokray import tracking

    if ref.endswith(".pt") or Path(ref).exists():
        if not Path(ref).exists():
            raise UserError(f"{ref}: checkpoint file not found")
        _check_checkpoint(ref)
        return ref
    client = _existing_client(tracking_uri)
    try:
        client.get_run(ref)
    except Exception:
        raise UserError(f"{ref}: not a checkpoint file and no MLflow run with that id at {client.tracking_uri}") \
            from None
    try:
        return tracking.download_checkpoint(client, ref, step, tmp)
    except LookupError as e:
        raise UserError(str(e)) from None


#: What every checkpoint the trainer writes holds (grokray.train / grokray.model.load_checkpoint).
_CHECKPOINT_KEYS = ("model", "model_config", "vocab_size", "trial_config")


def _check_checkpoint(path: str) -> None:
    """A local file given as a checkpoint must be one the trainer wrote: a directory, a file that
    is not a torch archive, or a torch file of something else is a one-line error here, not an
    unpickling or KeyError traceback in the middle of the analysis."""
    import pickle
    import zipfile

    if Path(path).is_dir():
        raise UserError(f"{path}: is a directory, not a checkpoint file")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a checkpoint (a grokray checkpoint is a torch .pt archive, as the trainer "
                        "writes under checkpoints/)")
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"{path}: not a grokray checkpoint ({str(e).splitlines()[0][:200]})") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path}: a torch file, but not a grokray checkpoint (no {', '.join(missing)})")


def _run_paths(args: argparse.Namespace) -> int:
    from grokray.circuits.paths import compare_checkpoints

    _check_output(args.png, "--png")
    with tempfile.TemporaryDirectory() as tmp:
        a = _resolve_checkpoint(args.run_a, args.step_a, args.tracking_uri, tmp + "/a")
        b = _resolve_checkpoint(args.run_b, args.step_b, args.tracking_uri, tmp + "/b")
        try:
            cmp = compare_checkpoints(a, b, split=args.split, n=args.queries,
                                      labels=(args.run_a[:12], args.run_b[:12]))
        except ValueError as e:
            raise UserError(str(e).splitlines()[0]) from None
        if args.png:
            cmp.plot(args.png)
    if args.json:
        print(cmp.to_json())
        return 0
    print(f"inference-path similarity {cmp.score:.3f}  (patching {cmp.patching_mean:.3f}, "
          f"lens {cmp.lens_similarity:.3f}) on {cmp.n_queries} {args.split} queries")
    for token, sim in cmp.patching_similarity.items():
        print(f"  patching, perturbed {token:<3} {sim:.3f}")
    if cmp.note:
        print(f"  note: {cmp.note}")
    _say_written([("heatmaps", args.png)], "heatmaps: --png FILE")
    return 0


def _add_patching(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="MLflow run id or checkpoint file (.pt)")
    p.add_argument("--step", type=_count(0), default=None, help="checkpoint step of RUN (default: last)")
    p.add_argument("--split", default="train_inferred",
                   help="queries to patch (default: train_inferred, as Wang et al.; or test_inferred_id / _ood)")
    p.add_argument("--queries", type=_count(1), default=300, help="number of queries (default: 300)")
    p.add_argument("--all", action="store_true", help="also patch queries the model answers wrongly")
    p.add_argument("--png", default=None, help="also draw the heatmaps here")
    p.add_argument("--out", default=None, help="also write the flip-rate matrices here, as JSON")
    _add_tracking(p)


def _run_patching(args: argparse.Namespace) -> int:
    from grokray.circuits.patching import causal_patching
    from grokray.config import trial_config_from_dict
    from grokray.data import load_dataset
    from grokray.model import load_checkpoint

    _check_output(args.png, "--png")
    _check_output(args.out, "--out")
    with tempfile.TemporaryDirectory() as tmp:
        path = _resolve_checkpoint(args.run, args.step, args.tracking_uri, tmp)
        model, ckpt = load_checkpoint(path)
    dataset = load_dataset(trial_config_from_dict(ckpt["trial_config"]).data)
    step = ckpt.get("step")
    try:
        result = causal_patching(model, dataset, split=args.split, n=args.queries, only_correct=not args.all,
                                 step=step)
    except ValueError as e:  # an unknown or atomic split
        raise UserError(f"--split: {str(e).splitlines()[0]}") from None
    if args.png:
        result.plot(args.png)
    if args.out:
        Path(args.out).write_text(result.to_json())
    print(f"causal patching at step {step} on {args.split}: {result.n_selected} queries "
          f"({'all' if args.all else 'answered correctly'}, clean accuracy {result.clean_acc:.3f})")
    print("flip rate by depth (rows) and patched position (h, r1, r2), per perturbed token:")
    for token, mat in result.matrices.items():
        print(f"  perturbed {token} ({result.n_queries[token]} queries)")
        for name, row in zip(result.depth_names, mat):
            print(f"    {name:<28} " + "  ".join(f"{v:.2f}" for v in row))
    _say_written([("heatmaps", args.png), ("matrices", args.out)],
                 "heatmaps: --png FILE; matrices as JSON: --out FILE")
    return 0


# --------------------------------------------------------------------------- phase map

def _add_phase_map(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="SWEEP", help="a sweep name (or an MLflow experiment name)")
    p.add_argument("--x", default=None, help="parameter for the columns (default: the one with most values)")
    p.add_argument("--y", default=None, help="parameter for the rows (default: the next one)")
    p.add_argument("--by", action="append", default=[], metavar="PARAM",
                   help="also split the map by this parameter, one table / panel per value (repeatable), e.g. "
                        "--by data.seed: one map per graph (by default a cell shows each graph's label when the "
                        "graphs disagree)")
    p.add_argument("--png", default=None, help="also write the phase diagram here (the sweep's parent run "
                                               "holds it as phase_map/phase_map.png)")
    p.add_argument("--csv", default=None, help="also write one row per run as CSV")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of the table")
    _add_tracking(p)


def _run_phase_map(args: argparse.Namespace) -> int:
    from grokray.phasemap import format_table, phase_map, plot_phase_map, resolve_axes

    _check_output(args.csv, "--csv")
    _check_output(args.png, "--png")
    client = _existing_client(args.tracking_uri)
    try:
        df = phase_map(args.name, client.tracking_uri)
        x, y, facets = resolve_axes(df, args.x, args.y)
        if args.by:
            x, y, facets = resolve_axes(df, x, y, facets=[*facets, *args.by])
    except (LookupError, ValueError) as e:
        raise UserError(str(e).strip("'\"")) from None
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.png:
        plot_phase_map(df, args.png, x, y, facets=facets)
    if args.json:
        print(df.to_json(orient="records", lines=True), end="")
        return 0
    n_lab = int(df["label"].notna().sum()) if len(df) else 0
    print(f"{args.name}: {len(df)} run(s), {n_lab} labelled")
    if len(df):
        print(format_table(df, x, y, facets=facets))
    _say_written([("phase diagram", args.png), ("runs", args.csv)],
                 "the picture: --png FILE (or the sweep's parent run, phase_map/)")
    return 0


# --------------------------------------------------------------------------- transfer map

def _add_transfer_map(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="SWEEP", help="a finetune sweep name")
    p.add_argument("--png", default=None, help="also write the transfer curves here")
    p.add_argument("--csv", default=None, help="also write one row per finetune run as CSV")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of the table")
    _add_tracking(p)


def _run_transfer_map(args: argparse.Namespace) -> int:
    """``grokray transfer-map``: the table (or JSON lines), the curves PNG, optionally a CSV."""
    from grokray import tracking
    from grokray.plots import plot_transfer_curves
    from grokray.transfermap import format_transfer_table, transfer_histories, transfer_map

    _check_output(args.csv, "--csv")
    _check_output(args.png, "--png")
    client = _existing_client(args.tracking_uri)
    try:
        df = transfer_map(args.name, client.tracking_uri)
    except LookupError as e:
        raise UserError(str(e).strip("'\"")) from None
    kind = client.get_run(df.attrs["parent_run_id"]).data.params.get(tracking.SweepParam.KIND, "finetune")
    if kind != "finetune":  # its map is the phase map: an empty transfer table would only mislead
        raise UserError(f"sweep {args.name!r} is a {kind} sweep, not a finetune sweep; its map is "
                        f"`grokray phase-map {args.name}`")
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.png:
        plot_transfer_curves(transfer_histories(df, client.tracking_uri), args.png, title=f"transfer: {args.name}")
    if args.json:
        print(df.to_json(orient="records", lines=True), end="")
        return 0
    print(f"{args.name}: {len(df)} finetune run(s)")
    print(format_transfer_table(df))
    _say_written([("transfer curves", args.png), ("runs", args.csv)], "the curves: --png FILE")
    return 0


# --------------------------------------------------------------------------- sweep

def _add_sweep(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    sub.required = True

    v = sub.add_parser("validate", help="check a sweep spec without running it")
    v.add_argument("spec", metavar="SPEC.yaml")
    v.add_argument("--cells", action="store_true", help="list the grid's trials, numbered for --cell K")
    v.set_defaults(_run=_run_sweep_validate)

    def driver_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--address", default=None, help="an existing Ray cluster (default: $RAY_ADDRESS or local)")
        q.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local Ray")
        q.add_argument("--no-map", action="store_true", help="do not print the phase map at the end")

    r = sub.add_parser("run", help="run a sweep with Ray Tune (local Ray unless --address / $RAY_ADDRESS)")
    r.add_argument("spec", metavar="SPEC.yaml")
    r.add_argument("--name", default=None, help="sweep name (default: the spec's name); must be new")
    r.add_argument("--tracking-uri", default=None,
                   help="MLflow URI, overriding the spec's tracking.uri (default: the spec's, else "
                        "$MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)")
    driver_args(r)
    r.set_defaults(_run=_run_sweep_run)

    re = sub.add_parser("resume", help="continue an interrupted sweep")
    re.add_argument("name", metavar="NAME")
    re.add_argument("--storage", default=None,
                    help="where the sweep's state lives (default: beside the MLflow store, see --tracking-uri)")
    re.add_argument("--tracking-uri", default=None,
                    help="the MLflow store the sweep wrote to (default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db)")
    driver_args(re)
    re.set_defaults(_run=_run_sweep_resume)

    st = sub.add_parser("status", help="trials, states and labels of a sweep")
    st.add_argument("name", metavar="NAME")
    st.add_argument("--storage", default=None,
                    help="where the sweep's state lives (default: beside the MLflow store, see --tracking-uri)")
    st.add_argument("--address", default=None, help="Ray job server of a submitted sweep (http://HEAD:8265)")
    st.add_argument("--follow", "-f", action="store_true",
                    help="after the table, follow the sweep's progress (as `sweep run` prints it) until it ends")
    _add_tracking(st)
    st.set_defaults(_run=_run_sweep_status)

    lg = sub.add_parser("logs", help="the driver's progress lines of a sweep (local, or submitted with --address)")
    lg.add_argument("name", metavar="NAME")
    lg.add_argument("--address", default=None, help="Ray job server of a submitted sweep (http://HEAD:8265); "
                                                     "default: a sweep whose state is on this machine")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the sweep ends")
    lg.add_argument("--storage", default=None,
                    help="where the sweep's state lives (default: beside the MLflow store, see --tracking-uri)")
    _add_tracking(lg)
    lg.set_defaults(_run=_run_sweep_logs)

    sb = sub.add_parser("submit", help="hand a sweep to a Ray cluster as a Ray Job (the driver runs on the head)")
    sb.add_argument("spec", metavar="SPEC.yaml")
    sb.add_argument("--address", required=True, help="Ray job server (http://HEAD:8265, e.g. via `ray dashboard`)")
    sb.add_argument("--name", default=None, help="sweep name (default: the spec's name)")
    sb.add_argument("--working-dir", default=".", help="directory shipped with the job (default: .)")
    sb.add_argument("--tracking-uri", default=None,
                    help="MLflow URI as seen from the cluster, overriding the spec's (default: the spec's, "
                         "else the cluster's $MLFLOW_TRACKING_URI: the head's server)")
    sb.add_argument("--pip-install", action="store_true",
                    help="pip install the shipped working dir on the nodes (if grokray is not installed there)")
    sb.set_defaults(_run=_run_sweep_submit)


def _load_spec(path: str):
    from grokray.sweep.spec import load_spec

    return load_spec(path)


def _run_sweep_validate(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    swept = ", ".join(f"{p.key} ({len(p.values) if p.values is not None else p.distribution})"
                      for p in spec.parameters if p.key in spec.swept_keys) or "nothing"
    per = spec.kind_impl.n_trials_note(spec)
    print(f"{args.spec}: OK: sweep {spec.name!r}, method {spec.method}, {spec.n_trials()} trial(s){per} of at most "
          f"{spec.budget} steps; swept: {swept}; "
          f"resources per trial {spec.resources.cpu:g} cpu / {spec.resources.gpu:g} gpu")
    filled = spec.filled_in()
    if filled:
        print("  filled in from defaults: " + "; ".join(filled))
    if getattr(args, "cells", False):
        if spec.method != "grid":
            print(f"  (--cells: method {spec.method} draws its trials when it runs)")
        else:
            for i, cell in enumerate(spec.grid() * spec.num_samples):
                print(f"  cell {i:>4}: " + ", ".join(f"{k}={v}" for k, v in cell.items()))
    pack = spec.resources.pack
    if pack == "auto":
        print("  pack: auto: 1 on CPU; with a GPU, the members that fit in its free memory, decided when the sweep "
              "starts")
    elif pack > 1:
        from grokray.sweep.packing import describe, plan_packs

        print(f"  {describe(plan_packs(spec, pack), pack)}; resources are per pack")
    return 0


def _map_logger(kind_name: str):
    """The report a sweep kind's parent run carries, refreshed as its trials end (presentation
    layer: handed to the sweep driver, which never imports it)."""
    from grokray import tracking
    from grokray.sweep.kinds import KINDS

    if KINDS[kind_name].map_name == tracking.TRANSFER_MAP_DIR:
        from grokray.transfermap import log_transfer_map

        return log_transfer_map
    from grokray.phasemap import log_phase_map

    return log_phase_map


def _print_map(record) -> None:
    """The sweep's map in the terminal; its picture goes to the sweep's own folder (beside the
    Tune state, not the working directory) and, by the driver, to the parent run."""
    from grokray import tracking
    from grokray.sweep.driver import exp_dir_for
    from grokray.sweep.kinds import KINDS

    kind = KINDS[record.spec.get("kind", "trial")]
    if kind.map_name == tracking.TRANSFER_MAP_DIR:
        from grokray.transfermap import format_transfer_table, transfer_map

        df = transfer_map(record.name, record.tracking_uri)
        if len(df):
            print()
            print(format_transfer_table(df))
        return
    from grokray.phasemap import format_table, phase_map, plot_phase_map, resolve_axes

    df = phase_map(record.name, record.tracking_uri)
    if len(df) == 0:
        return
    x, y, facets = resolve_axes(df)
    print()
    print(format_table(df, x, y, facets=facets))
    if "://" in record.storage:   # remote Tune storage: the parent run holds the picture
        print("phase map: on the parent run, phase_map/phase_map.png")
        return
    png = exp_dir_for(record.name, record.storage) / "phase_map.png"
    try:
        plot_phase_map(df, str(png), x, y, facets=facets)
    except OSError:   # the recorded storage is not here (a sweep resumed from a copy elsewhere)
        print("phase map: on the parent run, phase_map/phase_map.png")
        return
    print(f"phase map: {_short_path(png)} (and on the parent run: phase_map/phase_map.png)")


def _say_written(files: list[tuple[str, str | None]], hint: str) -> None:
    """One line naming the files written where asked (``what: path``), else how to ask for them."""
    written = [f"{what}: {path}" for what, path in files if path]
    print("; ".join(written) if written else hint)


def _short_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _after_sweep(summary, no_map: bool) -> int:
    rec = summary.record
    if summary.n_unfinished:
        print(f"[grokray] sweep {rec.name!r} interrupted after {_fmt_duration(summary.seconds)}: "
              f"{summary.n_ended} trial(s) ended, {summary.n_unfinished} not; continue "
              f"with `grokray sweep resume {rec.name}`", file=sys.stderr)
        print(_ui_hint(rec.tracking_uri, rec.experiment_id, rec.name, rec.experiment, rec.parent_run_id))
        return 130
    print(f"[grokray] sweep {rec.name!r} done: {summary.n_trials} trial(s), {summary.n_errors} failed, "
          f"{_fmt_duration(summary.seconds)}")
    if not no_map:
        _print_map(rec)
    print(_ui_hint(rec.tracking_uri, rec.experiment_id, rec.name, rec.experiment, rec.parent_run_id))
    return 1 if summary.n_errors else 0


def _ui_hint(tracking_uri: str, experiment_id: str, sweep: str, experiment: str, parent_run_id: str) -> str:
    """How to open a sweep's trials in the MLflow UI: the command (a local store) and the link
    of the sweep's saved view, which also asks for the model-training view (the UI's default
    for a fresh browser is GenAI)."""
    from grokray import tracking

    link = tracking.runs_view_link(experiment_id, tracking.sweep_view_id(sweep))
    which = f"(experiment {experiment!r}, parent run {parent_run_id})"
    if tracking.sqlite_path(tracking_uri) is not None:
        return (f"inspect the runs: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --workers 1\n"
                f"  then open http://127.0.0.1:5000/{link}\n  {which}")
    if tracking_uri.startswith(("http://", "https://")):
        return f"inspect the runs: {tracking_uri.rstrip('/')}/{link}  {which}"
    return (f"inspect the runs: open the MLflow UI of the server over {tracking_uri}, then <its address>/{link}  "
            f"{which}")


def _run_sweep_run(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)
    if args.tracking_uri:
        spec = dataclasses.replace(spec, tracking_uri=args.tracking_uri)
    if args.name:
        spec = spec.renamed(args.name)
    from grokray.sweep.driver import SweepError, default_storage, resolved_tracking_uri, run_sweep

    # Everything a sweep will write to, checked before the MLflow parent run or the state folder exist.
    _check_store(spec.tracking_uri, "tracking.uri" if spec.tracking_uri and not args.tracking_uri else "tracking URI")
    _check_dir(spec.storage or default_storage(resolved_tracking_uri(spec)), "storage")
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        _check_local_resources(spec)
    try:
        summary = run_sweep(spec, name=args.name, address=args.address, dashboard=args.dashboard,
                            map_logger=_map_logger(spec.kind))
    except SweepError as e:
        raise UserError(str(e)) from None
    return _after_sweep(summary, args.no_map)


def _check_local_resources(spec) -> None:
    """On a local Ray a trial asking for more CPUs or GPUs than this machine has is never scheduled:
    Tune waits forever, warning once a minute. Refused here instead (a cluster is --address)."""
    import torch

    have = {"cpu": os.cpu_count() or 1, "gpu": torch.cuda.device_count()}
    for kind in ("cpu", "gpu"):
        want = getattr(spec.resources, kind)
        if want > have[kind]:
            raise ConfigError(f"a trial asks for {want:g} {kind.upper()}(s) but this machine has {have[kind]} and "
                              "the sweep would run on a local Ray; lower it, or run on a cluster (--address)",
                              key=f"resources.{kind}", value=want)


def _run_sweep_resume(args: argparse.Namespace) -> int:
    from grokray.sweep.driver import SweepError, find_sweep, resume_sweep

    _check_store(args.tracking_uri)
    try:
        record, _ = find_sweep(args.name, args.storage, args.tracking_uri)
        _check_store(record.tracking_uri, "the sweep's tracking URI")
        summary = resume_sweep(args.name, storage=args.storage, address=args.address, dashboard=args.dashboard,
                               tracking_uri=args.tracking_uri, map_logger=_map_logger(record.spec.get("kind", "trial")))
    except SweepError as e:
        raise UserError(str(e)) from None
    return _after_sweep(summary, args.no_map)


def _run_sweep_status(args: argparse.Namespace) -> int:
    from grokray import tracking
    from grokray.sweep.driver import SweepError, find_sweep

    name, exp_dir, parent = args.name, None, None
    _check_store(args.tracking_uri)
    try:
        record, exp_dir = find_sweep(name, args.storage, args.tracking_uri)
        client = _existing_client(record.tracking_uri)
        parent = client.get_run(record.parent_run_id)
    except SweepError as e:
        if not (args.address or args.tracking_uri):
            raise UserError(str(e)) from None
        client = _existing_client(args.tracking_uri)
    if args.address:
        from grokray.sweep import jobs

        try:
            print(f"job {jobs.job_id(name)}: {jobs.status(name, args.address)}")
        except Exception as e:
            raise UserError(f"{args.address}: {str(e).splitlines()[0]}") from None
    if parent is None:
        parent = tracking.find_sweep_parent(client, name)
        if parent is None:
            raise UserError(f"no sweep {name!r} in the MLflow store at {client.tracking_uri}")
    runs = tracking.sweep_runs(client, parent, kind=None)
    states: dict[str, int] = {}
    print(f"sweep {name!r}: {len(runs)} trial run(s)" + (f"; state in {exp_dir}" if exp_dir else ""))
    print(f"{'run':<40} {'run id':<32} {'status':<9} {'steps':>13} {'stop':<16} {'label':<14} {'detail':<13} conf")
    Tag = tracking.Tag
    for r in runs:
        t = r.data.tags
        states[r.info.status] = states.get(r.info.status, 0) + 1
        steps = f"{t.get(Tag.STEPS_RUN, '?')}/{t.get(Tag.MAX_STEPS, r.data.params.get('train.max_steps', '?'))}"
        print(f"{(r.info.run_name or r.info.run_id)[:40]:<40} {r.info.run_id:<32} {r.info.status:<9} {steps:>13} "
              f"{t.get(Tag.STOP_REASON, '-'):<16} {t.get(Tag.LABEL, '-'):<14} "
              f"{t.get(Tag.DETAIL, '-'):<13} {t.get(Tag.CONFIDENCE, '-')}")
    print("  " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items())))
    experiment = client.get_experiment(parent.info.experiment_id).name
    print(_ui_hint(client.tracking_uri, parent.info.experiment_id, name, experiment, parent.info.run_id))
    if getattr(args, "follow", False):
        if args.address:
            from grokray.sweep import jobs

            jobs.follow_logs(name, args.address, lambda chunk: print(chunk, end="", flush=True))
        elif exp_dir is not None:
            from grokray.sweep.driver import PROGRESS_LOG

            log = exp_dir / PROGRESS_LOG
            # from the last summary on: what is running now, then everything new
            text = log.read_text() if log.exists() else ""
            last = text.rfind("[grokray] ", 0, max(0, text.rfind("| trials:")) + 1)
            _follow_progress(log, client, parent.info.run_id, start=len(text[:max(last, 0)].encode()))
        else:
            raise UserError(f"no local state of sweep {name!r} to follow (a sweep on a cluster: --address)")
    return 0


def _follow_progress(log: Path, client, parent_run_id: str, start: int = 0, poll_s: float = 2.0) -> None:
    """Print ``log`` from byte ``start`` and keep printing what the driver appends, until the sweep's
    parent run is no longer RUNNING (done, interrupted or failed) and the file has stopped growing."""
    pos, idle = start, 0
    while True:
        try:
            with open(log, "r") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
        except FileNotFoundError:
            chunk = ""
        if chunk:
            print(chunk, end="", flush=True)
            idle = 0
        else:
            idle += 1
            if idle % 5 == 0 and client.get_run(parent_run_id).info.status != "RUNNING":
                print(f"[grokray] the sweep is no longer running (parent run "
                      f"{client.get_run(parent_run_id).info.status})", flush=True)
                return
        time.sleep(poll_s)


def _local_progress(args: argparse.Namespace):
    """``(progress log, client, parent run id)`` of a sweep whose state is on this machine."""
    from grokray.sweep.driver import PROGRESS_LOG, SweepError, find_sweep

    try:
        record, exp_dir = find_sweep(args.name, args.storage, args.tracking_uri)
    except SweepError as e:
        raise UserError(f"{e} (a sweep on a cluster: --address)") from None
    return exp_dir / PROGRESS_LOG, _existing_client(record.tracking_uri), record.parent_run_id


def _run_sweep_logs(args: argparse.Namespace) -> int:
    from grokray.sweep import jobs

    if not args.address:   # a sweep started on this machine (any terminal, or in the background)
        log, client, parent = _local_progress(args)
        if not log.exists():
            raise UserError(f"no progress log at {log} (a sweep started before grokray kept one: "
                            "`grokray sweep status NAME`)")
        if args.follow:
            _follow_progress(log, client, parent)
        else:
            print(log.read_text(), end="")
        return 0
    try:
        if args.follow:
            jobs.follow_logs(args.name, args.address, lambda chunk: print(chunk, end="", flush=True))
        else:
            print(jobs.logs(args.name, args.address), end="")
    except Exception as e:
        raise UserError(f"{args.address}: {first_line(e)}") from None
    return 0


def _run_sweep_submit(args: argparse.Namespace) -> int:
    spec = _load_spec(args.spec)  # fail here, not on the cluster
    from grokray.sweep import jobs

    name = spec.renamed(args.name).name if args.name else spec.name
    try:
        sid = jobs.submit(args.spec, name, args.address, working_dir=args.working_dir,
                          tracking_uri=args.tracking_uri, pip_install=args.pip_install)
    except (ValueError, ConnectionError) as e:
        raise UserError(str(e)) from None
    except Exception as e:
        raise UserError(f"{args.address}: {first_line(e)}") from None
    print(f"submitted sweep {name!r} as Ray job {sid}; follow it with:\n"
          f"  grokray sweep logs {name} --address {args.address} --follow\n"
          f"  grokray sweep status {name} --address {args.address}")
    return 0


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    from grokray.version import __version__

    parser = _Parser(prog="grokray", description="Grokking sweeps on Ray: train, classify, map.")
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
        "train": ("train one trial and log it to MLflow", _add_train, _run_train),
        "data": ("generate (or load) a trial's dataset and print its split sizes", _add_data, _run_data),
        "classify": ("label runs true / fake / no grokking from what MLflow holds", _add_classify, _run_classify),
        "patching": ("causal patching of one checkpoint: flip-rate matrices, JSON and PNG", _add_patching,
                     _run_patching),
        "paths": ("compare the inference paths of two runs or checkpoints", _add_paths, _run_paths),
        "sweep": ("sweeps on Ray Tune: validate, run, resume, status, submit, logs", _add_sweep, None),
        "phase-map": ("labels over the swept parameters: table, PNG, CSV", _add_phase_map, _run_phase_map),
        "transfer-map": ("a finetune sweep per source label: steps to memorize, accuracy per composition, curves",
                         _add_transfer_map, _run_transfer_map),
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
        _check_sweep_name(getattr(args, "name", None), key)


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
