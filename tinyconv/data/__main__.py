"""Command line: ``python -m tinyconv.data prepare|synthesize ...`` (a thin wrapper).

Every option is checked when the command line is parsed (range, finiteness, what a path may be).
Exit status: 0 done, 1 failed (bad data, disk full: one line naming the file), 2 a usage error
(a bad option: argparse's usage line and one error line naming the option or the file),
130 interrupted.
"""
import argparse
import os
import sys
from pathlib import Path

from .celeba import DEFAULT_ATTRIBUTES
from .errors import DataError, UsageError
from .prepare import MAX_IMAGE_SIDE, MAX_WORKERS, prepare
from .resize import FULL_SIZE
from .synthetic import DEFAULT_COUNT, MAX_COUNT, synthesize

from ..cli import image_size, integer, number

PROG = "python -m tinyconv.data"


def _existing_folder(text):
    p = Path(text)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {'not a folder' if p.exists() else 'no such folder'}")
    return p


def _output_file(text):
    p = Path(text)
    if not text or p.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: is a folder; give the path of the .h5 file to write")
    return p


def _new_folder(text):
    p = Path(text)
    if not text or (p.exists() and (not p.is_dir() or any(p.iterdir()))):
        raise argparse.ArgumentTypeError(f"{text!r}: already exists and is "
                                         f"{'not empty' if p.is_dir() else 'not a folder'}; choose a new folder")
    return p


def _attribute(text):
    if not text or text != text.strip() or "," in text:
        raise argparse.ArgumentTypeError(f"expected an attribute name such as Smiling, got {text!r}")
    return text


def build_parser():
    """The parser and its two subparsers, as {"": top, "prepare": ..., "synthesize": ...}."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="{prepare,synthesize}")
    pp = sub.add_parser("prepare", help="decode a CelebA root (any layout) into one HDF5 file",
                        description="Decode a CelebA root (any layout) into one HDF5 file.")
    pp.add_argument("root", type=_existing_folder,
                    help="CelebA folder: official, torchvision (ROOT/celeba/) or Kaggle layout")
    pp.add_argument("--out", required=True, type=_output_file, metavar="FILE.h5",
                    help="the .h5 file to write; an existing file is replaced only if it is a tinyconv "
                         "prepared file (required)")
    pp.add_argument("--image-size", type=image_size(1, MAX_IMAGE_SIDE), default=FULL_SIZE, metavar="HxW",
                    help=f"stored image size, each side 1 to {MAX_IMAGE_SIDE}; e.g. 109x89 or 54x44 for CPU "
                         f"training (default: {FULL_SIZE[0]}x{FULL_SIZE[1]})")
    pp.add_argument("--attributes", nargs="+", type=_attribute, default=list(DEFAULT_ATTRIBUTES),
                    metavar="NAME", help="attribute names to keep, in label order "
                                         f"(default: {' '.join(DEFAULT_ATTRIBUTES)})")
    pp.add_argument("--keep-blurry", action="store_true",
                    help="keep images labelled Blurry (default: off, they are dropped)")
    pp.add_argument("--workers", type=integer(1, MAX_WORKERS), default=None, metavar="N",
                    help=f"decoding threads, 1 to {MAX_WORKERS} (default: all cores)")
    pp.add_argument("--strict-size", action="store_true",
                    help="fail on an image that is not 218x178 instead of resizing it by the policy "
                         "(default: off)")
    ps = sub.add_parser("synthesize", help="draw the synthetic stand-in set (NOT CelebA) in CelebA's layout",
                        description="Draw the synthetic stand-in set (NOT CelebA) in CelebA's file layout.")
    ps.add_argument("out", type=_new_folder, help="new (or empty) folder to write")
    ps.add_argument("--count", type=integer(1, MAX_COUNT), default=DEFAULT_COUNT, metavar="N",
                    help=f"number of images, 1 to {MAX_COUNT} (default: {DEFAULT_COUNT})")
    ps.add_argument("--seed", type=integer(0), default=0, metavar="S",
                    help="non-negative seed; image i is drawn from default_rng([S, i]) (default: 0)")
    ps.add_argument("--label-noise", type=number(0, 0.5), default=0.03, metavar="P",
                    help="label flip rate, 0 to 0.5; each label flips with probability "
                         "P * 2 * min(rate, 1 - rate) (default: 0.03)")
    ps.add_argument("--workers", type=integer(1, MAX_WORKERS), default=None, metavar="N",
                    help=f"drawing processes, 1 to {MAX_WORKERS} (default: all cores)")
    return {"": p, "prepare": pp, "synthesize": ps}


def main(argv=None):
    parsers = build_parser()
    args = parsers[""].parse_args(argv)
    sub = parsers[args.command]
    if args.command == "prepare" and len(set(args.attributes)) != len(args.attributes):
        sub.error(f"argument --attributes: a name is given twice: {' '.join(args.attributes)}")
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
    except UsageError as exc:
        sub.print_usage(sys.stderr)
        print(f"{sub.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (DataError, OSError) as exc:
        print(f"{sub.prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        if getattr(exc, "hdf5_unclosed", False):
            # HDF5 could not close the failed file and would crash at interpreter exit: leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    except KeyboardInterrupt:
        print(f"{sub.prog}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
