"""``python -m tinyconv.app [--model DIR] [--port N]``: serve the browser demo on localhost.

The page (``app/``) runs the exported ``model.onnx`` itself, with ONNX Runtime Web's WebAssembly
backend; this server only hands out files, on 127.0.0.1 only, and nothing else::

    /                  app/index.html, app.js, resize.js, style.css
    /ort/<file>        ONNX Runtime Web from app/node_modules/onnxruntime-web/dist (after `npm ci` in app/)
    /model/model.onnx  the chosen exported model, and /model/export.json beside it when present

--model takes an exported folder (``python export.py RUN --out DIR``), a model.onnx, or a run
folder holding ``export/model.onnx``; the default is the newest ``runs/*/export/model.onnx``.
"""
import argparse
import http.server
import sys
from functools import partial
from pathlib import Path

REPO_APP_DIR = Path(__file__).resolve().parent.parent / "app"
STATIC = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/resize.js": "resize.js",
          "/style.css": "style.css"}
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
ORT_FILES = {"ort.wasm.min.js", "ort.wasm.min.js.map", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"}
MODEL_FILES = {"model.onnx", "export.json"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".wasm": "application/wasm", ".map": "application/json", ".json": "application/json",
         ".onnx": "application/octet-stream"}


class AppError(Exception):
    """A setup problem the user can fix; the message says how."""


def find_model_dir(model=None, runs_dir="runs"):
    """The folder holding model.onnx, from --model (folder, model.onnx or run folder) or the newest export."""
    if model is None:
        exports = sorted(Path(runs_dir).glob("*/export/model.onnx"), key=lambda p: p.stat().st_mtime)
        exports += sorted(Path(runs_dir).glob("*/*/export/model.onnx"), key=lambda p: p.stat().st_mtime)
        if not exports:
            raise AppError(f"no exported model under {runs_dir}/: export one first "
                           "(python export.py RUN --out DIR) and pass --model DIR")
        return max(exports, key=lambda p: p.stat().st_mtime).parent
    path = Path(model)
    if path.is_file() and path.suffix.lower() == ".onnx":
        if path.name != "model.onnx":
            raise AppError(f"{path}: the app serves a file named model.onnx; pass the folder that "
                           "python export.py wrote")
        return path.parent
    if not path.exists():
        raise AppError(f"{path}: no such file or folder")
    if (path / "model.onnx").is_file():
        return path
    if (path / "export" / "model.onnx").is_file():
        return path / "export"
    raise AppError(f"{path} has no model.onnx: export the run first "
                   f"(python export.py RUN --out {path}) or pass the folder export.py wrote")


def check_app_dir(app_dir):
    """Raise AppError unless app_dir holds the page and an installed onnxruntime-web."""
    app_dir = Path(app_dir)
    missing = [name for name in set(STATIC.values()) if not (app_dir / name).is_file()]
    if missing:
        raise AppError(f"{app_dir}: not the tinyconv app folder (missing {', '.join(sorted(missing))})")
    dist = app_dir / ORT_DIST
    absent = [name for name in sorted(ORT_FILES - {"ort.wasm.min.js.map"}) if not (dist / name).is_file()]
    if absent:
        raise AppError(f"ONNX Runtime Web is not installed ({dist / absent[0]} is missing): run "
                       f"`npm ci` (or `npm install`) in {app_dir} once; it needs the npm registry, "
                       "the page works offline afterwards")


class AppHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD for an explicit list of files; everything else is 404 (no directory listing, no ..)."""

    server_version = "tinyconv-app"

    def __init__(self, *args, app_dir, model_dir, quiet=True, **kwargs):
        self.app_dir, self.model_dir, self.quiet = Path(app_dir), Path(model_dir), quiet
        super().__init__(*args, **kwargs)

    def _file(self, url_path):
        if url_path in STATIC:
            return self.app_dir / STATIC[url_path]
        prefix, _, name = url_path.lstrip("/").partition("/")
        if prefix == "ort" and name in ORT_FILES:
            return self.app_dir / ORT_DIST / name
        if prefix == "model" and name in MODEL_FILES:
            return self.model_dir / name
        return None

    def _serve(self, body):
        path = self._file(self.path.split("?", 1)[0].split("#", 1)[0])
        if path is None or not path.is_file():
            self.send_error(404, "not one of the app's files")
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")  # a re-exported model must not come from a cache
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)


def make_server(model_dir, port=8765, app_dir=REPO_APP_DIR, quiet=True):
    """A ThreadingHTTPServer on 127.0.0.1:port (0: a free port) serving the app and model_dir."""
    check_app_dir(app_dir)
    if not (Path(model_dir) / "model.onnx").is_file():
        raise AppError(f"{model_dir} has no model.onnx")
    handler = partial(AppHandler, app_dir=app_dir, model_dir=model_dir, quiet=quiet)
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tinyconv.app", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="exported folder (holding model.onnx), a model.onnx, or a run folder "
                                    "with export/ (default: the newest runs/*/export)")
    ap.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0 picks a free one)")
    ap.add_argument("--runs-dir", default="runs", help="where to look for the newest export (default: runs)")
    ap.add_argument("--app-dir", default=str(REPO_APP_DIR), help=f"the page's folder (default: {REPO_APP_DIR})")
    ap.add_argument("--verbose", action="store_true", help="log every request")
    args = ap.parse_args(argv)
    try:
        model_dir = find_model_dir(args.model, args.runs_dir)
        server = make_server(model_dir, args.port, args.app_dir, quiet=not args.verbose)
    except AppError as exc:
        print(f"tinyconv.app: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, permission
        print(f"tinyconv.app: error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc})",
              file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"tinyconv app: http://{host}:{port}/  (model: {(model_dir / 'model.onnx').resolve()}; "
          "Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
