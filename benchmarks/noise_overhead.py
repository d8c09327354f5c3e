"""What measuring the gradient noise scale costs: the same training run with ``--noise-every K``
(default 16: one more half-batch forward and backward every K steps) and with 0 (never), alternated
``--repeats`` times in one process on the built-in synthetic set, after a warm-up. Reported: the
median training seconds per epoch (metrics' ``epoch_time_s``: the steps only, no validation) of each,
and the overhead as their ratio. The weights at the end are checked equal (the measurement restores
what it touches), so both runs do the same training work.

    python3 benchmarks/noise_overhead.py                    # 54x44, 3 epochs, 3 repeats: about 5 minutes
    python3 benchmarks/noise_overhead.py --every 16 4 --size 109x89 --epochs 2
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinyconv.training import Run, TrainConfig, open_data, warm_up  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", nargs="+", type=int, default=[16], help="the K values to compare with 0")
    p.add_argument("--size", default="54x44")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig(schedule="constant", image_size=(h, w), epochs=args.epochs, batch_size=args.batch_size,
                           cache_dir=str(Path(tmp) / "data"), progress=False)
        ds = open_data(base)
        warm_up(base, ds)
        print(f"benchmarks/noise_overhead.py: {args.size}, batch {args.batch_size}, {args.epochs} epochs x "
              f"{args.repeats} repeats per setting, load average {os.getloadavg()[0]:.1f}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}")
        times, finals = {k: [] for k in [0] + args.every}, {}
        for rep in range(args.repeats):
            for k in [0] + args.every:
                cfg = TrainConfig.from_json({**base.to_json(), "noise_every": k})
                run = Run(cfg, Path(tmp) / f"r{rep}-k{k}", ds)
                import contextlib
                import io
                with contextlib.redirect_stdout(io.StringIO()):
                    rows = run.train()
                times[k] += [r["epoch_time_s"] for r in rows[1:] or rows]     # epoch 1 warms caches
                finals[k] = [a.copy() for params, _ in run.model.parameters() for a in params.values()]
        ds.close()
    print("\n| noise every K steps | median s per epoch (training steps) | overhead vs never |")
    print("|---:|---:|---:|")
    never = statistics.median(times[0])
    for k in [0] + args.every:
        med = statistics.median(times[k])
        print(f"| {k or 'never'} | {med:.2f} | {'-' if k == 0 else f'{med / never - 1:+.1%}'} |")
    same = all(all(np.array_equal(a, b) for a, b in zip(finals[0], finals[k])) for k in args.every)
    print(f"\nfinal weights identical with and without measuring: {same}")


if __name__ == "__main__":
    main()
