"""Graph features that mean the same in every architecture.

Indices of tensors (``edge_type``) and of node sets (``node_type``) are bookkeeping:
tensor 17 of a CNN and tensor 17 of a ResNet have nothing in common. The features here
are defined for every architecture alike, from the trace:

- the *role* of each edge's tensor (:data:`ROLES`): which op reads it and in which
  argument (the weight of a linear, convolution, embedding or attention projection; a
  bias; a norm's scale or shift; running statistics; a parameter added to or multiplied
  with activations), or which parameter-free structure a structural edge stands for;
- the *depth* of the op that reads it: its longest-path rank from the model inputs in
  the op graph, divided by the longest path of the whole graph (0 at the input, 1 at
  the output);
- the *kind* of each node (:data:`NODE_KINDS`): input, hidden, output or hub, and its
  depth (the depth of the shallowest layer that writes it; 0 for inputs).

Every one of them is constant on a node set, and so on every neuron group: permuting
neurons cannot change them (equivariance holds as before).
"""
from __future__ import annotations

from ..trace.graph import Param

#: edge roles; the order is stable (metanetworks embed the index)
ROLES: tuple[str, ...] = (
    "linear.weight", "conv.weight", "conv_transpose.weight", "embedding.weight",
    "attention.in_weight", "attention.out_weight", "recurrent.weight", "bias",
    "norm.scale", "norm.shift", "norm.running_mean", "norm.running_var",
    "additive", "multiplicative", "other",
    "struct.concat", "struct.product",
)
ROLE_INDEX = {r: i for i, r in enumerate(ROLES)}

#: node kinds; the order is stable
NODE_KINDS: tuple[str, ...] = ("input", "hidden", "output", "hub")
KIND_INDEX = {k: i for i, k in enumerate(NODE_KINDS)}

_WEIGHTED = {"linear": "linear.weight", "conv": "conv.weight",
             "conv_transpose": "conv_transpose.weight"}
_NORMS = {"layer_norm", "group_norm", "rms_norm", "instance_norm"}
# ops that pass an attention projection's output on unchanged in meaning
_THROUGH = {"reshape", "split", "getitem", "identity", "dropout", "mul", "cat"}
_ATTENTION = {"attention", "matmul"}


def op_depths(op_graph) -> list[float]:
    """Longest-path rank of every op from the inputs, normalised to [0, 1]."""
    depth = [0] * len(op_graph.nodes)
    for n in op_graph.nodes:  # nodes are in topological order
        if n.inputs:
            depth[n.index] = max(depth[i] for i in n.inputs) + 1
    top = max(depth) if depth else 0
    return [d / top if top else 0.0 for d in depth]


def _reaches(op_graph, start: int, forward: bool) -> bool:
    """Whether an attention product is reached from op ``start`` through ops that keep
    the projection's meaning (reshapes, splits, casts, scalings)."""
    nodes = op_graph.nodes
    users: dict[int, list[int]] = {}
    if forward:
        for n in nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n.index)
    todo, seen = [start], {start}
    while todo:
        i = todo.pop()
        nxt = users.get(i, []) if forward else list(nodes[i].inputs)
        for j in nxt:
            if j in seen:
                continue
            seen.add(j)
            if nodes[j].kind in _ATTENTION:
                return True
            if nodes[j].kind in _THROUGH:
                todo.append(j)
    return False


def _param_positions(node) -> dict[str, int]:
    """Position of every parameter among the op's positional arguments (lists, as in
    fused recurrent layers, count as one position each element)."""
    out: dict[str, int] = {}
    for pos, a in enumerate(node.args):
        items = a if isinstance(a, (list, tuple)) else [a]
        for b in items:
            if isinstance(b, Param):
                out.setdefault(b.name, pos)
    return out


def tensor_roles(ws) -> tuple[dict[str, str], dict[str, float]]:
    """Role and depth of every weight tensor of ``ws`` (see :data:`ROLES`), read from
    the op that first reads it."""
    g = ws.op_graph
    depth = op_depths(g)
    aliases = ws.aliases
    first: dict[str, object] = {}
    for n in g.nodes:
        for p in n.params:
            first.setdefault(aliases.get(p, p), n)
    roles: dict[str, str] = {}
    depths: dict[str, float] = {}
    for name in ws.weights:
        n = first.get(name)
        if n is None:
            roles[name], depths[name] = "other", 0.0
            continue
        depths[name] = depth[n.index]
        pos = _param_positions(n)
        p = pos.get(name)
        if p is None:  # read under its tied name
            p = next((v for k, v in pos.items() if aliases.get(k, k) == name), None)
        ndim = len(ws.shapes[name])
        if n.kind in _WEIGHTED:
            if p == 1 or (p is None and ndim >= 2):
                role = _WEIGHTED[n.kind]
                if n.kind == "linear":
                    if _reaches(g, n.index, forward=True):
                        role = "attention.in_weight"
                    elif _reaches(g, n.index, forward=False):
                        role = "attention.out_weight"
            else:
                role = "bias"
        elif n.kind == "embedding":
            role = "embedding.weight"
        elif n.kind == "batch_norm" or (n.kind == "instance_norm" and p is not None and p >= 3):
            role = {1: "norm.scale", 2: "norm.shift", 3: "norm.running_mean",
                    4: "norm.running_var"}.get(p, "other")
        elif n.kind in _NORMS:
            in_order = [aliases.get(k, k) for _, k in sorted((v, k) for k, v in pos.items())]
            rank = in_order.index(name) if name in in_order else 0
            role = "norm.scale" if rank == 0 else "norm.shift"
        elif n.kind == "recurrent":
            role = "recurrent.weight" if ndim >= 2 else "bias"
        elif n.kind == "add":
            role = "additive"
        elif n.kind == "mul":
            role = "multiplicative"
        else:
            role = "other"
        roles[name] = role
    return roles, depths
