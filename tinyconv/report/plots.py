"""The study's figures as PNG, drawn with matplotlib's object API on the Agg canvas (no pyplot,
so the caller's backend and global state are left alone).

curves: validation (solid) and training (dashed) accuracy and loss of every run, against epoch,
parameter updates or wall time; schedule: each run's batch size and learning rate per epoch;
noise_scale: per schedule, the measured B_simple of every run against its batch size.
A run's best epoch (lowest validation loss, the checkpoint evaluated) is a filled dot.
"""
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
X_AXES = {"epoch": ("epoch", "epoch"), "updates": ("updates", "parameter updates (optimizer steps)"),
          "wall_time": ("wall_time_s", "wall time (s, training + validation)")}


def _styles(runs):
    """One colour and marker per schedule; the seeds of a schedule share them."""
    schedules = list(dict.fromkeys(r.schedule for r in runs))
    return {s: (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]) for i, s in enumerate(schedules)}


def _legend_label(run, runs):
    """The legend names a schedule once: a schedule with several seeds (up to three) names them; with
    more, its first run stands for all ("(5 seeds)") and the others get no entry (None), so the
    legend stays the size of the number of schedules."""
    same = [r for r in runs if r.schedule == run.schedule]
    if len(same) == 1:
        return run.schedule
    if len(same) <= 3:
        return f"{run.schedule} (seed {run.seed})"
    return f"{run.schedule} ({len(same)} seeds)" if run is same[0] else None


def _width(i, n):
    """Overlapping lines (runs that did the same thing) stay visible: each later run is drawn
    thinner on top of the earlier ones."""
    return 1.3 + 2.7 * (n - 1 - i) / max(n - 1, 1)


