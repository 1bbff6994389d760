"""Fused attention: heads permute (q, k, v together), query/key dims together; keys
and values permute together along the sequence (attention reads them as a set)."""
from __future__ import annotations

from .registry import StructArg, is_tensor, rule


@rule("scaled_dot_product_attention")
def scaled_dot_product_attention(P, n):
    q, k, v = n.args[0], n.args[1], n.args[2]
    mask = P.arg(n, 3, "attn_mask")
    causal = bool(P.arg(n, 5, "is_causal", False))
    gqa = bool(n.kwargs.get("enable_gqa", False))
    Q, K, Vv = P.t(q), P.t(k), P.t(v)
    sq, sk, sv = P.shape(q), P.shape(k), P.shape(v)
    P.V.unify(Q[-1], K[-1])
    P.V.unify(K[-2], Vv[-2])
    batch = []
    for j in range(1, max(len(sq), len(sk), len(sv)) - 1):
        cands = [S[-2 - j] for S, sh in ((Q, sq), (K, sk), (Vv, sv)) if len(sh) >= j + 2 and sh[-2 - j] > 1]
        if gqa:  # query heads share key/value heads in blocks: not expressed, fixed
            for c in cands:
                P.V.fix(c)
        for c in cands[1:]:
            P.V.unify(cands[0], c)
        batch.insert(0, cands[0] if cands else ((),))
    scores = tuple(list(n.shape[:-2]) + [sq[-2], sk[-2]])
    if mask is not None and is_tensor(mask):
        P.broadcast([mask, StructArg(batch + [Q[-2], K[-2]], scores)], scores)
    if causal:
        P.V.fix(Q[-2])
        P.V.fix(K[-2])
    return batch + [Q[-2], Vv[-1]]
