"""``metanet train KIND ...``: meta-train a hypernetwork or train a metanetwork.

Each KIND registers itself: a module listed in :data:`TRAIN_KINDS` exposes
``register_train(kinds)``, which adds ``kinds.add_parser(NAME, ...)`` and sets
``func`` (parsed args -> exit code), exactly like the top-level subcommands. Adding a
kind is one line here plus its own module:

    metanet train ghn --dataset digits --steps 1000 --out out/ghn   (metanet.commands.predict_init)
"""
from __future__ import annotations

import importlib

# module path -> registers one or more `metanet train KIND` parsers
TRAIN_KINDS = [
    "metanet.commands.predict_init",   # ghn
    "metanet.commands.metanets",       # accuracy, inr
]


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a hypernetwork or metanetwork (metanet train KIND -h)",
                              description="Train a hypernetwork or metanetwork; each KIND has its own options.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for name in TRAIN_KINDS:
        importlib.import_module(name).register_train(kinds)

    def no_kind(args) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=no_kind)
