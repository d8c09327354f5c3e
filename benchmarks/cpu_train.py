"""CPU training speed: tinyconv against PyTorch (if installed) on the default model.

One training step = forward + BCE-with-logits loss + backward + Adam step, batch of random float32
images in [0, 1) and random 0/1 targets, fp32. For each image size each framework runs in its own
worker subprocess (so their thread pools never compete: an idle worker blocks on its pipe); the
parent alternates them (tinyconv, torch, tinyconv, torch, ...), ``--repeats`` times ``--steps``
steps each, after warm-up steps; the table gives the median images/s over the repetitions.

Peak memory, in the same worker: kernels are first loaded by one step of a tiny model (numba's
cache, oneDNN), then model and batch are built, the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``) and the warm-up steps run; the column gives VmHWM minus the RSS before
them: the working memory training adds on top of the model and the batch (activations, caches,
gradients, optimizer state, temporaries, allocator pools).

    python3 benchmarks/cpu_train.py                       # the quick default (a few minutes)
    python3 benchmarks/cpu_train.py --sizes 54x44 --steps 20 --repeats 5 --layers 54x44
    python3 benchmarks/cpu_train.py --no-torch --layers none
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tinyconv  # noqa: E402
from tinyconv import Adam, BCEWithLogits, seed_cnn  # noqa: E402

BASE_AREA = 54 * 44
THREADS = 2


def parse_size(text):
    h, w = text.lower().split("x")
    return int(h), int(w)


def steps_for(size, steps):
    """``steps`` at 54x44, fewer for larger images (about the same wall time per repetition)."""
    h, w = size
    return max(1, round(steps * BASE_AREA / (h * w)))


def make_batch(size, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 3) + size, dtype=np.float32)
    t = (rng.random((batch, 3)) > 0.5).astype(np.float32)
    return x, t


# ----------------------------------------------------------------------------------------- tinyconv
class TinyconvRunner:
    name = "tinyconv"

    def __init__(self, size, batch):
        self.model = seed_cnn(input_shape=(3,) + size)
        # Images need no gradient (PyTorch skips it too, as the input does not require grad).
        first = self.model.layers[0]
        if hasattr(first, "needs_input_grad"):
            first.needs_input_grad = False
        self.loss = BCEWithLogits()
        self.opt = Adam(self.model.parameters(), lr=1e-3, eps=1e-7)
        self.x, self.t = make_batch(size, batch)

    def step(self):
        self.loss.forward(self.model.forward(self.x, train=True), self.t)
        self.model.backward(self.loss.backward())
        self.opt.step()

    def layer_times(self, repeats):
        """{step name: (forward s, backward s)}, medians over ``repeats`` steps. The steps are those
        of the model's plan (tinyconv/fusion.py), so a fused BatchNorm2D -> ReLU -> MaxPool2D is one
        row, "batchnorm2d+relu+maxpool2d"."""
        self.model.clear_cache()             # the last step's saved states: not kept alive meanwhile
        steps = self.model.plan()
        fwd = {s.name: [] for s in steps}
        bwd = {s.name: [] for s in steps}
        for _ in range(repeats):
            h = self.x
            for s in steps:
                t0 = time.perf_counter()
                h = s.forward(h, True)
                fwd[s.name].append(time.perf_counter() - t0)
            self.loss.forward(h, self.t)
            dy = self.loss.backward()
            for s in reversed(steps):
                t0 = time.perf_counter()
                dy = s.backward(dy)
                bwd[s.name].append(time.perf_counter() - t0)
            self.opt.step()
        return [(s.name, statistics.median(fwd[s.name]), statistics.median(bwd[s.name])) for s in steps]


# ------------------------------------------------------------------------------------------ PyTorch
def import_torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    return torch


class TorchRunner:
    name = "torch"

    def __init__(self, size, batch, torch):
        nn = torch.nn
        self.torch = torch
        torch.manual_seed(0)
        mods, c_in = [], 3
        for c_out in (32, 64, 128, 128, 192):
            mods += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(192, 3)]
        self.model = nn.Sequential(*mods).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, eps=1e-7)
        x, t = make_batch(size, batch)
        self.x, self.t = torch.from_numpy(x), torch.from_numpy(t)
        self.loss = nn.BCEWithLogitsLoss()

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self.x), self.t)
        loss.backward()
        self.opt.step()

    def layer_times(self, repeats):
        """Per module: forward on a detached input that requires grad, backward module by module."""
        torch = self.torch
        mods = list(self.model)
        names = [f"{type(m).__name__.lower()}_{i}" for i, m in enumerate(mods)]
        fwd = {n: [] for n in names}
        bwd = {n: [] for n in names}
        for _ in range(repeats):
            h, pairs = self.x, []
            for n, m in zip(names, mods):
                inp = h.detach().requires_grad_(n != names[0])
                t0 = time.perf_counter()
                out = m(inp)
                fwd[n].append(time.perf_counter() - t0)
                pairs.append((n, inp, out))
                h = out
            dy = torch.autograd.grad(self.loss(h, self.t), h)[0]
            for n, inp, out in reversed(pairs):
                t0 = time.perf_counter()
                out.backward(dy)
                bwd[n].append(time.perf_counter() - t0)
                dy = inp.grad
        return [(n, statistics.median(fwd[n]), statistics.median(bwd[n])) for n in names]


# ------------------------------------------------------------------------------------- measurement
def time_steps(runner, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    return time.perf_counter() - t0


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(framework, size, batch, warmup):
    """Runs in a subprocess: build the runner, then answer commands read from stdin, one per line:
    ``memory`` (peak RSS growth over the warm-up steps, MiB), ``steps K`` (seconds for K steps),
    ``layers R`` (per-layer medians), ``quit``. Each answer is one JSON line on stdout."""
    make = (lambda sz, b: TorchRunner(sz, b, import_torch())) if framework == "torch" else TinyconvRunner
    time_steps(make((32, 32), 2), 1)               # load kernels (JIT cache, oneDNN) on a tiny model
    runner = make(size, batch)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                           # reset VmHWM to the current RSS
    except OSError:
        pass
    before = rss_kib("VmRSS")
    time_steps(runner, max(warmup, 2))             # warm-up steps, measured for memory
    memory = (rss_kib("VmHWM") - before) / 1024
    out = sys.stdout
    sys.stdout = sys.stderr                        # stray prints must not break the protocol
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "memory":
            answer = memory
        elif cmd == "steps":
            answer = time_steps(runner, int(arg[0]))
        elif cmd == "layers":
            answer = runner.layer_times(int(arg[0]))
        else:
            break
        out.write(json.dumps(answer) + "\n")
        out.flush()


class Worker:
    def __init__(self, framework, size, batch, warmup):
        self.name = framework
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", framework,
               "--sizes", f"{size[0]}x{size[1]}", "--batch", str(batch), "--steps", str(warmup)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died (see its stderr above)")
        return json.loads(line)

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def print_layer_table(size, batch, tiny, torch_rows):
    print(f"\n### Per-layer times at {size[0]}x{size[1]}, batch {batch} (ms, median)\n")
    _print_times("tinyconv layer", tiny)
    if torch_rows:
        print()
        _print_times("torch module", torch_rows)


def _print_times(heading, rows):
    """One Markdown table of (name, forward s, backward s) rows, with a sum row."""
    print(f"| {heading} | forward | backward | total |")
    print("|---|---:|---:|---:|")
    total_f = total_b = 0.0
    for name, f, b in rows:
        total_f, total_b = total_f + f, total_b + b
        print(f"| {name} | {f * 1e3:.1f} | {b * 1e3:.1f} | {(f + b) * 1e3:.1f} |")
    print(f"| **sum** | {total_f * 1e3:.1f} | {total_b * 1e3:.1f} | {(total_f + total_b) * 1e3:.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="54x44,109x89,218x178", help="HxW list, comma-separated")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10,
                   help="steps per repetition at 54x44; scaled down by image area for larger sizes")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions per framework")
    p.add_argument("--no-torch", action="store_true", help="tinyconv only")
    p.add_argument("--layers", default="54x44,109x89",
                   help="sizes for the per-layer tables (comma-separated), or 'none'")
    p.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.worker:
        worker(args.worker, sizes[0], args.batch, args.steps)
        return
    layer_sizes = [] if args.layers == "none" else [parse_size(s) for s in args.layers.split(",")]
    torch = None if args.no_torch else import_torch()

    try:
        from threadpoolctl import threadpool_info
        blas = ", ".join(f"{i['internal_api']} {i['version']} ({i.get('architecture')}, {i['num_threads']} threads)"
                         for i in threadpool_info() if i["user_api"] == "blas")
    except ImportError:
        blas = "?"
    import numba
    from tinyconv.kernels import threads
    print(f"tinyconv {tinyconv.__version__} ({threads.get_num_threads()} kernel threads), NumPy {np.__version__} "
          f"[{blas}], numba {numba.__version__}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ", torch: not used"))
    print(f"{os.cpu_count()} CPUs; batch {args.batch}, fp32, forward + BCE + backward + Adam; "
          f"{args.repeats} interleaved repetitions, median\n")

    rows = []
    for size in sizes:
        steps = steps_for(size, args.steps)
        names = ["tinyconv"] + (["torch"] if torch else [])
        workers = [Worker(n, size, args.batch, 2 if steps > 1 else 1) for n in names]
        mem = {w.name: w.ask("memory") for w in workers}
        rates = {w.name: [] for w in workers}
        for _ in range(args.repeats):
            for w in workers:
                rates[w.name].append(steps * args.batch / w.ask(f"steps {steps}"))
        med = {k: statistics.median(v) for k, v in rates.items()}
        rows.append((size, steps, med, mem))
        print(f"  {size[0]}x{size[1]}: " + ", ".join(f"{k} {v:.1f} img/s" for k, v in med.items()), flush=True)
        if size in layer_sizes:
            reps = max(3, args.repeats)
            tables = [w.ask(f"layers {reps}") for w in workers]
            print_layer_table(size, args.batch, tables[0], tables[1] if torch else None)
        for w in workers:
            w.close()

    print("\n| size | steps x reps | tinyconv img/s | torch img/s | ratio | tinyconv peak MiB | torch peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for size, steps, med, mem in rows:
        tc, th = med["tinyconv"], med.get("torch")
        fmt = lambda v, spec: "-" if v is None or v != v else format(v, spec)
        print(f"| {size[0]}x{size[1]} | {steps} x {args.repeats} | {tc:.1f} | {fmt(th, '.1f')} | "
              f"{fmt(tc / th if th else None, '.2f')} | {fmt(mem.get('tinyconv'), '.0f')} | "
              f"{fmt(mem.get('torch'), '.0f')} |")


if __name__ == "__main__":
    main()
