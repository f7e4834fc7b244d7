"""Classifier cost per trial against that trial's training time; lens cost per evaluation.

For two trial shapes (the default trial and the tiny test trial, tests/specs/tiny_base.yaml),
one thread (as the sweep's classifier actor and trials run):

1. train the trial with MLflow tracking (``RunLogger``: metrics, checkpoints, history) into a
   temp sqlite store: ``training_seconds`` = the trainer's own wall time (``TrainResult.seconds``);
2. ``grokray.classify.classify_run(run, force=True, evidence=...)`` ``repeats`` times per evidence
   mode (``always``: the checkpoint examined, the cost of labelling a run that generalized, which
   is the figure the target is on; ``auto``: the sweep's default, which skips the checkpoint
   for runs whose curves did not generalize): seconds per call, and a
   breakdown from timers wrapped around its parts (monkeypatched here, grokray is not edited):
   history download, checkpoint download + load, dataset load, evidence (interchange + lens +
   causal patching), verdict, artifact/tag writes (plots included);
3. fraction = classifier seconds / training seconds. Target (issue): <= 5% for the default trial.

The default trial is 12,000 steps. The full mode trains it for ``--default-steps`` (1,500) and
EXTRAPOLATES the training time to 12,000 steps: 12,000 x (median train step) + (evaluations of
the 12k schedule) x (median evaluation incl. lens), each measured in this run. The classifier's
cost does not depend on the trial length except through the history size (stated in the JSON).

Also: the per-evaluation cost of ``grokray.circuits.lens.lens_metrics`` (and of the whole
``Trainer.evaluate``) interleaved with train steps, as a share of training time over the
default schedule.

    python -m benchmarks.classifier_cost          # full (~3 min quiet)
    python -m benchmarks.classifier_cost --quick  # smoke
"""
from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

from benchmarks import common as C

TIMERS: dict[str, float] = {}


def _timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            TIMERS[name] = TIMERS.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


#: The evidence part of a verdict: shortcut baselines, interchange test, lens, causal patching.
EVIDENCE = "evidence (interchange + lens + causal patching)"


def instrument() -> None:
    """Wrap the parts of classify_run with timers (module attributes it looks up at call time)."""
    import grokray.classify as cl
    import grokray.tracking as tr
    import grokray.tracking.runs as runs

    load_history = _timed("history_download", runs.load_history)
    checkpoints = _timed("checkpoint_listing", runs.checkpoints)
    for mod in (tr, runs):   # the classifier calls tracking's; the reading functions call each other in runs
        mod.load_history, mod.checkpoints = load_history, checkpoints
    cl.load_checkpoint = _timed("checkpoint_load", cl.load_checkpoint)
    cl.load_dataset = _timed("dataset_load", cl.load_dataset)
    cl.circuit_evidence = _timed(EVIDENCE, cl.circuit_evidence)
    cl.classify_history = _timed("verdict", cl.classify_history)
    cl.write_verdict = _timed("write (plots, artifacts, tags, metrics)", cl.write_verdict)


def time_generalized(where: str, repeats: int) -> dict:
    """Seconds of ``compute_verdict(evidence="always")`` on an existing run (``URI#RUN_ID``), which
    reads the run and writes nothing, against the run's own training wall time (its MLflow start
    to end: training, evaluations and logging, as the sweep ran it)."""
    from grokray import tracking
    from grokray.classify import compute_verdict

    uri, _, run_id = where.rpartition("#")
    client = tracking.existing_client(uri)
    run = client.get_run(run_id)
    train_s = (run.info.end_time - run.info.start_time) / 1000
    calls = []
    for _ in range(repeats):
        TIMERS.clear()
        t0 = time.perf_counter()
        verdict, _, history, _ = compute_verdict(client, run_id, evidence="always")
        calls.append(time.perf_counter() - t0)
    return {"run_id": run_id, "tracking_uri": uri, "label": verdict.label, "behaviour": verdict.behaviour,
            "steps": int(history[-1]["step"]), "training_seconds": train_s,
            "verdict_seconds": C.summarize(calls), "breakdown_last_call": dict(TIMERS),
            "fraction": C.median(calls) / train_s}


