"""Data-parallel scaling: what R ranks buy, measured here, and a model of what 8 and 64 GPUs would.

Measured (this machine): ``mpiexec -n R python train.py`` for R = 1 and 2 (on 2 cores: one core per
rank), the default model at each ``--sizes``, ``constant`` against ``batch-increase`` (with
``--milestones 1,2,3``, so the batch doubles every epoch, 32 -> 256, whatever the losses do), and
batch-increase with ``--sync-bn`` at R = 2 (what synchronised BatchNorm costs), on the built-in
synthetic set; per epoch from the runs' metrics: seconds, images/s, the allreduce's seconds
and its share of the epoch. And the allreduce itself: ``mpiexec -n 2`` ranks allreducing float32
buffers from 4 KB to 16 MB (the model's gradient is 463,875 floats, 1.86 MB), median of repeats, fitted
to t = alpha + (2 (R-1)/R) bytes / beta (ring allreduce: each rank sends that much; alpha from the
4 KB message, beta from the 16 MB one).

Model (printed below the measurements): time per epoch of N images at global batch B over R workers
    T = N/B * (t_step(B/R) + alpha + 2 (R-1)/R * 4 * 463,875 / beta),   t_step(b) = c0 + c1 * b
with c0 (per-step overhead, at least 0) and c1 (per image) fitted to the one-rank batch-increase epochs (batches
32, 64, 128, 256: one process on both cores, so a "worker" of the model is this whole machine) and
alpha, beta from the allreduce probe; constant batch 32 (at least one image per worker) against the
batches batch-increase reaches (256 and 1,024, the default --max-batch-size, and 4,096). The GPU scenario replaces them with the
figures stated there (PyTorch's measured H200 throughput as the per-GPU compute, an assumed link):
an illustration of the arithmetic, not a measurement.

    python3 benchmarks/scaling.py                          # about 10 minutes on 2 cores
    python3 benchmarks/scaling.py --sizes 54x44 --epochs 4 --out /tmp/scaling.md
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARAMS = 463_875                      # the default model's parameters: the gradient allreduced per step
CELEBA_TRAIN = 162_770                # CelebA's training split


def mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.is_file() else shutil.which("mpiexec")
    if not found:
        sys.exit("scaling.py: needs mpiexec and mpi4py: pip install -e \".[mpi]\"")
    return found


# --- the allreduce probe (runs inside mpiexec) -----------------------------------------------------

def probe(repeats):
    from tinyconv import distributed
    comm = distributed.init("cpu")
    out = []
    for n in (1 << 10, 1 << 14, 1 << 17, PARAMS, 1 << 20, 1 << 22):
        buf = np.ones(n, dtype=np.float32)
        for _ in range(3):
            comm.allreduce(buf)
        times = []
        for _ in range(repeats):
            comm.barrier()
            t0 = time.perf_counter()
            comm.allreduce(buf)
            times.append(time.perf_counter() - t0)
        out.append({"floats": n, "bytes": 4 * n, "seconds": statistics.median(times)})
    if comm.is_root:
        print(json.dumps({"ranks": comm.size, "allreduce": out}))


def fit_link(rows, ranks):
    """alpha (s), beta (bytes/s) of t = alpha + sent / beta, sent = 2 (R-1)/R * bytes: alpha is the
    smallest message's time (4 KB: latency-bound), beta from the largest message's."""
    small, big = min(rows, key=lambda r: r["bytes"]), max(rows, key=lambda r: r["bytes"])
    alpha = small["seconds"]
    sent = 2 * (ranks - 1) / ranks * big["bytes"]
    return alpha, sent / max(big["seconds"] - alpha, 1e-12)


# --- the training runs -------------------------------------------------------------------------------

def train(ranks, size, schedule, epochs, count, cache, work, sync_bn=False):
    run = work / f"{size}-{schedule}-r{ranks}{'-sync' if sync_bn else ''}"
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, str(ROOT / "train.py"), "--schedule", schedule,
           "--image-size", size, "--epochs", str(epochs), "--synthetic-count", str(count), "--cache-dir", str(cache),
           "--noise-every", "0", "--no-progress", "--run-dir", str(run)]
    if schedule == "batch-increase":
        cmd += ["--milestones", ",".join(str(e) for e in range(1, epochs))]
    if sync_bn:
        cmd.append("--sync-bn")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        sys.exit(f"scaling.py: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows, time.perf_counter() - t0


def fmt_s(s):
    return f"{s:.2f}" if s < 10 else f"{s:.1f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["54x44", "109x89"])
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--count", type=int, default=3000, help="built-in synthetic set size")
    p.add_argument("--repeats", type=int, default=50, help="allreduce probe repeats per size")
    p.add_argument("--out", default=None, help="also write the tables (Markdown) here")
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        return probe(args.repeats)

    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    load = os.getloadavg()
    say(f"benchmarks/scaling.py on {os.cpu_count()} cores, load average {load[0]:.1f} at the start; "
        f"{time.strftime('%Y-%m-%d %H:%M')}")
    r = subprocess.run([mpiexec(), "-n", "2", sys.executable, __file__, "--probe", "--repeats", str(args.repeats)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode != 0:
        sys.exit(f"scaling.py: the allreduce probe failed:\n{r.stderr[-2000:]}")
    link = json.loads(r.stdout.strip().splitlines()[-1])
    alpha, beta = fit_link(link["allreduce"], 2)
    say("\n### Allreduce, 2 ranks on this machine (MPI, shared memory), median of "
        f"{args.repeats}\n")
    say("| float32 values | bytes | seconds | algorithm bandwidth (sent / s) |")
    say("|---:|---:|---:|---:|")
    for row in link["allreduce"]:
        sent = row["bytes"]                   # 2 (R-1)/R = 1 at R = 2
        say(f"| {row['floats']:,} | {row['bytes']:,} | {row['seconds'] * 1e3:.3f} ms | {sent / row['seconds'] / 1e9:.2f} GB/s |")
    say(f"\nFitted: alpha = {alpha * 1e6:.0f} us per call, beta = {beta / 1e9:.2f} GB/s.")

    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "data"
        measured = {}
        for size in args.sizes:
            for schedule in ("constant", "batch-increase"):
                for ranks in args.ranks:
                    rows, wall = train(ranks, size, schedule, args.epochs, args.count, cache, work)
                    measured[size, schedule, ranks] = rows
                    print(f"  ran {size} {schedule} R={ranks}: {wall:.0f} s", flush=True)
            for ranks in [r for r in args.ranks if r > 1]:            # what --sync-bn costs
                rows, wall = train(ranks, size, "batch-increase", args.epochs, args.count, cache, work, sync_bn=True)
                measured[size, "batch-increase --sync-bn", ranks] = rows
                print(f"  ran {size} batch-increase --sync-bn R={ranks}: {wall:.0f} s", flush=True)
    say(f"\n### Training, {args.epochs} epochs on the built-in synthetic set ({args.count} images), per epoch\n")
    say("batch-increase doubles the batch every epoch (--milestones); the allreduce seconds are the time the "
        "ranks spent in the gradient allreduce, which includes waiting for the slower rank to arrive (the "
        "transfer alone is the probe's time per step); its share is of the epoch's training time; speed-up: "
        "the one-rank epoch's time over this one's.\n")
    say("| size | schedule | ranks | epoch | batch | updates | s | img/s | allreduce s (share) | speed-up |")
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (size, schedule, ranks), rows in measured.items():
        base = measured.get((size, schedule.split(" ")[0], 1))
        prev = 0
        for i, row in enumerate(rows):
            ups = row["updates"] - prev
            prev = row["updates"]
            speed = base[i]["epoch_time_s"] / row["epoch_time_s"] if base else float("nan")
            say(f"| {size} | {schedule} | {ranks} | {row['epoch']} | {row['batch_size']} | {ups} | "
                f"{fmt_s(row['epoch_time_s'])} | {row['images_per_s']:.0f} | {fmt_s(row['comm_time_s'])} "
                f"({row['comm_time_s'] / row['epoch_time_s']:.0%}) | {speed:.2f}x |")

    # the model: fit t_step(b) = c0 + c1 b on the one-rank batch-increase epochs of each size
    say("\n### Model: time per epoch, fitted to the measurements above\n")
    say("T = N/B x (c0 + c1 B/R + alpha + 2(R-1)/R x 1.86 MB / beta), N = CelebA's 162,770 training images.\n")
    for size in args.sizes:
        rows = measured.get((size, "batch-increase", 1))
        if not rows:
            continue
        n_train = rows[0]["images_seen"]
        steps = np.array([n_train / r["batch_size"] for r in rows])
        secs = np.array([r["epoch_time_s"] for r in rows])
        b = np.array([r["batch_size"] for r in rows], dtype=float)
        (c0, c1), *_ = np.linalg.lstsq(np.stack([steps, steps * b], axis=1), secs, rcond=None)
        if c0 < 0:                   # noise larger than the per-step overhead: per image only
            c0, c1 = 0.0, float(secs.sum() / (steps * b).sum())
        say(f"{size}: c0 = {c0 * 1e3:.2f} ms per step, c1 = {c1 * 1e3:.3f} ms per image (one worker = this "
            "2-core machine); "
            f"this machine's link: alpha {alpha * 1e6:.0f} us, beta {beta / 1e9:.2f} GB/s\n")
        say(model_table(c0, c1, alpha, beta, workers=(1, 2, 8, 64)))
    say("\n### The same arithmetic for GPUs (an illustration: assumed figures, not measurements)\n")
    say("Per-GPU compute from PyTorch's measured H200 fp32 throughput on this model at 218x178 "
        "(../shared/reference-model.md: 4,162 img/s at batch 64, 4,497 at 1,024: c0 = 1.2 ms, c1 = 0.22 ms); "
        "link: NCCL ring over 100 Gb/s InfiniBand (beta 12 GB/s, alpha 30 us), assumed.\n")
    say(model_table(1.2e-3, 0.222e-3, 30e-6, 12e9, workers=(1, 8, 64)))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"\nwrote {args.out}")


def model_table(c0, c1, alpha, beta, workers):
    comm_bytes = 4 * PARAMS
    rows = ["| workers R | schedule | global batch B | per worker | steps/epoch | compute s | allreduce s | "
            "epoch s | allreduce share |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for R in workers:
        for label, B in (("constant", max(32, R)), ("batch-increase", 256), ("batch-increase", 1024),
                         ("batch-increase", 4096)):
            if B < R:
                continue
            steps = CELEBA_TRAIN / B
            compute = steps * (c0 + c1 * B / R)
            comm = steps * (alpha + 2 * (R - 1) / R * comm_bytes / beta) if R > 1 else 0.0
            total = compute + comm
            rows.append(f"| {R} | {label} | {B:,} | {B / R:,.0f} | {steps:,.0f} | {fmt_s(compute)} | {fmt_s(comm)} | "
                        f"{fmt_s(total)} | {comm / total:.0%} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
