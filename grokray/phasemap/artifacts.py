"""The phase map on a sweep's parent run (``phase_map/``): the CSV, the picture and the table text,
refreshed by the sweep driver as labels arrive (through the ``map_logger`` the CLI hands it)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from grokray import tracking
from grokray.contract import PHASE_MAP_CSV, PHASE_MAP_DIR, PHASE_MAP_PHASES_PNG, PHASE_MAP_PNG, PHASE_MAP_TXT
from grokray.phasemap.axes import resolve_axes
from grokray.phasemap.figure import plot_phase_map
from grokray.phasemap.read import sweep_frame
from grokray.phasemap.table import format_table


def log_phase_map(tracking_uri: str, parent_run_id: str, sweep: str, experiment: str | None = None
                  ) -> pd.DataFrame:
    """Compute the sweep's map and log ``phase_map.csv``, ``phase_map.png`` (coloured by label),
    ``phase_map_phases.png`` (by Liu et al.'s phase) and ``phase_map.txt`` (the
    :func:`format_table` text) on the parent run under ``phase_map/``,
    replacing the previous ones. Returns the map."""
    client = tracking.get_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    df = sweep_frame(client, parent, sweep, experiment)
    with tempfile.TemporaryDirectory(prefix="grokray-phasemap-") as tmp:
        d = Path(tmp)
        df.to_csv(d / PHASE_MAP_CSV, index=False)
        plot_phase_map(df, d / PHASE_MAP_PNG)
        plot_phase_map(df, d / PHASE_MAP_PHASES_PNG, color_by="phase")
        x, y, _ = resolve_axes(df)
        (d / PHASE_MAP_TXT).write_text(format_table(df, x, y) + "\n")
        client.log_artifacts(parent_run_id, str(d), PHASE_MAP_DIR)
    return df
