"""Checkpoints in HDF5 (never pickle), written atomically.

A state is a nested dict with string keys. Each dict becomes an HDF5 group; each array leaf
(NumPy or CuPy, any dtype h5py stores: floats, ints, uint64, bool, complex) a dataset, read
back bit for bit with its dtype; a NumPy scalar (``np.float32(1.5)``) comes back as one.
Every other leaf (None, bool, int of any size, float incl. nan/inf, str, and lists / dicts
of those) is stored as JSON in the group's ``json`` attribute, so e.g. a NumPy Generator's
``bit_generator.state`` with its 128-bit integers round-trips exactly. Tuples are refused
(they would come back as lists); so are dict keys that are not strings or contain "/".

File layout: root attributes ``format`` = "tinyconv-checkpoint", ``version``, ``meta``
(small JSON, readable without the arrays by :func:`read_checkpoint_meta`); in every group,
``keys`` (JSON list, the dict's order) and ``json`` (JSON object of the non-array leaves).

:func:`save_checkpoint` writes ``<path>.tmp-<pid>`` in the same directory, fsyncs it and
renames it over ``path`` (``os.replace`` is atomic on POSIX and Windows): a crash at any
moment leaves either the previous checkpoint or the new one, never a mix.
"""
import json
import os
from contextlib import contextmanager

import h5py
import numpy as np

from .backend import is_gpu_array, to_cpu

FORMAT = "tinyconv-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, not HDF5, truncated, or not ours."""


def save_checkpoint(path, state, meta=None):
    """Write ``state`` (nested dict, see the module docstring) and small JSON ``meta`` atomically."""
    path = os.fspath(path)
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint state must be a dict, got {type(state).__name__}")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    meta_json = _to_json(meta, "meta")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["meta"] = meta_json
            _write_group(f, state, "")
        fd = os.open(tmp, os.O_RDONLY)     # h5py closed and flushed the file; now to the disk
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:                   # also KeyboardInterrupt: never leave a tmp behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))   # makes the rename itself durable


def load_checkpoint(path):
    """The state saved by :func:`save_checkpoint`; CheckpointError if the file is unusable."""
    with _open(path) as f:
        return _read_group(f)


def read_checkpoint_meta(path):
    """Only the small JSON ``meta`` dict (e.g. epoch, metrics); no array is read."""
    with _open(path) as f:
        return json.loads(f.attrs["meta"])


# --- writing ---------------------------------------------------------------------------------

def _write_group(group, state, where):
    leaves = {}
    for key, value in state.items():
        name = f"{where}/{key}" if where else str(key)
        if not isinstance(key, str) or not key or "/" in key or key == ".":
            raise TypeError(f"checkpoint key {name!r}: keys must be non-empty strings without '/'")
        if isinstance(value, dict):
            _write_group(group.create_group(key), value, name)
        elif isinstance(value, (np.ndarray, np.generic)) or is_gpu_array(value):
            _write_array(group, key, value, name)
        else:
            _check_json(value, name)
            leaves[key] = value
    group.attrs["keys"] = json.dumps(list(state))
    group.attrs["json"] = json.dumps(leaves)


def _write_array(group, key, x, name):
    scalar = isinstance(x, np.generic)
    x = to_cpu(x)
    if x.dtype.kind in "OUSVMm":            # objects, strings, void, datetimes: no exact HDF5 twin
        raise TypeError(f"checkpoint array {name!r}: dtype {x.dtype} cannot be stored exactly")
    ds = group.create_dataset(key, data=x)
    if scalar:
        ds.attrs["numpy_scalar"] = True


_JSON_SCALARS = (type(None), bool, int, float, str)


def _check_json(value, name):
    # Exact types: a np.float64 is a float subclass, but would come back as a plain float.
    if type(value) in _JSON_SCALARS:
        return
    if type(value) is list:
        for i, v in enumerate(value):
            _check_json(v, f"{name}[{i}]")
    elif type(value) is dict:
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint value {name!r}: dict key {k!r} is not a string")
            _check_json(v, f"{name}.{k}")
    else:
        hint = " (it would come back as a list)" if isinstance(value, tuple) else ""
        raise TypeError(f"checkpoint value {name!r}: cannot store a {type(value).__name__}{hint}; "
                        "leaves are arrays, NumPy scalars, or None/bool/int/float/str and "
                        "lists/dicts of them")


def _to_json(value, name):
    _check_json(value, name)
    return json.dumps(value)


def _fsync_dir(directory):
    if os.name != "posix":                  # Windows cannot open a directory for fsync
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ---------------------------------------------------------------------------------

@contextmanager
def _open(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: not a file")
    try:
        if not h5py.is_hdf5(path):
            raise CheckpointError(f"checkpoint {path}: not an HDF5 file (no HDF5 signature)")
        f = h5py.File(path, "r")
    except OSError as exc:                  # the signature is there but the rest is not
        raise CheckpointError(f"checkpoint {path}: a damaged HDF5 file, probably truncated "
                              f"({exc})") from None
    try:
        fmt, version = f.attrs.get("format"), f.attrs.get("version")
        if fmt != FORMAT:
            raise CheckpointError(f"checkpoint {path}: an HDF5 file but not a tinyconv checkpoint "
                                  f"(format attribute {fmt!r})")
        if version is None or not 1 <= int(version) <= VERSION:
            raise CheckpointError(f"checkpoint {path}: format version {version}, this tinyconv "
                                  f"reads versions 1 to {VERSION}")
        yield f
    except CheckpointError:
        raise
    except Exception as exc:                # a damaged file fails deep inside h5py or json
        raise CheckpointError(f"checkpoint {path}: damaged ({type(exc).__name__}: {exc})") from None
    finally:
        f.close()


def _read_group(group):
    leaves = json.loads(group.attrs["json"])
    state = {}
    for key in json.loads(group.attrs["keys"]):
        if key in leaves:
            state[key] = leaves[key]
            continue
        node = group[key]
        if isinstance(node, h5py.Group):
            state[key] = _read_group(node)
        elif node.attrs.get("numpy_scalar", False):
            state[key] = node[()]
        else:
            state[key] = node[...]
    return state
