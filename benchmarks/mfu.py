"""Achieved FLOP/s of a grokray training step against the matmul peak measured in the same run (MFU),
and where a step's time goes (torch.profiler top ops).

FLOPs per step are counted analytically (``models.step_flops``; matmuls only, forward +
backward = 6 x weights x tokens, plus attention QK^T / AV) and cross-checked with
``torch.utils.flop_counter.FlopCounterMode`` (which does not count SDPA on CPU: the
difference is exactly the attention term).

Peaks, same thread count as the step: a large square ``torch.mm`` (n=2048) in fp32 and in bf16;
and a "shape-limited" peak: every matmul of one step at the step's own shapes
(M = B x T = 1536 tokens by 128/384/512 wide), timed alone; the rest of a step is overhead.
Variants interleaved: peak_fp32, peak_bf16, step matmuls fp32/bf16, steps (shipped bf16,
shipped fp32, grokray before the fast path: bf16 autocast with SDPA + foreach AdamW, and fp32 with
oneDNN bf16 matmuls + fused AdamW).

Target (issue): a step at >= 50% of the measured fp32 matmul peak.

    python -m benchmarks.mfu           # full (~2 min quiet)
    python -m benchmarks.mfu --quick   # smoke
"""
from __future__ import annotations

import time

from benchmarks import common as C

