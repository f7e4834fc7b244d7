"""Fast-path prototypes for grokray's trainer, measured side by side against the shipped code.

Every prototype lives in ``prototypes.py`` and is applied per instance (monkeypatch / subclass),
so the shipped trainer and the prototypes run interleaved in one process:

A. train step (default trial, batch 512), samples/s, 1 and 2 threads:
   ``shipped`` (bf16 autocast, SDPA, foreach AdamW) vs ``attn_manual`` (matmul attention under
   bf16), ``adamw_fused``, ``fast`` (both), ``fast_ftz`` (both + flush denormals); and in fp32
   ``shipped_fp32`` vs ``fp32_fused`` (SDPA kept: it is the fast one in fp32); and
   ``fp32_bf16mm`` (fp32 model, no autocast, oneDNN bf16 matmuls, SDPA, fused AdamW) against
   ``shipped`` (the candidate for "bf16 everywhere it pays, fp32 elsewhere").
B. evaluation (``grokray.train.evaluate``) and the logit lens (``lens_metrics``) per call, shipped
   vs manual attention vs one batched forward; projected share of a default 12k-step trial.
C. correctness: the shipped trainer and the fast path trained from the same seed for the same
   steps through ``Trainer.run()`` (evaluations, lens included); every logged metric compared.
   Yardstick: the shipped bf16 run against the shipped fp32 run (the precision noise grokray
   already accepts). Also: both models at identical weights, metrics compared (pure numerics).

    python -m benchmarks.fastpath          # full (~4 min quiet)
    python -m benchmarks.fastpath --quick  # smoke
"""
from __future__ import annotations

import math
import time

from benchmarks import common as C


def _ftz(fn):
    import torch

    def run():
        torch.set_flush_denormal(True)
        try:
            return fn()
        finally:
            torch.set_flush_denormal(False)
    return run


