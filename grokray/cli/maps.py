"""``grokray phase-map`` and ``grokray transfer-map``, and which report a sweep kind draws.

A sweep kind names its report (``kind.map_name``: ``phase_map`` | ``transfer_map``, the folder
on its parent run, :mod:`grokray.contract`); :data:`REPORTS` says what each report is to the
command line: the command that prints it, the function the sweep driver calls to refresh it on
the parent run (:func:`map_logger`) and what a sweep prints when it ends (:func:`print_map`).
The sweep driver and the kinds never import this layer, and this layer never asks which kind
it has: it looks the kind's report up.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from grokray.cli.common import UserError, add_tracking, check_output, existing_client, say_written, short_path
from grokray.contract import KIND_FINETUNE, PHASE_MAP_DIR, PHASE_MAP_PNG, TRANSFER_MAP_DIR, SweepParam

if TYPE_CHECKING:
    from grokray.sweep.kinds import SweepKind

#: Where a sweep's phase diagram is on its parent run.
PHASE_MAP_ARTIFACT = f"{PHASE_MAP_DIR}/{PHASE_MAP_PNG}"


# --------------------------------------------------------------------------- phase map

def add_phase_map(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="SWEEP", help="a sweep name (or an MLflow experiment name)")
    p.add_argument("--x", default=None, help="parameter for the columns (default: the one with most values)")
    p.add_argument("--y", default=None, help="parameter for the rows (default: the next one)")
    p.add_argument("--by", action="append", default=[], metavar="PARAM",
                   help="also split the map by this parameter, one table / panel per value (repeatable), e.g. "
                        "--by data.seed: one map per graph (by default a cell shows each graph's label when the "
                        "graphs disagree)")
    p.add_argument("--png", default=None, help="also write the phase diagram here (the sweep's parent run "
                                               f"holds it as {PHASE_MAP_ARTIFACT})")
    p.add_argument("--color-by", choices=("label", "phase"), default="label",
                   help="colour the picture's cells by grokray's label (default) or by Liu et al.'s phase "
                        "(grokking / comprehension / memorization / confusion), the label then written in the cell")
    p.add_argument("--csv", default=None, help="also write one row per run as CSV")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of the table")
    p.add_argument("--search", action="store_true",
                   help="method boundary: the search's whole map instead, every grid point with the search's label "
                        "and where it came from (a run, or the search's rule); --csv / --json / --png then write "
                        "its rows and picture")
    p.add_argument("--storage", default=None, metavar="DIR",
                   help="with --search: the sweep's Ray Tune storage, where the spec set one (read live while it runs)")
    add_tracking(p)


def run_search_map(args: argparse.Namespace, client: Any) -> int:
    """``grokray phase-map NAME --search``: the boundary search's map (:mod:`grokray.sweep.search_map`)."""
    from grokray.phasemap.table import format_search_map
    from grokray.phasemap.search import load_search_map, plot_search_map
    from grokray.sweep.search_map import SearchStateError

    for flag, given in (("--x", args.x), ("--y", args.y), ("--by", args.by), ("--color-by", args.color_by != "label")):
        if given:
            raise UserError(f"{flag} lays out the runs' map; the search map is laid out by the search's own axes "
                            "(drop it, or drop --search)")
    try:
        df = load_search_map(args.name, client.tracking_uri, args.storage)
    except (LookupError, SearchStateError) as e:
        raise UserError(str(e).strip("'\"")) from None
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.png:
        plot_search_map(df, args.png, title=f"{args.name}: the boundary search's map")
    if args.json:
        print(df.to_json(orient="records", lines=True), end="")
        return 0
    print(f"{args.name}: the boundary search's map")
    print(format_search_map(df))
    say_written([("search map", args.csv), ("picture", args.png)], "its rows: --csv FILE; its picture: --png FILE")
    return 0


def run_phase_map(args: argparse.Namespace) -> int:
    from grokray.phasemap import format_table, phase_map, plot_phase_map, resolve_axes

    check_output(args.csv, "--csv")
    check_output(args.png, "--png")
    client = existing_client(args.tracking_uri)
    if args.search:
        return run_search_map(args, client)
    if args.storage:
        raise UserError("--storage: only with --search (the runs' map is read from the MLflow store)")
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
        plot_phase_map(df, args.png, x, y, facets=facets, color_by=args.color_by)
    if args.json:
        print(df.to_json(orient="records", lines=True), end="")
        return 0
    n_lab = int(df["label"].notna().sum()) if len(df) else 0
    print(f"{args.name}: {len(df)} run(s), {n_lab} labelled")
    if len(df):
        print(format_table(df, x, y, facets=facets))
    say_written([("phase diagram", args.png), ("runs", args.csv)],
                f"the picture: --png FILE (or the sweep's parent run, {PHASE_MAP_DIR}/)")
    return 0


# --------------------------------------------------------------------------- transfer map

