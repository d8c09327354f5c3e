#!/usr/bin/env bash
# The GPU machine has no internet: fetch the mpi extra's wheels (mpi4py for CPython 3.10-3.13, the
# mpich wheel with its mpiexec) into .gpu-wheels/ (git-ignored, about 19 MB) and pass it along with the
# checkout (the device tool's carry: [".gpu-wheels"]); scripts/gpu_check.sh installs from it when
# mpi4py is missing there, for the NCCL tests.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-wheels
for v in 3.10 3.11 3.12 3.13; do
    python3 -m pip download -q --only-binary=:all: --no-deps --python-version "$v" \
        --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64 -d .gpu-wheels "mpi4py>=4"
done
python3 -m pip download -q --only-binary=:all: --no-deps --platform manylinux_2_28_x86_64 -d .gpu-wheels "mpich>=4"
ls -la .gpu-wheels
