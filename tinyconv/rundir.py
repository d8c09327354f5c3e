"""Run folders: unique names, one process per folder, never overwritten, leftovers cleaned.

A run folder (``runs/<time>-<schedule>/``) or an experiment folder (``runs/<time>-all/`` with one run
folder per schedule) belongs to one training process at a time. The process holds an OS file lock on
``<folder>/.lock`` (``fcntl.flock``) for its whole life: the OS releases it when the process ends,
however it ends (SIGKILL included), so a lock is never stale. The file also says who holds it (pid,
host, command, start time), which is what a second process is told. A run folder inside an
experiment folder is locked too, and the experiment folder shared, so resuming one schedule while
the whole experiment trains is refused as well.

A folder that already holds files is never trained into again by accident: ``--resume`` continues
it, ``--overwrite`` moves it aside to ``<folder>.replaced-<time>`` (nothing is deleted), anything else
is refused.
"""
import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:          # Windows: no flock; one process per folder is then the user's care
    fcntl = None

LOCK_NAME = ".lock"
EXPERIMENT_FILE = "experiment.json"


class RunDirError(RuntimeError):
    """A run folder that cannot be used as asked; the message names it and says what to do."""


class FolderLock:
    """An exclusive (or shared) flock on ``folder/.lock``, held until :meth:`release` or process exit."""

    def __init__(self, folder, shared=False):
        self.folder, self.shared = Path(folder), shared
        self.fd = None

    def acquire(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirError(f"{self.folder} is in use by another training process ({holder}); wait for "
                                  "it to finish or stop it, or choose another --run-dir") from None
        if not self.shared:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)            # closing the descriptor drops the flock
            self.fd = None


def _read_holder(fd):
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"process {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return "process unknown"


def is_experiment(folder):
    """An experiment folder: written by --schedule all (experiment.json), or older: run folders inside."""
    folder = Path(folder)
    if (folder / EXPERIMENT_FILE).is_file():
        return True
    return folder.is_dir() and not (folder / "config.json").is_file() and any(
        (d / "config.json").is_file() for d in folder.iterdir() if d.is_dir())


def lock_run(folder, experiment=None):
    """Lock a folder for training (and its experiment folder, shared, when it sits in one).
    Returns the locks, to be released at the end (or left to the OS)."""
    folder = Path(folder)
    locks = []
    parent = folder.parent if experiment is None else None
    if parent is not None and (parent / EXPERIMENT_FILE).is_file():
        locks.append(FolderLock(parent, shared=True).acquire())
    locks.append(FolderLock(folder).acquire())
    return locks


def unique_dir(base):
    """Create and return ``base``, or ``base-2``, ``base-3``, ... if taken (atomic: os.mkdir fails on an
    existing name, so two processes started in the same second still get two folders)."""
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10000):
        candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise RunDirError(f"{base}: 10,000 folders of that name already exist")


def _contents(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name != LOCK_NAME) if Path(folder).is_dir() else []


def claim_new(folder, overwrite=False):
    """Make ``folder`` ready for a new run or experiment: created if missing; if it holds files, refused
    unless ``overwrite``, which moves it aside (returned as the second value) after making sure no
    process is using it. Returns (folder, moved_to or None)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"{folder} exists and is not a folder")
    held = _contents(folder)
    if not held:
        folder.mkdir(parents=True, exist_ok=True)
        return folder, None
    if not overwrite:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise RunDirError(f"{folder} already holds a run ({shown}): continue it with --resume {folder}, move it "
                          "aside with --overwrite (nothing is deleted), or choose another --run-dir")
    locks = [FolderLock(folder).acquire()]       # refuses if a process is training there now
    try:
        locks += [FolderLock(d).acquire() for d in sorted(folder.iterdir()) if (d / LOCK_NAME).is_file()]
        aside = unique_dir(folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
        os.replace(folder, aside)                 # aside is an empty folder: replace moves folder there
    finally:
        for lock in locks:
            lock.release()
    folder.mkdir(parents=True)
    return folder, aside


def remove_leftovers(folder):
    """Temporary files of a write that was killed (``*.tmp-<pid>``, see checkpoint.py and
    training.atomic_write_text); call only while holding the folder's lock. Returns their names."""
    folder = Path(folder)
    found = [p for d in (folder, folder / "checkpoints") if d.is_dir() for p in d.glob("*.tmp-*") if p.is_file()]
    for p in found:
        p.unlink()
    return [str(p) for p in found]


def atomic_write_text(path, text):
    """Write a text file so that a crash leaves the old file or the new one, never a mix."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def run_name(schedule, seed=None):
    """A run folder's name inside an experiment: the schedule, or seed<k>-<schedule> with --seeds."""
    return schedule if seed is None else f"seed{seed}-{schedule}"


def write_experiment_file(folder, schedules, seeds=None, command=None):
    """experiment.json: what an experiment folder holds (read by --resume and the report)."""
    runs = [run_name(s) for s in schedules] if seeds is None else [run_name(s, k) for k in seeds for s in schedules]
    info = {"schedules": list(schedules), "seeds": None if seeds is None else list(seeds), "runs": runs,
            "command": command or " ".join(sys.argv), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cwd": os.getcwd()}
    atomic_write_text(Path(folder) / EXPERIMENT_FILE, json.dumps(info, indent=2) + "\n")


def read_experiment_file(folder):
    """experiment.json as a dict, or {} when there is none (older experiments) or it is unreadable."""
    try:
        info = json.loads((Path(folder) / EXPERIMENT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def experiment_runs(folder):
    """{run name: run folder} of an experiment folder: from experiment.json, else the subfolders."""
    folder = Path(folder)
    info = read_experiment_file(folder)
    try:
        names = info.get("runs") or info["schedules"]
    except KeyError:
        names = sorted(d.name for d in folder.iterdir() if d.is_dir() and (d / "config.json").is_file())
    return {name: folder / name for name in names}
