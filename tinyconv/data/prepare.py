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
an interrupted run leaves no file under the output name (and the temporary file is removed).
"""
import collections
import io
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from .celeba import DEFAULT_ATTRIBUTES, detect_layout, open_reader, read_annotations, select_attributes
from .errors import DataError
from .resize import FULL_SIZE, RESIZE_FILTER, RESIZE_POLICY, resize_to_model

FORMAT_VERSION = 1
_WRITE_BLOCK = 64  # images gathered before one h5py write: fewer, larger writes
_TASK = 16  # images per thread task: amortises the executor's per-task overhead (~0.5 ms per image)


def settings_key(image_size, attributes, drop_blurry):
    """The preparation settings folded into the fingerprint (a change of any of them means a rebuild)."""
    h, w = image_size
    return (f"format={FORMAT_VERSION};size={h}x{w};attributes={','.join(attributes)};"
            f"drop_blurry={bool(drop_blurry)};policy={RESIZE_POLICY}")


def default_workers():
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _decode(read, name, size):
    """Bytes -> uint8 (H, W, 3) by the resize policy. Returns (array, was_wrong_size) or (None, reason)."""
    try:
        with Image.open(io.BytesIO(read(name))) as img:
            img.load()  # forces the full decode here, so a truncated JPEG fails here, not later
            wrong = img.size != (FULL_SIZE[1], FULL_SIZE[0])
            return resize_to_model(img, size), wrong
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # OSError covers UnidentifiedImageError and "image file is truncated"
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
    Corrupt or unreadable images are skipped, printed, and listed in ``attrs["skipped"]``.
    """
    out = Path(out)
    image_size = (int(image_size[0]), int(image_size[1]))
    attributes = list(attributes)
    if wrong_size not in ("resize", "error"):
        raise ValueError(f"wrong_size must be 'resize' or 'error', got {wrong_size!r}")
    source = detect_layout(root)
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

    available = source.image_names()
    missing = [f for f in names if f not in available]
    if missing:
        raise DataError(f"{source.images}: {len(missing)} file names in {source.attr_file} have no image "
                        f"(e.g. {', '.join(missing[:5])})")

    fingerprint = source.fingerprint(settings_key(image_size, attributes, drop_blurry))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    try:
        ok_rows, skipped, resized = _write_images(tmp, source, names, rows, image_size, workers,
                                                  progress, wrong_size)
        with h5py.File(tmp, "a") as f:
            ok = np.asarray([rows[i] for i in ok_rows], dtype=np.int64)
            labels = (ann.values[ok][:, cols] == 1).astype(np.uint8) if len(ok) else \
                np.zeros((0, len(cols)), np.uint8)
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
        os.replace(tmp, out)
    except BaseException:
        # KeyboardInterrupt included: never leave a half-written file behind.
        try:
            os.remove(tmp)
        except OSError:
            pass
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


def _write_images(tmp, source, names, rows, image_size, workers, progress, wrong_size):
    """Decode ``names`` in parallel, in order, into ``images``; return (kept indexes, skipped, resized)."""
    h, w = image_size
    n = len(names)
    workers = workers or default_workers()
    read = open_reader(source)
    ok_rows, skipped, resized = [], [], []
    block = np.empty((_WRITE_BLOCK, h, w, 3), dtype=np.uint8)
    filled = written = 0
    with h5py.File(tmp, "w") as f, ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=n, desc=f"prepare {h}x{w}", unit="img", disable=not progress) as bar:
        images = f.create_dataset("images", shape=(n, h, w, 3), maxshape=(None, h, w, 3),
                                  dtype=np.uint8, chunks=(1, h, w, 3))
        pending = collections.deque()  # bounded window of futures, consumed in order
        starts = iter(range(0, n, _TASK))
        try:
            while True:
                while len(pending) < 4 * workers:  # keep every worker busy, memory bounded
                    s = next(starts, None)
                    if s is None:
                        break
                    chunk = names[s:s + _TASK]
                    pending.append((s, pool.submit(_decode_many, read, chunk, (h, w))))
                if not pending:
                    break
                s, fut = pending.popleft()
                try:
                    results = fut.result()
                except Exception as exc:  # a bug, not bad data: surface it with the files named
                    raise DataError(f"{source.describe_image(names[s])} (or one of the {_TASK} after it): "
                                    f"decoding failed: {exc}") from exc
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
                    if filled == _WRITE_BLOCK:
                        images[written:written + filled] = block
                        written, filled = written + filled, 0
                bar.update(len(results))
            if filled:
                images[written:written + filled] = block[:filled]
                written += filled
            images.resize(written, axis=0)
        finally:
            for _, fut in pending:
                fut.cancel()
    return ok_rows, skipped, resized
