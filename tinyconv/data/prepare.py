"""``prepare``: decode a CelebA root once, in parallel, into one HDF5 file.

HDF5 schema (readable with plain h5py)::

    images     (N, H, W, 3) uint8, chunked (1, H, W, 3)  one chunk per image, so a random read is one chunk
    labels     (N, K) uint8 in {0, 1}                    the asked attributes, in ``attrs["attributes"]`` order
    partition  (N,) uint8                                0 train, 1 validation, 2 test
    filenames  (N,) UTF-8 strings                        e.g. "000001.jpg"
    attrs: attributes (K names), image_size [H, W], source_layout, source_root, fingerprint,
           synthetic (bool), dropped_blurry (int), skipped (JSON list of {"file", "reason"}),
           resized (JSON list of files that were not 218x178), resize_policy, resize_filter,
           format_version, complete (True, written last)

Rows are sorted by (partition, file name), so each split is one contiguous run of rows.
The file is written as a hidden temporary file in the output folder and renamed only once complete:
an interrupted or failed run (Ctrl-C, disk full) leaves no file under the output name, and the
temporary file is removed. The file gets the user's umask, as any newly created file.

What ``prepare`` refuses, before any work: an output path that is a folder, an input, inside the
image folder, or an existing file that is not a tinyconv prepared file (one may be replaced); an
output folder without room for the file (its size is known up front: the images are stored raw).
"""
import collections
import ctypes
import errno
import io
import json
import os
import re
import secrets
import shutil
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from .celeba import DEFAULT_ATTRIBUTES, detect_layout, open_reader, read_annotations, select_attributes
from .errors import DataError, UsageError
from .resize import FULL_SIZE, MAX_PIXELS, RESIZE_FILTER, RESIZE_POLICY, resize_to_model

FORMAT_VERSION = 1
MAX_IMAGE_SIDE = 1024  # the largest stored height or width (CelebA's own is 218x178)
MAX_WORKERS = 256
IMAGE_FORMATS = ("JPEG", "PNG")  # what CelebA holds; Pillow's other decoders are never reached
_WRITE_BLOCK = 64  # images gathered before one h5py write: fewer, larger writes
_WRITE_BYTES = 64 << 20  # ... but at most this many bytes of them
_TASK = 16  # images per thread task: amortises the executor's per-task overhead (~0.5 ms per image)
_TASK_BYTES = 8 << 20  # ... but fewer for large sizes: 4 tasks per worker wait in memory


def settings_key(image_size, attributes, drop_blurry):
    """The preparation settings folded into the fingerprint (a change of any of them means a rebuild)."""
    h, w = image_size
    return (f"format={FORMAT_VERSION};size={h}x{w};attributes={','.join(attributes)};"
            f"drop_blurry={bool(drop_blurry)};policy={RESIZE_POLICY}")


def default_workers():
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(n, MAX_WORKERS))


def check_image_size(image_size):
    """(H, W) as two ints in [1, MAX_IMAGE_SIDE], else UsageError."""
    try:
        h, w = image_size
        ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok or not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
        raise UsageError(f"image_size must be (H, W), each an integer from 1 to {MAX_IMAGE_SIDE}, "
                         f"got {image_size!r}")
    return int(h), int(w)


def check_workers(workers):
    """None (all cores) or an int in [1, MAX_WORKERS], else UsageError."""
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or \
            not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"workers must be an integer from 1 to {MAX_WORKERS} (or None), got {workers!r}")
    return int(workers)


def _decode(read, name, size):
    """Bytes -> uint8 (H, W, 3) by the resize policy. Returns (array, was_wrong_size) or (None, reason).

    The bytes are untrusted: any failure of this one image (unreadable, over the byte caps, not a
    JPEG or PNG, over MAX_PIXELS by its header, truncated) makes it a skipped image with the reason.
    Only MemoryError stops the run.
    """
    try:
        with Image.open(io.BytesIO(read(name)), formats=IMAGE_FORMATS) as img:
            w, h = img.size  # from the header: nothing is decoded yet
            if w * h > MAX_PIXELS:
                return None, (f"{w}x{h} is {w * h / 1e6:.0f} megapixels, over the limit of "
                              f"{MAX_PIXELS / 1e6:.0f} (a guard against decompression bombs)")
            img.load()  # forces the full decode here, so a truncated JPEG fails here, not later
            wrong = img.size != (FULL_SIZE[1], FULL_SIZE[0])
            return resize_to_model(img, size), wrong
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises many types on hostile bytes (OSError, SyntaxError, ...)
        return None, f"{type(exc).__name__}: {exc}"


