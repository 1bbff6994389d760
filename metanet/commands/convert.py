"""``metanet convert``: trace a model, describe its weight space, check the parameter
graph round trip and draw the graph.

    metanet convert                                  # the built-in small CNN
    metanet convert --model resnet --layout param --out out/resnet
    metanet convert --model mypkg.models:make_model  # your factory: () -> (model, example_inputs)
    metanet convert --model path/to/file.py:make_model
    metanet convert --verify                         # also check every symmetry on the model
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: reported without a traceback, exit code 2."""


def register(subparsers) -> None:
    from ..examples import DEFAULT_EXAMPLE, EXAMPLES

    p = subparsers.add_parser(
        "convert",
        help="trace a model, show its neuron groups and parameter graph, draw the graph",
        description=(
            "Trace a model (a built-in example or your own factory), print its op counts, "
            "neuron groups (and which admit scaling or sign-flip symmetries) and the size of "
            "its parameter graph, check that the graph converts back to the state dict bit "
            "for bit, and write DIR/graph.png."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("built-in models: " + ", ".join(EXAMPLES) + "\n"
                "a factory is 'module.path:function' or 'file.py:function'; it takes no arguments "
                "and returns (model, example_inputs)"),
    )
    p.add_argument("--model", default=DEFAULT_EXAMPLE, metavar="NAME",
                   help=f"built-in example ({', '.join(EXAMPLES)}; default {DEFAULT_EXAMPLE}) "
                        "or module.path:factory")
    p.add_argument("--layout", default="compact", choices=["compact", "param"],
                   help="compact: one edge per neuron pair, kernel as a feature vector (default); "
                        "param: one edge per parameter")
    p.add_argument("--out", default="out/convert", metavar="DIR", help="output folder (default out/convert)")
    p.add_argument("--max-edges", type=int, default=3000, metavar="N",
                   help="draw at most N neuron pairs, the strongest (default 3000)")
    p.add_argument("--verify", action="store_true",
                   help="check that random permutations (and scalings, sign flips where offered) of "
                        "the neuron groups keep the model's outputs, on the example inputs and on "
                        "inputs of other shapes; exit 1 naming the group if one does not")
    p.set_defaults(func=run)


# -- loading models ------------------------------------------------------------------------------
def _load_factory(spec: str) -> tuple[Callable[[], Any], str]:
    from ..examples import EXAMPLES

    if spec in EXAMPLES:
        return EXAMPLES[spec], spec
    if ":" not in spec:
        raise UsageError(f"unknown model {spec!r}: built-in models are {', '.join(EXAMPLES)}; "
                         "for your own model pass 'module.path:factory' or 'file.py:factory'")
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise UsageError(f"--model {spec!r}: expected 'module.path:factory' or 'file.py:factory'")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise UsageError(f"--model {spec!r}: no such file {str(path)!r}")
        sys_path_entry = str(path.resolve().parent)
        mspec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mspec)
        sys.path.insert(0, sys_path_entry)  # so the file can import its neighbours
        try:
            mspec.loader.exec_module(module)
        except Exception as err:
            raise UsageError(f"--model {spec!r}: importing {str(path)!r} failed: {type(err).__name__}: {err}") from err
        finally:
            sys.path.remove(sys_path_entry)
    else:
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")  # like `python -m`: modules in the current folder
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            raise UsageError(f"--model {spec!r}: cannot import module {mod_name!r} ({err}); "
                             "is it installed or in the current folder?") from err
        except Exception as err:
            raise UsageError(f"--model {spec!r}: importing {mod_name!r} failed: {type(err).__name__}: {err}") from err
    fn = getattr(module, fn_name, None)
    if fn is None:
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise UsageError(f"--model {spec!r}: {mod_name!r} has no attribute {fn_name!r}"
                         + (f" (callables there: {', '.join(names[:10])})" if names else ""))
    if not callable(fn):
        raise UsageError(f"--model {spec!r}: {fn_name!r} is not callable")
    return fn, spec


def _build(factory: Callable[[], Any], spec: str):
    import torch
    from torch import nn

    try:
        out = factory()
    except Exception as err:
        raise UsageError(f"--model {spec!r}: calling the factory failed: {type(err).__name__}: {err}") from err
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], nn.Module)):
        raise UsageError(f"--model {spec!r}: the factory must return (model, example_inputs) with model an "
                         f"nn.Module; it returned {type(out).__name__}")
    model, inputs = out
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        raise UsageError(f"--model {spec!r}: example_inputs must be a tensor or a tuple of forward() "
                         f"arguments, got {type(inputs).__name__}")
    return model, tuple(inputs)


# -- report --------------------------------------------------------------------------------------
def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def graph_nbytes(graph) -> int:
    """Bytes of every tensor of a parameter graph."""
    import torch

    return sum(v.numel() * v.element_size() for _, v in graph if isinstance(v, torch.Tensor))


def _describe(ws, graph, layout: str, name: str, trace_s: float, graph_s: float) -> list[str]:
    L = ws.layout(layout, int(graph.width))
    lines = [f"model: {name}  ({ws.num_params:,} weights in {len(ws.weights)} tensors; "
             f"traced in {trace_s:.2f} s)"]
    counts = ws.op_graph.count()
    lines.append(f"ops: {len(ws.op_graph)} (" + ", ".join(
        f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) + ")")
    lines.append(f"neuron groups: {len(ws.groups)} (named by the first tensor axis carrying them; "
                 "symmetries each admits)")
    for g in ws.groups:
        sym = ["permute"] + [s for s, ok in (("scale", g.scaling), ("sign flip", g.sign)) if ok]
        lines.append(f"  group {g.id:2d}: {g.size:5d} neurons  {g.name:<30s} {' + '.join(sym)}")
    if not ws.groups:
        lines.append("  (none: every axis is fixed, no permutation symmetry found)")
    if ws.spaces.warnings:
        lines.append("unsupported ops (axes through them fixed):")
        lines.extend("  " + w for w in ws.spaces.warnings)
    n_struct = L.num_edges - L.num_param_edges
    lines.append(f"parameter graph ({layout} layout): {L.num_nodes:,} nodes, {L.num_edges:,} edges "
                 f"({L.num_param_edges:,} parameter, {n_struct:,} structural), edge width {L.width}, "
                 f"{len(L.sets)} node sets, {_bytes(graph_nbytes(graph))} "
                 f"(edge_attr {_bytes(graph.edge_attr.numel() * graph.edge_attr.element_size())}, "
                 f"edge_index {_bytes(graph.edge_index.numel() * graph.edge_index.element_size())}); "
                 f"built in {graph_s * 1e3:.1f} ms")
    pad = sum(p.num_edges * L.width - p.n_out * p.n_in * p.feat for p in L.plans)
    if pad:
        lines.append(f"  {pad:,} zero-padding slots in edge_attr ({pad / max(graph.edge_attr.numel(), 1):.0%}): "
                     f"features cut into chunks of {L.width}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as err:
        print(f"metanet convert: error: {err}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..graph.plot import plot_graph
    from ..space import WeightSpace
    from ..trace import TraceError

    if args.max_edges < 1:
        raise UsageError("--max-edges must be at least 1")
    factory, name = _load_factory(args.model)
    model, inputs = _build(factory, name)
    out = Path(args.out)

    t0 = time.perf_counter()
    try:
        ws = WeightSpace.of(model, inputs, cache=False)
    except (TraceError, TypeError) as err:
        raise UsageError(f"--model {name!r}: {err}") from err
    trace_s = time.perf_counter() - t0
    if not ws.weights:
        raise UsageError(f"--model {name!r}: the model has no floating-point weights to convert")

    sd = model.state_dict()
    ws.layout(args.layout)  # built once per architecture; time the conversion alone
    t0 = time.perf_counter()
    graph = ws.graph(sd, layout=args.layout)
    graph_s = time.perf_counter() - t0
    for line in _describe(ws, graph, args.layout, name, trace_s, graph_s):
        print(line)

    back = ws.state_dict(graph)
    bad = [k for k in sd if k not in back or back[k].dtype != sd[k].dtype or back[k].shape != sd[k].shape
           or not torch.equal(back[k], sd[k])]
    if bad or set(back) != set(sd):
        print(f"round trip: FAILED for {len(bad)} of {len(sd)} entries (first: {bad[0] if bad else set(back) ^ set(sd)})",
              file=sys.stderr)
        return EXIT_FAIL
    print(f"round trip: state_dict(graph(sd)) == sd bit for bit ({len(sd)} entries)")

    if args.verify:
        from ..space.verify import SymmetryError

        try:
            print(ws.verify(model, inputs))
        except SymmetryError as err:
            print(f"verify: FAILED: {err}", file=sys.stderr)
            return EXIT_FAIL

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {str(out)!r}: cannot create the folder: {err}") from err
    png = out / "graph.png"
    plot_graph(ws, graph, png, max_edges=args.max_edges,
               title=f"{name}: parameter graph ({args.layout} layout, edge width {int(graph.width)})")
    print(f"wrote {png}")
    return EXIT_OK
