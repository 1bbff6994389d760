"""Elementwise ops: activations, casts, arithmetic, comparisons, constants.

An elementwise op keeps every axis's structure; operands of different shapes are
broadcast (right-aligned) and their axes unified, so a residual add ties the groups of
its operands."""
from __future__ import annotations

from ...trace.graph import Const, Param
from .registry import is_tensor, rule

# ops that commute with per-channel scaling and sign flips (identity in eval mode,
# copies, casts, negation)
_LINEAR = ("dropout", "dropout_", "feature_dropout", "alpha_dropout", "native_dropout",
           "feature_alpha_dropout", "clone", "alias", "detach", "contiguous", "_to_copy", "to",
           "lift_fresh_copy", "copy", "type_as", "float", "double", "neg")
# f(a x) = a f(x), a > 0 (rrelu: a fixed slope in eval mode, a random one per element in
# training mode: either way the slope does not depend on the input's scale)
_POSITIVE = ("relu", "relu_", "leaky_relu", "leaky_relu_", "rrelu", "rrelu_")
_ODD = ("tanh", "tanh_", "sin", "sin_", "erf", "atan", "asinh", "sinh",    # f(-x) = -f(x)
        "tan", "asin", "atanh", "hardshrink", "softshrink", "sgn")
_OTHER = ("relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "mish", "hardswish",
          "hardswish_", "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "cos", "exp", "exp_",
          "log", "sqrt", "rsqrt", "abs", "elu", "selu", "celu", "softplus", "log_sigmoid",
          "square", "clamp", "clamp_min", "clamp_max", "sign", "floor", "ceil", "round",
          "reciprocal", "half", "bfloat16", "cosh", "logical_not", "bitwise_not", "isnan",
          "isinf", "threshold", "log1p", "expm1", "log2", "log10", "exp2", "acos", "acosh",
          "erfc", "sinc", "frac", "trunc",
          # softmax along an axis is equivariant to permutations of that axis
          "softmax", "log_softmax", "_softmax", "_log_softmax", "_safe_softmax")


def unary(P, n):
    """One tensor in, same axes out; extra tensor arguments (a clamp bound) broadcast."""
    x = n.args[0]
    others = [a for a in list(n.args[1:]) + list(n.kwargs.values()) if is_tensor(a)]
    if others:
        return P.broadcast([x] + others, n.shape)
    return list(P.t(x))


rule(_LINEAR, unary, symmetry="linear")
rule(_POSITIVE, unary, symmetry="positive")
rule(_ODD, unary, symmetry="odd")
rule(_OTHER, unary)


@rule("prelu", symmetry="custom")
def prelu(P, n):
    """PReLU: a learned slope per channel (axis 1; one slope for every channel when the
    weight has one element). Positively homogeneous, so scalings pass and the slope is
    not rescaled (role "none"); not odd, so sign flips stop."""
    X = P.t(n.args[0])
    w = P.arg(n, 1, "weight")
    if is_tensor(w):
        if len(X) >= 2 and P.shape(w) and P.shape(w)[0] > 1:
            P.V.unify(P.t(w)[0], X[1])
        if isinstance(w, Param):
            for k in range(len(P.shape(w))):
                P.scale_roles.setdefault(w.name, {})[k] = "none"
    P.forbid(X, f"{n.where()} (PReLU is not odd)", scale=False)
    return list(X)


@rule(("add", "sub", "rsub", "add_", "sub_"), symmetry="custom")
def add(P, n):
    """Operands are tied (a residual add makes one group of both streams). Adding a
    constant breaks scaling and sign flips; a parameter added is scaled with the
    stream (role "out")."""
    res = P.broadcast(list(n.args) + list(n.kwargs.values()), n.shape)
    args = [a for a in n.args if is_tensor(a)]
    scalars = [a for a in n.args if isinstance(a, (int, float)) and not isinstance(a, bool) and a != 0]
    if scalars or any(isinstance(a, Const) for a in args):
        P.forbid(res, f"{n.where()} adds a constant")
    for a in args:
        if isinstance(a, Param):
            for k in range(len(P.shape(a))):
                P.scale_roles.setdefault(a.name, {}).setdefault(k, "out")
    return res


@rule(("mul", "div", "mul_", "div_", "true_divide"), symmetry="custom")
def mul(P, n):
    """Operands are tied. An activation times (or over) a parameter or a constant
    keeps scalings (the parameter is not rescaled: role "none"); a product of two
    activations breaks them."""
    res = P.broadcast(list(n.args) + list(n.kwargs.values()), n.shape)
    args = [a for a in n.args if is_tensor(a)]
    acts = [a for a in args if not isinstance(a, Param)]
    first_only = len(acts) <= 1 and (not acts or n.args[0] == acts[0])
    if not first_only:
        P.forbid(res, f"{n.where()} multiplies activations")
    for a in args:
        if isinstance(a, Param):
            for k in range(len(P.shape(a))):
                P.scale_roles.setdefault(a.name, {})[k] = "none"
            P.forbid(P.t(a), f"{n.where()} scales by a parameter", scale=False)
    return res


@rule(("pow", "maximum", "minimum", "where", "masked_fill", "masked_fill_", "eq", "ne", "lt",
       "le", "gt", "ge", "logical_and", "logical_or", "bitwise_and", "bitwise_or", "lerp", "fmod",
       "remainder", "atan2", "addcmul", "addcdiv", "floor_divide"))
def broadcast(P, n):
    """Any other elementwise op of several tensors: operands tied by broadcasting."""
    return P.broadcast(list(n.args) + list(n.kwargs.values()), n.shape)


@rule(("zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like", "empty_like",
       "new_zeros", "new_ones", "new_full", "new_empty", "scalar_tensor"), symmetry="custom")
def filled(P, n):
    """A tensor with one value everywhere: any permutation of any axis leaves it as is,
    but it is not rescaled with the groups it meets (scalings and sign flips stop)."""
    res = P.fresh_like(n.shape, fixed=False)
    P.forbid(res, f"{n.where()} (a constant tensor)")
    return res


@rule(("arange", "tensor", "rand", "randn", "linspace", "tril", "triu", "eye"))
def constant(P, n):
    """Values that depend on positions (arange, masks): every axis fixed."""
    for a in P.tensor_args(n):
        for s in P.t(a) or []:
            P.V.fix(s)
    return P.fresh_like(n.shape)