def _figure(ncols, title, notes):
    fig = Figure(figsize=(6.2 * ncols, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title + ("\n" + "\n".join(notes) if notes else ""), fontsize=12)
    return fig, fig.subplots(1, ncols)


def plot_curves(runs, x="epoch", path=None, notes=()):
    """Accuracy (mean over attributes) and loss against ``x`` (epoch | updates | wall_time)."""
    key, xlabel = X_AXES[x]
    styles = _styles(runs)
    fig, (ax_acc, ax_loss) = _figure(2, f"Accuracy and loss against {xlabel.split(' (')[0]}", notes)
    for i, r in enumerate(runs):
        color, marker = styles[r.schedule]
        xs = [row[key] for row in r.metrics]
        label = _legend_label(r, runs)
        lw = _width(i, len(runs))
        for ax, what in ((ax_acc, "acc_mean"), (ax_loss, "loss")):
            ax.plot(xs, [row[f"val_{what}"] for row in r.metrics], color=color, marker=marker, ms=4,
                    lw=lw, label=label and f"{label}, validation")
            ax.plot(xs, [row[f"train_{what}"] for row in r.metrics], color=color, ls="--", lw=1.2,
                    alpha=0.8, label=label and f"{label}, training")
            best = r.row_at_best()
            ax.plot([best[key]], [best[f"val_{what}"]], color=color, marker=marker, ms=10, mec="black",
                    ls="none")
    ax_acc.set_ylabel("accuracy (mean over attributes, threshold 0.5)")
    ax_loss.set_ylabel("binary cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if x == "epoch":
            ax.xaxis.get_major_locator().set_params(integer=True)
    ax_loss.legend(fontsize=8, loc="best", title="big dot = best epoch", title_fontsize=8)
    if path is not None:
        fig.savefig(path)
    return fig


def plot_schedule(runs, path=None, notes=()):
    """Batch size (log 2 axis) and learning rate (log axis) of each run, epoch by epoch; beside the batch
    size, dotted, the gradient noise scale B_simple each run measured (the batch size beyond which larger
    batches stop buying proportionally fewer steps; McCandlish et al. 2018)."""
    styles = _styles(runs)
    fig, (ax_bs, ax_lr) = _figure(2, "What each schedule changed", notes)
    n = len(runs)
    for i, r in enumerate(runs):
        color, marker = styles[r.schedule]
        epochs = [row["epoch"] for row in r.metrics]
        lw = _width(i, n)
        label = _legend_label(r, runs)
        ax_bs.plot(epochs, [row["batch_size"] for row in r.metrics], color=color, marker=marker, lw=lw,
                   drawstyle="steps-mid", label=label)
        noise = [(row["epoch"], row["grad_noise_scale"]) for row in r.metrics if row.get("grad_noise_scale")]
        if noise:
            ax_bs.plot(*zip(*noise), color=color, ls=":", lw=1.2, label=label and f"{label}: B_simple (measured)")
        ax_lr.plot(epochs, [row["lr"] for row in r.metrics], color=color, marker=marker, lw=lw,
                   drawstyle="steps-mid", label=label)
    ax_bs.set_yscale("log", base=2)
    ax_bs.set_ylabel("batch size (images per update)")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    for ax, key in ((ax_bs, "batch_size"), (ax_lr, "lr")):
        # Ticks at exactly the values the runs used, written plainly (64, 0.0005), not 2^6 or 5x10^-4.
        values = sorted({row[key] for r in runs for row in r.metrics})
        if key == "batch_size":             # the axis must hold the measured noise scale too
            noise = [row["grad_noise_scale"] for r in runs for row in r.metrics if row.get("grad_noise_scale")]
            lo, hi = min(values + noise), max(values + noise)
        if key == "batch_size" and len(values) > 6:     # many sizes (noise-adaptive): powers of two
            ticks = [2 ** k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 2)]
        else:
            ticks = values if len(values) <= 12 else values[::-(-len(values) // 12)]
        ax.set_yticks(ticks)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        if key == "batch_size":
            ax.set_ylim(lo / 1.3, hi * 1.3)
        else:
            ax.set_ylim(values[0] / 1.3, values[-1] * 1.3)
    for ax in (ax_bs, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path)
    return fig


def plot_noise_scale(runs, path=None, notes=()):
    """One panel per schedule: the measured gradient noise scale B_simple (dotted, one line per seed)
    against the batch size the schedule trained with (solid steps), per epoch, on one log2 axis: where
    the batch is below B_simple, larger batches still buy fewer steps (McCandlish et al. 2018)."""
    styles = _styles(runs)
    schedules = list(styles)
    fig, axes = _figure(len(schedules), "Measured gradient noise scale B_simple (dotted) and batch size (solid)",
                        notes)
    axes = list(axes) if len(schedules) > 1 else [axes]
    values = []
    for ax, schedule in zip(axes, schedules):
        color, marker = styles[schedule]
        mine = [r for r in runs if r.schedule == schedule]
        for i, r in enumerate(mine):
            epochs = [row["epoch"] for row in r.metrics]
            sizes = [row["batch_size"] for row in r.metrics]
            ax.plot(epochs, sizes, color=color, lw=_width(i, len(mine)), drawstyle="steps-mid",
                    label="batch size" if i == 0 else None)
            noise = [(row["epoch"], row["grad_noise_scale"]) for row in r.metrics if row.get("grad_noise_scale")]
            if noise:
                ax.plot(*zip(*noise), color="black", ls=":", marker=marker, ms=3, lw=1,
                        label="B_simple (measured)" if i == 0 else None)
            values += sizes + [v for _, v in noise]
        ax.set_title(f"{schedule} ({len(mine)} run{'s' if len(mine) > 1 else ''})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes:
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        if values:
            ax.set_ylim(min(values) / 1.3, max(values) * 1.3)
    axes[0].set_ylabel("images")
    if path is not None:
        fig.savefig(path)
    return fig


def write_plots(runs, out_dir, notes=()):
    """All figures into out_dir; returns {name: path}."""
    paths = {}
    for x in X_AXES:
        paths[f"curves_{x}"] = out_dir / f"curves_{x}.png"
        plot_curves(runs, x, paths[f"curves_{x}"], notes)
    paths["schedule"] = out_dir / "schedule.png"
    plot_schedule(runs, paths["schedule"], notes)
    if any(row.get("grad_noise_scale") for r in runs for row in r.metrics):
        paths["noise_scale"] = out_dir / "noise_scale.png"
        plot_noise_scale(runs, paths["noise_scale"], notes)
    return paths
