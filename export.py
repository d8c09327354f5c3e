"""Export a trained model: ``python export.py [RUN_DIR or CHECKPOINT] [--out DIR] [--float16]``.

Writes model.onnx (always), model.mlpackage (when coremltools can write packages here) and
export.json into DIR (default: <run folder>/export). The work is tinyconv.export.exporter.export.
"""
import argparse
import os
import sys

from tinyconv.cli import HelpFormatter

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported anywhere


def parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("source", nargs="?", help="run folder, experiment folder (its run with the lowest validation "
                                              "loss) or checkpoint .h5 (default: the newest run or experiment)")
    ap.add_argument("--out", help="output folder (default: <run folder>/export)")
    ap.add_argument("--float16", action="store_true", help="float16 Core ML program (ONNX stays float32)")
    ap.add_argument("--runs-dir", default="runs", help="where to look for the newest run")
    ap.add_argument("--no-coreml", action="store_true", help="write only the ONNX model")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)

    from tinyconv.checkpoint import CheckpointError
    from tinyconv.export.exporter import export
    from tinyconv.export.source import ModelSourceError
    try:
        report = export(args.source, args.out, float16=args.float16, runs_dir=args.runs_dir,
                        coreml=not args.no_coreml)
    except (ModelSourceError, CheckpointError, RuntimeError, OSError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 1
    print(f"export: done: {report['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
