"""The boundary search's whole map, read by sweep name for the user (``grokray phase-map NAME
--search``, :func:`grokray.phasemap.table.format_search_map`): every grid point with the search's
label and where it came from (:mod:`grokray.sweep.search_map`)."""
from __future__ import annotations

import tempfile

import pandas as pd

from grokray import tracking
from grokray.contract import PHASE_MAP_DIR, SEARCH_MAP_CSV, SweepParam
from grokray.sweep.driver import SweepError, find_sweep
from grokray.sweep.search_map import sweep_search_map


def load_search_map(name: str, tracking_uri: str | None = None, storage: str | None = None) -> pd.DataFrame:
    """A boundary sweep's search map by name: from its state folder (under ``storage``, default
    beside the store) when this machine has it (live while the sweep runs), else from its parent run's
    ``phase_map/search_map.csv`` (logged when the sweep ended).

    Raises:
        LookupError: one line: no such sweep (under ``storage`` where given), not a boundary sweep,
            or no map saved yet.
        SearchStateError: the saved state is not a boundary search's, or not this spec's.
        ConfigError: no MLflow store at ``tracking_uri`` (nothing is created).
    """
    try:
        record, exp_dir = find_sweep(name, storage, tracking_uri)
    except SweepError:
        if storage:          # asked for a place: say it is not there, rather than read something else
            raise LookupError(f"no sweep {name!r} under {storage} (storage: the folder its spec named)") from None
        record = exp_dir = None
    if record is not None:
        spec = record.spec_obj()
        if spec.method != "boundary":
            raise LookupError(f"sweep {name!r} is a {spec.method} sweep: a search map is drawn by method: boundary")
        df = sweep_search_map(spec, exp_dir)
        if df is not None:
            return df
    client = tracking.existing_client(tracking_uri)
    parent = tracking.find_sweep_parent(client, name)
    if parent is None:
        raise LookupError(f"no sweep {name!r} in {client.tracking_uri}")
    method = parent.data.params.get(SweepParam.METHOD)
    if method not in (None, "boundary"):
        raise LookupError(f"sweep {name!r} is a {method} sweep: a search map is drawn by method: boundary")
    with tempfile.TemporaryDirectory(prefix="grokray-search-map-") as tmp:
        try:
            local = client.download_artifacts(parent.info.run_id, f"{PHASE_MAP_DIR}/{SEARCH_MAP_CSV}", tmp)
        except Exception:  # MLflow raises several types for a missing artifact
            raise LookupError(f"sweep {name!r} has no search map yet (method boundary only; its parent run "
                              f"gets {PHASE_MAP_DIR}/{SEARCH_MAP_CSV} when the sweep ends)") from None
        return pd.read_csv(local, keep_default_na=False, na_values=[""])


__all__ = ["load_search_map"]