def add_transfer_map(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="SWEEP", help="a finetune sweep name")
    p.add_argument("--png", default=None, help="also write the transfer curves here")
    p.add_argument("--csv", default=None, help="also write one row per finetune run as CSV")
    p.add_argument("--json", action="store_true", help="print one JSON object per run instead of the table")
    add_tracking(p)


def run_transfer_map(args: argparse.Namespace) -> int:
    """``grokray transfer-map``: the table (or JSON lines), the curves PNG, optionally a CSV."""
    from grokray.plots import plot_transfer_curves
    from grokray.sweep.kinds import DEFAULT_KIND, KINDS
    from grokray.transfermap import format_transfer_table, transfer_histories, transfer_map

    check_output(args.csv, "--csv")
    check_output(args.png, "--png")
    client = existing_client(args.tracking_uri)
    try:
        df = transfer_map(args.name, client.tracking_uri)
    except LookupError as e:
        raise UserError(str(e).strip("'\"")) from None
    kind = client.get_run(df.attrs["parent_run_id"]).data.params.get(SweepParam.KIND, KIND_FINETUNE)
    report = REPORTS[KINDS.get(kind, KINDS[DEFAULT_KIND]).map_name]
    if report is not REPORTS[TRANSFER_MAP_DIR]:  # its map is another: an empty transfer table would only mislead
        raise UserError(f"sweep {args.name!r} is a {kind} sweep, not a finetune sweep; its map is "
                        f"`grokray {report.command} {args.name}`")
    if args.csv:
        df.to_csv(args.csv, index=False)
    if args.png:
        plot_transfer_curves(transfer_histories(df, client.tracking_uri), args.png, title=f"transfer: {args.name}")
    if args.json:
        print(df.to_json(orient="records", lines=True), end="")
        return 0
    print(f"{args.name}: {len(df)} finetune run(s)")
    print(format_transfer_table(df))
    say_written([("transfer curves", args.png), ("runs", args.csv)], "the curves: --png FILE")
    return 0


# --------------------------------------------------------------------------- a sweep kind's report

@dataclass(frozen=True)
class Report:
    """What a report (a sweep kind's ``map_name``) is to the command line."""
    #: The subcommand that prints it (``grokray phase-map NAME``).
    command: str
    #: Returns the function the sweep driver calls to refresh it on the parent run (``map_logger``:
    #: ``(tracking_uri, parent_run_id, sweep, experiment)``); imported when asked (pandas, matplotlib).
    logger: Callable[[], Callable[..., Any]]
    #: Prints it in the terminal when a sweep ends (given the sweep's record).
    show: Callable[[Any], None]


def _phase_map_logger() -> Callable[..., Any]:
    from grokray.phasemap import log_phase_map

    return log_phase_map


def _transfer_map_logger() -> Callable[..., Any]:
    from grokray.transfermap import log_transfer_map

    return log_transfer_map


def _show_phase_map(record: Any) -> None:
    """The table; the picture goes to the sweep's own folder (beside the Tune state, not the
    working directory) and, by the driver, to the parent run."""
    from grokray.phasemap import format_table, phase_map, plot_phase_map, resolve_axes
    from grokray.sweep.driver import exp_dir_for

    df = phase_map(record.name, record.tracking_uri)
    if len(df) == 0:
        return
    x, y, facets = resolve_axes(df)
    print()
    print(format_table(df, x, y, facets=facets))
    if "://" in record.storage:   # remote Tune storage: the parent run holds the picture
        print(f"phase map: on the parent run, {PHASE_MAP_ARTIFACT}")
        return
    png = exp_dir_for(record.name, record.storage) / PHASE_MAP_PNG
    try:
        plot_phase_map(df, str(png), x, y, facets=facets)
    except OSError:   # the recorded storage is not here (a sweep resumed from a copy elsewhere)
        print(f"phase map: on the parent run, {PHASE_MAP_ARTIFACT}")
        return
    print(f"phase map: {short_path(png)} (and on the parent run: {PHASE_MAP_ARTIFACT})")


def _show_transfer_map(record: Any) -> None:
    from grokray.transfermap import format_transfer_table, transfer_map

    df = transfer_map(record.name, record.tracking_uri)
    if len(df):
        print()
        print(format_transfer_table(df))


#: Every report a sweep kind can name, by its ``map_name``.
REPORTS: dict[str, Report] = {
    PHASE_MAP_DIR: Report("phase-map", _phase_map_logger, _show_phase_map),
    TRANSFER_MAP_DIR: Report("transfer-map", _transfer_map_logger, _show_transfer_map),
}


def map_logger(kind: "SweepKind") -> Callable[..., Any]:
    """The report a sweep kind's parent run carries, refreshed as its trials end (presentation
    layer: handed to the sweep driver, which never imports it)."""
    return REPORTS[kind.map_name].logger()


def print_map(record: Any) -> None:
    """The sweep's map in the terminal, when the sweep ends."""
    from grokray.sweep.kinds import kind_of

    REPORTS[kind_of(record.spec).map_name].show(record)
