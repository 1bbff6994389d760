"""Linear maps with weights: linear layers, matrix products, einsum, convolutions,
embeddings. These give parameters their edge roles (which axis is "in", which "out")."""
from __future__ import annotations


from ...trace.graph import Param
from .registry import StructArg, rule


@rule(("linear", "_linear"), symmetry="custom")
def linear(P, n):
    """y = x W^T + b: x's features are W's columns; y's features are W's rows and b."""
    x, w = n.args[0], n.args[1]
    b = P.arg(n, 2, "bias")
    X, W = P.t(x), P.t(w)
    P.V.unify(X[-1], W[1])
    if b is not None:
        P.V.unify(P.t(b)[0], W[0])
        P.role(b, 0, "out")
    P.role(w, 0, "out")
    P.role(w, 1, "in")
    P.forbid(X[:-1], f"{n.where()} (batch axes)")
    if not isinstance(w, Param):
        P.forbid(W, f"{n.where()} with a computed weight")
    return list(X[:-1]) + [W[0]]


def _mm(P, n, a, b):
    A, B = P.t(a), P.t(b)
    sa, sb = P.shape(a), P.shape(b)
    if len(sa) == 1:
        A, sa = [((),)] + list(A), (1,) + sa
    if len(sb) == 1:
        B, sb = list(B) + [((),)], sb + (1,)
    P.V.unify(A[-1], B[-2])
    batch = []
    for k in range(3, max(len(sa), len(sb)) + 1):
        cands = [S[-k] for S, sh in ((A, sa), (B, sb)) if len(sh) >= k and sh[-k] > 1]
        for c in cands[1:]:
            P.V.unify(cands[0], c)
        n_k = max((sh[-k] for sh in (sa, sb) if len(sh) >= k), default=1)
        batch.insert(0, cands[0] if cands else ((),) if n_k == 1 else P.V.atom(n_k))
    res = batch + [A[-2], B[-1]]
    if len(P.shape(a)) == 1:
        res.pop(-2)
    if len(P.shape(b)) == 1:
        res.pop(-1)
    params = [p for p in (a, b) if isinstance(p, Param)]
    if len(params) == 1 and len(P.shape(params[0])) == 2:
        if params[0] is b:
            P.role(b, 0, "in")
            P.role(b, 1, "out")
        else:
            P.role(a, 0, "out")
            P.role(a, 1, "in")
        P.forbid(batch, f"{n.where()} (batch axes)")
    else:
        P.forbid([A, B, res], f"{n.where()} multiplies activations")
    return res


@rule(("mm", "matmul", "bmm"), symmetry="custom")
def matmul(P, n):
    """Contracted axes are tied; batch axes broadcast; a 2-D parameter operand is a weight."""
    return _mm(P, n, n.args[0], n.args[1])


@rule("addmm", symmetry="custom")
def addmm(P, n):
    res = _mm(P, n, n.args[1], n.args[2])
    bias = n.args[0]
    B, sb = P.t(bias), P.shape(bias)
    for k in range(1, len(sb) + 1):
        if sb[-k] > 1:
            P.V.unify(B[-k], res[-k])
            P.role(bias, len(sb) - k, "out")
    return res


@rule("baddbmm", symmetry="custom")
def baddbmm(P, n):
    """beta * input + alpha * (batch1 @ batch2): the product as in bmm, the added tensor
    broadcast against it (ALiBi's position bias, for one). Permutations pass; the added
    tensor is not rescaled with the product, so scalings and sign flips stop."""
    res = _mm(P, n, n.args[1], n.args[2])
    out = P.broadcast([n.args[0], StructArg(res, n.shape)], n.shape)
    P.forbid(out, f"{n.where()} adds a tensor to a product")
    return out


@rule("einsum")
def einsum(P, n):
    """Axes named by one letter are tied; output axes take their letter's structure."""
    eq, ops = n.args[0], n.args[1]
    if "..." in eq:
        return P.give_up(n, f"{n.where()}: einsum with '...' is not understood; axes through it are fixed")
    lhs, rhs = eq.replace(" ", "").split("->")
    letters: dict[str, tuple] = {}
    for spec, a in zip(lhs.split(","), ops):
        for ch, s, size in zip(spec, P.t(a), P.shape(a)):
            if size == 1:
                continue
            if ch in letters:
                P.V.unify(letters[ch], s)
            else:
                letters[ch] = s
    return [letters.get(ch, ((),) if size == 1 else P.V.atom(size)) for ch, size in zip(rhs, n.shape)]


