#!/usr/bin/env bash
# The GPU checks in one command, unattended, on one GPU (H200 or A10G) in under 10 minutes:
#   1. what the machine is: nvidia-smi, torch's version and the device torch sees (no CUDA: exit 2);
#   2. python -m pytest -q -m cuda tests/cuda        (CUDA vs CPU, packed vs solo, CUDA graph, checkpoint,
#                                                     resume, a 0.25-GPU sweep; at most GPU_CHECK_PYTEST_S);
#   3. python -m benchmarks.gpu_packing              (checks with thresholds, packed-vs-solo training,
#                                                     throughput figures; in the time left).
# Writes, under GPU_CHECK_OUT (default benchmarks/results/): gpu_check.txt (everything printed),
# gpu_check_pytest.xml (JUnit), gpu_packing.json (the benchmark's result, with check_results).
# Exit code: 0 when every step passed, else 1 (2: no CUDA device).
#
#   bash benchmarks/gpu_check.sh                      # from anywhere; runs in the repository root
#   GPU_CHECK_OUT=$OUT bash benchmarks/gpu_check.sh   # results elsewhere (e.g. a device machine's $OUT)
# Needs a python with a CUDA build of torch and grokray installed ('.[test]'); PYTHON=... picks another.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-benchmarks/results}
TOTAL_S=${GPU_CHECK_BUDGET_S:-570}            # the whole script: 10 minutes less a margin
PYTEST_S=${GPU_CHECK_PYTEST_S:-270}           # the tests' share; the benchmark gets what is left
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
: > "$LOG"
start=$(date +%s)
failed=()

say() { echo "[gpu_check] $*" | tee -a "$LOG"; }
elapsed() { echo $(( $(date +%s) - start )); }

say "started $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(pwd), budget ${TOTAL_S} s"
if rev=$(git rev-parse --short HEAD 2>/dev/null); then
    git diff --quiet HEAD 2>/dev/null || rev="$rev with local changes"
else
    rev="? (not a git checkout)"
fi
say "code: $rev"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi 2>&1 | tee -a "$LOG"
else
    say "nvidia-smi: not found"
fi
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    say "FAILED: torch sees no CUDA device; nothing else to run"
    exit 2
fi

# ---- 2. the CUDA tests
say "python -m pytest -q -m cuda tests/cuda (timeout ${PYTEST_S} s)"
timeout -k 15 "$PYTEST_S" "$PY" -m pytest -q -m cuda tests/cuda -p no:cacheprovider \
    --junitxml="$OUT/gpu_check_pytest.xml" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 124 ] && say "pytest: timed out after ${PYTEST_S} s"
[ "$rc" -ne 0 ] && failed+=("pytest (exit $rc)")
say "pytest: exit $rc after $(elapsed) s"

# ---- 3. the benchmark, in the time left (it stops starting timing rounds 90 s before its timeout)
left=$(( TOTAL_S - $(elapsed) ))
if [ "$left" -lt 150 ]; then
    say "FAILED: only ${left} s left, not enough for the benchmark"
    failed+=("gpu_packing (no time left)")
else
    budget=$(( left - 90 ))
    say "python -m benchmarks.gpu_packing --budget ${budget} (timeout ${left} s)"
    timeout -k 15 "$left" "$PY" -m benchmarks.gpu_packing --budget "$budget" --out "$OUT/gpu_packing.json" \
        2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && say "gpu_packing: timed out after ${left} s (no JSON written)"
    [ "$rc" -ne 0 ] && failed+=("gpu_packing (exit $rc)")
fi

if [ ${#failed[@]} -eq 0 ]; then
    say "all passed in $(elapsed) s; results in $OUT/ (gpu_check.txt, gpu_check_pytest.xml, gpu_packing.json)"
    exit 0
fi
say "FAILED after $(elapsed) s: ${failed[*]}; see $LOG"
exit 1
