"""Train the default CNN under one schedule or all three (constant, batch-increase, lr-decay).

    python train.py                                   # the whole small experiment, built-in data, CPU
    python train.py --schedule lr-decay --device gpu --data /path/to/celeba --image-size 218x178
    python train.py --resume runs/20261127-101500-all  # continue an interrupted run exactly

Everything here is argument parsing; the loop lives in tinyconv/training.py.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from tinyconv.training import TrainConfig, TrainingError, run_experiment

SCHEDULE_CHOICES = ("constant", "batch-increase", "lr-decay", "all")


def image_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 218x178 or 54x44, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"images must be at least 32x32 for the five pooling blocks, got {text}")
    return (h, w)


def int_list(text):
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 4,8, got {text!r}") from None


def parser():
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedule", choices=SCHEDULE_CHOICES, default="all",
                   help="what to train (default: all three, from the same weights and data order)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--data", default=None,
                   help="a CelebA folder (any layout), a prepared .h5 file, or omitted: the built-in synthetic set")
    p.add_argument("--cache-dir", default=d.cache_dir, help="where prepared .h5 files and the built-in set go")
    p.add_argument("--image-size", type=image_size, default=d.image_size,
                   help="HxW: 218x178 is CelebA's full size; 109x89 or 54x44 for CPUs (default 54x44)")
    p.add_argument("--attributes", nargs="+", default=list(d.attributes), help="CelebA attribute names")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="the (initial) batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="the (initial) learning rate")
    p.add_argument("--factor", type=float, default=d.factor,
                   help="the study's alpha: batch size x factor, or lr / factor, on a plateau")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="epochs without improvement of the validation loss before a change")
    p.add_argument("--min-delta", type=float, default=d.min_delta, help="the smallest improvement that counts")
    p.add_argument("--cooldown", type=int, default=d.cooldown, help="epochs to wait after a change")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="cap for batch-increase")
    p.add_argument("--on-max", choices=("stop", "lr-decay"), default=d.on_max,
                   help="batch-increase at its cap: stop changing, or decay the lr (Smith et al.'s hybrid)")
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--milestones", type=int_list, default=(),
                   help="change at these epochs (e.g. 3,6) instead of on a plateau")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer)
    p.add_argument("--momentum", type=float, default=d.momentum, help="for --optimizer sgd")
    p.add_argument("--init", default=d.init, help="conv initialiser: he_normal, he_uniform, glorot_uniform, ...")
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier of the default model")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--pos-weight", type=float, nargs="+", default=None,
                   help="per-attribute positive weights of the loss (e.g. 5 1 1 for rare Eyeglasses)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-micro-batch", type=int, default=None,
                   help="split larger batches into micro-batches that accumulate gradients")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--resident", action="store_true", help="keep the training images in (GPU) memory")
    p.add_argument("--tf32", action="store_true",
                   help="GPU: let cuBLAS use TF32 tensor cores for float32 GEMMs (off by default)")
    p.add_argument("--synthetic-count", type=int, default=None, help="size of the built-in synthetic set")
    p.add_argument("--run-dir", default=None, help="output folder (default runs/<time>-<schedule>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run(s) in RUN_DIR exactly where they stopped")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    schedules = ("constant", "batch-increase", "lr-decay") if args.schedule == "all" else (args.schedule,)
    try:
        cfg = TrainConfig(
            schedule=schedules[0], device=args.device, data=args.data, cache_dir=args.cache_dir,
            image_size=args.image_size, attributes=args.attributes, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, factor=args.factor, patience=args.patience,
            min_delta=args.min_delta, cooldown=args.cooldown, max_batch_size=args.max_batch_size,
            on_max=args.on_max, min_lr=args.min_lr, milestones=args.milestones, optimizer=args.optimizer,
            momentum=args.momentum, init=args.init, width=args.width, dropout=args.dropout,
            pos_weight=args.pos_weight, seed=args.seed, max_micro_batch=args.max_micro_batch,
            eval_batch_size=args.eval_batch_size, resident=args.resident,
            synthetic_count=args.synthetic_count, tf32=args.tf32, progress=not args.no_progress)
        if args.device == "gpu":
            from tinyconv.backend import require_gpu
            require_gpu()

    except Exception as exc:      # bad settings or no GPU: one clear line, no traceback
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if args.resume:
        run_dir = Path(args.resume)
        if (run_dir / "config.json").is_file():
            schedules = (None,)   # a single run folder
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.run_dir or f"runs/{stamp}-{args.schedule}")
    print(f"train.py: {', '.join(s for s in schedules if s) or 'resume'} on "
          f"{args.data or 'the built-in synthetic faces (NOT CelebA)'}, {args.image_size[0]}x{args.image_size[1]}, "
          f"{args.device}; writing {run_dir}")
    t0 = time.perf_counter()
    try:
        if args.resume and schedules == (None,):
            from tinyconv.training import Run, open_data
            run = Run.resume(run_dir, open_data, epochs=args.epochs if "--epochs" in (argv or sys.argv) else None,
                             progress=not args.no_progress)
            try:
                run.train()
            finally:
                run.ds.close()
        else:
            if args.resume:   # a folder of sibling runs: the settings are the saved ones, not the defaults
                saved = sorted(run_dir.glob("*/config.json"))
                if not saved:
                    raise TrainingError(f"{run_dir}: no run to resume here (no config.json in it or its subfolders)")
                cfg = TrainConfig.from_json(json.loads(saved[0].read_text())["config"])
                cfg.progress = not args.no_progress
                if "--epochs" in (argv or sys.argv):
                    cfg.epochs = args.epochs
            run_experiment(cfg, schedules, run_dir, resume=bool(args.resume))
    except KeyboardInterrupt:
        print(f"\ntrain.py: interrupted; the position is saved. Continue with: python train.py --resume {run_dir}",
              file=sys.stderr)
        return 130
    except (TrainingError, ValueError, OSError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"train.py: done in {time.perf_counter() - t0:.0f} s; results in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
