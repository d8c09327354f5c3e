"""Run the walkthroughs in docs/walkthroughs/: every ```python block of a Markdown file, in order.

    python -m tinyconv.walkthrough docs/walkthroughs/*.md     # run them; figures to ./walkthrough-figures/
    python -m tinyconv.walkthrough --figures DIR FILE.md      # figures to DIR
    python -m tinyconv.walkthrough --update-figures FILE.md   # rewrite the committed docs/walkthroughs/figures/

All blocks of one file share one namespace, as cells of a notebook do, and run in a fresh temporary
working folder (files a walkthrough writes go there), with matplotlib's non-interactive Agg
backend. Figures go to the folder :func:`figures_dir` returns. From the command line that is
``./walkthrough-figures/`` unless ``--update-figures`` is given: the committed figures are what one
machine drew, and a small experiment's last digits depend on the CPU's BLAS, so a reader's rerun
must not rewrite them (and leave ``git status`` dirty) by surprise. The tests pass a temporary folder
and check that every figure the text shows was written.

A block whose info string says ``skip-if-missing=MODULE`` (```` ```python skip-if-missing=coremltools ````)
is skipped, with a note, when that module cannot be imported. Any other failure (an exception, a
failed ``assert``) stops the run with a traceback whose line numbers are those of the Markdown file.
"""
import contextlib
import importlib.util
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FIGURES_ENV = "TINYCONV_WALKTHROUGH_FIGURES"

# A fenced block: ```python [options] ... ``` (the closing fence alone on its line).
_FENCE = re.compile(r"^```python[ \t]*([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)
# Images the text shows from the figures folder: ![alt](figures/name.png)
_FIGURE_REF = re.compile(r"!\[[^\]]*\]\(figures/([^)\s]+)\)")


@dataclass
class Block:
    line: int            # line of the first code line in the Markdown file (1-based)
    options: dict        # from the info string, e.g. {"skip-if-missing": "coremltools"}
    code: str


@dataclass
class Result:
    path: Path
    seconds: float = 0.0
    blocks_run: int = 0
    skipped: list = field(default_factory=list)     # (line, reason)
    figures: list = field(default_factory=list)     # file names written to the figures folder


def figures_dir():
    """Where a walkthrough saves its figures: the runner's folder, or ./figures when run by hand."""
    path = Path(os.environ.get(FIGURES_ENV, "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def python_blocks(text):
    """The ```python blocks of a Markdown text, in order."""
    blocks = []
    for m in _FENCE.finditer(text):
        options = dict(opt.split("=", 1) if "=" in opt else (opt, True) for opt in m.group(1).split())
        unknown = set(options) - {"skip-if-missing"}
        line = text.count("\n", 0, m.start(2)) + 1
        if unknown:
            raise ValueError(f"line {line}: unknown block option(s) {', '.join(sorted(unknown))}")
        blocks.append(Block(line, options, m.group(2)))
    return blocks


def figure_refs(text):
    """File names of the figures a Markdown text shows from figures/."""
    return _FIGURE_REF.findall(text)


@contextlib.contextmanager
def _environment(workdir, figures):
    old_cwd, old_env = os.getcwd(), os.environ.get(FIGURES_ENV)
    os.environ[FIGURES_ENV] = str(figures)
    os.chdir(workdir)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_env is None:
            os.environ.pop(FIGURES_ENV, None)
        else:
            os.environ[FIGURES_ENV] = old_env


def run(path, figures=None, workdir=None):
    """Execute the walkthrough at ``path``; returns a :class:`Result`. Raises whatever a block raises."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path).resolve()
    figures = Path(figures).resolve() if figures is not None else path.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in figures.glob("*.png")}
    result = Result(path)
    namespace = {"__name__": "__walkthrough__", "__file__": str(path)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="walkthrough-") as tmp, \
            _environment(workdir or tmp, figures):
        for block in python_blocks(path.read_text()):
            missing = block.options.get("skip-if-missing")
            if missing and importlib.util.find_spec(missing) is None:
                result.skipped.append((block.line, f"{missing} is not installed"))
                print(f"[{path.name}:{block.line}] skipped: {missing} is not installed")
                continue
            # Pad with newlines so tracebacks give the Markdown file's own line numbers.
            code = compile("\n" * (block.line - 1) + block.code, str(path), "exec")
            exec(code, namespace)
            result.blocks_run += 1
        plt.close("all")
    result.seconds = time.perf_counter() - t0
    result.figures = sorted(p.name for p in figures.glob("*.png")
                            if before.get(p.name) != p.stat().st_mtime_ns)
    return result


def main(argv=None):
    import argparse
    from .cli import HelpFormatter
    ap = argparse.ArgumentParser(prog="python -m tinyconv.walkthrough", description=__doc__,
                                 formatter_class=HelpFormatter)
    ap.add_argument("paths", nargs="+", metavar="FILE.md", help="walkthroughs to run, in order")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--figures", default="walkthrough-figures",
                       help="folder for the figures they draw")
    where.add_argument("--update-figures", action="store_true",
                       help="write the figures beside each Markdown file (figures/), replacing the committed ones")
    args = ap.parse_args(argv)
    for p in args.paths:
        if not Path(p).is_file():
            ap.error(f"{p}: no such walkthrough file")
    for p in args.paths:
        r = run(p, figures=None if args.update_figures else args.figures)
        skipped = f", {len(r.skipped)} skipped" if r.skipped else ""
        where_to = "figures/" if args.update_figures else args.figures
        print(f"{p}: {r.blocks_run} blocks{skipped} in {r.seconds:.1f} s; figures in {where_to}: "
              f"{', '.join(r.figures) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
