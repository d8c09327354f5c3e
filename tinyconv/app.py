"""``python -m tinyconv.app [--model DIR] [--port N]``: serve the browser demo on localhost.

The page (``app/``) runs the exported ``model.onnx`` itself, with ONNX Runtime Web's WebAssembly
backend; this server only hands out files, on 127.0.0.1 only, and nothing else::

    /                  app/index.html, app.js, resize.js, style.css
    /ort/<file>        ONNX Runtime Web from app/node_modules/onnxruntime-web/dist (after `npm ci` in app/)
    /model/model.onnx  the chosen exported model, and /model/export.json beside it when present

--model takes an exported folder (``python export.py RUN --out DIR``), a model.onnx, or a run
folder holding ``export/model.onnx``; the default is the newest ``runs/*/export/model.onnx``.

What the server guarantees:

- **Host check** (against DNS rebinding, where another site's page reaches 127.0.0.1 under its own
  name): only ``Host: 127.0.0.1:PORT``, ``localhost:PORT`` or ``[::1]:PORT`` is answered (the port
  may be left out only when it is 80); any other Host gets 421. A request without Host is answered
  only in HTTP/1.0 (browsers always send one); HTTP/1.1 without Host, or two Host headers, get 400.
- **No absolute paths served**: in export.json and in model.onnx's metadata (``metadata_props``)
  every absolute path (``/home/me/runs/x``, ``C:\\Users\\...``, ``~/...``) is cut to its last part
  (``.../x``); the graph is sent byte for byte.
- **Bounded**: a connection that sends or takes nothing for ``TIMEOUT_S`` seconds is closed; at most
  ``MAX_CONNECTIONS`` are served at once, more are answered 503 and closed at once; files are
  streamed in ``CHUNK`` pieces with their Content-Length, never read whole.

Exit status: 2 for a malformed command line (argparse, including a --port outside 0-65535),
1 when the model or the page cannot be served (missing files, port in use).
"""
import argparse
import http.server
import io
import json
import os
import re
import sys
import threading
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
TIMEOUT_S = 10.0          # a connection silent this long (sending its request or taking ours) is closed
MAX_CONNECTIONS = 32      # served at once (a browser opens about 6); more get 503 at once
CHUNK = 64 * 1024         # files go out in pieces this size
MAX_JSON_BYTES = 2**20    # export.json (a few kB) and one metadata entry are refused above this
BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 27\r\n"
        b"Connection: close\r\n\r\nbusy: too many connections\n")
# An absolute path inside any text: POSIX /..., home ~/..., Windows C:\..., C:/... and \\server\...
# Not after a word character, dot or slash, and not "//": relative paths (runs/x), "1/255" and URLs
# (https://...) are left alone; "celeba:/data/x.h5" is caught.
_ABS_PATH = re.compile(r"(?<![\w.~/\\-])(?:[A-Za-z]:[\\/]|~[\\/]|\\\\(?=\w)|[\\/](?![\\/]))[^\s\"'<>|,;]+")


class AppError(Exception):
    """A setup problem the user can fix; the message says how."""


def find_model_dir(model=None, runs_dir="runs"):
    """The folder holding model.onnx, from --model (folder, model.onnx, run folder, or experiment folder: its
    run with the lowest validation loss) or the newest export."""
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
    from .export.source import ModelSourceError, choose_run, runs_in
    if path.is_dir() and runs_in(path) and runs_in(path) != [path]:      # an experiment folder
        try:
            choice = choose_run(path)
        except ModelSourceError as exc:
            raise AppError(str(exc)) from None
        for line in choice.describe():
            print(line)
        if (choice.run_dir / "export" / "model.onnx").is_file():
            return choice.run_dir / "export"
        raise AppError(f"{choice.run_dir} (the run taken from {path}) has no export/model.onnx: export it first "
                       f"(python export.py {path})")
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


def hide_paths(text):
    """Every absolute path in text cut to its last part: "/home/me/runs/x" -> ".../x"."""
    return _ABS_PATH.sub(lambda m: ".../" + re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1], text)


def _hide_in(value):
    """A JSON value with hide_paths applied to every string in it."""
    if isinstance(value, str):
        return hide_paths(value)
    if isinstance(value, list):
        return [_hide_in(v) for v in value]
    if isinstance(value, dict):
        return {k: _hide_in(v) for k, v in value.items()}
    return value


