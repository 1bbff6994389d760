"""The ``metanet`` command.

Each subcommand lives in its own module and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed args and
returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# module path -> registers one or more subcommands
SUBCOMMAND_MODULES = [
    "metanet.commands.convert",
    "zoo.cli",
    "metanet.commands.train",
    "metanet.commands.predict_init",
    "metanet.commands.metanets",
    "metanet.commands.prune",
    "metanet.commands.align",
    "metanet.commands.quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metanet",
        description=("Learning in weight space: networks that read, write or predict the "
                     "parameters of other networks. Each command below says what it does."),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:   # Ctrl-C: a line, not a traceback
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
