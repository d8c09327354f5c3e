"""Predict attributes: ``python predict.py IMAGE [IMAGE ...] [--model PATH] [--json]``.

--model takes a checkpoint .h5, a run folder, an exported folder or a model.onnx; the default is
the newest run's best checkpoint. Prints one row per image (``--json``: one JSON document). A bad
image gets a one-line error naming it, the others are still predicted, and the exit status is 1.
A model that cannot be loaded or run is a one-line error naming the file, exit status 1; a
malformed command line exits with status 2.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # before onnxruntime is imported anywhere


def table(rows, attributes):
    """[(image name, [p, ...])] -> aligned text table."""
    name_w = max([len("image")] + [len(r[0]) for r in rows])
    cols = [max(len(a), 6) for a in attributes]
    lines = ["  ".join([f"{'image':<{name_w}}"] + [f"{a:>{w}}" for a, w in zip(attributes, cols)])]
    for name, probs in rows:
        lines.append("  ".join([f"{name:<{name_w}}"] + [f"{p:>{w}.4f}" for p, w in zip(probs, cols)]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", metavar="IMAGE",
                    help="image files (any size; PNG, JPEG and whatever else Pillow reads); at least one")
    ap.add_argument("--model", help="checkpoint .h5, run folder, experiment folder (its run with the lowest "
                                    "validation loss), exported folder or model.onnx (default: the newest run's "
                                    "best checkpoint)")
    ap.add_argument("--runs-dir", default="runs", help="where to look for the newest run (default: runs)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table (default: a table)")
    args = ap.parse_args(argv)

    from tinyconv.predict import CheckpointError, ImageInputError, ModelSourceError, load
    try:
        model = load(args.model, runs_dir=args.runs_dir, announce=lambda line: print(line, file=sys.stderr))
    except (ModelSourceError, CheckpointError, OSError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 1
    rows, errors = [], []
    for path in args.images:
        try:
            rows.append((path, [float(p) for p in model.predict([path])[0]]))
        except ImageInputError as exc:
            errors.append(str(exc))
            print(f"predict: error: {exc}", file=sys.stderr)
        except ModelSourceError as exc:  # the model failed to run or gave no probabilities: stop
            print(f"predict: error: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"model": model.source, "kind": model.kind, "attributes": model.attributes,
                          "synthetic": model.synthetic,
                          "predictions": [{"image": n, "probabilities": dict(zip(model.attributes, p))}
                                          for n, p in rows],
                          "errors": errors}, indent=2))
    else:
        print(f"model: {model.source} ({model.kind})")
        if model.synthetic:
            print("note: trained on tinyconv's SYNTHETIC faces, not CelebA")
        if rows:
            print(table(rows, model.attributes))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
