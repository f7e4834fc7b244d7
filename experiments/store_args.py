"""What the experiments that read a finished sweep share: the command line (a store, a sweep, where
the JSON and the PNG go) and how a figure is written."""
from __future__ import annotations

import argparse
from pathlib import Path


def store_parser(doc: str, sweep: str, out: str, png: str) -> argparse.ArgumentParser:
    """``--tracking-uri`` (required), ``--sweep`` (default ``sweep``), ``--out`` and ``--png``.

    >>> a = store_parser("x", "phase-map", "r.json", "f.png").parse_args(["--tracking-uri", "sqlite:///m.db"])
    >>> a.sweep, a.out, a.png
    ('phase-map', PosixPath('r.json'), PosixPath('f.png'))
    """
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--tracking-uri", required=True, help="the MLflow store the sweep wrote to (read, never created)")
    ap.add_argument("--sweep", default=sweep)
    ap.add_argument("--out", type=Path, default=Path(out), help="the results JSON")
    ap.add_argument("--png", type=Path, default=Path(png), help="the figure")
    return ap


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` to ``path`` (folders made), at the experiments' resolution, and close it."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
