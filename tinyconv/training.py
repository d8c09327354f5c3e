"""The training loop: epochs of forward, loss, backward, optimizer step, under a schedule.

One run = one schedule, in one folder:
    config.json              every setting, versions, device, data
    metrics.csv / .jsonl     one row per epoch (see METRIC_COLUMNS)
    train.log                the per-epoch summaries and every schedule change with its reason
    checkpoints/last.h5      after every epoch (and on Ctrl-C, mid-epoch)
    checkpoints/best.h5      the epoch with the lowest validation loss
Checkpoints hold everything a run needs to continue exactly: weights, BatchNorm buffers,
optimizer state, schedule state, dropout generator states, the data position (epoch, batch)
and the metrics so far. The data order is a pure function of (seed, epoch), so it needs no state.

A batch larger than ``max_micro_batch`` is split into micro-batches whose gradients are summed
(each weighted by its share of the batch) before one optimizer step. The gradient of every
weight is then that of the whole batch, except through BatchNorm, which normalises each
micro-batch with its own statistics (as "ghost batch norm" does) and updates its running
statistics once per micro-batch.
"""
import contextlib
import csv
import json
import math
import os
import platform
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import __version__, distributed
from .backend import gpu_status, to_cpu, xp_for
from .checkpoint import load_checkpoint, save_checkpoint
from .losses import BCEWithLogits
from .noise import GradientNoiseScale
from .models import MAX_INPUT_SIDE, MAX_WIDTH, MIN_INPUT_SIDE, build_model, check_state_fits, seed_cnn
from .optim import SGD, Adam
from .rundir import atomic_write_text, experiment_runs, lock_run, remove_leftovers, run_name, write_experiment_file
from .schedules import SCHEDULES, make_schedule

ATTRIBUTES = ("Eyeglasses", "Male", "Smiling")


# The ranges TrainConfig accepts (train.py checks the same at parse time); the model's own in models.py.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = MIN_INPUT_SIDE, MAX_INPUT_SIDE
MIN_SYNTHETIC = 30              # the built-in set's three splits need a few images each


def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer of at least {lo}, got {v!r}")


def _check_number(name, v, lo, hi, lo_open, hi_open):
    ok = isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        span = f"{'(' if lo_open else '['}{lo}, {'inf' if hi is None else hi}{')' if hi_open or hi is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {span}, got {v!r}")


class TrainingError(RuntimeError):
    """A run that cannot go on (diverged loss, bad settings); the message says why and what was kept."""


@dataclass
class TrainConfig:
    """Every setting of a run; config.json holds exactly these (plus versions and data facts)."""
    schedule: str = "constant"                 # constant | batch-increase | lr-decay
    device: str = "cpu"
    data: str = None                           # CelebA root, prepared .h5, or None = built-in synthetic
    cache_dir: str = "data"
    image_size: tuple = (54, 44)
    attributes: tuple = ATTRIBUTES
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    factor: float = 2.0                        # the study's alpha: batch size x factor, or lr / factor
    patience: int = 1
    min_delta: float = 1e-4
    cooldown: int = 0
    max_batch_size: int = 1024
    on_max: str = "stop"                       # batch-increase at its cap: stop | lr-decay (hybrid)
    min_lr: float = 0.0
    milestones: tuple = ()                     # change at these epochs instead of on a plateau
    optimizer: str = "adam"                    # adam | sgd
    momentum: float = 0.9                      # for sgd
    adam_eps: float = 1e-7                     # Keras' value (the study's), added where adam_eps_placement says
    adam_eps_placement: str = "kingma-ba"      # kingma-ba: to sqrt(v_hat) | keras: to sqrt(v), Keras' (the study's)
    init: str = "he_normal"
    width: float = 1.0
    dropout: float = 0.3
    pos_weight: tuple = None                   # per-attribute positive weights for the loss
    seed: int = 0
    max_micro_batch: int = None                # split larger batches, accumulating gradients
    eval_batch_size: int = 256
    resident: bool = False                     # keep the training images in (GPU) memory
    synthetic_count: int = None                # size of the built-in set (None: its default)
    tf32: bool = False                         # GPU: cuBLAS float32 GEMMs on TF32 tensor cores
    noise_every: int = 16                      # measure the gradient noise scale every k steps (0: never)
    sync_bn: bool = False                      # data-parallel ranks: BatchNorm over the whole global batch
    progress: bool = True

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        self.attributes = tuple(self.attributes)
        self.milestones = tuple(int(m) for m in (self.milestones or ()))
        if self.pos_weight is not None:
            self.pos_weight = tuple(float(w) for w in self.pos_weight)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: expected adam or sgd")
        if self.adam_eps_placement not in Adam.EPS_PLACEMENTS:
            raise ValueError(f"unknown adam_eps_placement {self.adam_eps_placement!r}: expected kingma-ba or keras")
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"unknown device {self.device!r}: expected cpu or gpu")
        for name, lo in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("max_batch_size", 1),
                         ("patience", 0), ("cooldown", 0), ("seed", 0), ("noise_every", 0)):
            _check_int(name, getattr(self, name), lo)
        for name, lo, hi, lo_open, hi_open in (("lr", 0, None, True, False), ("factor", 1, None, True, False),
                                               ("min_delta", 0, None, False, False), ("min_lr", 0, None, False, False),
                                               ("momentum", 0, 1, False, True), ("adam_eps", 0, None, True, False),
                                               ("width", 0, MAX_WIDTH, True, False), ("dropout", 0, 1, False, True)):
            _check_number(name, getattr(self, name), lo, hi, lo_open, hi_open)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) is above lr ({self.lr:g})")
        if len(self.image_size) != 2 or not all(MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE for v in self.image_size):
            raise ValueError(f"image_size must be H, W each in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}] (the five pooling "
                             f"blocks need at least 32), got {self.image_size}")
        if not self.attributes or len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attributes must be distinct names, at least one, got {list(self.attributes)}")
        if self.pos_weight is not None:
            if len(self.pos_weight) != len(self.attributes):
                raise ValueError(f"pos_weight needs one weight per attribute ({len(self.attributes)}: "
                                 f"{', '.join(self.attributes)}), got {len(self.pos_weight)}")
            for w in self.pos_weight:
                _check_number("pos_weight", w, 0, None, True, False)
        if self.milestones and (self.milestones[0] < 1 or any(b <= a for a, b in zip(self.milestones,
                                                                                     self.milestones[1:]))):
            raise ValueError(f"milestones must be increasing epochs from 1 on, got {list(self.milestones)}")
        if self.max_batch_size < self.batch_size:
            raise ValueError(f"max_batch_size ({self.max_batch_size}) is below batch_size ({self.batch_size})")
        if self.tf32 and self.device != "gpu":
            raise ValueError("tf32 applies to device 'gpu' only")
        if self.max_micro_batch is not None:
            _check_int("max_micro_batch", self.max_micro_batch, 1)
        if self.synthetic_count is not None:
            _check_int("synthetic_count", self.synthetic_count, MIN_SYNTHETIC)

    def to_json(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def metric_columns(attributes):
    cols = ["epoch", "train_loss", "val_loss"]
    for split in ("train", "val"):
        cols += [f"{split}_acc_{a}" for a in attributes] + [f"{split}_acc_mean"]
    cols += ["batch_size", "lr", "updates", "images_seen", "epoch_time_s", "wall_time_s", "images_per_s",
             "noise_scale", "noise_scale_exact", "grad_noise_scale", "ranks", "comm_time_s", "comm_bytes", "change"]
    return cols


# --- building blocks ---------------------------------------------------------------------------

def build_optimizer(cfg, model):
    if cfg.optimizer == "adam":
        return Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, eps_placement=cfg.adam_eps_placement)
    return SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def build_schedule(cfg):
    patience = None if cfg.milestones else cfg.patience
    return make_schedule(cfg.schedule, lr=cfg.lr, batch_size=cfg.batch_size, factor=cfg.factor,
                         patience=patience, min_delta=cfg.min_delta, cooldown=cfg.cooldown,
                         min_lr=cfg.min_lr, max_batch_size=cfg.max_batch_size, on_max=cfg.on_max,
                         milestones=list(cfg.milestones) or None)


