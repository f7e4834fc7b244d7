"""Shared helpers of the benchmark scripts: machine info, conditions, interleaved timing, JSON output.

Project rules the scripts follow:

* compare side by side, as RATIOS measured within one run; interleave the variants
  (A, B, A, B, ...) so drift and background load hit both alike; report medians;
* say under which condition a figure was taken (``conditions.contended``: another
  ``grokray sweep run`` or other CPU load was present while measuring);
* no timing assertions anywhere (the smoke test checks only that numbers exist).

Every benchmark imports it as ``from benchmarks import common as C`` and runs as a module
from the repository root (``python -m benchmarks.<name>``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


# --------------------------------------------------------------------------- CLI / output

def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a few steps only (smoke test): numbers are not figures")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<name>.json, the benchmark's "
                                               "one current result; with --quick a temp dir, so quick runs never "
                                               "overwrite figures)")
    return p


def out_path(name: str, args: argparse.Namespace) -> Path:
    """``--out``, else ``results/<name>.json`` (a temp dir with ``--quick``). ``name`` is the file
    stem: the benchmark's name, or the benchmark and the variant it measured (``sweep_overhead_12000``)."""
    if args.out:
        return Path(args.out)
    if args.quick:
        return Path(tempfile.gettempdir()) / "grokray-bench-quick" / f"{name}.json"
    return RESULTS / f"{name}.json"


def write_result(name: str, args: argparse.Namespace, payload: dict[str, Any], started: float,
                 cond_before: dict[str, Any], stem: str | None = None) -> Path:
    """Write the result JSON (``benchmark`` = ``name``; file ``<stem or name>.json``, see :func:`out_path`)."""
    path = out_path(stem or name, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, "quick": bool(args.quick),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": command_line(),
           "machine": machine_info(), "conditions": conditions(cond_before),
           "wall_seconds": round(time.perf_counter() - started, 2), **payload}
    path.write_text(json.dumps(doc, indent=2, default=_jsonable))
    print(f"[bench] wrote {path}", flush=True)
    return path


def command_line() -> str:
    """The command that is running, as typed: ``python -m benchmarks.<name> ARGS`` for a module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    return " ".join([Path(sys.executable).name, *head, *sys.argv[1:]])


def _jsonable(x: Any) -> Any:
    try:
        import numpy as np
        if isinstance(x, np.generic):
            return x.item()
    except ImportError:
        pass
    return str(x)


# --------------------------------------------------------------------------- machine / conditions

def machine_info() -> dict[str, Any]:
    import torch

    cpu = ""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info = {"cpu": cpu or platform.processor(), "logical_cpus": os.cpu_count(),
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads_now": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "mkldnn_bf16": _mkldnn_bf16(), "gpu": torch.cuda.is_available()}
    from importlib import metadata
    for pkg in ("transformers", "ray", "mlflow"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def _mkldnn_bf16() -> bool:
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def other_sweeps() -> list[int]:
    """PIDs of ``grokray sweep run`` processes not started by this process (pgrep -f)."""
    try:
        out = subprocess.run(["pgrep", "-f", "grokray sweep run"], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    mine = _descendants(os.getpid()) | {os.getpid()}
    return [int(p) for p in out.split() if int(p) not in mine]


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    except FileNotFoundError:
        return out
    for k in kids:
        out.add(int(k))
        out |= _descendants(int(k))
    return out


def snapshot() -> dict[str, Any]:
    return {"loadavg_1m": os.getloadavg()[0], "other_grokray_sweeps": other_sweeps(), "t": time.time()}


def conditions(before: dict[str, Any]) -> dict[str, Any]:
    after = snapshot()
    sweeps = sorted(set(before["other_grokray_sweeps"]) | set(after["other_grokray_sweeps"]))
    contended = bool(sweeps)
    return {"contended": contended,
            "note": ("CONTENDED: another grokray sweep was running on this machine while measuring; absolute "
                     "figures are low, ratios (interleaved) are the figures to read") if contended else
                    "quiet: no other grokray sweep running (load average at start/end below)",
            "other_grokray_sweep_pids": sweeps, "loadavg_1m_start": round(before["loadavg_1m"], 2),
            "loadavg_1m_end": round(after["loadavg_1m"], 2)}


# --------------------------------------------------------------------------- timing

def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def interleave(variants: dict[str, Callable[[], float]], rounds: int, log: Callable[[str], None] | None = None
               ) -> dict[str, list[float]]:
    """Run each variant once per round, in A, B, C, A, B, C... order (the order rotates each round
    so no variant always follows the same one); each call returns its measured value."""
    names = list(variants)
    raw: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            raw[n].append(variants[n]())
        if log:
            log(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {raw[n][-1]:.4g}" for n in names))
    return raw


def rate(work: Callable[[], Any], reps: int, amount: float) -> Callable[[], float]:
    """A variant for :func:`interleave`: ``reps`` calls of ``work``, returning ``reps * amount``
    per second (samples/s, FLOP/s). The last result is brought to the host when it is a tensor
    (a no-op on CPU): on a GPU the clock must not stop before the queued kernels finish."""
    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            out = work()
        if hasattr(out, "cpu"):
            out.cpu()
        return reps * amount / (time.perf_counter() - t0)
    return run


def summarize(raw: list[float]) -> dict[str, Any]:
    return {"median": median(raw), "min": min(raw), "max": max(raw), "n": len(raw), "raw": [round(x, 6) for x in raw]}


def paired_ratios(a: list[float], b: list[float]) -> dict[str, Any]:
    """Median of per-round ratios a[i]/b[i] (each round measured both back to back) and the ratio of medians."""
    per = [x / y for x, y in zip(a, b) if y]
    return {"median_of_paired": median(per), "ratio_of_medians": median(a) / median(b) if median(b) else None,
            "paired_min": min(per) if per else None, "paired_max": max(per) if per else None}


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)
