"""Before/after CPU training speed of two tinyconv source trees, on the same machine at the same time.

    git worktree add ../tinyconv-before main            # the code to compare against
    python3 benchmarks/cpu_ab.py --before ../tinyconv-before --after .

Each tree's own ``benchmarks/cpu_train.py`` runs as a worker process (its ``--_worker tinyconv``
protocol: the same model, batch and step as ``cpu_train.py`` measures), started with ``python -S`` and
the interpreter's site-packages on PYTHONPATH, so that each imports the tinyconv of its own tree even
when another one is installed in editable mode. The parent interleaves them, before-after then
after-before (ABBA), ``--repeats`` times ``--steps`` steps each, and prints per size: the median img/s
of each, the ratio of the medians, the median of the per-repetition ratios (the two halves of a pair
run seconds apart, so load that comes and goes cancels), the CPU seconds per step of each worker
(user + system, all its threads: less sensitive to other processes than wall time) and the peak
working memory as ``cpu_train.py`` measures it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig


class Worker:
    def __init__(self, tree, size, batch, warmup):
        self.tree = tree
        env = dict(os.environ, PYTHONPATH=sysconfig.get_paths()["purelib"])
        cmd = [sys.executable, "-S", os.path.join(tree, "benchmarks", "cpu_train.py"), "--_worker", "tinyconv",
               "--sizes", f"{size[0]}x{size[1]}", "--batch", str(batch), "--steps", str(warmup)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker of {self.tree} died (see its stderr above)")
        return json.loads(line)

    def cpu_seconds(self):
        """User + system CPU time of the worker process, all its threads (Linux)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def measure(trees, size, args):
    """{name: (img/s per repetition, CPU s per step per repetition, peak MiB)} for each tree."""
    steps = max(args.min_steps, round(args.steps * 54 * 44 / (size[0] * size[1])))
    workers = {name: Worker(tree, size, args.batch, 2) for name, tree in trees.items()}
    memory = {name: w.ask("memory") for name, w in workers.items()}
    rates, cpu = {name: [] for name in trees}, {name: [] for name in trees}
    names = list(trees)
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            c0 = workers[name].cpu_seconds()
            rates[name].append(steps * args.batch / workers[name].ask(f"steps {steps}"))
            cpu[name].append((workers[name].cpu_seconds() - c0) / steps)
    for w in workers.values():
        w.close()
    return steps, {name: (rates[name], cpu[name], memory[name]) for name in trees}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="the source tree to compare against")
    p.add_argument("--after", default=".", help="the source tree measured against it (default: this one)")
    p.add_argument("--sizes", default="54x44,109x89,218x178", help="HxW list, comma-separated")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="steps per repetition at 54x44, scaled by image area")
    p.add_argument("--min-steps", type=int, default=2, help="at least this many steps per repetition")
    p.add_argument("--repeats", type=int, default=16, help="repetitions per tree, interleaved ABBA")
    args = p.parse_args(argv)
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    print(f"before: {trees['before']}\nafter:  {trees['after']}\nbatch {args.batch}, {args.repeats} "
          f"interleaved repetitions (ABBA), median; load average {os.getloadavg()[0]:.2f}\n", flush=True)
    print("| size | steps x reps | before img/s | after img/s | after/before (medians) | after/before "
          "(median of paired reps) | CPU s/step before / after | peak MiB before / after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.lower().split("x"))
        steps, res = measure(trees, size, args)
        (rb, cb, mb), (ra, ca, ma) = res["before"], res["after"]
        med_b, med_a = statistics.median(rb), statistics.median(ra)
        paired = statistics.median(a / b for a, b in zip(ra, rb))
        print(f"| {text} | {steps} x {args.repeats} | {med_b:.1f} | {med_a:.1f} | {med_a / med_b:.3f} | "
              f"{paired:.3f} | {statistics.median(cb):.3f} / {statistics.median(ca):.3f} | {mb:.0f} / {ma:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
