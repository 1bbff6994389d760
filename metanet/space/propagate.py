"""Neuron-group propagation over an op graph.

Channel identity flows through the traced ops: a Linear ties its input's feature axis
to its weight's input axis, a residual add ties its operands, a flatten of (C, H, W)
makes C-by-(H·W) structure, a split of a fused qkv output makes a concatenation,
attention ties query and key dims and the heads of q, k and v. Ops this module does
not understand fix every axis through them and warn once (sound before complete).

The result is a :class:`Spaces` record: for every axis of every state-dict entry, a
structure over *spaces* (free spaces are the neuron groups; fixed spaces are inputs,
outputs, kernel positions...), plus which groups admit positive scaling (ReLU-like)
and sign flips (odd activations).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from math import prod
from typing import Any

from ..trace.graph import Const, OpGraph, OpNode, Param, Ref
from .structure import Struct, Vars


class UnsupportedOpWarning(UserWarning):
    """An op the group propagation does not understand: axes through it are fixed."""


@dataclass
class Spaces:
    """Result of propagation, in compact picklable form.

    ``axes[name][k]`` is the structure of axis k of state-dict entry ``name``: a tuple
    of segments, each a tuple of space ids. Space ``i`` has ``sizes[i]`` elements; it
    is a neuron group iff ``free[i]``. ``neuron[i]`` says whether it indexes neurons
    (activation channels, inputs, outputs) rather than kernel positions.
    """

    axes: dict[str, list[Struct]]
    sizes: list[int]
    free: list[bool]
    neuron: list[bool]
    roles: dict[str, dict[int, str]]          # name -> axis -> "in" / "out" (edge direction)
    no_scale: dict[int, str] = field(default_factory=dict)   # space -> why no positive scaling
    no_sign: dict[int, str] = field(default_factory=dict)    # space -> why no sign flip
    scale_roles: dict[str, dict[int, str]] = field(default_factory=dict)
    role_ops: dict[str, dict[int, int]] = field(default_factory=dict)   # name -> axis -> op index
    warnings: list[str] = field(default_factory=list)


_BOTH_OK = {  # ops linear in every channel: scaling and sign flips pass through
    "dropout", "dropout_", "feature_dropout", "alpha_dropout", "native_dropout",
    "feature_alpha_dropout", "clone", "alias", "detach", "contiguous", "_to_copy", "to",
    "lift_fresh_copy", "copy", "type_as", "float", "double", "view", "reshape", "_unsafe_view",
    "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "expand",
    "expand_as", "view_as", "movedim", "swapaxes", "swapdims", "broadcast_to", "repeat",
    "cat", "concat", "split", "split_with_sizes", "chunk", "slice", "select", "unbind",
    "narrow", "getitem", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "upsample_nearest1d",
    "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact2d",
    "upsample_bilinear2d", "neg", "mean", "sum", "roll", "flip",
}
_HOMOGENEOUS = {"relu", "relu_", "leaky_relu", "leaky_relu_", "max_pool1d", "max_pool2d",
                "max_pool3d", "max_pool2d_with_indices", "max_pool1d_with_indices",
                "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d",
                "adaptive_max_pool3d", "amax", "amin"}
_ODD = {"tanh", "sin", "erf", "atan", "asinh", "sinh", "tanh_", "sin_"}

_UNARY = {
    "relu", "relu_", "leaky_relu", "leaky_relu_", "relu6", "hardtanh", "hardtanh_", "gelu",
    "silu", "silu_", "mish", "hardswish", "hardswish_", "tanh", "tanh_", "sigmoid", "hardsigmoid",
    "hardsigmoid_", "sin", "sin_", "cos", "exp", "log", "sqrt", "rsqrt", "erf", "abs", "elu", "selu",
    "celu", "softplus", "log_sigmoid", "square", "clamp", "clamp_min", "clamp_max", "sign",
    "floor", "ceil", "round", "neg", "reciprocal", "dropout", "dropout_", "feature_dropout",
    "alpha_dropout", "feature_alpha_dropout", "clone", "alias", "detach", "contiguous",
    "_to_copy", "to", "lift_fresh_copy", "copy", "float", "double", "half", "bfloat16",
    "atan", "asinh", "sinh", "cosh", "logical_not", "bitwise_not", "isnan", "isinf",
    "softmax", "log_softmax", "_softmax", "_log_softmax", "_safe_softmax", "threshold",
    "sigmoid_", "exp_", "type_as",
}
_BINARY = {"add", "sub", "rsub", "mul", "div", "true_divide", "pow", "maximum", "minimum",
           "where", "masked_fill", "masked_fill_", "eq", "ne", "lt", "le", "gt", "ge",
           "logical_and", "logical_or", "bitwise_and", "bitwise_or", "lerp", "add_", "mul_",
           "sub_", "div_", "fmod", "remainder", "atan2", "addcmul", "addcdiv", "floor_divide"}
_FREE_CONST = {"zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like",
               "empty_like", "new_zeros", "new_ones", "new_full", "new_empty", "scalar_tensor"}
_IGNORE = re.compile(r"^(_assert|sym_|_check|_local_scalar_dense$)")


def _is_tensor_arg(a: Any) -> bool:
    return isinstance(a, (Ref, Param, Const, _StructArg))


class Propagator:
    def __init__(self, graph: OpGraph, aliases: dict[str, str] | None = None):
        self.g = graph
        self.V = Vars()
        self.out: dict[int, Any] = {}                      # node -> list[Struct] or list of those
        self.p: dict[str, list[Struct]] = {}
        self.aliases = aliases or {}
        self.roles: dict[str, dict[int, str]] = {}
        self.role_ops: dict[str, dict[int, int]] = {}   # which op gave the role
        self.current = -1
        self.scale_roles: dict[str, dict[int, str]] = {}
        self.no_scale: list[tuple[Struct, str]] = []
        self.no_sign: list[tuple[Struct, str]] = []
        self.extra_neuron: list[Struct] = []
        self.warned: list[str] = []
        self.unknown_ops: list[tuple[str, list[int]]] = []
        for name, shape in graph.param_shapes.items():
            canon = self.aliases.get(name, name)
            if canon in self.p:
                self.p[name] = self.p[canon]
            else:
                self.p[name] = [self.V.atom(s, neuron=False) for s in shape]
                if canon != name:
                    self.p[canon] = self.p[name]

    # -- helpers ------------------------------------------------------------------------
    def shape(self, a: Any) -> tuple[int, ...]:
        if isinstance(a, Ref):
            s = self.g.nodes[a.index].shape
            if isinstance(s, list):
                raise ValueError("internal: multi-output node used as a tensor")
            return tuple(s)
        if isinstance(a, Param):
            return tuple(self.g.param_shapes[a.name])
        if isinstance(a, Const):
            return tuple(a.shape)
        if isinstance(a, _StructArg):
            return tuple(a.shape_)
        return ()

    def t(self, a: Any) -> list[Struct] | None:
        if isinstance(a, Ref):
            return self.out.get(a.index)
        if isinstance(a, Param):
            return self.p[a.name]
        if isinstance(a, Const):
            return [self.V.fixed_struct(s) for s in a.shape]
        if isinstance(a, _StructArg):
            return a.structs
        return None

    def fresh(self, shape, fixed=True) -> list[Struct]:
        return [self.V.atom(s, fixed=fixed, neuron=True) for s in shape]

    def role(self, a: Any, axis: int, role: str, scale_role: str | None = None) -> None:
        if isinstance(a, Param):
            self.roles.setdefault(a.name, {})[axis] = role
            self.role_ops.setdefault(a.name, {})[axis] = self.current
            self.scale_roles.setdefault(a.name, {})[axis] = scale_role or role

    def forbid(self, structs, why: str, scale: bool = True, sign: bool = True) -> None:
        for s in structs or []:
            if s is None:
                continue
            if isinstance(s, list):
                self.forbid(s, why, scale, sign)
                continue
            if scale:
                self.no_scale.append((s, why))
            if sign:
                self.no_sign.append((s, why))

    def broadcast(self, args: list[Any], out_shape) -> list[Struct]:
        """Unify the axes of broadcast operands (right-aligned) with each other."""
        out_shape = tuple(out_shape)
        res: list[Struct] = []
        structs = [(self.t(a), self.shape(a)) for a in args if _is_tensor_arg(a)]
        for k in range(1, len(out_shape) + 1):
            n = out_shape[-k]
            if n == 1:
                res.append(((),))
                continue
            cands = [st[-k] for st, sh in structs if len(sh) >= k and sh[-k] == n]
            if not cands:
                res.append(self.V.atom(n, neuron=True))
                continue
            for c in cands[1:]:
                self.V.unify(cands[0], c)
            res.append(cands[0])
        return list(reversed(res))

    def unknown(self, n: OpNode, why: str | None = None) -> Any:
        msg = why or f"{n.where()}: the neuron-group propagation does not know this op; " \
                     f"axes through it are fixed (sound, but fewer symmetries)"
        lost = [a for x in self._tensor_args(n) for s in self.t(x) or [] for a in self.V.atoms(s)
                if not self.V.fixed[self.V.find(a)]]
        self.unknown_ops.append((msg, lost))
        for a in self._tensor_args(n):
            for s in self.t(a) or []:
                self.V.fix(s)
        return self._fresh_like(n.shape)

    def _fresh_like(self, shape, fixed=True):
        if shape is None:
            return None
        if isinstance(shape, list):
            return [self._fresh_like(s, fixed) for s in shape]
        return self.fresh(shape, fixed)

    def _tensor_args(self, n: OpNode) -> list[Any]:
        acc: list[Any] = []

        def walk(a):
            if _is_tensor_arg(a):
                acc.append(a)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    walk(x)
            elif isinstance(a, dict):
                for x in a.values():
                    walk(x)
        walk(n.args)
        walk(n.kwargs)
        return acc

    def arg(self, n: OpNode, i: int, name: str, default: Any = None) -> Any:
        if len(n.args) > i:
            return n.args[i]
        return n.kwargs.get(name, default)

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> Spaces:
        for n in self.g.nodes:
            if n.op == "input":
                self.out[n.index] = self._fresh_like(n.shape)
                continue
            if n.op == "output":
                for a in n.args:
                    for s in self.t(a) or []:
                        self.V.fix(s)
                continue
            if n.shape is None and _IGNORE.match(n.op):
                continue
            self.current = n.index
            handler = getattr(self, "op_" + n.op, None)
            if handler is None:
                if n.op in _UNARY:
                    handler = self.op_unary
                elif n.op in _BINARY:
                    handler = self.op_binary
                elif n.op in _FREE_CONST:
                    handler = self.op_free_const
                elif n.kind == "pool":
                    handler = self.op_pool
                elif n.kind == "constant":
                    handler = self.op_const
            try:
                res = handler(n) if handler else self.unknown(n)
            except (IndexError, KeyError, TypeError, ValueError) as err:
                res = self.unknown(n, f"{n.where()}: could not propagate neuron groups "
                                      f"({type(err).__name__}: {err}); axes through it are fixed")
            self.out[n.index] = res
            if n.op not in _BOTH_OK and n.op not in ("linear", "mm", "addmm", "matmul", "bmm",
                                                     "conv1d", "conv2d", "conv3d", "convolution",
                                                     "conv_transpose1d", "conv_transpose2d",
                                                     "conv_transpose3d", "embedding", "add",
                                                     "sub", "mul", "div", "add_", "mul_"):
                why = f"{n.where()}"
                ins = [self.t(a) for a in self._tensor_args(n)]
                self.forbid(ins + [res], why, scale=n.op not in _HOMOGENEOUS, sign=n.op not in _ODD)
        return self.finish()

    def finish(self) -> Spaces:
        V = self.V
        resolved = {name: [V.resolve(s) for s in structs] for name, structs in self.p.items()}
        # neuron spaces: those that index activation axes anywhere
        neuron_roots: set[int] = set()
        for res in self.out.values():
            self._collect(res, neuron_roots)
        for s in self.extra_neuron:
            neuron_roots.update(V.atoms(s))
        # more than two neuron axes cannot be one edge: keep the first two, fix the rest
        for name, structs in resolved.items():
            naxes = [k for k, s in enumerate(structs) if any(V.find(a) in neuron_roots for seg in s for a in seg)]
            if len(naxes) > 2:
                keep = [k for k in naxes if k in self.roles.get(name, {})][:2] or naxes[:2]
                for k in naxes:
                    if k not in keep:
                        V.fix(structs[k])
        resolved = {name: [V.resolve(s) for s in structs] for name, structs in self.p.items()}
        # warn about unknown ops only where fixing their axes cost a weight its symmetry
        param_roots = {V.find(a) for structs in resolved.values() for s in structs for seg in s for a in seg}
        for msg, lost in self.unknown_ops:
            if msg not in self.warned and any(V.find(a) in param_roots for a in lost):
                self.warned.append(msg)
                warnings.warn(msg, UnsupportedOpWarning, stacklevel=5)
        order: dict[int, int] = {}
        for name in self.g.param_shapes:
            for s in resolved[name]:
                for seg in s:
                    for a in seg:
                        order.setdefault(V.find(a), len(order))
        axes = {name: [tuple(tuple(order[V.find(a)] for a in seg) for seg in s) for s in structs]
                for name, structs in resolved.items()}
        sizes = [0] * len(order)
        free = [False] * len(order)
        neuron = [False] * len(order)
        for root, i in order.items():
            sizes[i] = V.size[root]
            free[i] = not V.fixed[root]
            neuron[i] = root in neuron_roots
        no_scale: dict[int, str] = {}
        no_sign: dict[int, str] = {}
        for lst, dst in ((self.no_scale, no_scale), (self.no_sign, no_sign)):
            for s, why in lst:
                for a in V.atoms(s):
                    r = V.find(a)
                    if r in order:
                        dst.setdefault(order[r], why)
        # a group on a parameter axis whose scaling role is unknown cannot be scaled
        for name, structs in axes.items():
            for k, s in enumerate(structs):
                if k not in self.scale_roles.get(name, {}):
                    for seg in s:
                        for a in seg:
                            no_scale.setdefault(a, f"{name} axis {k}")
                            no_sign.setdefault(a, f"{name} axis {k}")
        return Spaces(axes=axes, sizes=sizes, free=free, neuron=neuron, roles=self.roles,
                      no_scale=no_scale, no_sign=no_sign, scale_roles=self.scale_roles,
                      role_ops=self.role_ops,
                      warnings=list(self.warned))

    def _collect(self, res: Any, acc: set[int]) -> None:
        if res is None:
            return
        if isinstance(res, list):
            for r in res:
                self._collect(r, acc)
            return
        if isinstance(res, tuple):
            acc.update(self.V.atoms(res))

    # -- op rules ---------------------------------------------------------------------------
    def op_unary(self, n: OpNode):
        x = n.args[0]
        others = [a for a in list(n.args[1:]) + list(n.kwargs.values()) if _is_tensor_arg(a)]
        if others:
            return self.broadcast([x] + others, n.shape)
        return list(self.t(x))

    def op_binary(self, n: OpNode):
        args = [a for a in n.args if _is_tensor_arg(a)]
        res = self.broadcast(list(n.args) + list(n.kwargs.values()), n.shape)
        if n.op in ("add", "sub", "rsub", "add_", "sub_"):
            scalars = [a for a in n.args if isinstance(a, (int, float)) and not isinstance(a, bool) and a != 0]
            if scalars or any(isinstance(a, Const) for a in args):
                self.forbid(res, f"{n.where()} adds a constant")
            for a in args:
                if isinstance(a, Param):
                    for k in range(len(self.shape(a))):
                        self.scale_roles.setdefault(a.name, {}).setdefault(k, "out")
        elif n.op in ("mul", "div", "mul_", "div_", "true_divide"):
            acts = [a for a in args if not isinstance(a, Param)]
            first_only = len(acts) <= 1 and (not acts or n.args[0] == acts[0])
            if not first_only:
                self.forbid(res, f"{n.where()} multiplies activations")
            for a in args:
                if isinstance(a, Param):
                    for k in range(len(self.shape(a))):
                        self.scale_roles.setdefault(a.name, {})[k] = "none"
                    self.forbid(self.t(a), f"{n.where()} scales by a parameter", scale=False)
        return res

    op_add = op_sub = op_mul = op_div = op_binary

    def op_free_const(self, n: OpNode):
        return self._fresh_like(n.shape, fixed=False)

    def op_const(self, n: OpNode):
        for a in self._tensor_args(n):
            for s in self.t(a) or []:
                self.V.fix(s)
        return self._fresh_like(n.shape)

    # linear maps
    def op_linear(self, n: OpNode):
        x, w = n.args[0], n.args[1]
        b = self.arg(n, 2, "bias")
        X, W = self.t(x), self.t(w)
        self.V.unify(X[-1], W[1])
        if b is not None:
            self.V.unify(self.t(b)[0], W[0])
            self.role(b, 0, "out")
        self.role(w, 0, "out")
        self.role(w, 1, "in")
        self.forbid(X[:-1], f"{n.where()} (batch axes)")
        if not isinstance(w, Param):
            self.forbid(W, f"{n.where()} with a computed weight")
        return list(X[:-1]) + [W[0]]

    def _mm(self, n: OpNode, a, b):
        A, B = self.t(a), self.t(b)
        sa, sb = self.shape(a), self.shape(b)
        if len(sa) == 1:
            A, sa = [((),)] + list(A), (1,) + sa
        if len(sb) == 1:
            B, sb = list(B) + [((),)], sb + (1,)
        self.V.unify(A[-1], B[-2])
        batch = []
        for k in range(3, max(len(sa), len(sb)) + 1):
            cands = [S[-k] for S, sh in ((A, sa), (B, sb)) if len(sh) >= k and sh[-k] > 1]
            for c in cands[1:]:
                self.V.unify(cands[0], c)
            n_k = max((sh[-k] for sh in (sa, sb) if len(sh) >= k), default=1)
            batch.insert(0, cands[0] if cands else ((),) if n_k == 1 else self.V.atom(n_k))
        res = batch + [A[-2], B[-1]]
        if len(self.shape(a)) == 1:
            res.pop(-2)
        if len(self.shape(b)) == 1:
            res.pop(-1)
        params = [p for p in (a, b) if isinstance(p, Param)]
        if len(params) == 1 and len(self.shape(params[0])) == 2:
            p = params[0]
            if p is b:
                self.role(b, 0, "in"); self.role(b, 1, "out")
            else:
                self.role(a, 0, "out"); self.role(a, 1, "in")
            self.forbid(batch, f"{n.where()} (batch axes)")
        else:
            self.forbid([A, B, res], f"{n.where()} multiplies activations")
        return res

    def op_mm(self, n: OpNode):
        return self._mm(n, n.args[0], n.args[1])

    op_matmul = op_bmm = op_mm

    def op_addmm(self, n: OpNode):
        res = self._mm(n, n.args[1], n.args[2])
        bias = n.args[0]
        B, sb = self.t(bias), self.shape(bias)
        for k in range(1, len(sb) + 1):
            if sb[-k] > 1:
                self.V.unify(B[-k], res[-k])
                self.role(bias, len(sb) - k, "out")
        return res

    def op_einsum(self, n: OpNode):
        eq, ops = n.args[0], n.args[1]
        if "..." in eq:
            return self.unknown(n)
        lhs, rhs = eq.replace(" ", "").split("->")
        letters: dict[str, Struct] = {}
        for spec, a in zip(lhs.split(","), ops):
            S, sh = self.t(a), self.shape(a)
            for ch, s, size in zip(spec, S, sh):
                if size == 1:
                    continue
                if ch in letters:
                    self.V.unify(letters[ch], s)
                else:
                    letters[ch] = s
        shape = n.shape
        return [letters.get(ch, ((),) if size == 1 else self.V.atom(size)) for ch, size in zip(rhs, shape)]

    def _prod(self, *structs: Struct) -> Struct:
        atoms: list[int] = []
        for s in structs:
            r = self.V.resolve(s)
            if len(r) != 1:
                raise ValueError("channel axis is a concatenation")
            atoms.extend(r[0])
        return (tuple(atoms),)

    def _conv(self, n: OpNode, x, w, b, groups: int, transposed: bool):
        X, W = self.t(x), self.t(w)
        sx, sw = self.shape(x), self.shape(w)
        nsp = len(sw) - 2
        ch = len(sx) - nsp - 1
        G = int(groups)
        cin = sx[ch]
        g = self.V.atom(G)
        if transposed:   # weight (Cin, Cout/G, *k)
            self.V.unify(X[ch], W[0])
            if G > 1:
                self.V.unify(X[ch], self._prod(g, self.V.atom(cin // G)))
            out_ch = self._prod(g, W[1])
        else:            # weight (Cout, Cin/G, *k)
            self.V.unify(X[ch], self._prod(g, W[1]))
            out_ch = W[0] if G == 1 else self._prod(g, self.V.atom(sw[0] // G))
            if G > 1:
                self.V.unify(W[0], out_ch)
        for k in range(2, len(sw)):
            self.V.fix(W[k])
        for k in range(ch + 1, len(sx)):
            self.V.fix(X[k])
        if b is not None:
            self.V.unify(self.t(b)[0], out_ch)
            self.role(b, 0, "out")
        self.role(w, 0, "in" if transposed else "out")
        self.role(w, 1, "out" if transposed else "in")
        if isinstance(w, Param):
            for k in range(2, len(sw)):
                self.scale_roles.setdefault(w.name, {})[k] = "none"
        if G > 1 or not isinstance(w, Param):
            self.forbid([X[ch], out_ch], f"{n.where()} (grouped convolution)")
        return list(X[:ch]) + [out_ch] + self.fresh(n.shape[ch + 1:])

    def op_conv1d(self, n: OpNode):
        return self._conv(n, n.args[0], n.args[1], self.arg(n, 2, "bias"),
                          self.arg(n, 6, "groups", 1), False)

    op_conv2d = op_conv3d = op_conv1d

    def op_convolution(self, n: OpNode):
        return self._conv(n, n.args[0], n.args[1], self.arg(n, 2, "bias"),
                          self.arg(n, 8, "groups", 1), bool(self.arg(n, 6, "transposed", False)))

    def op_conv_transpose1d(self, n: OpNode):
        return self._conv(n, n.args[0], n.args[1], self.arg(n, 2, "bias"),
                          self.arg(n, 6, "groups", 1), True)

    op_conv_transpose2d = op_conv_transpose3d = op_conv_transpose1d

    def op_embedding(self, n: OpNode):
        w, ids = n.args[0], n.args[1]
        W = self.t(w)
        self.V.fix(W[0])
        self.extra_neuron.append(W[0])
        self.role(w, 0, "in")
        self.role(w, 1, "out")
        return list(self.t(ids)) + [W[1]]

    # normalization
    def _channel_params(self, n: OpNode, X: Struct, params: list[Any]):
        for p in params:
            if p is not None and _is_tensor_arg(p):
                self.V.unify(self.t(p)[0], X)

    def op_batch_norm(self, n: OpNode):
        X = self.t(n.args[0])
        self._channel_params(n, X[1], [self.arg(n, i, k) for i, k in
                                       ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))])
        return list(X)

    op_instance_norm = op_batch_norm

    def op__native_batch_norm_legit_no_training(self, n: OpNode):
        X = self.op_batch_norm(n)
        return [X, [X[1]], [X[1]]] if isinstance(n.shape, list) else X

    def op_native_batch_norm(self, n: OpNode):
        return self.op__native_batch_norm_legit_no_training(n)

    def op_layer_norm(self, n: OpNode):
        X = self.t(n.args[0])
        k = len(n.args[1])
        for p in (self.arg(n, 2, "weight"), self.arg(n, 3, "bias")):
            if p is not None and _is_tensor_arg(p):
                P = self.t(p)
                for j in range(k):
                    self.V.unify(P[j], X[len(X) - k + j])
        return list(X)

    def op_rms_norm(self, n: OpNode):
        X = self.t(n.args[0])
        k = len(n.args[1])
        p = self.arg(n, 2, "weight")
        if p is not None and _is_tensor_arg(p):
            P = self.t(p)
            for j in range(k):
                self.V.unify(P[j], X[len(X) - k + j])
        return list(X)

    def op_native_layer_norm(self, n: OpNode):
        X = self.op_layer_norm(n)
        k = len(n.args[1])
        stats = list(X[:-k]) + [((),)] * k
        return [X, stats, stats]

    def op_group_norm(self, n: OpNode):
        X = self.t(n.args[0])
        G = int(n.args[1])
        C = self.shape(n.args[0])[1]
        # channels = groups x (channels per group): permute whole groups, and the same
        # permutation inside every group
        self.V.unify(X[1], (self.V.atom(G)[0] + self.V.atom(C // G)[0],))
        self._channel_params(n, X[1], [self.arg(n, 2, "weight"), self.arg(n, 3, "bias")])
        return list(X)

    # attention
    def op_scaled_dot_product_attention(self, n: OpNode):
        q, k, v = n.args[0], n.args[1], n.args[2]
        mask = self.arg(n, 3, "attn_mask")
        causal = bool(self.arg(n, 5, "is_causal", False))
        gqa = bool(n.kwargs.get("enable_gqa", False))
        Q, K, Vv = self.t(q), self.t(k), self.t(v)
        sq, sk, sv = self.shape(q), self.shape(k), self.shape(v)
        self.V.unify(Q[-1], K[-1])
        self.V.unify(K[-2], Vv[-2])
        batch = []
        nb = max(len(sq), len(sk), len(sv)) - 2
        for j in range(1, nb + 1):
            cands = [S[-2 - j] for S, sh in ((Q, sq), (K, sk), (Vv, sv)) if len(sh) >= j + 2 and sh[-2 - j] > 1]
            if gqa:
                for c in cands:
                    self.V.fix(c)
            for c in cands[1:]:
                self.V.unify(cands[0], c)
            batch.insert(0, cands[0] if cands else ((),))
        if mask is not None and _is_tensor_arg(mask):
            self.broadcast([mask, _StructArg(batch + [Q[-2], K[-2]], tuple(
                list(n.shape[:-2]) + [sq[-2], sk[-2]]))], tuple(list(n.shape[:-2]) + [sq[-2], sk[-2]]))
        if causal:
            self.V.fix(Q[-2])
            self.V.fix(K[-2])
        return batch + [Q[-2], Vv[-1]]

    # reductions
    def _dims(self, d: Any, ndim: int) -> list[int]:
        if d is None:
            return list(range(ndim))
        if isinstance(d, int):
            d = [d]
        if len(d) == 0:
            return list(range(ndim))
        return sorted({x % ndim for x in d})

    def _reduce(self, n: OpNode, dims_arg, keep_arg, fix_reduced=False):
        x = n.args[0]
        X, sx = self.t(x), self.shape(x)
        dims = self._dims(dims_arg, len(sx))
        keep = bool(keep_arg)
        if fix_reduced:
            for d in dims:
                self.V.fix(X[d])
        res = []
        for k, s in enumerate(X):
            if k in dims:
                if keep:
                    res.append(((),))
            else:
                res.append(s)
        if n.op in ("mean", "sum", "amax", "amin"):  # other reductions forbid every axis (run)
            self.forbid([X[d] for d in dims], f"{n.where()} reduces over a neuron axis")
        return res

    def op_mean(self, n: OpNode):
        return self._reduce(n, self.arg(n, 1, "dim"), self.arg(n, 2, "keepdim", False))

    op_sum = op_amax = op_amin = op_logsumexp = op_mean

    def op_var(self, n: OpNode):
        return self._reduce(n, self.arg(n, 1, "dim"), n.kwargs.get("keepdim", self.arg(n, 3, "keepdim", False)))

    op_std = op_var

    def op_max(self, n: OpNode):
        if isinstance(n.shape, list):
            X = self._reduce(n, self.arg(n, 1, "dim"), self.arg(n, 2, "keepdim", False), fix_reduced=True)
            return [X, list(X)]
        return self._reduce(n, None, False)

    op_min = op_max

    def op_argmax(self, n: OpNode):
        return self._reduce(n, self.arg(n, 1, "dim"), self.arg(n, 2, "keepdim", False), fix_reduced=True)

    op_argmin = op_argmax

    def op_cumsum(self, n: OpNode):
        X = self.t(n.args[0])
        self.V.fix(X[int(n.args[1]) % len(X)])
        return list(X)

    def op_pool(self, n: OpNode):
        x = n.args[0]
        X, sx = self.t(x), self.shape(x)
        m = re.search(r"(\d)d", n.op)
        nsp = int(m.group(1)) if m else 2
        shape = n.shape[0] if isinstance(n.shape, list) else n.shape
        for s in X[len(sx) - nsp:]:
            self.V.fix(s)
        res = list(X[:len(sx) - nsp]) + self.fresh(shape[len(sx) - nsp:])
        if isinstance(n.shape, list):
            return [res] + [self.fresh(s) for s in n.shape[1:]]
        return res

    # shapes
    def _reshape(self, X: list[Struct], sin, sout) -> list[Struct]:
        sin, sout = list(sin), list(sout)
        res: list[Struct] = [((),) if s == 1 else None for s in sout]
        ins = [(k, s) for k, s in enumerate(sin) if s != 1]
        outs = [(k, s) for k, s in enumerate(sout) if s != 1]
        i = j = 0
        while i < len(ins) or j < len(outs):
            bi, bo = [ins[i]] if i < len(ins) else [], [outs[j]] if j < len(outs) else []
            i, j = i + len(bi), j + len(bo)
            ni, no = prod(s for _, s in bi), prod(s for _, s in bo)
            while ni != no:
                if ni < no and i < len(ins):
                    bi.append(ins[i]); ni *= ins[i][1]; i += 1
                elif no < ni and j < len(outs):
                    bo.append(outs[j]); no *= outs[j][1]; j += 1
                else:
                    raise ValueError("reshape sizes do not match")
            merged = self.V.product([X[k] for k, _ in bi]) if bi else ((),)
            pieces = self.V.split(merged, [s for _, s in bo]) if bo else []
            for (k, _), p in zip(bo, pieces):
                res[k] = p
        return [r if r is not None else self.V.atom(sout[k], fixed=True, neuron=True)
                for k, r in enumerate(res)]

    def op_view(self, n: OpNode):
        x = n.args[0]
        return self._reshape(self.t(x), self.shape(x), n.shape)

    op_reshape = op__unsafe_view = op_flatten = op_unflatten = op_squeeze = op_unsqueeze = op_view
    op_view_as = op_reshape_as = op_view

    def op_permute(self, n: OpNode):
        X = self.t(n.args[0])
        dims = [d % len(X) for d in n.args[1]]
        return [X[d] for d in dims]

    def op_transpose(self, n: OpNode):
        X = list(self.t(n.args[0]))
        a, b = int(n.args[1]) % len(X), int(n.args[2]) % len(X)
        X[a], X[b] = X[b], X[a]
        return X

    op_swapaxes = op_swapdims = op_transpose

    def op_t(self, n: OpNode):
        return list(reversed(self.t(n.args[0])))

    def op_movedim(self, n: OpNode):
        X = list(self.t(n.args[0]))
        src, dst = n.args[1], n.args[2]
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        order = [k for k in range(len(X)) if k not in [s % len(X) for s in src]]
        for s, d in sorted(zip([s % len(X) for s in src], [d % len(X) for d in dst]), key=lambda t: t[1]):
            order.insert(d, s)
        return [X[k] for k in order]

    def op_expand(self, n: OpNode):
        x = n.args[0]
        X, sx = self.t(x), self.shape(x)
        out = tuple(n.shape)
        res = []
        off = len(out) - len(sx)
        for k, size in enumerate(out):
            if k < off or (sx[k - off] == 1 and size != 1):
                res.append(self.V.atom(size, neuron=True))  # constant along it: any permutation
            else:
                res.append(X[k - off])
        return res

    op_broadcast_to = op_expand_as = op_expand

    def op_repeat(self, n: OpNode):
        x = n.args[0]
        X, sx = self.t(x), self.shape(x)
        reps = list(n.args[1])
        off = len(reps) - len(sx)
        res = []
        for k, r in enumerate(reps):
            if k < off:
                res.append(self.V.atom(r, neuron=True))
            elif r == 1:
                res.append(X[k - off])
            else:  # tiling: the same structure, once per copy
                s = self.V.resolve(X[k - off])
                res.append(tuple(s) * int(r) if sx[k - off] > 1 else self.V.atom(r, neuron=True))
        return res

    def op_select(self, n: OpNode):
        X = list(self.t(n.args[0]))
        d = int(n.args[1]) % len(X)
        self.V.fix(X[d])
        return X[:d] + X[d + 1:]

    def op_unbind(self, n: OpNode):
        X = list(self.t(n.args[0]))
        d = int(self.arg(n, 1, "dim", 0)) % len(X)
        self.V.fix(X[d])
        return [X[:d] + X[d + 1:] for _ in n.shape]

    def _pieces(self, n: OpNode, X: list[Struct], d: int, sizes: list[int]) -> list[list[Struct]]:
        bounds = [0]
        for s in sizes:
            bounds.append(bounds[-1] + s)
        cut = self.V.cut(X[d], bounds)
        if cut is None:
            self.V.fix(X[d])
            cut = [self.V.fixed_struct(s) for s in sizes]
        return [X[:d] + [c] + X[d + 1:] for c in cut]

    def op_split(self, n: OpNode):
        X = list(self.t(n.args[0]))
        d = int(self.arg(n, 2, "dim", 0)) % len(X)
        sizes = [s[d] for s in n.shape]
        return self._pieces(n, X, d, sizes)

    op_split_with_sizes = op_chunk = op_tensor_split = op_split

    def op_slice(self, n: OpNode):
        x = n.args[0]
        X, sx = list(self.t(x)), self.shape(x)
        d = int(self.arg(n, 1, "dim", 0)) % len(X)
        size = sx[d]
        start = self.arg(n, 2, "start", None)
        end = self.arg(n, 3, "end", None)
        step = self.arg(n, 4, "step", 1) or 1
        start = 0 if start is None else (start + size if start < 0 else min(start, size))
        end = size if end is None else (end + size if end < 0 else min(end, size))
        if step == 1 and start == 0 and end >= size:
            return X
        if step != 1:
            self.V.fix(X[d])
            return X[:d] + [self.V.fixed_struct(n.shape[d])] + X[d + 1:]
        bounds = sorted({0, start, end, size})
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        pieces = self._pieces(n, X, d, sizes)
        return pieces[bounds.index(start)]

    def op_narrow(self, n: OpNode):
        x = n.args[0]
        X, sx = list(self.t(x)), self.shape(x)
        d, start, length = int(n.args[1]) % len(X), int(n.args[2]), int(n.args[3])
        bounds = sorted({0, start, start + length, sx[d]})
        pieces = self._pieces(n, X, d, [b - a for a, b in zip(bounds, bounds[1:])])
        return pieces[bounds.index(start)]

    def op_constant_pad_nd(self, n: OpNode):
        x = n.args[0]
        X = list(self.t(x))
        pad = list(n.args[1])
        res = list(X)
        for j in range(len(pad) // 2):
            d = len(X) - 1 - j
            if pad[2 * j] or pad[2 * j + 1]:
                self.V.fix(X[d])
                res[d] = self.V.fixed_struct(n.shape[d])
        return res

    op_pad = op_reflection_pad1d = op_reflection_pad2d = op_replication_pad2d = op_constant_pad_nd

    def op_roll(self, n: OpNode):
        """roll/flip move positions along some axes: those are fixed, the rest pass."""
        X = list(self.t(n.args[0]))
        dims = self.arg(n, 2 if n.op == "roll" else 1, "dims")
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            dims = list(range(len(X)))
        for d in [dims] if isinstance(dims, int) else dims:
            self.V.fix(X[int(d) % len(X)])
        return X

    op_flip = op_roll

    def op_index(self, n: OpNode):
        """``x[..., idx, ...]`` with one index tensor: the indexed axis is fixed."""
        x, indices = n.args[0], list(n.args[1])
        X = list(self.t(x))
        pos = [k for k, a in enumerate(indices) if a is not None]
        if len(pos) != 1 or not _is_tensor_arg(indices[pos[0]]):
            return self.unknown(n)
        k = pos[0]
        self.V.fix(X[k])
        res = X[:k] + list(self.t(indices[k])) + X[k + 1:]
        if len(res) != len(n.shape):
            return self.unknown(n)
        return res

    def op_index_select(self, n: OpNode):
        X = list(self.t(n.args[0]))
        d = int(n.args[1]) % len(X)
        self.V.fix(X[d])
        return X[:d] + [self.V.fixed_struct(n.shape[d])] + X[d + 1:]

    def _recurrent(self, n: OpNode, gates: int):
        """Fused RNN/GRU/LSTM: the hidden units of each layer and direction permute;
        gate blocks are fixed (rows = gate x hidden unit)."""
        x, hx, params = n.args[0], n.args[1], list(n.args[2])
        has_bias, layers, bidir, batch_first = bool(n.args[3]), int(n.args[4]), bool(n.args[7]), bool(n.args[8])
        dirs = 2 if bidir else 1
        per = 4 if has_bias else 2
        if len(params) != layers * dirs * per:
            return self.unknown(n, f"{n.where()}: recurrent layer with projections is not "
                                   f"understood; axes through it are fixed")
        X = list(self.t(x))
        seq = 0 if not batch_first else 1
        if len(X) == 3:
            self.V.fix(X[seq])
        H = self.shape(params[1])[1]
        states = [hx] if _is_tensor_arg(hx) else [a for a in hx if _is_tensor_arg(a)]
        # constant initial states (zeros) are unchanged by any permutation; only a real
        # state, whose one axis serves every layer, ties the layers' hidden units together
        states = [s for s in states if not (isinstance(s, Ref) and self.g.nodes[s.index].op in _FREE_CONST)]
        inp = X[-1]
        for layer in range(layers):
            hidden = []
            for d in range(dirs):
                w_ih, w_hh = params[(layer * dirs + d) * per: (layer * dirs + d) * per + 2]
                h = self.V.atom(H)
                rows = self._prod(self.V.fixed_struct(gates, neuron=False), h) if gates > 1 else h
                self.V.unify(self.t(w_ih)[0], rows)
                self.V.unify(self.t(w_ih)[1], inp)
                self.V.unify(self.t(w_hh)[0], rows)
                self.V.unify(self.t(w_hh)[1], h)
                for w in (w_ih, w_hh):
                    self.role(w, 0, "out")
                    self.role(w, 1, "in")
                if has_bias:
                    for b in params[(layer * dirs + d) * per + 2: (layer * dirs + d) * per + 4]:
                        self.V.unify(self.t(b)[0], rows)
                        self.role(b, 0, "out")
                for s in states:
                    self.V.unify(self.t(s)[-1], h)
                hidden.append(h)
            inp = tuple(seg for h in hidden for seg in self.V.resolve(h))
        self.forbid([self.t(p) for p in params], f"{n.where()} (gates)")
        shapes = n.shape
        out = list(X[:-1]) + [inp]
        if len(X) == 3:
            out[seq] = self.V.fixed_struct(shapes[0][seq])
        state_out = [self.V.fixed_struct(shapes[1][0]), self.V.atom(shapes[1][1]),
                     self.t(states[0])[-1] if states else hidden[0] if layers * dirs == 1
                     else self.V.fixed_struct(H)]
        return [out] + [list(state_out) for _ in shapes[1:]]

    def op_lstm(self, n: OpNode):
        return self._recurrent(n, 4)

    def op_gru(self, n: OpNode):
        return self._recurrent(n, 3)

    def op_rnn_tanh(self, n: OpNode):
        return self._recurrent(n, 1)

    op_rnn_relu = op_rnn_tanh

    def op_getitem(self, n: OpNode):
        src = n.args[0]
        res = self.out.get(src.index)
        return res[int(n.args[1])]

    def op_cat(self, n: OpNode):
        tensors = [a for a in n.args[0] if _is_tensor_arg(a)]
        d = self.arg(n, 1, "dim", 0)
        tensors = [a for a in tensors if self.shape(a) and prod(self.shape(a)) > 0]
        nd = len(self.shape(tensors[0]))
        d = int(d) % nd
        structs = [list(self.t(a)) for a in tensors]
        res = []
        for k in range(nd):
            if k == d:
                segs = tuple(seg for S, a in zip(structs, tensors) for seg in self.V.resolve(S[k]))
                res.append(segs)
            else:
                for S in structs[1:]:
                    if self.shape(tensors[0])[k] > 1:
                        self.V.unify(structs[0][k], S[k])
                res.append(structs[0][k])
        return res

    op_concat = op_cat

    def op_stack(self, n: OpNode):
        tensors = [a for a in n.args[0] if _is_tensor_arg(a)]
        d = int(self.arg(n, 1, "dim", 0)) % (len(self.shape(tensors[0])) + 1)
        structs = [list(self.t(a)) for a in tensors]
        for S in structs[1:]:
            for k, s in enumerate(S):
                if self.shape(tensors[0])[k] > 1:
                    self.V.unify(structs[0][k], s)
        res = list(structs[0])
        res.insert(d, self.V.fixed_struct(len(tensors)))
        return res


class _StructArg:
    """A pseudo-argument carrying a structure list (for broadcasting against)."""

    def __init__(self, structs, shape):
        self.structs, self.shape_ = structs, shape
