#!/usr/bin/env bash
# The one prepared GPU check (docs/gpu.md): preflight, every `gpu` test, a short training run, a short
# benchmark against PyTorch. It fails loudly: no CuPy or no CUDA device stops it at once (exit 2), and a
# `gpu` test that fails, errors or SKIPS fails it (a skip on a GPU machine means something is missing).
# Each part after the preflight runs even if an earlier one failed; logs go to $OUT (the device tool's
# folder) if set. The time caps add up to 6.5 minutes, inside one 10-minute call. Run it with carry
# [".gpu-wheels"] after scripts/fetch_gpu_wheels.sh, so the NCCL test has mpi4py there.
#   bash scripts/gpu_check.sh           STEPS=10 BATCHES="64 256 1024" TF32=1 PYTHON=python3 to change it
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"                 # the GPU image documents python3
LOG="${OUT:-/tmp/tinyconv_gpu_check}"
mkdir -p "$LOG"
STEPS="${STEPS:-10}"
BATCHES="${BATCHES:-64 256 1024}"
status=0

part() {  # part NAME TIMEOUT_S COMMAND...: run with a time limit, log, note the exit code
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T), at most ${limit} s)"
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    echo "--- $name: exit $rc$([ $rc -eq 124 ] && echo ' (timed out)')"
    [ $rc -ne 0 ] && status=1
    return 0
}

# Preflight: without CuPy and a device nothing below means anything.
if ! timeout 60 "$PY" -c "
import sys
try:
    import cupy
except Exception as exc:
    sys.exit(f'FAIL: CuPy cannot be imported ({exc}); pip install -e .[gpu-cuda13] (or .[gpu] for CUDA 12)')
try:
    n = cupy.cuda.runtime.getDeviceCount()
except Exception as exc:
    sys.exit(f'FAIL: CuPy sees no CUDA device ({exc})')
if n < 1:
    sys.exit('FAIL: CuPy sees no CUDA device')
print('preflight: CuPy', cupy.__version__, 'with', n, 'device(s)')
"; then
    echo "=== gpu_check: stopped at the preflight (exit 2)"
    exit 2
fi

part env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c \"
import sys, numpy, cupy; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__)
print('cuda runtime', cupy.cuda.runtime.runtimeGetVersion())
from tinyconv.backend import gpu_status; print(gpu_status())
try:
    import torch; print('torch', torch.__version__, torch.cuda.is_available())
except ImportError: print('torch: not installed')\""
cat "$LOG/env.log"

# The NCCL tests need mpi4py: from .gpu-wheels/ (scripts/fetch_gpu_wheels.sh, carried along) if missing.
if ! "$PY" -c "import mpi4py" 2>/dev/null && [ -d .gpu-wheels ]; then
    "$PY" -m pip install -q --no-index --find-links .gpu-wheels mpi4py mpich > "$LOG/mpi-install.log" 2>&1 \
        || echo "note: mpi4py did not install from .gpu-wheels (see $LOG/mpi-install.log); the NCCL test will skip"
fi

# Every test marked gpu (-m, not -k: -k gpu also picks the CPU emulation tests, which CI runs anyway).
part tests 150 "$PY" -m pytest -q -rfEs -m gpu tests/ --junitxml="$LOG/gpu-tests.xml"
tail -n 25 "$LOG/tests.log"
if [ -f "$LOG/gpu-tests.xml" ]; then
    "$PY" scripts/junit_ok.py "$LOG/gpu-tests.xml" || status=1
else
    echo "FAIL: no test report"; status=1
fi

# A short run of the headline command: the default model at 218x178, resident data, GPU.
part train 120 "$PY" train.py --schedule lr-decay --device gpu --image-size 218x178 --resident --epochs 2 \
    --synthetic-count 600 --cache-dir "$LOG/data" --run-dir "$LOG/run" --no-progress --overwrite
tail -n 6 "$LOG/train.log"

TF32_FLAG=""
[ "${TF32:-0}" = "1" ] && TF32_FLAG="--tf32"
# shellcheck disable=SC2086
part bench 150 "$PY" benchmarks/gpu_train.py --steps "$STEPS" --warmup 3 --batches $BATCHES \
    --layer-steps 5 $TF32_FLAG --out "$LOG/bench.md"
tail -n 45 "$LOG/bench.log"
echo "=== done: status $status, logs in $LOG"
exit $status
