"""Fused recurrent layers (LSTM, GRU, RNN)."""
from __future__ import annotations

from .registry import is_tensor, rule


def recurrent(P, n, gates: int):
    """The hidden units of each layer and direction permute; gate blocks are fixed
    (rows = gate x hidden unit).

    The final states ``h_n`` (and ``c_n``) stack every layer and direction along their
    first axis, so their feature axis is moved by *each* layer's permutation in its own
    slice: one structure can describe it only if all layers and directions share one
    permutation. So where the final states are read (or an initial state is given,
    whose one axis serves every layer), all layers and directions are tied to one group;
    otherwise each keeps its own."""
    x, hx, params = n.args[0], n.args[1], list(n.args[2])
    has_bias, layers, bidir, batch_first = bool(n.args[3]), int(n.args[4]), bool(n.args[7]), bool(n.args[8])
    dirs = 2 if bidir else 1
    per = 4 if has_bias else 2
    if len(params) != layers * dirs * per:
        return P.give_up(n, f"{n.where()}: recurrent layer with projections is not "
                            f"understood; axes through it are fixed")
    X = list(P.t(x))
    seq = 0 if not batch_first else 1
    if len(X) == 3:
        P.V.fix(X[seq])
    H = P.shape(params[1])[1]
    states = [hx] if is_tensor(hx) else [a for a in hx if is_tensor(a)]
    # constant initial states (zeros) are unchanged by any permutation
    states = [s for s in states if not P.is_filled(s)]
    tied = P.V.atom(H) if (states or P.output_used(n, 1, 2)) else None
    inp = X[-1]
    hidden = []
    for layer in range(layers):
        hidden = []
        for d in range(dirs):
            base = (layer * dirs + d) * per
            w_ih, w_hh = params[base: base + 2]
            h = tied if tied is not None else P.V.atom(H)
            rows = P.prod(P.V.fixed_struct(gates, neuron=False), h) if gates > 1 else h
            P.V.unify(P.t(w_ih)[0], rows)
            P.V.unify(P.t(w_ih)[1], inp)
            P.V.unify(P.t(w_hh)[0], rows)
            P.V.unify(P.t(w_hh)[1], h)
            for w in (w_ih, w_hh):
                P.role(w, 0, "out")
                P.role(w, 1, "in")
            if has_bias:
                for b in params[base + 2: base + 4]:
                    P.V.unify(P.t(b)[0], rows)
                    P.role(b, 0, "out")
            hidden.append(h)
        inp = tuple(seg for h in hidden for seg in P.V.resolve(h))
    if tied is not None:
        for s in states:
            P.V.unify(P.t(s)[-1], tied)
    P.forbid([P.t(p) for p in params], f"{n.where()} (gates)")
    shapes = n.shape
    out = list(X[:-1]) + [inp]
    if len(X) == 3:
        out[seq] = P.V.fixed_struct(shapes[0][seq])
    # (layers x directions, batch, hidden); unread final states get fresh fixed axes
    state = [P.V.fixed_struct(shapes[1][0]), P.V.atom(shapes[1][1]),
             tied if tied is not None else P.V.fixed_struct(H)]
    return [out] + [list(state) for _ in shapes[1:]]


@rule("lstm")
def lstm(P, n):
    return recurrent(P, n, 4)


@rule("gru")
def gru(P, n):
    return recurrent(P, n, 3)


@rule(("rnn_tanh", "rnn_relu"))
def rnn(P, n):
    return recurrent(P, n, 1)
