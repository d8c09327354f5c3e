"""Two first runs at once build the built-in synthetic set once, and both use it."""
import multiprocessing
import traceback
from pathlib import Path

import pytest

from tinyconv.data import load_dataset


def first_run(cache_dir, barrier, results):
    barrier.wait()  # both processes reach load_dataset together, before either has built anything
    try:
        with load_dataset(None, image_size=(8, 8), cache_dir=cache_dir, synthetic_count=12, workers=1,
                          progress=False) as ds:
            results.put(("ok", str(ds.path), ds.filenames("train"), ds.labels("train").tolist()))
    except BaseException:
        results.put(("failed", traceback.format_exc(), None, None))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_two_first_runs_at_once_both_succeed(tmp_path):
    """Before: one of them failed with "[Errno 39] Directory not empty" (both drew the set and the
    second could not rename its copy onto the first's)."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    cache = tmp_path / "data"
    procs = [ctx.Process(target=first_run, args=(cache, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [g[0] for g in got] == ["ok", "ok"], "\n".join(g[1] for g in got if g[0] != "ok")
    assert got[0][1:] == got[1][1:]  # the same file, the same rows
    assert len(got[0][2]) > 0
    visible = sorted(p.name for p in cache.iterdir() if not p.name.startswith(".") or "partial" in p.name)
    assert visible == ["synthetic-celeba-n12-s0", Path(got[0][1]).name]  # no half-built copy left over
