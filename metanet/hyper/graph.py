"""What a GHN reads: an architecture's op graph as tensors, and the list of parameter
tensors to predict, grouped by shape.

:func:`hyper_graph` turns a model (plus example inputs) into a :class:`HyperGraph`,
cached per architecture (module tree, parameter shapes, input shapes) like
``WeightSpace.of``: many calls on one architecture trace it once.

Invariants:

* every trainable floating-point parameter of the model appears exactly once, either in
  ``tensors`` (to predict) or in ``unpredicted`` with the reason;
* tied parameters (one tensor under several names) are predicted once, under the name
  ``model.named_parameters()`` gives them;
* a tensor is predicted from the first op (in topological order) that reads it;
* nodes are the op graph's nodes in topological order; ``edge_index`` are its data-flow
  edges (source precedes destination).
"""
from __future__ import annotations

import math
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..trace import OpGraph, trace
from ..trace.vocab import KIND_INDEX

__all__ = ["HyperGraph", "TensorSpec", "hyper_graph", "example_inputs_of", "shape_bucket",
           "N_SHAPE_BUCKETS", "N_OP_BUCKETS", "op_bucket", "WEIGHT_KINDS", "NORM_KINDS"]

#: ops whose ≥2-D parameters are weight matrices / kernels with a fan-in
WEIGHT_KINDS = frozenset({"linear", "conv", "conv_transpose", "embedding", "recurrent", "matmul"})
NORM_KINDS = frozenset({"batch_norm", "layer_norm", "group_norm", "rms_norm", "instance_norm"})
N_SHAPE_BUCKETS = 64
N_OP_BUCKETS = 512
_SMALL = 16


def op_bucket(op: str) -> int:
    """A stable id in ``[1, N_OP_BUCKETS)`` of an exact ATen op name (``"mean"``,
    ``"amax"``, ``"leaky_relu"``, ...): the vocabulary's kinds put several ops under one
    kind (``reduce`` holds mean and amax, ``pool`` max and average pooling), and a GHN
    that cannot tell them apart cannot predict the weights around them. 0: no op."""
    if not op:
        return 0
    return 1 + zlib.crc32(op.encode()) % (N_OP_BUCKETS - 1)


def shape_bucket(v: int) -> int:
    """Exact for sizes up to 16, one bucket per power of two above."""
    v = int(v)
    if v <= _SMALL:
        return max(v, 0)
    return min(_SMALL + math.ceil(math.log2(v)) - 4, N_SHAPE_BUCKETS - 1)


@dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor to predict.

    ``head``: "weight" (≥2-D, the main decoder), "classifier" (the weight of a last
    linear layer) or "vector" (1-D: biases, norm scales and shifts). ``slot``: the
    tensor's position among the op's parameters. ``transform``: how the raw decoder
    output is normalised ("fan_in", "norm_scale", "op_bias" (the bias of an op with a
    weight; ``fan_in`` is then that weight's fan-in), "bias", "plain")."""

    name: str
    node: int
    slot: int
    shape: tuple[int, ...]
    head: str
    transform: str
    fan_in: int


@dataclass
class HyperGraph:
    n: int
    kinds: torch.Tensor                   # [N] long, index into KINDS
    shape_feats: torch.Tensor             # [N, 4] long shape buckets of the op's first tensor
    edge_index: torch.Tensor              # [2, E] data-flow edges
    in_degree: torch.Tensor               # [N]
    out_degree: torch.Tensor              # [N]
    tensors: list[TensorSpec]
    unpredicted: dict[str, str]           # name -> reason
    node_kinds: list[str]
    op_ids: torch.Tensor | None = None    # [N] long, op_bucket of each node's exact ATen op
    out_feats: torch.Tensor | None = None  # [N, 2] long shape buckets of the op's output:
                                           # axis 1 (channels) and the product of the rest
    _cache: dict = field(default_factory=dict, repr=False)

    # -- GHN-2: sequential passes by topological level, virtual edges ------------------------
    def levels(self, reverse: bool = False, max_virtual: int = 5) -> list[dict[str, torch.Tensor]]:
        """Nodes grouped by topological level (longest path from the sources; from the
        sinks when ``reverse``), each with its incoming edges: real edges ``src, dst``
        and virtual edges ``vsrc, vdst, vweight`` (distance 2..max_virtual, weight 1/s)
        whose destinations lie in the level (``dst`` are positions inside the level)."""
        key = ("levels", reverse, max_virtual)
        if key not in self._cache:
            self._cache[key] = _levels(self, reverse, max_virtual)
        return self._cache[key]

    # -- position: how far a node lies from the inputs and from the outputs -----------------
    def depths(self) -> torch.Tensor:
        """[N, 2] long: the longest data-flow path from any source to each node, and from
        each node to any sink. Nodes that the graph network cannot tell apart otherwise
        (the same op in every block of a transformer, say) differ in these."""
        if "depths" not in self._cache:
            src, dst = self.edge_index[0].tolist(), self.edge_index[1].tolist()
            fw, bw = [0] * self.n, [0] * self.n
            for s, d in sorted(zip(src, dst), key=lambda e: e[1]):   # topological: src < dst
                fw[d] = max(fw[d], fw[s] + 1)
            for s, d in sorted(zip(src, dst), key=lambda e: -e[0]):
                bw[s] = max(bw[s], bw[d] + 1)
            self._cache["depths"] = torch.tensor([fw, bw], dtype=torch.long).t().reshape(self.n, 2)
        return self._cache["depths"]

    # -- GHN-3: shortest-path distances for attention biases ---------------------------------
    def distances(self, max_dist: int = 8) -> torch.Tensor:
        """[N, N] uint8 directed shortest-path distance along data flow, capped at
        ``max_dist`` (unreachable pairs get ``max_dist``; the diagonal 0)."""
        key = ("spd", max_dist)
        if key not in self._cache:
            from scipy.sparse import coo_matrix
            from scipy.sparse.csgraph import dijkstra

            ei = self.edge_index.numpy()
            a = coo_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(self.n, self.n)).tocsr()
            d = dijkstra(a, directed=True, unweighted=True, limit=max_dist + 0.5)
            d[~np.isfinite(d)] = max_dist
            self._cache[key] = torch.from_numpy(np.minimum(d, max_dist).astype(np.uint8))
        return self._cache[key]

def _levels(g: HyperGraph, reverse: bool, max_virtual: int) -> list[dict[str, torch.Tensor]]:
    n = g.n
    src, dst = g.edge_index[0].tolist(), g.edge_index[1].tolist()
    if reverse:
        src, dst = dst, src
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in zip(src, dst):
        preds[d].append(s)
    order = range(n - 1, -1, -1) if reverse else range(n)
    level = [0] * n
    for v in order:
        if preds[v]:
            level[v] = 1 + max(level[u] for u in preds[v])
    # virtual edges: u reaches v in s steps (2 <= s <= max_virtual), shortest
    vsrc: list[list[int]] = [[] for _ in range(n)]
    vw: list[list[float]] = [[] for _ in range(n)]
    if max_virtual >= 2 and n > 2:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import dijkstra

        a = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)).tocsr()
        d = dijkstra(a, directed=True, unweighted=True, limit=max_virtual + 0.5)
        us, vs = np.nonzero((d >= 2) & (d <= max_virtual))
        for u, v in zip(us.tolist(), vs.tolist()):
            vsrc[v].append(u)
            vw[v].append(1.0 / d[u, v])
    by_level: dict[int, list[int]] = {}
    for v in range(n):
        by_level.setdefault(level[v], []).append(v)
    out = []
    for lv in sorted(by_level):
        if lv == 0:
            continue  # sources receive no messages
        nodes = by_level[lv]
        pos = {v: i for i, v in enumerate(nodes)}
        e_s, e_d, v_s, v_d, v_w = [], [], [], [], []
        for v in nodes:
            for u in preds[v]:
                e_s.append(u); e_d.append(pos[v])
            for u, w in zip(vsrc[v], vw[v]):
                v_s.append(u); v_d.append(pos[v]); v_w.append(w)
        out.append(dict(nodes=torch.tensor(nodes), src=torch.tensor(e_s, dtype=torch.long),
                        dst=torch.tensor(e_d, dtype=torch.long),
                        vsrc=torch.tensor(v_s, dtype=torch.long),
                        vdst=torch.tensor(v_d, dtype=torch.long),
                        vweight=torch.tensor(v_w, dtype=torch.float32)))
    return out


