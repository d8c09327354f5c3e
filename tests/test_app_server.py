"""The demo server against hostile or careless clients, with real sockets on 127.0.0.1: the Host
check (DNS rebinding), no absolute paths served, stalled connections timed out and bounded, files
streamed; and ``python -m tinyconv.app``'s options checked at parse time. Each test takes a second
or two; no browser needed."""
import contextlib
import hashlib
import json
import select
import shutil
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from test_predict_cli import check_help
from tinyconv.app import AppError, hide_paths, main, make_server
from tinyconv.export.onnx_export import ort_session

ROOT = Path(__file__).resolve().parent.parent
WASM_BYTES = 24 * 2**20  # a large file to stream (the real ort-wasm-simd-threaded.wasm is ~12 MB)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(app folder with a large fake wasm, exported folder with absolute paths in export.json and
    model.onnx's metadata, the temporary root those paths start with)."""
    from test_export_helpers import make_run
    from tinyconv.export.exporter import export
    tmp = tmp_path_factory.mktemp("app_server")
    run_dir, _ = make_run(tmp / "runs")
    export(run_dir, out=tmp / "export", coreml=False, log=lambda *a: None)
    app_dir = tmp / "app"
    dist = app_dir / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for name in ("index.html", "app.js", "resize.js", "style.css"):
        shutil.copy(ROOT / "app" / name, app_dir / name)
    for name in ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs"):
        (dist / name).write_text("// js")
    with open(dist / "ort-wasm-simd-threaded.wasm", "wb") as f:
        f.write(b"\0asm")
        f.seek(WASM_BYTES - 4)
        f.write(b"tail")
    return app_dir, tmp / "export", tmp


