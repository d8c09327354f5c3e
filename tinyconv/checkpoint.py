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

Reading treats the file as untrusted: only hard-linked groups and plain arrays held in the file
itself are followed (no external, soft or virtual data, no filters), only bool and numeric dtypes,
every size is checked from the metadata before anything is read, and groups, depth, array bytes
and attribute lengths have caps. Anything else is a one-line CheckpointError naming the file.
"""
import json
import math
import os
from collections import namedtuple
from contextlib import contextmanager

import h5py
import numpy as np

from .backend import is_gpu_array, to_cpu

FORMAT = "tinyconv-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, not HDF5, truncated, not ours, or refused as unsafe."""


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
# A checkpoint is untrusted input: a file from a colleague or a download, or one edited by hand.
# The reader follows only what the writer writes (hard-linked groups, plain arrays stored in the
# file itself, short text attributes) and sizes every array from its metadata before reading it.

MAX_OBJECTS = 10_000        # groups and arrays; a training checkpoint of seed_cnn has 105
MAX_DEPTH = 32              # nested groups; a training checkpoint has 4 (rng/dropout/<layer>/state)
MAX_ARRAY_BYTES = 2**31     # all arrays together; seed_cnn at width 8 with Adam's two slots is ~360 MB
MAX_TEXT_CHARS = 2**22      # one JSON attribute; the largest, the metrics rows, is 2.5 KB per epoch at 40 attributes
ARRAY_KINDS = "biufc"       # bool, int, uint, float, complex: what _write_array writes
PLAIN_LAYOUTS = (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT)

ArrayInfo = namedtuple("ArrayInfo", "shape dtype")
ArrayInfo.__doc__ = "An array leaf read with ``shapes_only=True``: its shape and dtype, no data."


def load_checkpoint(path, shapes_only=False):
    """The state saved by :func:`save_checkpoint`; CheckpointError if the file is unusable or unsafe.

    ``shapes_only=True`` reads no array: each array leaf comes back as an :class:`ArrayInfo`.
    """
    with _open(path) as f:
        return _Reader(path, shapes_only).group(f.id, "")


def read_checkpoint_meta(path):
    """Only the small JSON ``meta`` dict (e.g. epoch, metrics); no array is read, but the file gets
    every check that :func:`load_checkpoint` makes (a file one refuses, the other refuses too)."""
    with _open(path) as f:
        _Reader(path, shapes_only=True).group(f.id, "")
        meta = json.loads(_text_attr(path, f.id, "meta", "/"))
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {path}: its meta is a {type(meta).__name__}, not a JSON object")
        return meta


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
        fmt = _text_attr(path, f.id, "format", "/") if h5py.h5a.exists(f.id, b"format") else None
        if fmt != FORMAT:
            raise CheckpointError(f"checkpoint {path}: an HDF5 file but not a tinyconv checkpoint "
                                  f"(format attribute {fmt!r})")
        version = _scalar_attr(path, f.id, "version", "/", "iu") if h5py.h5a.exists(f.id, b"version") else None
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


def _refused(path, where, problem):
    return CheckpointError(f"checkpoint {path}: {where!r} {problem}; refused")


