"""``metanet prune``: structured pruning of a model by its neuron groups.

    metanet prune --model small_cnn --speedup 2 --out pruned.safetensors
    metanet prune --model path/to/file.py:make_model --weights trained.safetensors --ratio 0.3
    metanet prune --model mypkg.models:make_model --criterion random --seed 1 --speedup 3 --out p.safetensors
    metanet prune --model file.py:make --weights w.safetensors --metanet out/meta_prune/metapruner_seed0.safetensors --speedup 2

The pruned weights are saved as safetensors with the pruning plan (the neurons kept per
group) in the file's metadata; ``metanet.prune.load(model, example_inputs, FILE)``
rebuilds the pruned model from a fresh instance of the original architecture.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .convert import UsageError, _build, _load_factory

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def register(subparsers) -> None:
    from ..examples import EXAMPLES

    p = subparsers.add_parser(
        "prune",
        help="remove neurons group by group (magnitude, random): a smaller, faster model",
        description=(
            "Trace a model, find its neuron groups (the tensor axes that must shrink together: "
            "residual streams, heads, concatenation blocks, depthwise channels), score every "
            "neuron, remove the lowest-scoring ones of each group and rebuild the modules at "
            "their new sizes. Prints parameters, FLOPs and latency before and after."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("a model is a built-in example (" + ", ".join(EXAMPLES) + "), a zoo model name, or 'module.path:factory' / "
                "'file.py:factory' where the factory takes no arguments and returns "
                "(model, example_inputs)"),
    )
    p.add_argument("--model", required=True, metavar="SPEC", help="the model to prune (see below)")
    p.add_argument("--weights", metavar="FILE",
                   help="load these weights first (.safetensors, or .pt/.pth read with weights_only=True)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--speedup", type=float, metavar="X",
                        help="target FLOP reduction, e.g. 2 (the smallest uniform ratio that reaches it)")
    target.add_argument("--ratio", type=float, metavar="R", help="fraction of every group's neurons removed")
    p.add_argument("--criterion", default="magnitude", choices=["magnitude", "l1", "l2", "random"],
                   help="neuron score: magnitude (= l2 norm over every tensor of the group; default), l1, random")
    p.add_argument("--allocation", default="uniform", choices=["uniform", "global"],
                   help="uniform: the same fraction of every group (default); global: the lowest scores over "
                        "all groups together (for scores comparable across layers, e.g. after --metanet)")
    p.add_argument("--metanet", metavar="CKPT",
                   help="meta pruning: first edit the model with this metanetwork (a tasks.meta_prune "
                        "checkpoint, metapruner_seed*.safetensors), then prune its output by --criterion; "
                        "fine-tune the result on your data afterwards")
    p.add_argument("--only-prunable", action="store_true",
                   help="first probe each group alone and prune only those the model still runs without "
                        "(a forward that hard-codes a head count or a split width keeps those groups whole; "
                        "the skipped groups are listed with the reason)")
    p.add_argument("--seed", type=int, default=0, help="seed for --criterion random (default 0)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--out", metavar="FILE", help="write the pruned weights and plan here (.safetensors)")
    p.set_defaults(func=run)


def _model(spec: str):
    """(model, example_inputs) for --model: a built-in example (first, as in ``metanet
    convert``), a zoo model, or a factory."""
    from torch import nn

    from ..examples import EXAMPLES

    try:
        from zoo.models import create, list_models
        if spec not in EXAMPLES and spec in list_models():
            m = create(spec)
            return m.eval(), (m.example_input(),)
    except ImportError:
        pass
    factory, name = _load_factory(spec)
    try:
        out = factory()
    except Exception as err:
        raise UsageError(f"--model {spec!r}: calling the factory failed: {type(err).__name__}: {err}") from err
    if isinstance(out, nn.Module):
        raise UsageError(f"--model {spec!r} returns a model without example inputs; the factory must return "
                         f"(model, example_inputs)")
    return _build(lambda: out, name)


def _load_weights(model, path: str) -> None:
    from .align import load_checkpoint

    sd = load_checkpoint(path, "--weights")
    try:
        model.load_state_dict(sd)
    except (RuntimeError, TypeError) as err:
        raise UsageError(f"--weights {path!r} does not fit --model: {err}") from None


def _meta_edit(model, inputs, path: str):
    """The model edited by a meta-pruning metanetwork (tasks.meta_prune checkpoint)."""
    from ..space import WeightSpace

    if not Path(path).is_file():
        raise UsageError(f"--metanet: no such file {path!r}")
    try:
        from tasks.meta_prune import edit, load_meta_pruner
    except ImportError as err:
        raise UsageError(f"--metanet needs the tasks package (run from the repository root): {err}") from None
    try:
        meta = load_meta_pruner(path, WeightSpace.of(model, inputs))
    except ValueError as err:
        raise UsageError(f"--metanet {path!r}: {err}") from None
    return edit(meta, model)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as err:
        print(f"metanet prune: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..prune import PruneError, prune, save
    from ..trace import TraceError

    if args.speedup is not None and not args.speedup > 1:
        raise UsageError(f"--speedup must be > 1, got {args.speedup}")
    if args.ratio is not None and not 0 < args.ratio < 1:
        raise UsageError(f"--ratio must be in (0, 1), got {args.ratio}")
    if args.out and Path(args.out).suffix != ".safetensors":
        raise UsageError(f"--out {args.out!r}: the pruned model is written as .safetensors")
    model, inputs = _model(args.model)
    if args.weights:
        _load_weights(model, args.weights)

    t0 = time.perf_counter()
    if args.metanet:
        model = _meta_edit(model, inputs, args.metanet)
        print(f"edited by the meta-pruning metanetwork {args.metanet} (one forward pass); pruning its output")

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    try:
        res = prune(model, inputs, args.criterion, speedup=args.speedup, ratio=args.ratio,
                    generator=torch.Generator().manual_seed(args.seed), latency=not args.no_latency,
                    allocation=args.allocation, progress=say,
                    groups="prunable" if args.only_prunable else None)
    except (TraceError, TypeError) as err:
        raise UsageError(f"--model {args.model!r}: {err}") from err
    except PruneError as err:
        print(f"metanet prune: refused: {err}", file=sys.stderr)
        return EXIT_FAIL

    if res.ratio is not None:
        print(f"ratio: {res.ratio:.3f} of " + ("each group's neurons" if args.allocation == "uniform"
                                                else "all neurons (global)") + " removed")
    print("groups (neurons before -> after):")
    from ..space import WeightSpace
    ws = WeightSpace.of(model, inputs)
    for g, (old, new) in sorted(res.groups.items()):
        print(f"  group {g:3d}: {old:5d} -> {new:5d}  {ws.groups[g].name}")
    if res.skipped:
        print(f"kept whole ({len(res.skipped)} groups the model does not run without):")
        for g, why in sorted(res.skipped.items()):
            print(f"  group {g:3d}: {ws.groups[g].name}: {why[:160]}")
    print(res.table())
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        save(res.model, tmp, keep=res.keep)
        tmp.replace(out)
        print(f"wrote {out} (rebuild with metanet.prune.load(model, example_inputs, {str(out)!r}))")
    return EXIT_OK
