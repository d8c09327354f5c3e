"""Evaluate finished runs: ``python evaluate.py RUN_DIR [RUN_DIR ...] [--out DIR]``.

RUN_DIR is one run folder or a folder of sibling runs (as ``train.py --schedule all`` writes). Each
run's best checkpoint is evaluated on train, validation and test; the comparison table, per-run
classification reports, predictions CSVs, example grids, plots and report.md go to --out (default:
beside the runs). Everything here is argument parsing; the work lives in tinyconv/report.
"""
import argparse
import sys

from tinyconv.cli import HelpFormatter, integer


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run folder or a folder of runs")
    p.add_argument("--out", default=None, help="output folder (default: the one RUN_DIR, or the folder the "
                                               "RUN_DIRs share)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the models run")
    p.add_argument("--thresholds", choices=("0.5", "validation"), default="0.5",
                   help="0.5 for every attribute, or per attribute chosen on the validation split "
                        "(maximising F1) and applied unchanged to test")
    p.add_argument("--batch-size", type=integer(1), default=None,
                   help="images per evaluation batch (default: the run's eval_batch_size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from tinyconv.checkpoint import CheckpointError
    from tinyconv.data import DataError
    from tinyconv.report import ReportError, evaluate_runs
    try:
        if args.device == "gpu":
            from tinyconv.backend import require_gpu
            require_gpu()
        result = evaluate_runs(args.runs, out=args.out, device=args.device, thresholds=args.thresholds,
                               batch_size=args.batch_size, progress=False if args.no_progress else None)
    except (ReportError, DataError, CheckpointError, OSError, RuntimeError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nevaluate.py: interrupted", file=sys.stderr)
        return 130
    print(result["table"])
    print(f"\nevaluate.py: wrote {result['out'] / 'report.md'} (with comparison.md/.csv, plots and one "
          f"folder of predictions, reports and grids per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