class _Reader:
    """One walk over a checkpoint, counting groups, arrays and array bytes against the caps.

    It works on h5py's low-level ids (h5g, h5d, h5a): the calls the high-level objects make, without
    their per-object overhead, which pays for the checks (a 463,875-parameter training checkpoint
    loads in ~23 ms, ~3 ms more than unchecked).
    """

    def __init__(self, path, shapes_only):
        self.path, self.shapes_only = path, shapes_only
        self.objects = self.nbytes = 0

    def group(self, gid, where, depth=0):
        if depth > MAX_DEPTH:
            raise _refused(self.path, where, f"is nested more than {MAX_DEPTH} groups deep")
        leaves = json.loads(_text_attr(self.path, gid, "json", where or "/"))
        keys = json.loads(_text_attr(self.path, gid, "keys", where or "/"))
        if not isinstance(leaves, dict) or not isinstance(keys, list) or not all(map(_plain_key, keys)):
            raise CheckpointError(f"checkpoint {self.path}: damaged (the keys or json attribute of "
                                  f"{where or '/'!r} is not what save_checkpoint writes)")
        state = {}
        for key in keys:
            if key in leaves:
                state[key] = leaves[key]
                continue
            name = f"{where}/{key}" if where else key
            self.objects += 1
            if self.objects > MAX_OBJECTS:
                raise _refused(self.path, name, f"is past the cap of {MAX_OBJECTS:,} groups and arrays")
            node = self.member(gid, key.encode(), name)
            if isinstance(node, h5py.h5g.GroupID):
                state[key] = self.group(node, name, depth + 1)
            else:
                state[key] = self.array(node, name)
        return state

    def member(self, gid, key, name):
        if not gid.links.exists(key):
            raise CheckpointError(f"checkpoint {self.path}: damaged ({name!r} is listed but missing)")
        kind = gid.links.get_info(key).type          # the link itself: nothing is followed yet
        if kind == h5py.h5l.TYPE_EXTERNAL:
            filename, target = (v.decode(errors="replace") for v in gid.links.get_val(key))
            raise _refused(self.path, name, f"is an external link to {filename}:{target}")
        if kind == h5py.h5l.TYPE_SOFT:
            raise _refused(self.path, name, f"is a soft link to {gid.links.get_val(key).decode(errors='replace')}")
        if kind != h5py.h5l.TYPE_HARD:
            raise _refused(self.path, name, "is a user-defined link")
        node = h5py.h5o.open(gid, key)               # a hard link: an object in this file
        if not isinstance(node, (h5py.h5g.GroupID, h5py.h5d.DatasetID)):     # the third kind: a named type
            raise _refused(self.path, name, "is a named datatype, not a group or an array")
        return node

    def array(self, dsid, name):
        dcpl = dsid.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5py.h5d.VIRTUAL:
            raise _refused(self.path, name, "is a virtual dataset (its data is mapped from elsewhere)")
        if dcpl.get_external_count():
            where = dcpl.get_external(0)[0].decode(errors="replace")
            raise _refused(self.path, name, f"keeps its data outside the checkpoint, in {where}")
        if layout not in PLAIN_LAYOUTS or dcpl.get_nfilters():
            raise _refused(self.path, name, "is stored compressed, filtered or in an unknown layout "
                                            "(save_checkpoint writes plain arrays)")
        dtype, shape = dsid.dtype, dsid.shape
        if dtype.kind not in ARRAY_KINDS or dtype.shape != ():
            raise _refused(self.path, name, f"has dtype {dtype} (arrays are bool, integer, float or complex)")
        if shape is None:
            raise _refused(self.path, name, "has no shape (an empty dataspace)")
        nbytes = math.prod(shape) * dtype.itemsize   # from the metadata, before any data is read
        self.nbytes += nbytes
        if self.nbytes > MAX_ARRAY_BYTES:
            raise _refused(self.path, name, f"({shape} {dtype}) takes the arrays past the cap of "
                                            f"{MAX_ARRAY_BYTES:,} bytes")
        stored = dsid.get_storage_size()
        if stored < nbytes:                          # unwritten or sparse: it would read back as fill
            raise _refused(self.path, name, f"({shape} {dtype}) needs {nbytes:,} bytes but the file "
                                            f"holds {stored:,} of them")
        scalar = h5py.h5a.exists(dsid, b"numpy_scalar") and _scalar_attr(self.path, dsid, "numpy_scalar",
                                                                         name, "biu")
        if self.shapes_only:
            return ArrayInfo(shape, dtype)
        ds = h5py.Dataset(dsid)
        return ds[()] if scalar else ds[...]


def _plain_key(key):
    return isinstance(key, str) and key not in ("", ".") and "/" not in key


def _text_attr(path, oid, name, where):
    """A string attribute, its length checked before anyone parses it."""
    if not h5py.h5a.exists(oid, name.encode()):
        raise CheckpointError(f"checkpoint {path}: damaged ({where!r} has no {name!r} attribute)")
    aid = h5py.h5a.open(oid, name.encode())
    info = h5py.check_string_dtype(aid.dtype)
    if info is None or aid.shape != ():
        raise _refused(path, where, f"attribute {name!r} is not a string")
    if info.length is not None and info.length > MAX_TEXT_CHARS:
        raise _refused(path, where, f"attribute {name!r} is longer than {MAX_TEXT_CHARS:,} characters")
    text = np.empty((), aid.dtype)
    aid.read(text)                  # a variable-length string's bytes are in the file: bounded by its size
    text = text[()]
    text = text.decode() if isinstance(text, bytes) else text
    if len(text) > MAX_TEXT_CHARS:
        raise _refused(path, where, f"attribute {name!r} is longer than {MAX_TEXT_CHARS:,} characters")
    return text


def _scalar_attr(path, oid, name, where, kinds):
    aid = h5py.h5a.open(oid, name.encode())
    if aid.shape != () or aid.dtype.kind not in kinds:
        raise _refused(path, where, f"attribute {name!r} is not a single number")
    value = np.empty((), aid.dtype)
    aid.read(value)
    return value[()]
