"""He et al.'s finding 3 on today's labels: does a mature true-grokking circuit transfer to new facts
better than an ID-only one at equal ID accuracy?

Reads a finished finetune sweep (``sweeps/transfer-mature.yaml``) and its sources
(``sweeps/transfer-sources.yaml``) from one store, no training:

* per source: its label, detail, classifier version (flagged when older than today's), model
  (layers x loops), augmentation, graph, its own final ID / OOD accuracy, and how mature it is
  (steps run / t_generalize);
* per fine-tuning run: new-fact memorization, final (median of the last five evaluations) and best
  new+old, old+new, new+new, old+old accuracy, forgetting, and the lens bridge rate on new+old;
* per source kind (label x model x augmentation): mean and range over graphs and fine-tuning sets,
  beside He et al.'s numbers.

Usage::

    python -m experiments.transfer_mature --tracking-uri sqlite:////work/store-tf/mlflow.db \\
        [--sweep transfer-mature] [--out experiments/results/transfer_mature.json] [--png docs/transfer/mature.png]
"""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.store_args import save_figure, store_parser

#: He et al. (2026, section 5), as docs/transfer.md summarises them: exact match after fine-tuning.
PAPER = {"true_grokking": {"new_old": "1.0 (within ~5-6k steps)", "old_new": "0", "new_new": "<= 0.04"},
         "fake_grokking": {"new_old": "~0.3-0.4", "old_new": "-", "new_new": "-"}}
MEASURES = ("final_new_old", "max_new_old", "final_old_new", "final_new_new", "final_old_old",
            "forget_unretained", "t_memorize_new", "bridge_new_old")


def source_rows(client, run_ids: list[str], current_version: str) -> pd.DataFrame:
    """One row per source run: what it is and how it ended."""
    rows = []
    for rid in run_ids:
        r = client.get_run(rid)
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        t_gen = m.get("verdict/t_generalize")
        steps = float(t.get("grokray.steps_run") or 0)
        version = t.get("grokray.classifier_version")
        rows.append({"source_run": rid, "source_name": r.info.run_name, "label": t.get("grokray.label"),
                     "detail": t.get("grokray.detail"), "classifier_version": version,
                     "stale_label": version != current_version,
                     "model": f"{p.get('model.n_layers')}x{p.get('model.n_loops')}",
                     "augmentation": p.get("data.augmentation"), "graph": p.get("data.seed"),
                     "source_id_acc": m.get("acc/test_inferred_id"),          # its last evaluation
                     "source_ood_acc": m.get("acc/test_inferred_ood"),
                     "t_generalize": t_gen, "steps_run": steps,
                     "maturity": steps / t_gen if t_gen else None})
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> list[dict]:
    """Mean and range of each measure per source kind (label, model, augmentation).

    >>> df = pd.DataFrame({"label": ["true_grokking"] * 2, "model": ["1x2"] * 2, "augmentation": ["both_full"] * 2,
    ...                    "graph": ["0", "1"], "final_new_old": [0.5, 0.7]})
    >>> s = summarise(df)[0]
    >>> s["n_runs"], s["n_graphs"], s["final_new_old"]
    (2, 2, {'mean': 0.6, 'min': 0.5, 'max': 0.7})
    """
    out = []
    for (label, model, aug), g in runs.groupby(["label", "model", "augmentation"], dropna=False):
        entry = {"label": label, "model": model, "augmentation": aug, "n_runs": int(len(g)),
                 "n_graphs": int(g["graph"].nunique())}
        for k in MEASURES:
            if k in g:
                v = g[k].astype(float).dropna()
                entry[k] = ({"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4),
                             "max": round(float(v.max()), 4)} if len(v) else None)
        out.append(entry)
    return out


def _plain(v):
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(float(v)) else round(float(v), 4)
    return v.item() if hasattr(v, "item") else v


def plot(runs: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = runs.groupby(["label", "model", "augmentation"], dropna=False)
    tests = [("final_new_old", "new+old"), ("final_old_new", "old+new"), ("final_new_new", "new+new"),
             ("final_old_old", "old+old")]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(1, kinds.ngroups)
    for i, ((label, model, aug), g) in enumerate(kinds):
        xs = np.arange(len(tests)) + i * width
        means = [g[k].astype(float).mean() for k, _ in tests]
        ax.bar(xs, means, width, label=f"{label} {model} {aug} (n={len(g)})", alpha=0.8)
        for x, (k, _) in zip(xs, tests):
            ax.scatter([x] * len(g), g[k].astype(float), color="k", s=8, zorder=3)
    ax.set_xticks(np.arange(len(tests)) + 0.4 - width / 2, [name for _, name in tests])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("final accuracy (median, last 5 evals)")
    ax.set_title("Transfer to new facts by source kind (dots: graphs x fine-tuning sets)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = store_parser(__doc__, "transfer-mature", "experiments/results/transfer_mature.json", "docs/transfer/mature.png")
    a = ap.parse_args(argv)
    import grokray
    from grokray import tracking
    from grokray.config import ConfigError
    from grokray.verdict import CLASSIFIER_VERSION
    try:
        client = tracking.existing_client(a.tracking_uri)
        df = grokray.transfer_map(a.sweep, tracking_uri=a.tracking_uri)
    except (ConfigError, LookupError) as e:
        print(f"transfer_mature: {e}", file=sys.stderr)
        return 2
    if df.empty:
        print(f"transfer_mature: no finetune runs in {a.sweep!r} yet", file=sys.stderr)
        return 1
    sources = source_rows(client, sorted(set(df["source_run"].dropna())), CLASSIFIER_VERSION)
    runs = df.merge(sources, on="source_run", how="left")
    result = {
        "what": "He et al.'s finding 3 on today's labels: fine-tuning mature true-grokking and ID-only sources on new facts",
        "sweep": a.sweep, "tracking_uri": a.tracking_uri, "classifier_version_now": CLASSIFIER_VERSION,
        "measured": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "paper": PAPER, "sources": [{k: _plain(v) for k, v in r.items()} for r in sources.to_dict("records")],
        "by_source_kind": summarise(runs),
        "runs": [{k: _plain(r[k]) for k in ["source_run", "label", "model", "augmentation", "graph",
                                             "transfer.seed", *MEASURES] if k in r}
                 for r in runs.to_dict("records")],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=_plain) + "\n")
    plot(runs, a.png)
    for s in result["by_source_kind"]:
        f = s.get("final_new_old") or {}
        print(f"{s['label']:14s} {s['model']} {s['augmentation']:10s} n={s['n_runs']} graphs={s['n_graphs']}  "
              f"new+old {f.get('mean')} [{f.get('min')}, {f.get('max')}]  "
              f"old+new {(s.get('final_old_new') or {}).get('mean')}  new+new {(s.get('final_new_new') or {}).get('mean')}")
    stale = [s["source_name"] for s in result["sources"] if s["stale_label"]]
    if stale:
        print(f"warning: {len(stale)} source(s) labelled by an older classifier than v{CLASSIFIER_VERSION}: {stale}")
    print(f"wrote {a.out} and {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
