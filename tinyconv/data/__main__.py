"""Command line: ``python -m tinyconv.data prepare|synthesize ...`` (a thin wrapper)."""
import argparse
import sys

from .celeba import DEFAULT_ATTRIBUTES
from .errors import DataError
from .prepare import prepare
from .resize import FULL_SIZE
from .synthetic import DEFAULT_COUNT, synthesize


def _size(text):
    try:
        h, w = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 218x178 or 54x44, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return (h, w)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinyconv.data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="decode a CelebA root (any layout) into one HDF5 file")
    pp.add_argument("root", help="CelebA folder: official, torchvision (ROOT/celeba/) or Kaggle layout")
    pp.add_argument("--out", required=True, help="the .h5 file to write")
    pp.add_argument("--image-size", type=_size, default=FULL_SIZE, metavar="HxW",
                    help="stored image size, default 218x178; e.g. 109x89 or 54x44 for CPU training")
    pp.add_argument("--attributes", nargs="+", default=list(DEFAULT_ATTRIBUTES),
                    help="attribute names to keep, in label order (default: Eyeglasses Male Smiling)")
    pp.add_argument("--keep-blurry", action="store_true", help="keep images labelled Blurry")
    pp.add_argument("--workers", type=int, default=None, help="decoding threads (default: all cores)")
    pp.add_argument("--strict-size", action="store_true",
                    help="fail on an image that is not 218x178 instead of resizing it by the policy")
    ps = sub.add_parser("synthesize", help="draw the synthetic stand-in set (NOT CelebA) in CelebA's layout")
    ps.add_argument("out", help="new folder to write")
    ps.add_argument("--count", type=int, default=DEFAULT_COUNT)
    ps.add_argument("--seed", type=int, default=0)
    ps.add_argument("--label-noise", type=float, default=0.03)
    ps.add_argument("--workers", type=int, default=None, help="drawing processes (default: all cores)")
    args = p.parse_args(argv)
    try:
        if args.command == "prepare":
            out = prepare(args.root, args.out, image_size=args.image_size, attributes=args.attributes,
                          drop_blurry=not args.keep_blurry, workers=args.workers,
                          wrong_size="error" if args.strict_size else "resize")
            print(f"wrote {out}")
        else:
            out = synthesize(args.out, count=args.count, seed=args.seed, label_noise=args.label_noise,
                             workers=args.workers)
            print(f"wrote {out} ({args.count} SYNTHETIC faces in the CelebA layout; not CelebA)")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
