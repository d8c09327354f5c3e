"""Where a trained model comes from: a checkpoint file, a run folder, an experiment folder, or the newest.

A run folder is ``runs/<run-name>/`` holding ``checkpoints/best.h5`` (and ``last.h5``) and
``config.json``. An experiment folder (``train.py --schedule all`` or ``--seeds``) holds run folders
one level down (``runs/<name>/<schedule>/``, ``runs/<name>/seed<k>-<schedule>/``). Given an experiment
folder, the model is its run with the **lowest validation loss** (each best.h5 records it), and
:func:`choose_run` says which and why. With no path, the newest top-level folder under ``runs/`` (by
its newest best.h5) is taken, run or experiment, by the same rule.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import CheckpointError, load_checkpoint
from ..models import build_model, check_state_fits

DEFAULT_RUNS_DIR = "runs"


class ModelSourceError(ValueError):
    """No usable model at the given place; the message names the path and what was expected."""


@dataclass
class RunChoice:
    """The run a model is taken from, and why: ``reason`` is one line for the user, ``others`` the
    runs not taken, each as (run folder, best validation loss or None, best epoch or None)."""
    run_dir: Path
    reason: str = ""
    others: list = field(default_factory=list)

    def describe(self):
        """Lines to print: which run, why, and the others (empty for a plain run folder)."""
        if not self.reason:
            return []
        lines = [self.reason]
        for d, loss, epoch in self.others:
            lines.append(f"  not taken: {d} ({_loss_text(loss, epoch)})")
        return lines


def _has_best(d):
    return (d / "checkpoints" / "best.h5").is_file()


def runs_in(folder):
    """The run folders in ``folder``: itself if it is one, else its subfolders that are (sorted)."""
    folder = Path(folder)
    if _has_best(folder):
        return [folder]
    return sorted(d for d in folder.iterdir() if d.is_dir() and _has_best(d)) if folder.is_dir() else []


def best_record(run_dir):
    """(best validation loss, best epoch) of a run, from its best.h5's meta; (None, None) if unknown."""
    from ..checkpoint import CheckpointError, read_checkpoint_meta
    try:
        meta = read_checkpoint_meta(Path(run_dir) / "checkpoints" / "best.h5")
    except (CheckpointError, OSError, ValueError, KeyError):
        return None, None
    loss = meta.get("best_val_loss")
    loss = float(loss) if isinstance(loss, (int, float)) and math.isfinite(loss) else None
    return loss, meta.get("best_epoch", meta.get("epoch"))


def _seed_of(run_dir):
    try:
        return json.loads((Path(run_dir) / "config.json").read_text())["config"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _loss_text(loss, epoch):
    if loss is None:
        return "validation loss not recorded"
    return f"validation loss {loss:.4f}" + (f" at epoch {epoch}" if epoch is not None else "")


def choose_run(folder):
    """The run to take from a run or experiment folder (see the module docstring); ModelSourceError if none."""
    folder = Path(folder)
    runs = runs_in(folder)
    if not runs:
        raise ModelSourceError(f"{folder}: neither a run folder (with checkpoints/best.h5) nor an experiment "
                               "folder holding such runs")
    if runs == [folder]:
        return RunChoice(folder)
    records = [(d, *best_record(d)) for d in runs]
    known = [r for r in records if r[1] is not None]
    if known:                                   # the lowest validation loss; ties: the first in name order
        taken = min(known, key=lambda r: r[1])
        why = f"lowest validation loss of its {len(runs)} runs ({_loss_text(taken[1], taken[2])})"
    else:                                       # nothing recorded (older checkpoints): the newest
        taken = max(records, key=lambda r: (r[0] / "checkpoints" / "best.h5").stat().st_mtime)
        why = f"newest of its {len(runs)} runs (no validation loss recorded in them)"
    seeds = {_seed_of(d) for d in runs} - {None}
    if len(seeds) > 1:
        why += f"; seed {_seed_of(taken[0])} of seeds {', '.join(str(s) for s in sorted(seeds))}"
    reason = f"{folder} is an experiment folder: using {taken[0]}, the {why}"
    return RunChoice(taken[0], reason, [r for r in records if r[0] != taken[0]])


def newest_run(runs_dir=DEFAULT_RUNS_DIR):
    """The run folder to use when none is named (see :func:`newest_choice`)."""
    return newest_choice(runs_dir).run_dir


def newest_choice(runs_dir=DEFAULT_RUNS_DIR):
    """The newest top-level folder under ``runs_dir`` (by its newest checkpoints/best.h5), run or
    experiment; for an experiment, its run with the lowest validation loss. ModelSourceError if none."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ModelSourceError(f"{runs_dir}: no runs folder (train a model first, or pass a checkpoint "
                               "or an exported folder)")
    newest = {}
    for pattern in ("*/checkpoints/best.h5", "*/*/checkpoints/best.h5"):
        for best in runs_dir.glob(pattern):
            if best.is_file():
                top = runs_dir / best.relative_to(runs_dir).parts[0]
                newest[top] = max(newest.get(top, 0), best.stat().st_mtime)
    if not newest:
        raise ModelSourceError(f"{runs_dir}: no run has a checkpoints/best.h5 yet")
    top = max(newest, key=newest.get)
    choice = choose_run(top)
    if choice.reason:
        choice.reason = f"newest under {runs_dir}: " + choice.reason
    else:
        choice.reason = f"newest run under {runs_dir}: {top}"
    return choice


def find_checkpoint(path=None, runs_dir=DEFAULT_RUNS_DIR, announce=None):
    """A checkpoint .h5 file, a run folder (-> its checkpoints/best.h5), an experiment folder (-> its
    run with the lowest validation loss) or None (-> the newest run or experiment under ``runs_dir``).
    ``announce``: called with each line saying which run was chosen and why (nothing for a file or a
    run folder named directly)."""
    if path is None:
        choice = newest_choice(runs_dir)
    else:
        path = Path(path)
        if not path.exists():
            raise ModelSourceError(f"{path}: no such file or folder")
        if not path.is_dir():
            return path
        if not _has_best(path) and (path / "best.h5").is_file():  # the checkpoints folder itself
            return path / "best.h5"
        choice = choose_run(path)
    if announce is not None:
        for line in choice.describe():
            announce(line)
    return choice.run_dir / "checkpoints" / "best.h5"


def load_trained(checkpoint):
    """checkpoint path -> (model in inference use, meta dict). Raises CheckpointError / ModelSourceError."""
    state = load_checkpoint(checkpoint)
    if not isinstance(state.get("meta"), dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint {checkpoint}: has no 'meta' and 'model' sections "
                              "(not written by the training loop?)")
    meta = state["meta"]
    for key in ("model", "attributes", "image_size"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {checkpoint}: meta has no {key!r}")
    try:
        check_state_fits(meta["model"], state["model"])   # config and every shape, before anything is allocated
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: {exc}") from None
    model = build_model(meta["model"])
    model.load_state_dict(state["model"])
    return model, meta