def dropout_states(model):
    return {layer.name: layer.rng.bit_generator.state for layer in model.layers if hasattr(layer, "rng")}


def set_dropout_states(model, states):
    for layer in model.layers:
        if hasattr(layer, "rng"):
            layer.rng.bit_generator.state = states[layer.name]


def evaluate(model, ds, split, batch_size, device, loss_fn=None, comm=None):
    """Mean loss and per-attribute accuracy (threshold 0.5) of ``model`` on a split, inference mode.
    With data-parallel ranks (``comm``), each rank evaluates its share of every batch and the sums
    are added over the ranks (the same figures on every rank: rank 0's)."""
    xp = xp_for(device)
    loss_fn = loss_fn or BCEWithLogits()
    K = len(ds.attributes)
    total, loss_sum, correct = 0, xp.zeros((), dtype=xp.float64), xp.zeros(K, dtype=xp.int64)
    shard = (comm.rank, comm.size) if comm is not None and comm.size > 1 else None
    for batch in ds.batches(split, batch_size, shuffle=False, device=device, shard=shard):
        n = len(batch.index)
        if n == 0:
            continue
        logits = model.forward(batch.x, train=False)
        loss_sum += loss_fn.forward_array(logits, batch.y).astype(xp.float64) * n
        correct += ((logits > 0) == (batch.y > 0.5)).sum(axis=0)
        total += n
    model.clear_cache()
    if shard is not None:
        sums = comm.allreduce_small(np.concatenate([[float(loss_sum), total], to_cpu(correct)]).astype(np.float64))
        sums = comm.broadcast(sums)
        loss_sum, total, correct = sums[0], int(round(sums[1])), np.rint(sums[2:]).astype(np.int64)
    if total == 0:
        raise TrainingError(f"{ds.path}: the {split} split is empty")
    return float(loss_sum) / total, to_cpu(correct) / total


# --- memory: batches larger than fit are split into micro-batches --------------------------------

def training_bytes_per_sample(model, input_shape, itemsize=4):
    """An estimate of the memory one training sample holds during a step: the input, the output of
    every step of the model's plan (a fused BatchNorm -> ReLU -> MaxPool is one step), what each
    step's op keeps for backward (as the op states it, for the model's device and dtype), plus room
    for the largest step's backward temporaries (twice its output)."""
    shape, total, largest = tuple(input_shape), float(np.prod(input_shape)) * itemsize, 0.0
    for step in model.plan():
        out = step.output_shape(shape)
        n_out = float(np.prod(out))
        kept = float(step.saved_bytes((1,) + shape, model.dtype, model.device))
        total += n_out * itemsize + kept
        largest = max(largest, kept + n_out * itemsize)
        shape = out
    return int(total + 2 * largest)


def available_bytes(device):
    """Memory a run may use now: free GPU memory (plus CuPy's cached blocks), or MemAvailable on Linux."""
    if device == "gpu":
        import cupy
        free, _ = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        return int(free + pool.total_bytes() - pool.used_bytes())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def measured_bytes_per_sample(model, input_shape, n=4):
    """Peak bytes per sample of one CPU training step, measured with tracemalloc on a throwaway copy
    of the architecture (the real model's BatchNorm statistics and dropout generators stay untouched)."""
    import tracemalloc
    probe = build_model(model.config) if getattr(model, "config", None) else None
    if probe is None:
        return None
    x = np.random.default_rng(0).random((n,) + tuple(input_shape), dtype=np.float32)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    y = probe.forward(x)
    probe.backward(np.ones_like(y))
    peak = tracemalloc.get_traced_memory()[1] - base
    if not was_tracing:
        tracemalloc.stop()
    return int(peak / n) + 1


