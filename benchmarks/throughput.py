"""Training throughput (samples/s): grokray's ``Trainer.train_step`` against the papers'-style reference.

Variants (same model shape: the default trial, d_model 128, 4 heads, d_mlp 512, 1 block x 2 loops,
batch 512; same thread count for all):

* ``grokray_bf16``: grokray as shipped (bf16 autocast with matmul attention, data
  pre-tensorized, fused AdamW);
* ``grokray_fp32``: the same in fp32 (apples-to-apples with the reference);
* ``reference_fp32``: HF ``GPT2Block`` looped, ``DataLoader`` over python examples, AdamW
  defaults, fp32, as the papers ran it (see ``models.py``);
* ``grokray_before_bf16``: grokray before the fast path landed (SDPA under bf16, foreach AdamW;
  rebuilt by ``prototypes.py``), so the fast path's gain is measured in the same run;
* ``grokray_fp32_bf16mm``: the second fast-path candidate (prototype): fp32 model without autocast,
  oneDNN bf16 matmuls (fp32 accumulation), SDPA, fused AdamW;
* ``reference_sdpa_fp32`` (full mode only): the reference with transformers' current default
  attention (SDPA), so the eager-vs-SDPA part of the gap is visible;
* ``reference_pretensorized_fp32`` (full mode only, diagnostic): the reference model fed from one
  pre-built tensor instead of the DataLoader, so the data-pipeline part of the gap is visible.

Per thread count (1, then 2): warm-up steps (excluded), then ``rounds`` rounds; in each round
every variant runs ``steps`` steps back to back, in rotating order (A B C, B C A, ...).
Reported: median samples/s per variant, and ratios (median of per-round paired ratios).
Target (issue): grokray as shipped >= 3x the reference as shipped.

    python -m benchmarks.throughput            # full (~2-3 min quiet)
    python -m benchmarks.throughput --quick    # smoke
"""
from __future__ import annotations

import time

from benchmarks import common as C


def main(argv=None) -> int:
    ap = C.parser(__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="steps per variant per round")
    args = ap.parse_args(argv)
    started, before = time.perf_counter(), C.snapshot()

    import torch

    from benchmarks.prototypes import make_trainer
    from benchmarks.models import ReferenceTrainer, default_config
    from grokray.data import load_dataset
    from grokray.train import Trainer

    rounds = args.rounds or (2 if args.quick else 7)
    steps = args.steps or (2 if args.quick else 20)
    warmup = 1 if args.quick else 10
    threads = [int(t) for t in args.threads.split(",")]
    if args.quick:
        threads = threads[:1]

    cfg = default_config()
    dataset = load_dataset(cfg.data)
    B = cfg.train.batch_size
    runners = {
        "grokray_bf16": Trainer(default_config(precision="bf16"), dataset=dataset),
        "grokray_fp32": Trainer(default_config(precision="fp32"), dataset=dataset),
        "reference_fp32": ReferenceTrainer(cfg, dataset, attn="eager", precision="fp32"),
        "grokray_before_bf16": make_trainer(default_config(precision="bf16"), dataset, attention="sdpa",
                                            optimizer="foreach"),
        "grokray_fp32_bf16mm": make_trainer(default_config(precision="fp32"), dataset, optimizer="fused",
                                            matmul="bf16"),
    }
    if not args.quick:
        runners["reference_sdpa_fp32"] = ReferenceTrainer(cfg, dataset, attn="sdpa", precision="fp32")
        runners["reference_pretensorized_fp32"] = ReferenceTrainer(cfg, dataset, attn="eager", precision="fp32",
                                                                   pretensorized=True)
    assert runners["grokray_bf16"].precision == "bf16" and runners["grokray_fp32"].precision == "fp32"

    results = {}
    for nt in threads:
        torch.set_num_threads(nt)
        for r in runners.values():
            for _ in range(warmup):
                r.train_step()
        C.say(f"{nt} thread(s): {rounds} rounds x {steps} steps per variant")
        raw = C.interleave({n: C.rate(r.train_step, steps, B) for n, r in runners.items()}, rounds, log=C.say)
        summary = {n: C.summarize(v) for n, v in raw.items()}
        ratios = {
            "shipped_vs_reference (grokray_bf16 / reference_fp32)": C.paired_ratios(raw["grokray_bf16"],
                                                                                    raw["reference_fp32"]),
            "fp32_vs_reference (grokray_fp32 / reference_fp32)": C.paired_ratios(raw["grokray_fp32"],
                                                                                 raw["reference_fp32"]),
            "bf16_vs_fp32 (grokray_bf16 / grokray_fp32)": C.paired_ratios(raw["grokray_bf16"], raw["grokray_fp32"]),
            "before_vs_reference (grokray_before_bf16 / reference_fp32)": C.paired_ratios(
                raw["grokray_before_bf16"], raw["reference_fp32"]),
            "shipped_vs_before (grokray_bf16 / grokray_before_bf16)": C.paired_ratios(raw["grokray_bf16"],
                                                                                      raw["grokray_before_bf16"]),
            "fp32_bf16mm_vs_reference (grokray_fp32_bf16mm / reference_fp32)": C.paired_ratios(
                raw["grokray_fp32_bf16mm"], raw["reference_fp32"]),
            "fp32_bf16mm_vs_shipped (grokray_fp32_bf16mm / grokray_bf16)": C.paired_ratios(
                raw["grokray_fp32_bf16mm"], raw["grokray_bf16"]),
        }
        if "reference_sdpa_fp32" in raw:
            ratios["shipped_vs_reference_sdpa"] = C.paired_ratios(raw["grokray_bf16"], raw["reference_sdpa_fp32"])
            ratios["reference_eager_vs_sdpa"] = C.paired_ratios(raw["reference_fp32"], raw["reference_sdpa_fp32"])
            ratios["reference_pretensorized_vs_dataloader"] = C.paired_ratios(raw["reference_pretensorized_fp32"],
                                                                              raw["reference_fp32"])
            ratios["grokray_fp32_vs_reference_pretensorized (model+optimizer only)"] = C.paired_ratios(
                raw["grokray_fp32"], raw["reference_pretensorized_fp32"])
        results[f"threads_{nt}"] = {"threads": nt, "samples_per_s": summary, "ratios": ratios,
                                    "ms_per_step_median": {n: 1000 * B / s["median"] for n, s in summary.items()}}
        for n, s in summary.items():
            C.say(f"  {n:<22} {s['median']:>9.0f} samples/s  ({1000 * B / s['median']:.1f} ms/step)")
        for n, rr in ratios.items():
            C.say(f"  {n:<55} x{rr['median_of_paired']:.2f}")

    key = f"threads_{threads[0]}"
    headline = results[key]["ratios"]["shipped_vs_reference (grokray_bf16 / reference_fp32)"]["median_of_paired"]
    before_ratio = results[key]["ratios"]["before_vs_reference (grokray_before_bf16 / reference_fp32)"]["median_of_paired"]
    payload = {"config": {"model": cfg.model.__dict__, "batch_size": B, "rounds": rounds, "steps_per_round": steps,
                          "warmup_steps": warmup, "threads": threads},
               "results": results,
               "target": {"what": "grokray as shipped >= 3x reference as shipped (samples/s)", "ratio": 3.0,
                          f"measured_{key}": headline, "met": headline >= 3.0,
                          f"before_fast_path_{key}": before_ratio,
                          f"fp32_bf16mm_prototype_{key}": results[key]["ratios"][
                              "fp32_bf16mm_vs_reference (grokray_fp32_bf16mm / reference_fp32)"]["median_of_paired"]}}
    C.write_result("throughput", args, payload, started, before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
