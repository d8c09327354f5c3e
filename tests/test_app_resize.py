"""app/resize.js (the browser's resize policy) against tinyconv.data.resize, bit for bit, in node.

No browser needed: node runs the module on raw RGBA pixels, the same pixels Pillow gets. The
page's only other step is decoding the file into RGBA, which tests/test_app.py checks in Chromium.
"""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyconv.data.resize import resize_to_model

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "tests" / "browser" / "resize_cli.mjs"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed")


def _image(rng, h, w, kind):
    """uint8 (h, w, 4): smooth gradients plus noise (high frequencies stress the filter)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 100 * np.sin(xx[..., None] / (3 + 7 * rng.random(3)) + rng.random(3) * 6) \
        * np.cos(yy[..., None] / (4 + 9 * rng.random(3)))
    rgb = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == "grey":
        rgb[:] = rgb[..., :1]
    alpha = np.full((h, w, 1), 255, np.uint8)
    if kind == "alpha":
        alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
        alpha[: h // 3] = 0
        alpha[-(h // 4):] = 255
    return np.concatenate([rgb, alpha], axis=2)


def _run_js(cases, tmp_path):
    blobs, manifest, offset = [], [], 0
    for img, (th, tw) in cases:
        h, w = img.shape[:2]
        manifest.append({"w": w, "h": h, "th": th, "tw": tw, "offset": offset})
        blobs.append(img.tobytes())
        offset += img.nbytes
    (tmp_path / "cases.json").write_text(json.dumps(manifest))
    (tmp_path / "in.bin").write_bytes(b"".join(blobs))
    subprocess.run(["node", str(CLI), str(tmp_path / "cases.json"), str(tmp_path / "in.bin"),
                    str(tmp_path / "out.bin")], check=True, timeout=60)
    out, pos, results = (tmp_path / "out.bin").read_bytes(), 0, []
    for _, (th, tw) in cases:
        results.append(np.frombuffer(out[pos:pos + th * tw * 3], np.uint8).reshape(th, tw, 3))
        pos += th * tw * 3
    return results


def test_js_resize_equals_pillow_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(640, 360), (360, 640), (1000, 1001), (300, 246), (50, 40), (23, 31), (1, 9), (9, 1),
              (218, 178), (218, 179), (219, 178), (54, 44), (437, 355), (97, 500), (500, 97)]
    sizes = [(218, 178), (54, 44), (109, 89)]
    cases = []
    for i, (h, w) in enumerate(shapes):
        for j, size in enumerate(sizes):
            kind = ("rgb", "grey", "alpha")[(i + j) % 3]
            cases.append((_image(rng, h, w, kind), size))
    got = _run_js(cases, tmp_path)
    for (img, size), js in zip(cases, got):
        want = resize_to_model(img, size)
        assert js.shape == want.shape
        diff = np.abs(js.astype(int) - want).max()
        assert diff == 0, f"{img.shape} -> {size}: JS differs from Pillow by up to {diff}"


def test_js_composite_on_white_matches_pillow_for_every_alpha(tmp_path):
    # every (value, alpha) pair once: 256 x 256 pixels, at the target size (identity, no resampling)
    v, a = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    img = np.stack([v, v[:, ::-1], v.T, a], axis=2)
    (js,) = _run_js([(img, (256, 256))], tmp_path)
    np.testing.assert_array_equal(js, resize_to_model(img, (256, 256)))
