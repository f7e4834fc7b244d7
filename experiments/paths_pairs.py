"""He et al.'s finding 1 on matched pairs: are the ID inference paths of a model that grokked OOD
and one that did not the same?

Pairs come from a finished sweep's store (the phase map by default), with no training:

* **same data**: both runs share the graph (``data.seed``), phi and augmentation, so their
  training sets are identical; they differ in weight decay (or init seed);
* **A grokked OOD**: its OOD accuracy held the threshold (``t_generalize`` set; the best A of a
  group is a ``true_grokking`` run, else any run that generalized);
* **B did not**: no ``t_generalize`` and final OOD accuracy below ``--ood-below`` (0.3), while its
  ID accuracy reached ``--id-at-least`` (0.8): it composes in distribution;
* **the same ID accuracy**: B at its last checkpoint; A at the checkpoint whose ID accuracy (the
  evaluation nearest that step) is closest to B's.

Each pair is compared with :func:`grokray.circuits.paths.compare_checkpoints` (causal patching per
input token and the logit-lens profile on ``test_inferred_id``, as ``grokray paths``) and each model
gets the interchange test per depth on the ID split (does its ID answer follow the bridge it
computed?). A **contrast** keeps the instrument honest: A's matched checkpoint against A's own
earliest checkpoint that had memorized its training set but did not yet compose ID (ID < 0.3; else
its latest checkpoint below ID 0.3): a similarity that stays ~1 there too would say the metric
cannot tell paths apart.

Usage::

    python -m experiments.paths_pairs --tracking-uri sqlite:////work/store/mlflow.db [--sweep phase-map] \\
        [--max-pairs 4] [--out experiments/results/paths_pairs.json] [--png docs/paths/pairs.png]
"""
from __future__ import annotations

import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.store_args import save_figure, store_parser

GROUP = ["data.seed", "data.phi", "data.augmentation", "model"]
OOD_ACC = "acc/test_inferred_ood"


def pick_pairs(runs: pd.DataFrame, *, ood_below: float = 0.3, id_at_least: float = 0.8,
               max_pairs: int = 4, match: list[str] | None = None) -> list[tuple[pd.Series, pd.Series]]:
    """(A, B) pairs of runs on the same data, A generalized OOD, B composes ID but not OOD.

    One pair per group, groups ordered by how close B's ID accuracy is to A's final one;
    within a group the A is a true_grokking run if there is one, the B the one with the highest ID.

    >>> runs = pd.DataFrame({"data.seed": [0, 0, 0], "data.phi": [7.2] * 3, "data.augmentation": ["both_full"] * 3,
    ...     "train.weight_decay": [1.0, 0.3, 0.1], "label": ["true_grokking", "no_grokking", "no_grokking"],
    ...     "t_generalize": [6500, None, None], "final_ood_acc": [0.9, 0.05, 0.1], "final_id_acc": [0.95, 0.9, 0.5]})
    >>> [(float(a["train.weight_decay"]), float(b["train.weight_decay"])) for a, b in pick_pairs(runs)]
    [(1.0, 0.3)]
    """
    keys = [k for k in (match or GROUP) if k in runs]
    found = []
    for _, g in runs.groupby(keys, dropna=False):
        a = g[g["t_generalize"].notna()]
        b = g[g["t_generalize"].isna() & (g["final_ood_acc"] < ood_below) & (g["final_id_acc"] >= id_at_least)]
        if a.empty or b.empty:
            continue
        a = a.assign(_true=(a["label"] == "true_grokking")).sort_values(["_true", "final_id_acc"], ascending=False)
        b = b.sort_values("final_id_acc", ascending=False)
        ra, rb = a.iloc[0].drop("_true"), b.iloc[0]
        found.append((abs(ra["final_id_acc"] - rb["final_id_acc"]), ra, rb))
    found.sort(key=lambda t: t[0])
    return [(ra, rb) for _, ra, rb in found[:max_pairs]]


