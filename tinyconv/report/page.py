"""comparison.md (the table alone) and report.md (table, figures, per-run reports and example
grids on one page, with links relative to the page so the folder can be moved or published)."""
import os
import time

from .. import __version__
from .grids import KINDS, TITLES
from .tables import report_markdown, shares_markdown

BASELINE_NOTE = ("The last column answers every image with the attribute's more frequent value on the "
                 "training split. An accuracy means little until it is read against it: on CelebA, "
                 "always answering \"no glasses\" is already 93.5% right for Eyeglasses, so for a rare "
                 "attribute read precision, recall and F1 (the classification reports below).")


def _rel(path, out):
    return os.path.relpath(path, out).replace(os.sep, "/")


def _data_line(ds):
    h, w = ds.image_size
    sizes = ", ".join(f"{s} {ds.split_size(s):,}" for s in ("train", "validation", "test"))
    kind = "built-in synthetic faces" if ds.synthetic else "CelebA"
    return f"{kind} `{ds.path}`, {h}x{w} images, attributes {', '.join(ds.attributes)}; {sizes} images"


def _thresholds_line(ctx):
    if ctx["thresholds"] == "validation":
        return ("Thresholds: chosen per attribute on the **validation** split to maximise F1, then applied "
                "unchanged to train and test (test labels are never used to choose them); each run's "
                "values are in the table.")
    return "Thresholds: 0.5 for every attribute (probability > 0.5 means yes)."


def _header(ctx, title):
    lines = [f"# {title}", ""]
    if ctx["note"]:
        lines += [f"> **{ctx['note']}**", ""]
    datasets = {str(ds.path): ds for ds in ctx["datasets"].values()}
    lines += ["Data: " + "; ".join(_data_line(ds) for ds in datasets.values()) + ".", "",
              "Each run is evaluated at its best checkpoint (the epoch with the lowest validation loss). "
              + _thresholds_line(ctx), ""]
    return lines


def _seeds_text(ctx):
    """What the table's cells are over seeds, the repeated runs, and the paired differences."""
    lines = []
    if any(len({r.seed for r in ctx["runs"] if r.schedule == s}) > 1 for s in {r.schedule for r in ctx["runs"]}):
        lines += ["Where a schedule has several seeds, cells are mean ± standard deviation (n - 1) over its "
                  "seeds, one run per seed.", ""]
    if ctx.get("repeats"):
        lines += [ctx["repeats"], ""]
    if ctx.get("paired"):
        lines += ["### Paired differences over seeds", "",
                  "Each seed's runs share their initial weights and data order, so schedules are compared "
                  "seed by seed: the difference A − B per seed, its mean and a 95% interval from Student's t "
                  "on those differences (n − 1 degrees of freedom). An interval containing 0 means these "
                  "seeds give no evidence, at 95%, of a difference.", "", ctx["paired"], ""]
    lines += [WALL_TIME_NOTE, ""]
    return lines


WALL_TIME_NOTE = ("Wall time counts each run's training steps and its validation passes, summed over "
                  "interrupted sessions; it leaves out drawing or preparing the data, writing checkpoints and "
                  "this evaluation. `train.py` compiles the CPU kernels before the first run starts (a warm-up "
                  "step, timed and logged apart), so no schedule pays numba's compile time.")


def comparison_text(ctx):
    lines = _header(ctx, "Schedule comparison")
    lines += [ctx["table"], ""]
    lines += _seeds_text(ctx)
    lines += [BASELINE_NOTE, ""]
    for r in ctx["runs"]:
        changes = [m["change"] for m in r.metrics if m.get("change")]
        if changes:
            lines += [f"{r.label} changes:"] + [f"- {c}" for c in changes] + [""]
    return "\n".join(lines)


def report_text(ctx):
    out = ctx["out"]
    lines = _header(ctx, "Evaluation report")
    lines += [f"Written {time.strftime('%Y-%m-%d %H:%M')} by tinyconv {__version__} (`evaluate.py`, device "
              f"{ctx['device']}). Runs: " + ", ".join(f"`{r.label}` ({r.dir})" for r in ctx["runs"]) + ".", ""]
    lines += ["## The comparison", "", ctx["table"], ""] + _seeds_text(ctx) + [BASELINE_NOTE, ""]
    for r in ctx["runs"]:
        changes = [m["change"] for m in r.metrics if m.get("change")]
        if changes:
            lines += [f"{r.label} changes:"] + [f"- {c}" for c in changes] + [""]
    fig = ctx["figures"]
    lines += ["## Training curves", "",
              "Validation (solid) and training (dashed) accuracy and loss, epoch by epoch; the big dot is "
              "the best epoch, the checkpoint evaluated here. Training numbers are running averages over "
              "each epoch with dropout on, so they can sit below the validation numbers.", "",
              f"![accuracy and loss against epoch]({_rel(fig['curves_epoch'], out)})", "",
              "The same against parameter updates and against wall time: a schedule that grows the batch "
              "makes fewer updates per epoch (Smith et al., \"Don't decay the learning rate, increase the "
              "batch size\").", "",
              f"![accuracy and loss against updates]({_rel(fig['curves_updates'], out)})", "",
              f"![accuracy and loss against wall time]({_rel(fig['curves_wall_time'], out)})", "",
              f"![batch size and learning rate per epoch]({_rel(fig['schedule'], out)})", ""]
    if "noise_scale" in fig:
        lines += ["The measured gradient noise scale B_simple (McCandlish et al. 2018; docs/noise-scale.md) "
                  "against the batch size each schedule trained with: below B_simple a larger batch still buys "
                  "fewer steps.", "", f"![B_simple and batch size per epoch]({_rel(fig['noise_scale'], out)})", ""]
    K = len(ctx["attributes"])
    for res in ctx["results"]:
        r, p = res["run"], res["paths"]
        lines += [f"## {r.label}", "",
                  f"Schedule {r.schedule}, seed {r.seed}, folder `{r.dir}`, best epoch {r.best_epoch} of "
                  f"{len(r.metrics)}.", "",
                  "Classification report on the test split (scikit-learn's multi-label definitions; a ratio "
                  "with nothing to divide by, such as precision with no positive prediction, counts as 0):", "",
                  report_markdown(res["report"], ctx["attributes"]), "",
                  "How many attributes each test image gets right:", "", shares_markdown(res["shares"], K), ""]
        for kind in KINDS:
            path, count = res["grids"][kind]
            lines += [f"Test images with {TITLES[kind]} ({count}):", "",
                      f"![{r.label}: {TITLES[kind]}]({_rel(path, out)})", ""]
        files = [p[f"predictions_{s}"] for s in ("train", "validation", "test")] + [p["report_csv"], p["evaluation_json"]]
        lines += ["Files: " + ", ".join(f"[{f.name}]({_rel(f, out)})" for f in files) + ".", ""]
    lines += ["## Files", "",
              "- [comparison.md](comparison.md), [comparison.csv](comparison.csv): the table (the CSV holds "
              "every run as its own column, raw fractions, plus mean and std per schedule)",
              "- `predictions_<split>.csv` per run: `filename`, then `<attribute>_true` (0/1) and "
              "`<attribute>_prob` for each attribute"
              + (" (these CSVs hold synthetic images' names: NOT CelebA)" if ctx["note"] else ""), ""]
    return "\n".join(lines)


def write_page(ctx):
    """comparison.md and report.md in ctx["out"]."""
    (ctx["out"] / "comparison.md").write_text(comparison_text(ctx))
    (ctx["out"] / "report.md").write_text(report_text(ctx))