# ------------------------------------------------------------------------------ building
def example_inputs_of(model: nn.Module, example_inputs: Any = None) -> Any:
    if example_inputs is not None:
        return example_inputs
    make = getattr(model, "example_input", None)
    if callable(make):   # the model's own example, built on the CPU: moved to where the model is
        x = make()
        p = next(iter(model.parameters()), None)
        if p is not None and p.device.type not in ("cpu", "meta"):
            x = torch.utils._pytree.tree_map(lambda t: t.to(p.device) if isinstance(t, torch.Tensor) else t, x)
        return x
    raise ValueError(
        f"{type(model).__name__} has no example_input(); pass example_inputs=(tensor, ...) "
        "with the shapes forward() reads (batch size 1 or 2 is enough)")


def _shape_feats(shape: tuple[int, ...]) -> list[int]:
    if len(shape) == 0:
        return [0, 0, 0, 0]
    if len(shape) == 1:
        return [shape_bucket(shape[0]), 0, 0, 0]
    rest = shape[2:]
    h = rest[0] if len(rest) >= 1 else 1
    w = int(np.prod(rest[1:])) if len(rest) >= 2 else 1
    return [shape_bucket(shape[0]), shape_bucket(shape[1]), shape_bucket(h), shape_bucket(w)]


def _out_feats(shape: Any) -> list[int]:
    """Buckets of an op's output shape without the batch axis: axis 1 and the product of
    the axes after it (a conv's output channels and spatial size, so a strided conv
    differs from one that keeps the resolution; a pooled [B, C] output has size 1)."""
    if isinstance(shape, list):
        shape = shape[0] if shape else None
    if not isinstance(shape, (tuple, list)) or len(shape) < 2 or \
            not all(isinstance(s, int) for s in shape):
        return [0, 0]
    return [shape_bucket(shape[1]), shape_bucket(int(np.prod(shape[2:])) if len(shape) > 2 else 1)]


def _param_position(node, name: str) -> int | None:
    """Index of the positional argument of ``node`` that is parameter ``name``."""
    for i, a in enumerate(node.args):
        if getattr(a, "name", None) == name and type(a).__name__ == "Param":
            return i
    return None


