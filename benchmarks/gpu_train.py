"""tinyconv (CuPy + its CUDA kernels) against PyTorch (cuDNN) training the default model on one GPU.

    python benchmarks/gpu_train.py                       # batch 64/256/1024, fp32, 30 timed steps
    python benchmarks/gpu_train.py --tf32 --steps 10     # also TF32 on both
    python benchmarks/gpu_train.py --no-torch --batches 256

A step is forward + sigmoid/BCE + backward + Adam on random uint8 images already on the device
(converted to float32 / 255 inside the step, as the training loop does). Each step is timed with
CUDA events; the table shows the median after the warm-up steps. TFLOP/s counts 3 x 1.013 GFLOP
per 218 x 178 image (scaled by the pixel count for other sizes) and is set against an fp32 SGEMM
ceiling (cupy.matmul, 8192^3) measured in the same run. Peak memory: CuPy's pool after the run
(bytes it holds, a high-water mark: the pool is emptied before each run) against PyTorch's
max_memory_reserved (and allocated). Then per-layer forward/backward times at one batch size
against cuDNN, so the slowest layer shows. Prints Markdown; --out also writes it to a file.
"""
import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GFLOP_FWD_218 = 1.013


def events_median(fn, steps, warmup):
    import cupy
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))   # ms
    return statistics.median(times)


def step_tflops(batch, gflop_per_image, ms):
    """TFLOP/s of a step of ``batch`` images at ``gflop_per_image`` GFLOP each taking ``ms`` ms:
    batch * GFLOP / (ms / 1e3) s = batch * GFLOP / ms * 1e3 GFLOP/s = batch * GFLOP / ms TFLOP/s."""
    return batch * gflop_per_image / ms


def sgemm_tflops(tf32):
    import cupy
    from tinyconv.kernels.common_gpu import set_tf32
    set_tf32(tf32)
    n = 8192
    a = cupy.random.standard_normal((n, n), dtype=np.float32)
    b = cupy.random.standard_normal((n, n), dtype=np.float32)
    c = cupy.empty((n, n), dtype=np.float32)
    ms = events_median(lambda: cupy.matmul(a, b, out=c), 10, 3)
    set_tf32(False)
    return 2 * n ** 3 / ms / 1e9


# -- tinyconv ---------------------------------------------------------------------------------------
def tinyconv_setup(batch, hw):
    import cupy
    from tinyconv import Adam, BCEWithLogits, seed_cnn
    model = seed_cnn(input_shape=(3,) + hw, seed=0).to("gpu")      # its plan fuses BN -> ReLU -> pool
    model.layers[0].needs_input_grad = False     # as the training loop (and PyTorch: x needs no grad)
    loss, opt = BCEWithLogits(), Adam(model.parameters())
    rng = cupy.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 3) + hw, dtype=np.uint8)
    t = (rng.random((batch, 3)) > 0.5).astype(np.float32)

    def step():
        xf = x.astype(np.float32) * np.float32(1 / 255)
        loss.forward_array(model.forward(xf, True), t)        # no host sync
        model.backward(loss.backward())
        opt.step()
    return step


def torch_model(hw):
    import torch.nn as nn
    layers, c_in = [], 3
    for c in (32, 64, 128, 128, 192):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(c_in, 3)]
    return nn.Sequential(*layers)


def torch_setup(batch, hw, tf32):
    import torch
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    model = torch_model(hw).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    lossf = torch.nn.BCEWithLogitsLoss()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, 256, (batch, 3) + hw, dtype=torch.uint8, device="cuda", generator=g)
    t = (torch.rand((batch, 3), device="cuda", generator=g) > 0.5).float()

    def step():
        opt.zero_grad(set_to_none=True)
        lossf(model(x.float() / 255), t).backward()
        opt.step()
    return step


