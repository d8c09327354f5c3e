"""The browser demo end to end: ``python -m tinyconv.app`` serves app/ and an exported model; headless
Chromium (Debian's, driven by playwright-core from app/node_modules) loads images of several sizes
and shapes through the page's file input; the probabilities shown must equal ``tinyconv.load`` /
``predict.py`` on the same files.

Bounds, measured (docs/app.md):
- PNG: the page's input pixels equal ``resize_to_model`` exactly (app/resize.js is a bit-exact port
  of Pillow's resize, and the browser's PNG decoding is exact); the probabilities then differ only
  by float32 rounding between ONNX Runtime's wasm and native CPU kernels: measured <= 2.4e-7,
  asserted <= 2e-6.
- JPEG: decoders may differ by +-1 per channel; asserted only loosely (<= 0.02), reported.
- The browser's own drawImage resize (``?resize=canvas-high``) is measured and printed, not asserted.
"""
import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinyconv.app import AppError, find_model_dir, make_server  # noqa: F401  (the server's own API)
from tinyconv.data.resize import resize_to_model
from tinyconv.predict import load, read_image

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app"
DRIVER = ROOT / "tests" / "browser" / "drive_app.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# The smallest ModelProto the server takes for a model: ir_version 8 (field 1) and an empty graph (field 7)
TINY_ONNX = b"\x08\x08\x3a\x00"
PNG_PROB_TOL = 2e-6   # float32 kernels (wasm vs native); measured <= 2.4e-7
JPEG_PROB_TOL = 0.02  # JPEG decoders may differ by +-1 per channel


