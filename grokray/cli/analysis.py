"""``grokray classify``, ``grokray paths``, ``grokray patching``: label runs, and look inside
checkpoints (an MLflow run's, or a local ``.pt`` file)."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from grokray.cli.common import UserError, add_tracking, check_output, count, existing_client, say_written
from grokray.contract import CHECKPOINT_DIR
from grokray.criteria import DEFAULT_CRITERION, REGISTRY
from grokray.errors import first_line


# --------------------------------------------------------------------------- classify

def add_classify(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--queries", type=count(1), default=200, help="queries for causal patching (default: 200)")
    p.add_argument("--json", action="store_true", help="print verdicts as JSON lines")
    add_tracking(p)


def run_classify(args: argparse.Namespace) -> int:
    from grokray.classify import RunNotClassifiable, classify_run, trial_runs

    if bool(args.run_ids) == (args.experiment is not None):
        raise UserError("give RUN_ID(s) or --experiment NAME (one of the two)")
    if args.experiment is not None and not args.experiment.strip():
        raise UserError("--experiment: an MLflow experiment name cannot be empty")
    client = existing_client(args.tracking_uri)
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


# --------------------------------------------------------------------------- paths and patching

def add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="MLflow run id or checkpoint file (.pt)")
    p.add_argument("run_b", metavar="RUN_B", help="MLflow run id or checkpoint file (.pt)")
    p.add_argument("--step-a", type=count(0), default=None, help="checkpoint step of RUN_A (default: last)")
    p.add_argument("--step-b", type=count(0), default=None, help="checkpoint step of RUN_B (default: last)")
    p.add_argument("--split", default="test_inferred_id",
                   help="queries to compare on (default: test_inferred_id; or train_inferred)")
    p.add_argument("--queries", type=count(1), default=300, help="number of queries (default: 300)")
    p.add_argument("--png", default=None, help="also draw the side-by-side heatmaps here")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    add_tracking(p)


def _resolve_checkpoint(ref: str, step: int | None, tracking_uri: str | None, tmp: str) -> str:
    from grokray import tracking

    if ref.endswith(".pt") or Path(ref).exists():
        if not Path(ref).exists():
            raise UserError(f"{ref}: checkpoint file not found")
        _check_checkpoint(ref)
        return ref
    client = existing_client(tracking_uri)
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
                        f"writes under {CHECKPOINT_DIR}/)")
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError) as e:
        raise UserError(f"{path}: not a grokray checkpoint ({first_line(e, 200)})") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path}: a torch file, but not a grokray checkpoint (no {', '.join(missing)})")


def run_paths(args: argparse.Namespace) -> int:
    from grokray.circuits.paths import compare_checkpoints

    check_output(args.png, "--png")
    with tempfile.TemporaryDirectory() as tmp:
        a = _resolve_checkpoint(args.run_a, args.step_a, args.tracking_uri, tmp + "/a")
        b = _resolve_checkpoint(args.run_b, args.step_b, args.tracking_uri, tmp + "/b")
        try:
            cmp = compare_checkpoints(a, b, split=args.split, n=args.queries,
                                      labels=(args.run_a[:12], args.run_b[:12]))
        except ValueError as e:
            raise UserError(first_line(e)) from None
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
    say_written([("heatmaps", args.png)], "heatmaps: --png FILE")
    return 0


def add_patching(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="MLflow run id or checkpoint file (.pt)")
    p.add_argument("--step", type=count(0), default=None, help="checkpoint step of RUN (default: last)")
    p.add_argument("--split", default="train_inferred",
                   help="queries to patch (default: train_inferred, as Wang et al.; or test_inferred_id / _ood)")
    p.add_argument("--queries", type=count(1), default=300, help="number of queries (default: 300)")
    p.add_argument("--all", action="store_true", help="also patch queries the model answers wrongly")
    p.add_argument("--png", default=None, help="also draw the heatmaps here")
    p.add_argument("--out", default=None, help="also write the flip-rate matrices here, as JSON")
    add_tracking(p)


def run_patching(args: argparse.Namespace) -> int:
    from grokray.circuits.patching import causal_patching
    from grokray.config import trial_config_from_dict
    from grokray.data import load_dataset
    from grokray.model import load_checkpoint

    check_output(args.png, "--png")
    check_output(args.out, "--out")
    with tempfile.TemporaryDirectory() as tmp:
        path = _resolve_checkpoint(args.run, args.step, args.tracking_uri, tmp)
        model, ckpt = load_checkpoint(path)
    dataset = load_dataset(trial_config_from_dict(ckpt["trial_config"]).data)
    step = ckpt.get("step")
    try:
        result = causal_patching(model, dataset, split=args.split, n=args.queries, only_correct=not args.all,
                                 step=step)
    except ValueError as e:  # an unknown or atomic split
        raise UserError(f"--split: {first_line(e)}") from None
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
    say_written([("heatmaps", args.png), ("matrices", args.out)],
                 "heatmaps: --png FILE; matrices as JSON: --out FILE")
    return 0
