"""Print the headline figures of ``benchmarks/results/*.json`` as a Markdown table (for the README).

    python -m benchmarks.summarize [RESULTS_DIR]

Reads the current result of each benchmark (``<name>.json``; ``sweep_overhead_<steps>.json``,
one per trial length), never ``results/archive/`` (superseded files, kept for the record).
Scientific runs (calibration, the default trial) are in
``experiments/results/``, not here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(d: Path, name: str) -> dict | None:
    p = d / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _sweep_overhead_files(d: Path) -> list[Path]:
    """``sweep_overhead_<steps>.json`` (and a plain ``sweep_overhead.json``), shortest trials first."""
    def steps(p: Path) -> int:
        tail = p.stem.rpartition("_")[2]
        return int(tail) if tail.isdigit() else -1
    return sorted(d.glob("sweep_overhead*.json"), key=lambda p: (steps(p), p.name))


def _cond(doc: dict) -> str:
    c = doc["conditions"]
    return f"{doc['date'][:16].replace('T', ' ')} UTC, {'contended' if c['contended'] else 'quiet'} " \
           f"(load {c['loadavg_1m_start']:.1f}->{c['loadavg_1m_end']:.1f})"


def rows(d: Path) -> list[tuple[str, str, str, str]]:
    out = []
    t = _load(d, "throughput")
    if t:
        for key, r in t["results"].items():
            s = r["samples_per_s"]
            rr = r["ratios"]
            if "grokray_before_bf16" in s:   # measured after the fast path landed
                extra = (f" / before the fast path bf16 {s['grokray_before_bf16']['median']:,.0f}",
                         f", shipped/before x{rr['shipped_vs_before (grokray_bf16 / grokray_before_bf16)']['median_of_paired']:.2f}")
            else:                            # measured with the fast path as a prototype
                extra = (f" / fast-path prototype bf16 {s['grokray_fast_bf16']['median']:,.0f}",
                         f", fast/reference x{rr['fast_vs_reference (grokray_fast_bf16 / reference_fp32)']['median_of_paired']:.2f}")
            out.append((f"throughput, {r['threads']} thread(s)",
                        f"grokray bf16 {s['grokray_bf16']['median']:,.0f} / fp32 {s['grokray_fp32']['median']:,.0f}"
                        f"{extra[0]} vs reference fp32 "
                        f"{s['reference_fp32']['median']:,.0f} samples/s; shipped/reference "
                        f"x{rr['shipped_vs_reference (grokray_bf16 / reference_fp32)']['median_of_paired']:.2f}, "
                        f"fp32/reference x{rr['fp32_vs_reference (grokray_fp32 / reference_fp32)']['median_of_paired']:.2f}"
                        f"{extra[1]}",
                        ">= 3x (as shipped)", _cond(t)))
    m = _load(d, "mfu")
    if m:
        for key, r in m["results"].items():
            g = r["gflops_per_s"]
            mf = r["mfu"]
            other_key = "step_before_bf16" if "step_before_bf16" in mf else "step_fast_bf16"
            other = "before-fast-path" if other_key == "step_before_bf16" else "fast-path prototype"
            out.append((f"MFU, {key.split('_')[1]} thread(s)",
                        f"peak mm fp32 {g['peak_mm_fp32']['median']:.0f} / bf16 {g['peak_mm_bf16']['median']:.0f} GFLOP/s; "
                        f"step shipped bf16 {100 * mf['step_shipped_bf16']['vs_peak_fp32']:.0f}%, shipped fp32 "
                        f"{100 * mf['step_shipped_fp32']['vs_peak_fp32']:.0f}%, {other} bf16 "
                        f"{100 * mf[other_key]['vs_peak_fp32']:.0f}% of the fp32 peak "
                        f"({100 * mf['step_shipped_bf16']['vs_peak_bf16']:.0f}% / - / "
                        f"{100 * mf[other_key]['vs_peak_bf16']:.0f}% of the bf16 peak)",
                        ">= 50% of fp32 peak", _cond(m)))
        p = m["profile"]["step_shipped_bf16"]["categories_share"]
        out.append(("step time, shipped bf16 (1 thread)",
                    ", ".join(f"{k.split(' (')[0]} {100 * v:.0f}%" for k, v in list(p.items())[:5]), "-", _cond(m)))
    for path in _sweep_overhead_files(d):   # one row per trial length measured
        s = json.loads(path.read_text())
        f = s["fixed_costs"]
        ex = f["extrapolation"]
        waves = -(-s["config"]["n_trials"] // 2)
        in_trial = max(0.0, f["in_trial_overhead_per_trial_seconds"])
        extra = s["sweep_wall_seconds"] - s["plain_wall_seconds_mean"]
        # The extra seconds are per sweep / per trial, not per step (see sweep_overhead.py).
        pred = (ex["F_sweep_seconds"] + waves * (ex["F_trial_seconds_per_wave"] + in_trial)) / (waves * 240.0)
        out.append((f"sweep overhead, {s['config']['steps_per_trial']}-step trials",
                    f"{s['config']['n_trials']} x {s['config']['steps_per_trial']} steps: sweep "
                    f"{s['sweep_wall_seconds']:.0f} s vs plain {s['plain_wall_seconds_mean']:.0f} s "
                    f"({100 * s['overhead_ratio']:+.0f}%, {extra:.0f} s); fixed: ray.init {f['ray_init_cold_seconds']:.1f} s, "
                    f"fresh store {f['fresh_sqlite_store_seconds']:.1f} s, classifier {f['classifier_per_trial_seconds']:.1f} "
                    f"s/trial, in-trial {in_trial:.1f} s/trial; predicted for 4-min trials (default) {100 * pred:.1f}%",
                    "<= 10%", _cond(s)))
    t = _load(d, "trial_cost")
    if t:
        parts = t["sweep"]["parts_seconds"]
        out.append((f"per-trial fixed cost, {t['config']['trials']} tiny trials",
                    f"sweep {t['sweep']['seconds_per_trial_per_slot']:.2f} s/trial/slot vs bare Tune floor "
                    f"{t['floor']['seconds_per_trial_per_slot']:.2f} (x{t['sweep_over_floor']:.2f}); beyond training "
                    f"{t['fixed_seconds_per_trial_beyond_training']:.1f} s; median parts: start-up "
                    f"{parts['startup']['median']:.2f} s, final writes {parts['final_writes']['median']:.2f} s, "
                    f"labelled {parts['labelling']['median']:.0f} s after finishing",
                    "<= 3 s beyond training", _cond(t)))
    c = _load(d, "classifier_cost")
    if c:
        dd, tt = c["trials"]["default"], c["trials"]["tiny"]
        pe = c["per_evaluation"]
        g = c.get("generalized_run")
        grown = (f"; a {g['label']} ({g['behaviour']}) run: {g['verdict_seconds']['median']:.1f} s = "
                 f"{100 * g['fraction']:.2f}% of its {g['training_seconds']:.0f} s") if g else ""
        auto = dd.get("classifier_seconds_evidence_auto")
        grown += f"; evidence=auto on the default trial: {auto['median']:.2f} s" if auto else ""
        out.append(("classifier per trial",
                    f"with the evidence, default: {dd['classifier_seconds']['median']:.1f} s = {100 * dd['fraction_default_length']:.2f}% of "
                    f"{dd['training_seconds_extrapolated_to_default_length']:.0f} s (12k steps, extrapolated from "
                    f"{dd['steps_run']}); tiny: {tt['classifier_seconds']['median']:.1f} s = "
                    f"{100 * tt['fraction_measured']:.0f}% of {tt['training_seconds_measured']:.1f} s{grown}",
                    "<= 5%", _cond(c)))
        out.append(("evaluation / lens share",
                    f"evaluate {100 * pe['evaluate_share_of_training']:.1f}%, lens {100 * pe['lens_share_of_training']:.2f}% "
                    f"of training time (default schedule)", "-", _cond(c)))
    k = _load(d, "packed")
    if k:
        parts = [f"{v['attention']} N={v['n']}: x{v['packed_over_sequential']['median_of_paired']:.2f}"
                 for v in k["one_thread"].values()]
        if k.get("two_cores"):
            parts.append(f"2 cores packed/2 procs: x{k['two_cores']['packed_over_parallel']['median_of_paired']:.2f}")
        out.append(("packed (vmap) vs plain", "; ".join(parts), "probe: <= +7%", _cond(k)))
    fp = _load(d, "fastpath")
    if fp:
        r = fp["train_step"]["threads_1"]["ratio_vs_shipped"]
        out.append(("fast-path prototypes, 1 thread",
                    ", ".join(f"{n} x{v['median_of_paired']:.2f}" for n, v in r.items()) +
                    f"; correctness: {fp['correctness']['training_runs']['verdict']}", "-", _cond(fp)))
    g = _load(d, "gpu_packing")
    if g and not g.get("cpu_smoke"):
        v = g["variants"]
        parts = [f"{n} x{i['ratio_vs_solo_eager']['median_of_paired']:.2f}" for n, i in v.items()
                 if "ratio_vs_solo_eager" in i]
        base = v.get("solo_eager", {}).get("member_steps_per_s", {}).get("median")
        out.append((f"GPU packing ({g['device']})",
                    (f"solo_eager {base:,.0f} member-steps/s; " if base else "") + "; ".join(parts), "measure",
                    _cond(g)))
    return out


def main() -> int:
    d = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    print("| benchmark | figures | target | measured (conditions) |")
    print("|---|---|---|---|")
    for r in rows(d):
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
