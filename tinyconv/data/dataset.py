"""``Dataset`` (a prepared HDF5 file, opened) and ``load_dataset`` (find, build or reuse the cache).

A prepared file is untrusted input (it may come from elsewhere, or be damaged): ``Dataset`` checks
its schema from the metadata before it reads an array, and raises DataError naming the file and
the problem. Two processes building the same cache at once take turns (an advisory file lock);
the second one then uses the first one's result.
"""
import contextlib
import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np

from .batches import BatchIterator, num_batches, read_rows
from .celeba import DEFAULT_ATTRIBUTES, PARTITIONS, detect_layout
from .errors import DataError
from .prepare import FORMAT_VERSION, MAX_IMAGE_SIDE, prepare, settings_key
from .resize import FULL_SIZE
from .synthetic import DEFAULT_COUNT, synthesize

try:
    import fcntl
except ImportError:  # not POSIX: no lock; concurrent first runs may then both build
    fcntl = None

SYNTHETIC_WARNING = ("WARNING: this is tinyconv's built-in SYNTHETIC face set, a stand-in for testing "
                     "and teaching: results on it are NOT CelebA results.")
MAX_ROWS = 20_000_000        # images in one prepared file (CelebA has 202,599)
MAX_ATTR_BYTES = 64 << 20    # one HDF5 attribute (the ``skipped`` list of all CelebA is ~20 MB)
MAX_CHUNK_BYTES = 64 << 20   # one chunk of ``images``: what one random read decompresses
_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}  # HDF5 filters that may be read


class Dataset:
    """A prepared HDF5 file (schema in :mod:`tinyconv.data.prepare`), open for reading.

    Labels, partition and file names are held in memory (a few bytes per image); images are read
    on demand. Attributes: ``path``, ``attributes`` (label order), ``image_size`` (H, W),
    ``source_layout``, ``synthetic``, ``fingerprint``, ``skipped`` (list of {"file", "reason"}).
    Opening checks the whole schema (see :func:`_read_schema`) and raises DataError on any mismatch.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise DataError(f"{self.path}: not a regular file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
        try:
            meta = _read_schema(self._file, self.path)
        except BaseException as exc:
            self._file.close()
            if isinstance(exc, (OSError, RuntimeError, KeyError)):  # h5py on a damaged file
                raise DataError(f"{self.path}: damaged file ({' '.join(str(exc).split())})") from None
            raise
        self.attributes = meta["attributes"]
        self.image_size = meta["image_size"]
        self.source_layout = meta["source_layout"]
        self.synthetic = meta["synthetic"]
        self.fingerprint = meta["fingerprint"]
        self.skipped = meta["skipped"]
        self._labels, self._names = meta["labels"], meta["filenames"]
        self._rows = {s: np.flatnonzero(meta["partition"] == p) for s, p in PARTITIONS.items()}
        self._resident = {}

    # --- metadata ------------------------------------------------------------------------------
    def _split_rows(self, split):
        try:
            return self._rows[split]
        except KeyError:
            raise ValueError(f"unknown split {split!r}: expected one of {list(PARTITIONS)}") from None

    def _images_dset(self):
        if not self._file:
            raise DataError(f"{self.path}: dataset is closed")
        return self._file["images"]

    def split_size(self, split):
        return len(self._split_rows(split))

    def labels(self, split):
        """uint8 (n, K) in {0, 1}, columns in ``self.attributes`` order."""
        return self._labels[self._split_rows(split)]

    def filenames(self, split):
        return [self._names[r] for r in self._split_rows(split)]

    def images(self, split, indices):
        """uint8 (len(indices), H, W, 3) for rows ``indices`` of the split, in the order given."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = self._split_rows(split)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(rows)):
            raise IndexError(f"indices out of range for split {split!r} of size {len(rows)}")
        uniq, inverse = np.unique(idx, return_inverse=True)
        return read_rows(self._images_dset(), rows[uniq])[inverse]

    # --- batches -------------------------------------------------------------------------------
    def num_batches(self, split, batch_size, drop_last=False):
        return num_batches(self.split_size(split), batch_size, drop_last)

    def batches(self, split, batch_size=32, seed=0, epoch=0, shuffle=True, start_batch=0, device="cpu",
                resident=False, drop_last=False, prefetch=2, shard=None):
        """A :class:`~tinyconv.data.batches.BatchIterator` of Batch(x (B, 3, H, W), y (B, K), index (B,));
        ``shard=(rank, size)``: each batch's share of one data-parallel rank."""
        return BatchIterator(self, split, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                             start_batch=start_batch, device=device, resident=resident,
                             drop_last=drop_last, prefetch=prefetch, shard=shard)

    def _resident_images(self, split, device):
        """The split's uint8 (n, H, W, 3) images, loaded once per (split, device) and kept."""
        key = (split, device)
        if key not in self._resident:
            from ..backend import xp_for
            xp = xp_for(device)
            rows, dset = self._split_rows(split), self._images_dset()
            out = xp.empty((len(rows),) + dset.shape[1:], dtype=xp.uint8)
            step = 1024  # read in slices: host memory stays at one slice while filling the GPU
            for s in range(0, len(rows), step):
                out[s:s + step] = xp.asarray(read_rows(dset, rows[s:s + step]))
            self._resident[key] = out
        return self._resident[key]

    def warning(self):
        """The line every downstream report prints for the synthetic set, else None."""
        return SYNTHETIC_WARNING if self.synthetic else None

    def close(self):
        self._resident.clear()
        if self._file:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        sizes = ", ".join(f"{s}={self.split_size(s)}" for s in PARTITIONS)
        tag = " SYNTHETIC" if self.synthetic else ""
        return (f"<Dataset{tag} {self.path} {self.image_size[0]}x{self.image_size[1]} "
                f"{self.attributes} {sizes}>")


