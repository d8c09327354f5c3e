"""Train the default CNN under one schedule or all four (constant, batch-increase, lr-decay, noise-adaptive).

    python train.py                                   # the whole small experiment, built-in data, CPU
    python train.py --schedule lr-decay --device gpu --data /path/to/celeba --image-size 218x178
    python train.py --resume runs/20261127-101500-all  # continue an interrupted run exactly
    mpiexec -n 2 python train.py --schedule batch-increase --sync-bn   # data parallel, 2 ranks

A new run gets a new folder (runs/<time>-<schedule>, made unique); a folder that already holds a run
is refused unless --resume (continue it) or --overwrite (move it aside first). On --resume, every
option given must agree with the run's saved settings, except those that do not change the run
(--epochs to extend it, --no-progress, --device, --tf32, --data for a moved copy of the same data,
--cache-dir, --eval-batch-size, --resident). A run resumes with the same or another number of ranks.

Everything here is argument parsing; the loop lives in tinyconv/training.py.
"""
import argparse
import signal
import sys
import time
from pathlib import Path

from tinyconv.cli import HelpFormatter, image_size, integer, number
from tinyconv.models import MAX_INPUT_SIDE, MIN_INPUT_SIDE
import tinyconv.training as training
from tinyconv import distributed
from tinyconv.rundir import RunDirError
from tinyconv.training import MAX_WIDTH, MIN_SYNTHETIC, TrainConfig, TrainingError, read_config, run_experiment

SCHEDULE_CHOICES = ("constant", "batch-increase", "lr-decay", "noise-adaptive", "all")
ALL = ("constant", "batch-increase", "lr-decay", "noise-adaptive")

# Options that may differ from the saved settings on --resume: they do not change what is trained.
FREE_ON_RESUME = {"epochs", "no_progress", "device", "tf32", "data", "cache_dir", "eval_batch_size", "resident"}
NOT_WITH_RESUME = {"run_dir", "overwrite"}


def int_list(text):
    try:
        epochs = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 4,8, got {text!r}") from None
    if not epochs or epochs[0] < 1 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise argparse.ArgumentTypeError(f"expected increasing epochs from 1 on, such as 4,8, got {text!r}")
    return epochs


def seed_list(text):
    try:
        seeds = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds such as 0,1,2, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative seeds such as 0,1,2, got {text!r}")
    return seeds


