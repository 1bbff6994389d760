"""``metanet align``: permute checkpoint B's neurons onto checkpoint A (weight matching)
and write the result.

    metanet align a.safetensors b.safetensors --model small_cnn --out b_aligned.safetensors
    metanet align a.pt b.pt --model mypkg.models:make_model --out c.pt
    metanet align a.pt b.pt --model path/to/file.py:MyNet --out c.safetensors

``--model`` names the architecture, which is traced to find its neuron groups: a
built-in example (``metanet convert --help`` lists them), else a zoo model name (its
default settings), or
``module:factory`` / ``file.py:factory`` where ``factory()`` returns ``(model,
example_inputs)`` or a model with an ``example_input()`` method (a class works).
Checkpoints are read without running code: safetensors, or ``torch.load(...,
weights_only=True)`` for .pt/.pth (a ``{"state_dict": ...}`` wrapper is unwrapped).
The output keeps B's function exactly; only the order of its neurons changes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .convert import EXIT_USAGE, UsageError, _build, _load_factory


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "align", help="permute checkpoint B's neurons onto checkpoint A (weight matching) and save it",
        description=("Align checkpoint B to checkpoint A: find the permutation of B's neurons (every "
                     "neuron group the architecture has) that brings its weights closest to A's "
                     "(Git Re-Basin weight matching) and write the permuted B. B computes the same "
                     "function afterwards."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--model: a built-in example, a zoo model name, 'module:factory' or 'file.py:factory'")
    p.add_argument("a", help="reference checkpoint (.safetensors, .pt or .pth)")
    p.add_argument("b", help="checkpoint to permute onto A")
    p.add_argument("--model", required=True, metavar="SPEC", help="the architecture of both checkpoints")
    p.add_argument("--out", required=True, metavar="PATH", help="where to write aligned B (.safetensors or .pt)")
    p.add_argument("--seed", type=int, default=0, help="order of groups in coordinate descent (default 0)")
    p.set_defaults(func=run)


def load_checkpoint(path: str, what: str = "checkpoint"):
    """A state dict from a safetensors or .pt/.pth file, read without pickle
    (zoo.importers.load_checkpoint_file); what is wrong with the file as a UsageError."""
    from zoo.importers import load_checkpoint_file
    from zoo.store import ZooError

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"no such {what} file {path!r}")
    if p.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise UsageError(f"{path!r}: expected a .safetensors, .pt or .pth file")
    try:
        return load_checkpoint_file(p)
    except ZooError as err:
        raise UsageError(str(err)) from None


def _model(spec: str):
    """(model, example_inputs) for --model."""
    from torch import nn

    zoo_models: list[str] = []
    try:
        from zoo.models import create, list_models
        zoo_models = list_models()
    except ImportError:
        pass
    from ..examples import EXAMPLES

    if spec in zoo_models and spec not in EXAMPLES:   # built-in examples first, as in metanet convert
        m = create(spec)
        return m.eval(), (m.example_input(),)
    try:
        factory, name = _load_factory(spec)
    except UsageError as err:
        if ":" in spec or not zoo_models:
            raise
        raise UsageError(f"{err}; zoo models (default settings): {', '.join(zoo_models)}") from None
    try:
        out = factory()
    except Exception as err:
        raise UsageError(f"--model {spec!r}: calling it failed: {type(err).__name__}: {err}") from err
    if isinstance(out, nn.Module):
        if not callable(getattr(out, "example_input", None)):
            raise UsageError(f"--model {spec!r} gives a model without example_input(); give a factory that "
                             f"returns (model, example_inputs)")
        inputs = out.example_input()
        return out.eval(), inputs if isinstance(inputs, tuple) else (inputs,)
    return _build(lambda: out, name)


def save_checkpoint(sd, path: str) -> None:
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().clone() for k, v in sd.items()}
    tmp = p.with_name(p.name + ".tmp")
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(tensors, str(tmp))
    elif p.suffix in (".pt", ".pth"):
        torch.save(tensors, str(tmp))
    else:
        raise UsageError(f"--out {path!r}: expected a .safetensors, .pt or .pth file")
    tmp.replace(p)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as err:
        print(f"metanet align: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _run(args) -> int:
    import torch

    from ..space import StateDictError, WeightSpace

    model, inputs = _model(args.model)
    ws = WeightSpace.of(model, inputs)
    sd_a, sd_b = load_checkpoint(args.a), load_checkpoint(args.b)
    for which, sd in (("A", sd_a), ("B", sd_b)):
        try:
            ws.check(sd)
        except StateDictError as err:
            raise UsageError(f"checkpoint {which} does not fit --model {args.model}: {err}") from None
    t0 = time.perf_counter()
    perm = ws.align(sd_a, sd_b, seed=args.seed)
    secs = time.perf_counter() - t0
    out = ws.permute(sd_b, perm)

    def dist(x):
        return float(sum(((x[k].double() - sd_a[k].double()) ** 2).sum() for k in ws.weights).sqrt())

    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perm.perms)
    print(f"{len(ws.groups)} neuron groups, {moved} neurons moved, in {secs:.2f} s; "
          f"|A - B| {dist(sd_b):.4g} -> {dist(out):.4g}")
    save_checkpoint(out, args.out)
    print(f"wrote {args.out}")
    return 0
