"""Every benchmark runs as a module (``python -m benchmarks.<name> --quick``) and writes a
well-formed JSON.

No timing assertions, ever (project rule): only that each benchmark runs, and that the figures
it reports exist and are finite positive numbers. The quick numbers are not figures. The
modules run from a temp working directory with the repository root on ``PYTHONPATH``, so
nothing they write lands in the repository.

``sweep_overhead`` starts a real local Ray sweep even in ``--quick`` mode, which alone takes
longer than this file's budget: it is marked ``slow``
(``pytest -m slow tests/integration/test_benchmarks_smoke.py``).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

COMMON_KEYS = {"benchmark", "quick", "date", "machine", "conditions", "wall_seconds", "command"}


def module_env() -> dict:
    """The environment of a ``python -m benchmarks.X`` run outside the repository root."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


def run_quick(script: str, tmp_path: Path, *extra: str, timeout: float = 300) -> dict:
    out = tmp_path / f"{script}.json"
    before = sorted(RESULTS.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", "--quick", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=tmp_path, env=module_env(), timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert sorted(RESULTS.rglob("*")) == before, "a --quick run wrote into benchmarks/results"
    doc = json.loads(out.read_text())
    assert COMMON_KEYS <= set(doc), set(doc) ^ COMMON_KEYS
    assert doc["benchmark"] == script and doc["quick"] is True
    assert doc["command"].split()[1:3] == ["-m", f"benchmarks.{script}"], doc["command"]
    assert doc["machine"]["torch"] and doc["machine"]["logical_cpus"] >= 1
    assert isinstance(doc["conditions"]["contended"], bool)
    return doc


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_throughput(tmp_path):
    pytest.importorskip("transformers", reason="the reference needs the 'bench' extra: pip install -e '.[bench]'")
    doc = run_quick("throughput", tmp_path, "--threads", "1")
    res = doc["results"]["threads_1"]
    for variant in ("grokray_bf16", "grokray_fp32", "reference_fp32", "grokray_before_bf16"):
        s = res["samples_per_s"][variant]
        assert positive(s["median"]) and all(positive(x) for x in s["raw"])
    for r in res["ratios"].values():
        assert positive(r["median_of_paired"])
    assert isinstance(doc["target"]["met"], bool)


def test_mfu(tmp_path):
    doc = run_quick("mfu", tmp_path, "--threads", "1")
    flops = doc["flops_per_step"]
    assert positive(flops["total"]) and positive(flops["flop_counter_mode"])
    mfu = doc["results"]["threads_1"]["mfu"]
    for step in ("step_shipped_bf16", "step_shipped_fp32", "step_before_bf16"):
        assert positive(mfu[step]["vs_peak_fp32"]) and positive(mfu[step]["ms_per_step"])
        prof = doc["profile"][step]
        assert len(prof["top10"]) == 10 and all(positive(r["share"]) for r in prof["top10"])
        assert abs(sum(prof["categories_share"].values()) - 1.0) < 1e-6


def test_fastpath(tmp_path):
    doc = run_quick("fastpath", tmp_path, "--threads", "1")
    ratios = doc["train_step"]["threads_1"]["ratio_vs_shipped"]
    assert {"attn_manual", "adamw_fused", "fast", "fast_ftz"} <= set(ratios)
    assert all(positive(r["median_of_paired"]) for r in ratios.values())
    share = doc["evaluation"]["share_of_training_time"]
    assert all(positive(v) for v in share.values())
    c = doc["correctness"]
    assert set(c["same_weights"]["max_abs_diff_fast_vs_shipped"]) == {"acc", "loss", "lens", "param_norm_rel"}
    assert isinstance(c["training_runs"]["verdict"], str)


def test_classifier_cost(tmp_path):
    doc = run_quick("classifier_cost", tmp_path)
    for name in ("default", "tiny"):
        t = doc["trials"][name]
        assert positive(t["training_seconds_measured"]) and positive(t["classifier_seconds"]["median"])
        assert positive(t["fraction_measured"])
        assert "evidence (interchange + lens + causal patching)" in t["classifier_breakdown_seconds"]
    assert positive(doc["trials"]["default"]["fraction_default_length"])
    assert positive(doc["per_evaluation"]["lens_share_of_training"])
    assert positive(doc["store_migration_seconds"])


def test_packed(tmp_path):
    doc = run_quick("packed", tmp_path)
    (entry,) = doc["one_thread"].values()
    assert positive(entry["packed_over_sequential"]["median_of_paired"])
    assert all(positive(s["median"]) for s in entry["samples_per_s_total"].values())


@pytest.mark.slow  # a real sweep: local Ray, driver, 2 trial workers, classifier actor (~30 s quiet, > 90 s busy)
def test_sweep_overhead(tmp_path):
    doc = run_quick("sweep_overhead", tmp_path, timeout=600)
    assert positive(doc["sweep_wall_seconds"]) and positive(doc["plain_wall_seconds_mean"])
    assert math.isfinite(doc["overhead_ratio"])
    fixed = doc["fixed_costs"]
    for k in ("ray_init_cold_seconds", "fresh_sqlite_store_seconds", "classifier_per_trial_seconds"):
        assert positive(fixed[k]), k
    assert len(doc["sweep_trials"]) == doc["config"]["n_trials"]
    assert all(t["label"] for t in doc["sweep_trials"])


def test_quick_writes_to_a_temp_dir_unless_told(tmp_path):
    """Without --out, a --quick run never touches the current results (``benchmarks.common.out_path``)."""
    code = ("import argparse, json; from benchmarks.common import out_path; "
            "ns = lambda q: argparse.Namespace(out=None, quick=q); "
            "print(json.dumps([str(out_path('throughput', ns(True))), str(out_path('throughput', ns(False))), "
            "str(out_path('sweep_overhead_12000', ns(False)))]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=module_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    quick, full, variant = json.loads(proc.stdout)
    assert not quick.startswith(str(RESULTS))
    assert full == str(RESULTS / "throughput.json") and variant == str(RESULTS / "sweep_overhead_12000.json")


def test_summarize_reads_the_current_results():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.summarize"], capture_output=True, text=True,
                          cwd=ROOT, env=module_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [r.split(" | ")[0][2:] for r in rows]
    for current in ("throughput, 1 thread(s)", "MFU, 1 thread(s)", "classifier per trial",
                    "sweep overhead, 12000-step trials"):
        assert current in names, names