def main(argv=None) -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile(model.residual) on the fast path (first step compiles: 15-50 s)")
    ap.add_argument("--check-steps", type=int, default=None, help="steps of the correctness runs (C)")
    args = ap.parse_args(argv)
    started, before = time.perf_counter(), C.snapshot()

    import torch

    from benchmarks.prototypes import bf16_matmul, evaluate_batched, make_trainer
    from benchmarks.models import default_config
    from grokray.circuits.lens import lens_metrics
    from grokray.data import load_dataset
    from grokray.train import eval_steps, evaluate

    rounds = 2 if args.quick else 7
    steps = 2 if args.quick else 20
    warmup = 1 if args.quick else 10
    threads = [int(t) for t in args.threads.split(",")][:1 if args.quick else None]
    check_steps = args.check_steps or (4 if args.quick else 1000)

    cfg = default_config()
    cfg32 = default_config(precision="fp32")
    ds = load_dataset(cfg.data)
    B = cfg.train.batch_size
    out: dict = {"config": {"rounds": rounds, "steps_per_round": steps, "warmup": warmup, "threads": threads,
                            "check_steps": check_steps}}

    # ---------------------------------------------------------------- A: train step
    tr = {"shipped": make_trainer(cfg, ds), "attn_manual": make_trainer(cfg, ds, attention="auto"),
          "adamw_fused": make_trainer(cfg, ds, optimizer="fused"),
          "fast": make_trainer(cfg, ds, attention="auto", optimizer="fused"),
          "shipped_fp32": make_trainer(cfg32, ds), "fp32_fused": make_trainer(cfg32, ds, attention="auto",
                                                                                optimizer="fused"),
          "fp32_bf16mm": make_trainer(cfg32, ds, optimizer="fused", matmul="bf16")}

    compile_s = None
    if args.compile:
        tr["fast_compiled"] = make_trainer(cfg, ds, attention="auto", optimizer="fused")
        tr["fast_compiled"].model.residual = torch.compile(tr["fast_compiled"].model.residual)
        torch.set_num_threads(threads[0])
        t0 = time.perf_counter()
        tr["fast_compiled"].train_step()
        compile_s = time.perf_counter() - t0
        C.say(f"torch.compile first step: {compile_s:.1f} s")
    out["compile_first_step_seconds"] = compile_s
    variants = {n: C.rate(t.train_step, steps, B) for n, t in tr.items()}
    variants["fast_ftz"] = _ftz(C.rate(tr["fast"].train_step, steps, B))
    step_results = {}
    for nt in threads:
        torch.set_num_threads(nt)
        for t in tr.values():
            for _ in range(warmup):
                t.train_step()
        C.say(f"A. train step, {nt} thread(s)")
        raw = C.interleave(variants, rounds, log=C.say)
        vs = {n: C.paired_ratios(raw[n], raw["shipped"]) for n in raw if n != "shipped" and "fp32" not in n}
        vs["fp32_bf16mm"] = C.paired_ratios(raw["fp32_bf16mm"], raw["shipped"])
        vs["fp32_bf16mm vs fast"] = C.paired_ratios(raw["fp32_bf16mm"], raw["fast"])
        vs["fp32_fused vs shipped_fp32"] = C.paired_ratios(raw["fp32_fused"], raw["shipped_fp32"])
        step_results[f"threads_{nt}"] = {"samples_per_s": {n: C.summarize(v) for n, v in raw.items()},
                                         "ratio_vs_shipped": vs}
        for n, v in raw.items():
            C.say(f"  {n:<14} {C.median(v):>8.0f} samples/s ({1000 * B / C.median(v):.1f} ms/step)")
        for n, r in vs.items():
            C.say(f"  {n:<28} x{r['median_of_paired']:.3f}")
    out["train_step"] = step_results

    # ---------------------------------------------------------------- A2: the optimizer step alone
    torch.set_num_threads(threads[0])
    opt_raw = {}
    base = tr["shipped"]
    groups = [{"params": [p.detach().clone().requires_grad_() for p in g["params"]],
               "weight_decay": g["weight_decay"]} for g in base.optimizer.param_groups]
    for g in groups:
        for p in g["params"]:
            p.grad = torch.randn_like(p) * 1e-3
    opts = {k: torch.optim.AdamW([{**g, "params": [p for p in g["params"]]} for g in groups], lr=1e-3,
                                 betas=cfg.train.betas, **kw)
            for k, kw in (("foreach (shipped)", {"foreach": True}), ("fused", {"fused": True}),
                          ("for-loop (torch default on CPU)", {"foreach": False}))}

    def opt_time(o):
        def run():
            t0 = time.perf_counter()
            for _ in range(20):
                o.step()
            return (time.perf_counter() - t0) / 20
        return run
    for o in opts.values():
        o.step()
    opt_raw = C.interleave({k: opt_time(o) for k, o in opts.items()}, rounds)
    out["optimizer_step_alone"] = {
        "seconds_per_step": {k: C.summarize(v) for k, v in opt_raw.items()},
        "fused_over_foreach_time": C.paired_ratios(opt_raw["fused"], opt_raw["foreach (shipped)"]),
        "share_of_shipped_step": C.median(opt_raw["foreach (shipped)"]) * C.median(
            step_results[f"threads_{threads[0]}"]["samples_per_s"]["shipped"]["raw"]) / B}
    C.say("A2. AdamW step alone: " + ", ".join(f"{k} {1000 * C.median(v):.2f} ms" for k, v in opt_raw.items())
          + f"; foreach = {100 * out['optimizer_step_alone']['share_of_shipped_step']:.1f}% of a shipped step")

    # ---------------------------------------------------------------- B: evaluation and lens
    torch.set_num_threads(threads[0])
    a, f = tr["shipped"], tr["fast"]
    f.model.load_state_dict(a.model.state_dict())
    lens_n = cfg.train.lens_sample

    def call(fn):
        def run():
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        return run

    ev = {"evaluate_shipped": call(lambda: evaluate(a.model, a.probes, a.precision, a.device)),
          "evaluate_manual_attn": call(lambda: evaluate(f.model, f.probes, f.precision, f.device)),
          "evaluate_batched_manual_attn": call(lambda: evaluate_batched(f.model, f.probes, f.precision, f.device)),
          "lens_shipped": call(lambda: lens_metrics(a.model, ds, lens_n, precision=a.precision, device=a.device)),
          "lens_manual_attn": call(lambda: lens_metrics(f.model, ds, lens_n, precision=f.precision, device=f.device)),
          "train_step_shipped": call(a.train_step), "train_step_fast": call(f.train_step)}
    for fn in ev.values():
        fn()
    C.say("B. evaluation / lens per call")
    raw = C.interleave(ev, max(3, rounds), log=None)
    med = {n: C.median(v) for n, v in raw.items()}
    tc = cfg.train
    n_evals = len(eval_steps(tc.max_steps, tc.eval_per_decade, tc.eval_max_interval))

    def share(eval_s, step_s):
        return n_evals * eval_s / (tc.max_steps * step_s)
    out["evaluation"] = {
        "seconds_per_call": {n: C.summarize(v) for n, v in raw.items()},
        "default_trial": {"max_steps": tc.max_steps, "n_evaluations": n_evals, "lens_sample": lens_n,
                          "probe_sizes": {k: len(b) for k, b in a.probes.items()}},
        "share_of_training_time": {
            "shipped: (evaluate + lens) / train steps": share(med["evaluate_shipped"] + med["lens_shipped"],
                                                              med["train_step_shipped"]),
            "shipped: lens only / train steps": share(med["lens_shipped"], med["train_step_shipped"]),
            "fast: (evaluate + lens) / train steps": share(med["evaluate_manual_attn"] + med["lens_manual_attn"],
                                                           med["train_step_fast"])},
        "ratios": {"evaluate manual/shipped": C.paired_ratios(raw["evaluate_manual_attn"], raw["evaluate_shipped"]),
                   "evaluate batched/shipped": C.paired_ratios(raw["evaluate_batched_manual_attn"],
                                                               raw["evaluate_shipped"]),
                   "lens manual/shipped": C.paired_ratios(raw["lens_manual_attn"], raw["lens_shipped"])}}
    for n, v in med.items():
        C.say(f"  {n:<30} {1000 * v:8.1f} ms")
    for n, v in out["evaluation"]["share_of_training_time"].items():
        C.say(f"  {n:<45} {100 * v:.1f}%")

    # ---------------------------------------------------------------- C: correctness
    C.say(f"C. correctness: same weights, then {check_steps}-step runs (shipped bf16, fast bf16, shipped fp32)")
    f.model.load_state_dict(a.model.state_dict())  # B trained both further: make the weights identical again
    m1 = {**evaluate(a.model, a.probes, a.precision, a.device),
          **lens_metrics(a.model, ds, lens_n, precision=a.precision, device=a.device)}
    m2 = {**evaluate(f.model, f.probes, f.precision, f.device),
          **lens_metrics(f.model, ds, lens_n, precision=f.precision, device=f.device)}
    m3 = evaluate_batched(f.model, f.probes, f.precision, f.device)
    g = tr["fp32_bf16mm"]
    g.model.load_state_dict(a.model.state_dict())
    with bf16_matmul():
        m4 = {**evaluate(g.model, g.probes, "fp32", g.device),
              **lens_metrics(g.model, ds, lens_n, precision="fp32", device=g.device)}
    m1, m2, m3, m4 = ({"step": 0, **m} for m in (m1, m2, m3, m4))
    same_w = {"max_abs_diff_fast_vs_shipped": _maxdiff([m1], [m2]),
              "max_abs_diff_batched_eval_vs_shipped": _maxdiff([{k: m1[k] for k in m3}], [m3]),
              "max_abs_diff_fp32_bf16mm_vs_shipped": _maxdiff([m1], [m4])}

    def run(c, **kw):
        c = default_config(f"train.max_steps={check_steps}", precision=c)
        t = make_trainer(c, ds, **kw)
        t0 = time.perf_counter()
        res = t.run()
        return res.history, time.perf_counter() - t0

    h_ship, s_ship = run("bf16")
    h_fast, s_fast = run("bf16", attention="auto", optimizer="fused")
    h_32, s_32 = run("fp32")
    h_mm, s_mm = run("fp32", optimizer="fused", matmul="bf16")
    final = {k: {"shipped_bf16": h_ship[-1].get(k), "fast_bf16": h_fast[-1].get(k), "shipped_fp32": h_32[-1].get(k),
                 "fp32_bf16mm": h_mm[-1].get(k)}
             for k in ("acc/train", "acc/id_atomic", "acc/test_inferred_id", "acc/test_inferred_ood", "loss/train",
                       "train_loss", "lens/id/bridge_found", "lens/ood/bridge_found", "param_norm")}
    d_fast, d_32, d_mm = _maxdiff(h_ship, h_fast), _maxdiff(h_ship, h_32), _maxdiff(h_ship, h_mm)
    out["correctness"] = {
        "same_weights": same_w,
        "training_runs": {"steps": check_steps, "wall_seconds": {"shipped_bf16": s_ship, "fast_bf16": s_fast,
                                                                 "shipped_fp32": s_32, "fp32_bf16mm": s_mm},
                          "final_metrics": final,
                          "max_abs_diff_over_history": {"fast_bf16 vs shipped_bf16": d_fast,
                                                        "shipped_fp32 vs shipped_bf16 (yardstick)": d_32,
                                                        "fp32_bf16mm vs shipped_bf16": d_mm},
                          "verdict": _verdict(d_fast, d_32),
                          "verdict_fp32_bf16mm": _verdict(d_mm, d_32)}}
    C.say(f"  same weights: max |diff| acc {same_w['max_abs_diff_fast_vs_shipped']['acc']:.4f}, "
          f"loss {same_w['max_abs_diff_fast_vs_shipped']['loss']:.2e}")
    C.say(f"  runs: fast vs shipped {d_fast}; fp32 vs shipped (yardstick) {d_32}")
    C.say(f"  fp32_bf16mm vs shipped {d_mm}")
    C.say(f"  verdict: {out['correctness']['training_runs']['verdict']}; fp32_bf16mm: "
          f"{out['correctness']['training_runs']['verdict_fp32_bf16mm']}")
    C.write_result("fastpath", args, out, started, before)
    return 0


