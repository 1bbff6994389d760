"""``metanet quickstart``: every part of metanet once, on built-in data (see
:mod:`tasks.quickstart`).

    metanet quickstart                          # all six steps, a few minutes on a CPU
    metanet quickstart --steps weights zoo metanet
    metanet quickstart --fast                   # smoke run (seconds)
"""
from __future__ import annotations

import argparse
import sys

from .convert import EXIT_FAIL, EXIT_OK, EXIT_USAGE


def register(subparsers) -> None:
    from tasks.quickstart import STEPS

    p = subparsers.add_parser(
        "quickstart",
        help="run every part once on built-in data: weight space, zoo, metanetwork, augmentation, "
             "hypernetwork, pruning (a few minutes)",
        description=(
            "Trace a small ResNet and check its symmetries; train a zoo of small CNNs on 8x8 digits; "
            "predict their accuracy from their weights with a GMN (against StatNN); check exact "
            "augmentations and alignment on zoo networks; meta-train a GHN and initialise "
            "architectures it never saw; prune networks via a learned metanetwork. Writes "
            "DIR/report.md, DIR/summary.json and the plots; every finished step is kept on disk."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="out/quickstart", metavar="DIR", help="output folder (default out/quickstart)")
    p.add_argument("--steps", nargs="+", default=list(STEPS), metavar="STEP",
                   help=f"steps to run, in this order: {' '.join(STEPS)} (default all; metanet and augment "
                        "read the zoo of an earlier run in DIR when zoo is left out)")
    p.add_argument("--fast", action="store_true", help="smoke run: tiny sizes, numbers mean nothing")
    p.add_argument("--zoo-networks", type=int, default=100, metavar="N", help="CNNs in the zoo (default 100)")
    p.add_argument("--ghn-steps", type=int, default=300, metavar="N",
                   help="GHN meta-training steps (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tasks.quickstart import QuickstartConfig
    from tasks.quickstart import run as quickstart

    try:
        cfg = QuickstartConfig(out=args.out, steps=tuple(args.steps), fast=args.fast,
                               zoo_networks=args.zoo_networks, ghn_steps=args.ghn_steps, seed=args.seed,
                               progress=not args.quiet)
    except ValueError as err:
        print(f"metanet quickstart: {err}", file=sys.stderr)
        return EXIT_USAGE
    summary = quickstart(cfg)
    print()
    from tasks.quickstart import report
    print(report(summary))
    if summary["failed"]:
        print(f"metanet quickstart: {len(summary['failed'])} step(s) did not finish: "
              + ", ".join(summary["failed"]), file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK
