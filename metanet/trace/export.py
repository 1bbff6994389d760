"""Trace a model with torch.export into an :class:`OpGraph`."""
from __future__ import annotations

import dataclasses
import contextlib
import inspect
import logging
import operator
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .graph import Const, OpGraph, OpNode, Param, Ref
from .vocab import kind_of


class TraceError(RuntimeError):
    """torch.export could not trace the model; the message says why and what to try."""


def tensor_leaves(obj: Any) -> list[torch.Tensor]:
    """All tensors in a model output: tensors, mappings (dicts, Hugging Face
    ModelOutput), sequences, dataclasses and cache objects, in a stable order."""
    out: list[torch.Tensor] = []

    def walk(o: Any, depth: int) -> None:
        if depth > 8 or o is None:
            return
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, Mapping):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            for f in dataclasses.fields(o):
                walk(getattr(o, f.name), depth + 1)
        elif hasattr(o, "__dict__") and not isinstance(o, (nn.Module, type)):
            # cache objects (e.g. transformers' DynamicCache) hold their tensors in attributes
            for v in vars(o).values():
                walk(v, depth + 1)

    walk(obj, 0)
    return out


class _FlatOutputs(nn.Module):
    """Wraps a model so that its outputs are a flat tuple of tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, *args, **kwargs):
        return tuple(tensor_leaves(self.m(*args, **kwargs)))


def _default_kwargs(model: nn.Module, kwargs: dict) -> dict:
    """Caches are outputs no weight-space tool needs; ask models that can for none."""
    kwargs = dict(kwargs)
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return kwargs
    if "use_cache" in sig.parameters and "use_cache" not in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def _int(s: Any) -> int:
    """A traced size as an int: its value at the example inputs, or -1 where it depends
    on tensor values (an unbacked size, such as the number of tokens routed to an
    expert). Never ``int(s)`` on a symbol: that would add a guard raw export does not need."""
    if isinstance(s, torch.SymInt):
        node = s.node
        hint = getattr(node, "hint", None)
        if hint is not None:
            return int(hint)
        expr = getattr(node, "expr", None)
        if expr is not None and getattr(expr, "is_number", False):
            return int(expr)
        return -1
    return int(s)


def _shape_of(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return tuple(_int(s) for s in val.shape)
    if isinstance(val, (list, tuple)):
        return [_shape_of(v) for v in val]
    return None


def _small_ints(t: Any, limit: int = 256) -> tuple[int, ...] | None:
    """The values of a small integer constant (``x[..., [-2], :]`` indexes with one)."""
    if isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex() \
            and t.dtype != torch.bool and t.numel() <= limit and t.device.type != "meta":
        return tuple(int(v) for v in t.reshape(-1).tolist())
    return None


def _strip(name: str, prefix: str = "m.") -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        packet = target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
        name = packet.__name__.split(".")[-1]
        ns = getattr(target, "namespace", "aten")
        return name if ns == "aten" else f"{ns}.{name}"   # custom ops keep their namespace
    name = getattr(target, "__name__", str(target))
    return name.split(".")[-1]


def _module_of(node: torch.fx.Node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, typ = list(stack.values())[-1]
    path = _strip(path if isinstance(path, str) else str(path))
    if path == "m":
        path = ""
    typ = typ.__name__ if isinstance(typ, type) else str(typ).split(".")[-1]
    return path, typ


@contextlib.contextmanager
def _quiet_fake_tensor_log():
    """torch.export logs a full traceback when an op fails on fake tensors (a shape
    mismatch from wrong example inputs), then raises; the TraceError below reports that
    error in one line, with what to try, so the log is held back while tracing."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _export(model: nn.Module, args: tuple, kwargs: dict, strict: bool):
    wrapper = _FlatOutputs(model)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_fake_tensor_log():
            # fused RNNs re-assign their flat weight list while traced: harmless here
            warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned during export")
            return torch.export.export(wrapper, args, kwargs, strict=strict)
    except Exception as err:  # torch.export raises many types; all mean the same to a user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TraceError(
            f"torch.export could not trace {type(model).__name__}: {type(err).__name__}: {first}\n"
            "What to try: (1) check that example_inputs (and kwargs) are what forward() takes, "
            "with the right dtypes and shapes; (2) replace Python control flow that depends on "
            "tensor values with static code or torch.cond; (3) pass plain tensors, not custom "
            "objects, as inputs; (4) run torch.export.export(model, example_inputs, strict=False) "
            "yourself to see the full report."
        ) from err


