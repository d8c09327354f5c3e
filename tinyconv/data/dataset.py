"""``Dataset`` (a prepared HDF5 file, opened) and ``load_dataset`` (find, build or reuse the cache)."""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from .batches import BatchIterator, num_batches, read_rows
from .celeba import DEFAULT_ATTRIBUTES, PARTITIONS, detect_layout
from .errors import DataError
from .prepare import FORMAT_VERSION, prepare, settings_key
from .resize import FULL_SIZE
from .synthetic import DEFAULT_COUNT, synthesize

SYNTHETIC_WARNING = ("WARNING: this is tinyconv's built-in SYNTHETIC face set, a stand-in for testing "
                     "and teaching: results on it are NOT CelebA results.")


class Dataset:
    """A prepared HDF5 file (schema in :mod:`tinyconv.data.prepare`), open for reading.

    Labels, partition and file names are held in memory (a few bytes per image); images are read
    on demand. Attributes: ``path``, ``attributes`` (label order), ``image_size`` (H, W),
    ``source_layout``, ``synthetic``, ``fingerprint``, ``skipped`` (list of {"file", "reason"}).
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({exc})") from exc
        try:
            f, a = self._file, self._file.attrs
            if not a.get("complete", False):
                raise DataError(f"{self.path}: incomplete file (prepare was interrupted?): delete it and "
                                "run prepare again")
            for key in ("images", "labels", "partition", "filenames"):
                if key not in f:
                    raise DataError(f"{self.path}: missing dataset {key!r}: not a tinyconv prepared file")
            self.attributes = [str(s) for s in a["attributes"]]
            self.image_size = tuple(int(s) for s in a["image_size"])
            self.source_layout = str(a["source_layout"])
            self.synthetic = bool(a.get("synthetic", False))
            self.fingerprint = str(a.get("fingerprint", ""))
            self.skipped = json.loads(a.get("skipped", "[]"))
            self._labels = f["labels"][()]
            partition = f["partition"][()]
            self._names = [s.decode() if isinstance(s, bytes) else str(s) for s in f["filenames"][()]]
        except BaseException:
            self._file.close()
            raise
        self._rows = {s: np.flatnonzero(partition == p) for s, p in PARTITIONS.items()}
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
                resident=False, drop_last=False, prefetch=2):
        """A :class:`~tinyconv.data.batches.BatchIterator` of Batch(x (B, 3, H, W), y (B, K), index (B,))."""
        return BatchIterator(self, split, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                             start_batch=start_batch, device=device, resident=resident,
                             drop_last=drop_last, prefetch=prefetch)

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
    if out.exists():
        stale = _stale_reason(out, wanted)
        if stale is None:
            return _announce(Dataset(out))
        print(f"load_dataset: cache {out} is stale ({stale}); rebuilding", file=sys.stderr)
    prepare(source, out, image_size=image_size, attributes=attributes, drop_blurry=drop_blurry,
            workers=workers, progress=progress)
    return _announce(Dataset(out))


def _synthetic_root(cache_dir, count, seed, workers, progress):
    root = cache_dir / f"synthetic-celeba-n{count}-s{seed}"
    if not (root / "list_eval_partition.txt").exists():  # synthesize renames only when complete
        if root.exists():
            shutil.rmtree(root)
        print(f"load_dataset: drawing the built-in synthetic face set ({count} images) into {root}",
              file=sys.stderr)
        cache_dir.mkdir(parents=True, exist_ok=True)
        synthesize(root, count=count, seed=seed, workers=workers, progress=progress)
    return root


def _stale_reason(path, fingerprint):
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                return "incomplete file"
            if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                return "older format"
            if str(f.attrs.get("fingerprint", "")) != fingerprint:
                return "the source or the settings changed"
    except OSError as exc:
        return f"unreadable: {exc}"
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