def conv(P, n, x, w, b, groups: int, transposed: bool):
    """Channels: input channels are the weight's axis 1 (axis 0 when transposed),
    output channels its axis 0 (axis 1). With G groups, channels are (group, channel in
    group): whole groups permute, with the same map inside every group. Kernel and
    spatial axes are fixed."""
    X, W = P.t(x), P.t(w)
    sx, sw = P.shape(x), P.shape(w)
    ch = len(sx) - (len(sw) - 2) - 1
    G = int(groups)
    g = P.V.atom(G)
    if transposed:   # weight (Cin, Cout/G, *k)
        inp = P.prod(g, P.V.atom(sx[ch] // G)) if G > 1 else W[0]
        out_ch = P.prod(g, W[1])
    else:            # weight (Cout, Cin/G, *k)
        inp = P.prod(g, W[1])
        out_ch = W[0] if G == 1 else P.prod(g, P.V.atom(sw[0] // G))
    if inp is None or out_ch is None:
        return P.give_up(n, f"{n.where()}: convolution weight axis is a concatenation; "
                            f"axes through it are fixed")
    P.V.unify(X[ch], inp)
    if transposed:
        P.V.unify(X[ch], W[0])
    elif G > 1:
        P.V.unify(W[0], out_ch)
    for k in range(2, len(sw)):
        P.V.fix(W[k])
    for k in range(ch + 1, len(sx)):
        P.V.fix(X[k])
    if b is not None:
        P.V.unify(P.t(b)[0], out_ch)
        P.role(b, 0, "out")
    P.role(w, 0, "in" if transposed else "out")
    P.role(w, 1, "out" if transposed else "in")
    if isinstance(w, Param):
        for k in range(2, len(sw)):
            P.scale_roles.setdefault(w.name, {})[k] = "none"
    if G > 1 or not isinstance(w, Param):
        P.forbid([X[ch], out_ch], f"{n.where()} (grouped convolution)")
    return list(X[:ch]) + [out_ch] + P.fresh(n.shape[ch + 1:])


@rule(("conv1d", "conv2d", "conv3d"), symmetry="custom")
def conv_nd(P, n):
    return conv(P, n, n.args[0], n.args[1], P.arg(n, 2, "bias"), P.arg(n, 6, "groups", 1), False)


@rule(("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"), symmetry="custom")
def conv_transpose_nd(P, n):
    return conv(P, n, n.args[0], n.args[1], P.arg(n, 2, "bias"), P.arg(n, 6, "groups", 1), True)


@rule(("convolution", "_convolution"), symmetry="custom")
def convolution(P, n):
    return conv(P, n, n.args[0], n.args[1], P.arg(n, 2, "bias"), P.arg(n, 8, "groups", 1),
                bool(P.arg(n, 6, "transposed", False)))


@rule("embedding", symmetry="custom")
def embedding(P, n):
    """Rows are looked up by id (fixed: the vocabulary); columns are the features."""
    w, ids = n.args[0], n.args[1]
    W = P.t(w)
    P.V.fix(W[0])
    P.extra_neuron.append(W[0])
    P.role(w, 0, "in")
    P.role(w, 1, "out")
    return list(P.t(ids)) + [W[1]]


@rule(("embedding_bag", "_embedding_bag", "_embedding_bag_forward_only"), symmetry="custom")
def embedding_bag(P, n):
    """Bags of rows summed, averaged or max-pooled column by column: rows (the vocabulary)
    fixed, columns the features. Sum and mean are linear in the table (scalings and sign
    flips pass with its columns); max (mode 2) is positively homogeneous only."""
    w = n.args[0]
    W = P.t(w)
    P.V.fix(W[0])
    P.extra_neuron.append(W[0])
    P.role(w, 0, "in")
    P.role(w, 1, "out")
    if not isinstance(w, Param):
        P.forbid(W, f"{n.where()} with a computed table")
    if int(P.arg(n, 4, "mode", 0)) == 2:
        P.forbid([W[1]], f"{n.where()} (max over a bag)", scale=False)
    shapes = n.shape if isinstance(n.shape, list) else [n.shape]
    out = P.fresh(shapes[0][:-1]) + [W[1]]
    return [out] + [P.fresh_like(s) for s in shapes[1:]] if isinstance(n.shape, list) else out


@rule("bilinear", symmetry="custom")
def bilinear(P, n):
    """y_k = x1ᵀ W_k x2 + b_k: x1's features are W's axis 1, x2's its axis 2 (scaled and
    sign-flipped like inputs: the map is linear in each), y's features W's axis 0 and b."""
    x1, x2, w = n.args[0], n.args[1], n.args[2]
    b = P.arg(n, 3, "bias")
    X1, X2, W = P.t(x1), P.t(x2), P.t(w)
    P.V.unify(X1[-1], W[1])
    P.V.unify(X2[-1], W[2])
    for a, c in zip(X1[:-1], X2[:-1]):
        P.V.unify(a, c)
    if b is not None:
        P.V.unify(P.t(b)[0], W[0])
        P.role(b, 0, "out")
    P.role(w, 0, "out")
    P.role(w, 1, "in")
    P.role(w, 2, "in")
    P.forbid(X1[:-1], f"{n.where()} (batch axes)")
    if not isinstance(w, Param):
        P.forbid(W, f"{n.where()} with a computed weight")
    return list(X1[:-1]) + [W[0]]