@contextlib.contextmanager
def serving(site, **kwargs):
    app_dir, model_dir, _ = site
    server = make_server(model_dir, port=0, app_dir=app_dir, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def request(port, head, timeout=5):
    """Send a raw request head; -> (status, headers dict, body) read to the end (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_only_local_host_names_are_answered(site):
    with serving(site) as port:
        def status(*host_lines, version="HTTP/1.1"):
            return request(port, "\r\n".join([f"GET /model/export.json {version}", *host_lines]))[0]

        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            assert status(f"Host: {host}") == 200, host
        for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"localhost.:{port}",
                     "127.0.0.1", "localhost:1", f"127.0.0.1:{port}0", f"127.0.0.2:{port}"):
            assert status(f"Host: {host}") == 421, host   # a DNS-rebinding page sends its own name
        assert status() == 400                           # HTTP/1.1 requires Host
        assert status(f"Host: 127.0.0.1:{port}", "Host: evil.example") == 400
        assert status(version="HTTP/1.0") == 200         # HTTP/1.0 may omit it; browsers never do
        assert status("Host: evil.example", version="HTTP/1.0") == 421
        code, _, body = request(port, f"GET /model/model.onnx HTTP/1.1\r\nHost: evil.example:{port}")
        assert code == 421 and b"ONNX" not in body and len(body) < 2000


def test_no_absolute_path_is_served(site):
    onnx = pytest.importorskip("onnx")
    _, model_dir, tmp = site
    on_disk = json.loads((model_dir / "export.json").read_text())
    assert str(tmp) in json.dumps(on_disk)  # the exporter writes them (checkpoint, run folder, paths)
    with serving(site) as port:
        host = f"Host: 127.0.0.1:{port}"
        code, headers, body = request(port, f"GET /model/export.json HTTP/1.1\r\n{host}")
        assert code == 200 and int(headers["Content-Length"]) == len(body)
        served = json.loads(body)
        assert str(tmp) not in body.decode() and str(Path.home()) + "/" not in body.decode()
        assert served["metadata"]["attributes"] == on_disk["metadata"]["attributes"]
        assert served["metadata"]["checkpoint"] == ".../best.h5"
        code, headers, body = request(port, f"GET /model/model.onnx HTTP/1.1\r\n{host}")
        assert code == 200 and int(headers["Content-Length"]) == len(body)
        assert str(tmp).encode() not in body
        assert request(port, f"HEAD /model/model.onnx HTTP/1.1\r\n{host}")[1]["Content-Length"] == str(len(body))
    original, served = onnx.load(str(model_dir / "model.onnx")), onnx.load_model_from_string(body)
    assert served.graph.SerializeToString() == original.graph.SerializeToString()  # the graph, byte for byte
    before = {p.key: p.value for p in original.metadata_props}
    after = {p.key: p.value for p in served.metadata_props}
    assert list(after) == list(before)
    assert after["training_run"] == ".../run-a" and before["training_run"] == str(tmp / "runs" / "run-a")
    assert all(after[k] == v for k, v in before.items() if str(tmp) not in v)  # the rest unchanged
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(0).integers(0, 256, (2, 54, 44, 3), dtype=np.uint8)
    want = ort_session(model_dir / "model.onnx").run(None, {"image": x})
    got = ort.InferenceSession(body, providers=["CPUExecutionProvider"]).run(None, {"image": x})
    assert all(np.array_equal(a, b) for a, b in zip(got, want))  # the served model runs the same


def test_hide_paths_leaves_relative_paths_urls_and_fractions_alone():
    assert hide_paths("/home/me/runs/x") == ".../x"
    assert hide_paths(r"C:\Users\me\best.h5") == ".../best.h5"
    assert hide_paths("celeba:/data/celeba.h5 and ~/x/y.h5") == "celeba:.../celeba.h5 and .../y.h5"
    for text in ("runs/x/export", "uint8 / 255", "1/255", "https://onnx.ai/a/b", "W:H 178:218"):
        assert hide_paths(text) == text


def test_stalled_connections_are_closed_and_bounded(site):
    timeout = 1.0
    with serving(site, timeout=timeout, max_connections=4) as port:
        threads_before, most_threads = threading.active_count(), 0
        t0 = time.monotonic()
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]  # send nothing
        answers = {}  # socket -> (seconds after connecting, first bytes received)
        try:
            while len(answers) < len(stalled) and time.monotonic() - t0 < 5:
                most_threads = max(most_threads, threading.active_count() - threads_before)
                readable, _, _ = select.select([s for s in stalled if s not in answers], [], [], 0.05)
                for s in readable:
                    answers[s] = (time.monotonic() - t0, s.recv(100))
        finally:
            for s in stalled:
                s.close()
        busy = [t for t, data in answers.values() if data.startswith(b"HTTP/1.0 503")]
        closed = [t for t, data in answers.values() if data == b""]
        assert most_threads <= 4                                  # one thread per served connection
        assert len(busy) == 8 and max(busy) < timeout             # over the limit: answered at once
        assert len(closed) == 4 and 0.9 * timeout < min(closed) and max(closed) < 3 * timeout  # timed out
        time.sleep(0.1)
        assert request(port, f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}")[0] == 200  # the slots came back
        assert threading.active_count() - threads_before <= 1


def test_files_are_streamed_not_read_whole(site):
    app_dir, _, _ = site
    wasm = app_dir / "node_modules" / "onnxruntime-web" / "dist" / "ort-wasm-simd-threaded.wasm"
    want = hashlib.sha256(wasm.read_bytes()).hexdigest()
    with serving(site) as port:
        tracemalloc.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"GET /ort/{wasm.name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(1)
                digest, n = hashlib.sha256(), 0
                while chunk := s.recv(65536):
                    digest.update(chunk)
                    n += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert f"Content-Length: {WASM_BYTES}".encode() in head and n == WASM_BYTES
    assert digest.hexdigest() == want
    assert peak < 4 * 2**20, f"serving a {WASM_BYTES >> 20} MiB file held {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("value", ["-1", "70000", "65536", "abc", "1.5", "", "8e3", "0x50"])
def test_port_is_checked_at_parse_time(value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--port", value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--port" in err and "0 to 65535" in err and "Traceback" not in err


def test_help_has_a_line_and_a_default_for_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    check_help(capsys.readouterr().out, ["--model", "--port", "--runs-dir", "--app-dir", "--verbose"])


def test_failures_are_one_line_and_exit_1(site, tmp_path, capsys):
    app_dir, model_dir, _ = site
    assert main(["--model", str(tmp_path / "none"), "--app-dir", str(app_dir)]) == 1
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "model.onnx").write_bytes(b"not a model at all")
    assert main(["--model", str(fake), "--app-dir", str(app_dir)]) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--model", str(model_dir), "--app-dir", str(app_dir), "--port", str(port)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("tinyconv.app: error: ") for line in lines)
    assert "no such file" in lines[0] and "not an ONNX model" in lines[1] and f"127.0.0.1:{port}" in lines[2]
    with pytest.raises(AppError, match="not an ONNX model"):
        make_server(fake, port=0, app_dir=app_dir)
