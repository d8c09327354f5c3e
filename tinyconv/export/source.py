"""Where a trained model comes from: a checkpoint file, a run folder, or the newest run.

A run folder is ``runs/<run-name>/`` holding ``checkpoints/best.h5`` (and ``last.h5``) and
``config.json``. "The newest run" is the run folder whose ``checkpoints/best.h5`` was written last.
"""
from pathlib import Path

from ..checkpoint import CheckpointError, load_checkpoint
from ..models import build_model

DEFAULT_RUNS_DIR = "runs"


class ModelSourceError(ValueError):
    """No usable model at the given place; the message names the path and what was expected."""


def newest_run(runs_dir=DEFAULT_RUNS_DIR):
    """The run folder under ``runs_dir`` whose checkpoints/best.h5 is newest; ModelSourceError if none."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ModelSourceError(f"{runs_dir}: no runs folder (train a model first, or pass a checkpoint "
                               "or an exported folder)")
    # a single run is runs/<name>/; `train.py --schedule all` writes runs/<name>/<schedule>/
    bests = [p for pattern in ("*/checkpoints/best.h5", "*/*/checkpoints/best.h5")
             for p in runs_dir.glob(pattern) if p.is_file()]
    if not bests:
        raise ModelSourceError(f"{runs_dir}: no run has a checkpoints/best.h5 yet")
    return max(bests, key=lambda p: p.stat().st_mtime).parent.parent


def find_checkpoint(path=None, runs_dir=DEFAULT_RUNS_DIR):
    """A checkpoint .h5 file, a run folder (-> its checkpoints/best.h5) or None (-> the newest run's)."""
    if path is None:
        return newest_run(runs_dir) / "checkpoints" / "best.h5"
    path = Path(path)
    if path.is_dir():
        best = path / "checkpoints" / "best.h5"
        if best.is_file():
            return best
        if (path / "best.h5").is_file():  # the checkpoints folder itself
            return path / "best.h5"
        raise ModelSourceError(f"{path}: a folder without checkpoints/best.h5 (expected a run folder)")
    if not path.exists():
        raise ModelSourceError(f"{path}: no such file or folder")
    return path


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
        model = build_model(meta["model"])
        model.load_state_dict(state["model"])
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint}: the weights do not fit the recorded model ({exc})") from None
    return model, meta