def nearest_acc(history: list[tuple[int, float]], step: int) -> float:
    """The ID accuracy at the evaluation nearest ``step`` (history: (step, value) pairs).

    >>> nearest_acc([(100, 0.1), (1000, 0.5), (2000, 0.9)], 1200)
    0.5
    """
    steps = np.array([s for s, _ in history])
    return float(history[int(np.argmin(np.abs(steps - step)))][1])


def matched_step(history: list[tuple[int, float]], checkpoint_steps: list[int], target: float) -> int:
    """The checkpoint step whose ID accuracy is closest to ``target`` (ties: the later step).

    >>> matched_step([(100, 0.1), (1000, 0.5), (2000, 0.9)], [100, 1000, 2000], 0.8)
    2000
    """
    return min(sorted(checkpoint_steps, reverse=True), key=lambda s: abs(nearest_acc(history, s) - target))


def _history(client, run_id: str, key: str = "acc/test_inferred_id") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _interchange_by_depth(path: str) -> dict:
    from grokray.circuits.interchange import interchange_test
    from grokray.config import trial_config_from_dict
    from grokray.data import load_dataset
    from grokray.model import load_checkpoint
    model, ckpt = load_checkpoint(path, map_location="cpu")
    res = interchange_test(model, load_dataset(trial_config_from_dict(ckpt["trial_config"]).data),
                           split="test_inferred_id", n=200)
    return {"step": ckpt.get("step"), "depths": list(res.depth_names),
            "success": [round(float(v), 4) for v in res.success], "best": res.best,
            "n_queries": int(res.n_queries), "clean_acc": round(float(res.clean_acc), 4)}


def _compare(a_path: str, b_path: str, labels: tuple[str, str], n: int) -> dict:
    from grokray.circuits.paths import compare_checkpoints
    cmp = compare_checkpoints(a_path, b_path, split="test_inferred_id", n=n, labels=labels)
    return {"labels": list(labels), "steps": [int(s) for s in cmp.steps], "id_accuracy": [round(float(v), 4) for v in cmp.accuracy],
            "n_queries": int(cmp.n_queries), "patching_similarity": {k: round(float(v), 4) for k, v in cmp.patching_similarity.items()},
            "lens_similarity": round(float(cmp.lens_similarity), 4), "score": round(float(cmp.score), 4),
            "note": cmp.note}


def _describe(r: pd.Series) -> dict:
    keep = ["run_id", "run_name", "label", "detail", "phase", "model", "train.weight_decay", "seed", "t_memorize",
            "t_generalize", "final_id_acc", "final_ood_acc", "interchange", "classifier_version"]
    out = {}
    for k in keep:
        if k in r:
            v = r[k]
            out[k] = None if (isinstance(v, float) and np.isnan(v)) else (v.item() if hasattr(v, "item") else v)
    return out


def within_run_steps(id_hist: list[tuple[int, float]], ood_hist: list[tuple[int, float]], ckpts: list[int],
                     t_generalize: float, *, ood_below: float = 0.3, id_at_least: float = 0.8) -> tuple[int, int] | None:
    """(A, B) checkpoint steps of ONE run that grokked OOD late: B the latest checkpoint before
    ``t_generalize`` that composes ID (>= ``id_at_least``) but not OOD (< ``ood_below``), A the checkpoint
    after it whose ID accuracy is closest to B's. Same data, same initialisation, matched ID accuracy;
    None when the run never composed ID before it generalized OOD (no delay to compare across).

    >>> ids = [(1000, 0.3), (2000, 0.85), (4000, 0.9), (6000, 0.92), (9000, 0.9)]
    >>> ood = [(1000, 0.0), (2000, 0.05), (4000, 0.1), (6000, 0.6), (9000, 0.95)]
    >>> within_run_steps(ids, ood, [1000, 2000, 4000, 9000], 6000)
    (9000, 4000)
    """
    before = [s for s in ckpts if s < t_generalize and nearest_acc(id_hist, s) >= id_at_least
              and nearest_acc(ood_hist, s) < ood_below]
    after = [s for s in ckpts if s >= t_generalize]
    if not before or not after:
        return None
    b = before[-1]
    return matched_step(id_hist, after, nearest_acc(id_hist, b)), b


