"""``grokray sweep ...``: validate a spec, run, resume, follow and submit sweeps on Ray Tune.

The sweep's report (phase map or transfer map) is its kind's (:mod:`grokray.cli.maps`): this
module hands it to the driver and prints it at the end, never asking which kind it has.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from grokray.cli.common import (UserError, add_tracking, check_dir, check_store, existing_client,
                                load_sweep_spec)
from grokray.cli.maps import map_logger, print_map
from grokray.config import ConfigError
from grokray.contract import TrialParam
from grokray.errors import first_line
from grokray.fmt import duration


#: The widest the status table's run column gets; a longer name loses its middle, not its end.
RUN_COLUMN_MAX = 64


def cut_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its middle cut out (a run name's last values and its
    trial id are at its end, and the first value at its start: both say which run it is).

    >>> cut_middle("seed=1,weight_decay=0.1,augmentation=both_full,phi=12.6_529d0", 32)
    'seed=1,weight_de…,phi=12.6_529d0'
    >>> cut_middle("short", 32)
    'short'
    """
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[:width - 1 - tail] + "\u2026" + text[-tail:]


def add_sweep(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    sub.required = True

    v = sub.add_parser("validate", help="check a sweep spec without running it")
    v.add_argument("spec", metavar="SPEC.yaml")
    v.add_argument("--cells", action="store_true", help="list the grid's trials, numbered for --cell K")
    v.set_defaults(_run=run_sweep_validate)

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
    r.set_defaults(_run=run_sweep_run)

    re = sub.add_parser("resume", help="continue an interrupted sweep")
    re.add_argument("name", metavar="NAME")
    re.add_argument("--storage", default=None,
                    help="where the sweep's state lives (default: beside the MLflow store, see --tracking-uri)")
    re.add_argument("--tracking-uri", default=None,
                    help="the MLflow store the sweep wrote to (default: $MLFLOW_TRACKING_URI or sqlite:///$PWD/mlflow.db)")
    driver_args(re)
    re.set_defaults(_run=run_sweep_resume)

    st = sub.add_parser("status", help="trials, states and labels of a sweep")
    st.add_argument("name", metavar="NAME")
    st.add_argument("--storage", default=None,
                    help="where the sweep's state lives (default: beside the MLflow store, see --tracking-uri)")
    st.add_argument("--address", default=None, help="Ray job server of a submitted sweep (http://HEAD:8265)")
    st.add_argument("--follow", "-f", action="store_true",
                    help="after the table, follow the sweep's progress (as `sweep run` prints it) until it ends")
    add_tracking(st)
    st.set_defaults(_run=run_sweep_status)

    lg = sub.add_parser("logs", help="the driver's progress lines of a sweep (local, or submitted with --address)")
    lg.add_argument("name", metavar="NAME")
    lg.add_argument("--address", default=None, help="Ray job server of a submitted sweep (http://HEAD:8265); "
                                                     "default: a sweep whose state is on this machine")
    lg.add_argument("--follow", "-f", action="store_true", help="stream until the sweep ends")
    lg.add_argument("--storage", default=None,
                    help="where the sweep's state lives (default: beside the MLflow store, see --tracking-uri)")
    add_tracking(lg)
    lg.set_defaults(_run=run_sweep_logs)

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
    sb.set_defaults(_run=run_sweep_submit)



def run_sweep_validate(args: argparse.Namespace) -> int:
    spec = load_sweep_spec(args.spec)
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


def _after_sweep(summary, no_map: bool) -> int:
    rec = summary.record
    if summary.n_unfinished:
        print(f"[grokray] sweep {rec.name!r} interrupted after {duration(summary.seconds)}: "
              f"{summary.n_ended} trial(s) ended, {summary.n_unfinished} not; continue "
              f"with `grokray sweep resume {rec.name}`", file=sys.stderr)
        print(_ui_hint(rec.tracking_uri, rec.experiment_id, rec.name, rec.experiment, rec.parent_run_id))
        return 130
    print(f"[grokray] sweep {rec.name!r} done: {summary.n_trials} trial(s), {summary.n_errors} failed, "
          f"{duration(summary.seconds)}")
    if not no_map:
        print_map(rec)
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


def run_sweep_run(args: argparse.Namespace) -> int:
    spec = load_sweep_spec(args.spec)
    if args.tracking_uri:
        spec = dataclasses.replace(spec, tracking_uri=args.tracking_uri)
    if args.name:
        spec = spec.renamed(args.name)
    from grokray.sweep.driver import SweepError, default_storage, resolved_tracking_uri, run_sweep

    # Everything a sweep will write to, checked before the MLflow parent run or the state folder exist.
    check_store(spec.tracking_uri, "tracking.uri" if spec.tracking_uri and not args.tracking_uri else "tracking URI")
    check_dir(spec.storage or default_storage(resolved_tracking_uri(spec)), "storage")
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        _check_local_resources(spec)
    try:
        summary = run_sweep(spec, name=args.name, address=args.address, dashboard=args.dashboard,
                            map_logger=map_logger(spec.kind_impl))
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


def run_sweep_resume(args: argparse.Namespace) -> int:
    from grokray.sweep.driver import SweepError, find_sweep, resume_sweep
    from grokray.sweep.kinds import kind_of

    check_store(args.tracking_uri)
    try:
        record, _ = find_sweep(args.name, args.storage, args.tracking_uri)
        check_store(record.tracking_uri, "the sweep's tracking URI")
        summary = resume_sweep(args.name, storage=args.storage, address=args.address, dashboard=args.dashboard,
                               tracking_uri=args.tracking_uri, map_logger=map_logger(kind_of(record.spec)))
    except SweepError as e:
        raise UserError(str(e)) from None
    return _after_sweep(summary, args.no_map)


def run_sweep_status(args: argparse.Namespace) -> int:
    from grokray import tracking
    from grokray.sweep.driver import SweepError, find_sweep

    name, exp_dir, parent = args.name, None, None
    check_store(args.tracking_uri)
    try:
        record, exp_dir = find_sweep(name, args.storage, args.tracking_uri)
        client = existing_client(record.tracking_uri)
        parent = client.get_run(record.parent_run_id)
    except SweepError as e:
        if not (args.address or args.tracking_uri):
            raise UserError(str(e)) from None
        client = existing_client(args.tracking_uri)
    if args.address:
        from grokray.sweep import jobs

        try:
            print(f"job {jobs.job_id(name)}: {jobs.status(name, args.address)}")
        except Exception as e:
            raise UserError(f"{args.address}: {first_line(e)}") from None
    if parent is None:
        parent = tracking.find_sweep_parent(client, name)
        if parent is None:
            raise UserError(f"no sweep {name!r} in the MLflow store at {client.tracking_uri}")
    runs = tracking.sweep_runs(client, parent, kind=None)
    states: dict[str, int] = {}
    print(f"sweep {name!r}: {len(runs)} trial run(s)" + (f"; state in {exp_dir}" if exp_dir else ""))
    names = [r.info.run_name or r.info.run_id for r in runs]
    w = min(max([len(n) for n in names] + [3]), RUN_COLUMN_MAX)
    print(f"{'run':<{w}} {'run id':<32} {'status':<9} {'steps':>13} {'stop':<16} {'label':<14} {'detail':<13} conf")
    Tag = tracking.Tag
    for r, run_name in zip(runs, names):
        t = r.data.tags
        states[r.info.status] = states.get(r.info.status, 0) + 1
        steps = f"{t.get(Tag.STEPS_RUN, '?')}/{t.get(Tag.MAX_STEPS, r.data.params.get(TrialParam.MAX_STEPS, '?'))}"
        print(f"{cut_middle(run_name, w):<{w}} {r.info.run_id:<32} {r.info.status:<9} {steps:>13} "
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
    return exp_dir / PROGRESS_LOG, existing_client(record.tracking_uri), record.parent_run_id


def run_sweep_logs(args: argparse.Namespace) -> int:
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


def run_sweep_submit(args: argparse.Namespace) -> int:
    spec = load_sweep_spec(args.spec)  # fail here, not on the cluster
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