def run_one(kind, batch, hw, tf32, steps, warmup):
    """-> (ms per step, peak bytes, extra) or an error string."""
    import cupy
    from tinyconv.kernels.common_gpu import set_tf32
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    try:
        if kind == "tinyconv":
            set_tf32(tf32)
            step = tinyconv_setup(batch, hw)
            ms = events_median(step, steps, warmup)
            peak = pool.total_bytes()
            del step
            set_tf32(False)
            pool.free_all_blocks()
            return ms, peak, ""
        import torch
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = torch_setup(batch, hw, tf32)
        ms = events_median(step, steps, warmup)
        peak, alloc = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
        del step
        torch.cuda.empty_cache()
        return ms, peak, f"alloc {alloc / 2**30:.1f} GiB"
    except Exception as exc:                         # OOM and the like: report, keep going
        set_tf32(False)
        pool.free_all_blocks()
        return f"{type(exc).__name__}: {str(exc)[:80]}"


# -- per layer --------------------------------------------------------------------------------------
def per_layer(batch, hw, steps):
    import cupy
    import torch
    from tinyconv import BatchNorm2D, Conv2D, MaxPool2D, ReLU
    from tinyconv.fusion import BNReLU
    from tinyconv.kernels.common_gpu import set_tf32
    torch.backends.cudnn.benchmark = True
    # fp32 on both sides, whatever mode ran last (cuDNN's own default allows TF32 convolutions)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    set_tf32(False)
    rows, c_in, (h, w) = [], 3, hw
    for i, c in enumerate((32, 64, 128, 128, 192), 1):
        x = cupy.random.standard_normal((batch, c_in, h, w), dtype=np.float32)
        conv = Conv2D(c_in, c, 3, padding=1, rng=np.random.default_rng(i)).to("gpu")
        conv.needs_input_grad = i > 1
        bn, relu, pool = BatchNorm2D(c).to("gpu"), ReLU(), MaxPool2D(2)
        bn_relu = BNReLU(bn, relu)          # the fused op a model's plan runs (its max-pool: below)
        y = conv.forward(x)
        dy = cupy.random.standard_normal(y.shape, dtype=np.float32)
        z = bn_relu.forward(y)                                # max(BN(y), 0): the ReLU fused in
        pz = pool.forward(z)
        dpz = cupy.random.standard_normal(pz.shape, dtype=np.float32)
        ours = {
            "conv fwd": events_median(lambda: conv.forward(x), steps, 2),
            "conv bwd": events_median(lambda: conv.backward(dy), steps, 2),
            "bn+relu fwd": events_median(lambda: bn_relu.forward(y), steps, 2),
            "bn+relu bwd": events_median(lambda: bn_relu.backward(dy), steps, 2),
            "pool fwd": events_median(lambda: pool.forward(z), steps, 2),
            "pool bwd": events_median(lambda: pool.backward(dpz), steps, 2),
        }
        tx = torch.as_tensor(x, device="cuda").requires_grad_(i > 1)
        tconv = torch.nn.Conv2d(c_in, c, 3, padding=1).cuda()
        tbr = torch.nn.Sequential(torch.nn.BatchNorm2d(c), torch.nn.ReLU()).cuda()
        tpool = torch.nn.MaxPool2d(2)
        tdy = torch.as_tensor(dy, device="cuda")
        ty = tconv(tx)
        tyd = ty.detach().requires_grad_(True)
        tz = tbr(tyd)
        tzd = tz.detach().requires_grad_(True)
        tp = tpool(tzd)
        tdp = torch.as_tensor(dpz, device="cuda")
        theirs = {
            "conv fwd": events_median(lambda: tconv(tx), steps, 2),
            "conv bwd": events_median(lambda: ty.backward(tdy, retain_graph=True), steps, 2),
            "bn+relu fwd": events_median(lambda: tbr(tyd), steps, 2),
            "bn+relu bwd": events_median(lambda: tz.backward(tdy, retain_graph=True), steps, 2),
            "pool fwd": events_median(lambda: tpool(tzd), steps, 2),
            "pool bwd": events_median(lambda: tp.backward(tdp, retain_graph=True), steps, 2),
        }
        for op in ours:
            rows.append((f"block {i} {c_in}->{c} @ {h}x{w}", op, ours[op], theirs[op]))
        del x, y, z, pz, dy, dpz, tx, ty, tz, tp, conv, bn, tconv, tbr
        cupy.get_default_memory_pool().free_all_blocks()
        torch.cuda.empty_cache()
        c_in, h, w = c, h // 2, w // 2
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--size", type=int, nargs=2, default=[218, 178], metavar=("H", "W"))
    ap.add_argument("--tf32", action="store_true", help="also run both in TF32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--layer-batch", type=int, default=256, help="per-layer table batch (0: skip)")
    ap.add_argument("--layer-steps", type=int, default=10)
    ap.add_argument("--out", help="also write the Markdown here")
    args = ap.parse_args(argv)

    from tinyconv.backend import GPUUnavailableError, gpu_status, require_gpu
    try:
        require_gpu()
    except GPUUnavailableError as exc:      # one line, not a traceback
        sys.exit(f"gpu_train.py: error: {exc}")
    have_torch = False
    if not args.no_torch:
        try:
            import torch
            have_torch = torch.cuda.is_available()
        except ImportError:
            pass
    hw = tuple(args.size)
    gflop_step = 3 * GFLOP_FWD_218 * (hw[0] * hw[1]) / (218 * 178)
    out = [f"# tinyconv vs PyTorch, training step, {hw[0]}x{hw[1]}", "", f"- device: {gpu_status()}",
           f"- torch: {torch.__version__ if have_torch else 'not run'}; steps {args.steps} after {args.warmup} warm-up, median",
           ""]
    ceilings = {"fp32": sgemm_tflops(False)}
    if args.tf32:
        ceilings["tf32"] = sgemm_tflops(True)
    out.append("- SGEMM ceiling (8192^3): " + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in ceilings.items()))
    out += ["", "| mode | batch | tinyconv img/s | PyTorch img/s | ratio | tinyconv TFLOP/s (% of SGEMM) "
            "| tinyconv peak GiB | PyTorch peak GiB |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(out), flush=True)
    for mode in ceilings:
        for batch in args.batches:
            res = {"tinyconv": run_one("tinyconv", batch, hw, mode == "tf32", args.steps, args.warmup)}
            if have_torch:
                res["torch"] = run_one("torch", batch, hw, mode == "tf32", args.steps, args.warmup)
            cells = []
            for kind in ("tinyconv", "torch"):
                r = res.get(kind)
                cells.append("-" if r is None else r if isinstance(r, str) else f"{batch / r[0] * 1e3:,.0f}")
            ok = [isinstance(res.get(k), tuple) for k in ("tinyconv", "torch")]
            ratio = f"{res['torch'][0] / res['tinyconv'][0]:.2f}x" if all(ok) else "-"
            if ok[0]:
                tflops = step_tflops(batch, gflop_step, res["tinyconv"][0])
                eff = f"{tflops:.1f} ({100 * tflops / ceilings[mode]:.0f}%)"
                mem_t = f"{res['tinyconv'][1] / 2**30:.1f}"
            else:
                eff = mem_t = "-"
            mem_p = f"{res['torch'][1] / 2**30:.1f} ({res['torch'][2]})" if ok[1] else "-"
            line = f"| {mode} | {batch} | {cells[0]} | {cells[1]} | {ratio} | {eff} | {mem_t} | {mem_p} |"
            out.append(line)
            print(line, flush=True)
    if have_torch and args.layer_batch:
        head = ["", f"## Per layer, fp32, batch {args.layer_batch} (ms, median of {args.layer_steps})", "",
                "| layer | op | tinyconv | cuDNN | ratio |", "|---|---|---|---|---|"]
        print("\n".join(head), flush=True)
        out += head
        try:
            rows = per_layer(args.layer_batch, hw, args.layer_steps)
        except Exception as exc:
            rows = []
            out.append(f"per-layer run failed: {type(exc).__name__}: {exc}")
            print(out[-1])
        for layer, op, a, b in rows:
            line = f"| {layer} | {op} | {a:.2f} | {b:.2f} | {a / b:.1f}x |"
            out.append(line)
            print(line, flush=True)
        if rows:
            worst = max(rows, key=lambda r: r[2] - r[3])
            out.append(f"\nLargest gap: {worst[0]} {worst[1]}, {worst[2] - worst[3]:.2f} ms over cuDNN.")
            print(out[-1])
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
