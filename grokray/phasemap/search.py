"""The boundary search's whole map for the user (``grokray phase-map NAME --search``): read by
sweep name (:func:`load_search_map`), drawn (:func:`plot_search_map`; the table is
:func:`grokray.phasemap.table.format_search_map`): every grid point with the search's label and
where it came from (:mod:`grokray.sweep.search_map`)."""
from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from grokray import tracking
from grokray.contract import PHASE_MAP_DIR, SEARCH_MAP_CSV, SweepParam
from grokray.sweep.driver import SweepError, find_sweep
from grokray.sweep.search_map import facet_name, map_keys, plain_value, sweep_search_map


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


def plot_search_map(search: pd.DataFrame, path: str | Path, *, compare: dict[str, dict] | None = None,
                    title: str | None = None, against: str = "grid") -> None:
    """The search map as a picture: one panel per facet (graphs, ``data.seed``, in rows; the other
    facets across), the first axis up and the second across; a cell is the search's label in Liu et
    al.'s phase colours, solid where a run gave it, pale where the search's rule did, hatched where
    it is unresolved (the nearest known label). ``compare``, per facet name
    (:func:`~grokray.sweep.search_map.facet_name`): ``disagree`` (points where another map, e.g. a
    grid's, says otherwise: the axis values and ``against``'s label) framed in red with that label
    written under, and ``subtitle`` under the panel's title."""
    from matplotlib.patches import Patch, Rectangle

    from grokray.phasemap.axes import PHASE_COLORS
    from grokray.phasemap.table import SEARCH_WORDS as word
    from grokray.plots import plt
    from grokray.sweep.boundary import PHASE_BEHAVIOUR

    colour = {b: PHASE_COLORS[ph] for ph, b in PHASE_BEHAVIOUR.items()}
    facets, axes = map_keys(search)
    y, x = (axes[0], axes[1]) if len(axes) > 1 else (None, axes[0])
    rows_f = [f for f in facets if f == "data.seed"]        # graphs in rows, the other facets across
    cols_f = [f for f in facets if f != "data.seed"]
    row_vals = [tuple(v) for v in search[rows_f].drop_duplicates().values] if rows_f else [()]
    col_vals = [tuple(v) for v in search[cols_f].drop_duplicates().values] if cols_f else [()]
    fig, axs = plt.subplots(len(row_vals), len(col_vals), squeeze=False,
                            figsize=(max(4.3 * len(col_vals), 6.5), 3.6 * len(row_vals) + 1.2))
    for i, rv in enumerate(row_vals):
        for j, cv in enumerate(col_vals):
            ax, combo = axs[i][j], dict(zip([*rows_f, *cols_f], [*rv, *cv]))
            part = search
            for k, v in combo.items():
                part = part[part[k] == v]
            extra = (compare or {}).get(facet_name(facets, [combo[k] for k in facets]), {})
            wrong = {tuple(d[a] for a in axes): d[against] for d in extra.get("disagree", [])}
            xs, ys = sorted(part[x].unique()), sorted(part[y].unique()) if y else [None]
            for _, r in part.iterrows():
                cx, cy = xs.index(r[x]), ys.index(r[y]) if y else 0
                lab, src = r["search_label"], r["source"]
                run = src == "run"
                ax.add_patch(Rectangle((cx, cy), 1, 1, facecolor=colour.get(lab, "#dddddd"),
                                       alpha=1.0 if run else 0.35, hatch="//" if src == "nearest" else None,
                                       edgecolor="white", linewidth=1.5))
                text = (word.get(lab, "." if not isinstance(lab, str) else lab) + ("\n(run)" if run else "")
                        + ("\n(running)" if r["in_flight"] else ""))
                g = wrong.get(tuple(plain_value(r[a]) for a in axes))
                if g is not None:
                    ax.add_patch(Rectangle((cx + 0.04, cy + 0.04), 0.92, 0.92, fill=False, edgecolor="red",
                                           linewidth=2.5))
                    text += f"\n{against}: {word.get(g, g)}"
                ax.text(cx + 0.5, cy + 0.5, text, ha="center", va="center", fontsize=8,
                        color="white" if run and lab in ("grokking", "confusion", "diverged") else "black")
            ax.set_xlim(0, len(xs))
            ax.set_ylim(0, len(ys))
            ax.set_xticks(np.arange(len(xs)) + 0.5, [f"{v:g}" for v in xs])
            ax.set_yticks(np.arange(len(ys)) + 0.5, [f"{v:g}" for v in ys] if y else [""])
            ax.set_xlabel(x)
            if j == 0 and y:
                ax.set_ylabel(y)
            head = ", ".join([*(str(v) for v in cv), *([f"graph {rv[0]}"] if rv else [])])
            sub = extra.get("subtitle") or f"{int((part['source'] == 'run').sum())} runs of {len(part)} points"
            ax.set_title(f"{head}\n{sub}" if head else sub, fontsize=9)
    handles = [Patch(facecolor=c, label=b.replace("_", " ")) for b, c in colour.items() if b != "diverged"]
    handles += [Patch(facecolor="#999999", label="solid: a run"),
                Patch(facecolor="#999999", alpha=0.35, label="pale: the search's rule"),
                Patch(facecolor="white", hatch="//", edgecolor="#666666", label="hatched: unresolved")]
    if compare:
        handles.append(Patch(facecolor="white", edgecolor="red", linewidth=2, label=f"red: the {against} disagrees"))
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:   # wrapped to the figure's width (about 10 characters an inch at this size)
        title = textwrap.fill(title, width=int(fig.get_figwidth() * 10))
        fig.suptitle(title, fontsize=11)
    title_in = 0.28 * (title.count("\n") + 1) if title else 0.0     # inches a title line takes at 11 pt
    fig.tight_layout(rect=(0, 0.09, 1, 1 - title_in / fig.get_figheight()))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["load_search_map", "plot_search_map"]