def export_json_view(f, size):
    """An open export.json -> the bytes served: the same JSON with absolute paths hidden."""
    if size > MAX_JSON_BYTES:
        raise ValueError(f"over {MAX_JSON_BYTES // 2**20} MiB")
    try:
        doc = json.loads(f.read(MAX_JSON_BYTES + 1))
    except ValueError:  # UnicodeDecodeError included
        raise ValueError("not valid JSON") from None
    return json.dumps(_hide_in(doc), indent=2).encode() + b"\n"


def _read_varint(f):
    value = 0
    for shift in range(0, 70, 7):
        b = f.read(1)
        if not b:
            raise ValueError("truncated")
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
    raise ValueError("a varint over 10 bytes")


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _fields(f, end):
    """Protobuf fields from f's position to end -> (number, wire type, field start, value start, stop)."""
    pos = f.tell()
    while pos < end:
        f.seek(pos)
        tag = _read_varint(f)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _read_varint(f)
            begin = stop = f.tell()
        elif wire in (1, 5):
            begin = f.tell()
            stop = begin + (8 if wire == 1 else 4)
        elif wire == 2:
            n = _read_varint(f)
            begin = f.tell()
            stop = begin + n
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if number == 0 or stop > end:
            raise ValueError("not a protobuf message, or truncated")
        yield number, wire, pos, begin, stop
        pos = stop


def onnx_view(f, size):
    """An open model.onnx -> what is served: (start, stop) ranges of the file and replacement bytes.

    Each ModelProto.metadata_props entry (field 14: StringStringEntryProto {key = 1, value = 2}) has
    hide_paths applied to its value; everything else, the graph included, is sent byte for byte.
    ValueError when the file is not a ModelProto with a graph (field 7).
    """
    parts, copied, has_graph = [], 0, False
    f.seek(0)
    for number, wire, at, begin, stop in _fields(f, size):
        has_graph |= (number, wire) == (7, 2)
        if (number, wire) != (14, 2):
            continue
        if stop - begin > MAX_JSON_BYTES:
            raise ValueError(f"a metadata entry over {MAX_JSON_BYTES // 2**20} MiB")
        f.seek(begin)
        entry = io.BytesIO(f.read(stop - begin))
        new = bytearray()
        for n, w, a, b, s in _fields(entry, stop - begin):
            raw = entry.getvalue()[a:s]
            if (n, w) == (2, 2):
                value = hide_paths(raw[b - a:].decode("utf-8", "replace")).encode()
                raw = b"\x12" + _varint(len(value)) + value
            new += raw
        if new != entry.getvalue():
            parts += [(copied, at), b"\x72" + _varint(len(new)) + bytes(new)]  # 0x72: field 14, wire type 2
            copied = stop
    if not has_graph:
        raise ValueError("no graph")
    return parts + [(copied, size)]


def host_allowed(host, port):
    """A Host header names this server: 127.0.0.1, localhost or [::1] with its port (left out only on 80)."""
    m = re.fullmatch(r"(127\.0\.0\.1|localhost|\[::1\])(?::([0-9]{1,5}))?", host.strip().lower())
    if m is None:
        return False
    return int(m.group(2)) == port if m.group(2) else port == 80


class AppHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD for an explicit list of files; everything else is 404 (no directory listing, no ..)."""

    server_version = "tinyconv-app"

    def __init__(self, *args, app_dir, model_dir, quiet=True, timeout=TIMEOUT_S, **kwargs):
        self.app_dir, self.model_dir, self.quiet = Path(app_dir), Path(model_dir), quiet
        self.timeout = timeout  # StreamRequestHandler.setup() puts it on the socket
        super().__init__(*args, **kwargs)

    def parse_request(self):
        if not super().parse_request():
            return False
        port = self.server.server_address[1]
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1 or (not hosts and self.request_version != "HTTP/1.0"):
            self.send_error(400, "exactly one Host header is required")
            return False
        if hosts and not host_allowed(hosts[0], port):
            self.send_error(421, f"this server answers only Host 127.0.0.1:{port} or localhost:{port}")
            return False
        return True

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
        url_path = self.path.split("?", 1)[0].split("#", 1)[0]
        path = self._file(url_path)
        if path is None or not path.is_file():
            self.send_error(404, "not one of the app's files")
            return
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                try:
                    if url_path == "/model/export.json":
                        parts = [export_json_view(f, size)]
                    elif url_path == "/model/model.onnx":
                        parts = onnx_view(f, size)
                    else:
                        parts = [(0, size)]
                except ValueError as exc:
                    self.send_error(500, f"{path.name} cannot be served: {exc}")
                    return
                self._send(f, parts, path.suffix, body)
        except FileNotFoundError:  # removed since is_file()
            self.send_error(404, "not one of the app's files")
        except ConnectionError:  # the client went away mid-file
            self.close_connection = True

    def _send(self, f, parts, suffix, body):
        """Headers, then the parts: bytes as they are, (start, stop) ranges of f in CHUNK pieces."""
        length = sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in parts)
        self.send_response(200)
        self.send_header("Content-Type", TYPES.get(suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")  # a re-exported model must not come from a cache
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if not body:
            return
        for part in parts:
            if isinstance(part, bytes):
                self.wfile.write(part)
                continue
            f.seek(part[0])
            left = part[1] - part[0]
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:  # the file shrank while being sent: the client sees a short body
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                left -= len(chunk)

    def do_GET(self):
        self._serve(body=True)

    def do_HEAD(self):
        self._serve(body=False)

    def log_message(self, fmt, *args):
        if not self.quiet:
            super().log_message(fmt, *args)


class AppServer(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer that runs at most max_connections handler threads: a connection beyond
    that is answered 503 and closed by the accepting thread, which never waits on it."""

    request_queue_size = 64  # listen backlog: the default 5 makes a burst wait a second for TCP retries

    def __init__(self, address, handler, max_connections=MAX_CONNECTIONS):
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.setblocking(False)
                request.send(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        """One line on stderr instead of socketserver's traceback; nothing for a client that left."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"tinyconv.app: error serving {client_address[0]}:{client_address[1]}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)


def make_server(model_dir, port=8765, app_dir=REPO_APP_DIR, quiet=True, timeout=TIMEOUT_S,
                max_connections=MAX_CONNECTIONS):
    """An AppServer on 127.0.0.1:port (0: a free port) serving the app and model_dir."""
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise ValueError(f"port must be an integer from 0 to 65535, got {port!r}")
    if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not (isinstance(max_connections, int) and max_connections >= 1):
        raise ValueError(f"max_connections must be a positive integer, got {max_connections!r}")
    check_app_dir(app_dir)
    model = Path(model_dir) / "model.onnx"
    if not model.is_file():
        raise AppError(f"{model_dir} has no model.onnx")
    try:
        with open(model, "rb") as f:
            onnx_view(f, os.fstat(f.fileno()).st_size)
    except ValueError as exc:
        raise AppError(f"{model}: not an ONNX model ({exc}); pass the folder export.py wrote") from None
    handler = partial(AppHandler, app_dir=app_dir, model_dir=model_dir, quiet=quiet, timeout=timeout)
    return AppServer(("127.0.0.1", port), handler, max_connections=max_connections)


def port_number(text):
    """argparse type for --port: an integer from 0 to 65535."""
    if not re.fullmatch(r"[0-9]{1,5}", text.strip()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number: give an integer from 0 to 65535 "
                                         "(0 picks a free port)")
    return int(text)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tinyconv.app", description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="exported folder (holding model.onnx), a model.onnx, or a run folder "
                                    "with export/ (default: the newest runs/*/export)")
    ap.add_argument("--port", type=port_number, default=8765,
                    help="port on 127.0.0.1, 0 to 65535; 0 picks a free one (default: 8765)")
    ap.add_argument("--runs-dir", default="runs", help="where to look for the newest export (default: runs)")
    ap.add_argument("--app-dir", default=str(REPO_APP_DIR), help=f"the page's folder (default: {REPO_APP_DIR})")
    ap.add_argument("--verbose", action="store_true", help="log every request (default: off)")
    args = ap.parse_args(argv)
    try:
        model_dir = find_model_dir(args.model, args.runs_dir)
        server = make_server(model_dir, args.port, args.app_dir, quiet=not args.verbose)
    except AppError as exc:
        print(f"tinyconv.app: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # port in use, permission
        print(f"tinyconv.app: error: cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc})",
              file=sys.stderr)
        return 1
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