def trace(model: nn.Module, example_inputs: Any, kwargs: dict | None = None, *,
          strict: bool = False) -> OpGraph:
    """Trace ``model`` on ``example_inputs`` into an :class:`OpGraph`.

    The model is traced in eval mode (its training flags are restored after).
    Outputs of any structure (tuples, dicts, Hugging Face ModelOutput) are flattened;
    models whose forward takes ``use_cache`` are traced with ``use_cache=False``.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    elif isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise TypeError(
            f"example_inputs must be a tensor or a tuple of forward() arguments, got "
            f"{type(example_inputs).__name__}; pass kwargs=... for keyword arguments")
    kwargs = _default_kwargs(model, kwargs or {})
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        ep = _export(model, example_inputs, kwargs, strict)
    finally:
        for m, t in modes.items():
            m.train(t)
    return _to_op_graph(ep)


def _to_op_graph(ep) -> OpGraph:
    sig = ep.graph_signature
    kinds = {}
    for spec in sig.input_specs:
        kinds[spec.arg.name] = spec
    state_keys = set(ep.state_dict.keys())
    param_shapes: dict[str, tuple[int, ...]] = {}
    const_shapes: dict[str, tuple[int, ...]] = {}
    env: dict[str, Any] = {}  # fx node name -> Ref / Param / Const
    nodes: list[OpNode] = []
    inputs: list[int] = []
    outputs: list[Any] = []

    def convert(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return env.get(a.name)
        if isinstance(a, (list, tuple)):
            return type(a)(convert(x) for x in a)
        if isinstance(a, dict):
            return {k: convert(v) for k, v in a.items()}
        if isinstance(a, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
            return str(a)
        if isinstance(a, (int, float, bool, str)) or a is None:
            return a
        if isinstance(a, torch.SymInt):
            return _int(a)
        return str(a)

    def collect(a: Any, kind: type, acc: list) -> list:
        """Every ``kind`` (Ref or Param) inside a converted argument, in order."""
        if isinstance(a, kind):
            acc.append(a.index if kind is Ref else a.name)
        elif isinstance(a, (list, tuple)):
            for x in a:
                collect(x, kind, acc)
        elif isinstance(a, dict):
            for x in a.values():
                collect(x, kind, acc)
        return acc

    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            spec = kinds.get(node.name)
            kind = spec.kind.name if spec is not None else "USER_INPUT"
            target = _strip(spec.target) if spec is not None and spec.target else node.name
            is_state = kind in ("PARAMETER", "BUFFER") and (
                kind == "PARAMETER" or getattr(spec, "persistent", True) is not False)
            if is_state and spec.target in state_keys:
                env[node.name] = Param(target)
                param_shapes[target] = _shape_of(val)
            elif kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                env[node.name] = Const(target, _shape_of(val) if isinstance(val, torch.Tensor) else (),
                                       _small_ints(ep.constants.get(spec.target) if spec is not None else None))
                const_shapes[target] = env[node.name].shape
            else:
                idx = len(nodes)
                nodes.append(OpNode(idx, node.name, "input", "input", shape=_shape_of(val),
                                    dtype=str(val.dtype) if isinstance(val, torch.Tensor) else None))
                inputs.append(idx)
                env[node.name] = Ref(idx)
        elif node.op == "call_function":
            op = _op_name(node.target)
            args = convert(node.args)
            kw = convert(dict(node.kwargs))
            module, mtype = _module_of(node)
            idx = len(nodes)
            deps = tuple(dict.fromkeys(collect(args, Ref, []) + collect(kw, Ref, [])))
            ps = tuple(dict.fromkeys(collect(args, Param, []) + collect(kw, Param, [])))
            nodes.append(OpNode(idx, node.name, op, kind_of(op), args=args, kwargs=kw,
                                shape=_shape_of(val),
                                dtype=str(val.dtype) if isinstance(val, torch.Tensor) else None,
                                module=module, module_type=mtype, inputs=deps, params=ps))
            env[node.name] = Ref(idx)
        elif node.op == "output":
            outs = convert(node.args[0])
            outputs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            idx = len(nodes)
            deps = tuple(dict.fromkeys(collect(outputs, Ref, [])))
            nodes.append(OpNode(idx, node.name, "output", "output", args=tuple(outputs),
                                inputs=deps, params=tuple(collect(outputs, Param, []))))
        else:  # get_attr etc. do not occur in exported programs; keep going soundly
            env[node.name] = Const(node.name, _shape_of(val) or ())
    return OpGraph(nodes=nodes, inputs=inputs, outputs=outputs, param_shapes=param_shapes,
                   const_shapes=const_shapes)
