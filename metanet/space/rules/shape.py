"""Ops that move, cut, join or repeat axes: views, permutes, expands, repeats,
concatenation and stacking, slicing, splitting, selection, indexing, padding, rolls.

Slicing is where a trace could see a symmetry that only holds at the traced shape:
``pos[:, :L]`` of a 16-row table traced at L = 10 leaves 6 rows unused, and nothing
there says they may not be permuted. So no part of a slice is a group where the slice's
bound could follow the input: the sliced axis of a tensor computed from parameters
alone (no model input flows into it) is fixed, and so is the skipped part where the
part taken ends up fixed (positions) — see ``Propagator._fix_skipped``."""
from __future__ import annotations

from math import prod

from .registry import is_tensor, rule


@rule(("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
       "view_as", "reshape_as"), symmetry="linear")
def view(P, n):
    """Row-major reshape: axes merge into products and split back into factors
    (channels x positions of a flatten; heads x dims of an attention split)."""
    x = n.args[0]
    X, sin, sout = P.t(x), list(P.shape(x)), list(n.shape)
    res: list = [((),) if s == 1 else None for s in sout]
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
                return P.give_up(n, f"{n.where()}: reshape {sin} -> {sout} not understood; "
                                    f"axes through it are fixed")
        merged = P.V.product([X[k] for k, _ in bi]) if bi else ((),)
        pieces = P.V.split(merged, [s for _, s in bo]) if bo else []
        for (k, _), p in zip(bo, pieces):
            res[k] = p
    return [r if r is not None else P.V.atom(sout[k], fixed=True, neuron=True) for k, r in enumerate(res)]


@rule("permute", symmetry="linear")
def permute(P, n):
    X = P.t(n.args[0])
    return [X[d % len(X)] for d in n.args[1]]


@rule(("transpose", "swapaxes", "swapdims"), symmetry="linear")
def transpose(P, n):
    X = list(P.t(n.args[0]))
    a, b = int(n.args[1]) % len(X), int(n.args[2]) % len(X)
    X[a], X[b] = X[b], X[a]
    return X


@rule(("t", "numpy_T"), symmetry="linear")
def t(P, n):
    """Reverses the axes (``x.t()``, ``x.T``)."""
    return list(reversed(P.t(n.args[0])))


@rule("movedim", symmetry="linear")
def movedim(P, n):
    X = list(P.t(n.args[0]))
    src, dst = n.args[1], n.args[2]
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    order = [k for k in range(len(X)) if k not in [s % len(X) for s in src]]
    for s, d in sorted(zip([s % len(X) for s in src], [d % len(X) for d in dst]), key=lambda p: p[1]):
        order.insert(d, s)
    return [X[k] for k in order]


@rule(("expand", "broadcast_to", "expand_as"), symmetry="linear")
def expand(P, n):
    """New or size-1 axes broadcast to size k hold k copies of the same values: any
    permutation of them changes nothing (a fresh free atom)."""
    x = n.args[0]
    X, sx = P.t(x), P.shape(x)
    out = tuple(n.shape)
    off = len(out) - len(sx)
    res = []
    for k, size in enumerate(out):
        if k < off or (sx[k - off] == 1 and size != 1):
            res.append(_copies(P, n, size))
        else:
            res.append(X[k - off])
    return res


def _copies(P, n, size: int):
    """An axis of ``size`` equal copies: they may be permuted, but not scaled or
    flipped one by one (nothing upstream would absorb a factor per copy)."""
    s = P.V.atom(size, neuron=True)
    P.forbid([s], f"{n.where()} (copies of one value)")
    return s


@rule("repeat", symmetry="linear")
def repeat(P, n):
    """Tiling r times: the axis is the concatenation of r copies of its structure (each
    copy moved by the same permutation)."""
    x = n.args[0]
    X, sx = P.t(x), P.shape(x)
    reps = list(n.args[1])
    off = len(reps) - len(sx)
    res = []
    for k, r in enumerate(reps):
        if k < off:
            res.append(_copies(P, n, r))
        elif r == 1:
            res.append(X[k - off])
        elif sx[k - off] == 1:
            res.append(_copies(P, n, r))
        else:
            res.append(tuple(P.V.resolve(X[k - off])) * int(r))
    return res


@rule(("cat", "concat"), symmetry="linear")
def cat(P, n):
    """The joined axis is the concatenation of the blocks' structures (each block
    permutes inside itself); the other axes are tied."""
    tensors = [a for a in n.args[0] if is_tensor(a) and prod(P.shape(a)) > 0]
    nd = len(P.shape(tensors[0]))
    d = int(P.arg(n, 1, "dim", 0)) % nd
    structs = [list(P.t(a)) for a in tensors]
    res = []
    for k in range(nd):
        if k == d:
            res.append(tuple(seg for S in structs for seg in P.V.resolve(S[k])))
        else:
            if P.shape(tensors[0])[k] > 1:
                for S in structs[1:]:
                    P.V.unify(structs[0][k], S[k])
            res.append(structs[0][k])
    return res


@rule("stack", symmetry="linear")
def stack(P, n):
    tensors = [a for a in n.args[0] if is_tensor(a)]
    d = int(P.arg(n, 1, "dim", 0)) % (len(P.shape(tensors[0])) + 1)
    structs = [list(P.t(a)) for a in tensors]
    for S in structs[1:]:
        for k, s in enumerate(S):
            if P.shape(tensors[0])[k] > 1:
                P.V.unify(structs[0][k], s)
    res = list(structs[0])
    res.insert(d, P.V.fixed_struct(len(tensors)))
    return res


