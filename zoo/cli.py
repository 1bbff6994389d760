"""``metanet zoo ...``: build, pack, merge, verify, inspect, import, push and pull zoos.

``register(subparsers)`` adds the ``zoo`` command to the ``metanet`` CLI;
``python -m zoo ...`` runs the same subcommands without it.

Examples::

    metanet zoo build --recipe digits_cnn --n 1000 --out zoos/digits --workers 2
    metanet zoo build --recipe digits_cnn --n 1000 --out zoos/digits --executor sequential
    metanet zoo build --recipe mnist1d_cnn --n 200 --out zoos/m1d --epochs 0,1,5,20
    torchrun --nproc_per_node 4 -m zoo build --recipe mixed --networks 5000 --out /shared/mixed
    metanet zoo verify zoos/digits
    metanet zoo import --format smallcnnzoo path/to/mnist --out zoos/smallcnn-mnist
    metanet zoo push zoos/digits user/digits-zoo ; metanet zoo pull user/digits-zoo --out dir
"""
from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Build, check and share zoos: many trained checkpoints with their metrics.

A zoo is a folder of safetensors shards plus a manifest (one JSON record per
checkpoint: architecture, hyperparameters, step, metrics). A build trains the
networks a recipe samples and saves each one as it finishes: after an interruption,
rerun the same command to resume. In Python, read a zoo with zoo.Zoo.open(folder)."""

EXAMPLES = """\
examples:
  metanet zoo recipes                                   what can be built
  metanet zoo build --recipe digits_cnn --n 1000 --out zoos/digits --workers 2
  metanet zoo build --recipe mnist1d_cnn --n 200 --out zoos/m1d --epochs 0,1,5,20
  metanet zoo info zoos/digits                          networks, steps, metrics
  metanet zoo verify zoos/digits                        every record, tensor and checksum
  metanet zoo import --format smallcnnzoo PATH --out zoos/smallcnn
  metanet zoo push zoos/digits user/digits-zoo          share on the Hugging Face Hub
  metanet zoo pull user/digits-zoo --out zoos/digits
  torchrun --nproc_per_node 4 -m zoo build --recipe mixed --networks 5000 --out zoos/mixed"""


def _parse_size(s: str) -> int:
    s = s.strip().upper()
    for suffix, mult in (("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10), ("G", 2 ** 30),
                         ("M", 2 ** 20), ("K", 2 ** 10), ("B", 1)):
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * mult)
    return int(s)


def _parse_option(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def _cmd_build(args) -> int:
    from .build import build, make_executor
    from .recipes import get_recipe

    if args.n < 1:
        raise ValueError(f"--n {args.n}: the number of networks must be at least 1")
    options = {}
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as e:
            raise ValueError(f"--options {args.options!r} is not JSON ({e}); "
                             f"write e.g. --options '{{\"views\": 1}}'") from None
        if not isinstance(options, dict):
            raise ValueError(f"--options must be a JSON object such as '{{\"views\": 1}}', got {args.options!r}")
    options.update(dict(args.option or []))
    if args.epochs:
        try:
            options["steps"] = [int(s) for s in args.epochs.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--epochs {args.epochs!r}: expected comma-separated integers, e.g. 0,1,5,10") from None
    if args.data_root:
        options["data_root"] = args.data_root
    get_recipe(args.recipe)  # unknown names fail before anything is written
    _log_to_stderr(args.quiet)
    executor = make_executor(args.executor, args.workers, device=args.device,
                             max_batch=args.max_batch)
    try:
        summary = build(args.recipe, args.n, args.out, seed=args.seed, executor=executor,
                        workers=args.workers, options=options, rank=args.rank,
                        world_size=args.world_size, do_pack=False if args.no_pack else None,
                        shard_bytes=_parse_size(args.shard_size), progress=not args.quiet)
    except KeyboardInterrupt:
        return _interrupted(args.out, args.n)
    r = summary
    print(f"{r['recipe']}: rank {r['rank']}/{r['world_size']}: {r['trained']} trained, "
          f"{r['skipped']} already done, {r['diverged']} diverged, {r['train_seconds']:.1f} s"
          + (f"; packed {r['packed']['packed_jobs']} networks into {r['packed']['shards_written']} new shard(s)"
             if r["packed"] else "; rank 0 packs" if r["distributed"] and r["rank"] != 0
             else "; not packed (run `metanet zoo pack` when all ranks are done)"
             if r["world_size"] > 1 else ""))
    return 0


EXIT_INTERRUPTED = 130   # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


def _interrupted(out, n: int) -> int:
    """One line instead of a traceback: what is saved, and how to go on."""
    from .store import ZooDir

    try:
        zd = ZooDir(out)
        saved = len(zd.done_job_ids()) if zd.root.exists() else 0
    except Exception:   # a half-initialised folder: say what can be said
        saved = "?"
    print(f"interrupted: networks saved in {out}: {saved} of {n}; rerun the same command to resume",
          file=sys.stderr)
    return EXIT_INTERRUPTED


def _log_to_stderr(quiet: bool) -> None:
    """Show the builder's log lines (which executor trains what) on stderr; warnings
    (jobs that fall back to sequential training) even with --quiet."""
    import logging

    class _Stderr(logging.StreamHandler):
        stream = property(lambda self: sys.stderr, lambda self, v: None)  # current stderr

    logger = logging.getLogger("zoo.build")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_zoo_cli", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._zoo_cli = True
        logger.addHandler(handler)
        logger.propagate = False


def _cmd_pack(args) -> int:
    from .store import pack

    s = pack(args.dir, shard_bytes=_parse_size(args.shard_size), progress=not args.quiet)
    print(f"packed {s['packed_jobs']} networks ({s['checkpoints']} checkpoints) into "
          f"{s['shards_written']} new shard(s)")
    return 0


def _cmd_merge(args) -> int:
    from .store import merge

    s = merge(args.sources, args.out, shard_bytes=_parse_size(args.shard_size), progress=not args.quiet)
    print(f"merged {len(args.sources)} source(s) into {args.out}: {s['packed_jobs']} networks packed")
    return 0


def _cmd_verify(args) -> int:
    from .verify import verify

    rep = verify(args.dir, checksums=not args.no_checksums, progress=not args.quiet)
    print(rep.summary())
    return 0 if rep.ok else 1


def _cmd_info(args) -> int:
    from collections import Counter

    from .reader import Zoo
    from .store import ZooDir

    z = Zoo.open(args.dir)
    info = z.info
    b = info.get("build") or {}
    print(f"zoo: {args.dir}")
    if b.get("recipe"):
        print(f"recipe: {b['recipe']}  seed: {b.get('seed')}  requested: {b.get('n')} networks")
        print(f"options: {json.dumps(b.get('options', {}), sort_keys=True)}")
    else:
        print(f"imported from {b.get('source_format')}: {b.get('source')}")
    print(f"{len(z.jobs())} networks, {len(z)} checkpoints, steps {z.steps}")
    shards = info.get("shards") or {}
    print(f"{len(shards)} shard(s), {sum(s['bytes'] for s in shards.values()) / 2 ** 20:.1f} MiB")
    archs = Counter(r["arch"] for r in z.where(step="last").records)
    print("architectures: " + ", ".join(f"{a} x{c}" for a, c in archs.most_common()))
    last = z.where(step="last")
    for m in sorted({k for r in last.records for k in (r.get("metrics") or {})}):
        vals = [v for v in last.column(m) if isinstance(v, (int, float))]
        if vals:
            print(f"  {m:12s} last step: mean {sum(vals) / len(vals):.4f}  min {min(vals):.4f}  max {max(vals):.4f}")
    pending = len(ZooDir(args.dir).job_files()) if not str(args.dir).startswith("hf://") else 0
    if pending:
        print(f"{pending} finished networks not packed yet")
    return 0


def _cmd_import(args) -> int:
    from .importers import import_zoo

    kw = {"progress": not args.quiet, "shard_bytes": _parse_size(args.shard_size)}
    if args.limit is not None:
        kw["limit"] = args.limit
    s = import_zoo(args.format, args.source, args.out, **kw)
    print(f"imported {s['imported']} networks from {args.source} ({args.format}) into {args.out}; "
          f"{s['checkpoints']} checkpoints packed")
    return 0


def _cmd_push(args) -> int:
    from .hub import push

    url = push(args.dir, args.repo_id, private=args.private or None, revision=args.revision)
    print(url)
    return 0


def _cmd_pull(args) -> int:
    from .hub import pull

    print(pull(args.repo_id, args.out, revision=args.revision))
    return 0


def _cmd_recipes(args) -> int:
    from .recipes import _RECIPES

    for name in sorted(_RECIPES):
        r = _RECIPES[name]
        print(f"{name}: {r.doc}\n    defaults: {json.dumps(r.defaults)}")
    return 0


def _guard(fn):
    def run(args) -> int:
        from .data import DatasetNotFoundError
        from .store import ZooError

        try:
            return fn(args)
        except (ZooError, DatasetNotFoundError, KeyError, ValueError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {msg}", file=sys.stderr)
            return 1

    return run


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``zoo`` and its subcommands to a ``metanet`` subparsers object."""
    p = subparsers.add_parser("zoo", help="build, verify, import and share checkpoint zoos",
                              description=DESCRIPTION, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    def common(q):
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    b = sub.add_parser("build", help="train a zoo from a recipe (resumable, parallel)")
    b.add_argument("--recipe", required=True, help="recipe name (see `metanet zoo recipes`)")
    b.add_argument("--n", "-n", "--networks", dest="n", type=int, required=True,
                   help="number of networks (under torchrun write --networks: torchrun's own "
                        "parser mistakes --n for a prefix of its options)")
    b.add_argument("--out", required=True, help="zoo folder (resumes if it exists)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--epochs", help="checkpoint steps, e.g. 0,1,5,10 (iterations for INR recipes)")
    b.add_argument("--workers", type=int, default=1, help="worker processes")
    b.add_argument("--executor", default="auto", choices=["auto", "batched", "sequential", "process"],
                   help="batched (the default, = auto): networks of one architecture train "
                        "together as one stacked model; sequential: one network at a time; "
                        "process: sequential in --workers processes")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the batched executor trains (auto: cuda when present)")
    b.add_argument("--max-batch", type=int, default=None,
                   help="networks per stacked model (batched executor; default 64)")
    b.add_argument("--option", action="append", type=_parse_option, metavar="KEY=VALUE",
                   help="recipe option (JSON value), repeatable: sample=false, views=4, ...")
    b.add_argument("--options", help="recipe options as one JSON object")
    b.add_argument("--data-root", help="folder with local copies of MNIST/FashionMNIST/CIFAR-10")
    b.add_argument("--rank", type=int, help="this shard's rank (default: $RANK under torchrun)")
    b.add_argument("--world-size", type=int, help="number of shards (default: $WORLD_SIZE)")
    b.add_argument("--no-pack", action="store_true", help="leave finished networks unpacked")
    b.add_argument("--shard-size", default="256MB", help="target shard size (e.g. 256MB)")
    common(b)
    b.set_defaults(func=_guard(_cmd_build))

    q = sub.add_parser("pack", help="pack finished networks into shards + manifest")
    q.add_argument("dir")
    q.add_argument("--shard-size", default="256MB")
    common(q)
    q.set_defaults(func=_guard(_cmd_pack))

    m = sub.add_parser("merge", help="merge zoo folders built as shards of one build")
    m.add_argument("sources", nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--shard-size", default="256MB")
    common(m)
    m.set_defaults(func=_guard(_cmd_merge))

    v = sub.add_parser("verify", help="check every record, tensor and shard of a zoo")
    v.add_argument("dir")
    v.add_argument("--no-checksums", action="store_true", help="skip shard sha256 checks")
    common(v)
    v.set_defaults(func=_guard(_cmd_verify))

    i = sub.add_parser("info", help="summarize a zoo")
    i.add_argument("dir", help="zoo folder or hf://user/repo")
    i.set_defaults(func=_guard(_cmd_info))

    from .importers import FORMATS

    im = sub.add_parser("import", help="import a public zoo format")
    im.add_argument("--format", required=True, choices=sorted(FORMATS))
    im.add_argument("source", help="folder in that format")
    im.add_argument("--out", required=True)
    im.add_argument("--limit", type=int, help="import only the first N networks")
    im.add_argument("--shard-size", default="256MB")
    common(im)
    im.set_defaults(func=_guard(_cmd_import))

    pu = sub.add_parser("push", help="upload a packed zoo to a Hugging Face dataset repo")
    pu.add_argument("dir")
    pu.add_argument("repo_id")
    pu.add_argument("--private", action="store_true")
    pu.add_argument("--revision")
    pu.set_defaults(func=_guard(_cmd_push))

    pl = sub.add_parser("pull", help="download a zoo from a Hugging Face dataset repo")
    pl.add_argument("repo_id", help="user/repo or hf://user/repo[@rev]")
    pl.add_argument("--out", help="local folder (default: the Hub cache)")
    pl.add_argument("--revision")
    pl.set_defaults(func=_guard(_cmd_pull))

    r = sub.add_parser("recipes", help="list recipes")
    r.set_defaults(func=_cmd_recipes)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m")   # the zoo parser's usage: "python -m zoo ..."
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["zoo", *argv])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:   # Ctrl-C: a line, not a traceback
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