def _fan_in(node, op_name: str, shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return max(int(shape[0]) if shape else 1, 1)
    pos = _param_position(node, op_name)
    if (node.op == "addmm" and pos == 2) or (node.op in ("mm", "matmul", "bmm") and pos == 1):
        return int(shape[0])  # x @ W with W stored [in, out] (Hugging Face's Conv1D)
    return int(np.prod(shape[1:]))


def build_hyper_graph(graph: OpGraph, model: nn.Module) -> HyperGraph:
    # canonical names: named_parameters() keeps the first name of a tied tensor
    canonical: dict[int, str] = {}
    trainable: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canonical.setdefault(id(p), name)
        if canonical[id(p)] == name:
            trainable[name] = p
    alias: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        alias[name] = canonical[id(p)]

    nodes = graph.nodes
    n = len(nodes)
    assigned: dict[str, tuple[int, int, str]] = {}   # canonical -> (node, slot, name in op)
    for node in nodes:
        for slot, pname in enumerate(node.params):
            c = alias.get(pname)
            if c is not None and c not in assigned:
                assigned[c] = (node.index, slot, pname)

    # which weight nodes have no weight node downstream (classifier candidates)
    children: list[list[int]] = [[] for _ in range(n)]
    for node in nodes:
        for u in node.inputs:
            children[u].append(node.index)
    has_w = [False] * n
    for c, (v, _, _) in assigned.items():
        if len(trainable[c].shape) >= 2 and nodes[v].kind in WEIGHT_KINDS:
            has_w[v] = True
    w_below = [False] * n
    for v in range(n - 1, -1, -1):
        w_below[v] = any(has_w[c] or w_below[c] for c in children[v])

    # the fan-in of each weight op's (first) >=2-D weight, for its bias
    op_fan_in: dict[int, int] = {}
    for c, (v, _, pname) in sorted(assigned.items(), key=lambda kv: kv[1][1]):
        shape = tuple(int(s) for s in trainable[c].shape)
        if len(shape) >= 2 and nodes[v].kind in WEIGHT_KINDS and v not in op_fan_in:
            op_fan_in[v] = _fan_in(nodes[v], pname, shape)

    tensors: list[TensorSpec] = []
    unpredicted: dict[str, str] = {}
    first_shape: dict[int, tuple[int, ...]] = {}
    for c, p in trainable.items():
        if not p.dtype.is_floating_point:
            unpredicted[c] = f"dtype {p.dtype} is not floating point"
            continue
        if c not in assigned:
            unpredicted[c] = "no op of the traced graph reads it"
            continue
        v, slot, pname = assigned[c]
        node = nodes[v]
        shape = tuple(int(s) for s in p.shape)
        if len(shape) == 0 or 0 in shape:
            unpredicted[c] = f"shape {shape} has no axis to decode"
            continue
        fan_in = _fan_in(node, pname, shape)
        if len(shape) >= 2:
            head = "weight"
            spatial_one = all(s == 1 for s in shape[2:])
            if (node.kind in ("linear", "conv") and not w_below[v] and spatial_one
                    and len(shape) in (2, 4) and fan_in == int(np.prod(shape[1:]))):
                head = "classifier"
            transform = "fan_in" if node.kind in WEIGHT_KINDS else "plain"
        else:
            head = "vector"
            if node.kind in NORM_KINDS and slot == 0:
                transform = "norm_scale"
            elif node.kind in WEIGHT_KINDS and v in op_fan_in:
                # the bias of a linear/conv/... op: its fan_in is the op's weight's fan-in
                transform, fan_in = "op_bias", op_fan_in[v]
            else:
                transform = "bias"
        if len(shape) >= 2 or v not in first_shape:
            first_shape.setdefault(v, shape)
        tensors.append(TensorSpec(c, v, slot, shape, head, transform, fan_in))

    shape_feats = [_shape_feats(first_shape.get(v, ())) for v in range(n)]
    ei = graph.edge_index()
    in_deg = torch.bincount(ei[1], minlength=n) if ei.numel() else torch.zeros(n, dtype=torch.long)
    out_deg = torch.bincount(ei[0], minlength=n) if ei.numel() else torch.zeros(n, dtype=torch.long)
    return HyperGraph(n=n, kinds=torch.tensor([KIND_INDEX[nd.kind] for nd in nodes], dtype=torch.long),
                      shape_feats=torch.tensor(shape_feats, dtype=torch.long).reshape(n, 4),
                      edge_index=ei, in_degree=in_deg, out_degree=out_deg, tensors=tensors,
                      unpredicted=unpredicted, node_kinds=[nd.kind for nd in nodes],
                      op_ids=torch.tensor([op_bucket(nd.op) for nd in nodes], dtype=torch.long),
                      out_feats=torch.tensor([_out_feats(nd.shape) for nd in nodes],
                                             dtype=torch.long).reshape(n, 2))


_CACHE: "OrderedDict[str, HyperGraph]" = OrderedDict()
_CACHE_SIZE = 2048


def hyper_graph(model: nn.Module, example_inputs: Any = None, *, cache: bool = True) -> HyperGraph:
    """The :class:`HyperGraph` of ``model``'s architecture (traced once per architecture).

    Reuses the op graph of a ``WeightSpace`` already built for the architecture."""
    from ..space import weightspace as _ws

    x = example_inputs_of(model, example_inputs)
    if isinstance(x, torch.Tensor):
        x = (x,)
    # the key covers forward-time options kept as plain attributes (a CNN's
    # pool="avg" | "max"), which change the op graph but not the module tree
    key = _ws.architecture_key(model, x) if cache else None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if key is not None and key in _ws._CACHE:
        graph = _ws._CACHE[key].op_graph
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            graph = trace(model, x)
    hg = build_hyper_graph(graph, model)
    if key is not None:
        _CACHE[key] = hg
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return hg