def _read_schema(f, path):
    """Check a prepared file's schema, metadata first, then read its small arrays; return them.

    Required: attributes ``complete`` (True), ``format_version``, ``attributes`` (unique names),
    ``image_size`` (H, W), ``source_layout``; datasets ``images`` uint8 (N, H, W, 3), ``labels``
    uint8 (N, K) in {0, 1}, ``partition`` uint8 (N,) in {0, 1, 2}, ``filenames`` (N,) UTF-8 strings,
    1 <= N <= MAX_ROWS. Every dataset must be stored in this file (no soft or external link, no
    external storage, no virtual dataset, only common filters), and hold all its bytes when it is
    not compressed, so a file that claims more than it holds is refused before anything is read.
    """
    complete = _attr(f, path, "complete", required=False)
    if not (isinstance(complete, (bool, np.bool_)) and complete):
        raise DataError(f"{path}: incomplete file (prepare was interrupted?): delete it and "
                        "run prepare again")
    version = _attr(f, path, "format_version")
    if not isinstance(version, (int, np.integer)) or int(version) != FORMAT_VERSION:
        shown = version.tolist() if isinstance(version, np.ndarray | np.generic) else version
        raise DataError(f"{path}: format_version is {shown!r}, this tinyconv reads format {FORMAT_VERSION}: "
                        "prepare the file again")
    attributes = _strings(path, "attribute 'attributes'", np.asarray(_attr(f, path, "attributes")).reshape(-1))
    if not attributes or len(set(attributes)) != len(attributes):
        raise DataError(f"{path}: attribute 'attributes' must list distinct names, got {attributes[:10]}")
    size = np.asarray(_attr(f, path, "image_size"))
    if size.shape != (2,) or size.dtype.kind not in "iu" or not ((size >= 1) & (size <= MAX_IMAGE_SIDE)).all():
        raise DataError(f"{path}: attribute 'image_size' must be [H, W] with sides from 1 to {MAX_IMAGE_SIDE}, "
                        f"got {size.tolist()}")
    h, w = (int(s) for s in size)
    meta = {"attributes": attributes, "image_size": (h, w)}
    for key, kind, default in (("source_layout", str, None), ("fingerprint", str, ""),
                               ("synthetic", (bool, np.bool_), False), ("skipped", str, "[]")):
        value = _attr(f, path, key, required=default is None)
        value = default if value is None else value
        if not isinstance(value, kind):
            raise DataError(f"{path}: attribute {key!r} has the wrong type ({type(value).__name__})")
        meta[key] = value if kind is str else bool(value)
    try:
        meta["skipped"] = json.loads(meta["skipped"])
        if not isinstance(meta["skipped"], list):
            raise ValueError("not a list")
    except ValueError as exc:
        raise DataError(f"{path}: attribute 'skipped' is not a JSON list ({exc})") from None

    images = _dataset(f, path, "images", np.uint8, 4)
    n = images.shape[0]
    if images.shape[1:] != (h, w, 3):
        raise DataError(f"{path}: 'images' has shape {images.shape}, expected (N, {h}, {w}, 3) from image_size")
    if not 1 <= n <= MAX_ROWS:
        raise DataError(f"{path}: holds {n} images; a prepared file holds from 1 to {MAX_ROWS:,}")
    if images.chunks is not None and int(np.prod(images.chunks)) > MAX_CHUNK_BYTES:
        raise DataError(f"{path}: 'images' chunks of {images.chunks} are over {MAX_CHUNK_BYTES >> 20} MiB each")
    labels = _dataset(f, path, "labels", np.uint8, 2)
    partition = _dataset(f, path, "partition", np.uint8, 1)
    filenames = _dataset(f, path, "filenames", None, 1)
    for name, d, shape in (("labels", labels, (n, len(attributes))), ("partition", partition, (n,)),
                           ("filenames", filenames, (n,))):
        if d.shape != shape:
            raise DataError(f"{path}: {name!r} has shape {d.shape}, expected {shape} "
                            f"({n} images, {len(attributes)} attributes): the arrays disagree")
    if h5py.check_string_dtype(filenames.dtype) is None:
        raise DataError(f"{path}: 'filenames' holds {filenames.dtype}, expected strings")

    meta["labels"] = labels[()]
    bad = np.flatnonzero((meta["labels"] > 1).any(axis=1))
    if len(bad):
        raise DataError(f"{path}: 'labels' row {bad[0]} holds {meta['labels'][bad[0]].tolist()}; labels are 0 or 1")
    meta["partition"] = partition[()]
    bad = np.flatnonzero(meta["partition"] > 2)
    if len(bad):
        raise DataError(f"{path}: 'partition' row {bad[0]} is {meta['partition'][bad[0]]}; expected 0, 1 or 2")
    meta["filenames"] = _strings(path, "'filenames'", filenames[()])
    return meta


