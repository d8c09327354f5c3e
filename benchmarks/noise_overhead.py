"""What measuring the gradient noise scale costs in training time, step by step.

With ``--noise-every K`` a training step is unchanged, and every K-th step adds the measurement: one
more forward and backward of half the batch (``Run._measure_half_batch``: its BatchNorm statistics and
dropout generators put back) and two squared gradient norms. So the overhead is

    (t_measure + t_norm) / (K * t_step)

with each time measured here on the default model at the given size: ``--steps`` real training steps on
the built-in synthetic set, the measurement timed right before each step on the same batch, both
interleaved so that the machine's load drifts into both alike (whole-epoch A/B runs on this shared
machine wandered by +-8% between repeats, more than the effect). Medians are reported.

    python3 benchmarks/noise_overhead.py                       # 54x44, batch 32, 150 steps: about a minute
    python3 benchmarks/noise_overhead.py --size 109x89 --every 16 32
"""
import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinyconv.training import Run, TrainConfig, open_data, squared_grad_norm, warm_up  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", nargs="+", type=int, default=[16], help="K values to report")
    p.add_argument("--size", default="54x44")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        cfg = TrainConfig(schedule="constant", image_size=(h, w), batch_size=args.batch_size, noise_every=0,
                          cache_dir=str(Path(tmp) / "data"), progress=False)
        ds = open_data(cfg)
        with contextlib.redirect_stdout(io.StringIO()):
            warm_up(cfg, ds)
        run = Run(cfg, Path(tmp) / "run", ds)
        steps, measures, norms = [], [], []
        epoch = 0
        while len(steps) < args.steps:
            for batch in ds.batches("train", args.batch_size, seed=0, epoch=epoch):
                if len(batch.index) != args.batch_size:
                    continue
                t0 = time.perf_counter()
                run._measure_half_batch(batch)
                t1 = time.perf_counter()
                squared_grad_norm(run.model)
                t2 = time.perf_counter()
                run.step(batch)
                t3 = time.perf_counter()
                measures.append(t1 - t0)
                norms.append(t2 - t1)
                steps.append(t3 - t2)
                if len(steps) >= args.steps:
                    break
            epoch += 1
        ds.close()
    skip = min(10, len(steps) // 5)                     # the first steps warm caches and the allocator
    step, measure, norm = (statistics.median(v[skip:]) for v in (steps, measures, norms))
    print(f"benchmarks/noise_overhead.py: {args.size}, batch {args.batch_size}, {len(steps) - skip} steps, "
          f"load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"\nmedian ms: training step {step * 1e3:.1f}, half-batch measurement {measure * 1e3:.1f} "
          f"(incl. one |g|^2), second |g|^2 {norm * 1e3:.2f}\n")
    print("| noise every K steps | added per K steps (ms) | overhead of the training time |")
    print("|---:|---:|---:|")
    for k in args.every:
        print(f"| {k} | {(measure + norm) * 1e3:.1f} | {(measure + norm) / (k * step):+.1%} |")


if __name__ == "__main__":
    main()