def parser():
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--schedule", choices=SCHEDULE_CHOICES, default="all",
                   help="what to train: one schedule, or all four from the same weights and data order "
                        "(noise-adaptive: the batch size follows the measured gradient noise scale)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu (NumPy + numba kernels) or gpu (CuPy, one CUDA device; pip install -e .[gpu])")
    p.add_argument("--data", default=None,
                   help="a CelebA folder (any layout), a prepared .h5 file, or omitted: the built-in synthetic set")
    p.add_argument("--cache-dir", default=d.cache_dir, help="where prepared .h5 files and the built-in set go")
    p.add_argument("--image-size", type=image_size(MIN_INPUT_SIDE, MAX_INPUT_SIDE),
                   default="x".join(map(str, d.image_size)),
                   help=f"HxW: 218x178 is CelebA's full size; 109x89 or 54x44 for CPUs; each side "
                        f"{MIN_INPUT_SIDE} (five 2x2 poolings) to {MAX_INPUT_SIDE}")
    p.add_argument("--attributes", nargs="+", default=list(d.attributes), help="CelebA attribute names")
    p.add_argument("--epochs", type=integer(1), default=d.epochs, help="epochs to train (on --resume: the new total)")
    p.add_argument("--batch-size", type=integer(1), default=d.batch_size, help="the (initial) batch size")
    p.add_argument("--lr", type=number(0, lo_open=True), default=d.lr, help="the (initial) learning rate")
    p.add_argument("--factor", type=number(1, lo_open=True), default=d.factor,
                   help="the study's alpha: batch size x factor, or lr / factor, on a plateau")
    p.add_argument("--patience", type=integer(0), default=d.patience,
                   help="epochs without improvement of the validation loss before a change")
    p.add_argument("--min-delta", type=number(0), default=d.min_delta,
                   help="the smallest decrease of the validation loss that counts as an improvement")
    p.add_argument("--cooldown", type=integer(0), default=d.cooldown, help="epochs to wait after a change")
    p.add_argument("--max-batch-size", type=integer(1), default=d.max_batch_size, help="cap for batch-increase")
    p.add_argument("--on-max", choices=("stop", "lr-decay"), default=d.on_max,
                   help="batch-increase at its cap: stop changing, or decay the lr (Smith et al.'s hybrid)")
    p.add_argument("--min-lr", type=number(0), default=d.min_lr, help="lr-decay never goes below this")
    p.add_argument("--milestones", type=int_list, default=(),
                   help="change at these epochs (e.g. 3,6) instead of on a plateau")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=d.optimizer,
                   help="Adam (eps 1e-7, Keras' value) or SGD with momentum")
    p.add_argument("--adam-eps-placement", choices=("kingma-ba", "keras"), default=d.adam_eps_placement,
                   help="Adam's eps on sqrt(v_hat) as Kingma & Ba's Algorithm 1, or on sqrt(v) before bias "
                        "correction as Keras (the study): effectively eps / sqrt(1 - 0.999^t), 31.6x at step 1")
    p.add_argument("--momentum", type=number(0, 1, hi_open=True), default=d.momentum, help="for --optimizer sgd")
    p.add_argument("--init", default=d.init, help="conv initialiser: he_normal, he_uniform, glorot_uniform, ...")
    p.add_argument("--width", type=number(0, MAX_WIDTH, lo_open=True), default=d.width,
                   help="channel multiplier of the default model")
    p.add_argument("--dropout", type=number(0, 1, hi_open=True), default=d.dropout,
                   help="dropout probability before the last layer")
    p.add_argument("--pos-weight", type=number(0, lo_open=True), nargs="+", default=None,
                   help="per-attribute positive weights of the loss, one per attribute (e.g. 5 1 1 for rare "
                        "Eyeglasses)")
    p.add_argument("--seed", type=integer(0), default=d.seed, help="initial weights, data order and dropout")
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="run every schedule for each of these seeds (e.g. 0,1,2,3,4) in one experiment folder; "
                        "the report gives mean ± std and paired differences with 95%% intervals")
    p.add_argument("--max-micro-batch", type=integer(1), default=None,
                   help="split larger batches into micro-batches that accumulate gradients (default: planned "
                        "from free memory)")
    p.add_argument("--eval-batch-size", type=integer(1), default=d.eval_batch_size,
                   help="batch size for validation and test")
    p.add_argument("--resident", action="store_true", help="keep the training images in (GPU) memory")
    p.add_argument("--noise-every", type=integer(0), default=d.noise_every,
                   help="measure the gradient noise scale B_simple every K steps (one more half-batch forward "
                        "and backward; the run is otherwise unchanged; 0: never)")
    p.add_argument("--sync-bn", action="store_true",
                   help="data-parallel ranks (mpiexec -n R): BatchNorm statistics over the whole global batch, "
                        "as one process computes them (default: each rank normalises its own share)")
    p.add_argument("--tf32", action="store_true",
                   help="GPU: let cuBLAS use TF32 tensor cores for float32 GEMMs")
    p.add_argument("--synthetic-count", type=integer(MIN_SYNTHETIC), default=None,
                   help="size of the built-in synthetic set (default: 3000)")
    p.add_argument("--run-dir", default=None,
                   help="output folder (default: runs/<time>-<schedule>, a new one each time)")
    p.add_argument("--overwrite", action="store_true",
                   help="if --run-dir already holds a run, move it aside to <dir>.replaced-<time> (nothing is "
                        "deleted) and start afresh")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run(s) in RUN_DIR exactly where they stopped (an experiment folder: all "
                        "its runs, or the one named by --schedule)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def given_options(argv):
    """The option names (dests) typed on the command line, whatever their values."""
    p = parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def config_from_args(args, schedule):
    return TrainConfig(
        schedule=schedule, device=args.device, data=args.data, cache_dir=args.cache_dir,
        image_size=args.image_size, attributes=args.attributes, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, factor=args.factor, patience=args.patience,
        min_delta=args.min_delta, cooldown=args.cooldown, max_batch_size=args.max_batch_size,
        on_max=args.on_max, min_lr=args.min_lr, milestones=args.milestones, optimizer=args.optimizer,
        momentum=args.momentum, init=args.init, width=args.width, dropout=args.dropout,
        pos_weight=args.pos_weight, seed=args.seed, max_micro_batch=args.max_micro_batch,
        eval_batch_size=args.eval_batch_size, resident=args.resident,
        synthetic_count=args.synthetic_count, tf32=args.tf32, progress=not args.no_progress,
        noise_every=args.noise_every, sync_bn=args.sync_bn, adam_eps_placement=args.adam_eps_placement)


def resume_plan(args, given):
    """(folder, schedules, seeds or None, a saved config.json) for --resume; TrainingError naming the
    folder if it cannot be."""
    from tinyconv.rundir import experiment_runs, is_experiment, read_experiment_file
    target = Path(args.resume)
    if not target.is_dir():
        raise TrainingError(f"--resume {target}: no such folder")
    if (target / "config.json").is_file():
        info = read_config(target)
        return target, (info["config"]["schedule"],), None, info
    if not is_experiment(target):
        raise TrainingError(f"--resume {target}: no run to resume here (no config.json in it or its subfolders)")
    runs = experiment_runs(target)
    present = [name for name, d in runs.items() if (d / "config.json").is_file()]
    if not present:
        raise TrainingError(f"--resume {target}: the experiment has no run with a config.json yet")
    saved = read_experiment_file(target)
    schedules, seeds = tuple(saved.get("schedules") or runs), saved.get("seeds")
    if "schedule" in given and args.schedule != "all":
        holds = sorted({read_config(runs[n])["config"]["schedule"] for n in present})
        if args.schedule not in holds:
            raise TrainingError(f"--resume {target} --schedule {args.schedule}: this experiment holds "
                                f"{', '.join(holds)}")
        if seeds is None:
            return runs[args.schedule], (args.schedule,), None, read_config(runs[args.schedule])
        schedules = (args.schedule,)
    return target, schedules, seeds, read_config(runs[present[0]])


def resume_overrides(args, given, saved):
    """The settings to change on resume, and notes to print; TrainingError listing every option given
    that would change the run (saved -> given)."""
    bad = sorted(given & NOT_WITH_RESUME)
    if bad:
        raise TrainingError(f"--resume continues the run in its own folder: {', '.join('--' + b.replace('_', '-') for b in bad)} "
                            "cannot be combined with it")
    mine = config_from_args(args, saved["schedule"]).to_json()
    conflicts, overrides, notes = [], {}, []
    if "schedule" in given and args.schedule not in ("all", saved["schedule"]):
        conflicts.append(f"--schedule: saved {saved['schedule']!r} -> given {args.schedule!r}")
    for dest in sorted(given - {"resume", "schedule"}):
        field = "progress" if dest == "no_progress" else dest
        value = mine[field]
        if dest in FREE_ON_RESUME:
            overrides[field] = tuple(value) if isinstance(value, list) else value
            if field in ("device", "tf32") and saved.get(field) != value:
                notes.append(f"--{dest.replace('_', '-')}: {saved.get(field)} -> {value}; the run continues "
                             "validly but not bit for bit as it would have")
            continue
        if saved.get(field) != value:
            conflicts.append(f"--{dest.replace('_', '-')}: saved {saved.get(field)!r} -> given {value!r}")
    if conflicts:
        raise TrainingError("--resume would change the run; drop these options (or train a new run):\n  "
                            + "\n  ".join(conflicts))
    if "device" in overrides and overrides["device"] != saved.get("device") and "tf32" not in overrides:
        overrides["tf32"] = False if overrides["device"] == "cpu" else saved.get("tf32", False)
    return overrides, notes


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    args = p.parse_args(argv)
    given = given_options(argv)
    if args.seeds is not None and "seed" in given:
        p.error("argument --seeds: give --seed or --seeds, not both")
    if args.seeds is not None and args.resume:
        p.error("argument --seeds: --resume takes the seeds the experiment was started with")
    if args.pos_weight is not None and len(args.pos_weight) != len(args.attributes):
        p.error(f"argument --pos-weight: needs one weight per attribute ({len(args.attributes)}: "
                f"{' '.join(args.attributes)}), got {len(args.pos_weight)}")
    try:
        if args.resume:
            run_dir, schedules, seeds, info = resume_plan(args, given)
            overrides, notes = resume_overrides(args, given, info["config"])
            cfg = TrainConfig.from_json({**info["config"], **overrides})
            if "data" not in overrides:     # the saved data, found from whatever folder we are in now
                from tinyconv.data import recorded_data_paths
                cfg.data, cfg.cache_dir = recorded_data_paths(info)
        else:
            schedules = ALL if args.schedule == "all" else (args.schedule,)
            cfg, notes, overrides, seeds = config_from_args(args, schedules[0]), [], None, args.seeds
        if cfg.device == "gpu":
            from tinyconv.backend import require_gpu
            require_gpu()
        comm = distributed.init(cfg.device)
    except (TrainingError, ValueError, RuntimeError, OSError) as exc:   # bad settings or no GPU: one clear line
        print(f"train.py: error: {exc}", file=sys.stderr)
        if "mpi4py.MPI" in sys.modules:     # MPI started (e.g. NCCL failed on this node): stop every rank
            from mpi4py import MPI
            if MPI.Is_initialized() and MPI.COMM_WORLD.Get_size() > 1:
                sys.stderr.flush()
                time.sleep(0.5)                # let the launcher forward the message first
                MPI.COMM_WORLD.Abort(2)
        return 2
    if comm.size > 1:
        training.QUIET = not comm.is_root
        distributed.set_rank_threads(comm)
    try:
        if not args.resume:
            run_dir = on_root(comm, lambda: new_run_dir(args))
        say = print if comm.is_root else (lambda *a, **k: None)
        say(f"train.py: {'resume ' if args.resume else ''}{', '.join(schedules)} on "
            f"{cfg.data or 'the built-in synthetic faces (NOT CelebA)'}, {cfg.image_size[0]}x{cfg.image_size[1]}, "
            f"{cfg.device}{f', {comm.size} rank(s) ({comm.backend})' if comm.parallel else ''}; writing {run_dir}")
        for note in notes:
            say(f"train.py: note: {note}")
        t0 = time.perf_counter()
        training.SECOND_SIGNAL = "exit"     # a second Ctrl-C ends the process at once, code 130
        run_experiment(cfg, schedules, run_dir, resume=bool(args.resume), overrides=overrides, seeds=seeds,
                       comm=comm)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, training._second_signal)
        if comm.is_root:
            launcher = f"mpiexec -n {comm.size} " if comm.size > 1 else ""
            print(f"\ntrain.py: interrupted; the position is saved. Continue with: {launcher}python train.py "
                  f"--resume {run_dir} (with any number of ranks)" if comm.size > 1 else
                  f"\ntrain.py: interrupted; the position is saved. Continue with: python train.py --resume {run_dir}",
                  file=sys.stderr)
        return 130
    except _QuietError:
        return 1
    except (TrainingError, RunDirError, ValueError, OSError, distributed.DistributedError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return stop_ranks(comm, 1)
    except Exception as exc:
        if comm.size == 1:
            raise
        import traceback
        print(f"train.py: error on rank {comm.rank}: {exc!r}", file=sys.stderr)   # the line that matters first
        traceback.print_exc()
        return stop_ranks(comm, 1)
    if comm.is_root:
        print(f"train.py: done in {time.perf_counter() - t0:.0f} s; results in {run_dir}")
    return 0


def on_root(comm, fn):
    """fn() on rank 0, its result on every rank; an error there is raised on every rank."""
    if comm.size == 1:
        return fn()
    result, error = None, None
    if comm.is_root:
        try:
            result = fn()
        except (TrainingError, RunDirError, ValueError, OSError) as exc:
            error = exc
    result, message = comm.broadcast((result, None if error is None else str(error)))
    if error is not None:
        raise error
    if message is not None:
        raise _QuietError(message)
    return result


class _QuietError(TrainingError):
    """An error rank 0 reports; the other ranks stop quietly."""


def stop_ranks(comm, code):
    """A failure on one rank stops all of them (MPI_Abort): none may wait forever in a collective."""
    if comm.size > 1:
        sys.stderr.flush()
        comm.abort(code)
    return code


def new_run_dir(args):
    from tinyconv.rundir import claim_new, unique_dir
    if args.run_dir is None:
        return unique_dir(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.schedule}")
    run_dir, moved = claim_new(args.run_dir, overwrite=args.overwrite)
    if moved is not None:
        print(f"train.py: moved the previous contents of {run_dir} to {moved}")
    return run_dir


if __name__ == "__main__":
    try:
        code = main()
    except KeyboardInterrupt:           # Ctrl-C before the loop took over (imports, parsing)
        code = 130
    if code == 130:                     # interrupted: a later Ctrl-C must not turn the exit into a signal death
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # (Python resets its own handlers while finalising)
    sys.exit(code)
