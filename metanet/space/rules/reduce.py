"""Reductions, scans and pooling.

A reduction over an axis is invariant to permuting it: the other axes keep their
structure, a kept (keepdim) axis has size 1. Pooling and resampling fix the spatial
axes they move and pass channels through."""
from __future__ import annotations

import re

from .registry import is_tensor, rule


def _dims(d, ndim: int) -> list[int]:
    if d is None:
        return list(range(ndim))
    if isinstance(d, int):
        d = [d]
    if len(d) == 0:
        return list(range(ndim))
    return sorted({x % ndim for x in d})


def reduce(P, n, dims_arg, keep_arg, fix_reduced: bool = False):
    x = n.args[0]
    X, sx = P.t(x), P.shape(x)
    dims = _dims(dims_arg, len(sx))
    if fix_reduced:  # positions along the reduced axes are part of the result (argmax)
        for d in dims:
            P.V.fix(X[d])
    res = []
    for k, s in enumerate(X):
        if k not in dims:
            res.append(s)
        elif keep_arg:
            res.append(((),))
    # a sum of channels scaled by different factors is not a scaled sum
    P.forbid([X[d] for d in dims], f"{n.where()} reduces over a neuron axis")
    return res


@rule(("mean", "sum"), symmetry="linear")
def mean(P, n):
    return reduce(P, n, P.arg(n, 1, "dim"), P.arg(n, 2, "keepdim", False))


@rule(("amax", "amin"), symmetry="positive")
def amax(P, n):
    return reduce(P, n, P.arg(n, 1, "dim"), P.arg(n, 2, "keepdim", False))


@rule(("logsumexp", "prod", "any", "all"))
def other_reduction(P, n):
    return reduce(P, n, P.arg(n, 1, "dim"), P.arg(n, 2, "keepdim", False))


@rule("linalg_vector_norm")
def vector_norm(P, n):
    return reduce(P, n, P.arg(n, 2, "dim"), P.arg(n, 3, "keepdim", False))


@rule(("var", "std"))
def var(P, n):
    return reduce(P, n, P.arg(n, 1, "dim"), n.kwargs.get("keepdim", P.arg(n, 3, "keepdim", False)))


@rule(("max", "min"))
def max_(P, n):
    """With a dim: (values, indices); the indices are positions, so the reduced axis is
    fixed. Without: a scalar. With a second tensor: the elementwise maximum."""
    if len(n.args) > 1 and is_tensor(n.args[1]):
        return P.broadcast(list(n.args), n.shape)
    if isinstance(n.shape, list):
        X = reduce(P, n, P.arg(n, 1, "dim"), P.arg(n, 2, "keepdim", False), fix_reduced=True)
        return [X, list(X)]
    return reduce(P, n, None, False)


@rule(("argmax", "argmin"))
def argmax(P, n):
    return reduce(P, n, P.arg(n, 1, "dim"), P.arg(n, 2, "keepdim", False), fix_reduced=True)


@rule(("cumsum", "cumprod"))
def cumsum(P, n):
    """A scan depends on the order along its axis: that axis is fixed."""
    X = P.t(n.args[0])
    P.V.fix(X[int(P.arg(n, 1, "dim")) % len(X)])
    return list(X)


def pool(P, n):
    """The trailing ``k`` spatial axes (k from the op name, e.g. 2 for max_pool2d) are
    fixed and resampled; the axes before them (channels, batch) pass through."""
    x = n.args[0]
    X, sx = P.t(x), P.shape(x)
    m = re.search(r"(\d)d", n.op)
    nsp = int(m.group(1)) if m else 2
    shape = n.shape[0] if isinstance(n.shape, list) else n.shape
    for s in X[len(sx) - nsp:]:
        P.V.fix(s)
    res = list(X[:len(sx) - nsp]) + P.fresh(shape[len(sx) - nsp:])
    if isinstance(n.shape, list):
        return [res] + [P.fresh(s) for s in n.shape[1:]]
    return res


rule(("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
      "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "upsample_nearest1d", "upsample_nearest2d",
      "upsample_nearest3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
      "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
      "upsample_trilinear3d"), pool, symmetry="linear")
rule(("max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
      "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d",
      "adaptive_max_pool3d"), pool, symmetry="positive")
rule(("upsample_bicubic2d", "lp_pool1d", "lp_pool2d"), pool)


@rule("pixel_shuffle", symmetry="linear")
def pixel_shuffle(P, n):
    """(.., C·r², H, W) -> (.., C, H·r, W·r): channels are (c, r²) with the r² block
    fixed; c permutes."""
    x, r = n.args[0], int(n.args[1])
    X, sx = P.t(x), P.shape(x)
    c = P.V.atom(sx[-3] // (r * r), neuron=True)
    P.V.unify(X[-3], P.prod(c, P.V.fixed_struct(r * r, neuron=False)))
    for s in X[-2:]:
        P.V.fix(s)
    return list(X[:-3]) + [c] + P.fresh(n.shape[-2:])


@rule("pixel_unshuffle", symmetry="linear")
def pixel_unshuffle(P, n):
    """(.., C, H, W) -> (.., C·r², H/r, W/r): channels become (c, r²)."""
    x, r = n.args[0], int(n.args[1])
    X = P.t(x)
    out = P.prod(X[-3], P.V.fixed_struct(r * r, neuron=False))
    if out is None:
        return P.give_up(n, f"{n.where()}: pixel_unshuffle of concatenated channels; axes through it are fixed")
    for s in X[-2:]:
        P.V.fix(s)
    return list(X[:-3]) + [out] + P.fresh(n.shape[-2:])


@rule(("channel_shuffle", "native_channel_shuffle"), symmetry="linear")
def channel_shuffle(P, n):
    """(N, C, ...) with C = (g, C/g) -> channels (C/g, g): the two factors swap places."""
    x, g = n.args[0], int(P.arg(n, 1, "groups"))
    X, sx = P.t(x), P.shape(x)
    a, b = P.V.atom(g, neuron=True), P.V.atom(sx[1] // g, neuron=True)
    P.V.unify(X[1], P.prod(a, b))
    out = P.prod(b, a)
    return [X[0], out] + list(X[2:])