def main(argv=None) -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("--default-steps", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--generalized-run", default=None, metavar="URI#RUN_ID",
                    help="also time the verdict with its evidence (compute_verdict, which writes nothing) on a "
                         "finished run that generalized, e.g. a regimes sweep's true-grokking run: a model that "
                         "answers most queries gives the interchange test and patching their full query sets, "
                         "which a short unconverged run does not")
    args = ap.parse_args(argv)
    started, before = time.perf_counter(), C.snapshot()

    import torch

    from benchmarks.models import ROOT, default_config
    from grokray import tracking
    from grokray.circuits.lens import lens_metrics
    from grokray.classify import classify_run
    from grokray.config import load_trial_config
    from grokray.data import load_dataset
    from grokray.train import Trainer, eval_steps

    torch.set_num_threads(1)
    repeats = args.repeats or (1 if args.quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="grokray-bench-classify-"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    t0 = time.perf_counter()
    client = tracking.get_client(uri)
    client.search_experiments()  # migrations
    store_s = time.perf_counter() - t0
    exp = tracking.get_or_create_experiment(client, "bench")
    C.say(f"fresh sqlite store (migrations): {store_s:.1f} s")

    default_steps = 5 if args.quick else args.default_steps
    quick = ["train.max_steps=5", "train.eval_per_decade=1"] if args.quick else []
    trials = {"default": default_config(f"train.max_steps={default_steps}", *quick[1:]),
              "tiny": load_trial_config(ROOT / "tests" / "specs" / "tiny_base.yaml", ["train.threads=0", *quick])}
    instrument()
    out: dict = {"store_migration_seconds": store_s, "threads": 1, "trials": {}}
    for name, cfg in trials.items():
        ds = load_dataset(cfg.data)
        with tempfile.TemporaryDirectory() as work:
            trainer = Trainer(cfg, dataset=ds, work_dir=work)
            run_id = tracking.start_run(client, exp, f"bench-{name}")
            result = trainer.run([tracking.RunLogger(client, run_id)])
            client.set_terminated(run_id, status="FINISHED")
        train_s = result.seconds
        by_mode = {}
        for mode in ("always", "auto"):   # interleaved: always, auto, always, auto, ...
            by_mode[mode] = ([], [])
        for _ in range(repeats):
            for mode, (calls, parts) in by_mode.items():
                TIMERS.clear()
                t0 = time.perf_counter()
                outcome = classify_run(run_id, client=client, force=True, evidence=mode)
                calls.append(time.perf_counter() - t0)
                parts.append(dict(TIMERS))
                if mode == "always":
                    labelled = outcome
        auto_calls = by_mode["auto"][0]
        calls, parts = by_mode["always"]
        outcome = labelled
        cls_s = C.median(calls)
        breakdown = {k: C.median([p.get(k, 0.0) for p in parts]) for k in parts[0]}
        breakdown["other (run lookup, temp dirs, mlflow client)"] = cls_s - sum(breakdown.values())
        entry = {"max_steps_trained": cfg.train.max_steps, "steps_run": result.steps_run,
                 "n_evaluations": len(result.history), "training_seconds_measured": train_s,
                 "classifier_seconds": C.summarize(calls), "classifier_breakdown_seconds": breakdown,
                 "label": outcome.verdict.label, "behaviour": outcome.verdict.behaviour,
                 "fraction_measured": cls_s / train_s,
                 "classifier_seconds_evidence_auto": C.summarize(auto_calls),
                 "evidence_auto_vs_always": C.median(auto_calls) / cls_s}
        C.say(f"{name}: trained {result.steps_run} steps in {train_s:.1f} s; classify_run {cls_s:.2f} s with the "
              f"evidence ({100 * cls_s / train_s:.1f}% of this run), {C.median(auto_calls):.2f} s under auto "
              f"-> {outcome.verdict.label} ({outcome.verdict.behaviour})")
        for k, v in breakdown.items():
            C.say(f"    {k:<45} {v:6.2f} s")
        out["trials"][name] = entry

    # ---------------------------------------------------------------- per-step / per-eval costs, full schedule
    cfg = default_config()
    tc = cfg.train
    ds = load_dataset(cfg.data)
    tr = Trainer(cfg, dataset=ds)
    for _ in range(5):
        tr.train_step()
    n_steps = 2 if args.quick else 20

    def steps_fn():
        t0 = time.perf_counter()
        for _ in range(n_steps):
            tr.train_step()
        return (time.perf_counter() - t0) / n_steps

    def once(fn):
        def run():
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return run

    raw = C.interleave({"train_step": steps_fn, "evaluate (Trainer.evaluate, incl. lens)": once(tr.evaluate),
                        "lens_metrics": once(lambda: lens_metrics(tr.model, ds, tc.lens_sample, precision=tr.precision,
                                                                  device=tr.device))},
                       1 if args.quick else 7)
    step_s, eval_s, lens_s = (C.median(raw[k]) for k in raw)
    n_evals = len(eval_steps(tc.max_steps, tc.eval_per_decade, tc.eval_max_interval))
    train_12k = tc.max_steps * step_s + n_evals * eval_s
    d = out["trials"]["default"]
    d["training_seconds_extrapolated_to_default_length"] = train_12k
    d["extrapolation"] = (f"{tc.max_steps} x median train step ({step_s * 1000:.1f} ms) + {n_evals} evaluations x "
                          f"median Trainer.evaluate ({eval_s * 1000:.1f} ms), measured in this run; the classifier "
                          f"read a {d['n_evaluations']}-evaluation history instead of {n_evals}")
    d["fraction_default_length"] = C.median(d["classifier_seconds"]["raw"]) / train_12k
    out["per_evaluation"] = {
        "seconds": {k: C.summarize(v) for k, v in raw.items()},
        "default_schedule": {"max_steps": tc.max_steps, "n_evaluations": n_evals, "lens_sample": tc.lens_sample},
        "lens_share_of_training": n_evals * lens_s / (tc.max_steps * step_s),
        "evaluate_share_of_training": n_evals * eval_s / (tc.max_steps * step_s),
        "lens_vs_one_train_step": lens_s / step_s}
    C.say(f"per evaluation: Trainer.evaluate {eval_s * 1000:.1f} ms (lens {lens_s * 1000:.1f} ms), train step "
          f"{step_s * 1000:.1f} ms; over the default schedule ({n_evals} evals / {tc.max_steps} steps): evaluate "
          f"{100 * out['per_evaluation']['evaluate_share_of_training']:.2f}%, lens "
          f"{100 * out['per_evaluation']['lens_share_of_training']:.2f}% of training time")
    C.say(f"default trial: classifier {100 * d['fraction_default_length']:.2f}% of the extrapolated "
          f"{train_12k:.0f} s training; tiny trial: {100 * out['trials']['tiny']['fraction_measured']:.0f}%")
    out["target"] = {"what": "classifier with the evidence (evidence=always) <= 5% of the trial's training time "
                             "(default trial)", "ratio": 0.05,
                     "measured_default": d["fraction_default_length"],
                     "met": d["fraction_default_length"] <= 0.05,
                     "measured_tiny": out["trials"]["tiny"]["fraction_measured"]}
    if args.generalized_run:
        out["generalized_run"] = time_generalized(args.generalized_run, repeats)
        g = out["generalized_run"]
        out["target"]["measured_generalized_run"] = g["fraction"]
        C.say(f"generalized run {g['run_id'][:8]} ({g['label']}, {g['steps']} steps in {g['training_seconds']:.0f} s): "
              f"verdict with evidence {g['verdict_seconds']['median']:.2f} s = {100 * g['fraction']:.2f}% of its "
              f"training (+ writes ~{d['classifier_breakdown_seconds']['write (plots, artifacts, tags, metrics)']:.1f}"
              f" s, measured above)")
    C.write_result("classifier_cost", args, out, started, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
