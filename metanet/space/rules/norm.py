"""Normalisations: per-channel parameters and statistics share the channel's group."""
from __future__ import annotations

from .registry import is_tensor, rule


def _channel_params(P, X, params) -> None:
    for p in params:
        if p is not None and is_tensor(p):
            P.V.unify(P.t(p)[0], X)


@rule(("batch_norm", "instance_norm"))
def batch_norm(P, n):
    """Channels (axis 1) carry weight, bias and running statistics."""
    X = P.t(n.args[0])
    _channel_params(P, X[1], [P.arg(n, i, k) for i, k in
                              ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))])
    return list(X)


@rule(("_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit"))
def native_batch_norm(P, n):
    X = batch_norm(P, n)
    return [X, [X[1]], [X[1]]] if isinstance(n.shape, list) else X


def _trailing(P, n, X, params):
    k = len(n.args[1])
    for p in params:
        if p is not None and is_tensor(p):
            Pp = P.t(p)
            for j in range(k):
                P.V.unify(Pp[j], X[len(X) - k + j])


@rule("layer_norm")
def layer_norm(P, n):
    """Normalised over the trailing axes, which weight and bias share."""
    X = P.t(n.args[0])
    _trailing(P, n, X, [P.arg(n, 2, "weight"), P.arg(n, 3, "bias")])
    return list(X)


@rule(("rms_norm", "_fused_rms_norm"))
def rms_norm(P, n):
    X = P.t(n.args[0])
    _trailing(P, n, X, [P.arg(n, 2, "weight")])
    return list(X)


@rule("native_layer_norm")
def native_layer_norm(P, n):
    X = layer_norm(P, n)
    k = len(n.args[1])
    stats = list(X[:-k]) + [((),)] * k
    return [X, stats, stats]


@rule("group_norm")
def group_norm(P, n):
    """Channels = (group, channel in group): whole groups permute, with the same
    permutation inside every group."""
    X = P.t(n.args[0])
    G = int(n.args[1])
    C = P.shape(n.args[0])[1]
    P.V.unify(X[1], (P.V.atom(G)[0] + P.V.atom(C // G)[0],))
    _channel_params(P, X[1], [P.arg(n, 2, "weight"), P.arg(n, 3, "bias")])
    return list(X)