def _decode_many(read, names, size):
    return [_decode(read, name, size) for name in names]


def prepare(root, out, image_size=FULL_SIZE, attributes=DEFAULT_ATTRIBUTES, drop_blurry=True,
            workers=None, progress=True, wrong_size="resize"):
    """Decode the CelebA root ``root`` into the HDF5 file ``out``; return the path of ``out``.

    image_size  (H, W) of the stored images, e.g. (218, 178), (109, 89) or (54, 44).
    attributes  header names to keep as labels (any of the 40), in label order.
    drop_blurry drop every image labelled Blurry before decoding (as the study did).
    workers     decoding threads (Pillow releases the GIL while decoding and resizing); default: all cores.
    wrong_size  "resize": an image that is not 218x178 goes through the resize policy and is listed in
                the report (``attrs["resized"]``); "error": raise DataError naming it.
    Corrupt, unreadable or oversized images (see :func:`_decode`) are skipped, printed, and listed
    in ``attrs["skipped"]``. Bad arguments raise UsageError; bad data and a failed write DataError.
    """
    out = Path(out)
    image_size = check_image_size(image_size)
    workers = check_workers(workers)
    attributes = list(attributes)
    if not attributes:
        raise UsageError("attributes: give at least one attribute name")
    if wrong_size not in ("resize", "error"):
        raise UsageError(f"wrong_size must be 'resize' or 'error', got {wrong_size!r}")
    source = detect_layout(root)
    check_output(out, source)
    ann = read_annotations(source)
    cols = select_attributes(ann.names, attributes, source.attr_file)

    keep = np.ones(len(ann.filenames), dtype=bool)
    if drop_blurry:
        if "Blurry" not in ann.names:
            raise DataError(f"{source.attr_file}: no Blurry column, so drop_blurry=True cannot be applied")
        keep = ann.values[:, ann.names.index("Blurry")] != 1
    rows = np.flatnonzero(keep)
    rows = sorted(rows, key=lambda r: (ann.partition[r], ann.filenames[r]))
    names = [ann.filenames[r] for r in rows]
    if not names:
        raise DataError(f"{source.attr_file}: no image left to prepare ({len(ann.filenames)} rows, "
                        f"{int((~keep).sum())} dropped as Blurry)")

    available = source.image_names()
    missing = [f for f in names if f not in available]
    if missing:
        raise DataError(f"{source.images}: {len(missing)} file names in {source.attr_file} have no image "
                        f"(e.g. {', '.join(missing[:5])})")

    fingerprint = source.fingerprint(settings_key(image_size, attributes, drop_blurry))
    out.parent.mkdir(parents=True, exist_ok=True)
    need = needed_bytes(len(names), image_size, len(cols))
    check_free_space(out, need)
    tmp, f = _create_temp(out), None
    try:
        # No raw-data chunk cache: each image reaches the disk inside _write_block, so a write that
        # fails (disk full) fails there, while HDF5's own metadata is still sound and can be closed.
        f = h5py.File(tmp, "w", rdcc_nbytes=0)
        _reserve_space(f.id.get_vfd_handle(), need)  # ... and the metadata's room is held up front
        with warnings.catch_warnings():  # once, here: the decoding threads only read the filters
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # _decode checks the size
            ok_rows, skipped, resized = _write_images(f, source, names, image_size, workers, progress,
                                                      wrong_size)
        if not ok_rows:
            raise DataError(f"{source.images}: none of the {len(names)} images could be decoded "
                            f"(e.g. {skipped[0]['file']}: {skipped[0]['reason']})")
        ok = np.asarray([rows[i] for i in ok_rows], dtype=np.int64)
        labels = (ann.values[ok][:, cols] == 1).astype(np.uint8)
        f.create_dataset("labels", data=labels.reshape(len(ok), len(cols)))
        f.create_dataset("partition", data=ann.partition[ok].astype(np.uint8))
        f.create_dataset("filenames", data=[names[i] for i in ok_rows], dtype=h5py.string_dtype())
        a = f.attrs
        a["attributes"] = attributes
        a["image_size"] = np.asarray(image_size, dtype=np.int64)
        a["source_layout"] = source.layout
        a["source_root"] = str(Path(root).resolve())
        a["fingerprint"] = fingerprint
        a["synthetic"] = bool(source.synthetic)
        a["dropped_blurry"] = int((~keep).sum())
        a["skipped"] = json.dumps(skipped)
        a["resized"] = json.dumps(resized)
        a["resize_policy"] = RESIZE_POLICY
        a["resize_filter"] = RESIZE_FILTER
        a["format_version"] = FORMAT_VERSION
        a["complete"] = True  # last: a file without it was never finished
        f.flush()  # a failure surfaces here, not inside close()
        f.close()
        _release_unused_space(tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        # KeyboardInterrupt included: never leave a half-written file behind.
        closed = _discard(f, tmp)
        if isinstance(exc, (OSError, RuntimeError)):  # disk full, quota, I/O error (h5py raises both)
            err = DataError(f"{out}: writing failed: {_one_line(exc)}; the partial file was removed")
            err.hdf5_unclosed = not closed
            raise err from None
        raise
    if skipped:
        print(f"prepare: skipped {len(skipped)} unreadable image(s), listed in {out} attrs['skipped']:",
              file=sys.stderr)
        for s in skipped[:20]:
            print(f"  {s['file']}: {s['reason']}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more", file=sys.stderr)
    if resized:
        print(f"prepare: {len(resized)} image(s) were not 218x178 and went through the resize policy "
              f"(e.g. {', '.join(resized[:5])}); listed in attrs['resized']", file=sys.stderr)
    return out


def is_prepared_file(path):
    """True when ``path`` is an HDF5 file written by ``prepare`` (complete or not, any format)."""
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return "fingerprint" in f.attrs and "format_version" in f.attrs
    except Exception:  # unreadable, damaged: not something we may overwrite
        return False


def check_output(out, source):
    """Refuse (UsageError) an output path that must not be written: a folder, one of the inputs, a
    path inside the image folder, or an existing file that is not a tinyconv prepared file."""
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give the path of the .h5 file to write")
    if out.exists():
        for what, p in (("the attribute file", source.attr_file), ("the partition file", source.partition_file),
                        ("the images", source.images)):
            if os.path.samefile(out, p):
                raise UsageError(f"{out}: is an input of prepare ({what}); refusing to write over it")
        if not out.is_file():
            raise UsageError(f"{out}: exists and is not a regular file; refusing to write over it")
        if not is_prepared_file(out):
            raise UsageError(f"{out}: exists and is not a tinyconv prepared data file; refusing to write "
                             "over it (delete it or choose another output)")
    if not source.is_zip and out.resolve().parent == source.images.resolve():
        raise UsageError(f"{out}: is inside the image folder {source.images}; write it elsewhere")


def needed_bytes(n, image_size, k):
    """An upper bound on the size of a prepared file of ``n`` images (stored raw, so known up front)."""
    h, w = image_size
    # per image: pixels, labels, partition, and its share of names, chunk index and skip report (~130 B)
    return n * (h * w * 3 + k + 1 + 256) + (1 << 20)


def check_free_space(out, need):
    free = shutil.disk_usage(Path(out).parent).free
    if need > free:
        raise DataError(f"{Path(out).parent}: not enough free space for {Path(out).name}: it needs about "
                        f"{_size_text(need)}, {_size_text(free)} free")


def _size_text(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _one_line(exc):
    """An OSError or h5py RuntimeError as one line (HDF5's own messages run over several)."""
    text = " ".join(str(exc).split())
    code = exc.errno if isinstance(exc, OSError) and exc.errno else None
    found = re.search(r"errno = (\d+)", text)
    if found:  # HDF5 names the system error inside its message
        code = int(found.group(1))
    if code:
        return f"{os.strerror(code)} (errno {errno.errorcode.get(code, code)})"
    return text


def _create_temp(out):
    """An empty hidden file beside ``out``, created with the user's umask (mkstemp would make it 0600)."""
    while True:
        tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.partial"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _reserve_space(fd, nbytes):
    """Have the filesystem set aside ``nbytes`` for the file without changing its size (Linux
    ``fallocate`` with FALLOC_FL_KEEP_SIZE), so no write of HDF5's meets a full disk midway: HDF5
    cannot recover from a failed metadata write (its close fails, and the process crashed at exit).
    Raises OSError(ENOSPC) when there is no room; where the call is missing or unsupported
    (not Linux, some network filesystems) nothing is reserved and the free-space check stands alone.
    """
    fallocate = getattr(_libc(), "fallocate", None)
    if fallocate is None:
        return
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if fallocate(fd, 1, 0, nbytes) != 0:  # 1: FALLOC_FL_KEEP_SIZE
        code = ctypes.get_errno()
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(code, os.strerror(code))


def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _release_unused_space(path):
    """Give back what _reserve_space held beyond the end of the file (shrinking frees those blocks)."""
    size = os.path.getsize(path)
    os.truncate(path, size + 1)
    os.truncate(path, size)


def _discard(f, tmp):
    """Remove the temporary file and close its HDF5 handle; return False if HDF5 could not close it.

    After a failed raw-data write (disk full) HDF5 still tries to flush on close, to the same full
    disk. The file is being thrown away, so its descriptor is first pointed at an in-memory file
    (or /dev/null): the close then succeeds and the full disk is not touched again.
    """
    try:
        os.remove(tmp)
    except OSError:
        pass
    if f is None or not f.id.valid:
        return True
    try:
        fd = f.id.get_vfd_handle()
        sink = os.memfd_create("tinyconv-discard") if hasattr(os, "memfd_create") else \
            os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(sink, fd)
        finally:
            os.close(sink)
    except Exception:
        pass
    try:
        f.close()
    except Exception:
        pass
    return not f.id.valid


def _write_block(images, start, block):
    """The one place image pixels reach the file (a test makes it fail as a full disk would)."""
    images[start:start + len(block)] = block


def _write_images(f, source, names, image_size, workers, progress, wrong_size):
    """Decode ``names`` in parallel, in order, into ``f["images"]``; return (kept indexes, skipped, resized)."""
    h, w = image_size
    n = len(names)
    read = open_reader(source)
    ok_rows, skipped, resized = [], [], []
    block = np.empty((max(1, min(_WRITE_BLOCK, _WRITE_BYTES // (h * w * 3))), h, w, 3), dtype=np.uint8)
    filled = written = 0
    images = f.create_dataset("images", shape=(n, h, w, 3), maxshape=(None, h, w, 3),
                              dtype=np.uint8, chunks=(1, h, w, 3))
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=n, desc=f"prepare {h}x{w}", unit="img", disable=not progress) as bar:
        pending = collections.deque()  # bounded window of futures, consumed in order
        per_task = max(1, min(_TASK, _TASK_BYTES // (h * w * 3)))
        starts = iter(range(0, n, per_task))
        try:
            while True:
                while len(pending) < 4 * workers:  # keep every worker busy, memory bounded
                    s = next(starts, None)
                    if s is None:
                        break
                    chunk = names[s:s + per_task]
                    pending.append((s, pool.submit(_decode_many, read, chunk, (h, w))))
                if not pending:
                    break
                s, fut = pending.popleft()
                try:
                    results = fut.result()
                except Exception as exc:  # a bug, not bad data: surface it with the files named
                    where = source.describe_image(names[s]) + \
                        (f" (or one of the {len(names[s:s + per_task]) - 1} after it)" if per_task > 1 else "")
                    raise DataError(f"{where}: decoding failed: {exc}") from exc
                for i, (arr, info) in enumerate(results, start=s):
                    if arr is None:
                        skipped.append({"file": source.describe_image(names[i]), "reason": info})
                        continue
                    if info:
                        if wrong_size == "error":
                            raise DataError(f"{source.describe_image(names[i])}: image is not 218x178 "
                                            "(prepare(wrong_size='resize') would resize it by the policy)")
                        resized.append(source.describe_image(names[i]))
                    block[filled] = arr
                    filled += 1
                    ok_rows.append(i)
                    if filled == len(block):
                        _write_block(images, written, block)
                        written, filled = written + filled, 0
                bar.update(len(results))
            if filled:
                _write_block(images, written, block[:filled])
                written += filled
            images.resize(written, axis=0)
        finally:
            for _, fut in pending:
                fut.cancel()
    return ok_rows, skipped, resized