def _missing():
    if shutil.which("node") is None:
        return "node (Node.js) is not installed"
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    for pkg in ("onnxruntime-web", "playwright-core"):
        if not (APP / "node_modules" / pkg / "package.json").is_file():
            return f"app/node_modules/{pkg} is missing: run `npm ci` in app/"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def _face_scene(rng, w, h, male, glasses, smiling):
    """A w x h RGB picture: textured noisy background with a synthetic face pasted, scaled to fit."""
    from tinyconv.data.synthetic import draw_face
    face, _ = draw_face(rng, male=male, glasses=glasses, smiling=smiling, blurry=False)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = 120 + 80 * np.sin(xx[..., None] / 5.0 + rng.random(3) * 6) * np.cos(yy[..., None] / 7.0)
    bg = np.clip(bg + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    scale = min(w / 178, h / 218) * 0.95
    fw, fh = max(1, round(178 * scale)), max(1, round(218 * scale))
    face_img = Image.fromarray(face).resize((fw, fh), Image.Resampling.BICUBIC)
    scene = Image.fromarray(bg)
    scene.paste(face_img, ((w - fw) // 2, (h - fh) // 2))
    return scene


def make_images(folder, seed=0):
    """Test images, each a different path through the policy; returns their paths (PNGs, then a JPEG)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(img, name, **kw):
        paths.append(folder / name)
        img.save(folder / name, **kw)

    save(_face_scene(rng, 640, 360, True, True, False), "wide_640x360.png")    # crop the sides
    save(_face_scene(rng, 300, 700, False, False, True), "tall_300x700.png")   # crop top and bottom
    save(_face_scene(rng, 61, 47, True, False, True), "small_47x61.png")       # upsampling
    save(_face_scene(rng, 500, 500, False, True, True).convert("L"), "grey_500x500.png")
    rgba = _face_scene(rng, 420, 520, True, False, False).convert("RGBA")
    a = np.asarray(rgba).copy()
    yy, xx = np.mgrid[0:520, 0:420]
    a[..., 3] = np.clip(255 - np.hypot(xx - 210, yy - 260) * 1.1, 0, 255).astype(np.uint8)  # soft vignette
    save(Image.fromarray(a, "RGBA"), "rgba_420x520.png")
    save(_face_scene(rng, 178, 218, False, False, False), "exact_178x218.png")  # identity path
    save(_face_scene(rng, 1200, 1600, True, True, True), "photo_1200x1600.jpg", quality=90)
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An exported full-size (218 x 178) model with BatchNorm statistics that matter."""
    from test_export_helpers import make_run
    from tinyconv.export.exporter import export
    tmp = tmp_path_factory.mktemp("app_model")
    run_dir, _ = make_run(tmp / "runs", H=218, W=178, seed=3, synthetic=True)
    out = tmp / "export"
    export(run_dir, out=out, coreml=False, log=lambda *a: None)
    return out


def start_server(model_dir, *extra):
    """python -m tinyconv.app on a free port -> (process, url); the command prints the address."""
    proc = subprocess.Popen([sys.executable, "-m", "tinyconv.app", "--model", str(model_dir), "--port", "0", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not m:
        proc.kill()
        raise AssertionError(f"no address printed: {line!r} {proc.stderr.read()!r}")
    return proc, m.group(0)


def test_app_command_says_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "tinyconv.app", "--model", str(empty)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and "has no model.onnx" in r.stderr and "export.py" in r.stderr
    (empty / "model.onnx").write_bytes(b"x")
    bare = tmp_path / "app"
    bare.mkdir()
    for name in ("index.html", "app.js", "resize.js", "style.css"):
        shutil.copy(APP / name, bare / name)
    r = subprocess.run([sys.executable, "-m", "tinyconv.app", "--model", str(empty), "--app-dir", str(bare)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1 and "npm ci" in r.stderr, r.stderr


def test_server_serves_only_the_app_files_on_localhost(tmp_path):
    import threading
    import urllib.error
    import urllib.request
    app_dir = tmp_path / "app"
    dist = app_dir / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for name in ("index.html", "app.js", "resize.js", "style.css"):
        shutil.copy(APP / name, app_dir / name)
    for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm", "secret.txt"):
        (dist / name).write_bytes(b"\0asm" if name.endswith(".wasm") else b"// js")
    model_dir = tmp_path / "export"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(TINY_ONNX)
    (model_dir / "other.txt").write_text("not served")
    server = make_server(model_dir, port=0, app_dir=app_dir)
    host, port = server.server_address[:2]
    assert host == "127.0.0.1"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def get(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read()

        assert get("/")[2].startswith(b"<!doctype html>")
        assert get("/?resize=canvas-high")[0] == 200
        assert get("/ort/ort-wasm-simd-threaded.wasm")[1] == "application/wasm"
        assert get("/ort/ort-wasm-simd-threaded.mjs")[1].startswith("text/javascript")
        assert get("/model/model.onnx")[2] == TINY_ONNX
        for bad in ("/ort/secret.txt", "/model/other.txt", "/../setup.cfg", "/model/../../setup.cfg",
                    "/node_modules/onnxruntime-web/package.json", "/tinyconv/app.py"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                get(bad)
            assert exc.value.code == 404, bad
    finally:
        server.shutdown()
        server.server_close()


def _drive(url, screenshot, modes, images, screenshot_of):
    r = subprocess.run(["node", str(DRIVER), url, str(screenshot), ",".join(modes), *map(str, images)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CHROMIUM": CHROMIUM, "SCREENSHOT_OF": str(screenshot_of)})
    assert r.returncode == 0, f"browser driver failed:\n{r.stderr[-3000:]}"
    return json.loads(r.stdout)


@needs_browser
def test_page_matches_predict_in_headless_chromium(exported, tmp_path):
    t0 = time.perf_counter()
    images = make_images(tmp_path / "images")
    model = load(exported)
    want = model.predict(images)
    # predict.py --json gives the same numbers (it is what users run)
    sys.path.insert(0, str(ROOT))
    import predict as predict_cli
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert predict_cli.main([*map(str, images), "--model", str(exported), "--json"]) == 0
    cli = json.loads(buf.getvalue())
    assert cli["synthetic"] is True
    np.testing.assert_array_equal([[r["probabilities"][a] for a in model.attributes] for r in cli["predictions"]],
                                  want.astype(float))
    png = [p.suffix == ".png" for p in images]
    proc, url = start_server(exported)
    try:
        shot = tmp_path / "app_screenshot.png"
        got = _drive(url, shot, ["pillow", "canvas-high"], images, screenshot_of=images[0])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not got["console"], f"errors, warnings or requests outside localhost: {got['console']}"
    print(f"\nscreenshot: {shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000

    lines = []
    for mode in ("pillow", "canvas-high"):
        rows = got["modes"][mode]
        assert [r["image"] for r in rows] == [p.name for p in images]
        for path, row, p_py, is_png in zip(images, rows, want, png):
            assert row["state"] == "done", row["note"]
            assert row["synthetic"] == "true" and row["warning"], "the synthetic-data warning must show"
            p_js = np.array([row["probabilities"][a] for a in model.attributes])
            x_js = np.frombuffer(base64.b64decode(row["input"]), np.uint8).reshape(*model.image_size, 3)
            x_py = resize_to_model(read_image(path), model.image_size)
            px = np.abs(x_js.astype(int) - x_py)
            d = np.abs(p_js - p_py)
            lines.append(f"{mode:<12} {path.name:<20} pixels: max {px.max():3d}, mean {px.mean():.3f}; "
                         + "  ".join(f"{a} {v:.1e}" for a, v in zip(model.attributes, d)))
            if mode == "pillow":
                if is_png:
                    assert px.max() == 0, f"{path.name}: the page's input differs from resize_to_model"
                    assert d.max() <= PNG_PROB_TOL, f"{path.name}: {d}"
                else:
                    assert d.max() <= JPEG_PROB_TOL, f"{path.name}: {d}"
    print("browser vs tinyconv.load().predict (|p_browser - p_python| per attribute):")
    print("\n".join(lines))
    print(f"test time {time.perf_counter() - t0:.1f} s")