@rule("select", symmetry="linear")
def select(P, n):
    """One index along an axis: that axis is fixed (its positions are named)."""
    X = list(P.t(n.args[0]))
    d = int(n.args[1]) % len(X)
    P.V.fix(X[d])
    return X[:d] + X[d + 1:]


@rule("unbind", symmetry="linear")
def unbind(P, n):
    X = list(P.t(n.args[0]))
    d = int(P.arg(n, 1, "dim", 0)) % len(X)
    P.V.fix(X[d])
    return [X[:d] + X[d + 1:] for _ in n.shape]


def pieces(P, X, d: int, sizes: list[int]):
    """Structures of consecutive pieces of axis d (a free group becomes a
    concatenation of smaller groups; a cut that does not follow the structure fixes)."""
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    cut = P.V.cut(X[d], bounds)
    if cut is None:
        P.V.fix(X[d])
        cut = [P.V.fixed_struct(s) for s in sizes]
    return [X[:d] + [c] + X[d + 1:] for c in cut]


@rule(("split", "split_with_sizes", "chunk", "tensor_split"), symmetry="linear")
def split(P, n):
    X = list(P.t(n.args[0]))
    d = int(P.arg(n, 2, "dim", 0)) % len(X)
    return pieces(P, X, d, [s[d] for s in n.shape])


def _take(P, n, x, d: int, start: int, end: int):
    """The piece [start, end) of axis d; the rest is recorded as skipped."""
    X, size = list(P.t(x)), P.shape(x)[d]
    if start == 0 and end >= size:
        return X
    bounds = sorted({0, start, end, size})
    parts = pieces(P, X, d, [b - a for a, b in zip(bounds, bounds[1:])])
    k = bounds.index(start)
    skipped = [p[d] for i, p in enumerate(parts) if i != k]
    P.sliced(x, parts[k][d], skipped)
    return parts[k]


@rule("slice", symmetry="linear")
def slice_(P, n):
    x = n.args[0]
    X, sx = list(P.t(x)), P.shape(x)
    d = int(P.arg(n, 1, "dim", 0)) % len(X)
    size = sx[d]
    start, end = P.arg(n, 2, "start", None), P.arg(n, 3, "end", None)
    step = P.arg(n, 4, "step", 1) or 1
    start = 0 if start is None else (max(start + size, 0) if start < 0 else min(start, size))
    end = size if end is None else (max(end + size, 0) if end < 0 else min(end, size))
    if step != 1:
        P.V.fix(X[d])
        return X[:d] + [P.V.fixed_struct(n.shape[d])] + X[d + 1:]
    return _take(P, n, x, d, start, end)


@rule("narrow", symmetry="linear")
def narrow(P, n):
    x = n.args[0]
    d, start, length = int(n.args[1]) % len(P.shape(x)), int(n.args[2]), int(n.args[3])
    if start < 0:
        start += P.shape(x)[d]
    return _take(P, n, x, d, start, start + length)


@rule(("constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
       "replication_pad1d", "replication_pad2d", "replication_pad3d"))
def pad(P, n):
    """Padded axes gain positions that belong to no neuron: they are fixed."""
    X = list(P.t(n.args[0]))
    amounts = list(n.args[1])
    res = list(X)
    for j in range(len(amounts) // 2):
        d = len(X) - 1 - j
        if amounts[2 * j] or amounts[2 * j + 1]:
            P.V.fix(X[d])
            res[d] = P.V.fixed_struct(n.shape[d])
    return res


@rule(("roll", "flip"), symmetry="linear")
def roll(P, n):
    """roll/flip move positions along some axes: those are fixed, the rest pass."""
    X = list(P.t(n.args[0]))
    dims = P.arg(n, 2 if n.op == "roll" else 1, "dims")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        dims = list(range(len(X)))
    for d in [dims] if isinstance(dims, int) else dims:
        P.V.fix(X[int(d) % len(X)])
    return X


@rule("index", symmetry="linear")
def index(P, n):
    """``x[..., idx, ...]`` with one index tensor: the indexed axis is fixed and
    replaced by the index tensor's axes."""
    x, indices = n.args[0], list(n.args[1])
    X = list(P.t(x))
    pos = [k for k, a in enumerate(indices) if a is not None]
    if len(pos) != 1 or not is_tensor(indices[pos[0]]):
        return P.give_up(n)
    k = pos[0]
    size = P.shape(x)[k]
    values = P.const_values(indices[k])
    if values is not None and len(P.shape(indices[k])) == 1 and values:
        # a constant list of consecutive positions (x[..., [-2], :]) is a slice
        vals = [v % size for v in values]
        if vals == list(range(vals[0], vals[0] + len(vals))):
            return _take(P, n, x, k, vals[0], vals[0] + len(vals))
    res = X[:k] + list(P.t(indices[k])) + X[k + 1:]
    if len(res) != len(n.shape):
        return P.give_up(n)
    P.V.fix(X[k])
    return res


@rule("index_select", symmetry="linear")
def index_select(P, n):
    X = list(P.t(n.args[0]))
    d = int(n.args[1]) % len(X)
    P.V.fix(X[d])
    return X[:d] + [P.V.fixed_struct(n.shape[d])] + X[d + 1:]


@rule("getitem", symmetry="linear")
def getitem(P, n):
    """One output of a multi-output op (its structures were made by that op's rule)."""
    return P.out[n.args[0].index][int(n.args[1])]
