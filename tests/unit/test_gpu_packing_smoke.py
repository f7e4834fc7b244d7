"""``python -m benchmarks.gpu_packing`` runs on a machine without a GPU: ``--cpu-smoke`` exercises
every code path it can at tiny sizes and writes a well-formed JSON; without the flag it skips in
one line. The module runs with the repository root on ``PYTHONPATH`` (as from the root itself).

No timing assertions (project rule): only that the figures exist and are finite and positive.
About 30 s on a busy 2-core machine (two spawned processes importing torch dominate), which is
why it is not part of test_packed.py; it is not marked slow, so it runs by default.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


def positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_cpu_smoke_runs_every_cpu_path_and_writes_json(tmp_path):
    out = tmp_path / "gpu_packing.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_packing", "--cpu-smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "gpu_packing" and doc["quick"] is True and doc["cpu_smoke"] is True
    v = doc["variants"]
    for name in ("solo_eager", "packed2_eager", "packed3_eager", "procs2"):
        assert "error" not in v[name], v[name].get("traceback")
        s = v[name]["member_steps_per_s"]
        assert positive(s["median"]) and all(positive(x) for x in s["raw"]), name
    for name in ("packed2_eager", "packed3_eager", "procs2"):
        assert positive(v[name]["ratio_vs_solo_eager"]["median_of_paired"]), name
    for name in ("solo_graph", "packed2_graph", "packed3_graph"):
        assert "CUDA" in v[name]["skipped"]
    if "skipped" in v["reference"]:
        assert "transformers" in v["reference"]["skipped"]
    else:
        assert positive(v["reference"]["member_steps_per_s"]["median"])
    assert doc["checks"]["forward_max_abs_diff_packed_vs_solo_fp32"] < 1e-5
    assert not str(out).startswith(str(ROOT / "benchmarks" / "results"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is for machines without CUDA")
def test_without_cuda_it_skips_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_packing"], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=120)
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 1 and "skipped" in proc.stdout
