"""The trained negative control: do the bridge tests separate answers that compose from answers that do not?

Issue 19: the interchange threshold had never met a model that does not compose. This study trains
one, and composing controls beside it, on two graphs, and measures both bridge tests on each:

* **negative control** (``data.memorize_ood_queries: 2000``): the OOD test queries are trained as
  whole queries from step 2,000 (after memorization), their first-hop atomic facts never
  (``nc``), or their first AND second hops never (``nc2``, ``data.withhold_hop2: true``). A right OOD
  answer is a memorized whole query; the same model composes its ID test queries (their facts are
  trained), so its ID answers are the composing side measured on the very same weights;
* **composing control**: the default trial with both-hop augmentation (``both_full``), which
  groks OOD through the bridge.

For every run: the label (today's classifier), and on the OOD and ID test splits the interchange
test (:mod:`grokray.circuits.interchange`) and the bridge-carry test (:mod:`grokray.circuits.carry`),
in the precision the run trained in. Output: ``experiments/results/negative_control.json`` and
``docs/calibration/negative_control.png`` (both tests' values, composing vs not, with the thresholds).

    # the runs (default trial, 12,000 / 10,000 steps, one thread each; ~5 min each on this CPU):
    for ds in 0 1; do
      grokray train sweeps/trials/default.yaml --experiment negative-control --set data.seed=$ds \\
          --set data.memorize_ood_queries=2000 --run-name nc-ds$ds-s0
      grokray train sweeps/trials/default.yaml --experiment negative-control --set data.seed=$ds \\
          --set data.memorize_ood_queries=2000 --set data.withhold_hop2=true --run-name nc2-ds$ds-s0
      grokray train sweeps/trials/default.yaml --experiment composing-control --set data.seed=$ds \\
          --set data.augmentation=both_full --set train.max_steps=10000 --run-name both-ds$ds-s0
    done
    grokray classify --experiment negative-control --evidence always
    grokray classify --experiment composing-control --evidence always
    python -m experiments.negative_control --tracking-uri sqlite:///$PWD/mlflow.db
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("negative-control", "composing-control")
SPLITS = {"ood": "test_inferred_ood", "id": "test_inferred_id"}


def measure(tracking_uri: str, n: int = 200) -> list[dict]:
    import torch

    from grokray import tracking
    from grokray.circuits.carry import carry_test
    from grokray.circuits.interchange import interchange_test
    from grokray.config import trial_config_from_dict
    from grokray.data import load_dataset
    from grokray.device import resolve_precision
    from grokray.model import load_checkpoint

    torch.set_num_threads(1)
    Tag, V = tracking.Tag, tracking.VERDICT_PREFIX
    client = tracking.existing_client(tracking_uri)
    rows = []
    for exp in EXPERIMENTS:
        e = client.get_experiment_by_name(exp)
        if e is None:
            continue
        for run in sorted(client.search_runs([e.experiment_id]), key=lambda r: r.info.run_name or ""):
            if run.info.status != "FINISHED":
                continue
            with tempfile.TemporaryDirectory() as tmp:
                model, meta = load_checkpoint(tracking.download_checkpoint(client, run.info.run_id, "last", tmp))
            cfg = trial_config_from_dict(meta["trial_config"])
            ds = load_dataset(cfg.data)
            precision = resolve_precision(cfg.train.precision, torch.device("cpu"))
            tags, metrics = run.data.tags, run.data.metrics
            row = {"experiment": exp, "run": run.info.run_name, "run_id": run.info.run_id,
                   "graph": cfg.data.seed, "seed": cfg.seed,
                   "construction": ("first and second hops withheld" if cfg.data.withhold_hop2 else
                                    "first hops withheld" if cfg.data.memorize_ood_queries is not None else
                                    f"augmentation {cfg.data.augmentation_name()}"),
                   "label": tags.get(Tag.LABEL), "detail": tags.get(Tag.DETAIL),
                   "labels": {k[len(Tag.LABEL_BY_PREFIX):]: v for k, v in tags.items()
                              if k.startswith(Tag.LABEL_BY_PREFIX)},
                   "classifier_version": tags.get(Tag.CLASSIFIER_VERSION),
                   "t_memorize": metrics.get(f"{V}t_memorize"), "t_generalize": metrics.get(f"{V}t_generalize"),
                   "final_ood_acc": metrics.get("acc/test_inferred_ood"), "final_id_acc": metrics.get("acc/test_inferred_id")}
            for short, split in SPLITS.items():
                ic = interchange_test(model, ds, split, n=n, precision=precision)
                ca = carry_test(model, ds, split, n=n, precision=precision)
                # composes? the control's OOD answers are memorized whole; every other answer here composes
                composes = not (cfg.data.memorize_ood_queries is not None and short == "ood")
                row[short] = {"composes": composes, "interchange": ic.best, "interchange_n": ic.n_queries,
                              "carry": ca.best, "carry_n": ca.n_queries}
            rows.append(row)
            print(f"{row['run']:<14} {row['construction']:<32} {row['label']} ({row['detail']})  "
                  + "  ".join(f"{s}: interchange {row[s]['interchange']}, carry {row[s]['carry']}" for s in SPLITS),
                  flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    from grokray.plots import plt
    from grokray.verdict import VerdictParams

    p = VerdictParams()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110, sharey=True)
    for ax, (test, bar) in zip(axes, (("interchange", p.interchange_min), ("carry", p.carry_min))):
        for composes, colour, x0 in ((True, "#009E73", 0), (False, "#E69F00", 1)):
            vals = [r[s][test] for r in rows for s in SPLITS if r[s]["composes"] == composes and r[s][test] is not None]
            xs = [x0 + 0.08 * ((i % 5) - 2) for i in range(len(vals))]
            ax.scatter(xs, vals, color=colour, s=28, zorder=3, edgecolor="0.2", linewidth=0.5)
        ax.axhline(bar, color="0.3", ls="--", lw=1)
        ax.text(1.45, bar, f"threshold {bar:g}", va="bottom", ha="right", fontsize=8)
        ax.set_xticks([0, 1], ["answers that compose\n(ID; OOD of both_full runs)",
                               "answers memorized whole\n(negative control, OOD)"], fontsize=8)
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{test} test", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("success (best depth)", fontsize=9)
    n_runs = len(rows)
    graphs = sorted({r["graph"] for r in rows})
    fig.suptitle(f"Bridge tests on composing vs memorized answers ({n_runs} runs, graphs {graphs})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default=None, help="the store holding the runs (default: ./mlflow.db)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "negative_control.json"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "calibration" / "negative_control.png"))
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    rows = measure(args.tracking_uri, args.queries)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": rows, "command": "python -m experiments.negative_control",
                                          "queries": args.queries}, indent=1))
    plot(rows, Path(args.png))
    print(f"wrote {args.out} and {args.png}")


if __name__ == "__main__":
    main()