def plan_micro_batch(cfg, model, input_shape, budget_fraction=0.6, ranks=1):
    """The micro-batch size to use (None: no split needed). If the user gave --max-micro-batch, that;
    else the largest power of two whose step fits in ``budget_fraction`` of the free memory, less the
    largest op's own workspace (``ops.workspace_bytes``), when the largest batch the schedule can
    reach would not fit (of which one of ``ranks`` data-parallel ranks holds its share). The need per
    sample is measured on the CPU and estimated (conservatively) on the GPU."""
    from . import ops
    if cfg.max_micro_batch is not None:
        return cfg.max_micro_batch
    grows = cfg.schedule in ("batch-increase", "noise-adaptive")
    largest_batch = -(-(cfg.max_batch_size if grows else cfg.batch_size) // ranks)
    budget = available_bytes(cfg.device) * budget_fraction - ops.workspace_bytes(cfg.device, model.dtype)
    per_sample = training_bytes_per_sample(model, input_shape, np.dtype(model.dtype).itemsize)
    if largest_batch * per_sample <= budget:      # fits even by the conservative estimate
        return None
    if cfg.device == "cpu":                       # measure before deciding to split
        per_sample = measured_bytes_per_sample(model, input_shape) or per_sample
    fits = int(budget // per_sample)
    if largest_batch <= fits:
        return None
    if fits < 1:
        raise TrainingError(f"one training image of size {tuple(input_shape)} needs about "
                            f"{per_sample / 2**20:.0f} MiB, more than the free memory allows on the {cfg.device}")
    return 2 ** int(math.log2(fits))


# --- the run -----------------------------------------------------------------------------------

class Run:
    """One schedule's training run in ``run_dir``; ``Run.resume(run_dir)`` continues one exactly."""

    def __init__(self, cfg, run_dir, ds, model=None, comm=None):
        self.cfg, self.dir, self.ds = cfg, Path(run_dir), ds
        self.comm = comm if comm is not None else distributed.Communicator()
        self.xp = xp_for(cfg.device)
        if cfg.device == "gpu":
            from .kernels.common_gpu import set_tf32
            set_tf32(cfg.tf32)
        self.model = model if model is not None else seed_cnn(
            num_outputs=len(ds.attributes), input_shape=(3,) + tuple(ds.image_size), width=cfg.width,
            dropout=cfg.dropout, init=cfg.init, seed=cfg.seed)
        self.model.to(cfg.device)
        first = self.model.layers[0]
        if hasattr(first, "needs_input_grad"):   # no one needs the gradient of the input images
            first.needs_input_grad = False
        self.optimizer = build_optimizer(cfg, self.model)
        self.schedule = build_schedule(cfg)
        self.loss_fn = BCEWithLogits(pos_weight=cfg.pos_weight)
        self.columns = metric_columns(ds.attributes)
        self.metrics = []                        # rows so far
        self.epoch = 0                           # completed epochs
        self.batch = 0                           # batches done in the current epoch
        self.updates = self.images_seen = 0
        self.wall_time = 0.0                     # training + validation seconds, summed over sessions
        self.batch_size, self.lr = cfg.batch_size, cfg.lr
        self.best_val_loss, self.best_epoch = math.inf, None
        self.pending_change = ""                 # reason text, logged in the next row
        self.accum = self._fresh_accum()         # the current epoch's running sums
        self.stop = StopRequest()
        self.micro_batch = plan_micro_batch(cfg, self.model, (3,) + tuple(ds.image_size), ranks=self.comm.size)
        self.noise = GradientNoiseScale()          # B_simple, measured every cfg.noise_every steps
        self._small = None                         # this step's half-batch |G|^2, when measured
        if self.comm.parallel:
            self._init_ranks()

    def _init_ranks(self):
        """Data-parallel set-up (tinyconv/distributed.py): equal start, one flat gradient buffer,
        dropout masks per global sample, one micro-batch size for every rank."""
        comm, cfg = self.comm, self.cfg
        comm.broadcast_parameters(self.model)
        set_dropout_states(self.model, comm.broadcast(dropout_states(self.model)))   # equal masks too
        self.optimizer.flat_gradients()
        self.dropout_shards = distributed.DropoutShards(self.model, (3,) + tuple(self.ds.image_size))
        self.micro_batch = comm.broadcast(self.micro_batch)
        largest = cfg.max_batch_size if cfg.schedule in ("batch-increase", "noise-adaptive") else cfg.batch_size
        if cfg.sync_bn and self.micro_batch and self.micro_batch < -(-largest // comm.size):
            raise distributed.DistributedError(
                f"--sync-bn needs each rank's share of a batch in one piece, but shares above {self.micro_batch} "
                f"images would be split into micro-batches (batches up to {largest} over {comm.size} "
                "ranks): use more ranks, a lower --max-batch-size, or drop --sync-bn")
        from .layers.norm import BatchNorm2D
        self._bn_layers = [layer for layer in self.model.layers if isinstance(layer, BatchNorm2D)]

    def _fresh_accum(self):
        return {"loss_sum": 0.0, "correct": [0] * len(self.ds.attributes), "seen": 0, "seconds": 0.0}

    # --- files ---------------------------------------------------------------------------------
    @property
    def ckpt_dir(self):
        return self.dir / "checkpoints"

    def write_config(self):
        if not self.comm.is_root:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        info = {"config": self.cfg.to_json(), "model": self.model.config, "ranks": self.comm.size,
                "num_params": self.model.num_params(), "data": data_facts(self.ds),
                "device": device_facts(self.cfg.device), "versions": versions(),
                "command": " ".join(sys.argv), "cwd": os.getcwd(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(self.dir / "config.json", json.dumps(info, indent=2) + "\n")

    def meta(self):
        """What export and evaluation need to know without loading arrays."""
        from .data import RESIZE_POLICY
        return {"model": self.model.config, "attributes": list(self.ds.attributes),
                "image_size": list(self.ds.image_size), "resize_policy": RESIZE_POLICY,
                "synthetic": bool(self.ds.synthetic), "run_dir": str(self.dir), "schedule": self.cfg.schedule,
                "epoch": self.epoch, "tinyconv_version": __version__, "data_source": str(self.ds.path),
                "best_epoch": self.best_epoch, "best_val_loss": finite_or_none(self.best_val_loss)}

    def state(self):
        return {
            "meta": self.meta(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": {"dropout": dropout_states(self.model)},
            "noise": self.noise.state_dict(),
            "progress": {"epoch": self.epoch, "batch": self.batch, "updates": self.updates,
                         "images_seen": self.images_seen, "wall_time": self.wall_time,
                         "batch_size": self.batch_size, "lr": self.lr,
                         "best_val_loss": finite_or_none(self.best_val_loss), "best_epoch": self.best_epoch,
                         "pending_change": self.pending_change, "accum": self.accum,
                         "log_bytes": self._log_bytes()},
            "metrics": self.metrics,
        }

    def save(self, name):
        """Rank 0 writes the checkpoint (the state is the same on every rank: see ``_gather``)."""
        if not self.comm.is_root:
            return
        path = self.ckpt_dir / f"{name}.h5"
        try:
            save_checkpoint(path, self.state(), meta=self.meta())
        except OSError as exc:
            kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written before"
            raise TrainingError(f"could not write {path} ({exc.strerror or exc}); {kept}") from None

    def _log_bytes(self):
        try:
            return (self.dir / "train.log").stat().st_size
        except OSError:
            return 0

    def load_state(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        set_dropout_states(self.model, state["rng"]["dropout"])
        if "noise" in state:                       # checkpoints before the noise scale have none
            self.noise.load_state_dict(state["noise"])
        p = state["progress"]
        self.epoch, self.batch = int(p["epoch"]), int(p["batch"])
        self.updates, self.images_seen, self.wall_time = int(p["updates"]), int(p["images_seen"]), float(p["wall_time"])
        self.batch_size, self.lr = int(p["batch_size"]), float(p["lr"])
        self.optimizer.lr = self.lr
        self.best_val_loss = math.inf if p["best_val_loss"] is None else float(p["best_val_loss"])
        self.best_epoch = p["best_epoch"]
        self.pending_change = p["pending_change"]
        self.accum = p["accum"] if self.comm.is_root else self._fresh_accum()   # rank 0 holds the sums
        self.metrics = list(state["metrics"])
        self._log_size_at_save = p.get("log_bytes")
        self._rewrite_metric_files()

    @classmethod
    def resume(cls, run_dir, ds_loader, epochs=None, progress=None, overrides=None, comm=None):
        """Rebuild a run from ``run_dir/config.json`` and continue from ``checkpoints/last.h5``.

        ``overrides``: settings that may change on resume without changing the run (``epochs``,
        ``progress``, ``device``, ``data`` for a moved copy, ...; train.py decides which). The data
        opened must be the data the run trained on (same fingerprint), wherever it now lies."""
        run_dir = Path(run_dir)
        config_file, last = run_dir / "config.json", run_dir / "checkpoints" / "last.h5"
        if not config_file.is_file() or not last.is_file():
            raise TrainingError(f"{run_dir}: cannot resume: needs config.json and checkpoints/last.h5")
        info = read_config(run_dir)
        cfg = TrainConfig.from_json(info["config"])
        overrides = dict(overrides or {})
        if epochs is not None:
            overrides["epochs"] = epochs
        if progress is not None:
            overrides["progress"] = progress
        if "data" not in overrides:
            from .data import recorded_data_paths
            cfg.data, cfg.cache_dir = recorded_data_paths(info)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        state = load_checkpoint(last)
        for section in ("meta", "model", "optimizer", "schedule", "rng", "progress", "metrics"):
            if section not in state:
                raise TrainingError(f"{last}: has no {section!r} section: not a training checkpoint of tinyconv "
                                    "(or written by a version that cannot be resumed)")
        try:
            check_state_fits(state["meta"]["model"], state["model"])    # before anything is allocated
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError(f"{last}: does not fit the run in {run_dir} ({exc})") from None
        ds = ds_loader(cfg)
        check_same_data(info, ds, run_dir)
        try:
            run = cls(cfg, run_dir, ds, model=build_model(state["meta"]["model"]), comm=comm)
            run.load_state(state)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TrainingError(f"{last}: does not fit the run in {run_dir} ({exc})") from None
        run.resumed = True
        return run

    def _repair_best(self):
        """best.h5 must hold the best epoch that last.h5 records. best is written before last, so a crash
        between the two leaves best ahead, never behind; a best.h5 left behind by an older tinyconv
        (which wrote last first) is rebuilt from last.h5 when last.h5 is that epoch's state."""
        from .checkpoint import CheckpointError, read_checkpoint_meta
        best, last = self.ckpt_dir / "best.h5", self.ckpt_dir / "last.h5"
        if self.best_epoch is None or not self.comm.is_root:
            return
        try:
            best_epoch = read_checkpoint_meta(best).get("epoch") if best.is_file() else None
        except (CheckpointError, OSError, ValueError):
            best_epoch = None
        if best_epoch is not None and best_epoch >= self.best_epoch:
            return
        if self.best_epoch == self.epoch and self.batch == 0:
            import shutil
            tmp = best.with_name(f"best.h5.tmp-{os.getpid()}")
            shutil.copyfile(last, tmp)
            os.replace(tmp, best)
            self.log(f"repaired {best}: it held epoch {best_epoch}, the best epoch is {self.best_epoch} "
                     "(copied from last.h5, written at that epoch's end)")
        else:
            self.log(f"WARNING: {best} holds epoch {best_epoch} but the best epoch was {self.best_epoch}, and "
                     "last.h5 is past it: best.h5 cannot be repaired (it is the best checkpoint on disk)")

    def _rewrite_metric_files(self):
        if not self.comm.is_root:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            w.writeheader()
            w.writerows(self.metrics)
        with open(self.dir / "metrics.jsonl", "w") as f:
            for row in self.metrics:
                f.write(json.dumps(row) + "\n")

    def _append_metrics(self, row):
        if not self.comm.is_root:
            return
        new = not (self.dir / "metrics.csv").exists()
        with open(self.dir / "metrics.csv", "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns)
            if new:
                w.writeheader()
            w.writerow(row)
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _truncate_log(self, size):
        """Drop train.log lines written after the checkpoint being resumed (their epochs run again)."""
        path = self.dir / "train.log"
        if size is not None and self.comm.is_root and path.is_file() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)

    def log(self, text):
        if not self.comm.is_root:
            return
        with open(self.dir / "train.log", "a") as f:
            f.write(text + "\n")
        write_line(text)

    # --- training ------------------------------------------------------------------------------
    def train(self):
        """Run the remaining epochs. Ctrl-C saves the exact position to last.h5 and re-raises.
        The caller holds the folder's lock (``run_experiment``); a killed write's temporary files go."""
        for name in (remove_leftovers(self.dir) if self.comm.is_root else ()):
            write_line(f"removed {name}, left by a write that was interrupted")
        if getattr(self, "resumed", False):
            self._truncate_log(self._log_size_at_save)
        if self.epoch == 0 and self.batch == 0:
            self.write_config()
            self.log(f"run {self.dir}: schedule {self.cfg.schedule}, {self.cfg.epochs} epochs, batch "
                     f"{self.batch_size}, lr {self.lr:g}, {self.cfg.optimizer}, device {self.cfg.device}, "
                     f"{self.model.num_params():,} parameters, data {self.ds.path}")
            if self.micro_batch and self.micro_batch < max(self.cfg.max_batch_size, self.cfg.batch_size):
                self.log(f"batches larger than {self.micro_batch} are split into micro-batches of {self.micro_batch} "
                         "(gradients summed; BatchNorm uses per-micro-batch statistics)")
            if self.comm.size > 1:
                self.log(f"data parallel: {self.comm.size} ranks ({self.comm.backend}), each a share of every "
                         f"batch; BatchNorm {'synchronised over the ranks' if self.cfg.sync_bn else 'per rank (ghost batches)'}")
            if self.ds.synthetic:
                self.log("NOTE: built-in synthetic faces, a stand-in for testing and teaching; "
                         "these are NOT CelebA results")
        else:
            self.log(f"resuming {self.dir} at epoch {self.epoch + 1}, batch {self.batch}")
            self._repair_best()
        if self.batch_size < self.comm.size:       # (on resume: the batch the run has grown to)
            raise distributed.DistributedError(
                f"the batch size {self.batch_size} is smaller than the number of ranks ({self.comm.size}): every "
                "rank needs at least one image of each batch")
        sync = self.cfg.sync_bn and self.comm.size > 1
        with StopRequest() as self.stop, _synchronised_batchnorm(self.comm if sync else None):
            while self.epoch < self.cfg.epochs:
                try:
                    self._check_stop(agree=True)
                    self.train_epoch()
                except KeyboardInterrupt:     # only ever raised at a step boundary (StopRequest)
                    self.log(f"interrupted at epoch {self.epoch + 1}, batch {self.batch}: saving the position to "
                             f"{self.ckpt_dir / 'last.h5'}; continue with --resume {self.dir}")
                    self._gather()
                    self.save("last")
                    raise
                self.end_epoch()
        return self.metrics

    def _gather(self):
        """Make the state every rank holds the global one before it is used or saved: the epoch's
        running sums added over the ranks, and (ghost BatchNorm) the running statistics averaged.
        The average at the epoch's end equals averaging after every step: a running statistic is a
        linear function (an exponential moving average) of the batch statistics."""
        if self.comm.size == 1:
            return
        acc, comm = self.accum, self.comm
        sums = np.concatenate([[acc["loss_sum"], acc["seen"]], acc["correct"]]).astype(np.float64)
        sums = comm.broadcast(comm.allreduce_small(sums))
        acc["loss_sum"], acc["seen"] = float(sums[0]), int(round(sums[1]))
        acc["correct"] = [int(round(c)) for c in sums[2:]]
        if not self.cfg.sync_bn:
            comm.average_buffers(self.model)
        mine = float(to_cpu(self.optimizer.flat.p).astype(np.float64).sum())
        if comm.broadcast(mine) != mine:
            raise distributed.DistributedError(
                f"rank {comm.rank}: the model's weights differ from rank 0's: the ranks' allreduces gave "
                "different sums (a faulty MPI or NCCL set-up)")

    def train_epoch(self):
        cfg, ds, xp = self.cfg, self.ds, self.xp
        bs = self.batch_size
        n_batches = ds.num_batches("train", bs)
        K = len(ds.attributes)
        shard = (self.comm.rank, self.comm.size) if self.comm.size > 1 else None
        batches = ds.batches("train", bs, seed=cfg.seed, epoch=self.epoch, start_batch=self.batch,
                             device=cfg.device, resident=cfg.resident, shard=shard)
        self.comm.reset_counters()
        bar = progress_bar(total=n_batches, initial=self.batch, disable=not cfg.progress or not self.comm.is_root,
                           desc=f"{cfg.schedule} epoch {self.epoch + 1}/{cfg.epochs}", unit="batch")
        acc = self.accum
        correct = xp.asarray(np.asarray(acc["correct"], dtype=np.int64))
        losses = LaggedLosses(xp)          # each step's loss read one step late (no GPU stall)
        t0 = time.perf_counter()
        try:
            for batch in batches:
                loss = self.step(batch)
                n = len(batch.index)
                correct += self._batch_correct
                previous = losses.push(loss, n)
                if previous is not None:
                    self._account(*previous, bar)
                self.batch += 1
                self.updates += 1
                self.images_seen += batch.total
                acc["seen"] += n
                self._check_stop()
            last = losses.pop()
            if last is not None:
                self._account(*last, bar)
        finally:
            # On Ctrl-C, keep the exact position: the running sums for the batches done so far.
            last = losses.pop()
            if last is not None:
                self._account(*last, None)
            acc["correct"] = [int(c) for c in to_cpu(correct)]
            acc["seconds"] += time.perf_counter() - t0
            acc["comm_seconds"] = acc.get("comm_seconds", 0.0) + self.comm.seconds
            acc["comm_bytes"] = acc.get("comm_bytes", 0) + self.comm.bytes
            self.wall_time += time.perf_counter() - t0
            bar.close()
            batches.close()
            self.model.clear_cache()
        assert len(acc["correct"]) == K

    def _check_stop(self, agree=False):
        """Raise KeyboardInterrupt where a stop was asked for. With data-parallel ranks only on what
        every rank agreed: the control allreduce of the last step, or (``agree``, at an epoch's start)
        one allreduce of the ranks' requests, so no rank leaves the loop alone."""
        if not self.comm.parallel:
            return self.stop.check()
        if agree:
            flag = np.array([float(self.stop.requested)])
            self._stop_agreed = self.comm.allreduce_small(flag)[0] > 0
        if getattr(self, "_stop_agreed", False):
            raise KeyboardInterrupt

    def _momentum(self):
        return self.cfg.momentum if self.cfg.optimizer == "sgd" else 0.0

    def _account(self, loss_value, n, bar):
        if not math.isfinite(loss_value):
            last = self.ckpt_dir / "last.h5"
            kept = (f"{last} (the end of epoch {self.epoch} or a later step) and best.h5 are kept"
                    if last.is_file() else "no checkpoint had been written yet")
            raise TrainingError(
                f"the training loss became {loss_value} at epoch {self.epoch + 1}, batch {self.batch} "
                f"(lr {self.lr:g}, batch size {self.batch_size}); stopped: {kept}. Resuming would diverge "
                f"again with the same settings: train anew with a lower --lr (--run-dir elsewhere, or --overwrite)")
        self.accum["loss_sum"] += loss_value * n
        if bar is not None:
            seen = max(self.accum["seen"], 1)
            bar.set_postfix_str(f"loss {self.accum['loss_sum'] / seen:.4f}", refresh=False)
            bar.update(1)

    def step(self, batch):
        """One optimizer step on a batch (split into micro-batches if it is too large); returns the loss
        array (the mean over this process's rows). With data-parallel ranks, ``batch`` is this rank's
        share of a global batch of ``batch.total`` rows: its loss is weighted by its share of the rows,
        and one allreduce adds the ranks' gradients (``_step_ranks``)."""
        if self.comm.parallel:
            return self._step_ranks(batch)
        B = len(batch.index)
        measure = self._measure_now(B)
        if measure:
            self._measure_half_batch(batch)
        loss = self._forward_backward(batch, B)
        if measure:
            self.noise.update(*self._small, squared_grad_norm(self.model), B)
        self.optimizer.step()
        return loss

    def _measure_now(self, B):
        """Measure the gradient noise scale in this step: every ``noise_every`` steps, on full batches
        only. An epoch's last, short batch (as few as 2 images) would give one very noisy estimate the
        same weight in the moving averages as a full one; it is left out. With ranks, each rank's share
        (the small batch) must hold at least one image."""
        return bool(self.cfg.noise_every and B == self.batch_size and B >= 2 * self.comm.size
                    and self.updates % self.cfg.noise_every == 0)

    def _forward_backward(self, batch, B):
        """The gradient of this process's rows, as their part of the mean loss over ``B`` rows, into
        the layers' grads (micro-batches accumulating); returns the mean loss over the rows."""
        model, loss_fn, xp = self.model, self.loss_fn, self.xp
        b = len(batch.index)
        micro = self.micro_batch or b
        if micro >= b:
            logits = model.forward(batch.x)
            loss = loss_fn.forward_array(logits, batch.y)
            dz = loss_fn.backward()
            model.backward(dz if b == B else dz * (b / B))
            self._batch_correct = ((logits > 0) == (batch.y > 0.5)).sum(axis=0)
        else:                        # the micro-batches' gradients add up in the layers' grads
            loss = xp.zeros((), dtype=xp.float32)
            self._batch_correct = 0
            for s in range(0, b, micro):
                x, y = batch.x[s:s + micro], batch.y[s:s + micro]
                logits = model.forward(x)
                loss = loss + loss_fn.forward_array(logits, y) * (len(x) / b)
                model.backward(loss_fn.backward() * (len(x) / B), accumulate=s > 0)
                self._batch_correct = self._batch_correct + ((logits > 0) == (y > 0.5)).sum(axis=0)
        return loss

    def _step_ranks(self, batch):
        """One data-parallel step: this rank's share forward and backward (none when the batch has
        fewer rows than ranks and the share is empty), one allreduce of the flat gradient buffer, then
        the same optimizer step on every rank. A small host allreduce beside it carries the control
        values: whether any rank was asked to stop (so all stop after the same step) and, every
        ``noise_every`` steps, the ranks' own |G|^2 for the gradient noise scale (each rank's share
        is the small batch, the sum the big one: no extra pass, except under --sync-bn, where a rank's
        part of the gradient is no small batch's and its share is measured normalised by itself)."""
        comm, B, b = self.comm, batch.total, len(batch.index)
        grads = self.optimizer.flat_gradients()
        measure = self._measure_now(B)
        if measure and comm.size == 1:           # one rank (through MPI): the half-batch measurement
            self._measure_half_batch(batch)
        elif measure and self.cfg.sync_bn:       # the share normalised by itself: under sync-BN a rank's part
            with _synchronised_batchnorm(None):  # of the global gradient is no small-batch gradient
                self._measure_half_batch(batch, rows=b)
            small_sq = self._small[0]
        self.dropout_shards.before(batch)
        if b:
            loss = self._forward_backward(batch, B)
        else:
            grads[...] = 0
            loss, self._batch_correct = self.xp.zeros((), dtype=self.xp.float32), 0
            if self.cfg.sync_bn:
                from .ops.norm import sync_empty_rank
                sync_empty_rank(self._bn_layers)
        self.dropout_shards.after(batch)
        control = np.zeros(2)
        control[0] = float(self.stop.requested)
        if measure and comm.size > 1:   # |G_small|^2 of this rank's mean gradient, averaged over ranks
            control[1] = (small_sq if self.cfg.sync_bn else squared_norm(grads) * (B / b) ** 2) / comm.size
        comm.allreduce(grads)
        comm.allreduce_small(control)
        self._stop_agreed = control[0] > 0      # what every rank decides on; not stop.requested (a signal may land later)
        if measure:
            small = (float(control[1]), B / comm.size) if comm.size > 1 else self._small
            self.noise.update(*small, squared_norm(grads), B)
        self.optimizer.step()
        return loss

    def _measure_half_batch(self, batch, rows=None):
        """|G_small|^2 of the first half of the batch, for the gradient noise scale (tinyconv/noise.py):
        one more forward and backward, after which the BatchNorm running statistics and the dropout
        generators are put back, so the training run itself is exactly what it is without it. (The
        half batch is normalised with its own statistics: its gradient is that of the model with
        BatchNorm over B/2 images, a small bias in the estimate, see docs/noise-scale.md.)"""
        model, half = self.model, rows or len(batch.index) // 2
        buffers = [{k: v.copy() for k, v in layer.buffers.items()} for layer in model.layers]
        generators = dropout_states(model)
        micro = self.micro_batch or half
        for s in range(0, half, micro):
            x, y = batch.x[s:min(s + micro, half)], batch.y[s:min(s + micro, half)]
            self.loss_fn.forward_array(model.forward(x), y)
            model.backward(self.loss_fn.backward() * (len(x) / half), accumulate=s > 0)
        self._small = (squared_grad_norm(model), half)
        for layer, saved in zip(model.layers, buffers):
            for k, v in saved.items():
                layer.buffers[k][...] = v
        set_dropout_states(model, generators)

    def end_epoch(self):
        cfg, acc = self.cfg, self.accum
        t0 = time.perf_counter()
        self._gather()
        val_loss, val_acc = evaluate(self.model, self.ds, "validation", cfg.eval_batch_size, cfg.device,
                                     self.loss_fn, comm=self.comm)
        self.wall_time += time.perf_counter() - t0
        self.epoch += 1
        seen = max(acc["seen"], 1)
        train_acc = np.asarray(acc["correct"]) / seen
        row = {"epoch": self.epoch, "train_loss": acc["loss_sum"] / seen, "val_loss": val_loss}
        for split, a in (("train", train_acc), ("val", val_acc)):
            row.update({f"{split}_acc_{name}": float(v) for name, v in zip(self.ds.attributes, a)})
            row[f"{split}_acc_mean"] = float(np.mean(a))
        n_train = self.ds.split_size("train")
        row.update({"batch_size": self.batch_size, "lr": self.lr, "updates": self.updates,
                    "images_seen": self.images_seen, "epoch_time_s": acc["seconds"], "wall_time_s": self.wall_time,
                    "images_per_s": acc["seen"] / max(acc["seconds"], 1e-9),
                    "noise_scale": self.lr * n_train / self.batch_size,
                    "noise_scale_exact": sgd_noise_scale(self.lr, n_train, self.batch_size, self._momentum()),
                    "grad_noise_scale": self.noise.b_simple,
                    "ranks": self.comm.size, "comm_time_s": acc.get("comm_seconds", 0.0),
                    "comm_bytes": acc.get("comm_bytes", 0),
                    "change": self.pending_change})
        self.metrics.append(row)
        self._append_metrics(row)
        self.log(f"{cfg.schedule} epoch {self.epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
                 f"acc {row['train_acc_mean']:.4f} | val loss {val_loss:.4f} acc {row['val_acc_mean']:.4f} | "
                 f"batch {self.batch_size} lr {self.lr:.3g} | {self.updates} updates | "
                 f"{row['images_per_s']:.0f} img/s | {self.wall_time:.0f} s" + (
                     f" | {self.comm.size} ranks, allreduce {row['comm_time_s']:.1f} s "
                     f"({row['comm_time_s'] / max(acc['seconds'], 1e-9):.0%}), {row['comm_bytes'] / 2**20:.0f} MiB sent"
                     if self.comm.size > 1 else ""))
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
        # The schedule decides at the end of the epoch; the change applies from the next one.
        self.pending_change = ""
        if self.schedule.step({"val_loss": val_loss, "val_acc": row["val_acc_mean"],
                               "grad_noise_scale": self.noise.b_simple}) is not None:
            change = self.schedule.last_change
            if change.what == "lr":
                self.lr = float(change.new)
                self.optimizer.lr = self.lr
            else:
                self.batch_size = int(change.new)
            self.pending_change = str(change)
            self.log(f"schedule change: {change}")
        self.batch, self.accum = 0, self._fresh_accum()
        if improved:                # best first: a crash between the two leaves best ahead of last, never
            self.save("best")       # behind (resume then redoes the epoch, which writes best again)
        self.save("last")


# --- helpers -----------------------------------------------------------------------------------

def squared_norm(a):
    """|a|^2 summed in float64 (NumPy or CuPy), as a Python float."""
    return float((a.astype("float64") ** 2).sum())


@contextlib.contextmanager
def _synchronised_batchnorm(comm):
    """While inside, training-mode BatchNorm allreduces its sums over ``comm``'s ranks
    (tinyconv/ops/norm.py ``SYNC``); ``None``: per-process BatchNorm, as outside."""
    from .ops import norm
    before, norm.SYNC = norm.SYNC, comm
    try:
        yield
    finally:
        norm.SYNC = before


def squared_grad_norm(model):
    """|g|^2 over every parameter gradient of the model, summed in float64, as a Python float."""
    total = 0.0
    for _, grads in model.parameters():
        for g in grads.values():
            total += squared_norm(g)
    return total


def sgd_noise_scale(lr, n, batch_size, momentum=0.0):
    """Smith & Le's SGD noise scale g = lr / (1 - momentum) * (N / B - 1); the logged ``noise_scale``
    lr * N / B is its approximation for B << N without momentum. For Adam tinyconv logs the same
    expression with momentum 0: a reference point, not Adam's own theory (see walkthrough 5)."""
    return lr / (1.0 - momentum) * (n / batch_size - 1.0)


def finite_or_none(v):
    return None if v is None or not math.isfinite(v) else float(v)


def versions():
    import h5py
    out = {"tinyconv": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "h5py": h5py.__version__}
    for name in ("numba", "cupy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    return out


def device_facts(device):
    facts = {"device": device, "platform": platform.platform(), "cpu_count": os.cpu_count()}
    if device == "gpu":
        facts["gpu"] = gpu_status()
    return facts


def data_facts(ds):
    return {"path": str(ds.path), "synthetic": bool(ds.synthetic), "source_layout": ds.source_layout,
            "image_size": list(ds.image_size), "attributes": list(ds.attributes),
            "sizes": {s: ds.split_size(s) for s in ("train", "validation", "test")},
            "fingerprint": ds.fingerprint}


def progress_bar(**kw):
    from tqdm import tqdm
    return tqdm(file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


# Data-parallel ranks other than 0 print nothing (train.py sets this; errors still go to stderr).
QUIET = False


def write_line(text):
    if QUIET:
        return
    from tqdm import tqdm
    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


class LaggedLosses:
    """Step losses read on the host one step late, without making the device wait.

    ``push(loss, n)`` takes step k's loss (a device scalar) and returns step k-1's (value, n), or None;
    ``pop()`` returns the one still held. On the CPU the value is read at once. On the GPU, reading a
    device scalar (``float(loss)``) queues a synchronous copy behind everything queued so far, the
    next step included, so the GPU would idle while the host queued the step after. Instead each loss
    is copied asynchronously into pinned memory right after its step is queued, with an event behind
    the copy; reading it a step later waits for that step only, while the device runs the next one.
    """

    def __init__(self, xp):
        self.xp = xp
        self.gpu = xp is not np
        self.held = None
        self.slots, self.turn = [], 0      # two pinned float32 scalars, used in turn (GPU)

    def push(self, loss, n):
        previous = self.pop()
        if not self.gpu:
            self.held = (float(loss), n)
            return previous
        if not self.slots:
            import cupyx
            self.slots = [cupyx.empty_pinned((), dtype=np.float32) for _ in range(2)]
        host = self.slots[self.turn]
        self.turn ^= 1
        self.xp.asnumpy(loss.astype(self.xp.float32, copy=False), out=host, blocking=False)
        done = self.xp.cuda.Event(disable_timing=True)
        done.record()
        self.held = (host, done, n)
        return previous

    def pop(self):
        held, self.held = self.held, None
        if held is None or not self.gpu:
            return held
        host, done, n = held
        done.synchronize()
        return float(host), n


class StopNow(BaseException):
    """A second Ctrl-C: stop at once, save nothing (not a KeyboardInterrupt, so no handler saves)."""


# What a second Ctrl-C does: "raise" StopNow (for library use: a notebook keeps its kernel), or "exit"
# the process at once with code 130 (train.py sets this: the process is ending anyway).
SECOND_SIGNAL = "raise"


def _second_signal(signum=None, frame=None):
    if SECOND_SIGNAL == "exit":
        os.write(2, b"\nstopped at once (second Ctrl-C); the last checkpoint written is kept\n")
        os._exit(130)
    raise StopNow("stopped at once by a second Ctrl-C; the last checkpoint written is kept")


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the next safe point (between two steps,
    never inside an optimizer update), where it saves the exact position. The handler only sets a
    flag, which the loop reads at step boundaries (``check``). A second Ctrl-C stops at once, saving
    nothing (``SECOND_SIGNAL``: raise StopNow, or exit with code 130 as train.py does, also after the
    first stop was honoured): the last checkpoint written stays as it was (a checkpoint write it
    interrupts leaves only a temporary file, removed on the next start). SIGKILL cannot be caught: a
    killed run resumes from its last checkpoint."""

    def __init__(self):
        self.requested = False
        self.old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except ValueError:          # not the main thread: leave the default handlers
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:
            _second_signal()
        self.requested = True
        write_line("stopping after this step (Ctrl-C again to stop at once)")

    def check(self):
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self.old.items():     # after a stop, a further signal is a second one
            signal.signal(sig, _second_signal if self.requested and SECOND_SIGNAL == "exit" else handler)
        return False


# --- experiments: one or several schedules from the same start ---------------------------------

def open_data(cfg):
    from .data import load_for_settings
    return load_for_settings(cfg.to_json(), progress=cfg.progress)


def write_comparison(run_dirs, out_dir, ds, device="cpu"):
    """The full evaluation (tinyconv.report): comparison.md/.csv, plots and report.md in ``out_dir``,
    and each run's predictions, classification report and example grids; returns the Markdown table."""
    from .report import evaluate_runs
    return evaluate_runs(run_dirs, out=out_dir, device=device, datasets=(ds,), progress=False)["table"]


def run_experiment(cfg, schedules, run_dir, resume=False, overrides=None, seeds=None, comm=None):
    """Train each schedule from the same initial weights and data order into ``run_dir/<schedule>``
    (or ``run_dir`` itself for a single schedule without ``seeds``); with ``seeds``, every schedule for
    every seed into ``run_dir/seed<k>-<schedule>`` (the runs of one seed share their initial weights
    and data order). Returns the run folders trained. Holds the folders' locks (tinyconv/rundir.py)
    throughout. ``resume``: continue each run that has a last.h5 (``overrides`` as for
    :meth:`Run.resume`). The kernels are warmed up first, so no run's wall time pays their compile.
    ``comm``: data-parallel ranks (tinyconv/distributed.py): every rank trains, rank 0 alone takes
    the locks and writes files (rank 0 opens the data first, so a built-in set is drawn once)."""
    comm = comm if comm is not None else distributed.Communicator()
    root = comm.is_root
    run_dir = Path(run_dir)
    plan = [(name, cfg.seed, run_name(name)) for name in schedules] if seeds is None else \
        [(name, seed, run_name(name, seed)) for seed in seeds for name in schedules]
    single = len(plan) == 1 and seeds is None
    dirs = [run_dir] if single else [run_dir / folder for _, _, folder in plan]
    locks = [] if not root else lock_run(run_dir) if single else lock_run(run_dir, experiment=True)
    try:
        if not single and root:
            locks += [lock for d in dirs for lock in lock_run(d, experiment=run_dir)]
            if not resume or not (run_dir / "experiment.json").is_file():
                write_experiment_file(run_dir, schedules, seeds)
        if not root:
            comm.barrier()                   # rank 0 has the data ready
        ds = open_data(cfg)
        if root:
            comm.barrier()
        try:
            warm_up(cfg, ds)
            for (name, seed, _), d in zip(plan, dirs):
                if comm.broadcast(resume and (d / "checkpoints" / "last.h5").is_file()):   # rank 0's view
                    run = Run.resume(d, lambda c: ds, overrides=overrides, comm=comm)
                else:
                    c = TrainConfig.from_json({**cfg.to_json(), "schedule": name, "seed": seed})
                    run = Run(c, d, ds, comm=comm)
                run.train()
            if not single and root:          # every finished run of the experiment, not only these
                done = [d for d in experiment_runs(run_dir).values() if (d / "checkpoints" / "best.h5").is_file()]
                table = write_comparison(done, run_dir, ds, cfg.device)
                write_line("\n" + table + f"\n\nwrote {run_dir / 'report.md'}, comparison.md/.csv and the plots")
            comm.barrier()
        finally:
            ds.close()
    finally:
        for lock in locks:
            lock.release()
    return dirs


def warm_up(cfg, ds):
    """One training step of the run's model on two random images, timed and logged apart: the first
    call of each kernel in a process compiles it (numba on the CPU, NVRTC on the GPU; both load from a
    disk cache after the first time), and that time belongs to no schedule."""
    t0 = time.perf_counter()
    model = seed_cnn(num_outputs=len(ds.attributes), input_shape=(3,) + tuple(ds.image_size), width=cfg.width,
                     dropout=cfg.dropout, init=cfg.init, seed=cfg.seed).to(cfg.device)
    xp = xp_for(cfg.device)
    x = xp.asarray(np.random.default_rng(0).random((2, 3) + tuple(ds.image_size), dtype=np.float32))
    t = xp.zeros((2, len(ds.attributes)), dtype=xp.float32)
    loss = BCEWithLogits()
    loss.forward_array(model.forward(x, True), t)
    model.backward(loss.backward())
    build_optimizer(cfg, model).step()
    if cfg.device == "gpu":
        xp.cuda.get_current_stream().synchronize()
    write_line(f"warm-up: kernels ready in {time.perf_counter() - t0:.1f} s (compiled or loaded from the cache; "
               "not counted in any run's wall time)")


def read_config(run_dir):
    """A run's config.json as a dict; TrainingError naming the file when it is unreadable."""
    path = Path(run_dir) / "config.json"
    try:
        info = json.loads(path.read_text())
        TrainConfig.from_json(info["config"])
        info["config"].setdefault("adam_eps_placement", "kingma-ba")    # runs from before the option
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: not a readable run configuration ({exc})") from None
    return info


def check_same_data(info, ds, run_dir):
    """The data opened for a resume must be what the run trained on (fingerprint in config.json)."""
    saved = info.get("data", {}).get("fingerprint")
    if saved and ds.fingerprint != saved:
        raise TrainingError(f"{run_dir}: the data opened ({ds.path}) is not the data this run trained on "
                            f"(fingerprint {str(ds.fingerprint)[:16]}, saved {saved[:16]} in config.json); pass "
                            "--data with the original data (a moved copy is fine)")