def _maxdiff(h1: list[dict], h2: list[dict]) -> dict[str, float]:
    """Max |a-b| over matching steps, grouped by metric family (acc, loss, lens, other)."""
    by_step = {e["step"]: e for e in h2}
    out = {"acc": 0.0, "loss": 0.0, "lens": 0.0, "param_norm_rel": 0.0}
    for e in h1:
        o = by_step.get(e["step"])
        if o is None:
            continue
        for k, v in e.items():
            w = o.get(k)
            if k in ("step", "lr") or k.startswith("time/") or w is None or not all(map(math.isfinite, (v, w))):
                continue
            fam = ("acc" if k.startswith("acc/") else "loss" if "loss" in k else "lens" if k.startswith("lens/")
                   else "param_norm_rel" if k == "param_norm" else None)
            if fam is None:
                continue
            d = abs(v - w) / (abs(v) if fam == "param_norm_rel" else 1.0)
            out[fam] = max(out[fam], d)
    return {k: round(v, 6) for k, v in out.items()}


def _verdict(d_fast: dict, d_yard: dict) -> str:
    worse = [k for k in d_fast if d_fast[k] > max(d_yard[k], 1e-3) * 1.5]
    if not worse:
        return "fast path within the bf16-vs-fp32 noise of the shipped trainer on every metric family"
    return f"fast path differs more than the bf16-vs-fp32 yardstick on: {', '.join(worse)} (inspect)"


if __name__ == "__main__":
    raise SystemExit(main())
