"""The benchmarks' own arithmetic, checked on the CPU (the GPU benchmark cannot run here)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_gpu_benchmark_tflops_is_batch_times_gflop_over_milliseconds():
    import gpu_train
    # 256 images x 3.039 GFLOP (forward + backward at 218x178) in 125 ms: 6.22 TFLOP/s (it printed 0.006)
    assert gpu_train.step_tflops(256, 3 * gpu_train.GFLOP_FWD_218, 125.0) == pytest.approx(6.224, rel=1e-3)
    assert gpu_train.step_tflops(1, 1.0, 1.0) == 1.0        # 1 GFLOP in 1 ms is 1 TFLOP/s


def test_gpu_check_stops_loudly_without_cupy_or_a_device(tmp_path):
    """On a machine without CuPy (or without a device) the check fails at once, saying what is missing,
    instead of passing with every GPU test skipped."""
    import os
    import subprocess
    from tinyconv.backend import gpu_available
    if gpu_available():
        pytest.skip("this machine has a GPU")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "FAIL: CuPy" in done.stdout + done.stderr and "stopped at the preflight" in done.stdout


@pytest.mark.parametrize("body,ok", [
    ("def test_a():\n    assert True\n", True),
    ("import pytest\n\ndef test_a():\n    assert True\n\n@pytest.mark.skip(reason='no device')\n"
     "def test_b():\n    pass\n", False),
    ("def test_a():\n    assert False\n", False),
    ("import pytest\n\n@pytest.mark.skip(reason='x')\ndef test_a():\n    pass\n", False),
])
def test_the_gpu_checks_report_reader_fails_on_skips_failures_and_nothing_run(tmp_path, body, ok):
    import subprocess
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "test_x.py").write_text(body)
    xml = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_x.py"),
                    f"--junitxml={xml}"], capture_output=True, cwd=tmp_path, timeout=120)
    done = subprocess.run([sys.executable, str(root / "scripts" / "junit_ok.py"), str(xml)], capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode == 0) == ok, done.stdout


def test_the_scaling_model_is_the_ring_allreduce_arithmetic():
    """benchmarks/scaling.py: epoch time = N/B (c0 + c1 B/R + alpha + 2 (R-1)/R 4 P / beta); the link fit
    takes alpha from the smallest message and beta from the largest."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import scaling
    rows = [{"bytes": 4096, "seconds": 1e-5}, {"bytes": 16 << 20, "seconds": 1e-5 + (16 << 20) / 2e9}]
    alpha, beta = scaling.fit_link(rows, 2)
    assert alpha == 1e-5 and abs(beta - 2e9) / 2e9 < 1e-9
    table = scaling.model_table(1e-3, 2e-4, 3e-5, 1e10, workers=(8,))
    line = next(l for l in table.splitlines() if l.startswith("| 8 | batch-increase | 256 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    steps = 162_770 / 256
    compute = steps * (1e-3 + 2e-4 * 256 / 8)
    comm = steps * (3e-5 + 2 * 7 / 8 * 4 * 463_875 / 1e10)
    assert cells[3] == "32" and cells[4] == f"{steps:,.0f}"
    assert float(cells[5]) == round(compute, 2 if compute < 10 else 1)
    assert float(cells[6]) == round(comm, 2 if comm < 10 else 1)
    assert cells[8] == f"{comm / (compute + comm):.0%}"
