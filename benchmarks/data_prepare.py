"""Benchmark the data pipeline: prepare throughput vs a plain Pillow loop, and batch iteration.

    python benchmarks/data_prepare.py [--count 1500] [--workdir /tmp/tinyconv-bench]

Uses the built-in synthetic set (same JPEG layout and size as CelebA's aligned images, 178x218).
Prints Markdown tables. Numbers are images per second on this machine; run them on an idle machine.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinyconv.data import Dataset, prepare, resize_to_model, synthesize  # noqa: E402

SIZES = [(54, 44), (109, 89), (218, 178)]


def plain_pillow_loop(folder, size):
    """The baseline: one process, open + decode + the same resize policy, into a list."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        with Image.open(p) as img:
            out.append(resize_to_model(img, size))
    return len(out)


def draft_loop(folder, size):
    """Pillow's JPEG draft mode (DCT-domain downscaling) before the policy: faster, slightly different."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        with Image.open(p) as img:
            img.draft("RGB", (size[1], size[0]))
            out.append(resize_to_model(img, size))
    return len(out)


def timed(fn, *a, **k):
    t = time.perf_counter()
    r = fn(*a, **k)
    return time.perf_counter() - t, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tinyconv-bench-"))
    root = work / f"synthetic-{args.count}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if not root.exists():
        t, _ = timed(synthesize, root, count=args.count, seed=0, progress=False)
        print(f"synthesize: {args.count} images in {t:.1f} s ({args.count / t:.0f} img/s, {cores} cores)\n")
    folder = root / "img_align_celeba"
    n_files = len(os.listdir(folder))

    print(f"## prepare throughput ({n_files} JPEGs 178x218 -> HDF5, {cores} cores)\n")
    print("| size | plain Pillow loop, 1 process (img/s) | Pillow + draft(), 1 process (img/s) | "
          f"prepare, {cores} threads (img/s) | speed-up | draft max abs pixel diff |")
    print("|---|---|---|---|---|---|")
    files = {}
    for size in SIZES:
        t_plain, _ = timed(plain_pillow_loop, folder, size)
        t_draft, _ = timed(draft_loop, folder, size)
        out = work / f"bench-{size[0]}x{size[1]}.h5"
        t_prep, _ = timed(prepare, root, out, image_size=size, progress=False, workers=cores)
        files[size] = out
        with Dataset(out) as ds:
            n_kept = sum(ds.split_size(s) for s in ("train", "validation", "test"))
        # draft vs policy on a few images: how different draft() makes the pixels
        diffs = []
        for p in sorted(folder.iterdir())[:20]:
            a = resize_to_model(Image.open(p), size)
            with Image.open(p) as img:
                img.draft("RGB", (size[1], size[0]))
                b = resize_to_model(img, size)
            diffs.append(int(np.abs(a.astype(int) - b).max()))
        print(f"| {size[0]}x{size[1]} | {n_files / t_plain:.0f} | {n_files / t_draft:.0f} | "
              f"{n_kept / t_prep:.0f} | {(n_kept / t_prep) / (n_files / t_plain):.2f}x | {max(diffs)} |")
    print("\n(prepare also drops Blurry rows before decoding and writes HDF5; its rate counts the images it"
          " stored)\n")

    print(f"## batch iteration throughput (train split, batch {args.batch_size}, shuffled, float32 NCHW on CPU)\n")
    print("| size | streaming, prefetch 2 (img/s) | resident in RAM (img/s) |")
    print("|---|---|---|")
    for size in SIZES:
        with Dataset(files[size]) as ds:
            rates = []
            for resident in (False, True):
                list(ds.batches("train", args.batch_size, seed=0, epoch=0, resident=resident))  # warm
                t = time.perf_counter()
                n = sum(len(b.index) for b in ds.batches("train", args.batch_size, seed=0, epoch=1,
                                                         resident=resident))
                rates.append(n / (time.perf_counter() - t))
        print(f"| {size[0]}x{size[1]} | {rates[0]:.0f} | {rates[1]:.0f} |")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