def _jobs(client, runs: pd.DataFrame, *, within_run: bool, match: list[str], max_pairs: int, ood_below: float,
          id_at_least: float) -> list[tuple]:
    """(A run, A step, B run, B step) to compare."""
    from grokray import tracking
    jobs = []
    if within_run:
        for _, a in runs[runs["t_generalize"].notna()].iterrows():
            ck = sorted(tracking.checkpoints(client, a["run_id"]))
            steps = within_run_steps(_history(client, a["run_id"]), _history(client, a["run_id"], OOD_ACC), ck,
                                     a["t_generalize"], ood_below=ood_below, id_at_least=id_at_least)
            if steps:
                jobs.append((a, steps[0], a, steps[1]))
        return jobs[:max_pairs]
    for a, b in pick_pairs(runs, ood_below=ood_below, id_at_least=id_at_least, max_pairs=max_pairs, match=match):
        ha, hb = _history(client, a["run_id"]), _history(client, b["run_id"])
        cb = sorted(tracking.checkpoints(client, b["run_id"]))
        a_step = matched_step(ha, sorted(tracking.checkpoints(client, a["run_id"])), nearest_acc(hb, cb[-1]))
        jobs.append((a, a_step, b, cb[-1]))
    return jobs


def run(tracking_uri: str, sweep: str, max_pairs: int, n: int, ood_below: float, id_at_least: float,
        match: list[str] | None = None, within_run: bool = False) -> dict:
    import grokray
    from grokray import tracking
    runs = grokray.phase_map(sweep, tracking_uri=tracking_uri)
    runs = runs[runs["label"].notna()]
    client = tracking.existing_client(tracking_uri)
    match = match or GROUP
    jobs = _jobs(client, runs, within_run=within_run, match=match, max_pairs=max_pairs, ood_below=ood_below,
                 id_at_least=id_at_least)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (a, a_step, b, b_step) in enumerate(jobs):
            ha = _history(client, a["run_id"])
            pa = tracking.download_checkpoint(client, a["run_id"], a_step, f"{tmp}/{i}a")
            pb = tracking.download_checkpoint(client, b["run_id"], b_step, f"{tmp}/{i}b")
            entry = {"a": {**_describe(a), "step": int(a_step)}, "b": {**_describe(b), "step": int(b_step)},
                     "cell": {k: _plain(a[k]) for k in match if k in a},
                     "a_cell": {k: _plain(a[k]) for k in GROUP if k in a},
                     "b_cell": {k: _plain(b[k]) for k in GROUP if k in b},
                     "pair": _compare(pa, pb, ("A grokked OOD", "B did not" if not within_run else "B: A before it did"), n),
                     "interchange_id": {"a": _interchange_by_depth(pa), "b": _interchange_by_depth(pb)}}
            # The contrast: A against its own checkpoint before it composed ID, preferably one that had
            # memorized (same training accuracy, different paths), else the latest one below ID 0.3.
            ca = sorted(tracking.checkpoints(client, a["run_id"]))
            early = [s for s in ca if nearest_acc(ha, s) < 0.3]
            memorized = [s for s in early if s >= (a["t_memorize"] if a["t_memorize"] == a["t_memorize"] else np.inf)]
            if early:
                step = memorized[0] if memorized else early[-1]
                pe = tracking.download_checkpoint(client, a["run_id"], step, f"{tmp}/{i}e")
                entry["contrast"] = {**_compare(pa, pe, ("A", "A before it composed ID"), n), "step": int(step)}
            out.append(entry)
            p = entry["pair"]
            print(f"pair {i + 1}: {a['run_name']} @{a_step} vs {b['run_name']} @{b_step}: "
                  f"ID acc {p['id_accuracy']}, similarity {p['score']:.3f}"
                  + (f"; contrast {entry['contrast']['score']:.3f}" if "contrast" in entry else ""), flush=True)
    return {"what": "He et al.'s finding 1: ID inference paths of models that grokked OOD vs models that did not, "
                    "on the same data at matched ID accuracy (experiments/paths_pairs.py)",
            "sweep": sweep, "tracking_uri": tracking_uri,
            "selection": {"ood_below": ood_below, "id_at_least": id_at_least,
                          "same": "the same run before and after it generalized OOD" if within_run else match},
            "n_queries": n, "runs_considered": int(len(runs)),
            "graphs": sorted({int(e["a_cell"]["data.seed"]) for e in out if "data.seed" in e["a_cell"]}),
            "pairs": out}


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _tick(p: dict) -> str:
    """Graph, then A's and B's phi, augmentation and weight decay ("x vs y" where they differ)."""
    a = {**p["a_cell"], "wd": p["a"].get("train.weight_decay"), "step": p["a"]["step"]}
    b = {**p["b_cell"], "wd": p["b"].get("train.weight_decay"), "step": p["b"]["step"]}
    lines = [f"graph {b.get('data.seed')}"]
    for key, name in (("data.phi", "phi "), ("data.augmentation", ""), ("model", ""), ("wd", "wd "), ("step", "@")):
        if a.get(key) is None and b.get(key) is None:
            continue
        lines.append(f"{name}{a.get(key)}" if a.get(key) == b.get(key) else f"{name}{a.get(key)} vs {b.get(key)}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pairs = result["pairs"]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(pairs) + 2), 3.8))
    xs = np.arange(len(pairs))
    ax.bar(xs - 0.2, [p["pair"]["score"] for p in pairs], 0.4, label="A (grokked OOD) vs B (did not)")
    ax.bar(xs + 0.2, [p.get("contrast", {}).get("score", np.nan) for p in pairs], 0.4,
           label="A vs A before it composed ID (contrast)")
    ax.set_xticks(xs, [_tick(p) for p in pairs], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ID inference-path similarity")
    same = result["selection"]["same"]
    what = ("same data" if same == GROUP else same if isinstance(same, str) else "same " + ", ".join(same))
    ax.set_title(f"He et al.'s finding 1: {what}, matched ID accuracy", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = store_parser(__doc__, "phase-map", "experiments/results/paths_pairs.json", "docs/paths/pairs.png")
    ap.add_argument("--max-pairs", type=int, default=4)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--ood-below", type=float, default=0.3)
    ap.add_argument("--id-at-least", type=float, default=0.8)
    ap.add_argument("--same", nargs="+", default=GROUP, metavar="PARAM",
                    help="what a pair shares (default: graph, phi and augmentation: the same training data; "
                         "--same data.seed pairs any two runs on one graph, a looser match the result says)")
    ap.add_argument("--within-run", action="store_true",
                    help="pair each run that grokked OOD late with itself before it did (same data, same init, "
                         "matched ID accuracy): the strictest match")
    a = ap.parse_args(argv)
    from grokray.config import ConfigError
    try:
        result = run(a.tracking_uri, a.sweep, a.max_pairs, a.queries, a.ood_below, a.id_at_least, a.same, a.within_run)
    except ConfigError as e:
        print(f"paths_pairs: {e}", file=sys.stderr)
        return 2
    result["measured"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not result["pairs"]:
        print(f"no matched pair among {result['runs_considered']} labelled runs of {a.sweep!r} "
              "(needs, on one graph/phi/augmentation, a run that generalized OOD and one that composes ID only)")
        return 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1, default=_plain) + "\n")
    plot(result, a.png)
    print(f"wrote {a.out} and {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
