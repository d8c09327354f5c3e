#!/usr/bin/env bash
# The one prepared GPU check (docs/gpu.md): environment, the GPU tests, then a short benchmark.
# Each part runs even if an earlier one fails; logs go to $OUT (the device tool's folder) if set.
#   bash scripts/gpu_check.sh            STEPS=10 BATCHES="64 256 1024" TF32=1 to change the benchmark
set -u
cd "$(dirname "$0")/.."
LOG="${OUT:-/tmp/tinyconv_gpu_check}"
mkdir -p "$LOG"
STEPS="${STEPS:-10}"
BATCHES="${BATCHES:-64 256 1024}"
status=0

part() {  # part NAME TIMEOUT_S COMMAND...: run with a time limit, log, note the exit code
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    echo "--- $name: exit $rc"
    [ $rc -ne 0 ] && status=1
    return 0
}

part env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python -c "
import sys, numpy, cupy; print(sys.version.split()[0], \"numpy\", numpy.__version__, \"cupy\", cupy.__version__)
print(\"cuda runtime\", cupy.cuda.runtime.runtimeGetVersion())
from tinyconv.backend import gpu_status; print(gpu_status())
try:
    import torch; print(\"torch\", torch.__version__, torch.cuda.is_available())
except ImportError: print(\"torch: not installed\")"'
cat "$LOG/env.log"

part tests 200 python -m pytest -q -rfEs tests/test_kernels_gpu.py tests/test_forward.py tests/test_model.py \
    tests/test_optim.py -k "gpu or cuda"
tail -n 25 "$LOG/tests.log"

TF32_FLAG=""
[ "${TF32:-0}" = "1" ] && TF32_FLAG="--tf32"
# shellcheck disable=SC2086
part bench 270 python benchmarks/gpu_train.py --steps "$STEPS" --warmup 3 --batches $BATCHES \
    --layer-steps 5 $TF32_FLAG --out "$LOG/bench.md"
tail -n 45 "$LOG/bench.log"
echo "=== done: status $status, logs in $LOG"
exit $status
