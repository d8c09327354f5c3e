"""Finding and reading finished training runs: config.json, metrics.jsonl and checkpoints/best.h5.

A path is either one run folder (it holds config.json) or a folder of sibling runs, as
``train.py --schedule all`` writes them. Nothing here touches the images; ``open_datasets``
opens the data each run was trained on, once per file.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from ..schedules import SCHEDULES


class ReportError(ValueError):
    """Runs that cannot be evaluated or compared; the message names the folder and says why."""


@dataclass
class RunRecord:
    """One finished run: its folder, a unique label, config.json, metric rows and best.h5's meta."""
    dir: Path
    label: str
    info: dict
    metrics: list
    meta: dict

    @property
    def config(self):
        return self.info["config"]

    @property
    def schedule(self):
        return self.config.get("schedule", self.meta.get("schedule", "?"))

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def attributes(self):
        return list(self.meta.get("attributes") or self.config["attributes"])

    @property
    def synthetic(self):
        return bool(self.meta.get("synthetic", self.info.get("data", {}).get("synthetic", False)))

    @property
    def best_epoch(self):
        return self.meta.get("best_epoch")

    @property
    def best_checkpoint(self):
        return self.dir / "checkpoints" / "best.h5"

    def row_at_best(self):
        """The metrics.jsonl row of the best epoch (lowest validation loss)."""
        for row in self.metrics:
            if row["epoch"] == self.best_epoch:
                return row
        raise ReportError(f"{self.dir}: metrics.jsonl has no row for the best epoch {self.best_epoch}")


def find_runs(paths):
    """[RunRecord] for the given run folders or folders of sibling runs, in schedule order."""
    dirs = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"{p}: no such folder")
        if not p.is_dir():
            raise ReportError(f"{p}: not a folder (expected a run folder or a folder of runs)")
        if (p / "config.json").is_file():
            dirs.append(p)
            continue
        found = sorted(c.parent for c in p.glob("*/config.json"))
        if not found:
            raise ReportError(f"{p}: no training run here (no config.json in it or its subfolders)")
        dirs += found
    seen, unique = set(), []
    for d in dirs:                   # the same run named twice counts once
        if d.resolve() not in seen:
            seen.add(d.resolve())
            unique.append(d)
    runs = [read_run(d) for d in unique]
    _label(runs)
    check_compatible(runs)
    order = {s: i for i, s in enumerate(SCHEDULES)}
    return sorted(runs, key=lambda r: (order.get(r.schedule, len(order)), r.seed or 0, r.label))


def read_run(run_dir):
    """A RunRecord, or ReportError saying which file is missing or unreadable."""
    from ..checkpoint import CheckpointError, read_checkpoint_meta
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{run_dir}: cannot read config.json ({exc})") from None
    best = run_dir / "checkpoints" / "best.h5"
    if not best.is_file():
        raise ReportError(f"{run_dir}: no checkpoints/best.h5 (the run has not finished an epoch?)")
    try:
        meta = read_checkpoint_meta(best)
    except (CheckpointError, OSError, KeyError, ValueError) as exc:
        raise ReportError(f"{best}: unreadable checkpoint ({exc})") from None
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise ReportError(f"{run_dir}: no metrics.jsonl")
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not metrics:
        raise ReportError(f"{run_dir}: metrics.jsonl is empty")
    return RunRecord(run_dir, run_dir.name, info, metrics, meta)


def _label(runs):
    """Folder names as labels; where two runs share a name, prefix the parent folder's."""
    names = [r.dir.name for r in runs]
    for r in runs:
        if names.count(r.dir.name) > 1:
            r.label = f"{r.dir.resolve().parent.name}-{r.dir.name}"
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.label) > 1:
            r.label = f"{r.label}-{i + 1}"


def check_compatible(runs):
    """Runs can only share one table when they predict the same attributes, in the same order."""
    first = runs[0]
    for r in runs[1:]:
        if r.attributes != first.attributes:
            raise ReportError(f"runs trained on different attribute lists: {first.dir} has "
                              f"{', '.join(first.attributes)} but {r.dir} has {', '.join(r.attributes)}; "
                              "evaluate them separately")


def open_datasets(runs, given=()):
    """{run label: Dataset}: the prepared file each run was trained on, opened once per file.

    ``given`` are Datasets already open (train.py passes its own); a run whose recorded data path
    matches one of them reuses it. Returns (mapping, the Datasets opened here, to close).
    """
    from ..data import load_for_settings, recorded_data_paths
    by_path = {str(Path(ds.path).resolve()): ds for ds in given}
    opened, mapping = [], {}
    for r in runs:
        recorded = r.info.get("data", {}).get("path")
        key = str(Path(recorded).resolve()) if recorded else None
        if key not in by_path:
            # the prepared file the run used, or (moved) prepared again from its settings, as training does
            data, cache_dir = recorded_data_paths(r.info)
            ds = load_for_settings({**r.config, "data": data, "cache_dir": cache_dir}, progress=False)
            opened.append(ds)
            by_path[key] = ds
            by_path[str(Path(ds.path).resolve())] = ds
        ds = by_path[key]
        if list(ds.attributes) != r.attributes:
            raise ReportError(f"{r.dir}: trained on {r.attributes} but its data {ds.path} holds {ds.attributes}")
        mapping[r.label] = ds
    return mapping, opened
