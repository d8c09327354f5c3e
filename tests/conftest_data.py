"""Fixtures and helpers for the data tests (imported by tests/test_data_*.py, not a pytest conftest).

Every dataset here is tiny and generated in a temporary folder: CelebA itself is never needed.
"""
import csv
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinyconv.data import synthesize
from tinyconv.data.celeba import SYNTHETIC_MARKER

SMALL_COUNT = 40


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A 40-image synthetic set in the official folder layout (read-only: copy it to modify).

    Seed 1 gives 5 Blurry and 3 Eyeglasses images among the 40."""
    root = tmp_path_factory.mktemp("synth") / "official"
    synthesize(root, count=SMALL_COUNT, seed=1, workers=1, progress=False)
    return root


def copy_official(src, dst):
    shutil.copytree(src, dst)
    return Path(dst)


def make_zip_layout(src, dst):
    """Official layout with the images in img_align_celeba.zip (stored as ``img_align_celeba/NAME``)."""
    dst = Path(dst)
    dst.mkdir(parents=True)
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        shutil.copy(Path(src) / name, dst / name)
    with zipfile.ZipFile(dst / "img_align_celeba.zip", "w", zipfile.ZIP_STORED) as zf:
        for p in sorted((Path(src) / "img_align_celeba").iterdir()):
            zf.write(p, f"img_align_celeba/{p.name}")
    return dst


def make_torchvision_layout(src, dst):
    """torchvision: ROOT/celeba/{img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt}."""
    dst = Path(dst)
    dst.mkdir(parents=True)
    shutil.copytree(src, dst / "celeba")
    (dst / "celeba" / SYNTHETIC_MARKER).unlink()  # behave like real data
    return dst


def make_kaggle_layout(src, dst):
    """Kaggle: csv annotations and images double-nested at img_align_celeba/img_align_celeba/."""
    src, dst = Path(src), Path(dst)
    lines = (src / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    (dst / "img_align_celeba").mkdir(parents=True)
    shutil.copytree(src / "img_align_celeba", dst / "img_align_celeba" / "img_align_celeba")
    with open(dst / "list_attr_celeba.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id"] + names)
        for ln in lines[2:]:
            w.writerow(ln.split())
    with open(dst / "list_eval_partition.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "partition"])
        for ln in (src / "list_eval_partition.txt").read_text().splitlines():
            w.writerow(ln.split())
    return dst


def read_official(root):
    """(file names, header names, int (N, 40) values, {name: partition}) straight from the text files."""
    lines = (Path(root) / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    files = [ln.split()[0] for ln in lines[2:]]
    values = np.array([[int(t) for t in ln.split()[1:]] for ln in lines[2:]])
    part = dict(ln.split() for ln in (Path(root) / "list_eval_partition.txt").read_text().splitlines())
    return files, names, values, {k: int(v) for k, v in part.items()}


def make_h5(path, n, size=(54, 44), k=3, split=(0.8, 0.1, 0.1), seed=0):
    """A prepared-schema file written directly (no decoding): image i is filled with i % 251,
    label column j is bit j of i, so any row can be checked from its number alone."""
    h, w = size
    n_tr, n_va = int(n * split[0]), int(n * split[1])
    part = np.r_[np.zeros(n_tr), np.ones(n_va), 2 * np.ones(n - n_tr - n_va)].astype(np.uint8)
    with h5py.File(path, "w") as f:
        img = f.create_dataset("images", (n, h, w, 3), np.uint8, chunks=(1, h, w, 3))
        block = 256
        for s in range(0, n, block):
            e = min(n, s + block)
            fill = (np.arange(s, e) % 251).astype(np.uint8)[:, None, None, None]
            img[s:e] = np.broadcast_to(fill, (e - s, h, w, 3))  # a full array: h5py's own broadcast is slow
        f["labels"] = ((np.arange(n)[:, None] >> np.arange(k)) & 1).astype(np.uint8)
        f["partition"] = part
        f.create_dataset("filenames", data=[f"{i + 1:06d}.jpg" for i in range(n)], dtype=h5py.string_dtype())
        a = f.attrs
        a["attributes"] = [f"A{j}" for j in range(k)]
        a["image_size"] = np.array(size)
        a["source_layout"] = "test"
        a["fingerprint"] = "x"
        a["synthetic"] = False
        a["skipped"] = json.dumps([])
        a["format_version"] = 1
        a["complete"] = True
    return Path(path)