def _attr(f, path, name, required=True):
    """One root attribute, its size checked before it is read; None when absent and not required."""
    if name not in f.attrs:
        if required:
            raise DataError(f"{path}: missing attribute {name!r}: not a tinyconv prepared file (or a damaged one)")
        return None
    if f.attrs.get_id(name).get_storage_size() > MAX_ATTR_BYTES:
        raise DataError(f"{path}: attribute {name!r} is over {MAX_ATTR_BYTES >> 20} MiB")
    try:
        return f.attrs[name]
    except (OSError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: attribute {name!r} cannot be read ({exc})") from None


def _dataset(f, path, name, dtype, ndim):
    """The dataset ``name``, stored in this file, with the dtype and number of dimensions asked for."""
    link = f.get(name, getlink=True)
    if link is None:
        raise DataError(f"{path}: missing dataset {name!r}: not a tinyconv prepared file")
    if not isinstance(link, h5py.HardLink):
        raise DataError(f"{path}: {name!r} is a {type(link).__name__}, not data stored in this file; refusing it")
    d = f[name]
    if not isinstance(d, h5py.Dataset):
        raise DataError(f"{path}: {name!r} is a group, expected a dataset")
    if d.is_virtual or d.external:
        raise DataError(f"{path}: {name!r} reads data from other files "
                        f"({'a virtual dataset' if d.is_virtual else 'external storage'}); refusing it")
    plist = d.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if any(c not in _FILTERS for c in codes):
        raise DataError(f"{path}: {name!r} uses HDF5 filter(s) {codes}; only {', '.join(_FILTERS.values())} "
                        "are read")
    if (dtype is not None and d.dtype != dtype) or d.ndim != ndim:
        raise DataError(f"{path}: {name!r} is {d.dtype} with {d.ndim} dimensions, expected "
                        f"{np.dtype(dtype) if dtype else 'strings'} with {ndim}")
    if not codes and d.dtype.kind != "O" and d.id.get_storage_size() < d.size * d.dtype.itemsize:
        raise DataError(f"{path}: {name!r} holds {d.id.get_storage_size()} bytes of its "
                        f"{d.size * d.dtype.itemsize}: rows were never written (a damaged file?)")
    return d


def _strings(path, what, values):
    out = []
    for i, v in enumerate(values):
        try:
            out.append(v.decode("utf-8") if isinstance(v, bytes) else v)
        except UnicodeDecodeError:
            raise DataError(f"{path}: {what} entry {i} is not UTF-8") from None
        if not isinstance(out[-1], str):
            raise DataError(f"{path}: {what} entry {i} is {type(out[-1]).__name__}, expected a string")
    return out


def attributes_hash(attributes, drop_blurry=True):
    """Short stable hash of the label list, for cache file names."""
    key = ",".join(attributes) + ("" if drop_blurry else ";keep_blurry")
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def cache_path(cache_dir, name, image_size, attributes, drop_blurry=True):
    h, w = image_size
    return Path(cache_dir) / f"{name}-{h}x{w}-{attributes_hash(attributes, drop_blurry)}.h5"


def load_dataset(source=None, image_size=FULL_SIZE, attributes=DEFAULT_ATTRIBUTES, cache_dir="data",
                 drop_blurry=True, workers=None, progress=True, synthetic_count=DEFAULT_COUNT,
                 synthetic_seed=0):
    """Open a dataset, building and caching what is needed.

    source None        the built-in synthetic set: ``synthesize`` into ``cache_dir/synthetic-celeba-
                       n<count>-s<seed>/`` once, then ``prepare`` into ``cache_dir`` (reused while its
                       fingerprint matches). A stand-in, never CelebA (``ds.synthetic`` is True).
    source a folder    a CelebA root in any layout, prepared into
                       ``cache_dir/<folder name>-<H>x<W>-<attributes hash>.h5``, reused when the
                       fingerprint matches, rebuilt when the source or the settings changed.
    source a .h5 file  opened directly; ``image_size`` / ``attributes`` must match the file's
                       (pass None to take the file's).
    """
    if source is None:
        source = _synthetic_root(Path(cache_dir), synthetic_count, synthetic_seed, workers, progress)
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() not in (".h5", ".hdf5"):
            raise DataError(f"{source}: expected a CelebA folder or a prepared .h5 file")
        ds = Dataset(source)
        try:
            _check_matches(ds, image_size, attributes)
        except BaseException:
            ds.close()
            raise
        return _announce(ds)

    image_size = tuple(int(s) for s in (image_size or FULL_SIZE))
    attributes = list(attributes or DEFAULT_ATTRIBUTES)
    layout = detect_layout(source)
    name = source.resolve().name or "celeba"
    out = cache_path(cache_dir, name, image_size, attributes, drop_blurry)
    wanted = layout.fingerprint(settings_key(image_size, attributes, drop_blurry))
    ds, _ = _open_cache(out, wanted)
    if ds is None:
        with _locked(out.parent / f".{out.name}.lock"):
            ds, stale = _open_cache(out, wanted)  # another process may have built it meanwhile
            if ds is None:
                if stale:
                    print(f"load_dataset: cache {out} is stale ({stale}); rebuilding", file=sys.stderr)
                prepare(source, out, image_size=image_size, attributes=attributes, drop_blurry=drop_blurry,
                        workers=workers, progress=progress)
                ds = Dataset(out)
    return _announce(ds)


@contextlib.contextmanager
def _locked(path):
    """Hold an exclusive advisory lock on ``path`` (an empty file, created if needed) for the block:
    one process at a time builds a given cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # "a": never truncates, never replaces another process's lock file
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _open_cache(out, fingerprint):
    """(the cached Dataset, None) when ``out`` is current and sound, else (None, why it is not)."""
    if not out.exists():
        return None, None
    stale = _stale_reason(out, fingerprint)
    if stale is not None:
        return None, stale
    try:
        return Dataset(out), None
    except DataError as exc:
        return None, str(exc)


def _synthetic_root(cache_dir, count, seed, workers, progress):
    root = cache_dir / f"synthetic-celeba-n{count}-s{seed}"
    done = root / "list_eval_partition.txt"  # synthesize renames the folder into place only when complete
    if not done.exists():
        with _locked(cache_dir / f".{root.name}.lock"):
            if not done.exists():  # another process may have drawn it meanwhile
                if root.exists() and (not root.is_dir() or any(root.iterdir())):
                    raise DataError(f"{root}: exists but is not a complete synthetic set; delete it and "
                                    "run again to redraw it")
                print(f"load_dataset: drawing the built-in synthetic face set ({count} images) into {root}",
                      file=sys.stderr)
                synthesize(root, count=count, seed=seed, workers=workers, progress=progress)
    return root


def load_for_settings(settings, progress=True):
    """The dataset a run's settings describe (``TrainConfig.to_json()``, or config.json's "config"): the
    one place that turns data, image_size, attributes, cache_dir and synthetic_count into a Dataset."""
    kw = {} if settings.get("synthetic_count") is None else {"synthetic_count": settings["synthetic_count"]}
    return load_dataset(settings.get("data"), image_size=tuple(int(s) for s in settings["image_size"]),
                        attributes=tuple(settings["attributes"]), cache_dir=settings.get("cache_dir", "data"),
                        progress=progress, **kw)


def recorded_data_paths(info):
    """(data, cache_dir) of a run's config.json, made to work from any working folder: the prepared file
    the run used (its data.path) if it is still there, else the saved paths, relative ones taken from the
    folder the run was started in (its cwd) when they exist there."""
    cfg, cwd = info["config"], info.get("cwd")

    def locate(p):
        if p is None or Path(p).is_absolute() or cwd is None:
            return p
        there = Path(cwd) / p
        return str(there) if there.exists() or not Path(p).exists() else p
    prepared = locate(info.get("data", {}).get("path"))
    if prepared and Path(prepared).is_file():
        return prepared, locate(cfg.get("cache_dir", "data"))
    return locate(cfg.get("data")), locate(cfg.get("cache_dir", "data"))


def _stale_reason(path, fingerprint):
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                return "incomplete file"
            if f.attrs.get("format_version", -1) != FORMAT_VERSION:
                return "older format"
            if f.attrs.get("fingerprint", "") != fingerprint:
                return "the source or the settings changed"
    except Exception as exc:  # unreadable or odd attribute types: rebuild (prepare decides if it may)
        return f"unreadable: {' '.join(str(exc).split())}"
    return None


def _check_matches(ds, image_size, attributes):
    if image_size is not None and tuple(int(s) for s in image_size) != ds.image_size:
        raise DataError(f"{ds.path}: holds images of size {ds.image_size[0]}x{ds.image_size[1]}, but "
                        f"{image_size[0]}x{image_size[1]} was asked for (pass image_size=None to take "
                        "the file's, or prepare a new file)")
    if attributes is not None and list(attributes) != ds.attributes:
        raise DataError(f"{ds.path}: holds attributes {ds.attributes}, but {list(attributes)} were asked "
                        "for (pass attributes=None to take the file's, or prepare a new file)")


def _announce(ds):
    if ds.synthetic:
        print(SYNTHETIC_WARNING, file=sys.stderr)
    return ds