CATEGORIES = [  # (category, predicate on the profiler op name), first match wins
    ("matmul", lambda n: n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (sdpa kernels)", lambda n: "scaled_dot_product" in n),
    ("optimizer", lambda n: n.startswith("Optimizer.") or "_foreach" in n or "_fused_adam" in n
     or n in ("aten::lerp_", "aten::sqrt", "aten::addcdiv_", "aten::addcmul_", "aten::div_", "aten::mul_")),
    ("gelu", lambda n: "gelu" in n),
    ("layer_norm", lambda n: "layer_norm" in n),
    ("softmax / masking", lambda n: "softmax" in n or "masked_fill" in n),
    ("dtype casts (autocast)", lambda n: n in ("aten::copy_", "aten::_to_copy", "aten::to")),
]


def categorize(name: str) -> str:
    for cat, pred in CATEGORIES:
        if pred(name):
            return cat
    return "other (adds, views, indexing, embedding, loss, autograd glue)"


def main(argv=None) -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args(argv)
    started, before = time.perf_counter(), C.snapshot()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.prototypes import make_trainer
    from benchmarks.models import default_config, step_flops
    from grokray.data import load_dataset

    rounds = 2 if args.quick else 7
    steps = 2 if args.quick else 20
    n_mm = 512 if args.quick else 2048
    threads = [int(t) for t in args.threads.split(",")][:1 if args.quick else None]

    cfg = default_config()
    ds = load_dataset(cfg.data)
    B, T = cfg.train.batch_size, 3
    flops = step_flops(cfg, ds.vocab_size)
    # shipped = grokray's own rule (matmul attention under bf16, SDPA in fp32; fused AdamW);
    # before = grokray before the fast path (SDPA always, foreach AdamW), rebuilt by benchmarks.prototypes.
    tr = {"step_shipped_bf16": make_trainer(cfg, ds, attention="auto", optimizer="fused"),
          "step_shipped_fp32": make_trainer(default_config(precision="fp32"), ds, attention="auto", optimizer="fused"),
          "step_before_bf16": make_trainer(cfg, ds),
          "step_fp32_bf16mm": make_trainer(default_config(precision="fp32"), ds, optimizer="fused", matmul="bf16")}
    with FlopCounterMode(display=False) as fc:
        tr["step_shipped_fp32"].train_step()
    counted = fc.get_total_flops()
    flops["flop_counter_mode"] = counted
    flops["flop_counter_note"] = ("FlopCounterMode counts mm/addmm only here (no SDPA on CPU); "
                                  f"analytic minus attention = {flops['total'] - flops['attention_qk_av']}")

    # The step's matmuls at the step's shapes: for each Linear (in -> out) over M rows:
    # forward M x in @ in x out, grad-input M x out @ out x in, grad-weight out x M @ M x in.
    m = cfg.model
    d, f, V, apps = m.d_model, m.d_mlp, ds.vocab_size, m.n_layers * m.n_loops
    linears = [(B * T, d, 3 * d), (B * T, d, d), (B * T, d, f), (B * T, f, d)] * apps + [(B, d, V)]
    shapes = []
    for M, i, o in linears:
        shapes += [(M, i, o), (M, o, i), (o, M, i)]
    shape_flops = sum(2 * a * b * c for a, b, c in shapes)

    def mats(dtype):
        return [(torch.randn(a, b, dtype=dtype), torch.randn(b, c, dtype=dtype)) for a, b, c in shapes]

    sq = {dt: (torch.randn(n_mm, n_mm, dtype=dt), torch.randn(n_mm, n_mm, dtype=dt))
          for dt in (torch.float32, torch.bfloat16)}
    sm = {dt: mats(dt) for dt in (torch.float32, torch.bfloat16)}

    def peak(dt):
        a, b = sq[dt]
        reps = 2 if args.quick else 6

        return C.rate(lambda: torch.mm(a, b), reps, 2 * n_mm ** 3)

    def shape_mm(dt):
        return C.rate(lambda: [torch.mm(a, b) for a, b in sm[dt]], steps, shape_flops)

    def step(t):
        return C.rate(t.train_step, steps, flops["total"])

    variants = {"peak_mm_fp32": peak(torch.float32), "peak_mm_bf16": peak(torch.bfloat16),
                "step_shapes_mm_fp32": shape_mm(torch.float32), "step_shapes_mm_bf16": shape_mm(torch.bfloat16),
                **{n: step(t) for n, t in tr.items()}}
    results = {}
    for nt in threads:
        torch.set_num_threads(nt)
        for fn in variants.values():
            fn()  # warm-up
        C.say(f"{nt} thread(s): FLOP/s, {rounds} interleaved rounds")
        raw = C.interleave(variants, rounds)
        med = {n: C.median(v) for n, v in raw.items()}
        mfu = {}
        for s in tr:
            mfu[s] = {"vs_peak_fp32": C.paired_ratios(raw[s], raw["peak_mm_fp32"])["median_of_paired"],
                      "vs_peak_bf16": C.paired_ratios(raw[s], raw["peak_mm_bf16"])["median_of_paired"],
                      "vs_step_shapes_mm_same_dtype": C.paired_ratios(
                          raw[s], raw["step_shapes_mm_fp32" if s == "step_shipped_fp32" else "step_shapes_mm_bf16"]
                      )["median_of_paired"],
                      "ms_per_step": 1000 * flops["total"] / med[s]}
        results[f"threads_{nt}"] = {"gflops_per_s": {n: {**C.summarize([x / 1e9 for x in v])} for n, v in raw.items()},
                                    "mfu": mfu}
        for n, v in med.items():
            C.say(f"  {n:<22} {v / 1e9:8.1f} GFLOP/s")
        for s, r in mfu.items():
            C.say(f"  {s:<20} {r['ms_per_step']:.1f} ms/step  MFU vs fp32 peak {100 * r['vs_peak_fp32']:.0f}%, "
                  f"vs bf16 peak {100 * r['vs_peak_bf16']:.0f}%, vs its own matmuls alone "
                  f"{100 * r['vs_step_shapes_mm_same_dtype']:.0f}%")

    # ---------------------------------------------------------------- profile
    torch.set_num_threads(threads[0])
    prof_steps = 3 if args.quick else 20
    profiles = {}
    for name, t in tr.items():
        for _ in range(2):
            t.train_step()
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(prof_steps):
                t.train_step()
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in p.key_averages()]
        total = sum(r[1] for r in rows)
        rows.sort(key=lambda r: -r[1])
        top = [{"op": k, "self_ms_per_step": us / 1000 / prof_steps, "share": us / total,
                "calls_per_step": c / prof_steps} for k, us, c in rows[:10]]
        cats: dict[str, float] = {}
        for k, us, _ in rows:
            c = categorize(k)
            cats[c] = cats.get(c, 0.0) + us / total
        profiles[name] = {"threads": threads[0], "profiled_steps": prof_steps,
                          "self_cpu_ms_per_step_total": total / 1000 / prof_steps, "top10": top,
                          "categories_share": dict(sorted(cats.items(), key=lambda kv: -kv[1]))}
        C.say(f"profile {name} ({threads[0]} thread): {total / 1000 / prof_steps:.1f} ms self CPU per step")
        for r in top:
            C.say(f"    {r['op'][:48]:<48} {r['self_ms_per_step']:6.2f} ms  {100 * r['share']:5.1f}%")
        C.say("    by category: " + ", ".join(f"{c} {100 * s:.0f}%" for c, s in profiles[name]["categories_share"].items()))

    key = f"threads_{threads[0]}"
    payload = {"flops_per_step": flops, "step_shapes_mm": {"n_matmuls": len(shapes), "flops": shape_flops},
               "peak_square_n": n_mm, "config": {"rounds": rounds, "steps": steps, "threads": threads},
               "results": results, "profile": profiles,
               "target": {"what": "a step at >= 50% of the measured fp32 matmul peak", "ratio": 0.5,
                          **{f"{s}_{key}": results[key]["mfu"][s]["vs_peak_fp32"] for s in tr},
                          "met_shipped_bf16": results[key]["mfu"]["step_shipped_bf16"]["vs_peak_fp32"] >= 0.5,
                          "met_shipped_fp32": results[key]["mfu"]["step_shipped_fp32"]["vs_peak_fp32"] >= 0.5}}
    C.write_result("mfu", args, payload, started, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
