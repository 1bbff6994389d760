"""Parameter graphs: nodes are neurons, edges are weights.

A :class:`GraphLayout` is computed once per (weight space, layout) and turns state
dicts into graphs and back with precomputed reshapes and index arithmetic only.

Nodes. Every neuron axis of every weight names a *node set*: the neuron group(s) it
carries (free atoms; fixed atoms such as the H·W positions of a flatten are folded into
the edge features), or, for fixed axes (inputs, outputs, positions, vocabularies), the
fixed neurons themselves. Axes that carry the same group share the node set, so a
residual stream is one set of neurons read and written by many layers. A weight with no
neuron axis gets a hub node of its own.

Edges. A weight with two neuron axes (out, in) gives edges in -> out; one with a single
neuron axis (biases, norm scales, running statistics) gives self-loops; the remaining
axes (kernel positions, folded fixed atoms) are the edge's feature vector, cut into
chunks of ``width`` values (zero-padded): ``width=1`` is one edge per parameter (Graph
Metanetworks), the compact layout chooses the width that makes the graph smallest
(e.g. 9 for 3x3 kernels: one edge per channel pair, the kernel as a vector, as in
neural graphs). Parameter-free structure appears as typed edges: a concatenation links
each block's neurons to their place in the concatenated set, a product set (heads x
dims) links to each factor's set.

Every node and edge feature is a function of the weights and of positions in fixed
sets only, so permuting a group permutes nodes and nothing else (equivariance), and
every weight value sits in exactly one edge feature slot (bijectivity).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from math import ceil, prod
from typing import Mapping

import torch
from torch_geometric.data import Batch, Data

from ..space.structure import index_map
from .features import KIND_INDEX, ROLE_INDEX, tensor_roles


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of
    /proc/meminfo), or None where that cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_SMALL = 1 << 26   # allocations below this are not checked


class GraphTooLargeError(MemoryError):
    """A graph would not fit in the memory available: raised before allocating it."""


def check_memory(nbytes: int, what: str, hint: str) -> None:
    """Refuse an allocation of ``nbytes`` that would not fit in available memory."""
    if nbytes < _SMALL:  # not worth reading /proc/meminfo
        return
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise GraphTooLargeError(f"{what} needs about {nbytes / 2**30:.2f} GiB, only "
                                 f"{avail / 2**30:.2f} GiB of memory is available; {hint}")


def _small_int(max_value: int) -> torch.dtype:
    for dt in (torch.int8, torch.int16, torch.int32):
        if max_value <= torch.iinfo(dt).max:
            return dt
    return torch.int64


_STRUCTURE = ("x", "edge_index", "edge_type", "edge_pos", "node_type", "node_pos", "edge_role",
              "edge_depth", "edge_kpos", "node_kind", "node_depth")


class ParamGraph(Data):
    """A parameter graph (torch_geometric ``Data``).

    Attributes: ``x`` [N, 3] node features (is_fixed, relative position among the fixed
    coordinates of its set, is_hub); ``node_type`` [N] node-set id; ``node_pos`` [N]
    position among fixed coordinates (0 for neurons of a group); ``edge_index`` [2, E]; ``edge_attr`` [E, width] weight values;
    ``edge_type`` [E] (int8, int16 or int32) weight-tensor id (or a structural type past the
    last tensor);
    ``edge_pos`` [E] (int16 or int32) chunk index within the (out, in) pair; ``extras``
    [1, K] non-weight state entries (e.g. BatchNorm step counters), float64; ``layout``
    and ``width``.

    Features that mean the same in every architecture (see :mod:`metanet.graph.features`):
    ``edge_role`` [E] int8 index into ``ROLES`` (the role of the edge's tensor, or the kind
    of structural edge); ``edge_depth`` [E] float16 normalised depth of the layer;
    ``edge_kpos`` [E, 2] float16 kernel position of the chunk's first value (last two
    feature axes, each scaled to [-1, 1]; 0 where there is no kernel); ``node_kind`` [N]
    int8 index into ``NODE_KINDS`` (input, hidden, output, hub); ``node_depth`` [N]
    float32 normalised depth.

    The structure tensors (everything but ``edge_attr`` and ``extras``) of single graphs
    are shared by all graphs of one architecture, which makes conversion cost a copy of
    the weights and nothing more: treat them as read-only (rebind, do not edit in place),
    or ask for ``copy=True``.
    """


@dataclass
class _Plan:
    name: str
    shape: tuple[int, ...]
    split: tuple[int, ...]        # the tensor's shape with neuron axes split into atoms
    order: tuple[int, ...]        # permutation of split dims: out-node, in-node, features
    n_out: int
    n_in: int
    feat: int
    chunks: int
    edge_offset: int
    num_edges: int
    dtype: torch.dtype


@dataclass
class _NodeSet:
    key: tuple
    offset: int
    size: int
    fixed: bool
    hub: bool = False
    unit: bool = False   # a lone neuron (size-1 axis: one output, one input channel)


class GraphLayout:
    def __init__(self, ws, layout: str = "compact", width: int | None = None):
        if layout not in ("compact", "param"):
            raise ValueError(f"layout must be 'compact' (one edge per channel pair) or 'param' "
                             f"(one edge per parameter), got {layout!r}")
        self.ws = ws
        self.layout = layout
        sp = ws.spaces
        self.sizes = sp.sizes
        self.sets: dict[tuple, _NodeSet] = {}
        self.num_nodes = 0
        axes_info = {}
        self._feat_shapes: dict[str, tuple[int, ...]] = {}
        for name in ws.weights:
            axes_info[name] = self._axes(name)
        if layout == "param":
            width = 1
        elif width is None:
            width = self._best_width(axes_info)
        if width < 1:
            raise ValueError("width must be >= 1")
        self.width = int(width)
        self.dtype = torch.float32
        dts = [ws.dtypes[k] for k in ws.weights]
        if dts:
            dt = dts[0]
            for d in dts[1:]:
                dt = torch.promote_types(dt, d)
            self.dtype = dt
        self.plans: list[_Plan] = []
        offset = 0
        sets = []
        for name in ws.weights:
            out_set, in_set, split, order, n_out, n_in, feat = axes_info[name]
            chunks = max(1, ceil(feat / self.width))
            ne = n_out * n_in * chunks
            self.plans.append(_Plan(name, ws.shapes[name], split, order, n_out, n_in, feat, chunks,
                                    offset, ne, ws.dtypes[name]))
            sets.append((out_set, in_set))
            offset += ne
        self.num_param_edges = offset
        self.plan_sets = sets
        s2, d2, t2 = self._structural_edges(len(ws.weights))
        self.num_edges = offset + sum(len(x) for x in s2)
        E = self.num_edges
        check_memory(E * self.structure_bytes_per_edge + self.num_nodes * 32,
                     f"the {layout} layout's structure ({E:,} edges, {self.num_nodes:,} nodes)",
                     self._advice())
        # fill preallocated arrays slice by slice: peak memory is the graph's own
        self.edge_index = torch.empty(2, E, dtype=torch.long)
        self.edge_type = torch.empty(E, dtype=_small_int(len(self.plans) + 2))   # tensors + 2 structural kinds
        self.edge_pos = torch.zeros(E, dtype=_small_int(max([p.chunks for p in self.plans] + [1])))
        for t, (p, (out_set, in_set)) in enumerate(zip(self.plans, sets)):
            sl = slice(p.edge_offset, p.edge_offset + p.num_edges)
            dst = self.edge_index[1, sl].view(p.n_out, p.n_in, p.chunks)
            dst.copy_((torch.arange(p.n_out) + out_set.offset).view(-1, 1, 1).expand_as(dst))
            src = self.edge_index[0, sl].view(p.n_out, p.n_in, p.chunks)
            if in_set is None:
                src.copy_(dst)
            else:
                src.copy_((torch.arange(p.n_in) + in_set.offset).view(1, -1, 1).expand_as(src))
            self.edge_pos[sl].view(-1, p.chunks).copy_(torch.arange(p.chunks).expand(p.n_out * p.n_in, -1))
            self.edge_type[sl] = t
        off = offset
        for s, d, ty in zip(s2, d2, t2):
            sl = slice(off, off + len(s))
            self.edge_index[0, sl], self.edge_index[1, sl], self.edge_type[sl] = s, d, ty
            off += len(s)
        self._node_features()
        self._universal_features(s2, d2)

    #: bytes of structure per edge (at most): edge_index 16, edge_type 4, edge_pos 4, edge_role 1,
    #: edge_depth 2, edge_kpos 4
    structure_bytes_per_edge = 31

    def _universal_features(self, struct_src, struct_dst) -> None:
        """Edge roles, depths and kernel positions; node kinds and depths (see
        :mod:`metanet.graph.features`). Constant on every node set."""
        roles, depths = tensor_roles(self.ws)
        E, N, W = self.num_edges, self.num_nodes, self.width
        edge_role = torch.empty(E, dtype=torch.int8)
        edge_depth = torch.zeros(E, dtype=torch.float16)
        edge_kpos = torch.zeros(E, 2, dtype=torch.float16)
        set_depth: dict[int, float] = {}     # node-set offset -> depth
        used_as: dict[int, set] = {}
        for p, (out_set, in_set) in zip(self.plans, self.plan_sets):
            sl = slice(p.edge_offset, p.edge_offset + p.num_edges)
            edge_role[sl] = ROLE_INDEX[roles[p.name]]
            edge_depth[sl] = depths[p.name]
            fshape = self._feat_shapes[p.name]
            if p.feat > 1 and fshape:
                start = torch.arange(p.chunks) * W   # first value of every chunk
                coords = torch.unravel_index(start, fshape)[-2:]
                kpos = torch.zeros(p.chunks, 2)
                for j, (c, n) in enumerate(zip(coords, fshape[-2:])):
                    kpos[:, 2 - len(coords) + j] = (2 * c.float() / (n - 1) - 1) if n > 1 else 0.0
                edge_kpos[sl].view(p.n_out * p.n_in, p.chunks, 2).copy_(kpos.expand(p.n_out * p.n_in, -1, -1))
            used_as.setdefault(out_set.offset, set()).add("out")
            d = set_depth.get(out_set.offset)
            set_depth[out_set.offset] = depths[p.name] if d is None else min(d, depths[p.name])
            if in_set is not None and in_set is not out_set:
                used_as.setdefault(in_set.offset, set()).add("in")
        node_kind = torch.empty(N, dtype=torch.int8)
        node_depth = torch.zeros(N)
        for ns in self.sets.values():
            sl = slice(ns.offset, ns.offset + ns.size)
            use = used_as.get(ns.offset, set())
            if ns.hub:
                kind = "hub"
            elif not ns.fixed:
                kind = "hidden"
            elif use == {"in"}:
                kind = "input"
            elif use == {"out"}:
                kind = "output"
            else:
                kind = "hidden"
            node_kind[sl] = KIND_INDEX[kind]
            node_depth[sl] = set_depth.get(ns.offset, 0.0)
        # structural edges and the node sets only they reach take the depth of the set
        # they lead into
        off = self.num_param_edges
        for src, dst in zip(struct_src, struct_dst):
            sl = slice(off, off + len(src))
            edge_role[sl] = torch.where(self.edge_type[sl] == len(self.plans),
                                        ROLE_INDEX["struct.concat"], ROLE_INDEX["struct.product"]).to(torch.int8)
            if len(dst):
                d = node_depth[dst]
                edge_depth[sl] = d.to(torch.float16)
                for ns in self.sets.values():
                    if ns.offset not in set_depth and ns.offset <= int(src[0]) < ns.offset + ns.size:
                        node_depth[ns.offset:ns.offset + ns.size] = d.min()
                        set_depth[ns.offset] = float(d.min())
            off += len(src)
        self.edge_role, self.edge_depth, self.edge_kpos = edge_role, edge_depth, edge_kpos
        self.node_kind, self.node_depth = node_kind, node_depth

    def _advice(self) -> str:
        if self.layout == "param":
            return "try layout='compact' (one edge per channel pair), or convert on a machine with more memory"
        return (f"try a wider width (width={self.width * 4}: fewer, longer edges), or convert on a "
                f"machine with more memory")

    def graph_bytes(self, batch: int = 1) -> int:
        """Bytes a PyG graph (or Batch of ``batch`` graphs) of this layout holds: edge
        features, structure (repeated per graph in a Batch), node features."""
        item = torch.empty(0, dtype=self.dtype).element_size()
        per_edge = (self.width * item + 2 * self.edge_index.element_size() + self.edge_type.element_size()
                    + self.edge_pos.element_size() + 1 + 2 + 4)
        per_node = 3 * 4 + 8 + 8 + 1 + 4
        return batch * (self.num_edges * per_edge + self.num_nodes * per_node)

    # -- construction -------------------------------------------------------------------------
    def _node_set(self, key: tuple, fixed: bool, hub: bool = False, unit: bool = False) -> _NodeSet:
        if key not in self.sets:
            size = 1 if hub or unit else sum(prod(self.sizes[a] for a in seg) for seg in key)
            self.sets[key] = _NodeSet(key, self.num_nodes, size, fixed, hub, unit)
            self.num_nodes += size
        return self.sets[key]

    def _axes(self, name: str):
        """Node sets of a weight's neuron axes and how to lay its values out as edges."""
        sp = self.ws.spaces
        shape = self.ws.shapes[name]
        structs = sp.axes[name]
        roles = sp.roles.get(name, {})
        # size-1 axes with an in/out role are lone neurons (one output, one input channel)
        neuron_axes = [k for k, s in enumerate(structs)
                       if (shape[k] > 1 and any(sp.neuron[a] for seg in s for a in seg))
                       or (shape[k] == 1 and k in roles)]
        if len(neuron_axes) > 2:
            neuron_axes = [k for k in neuron_axes if k in roles][:2] or neuron_axes[:2]
        if len(neuron_axes) == 2:
            outs = [k for k in neuron_axes if roles.get(k) == "out"]
            ins = [k for k in neuron_axes if roles.get(k) == "in"]
            if len(outs) == 1 and len(ins) == 1:
                neuron_axes = [outs[0], ins[0]]
        split: list[int] = []
        labels: list[str] = []   # per split dim: "o", "i" or "f"
        sets: dict[str, _NodeSet] = {}
        for k, s in enumerate(structs):
            if k in neuron_axes and shape[k] == 1:
                role = "o" if k == neuron_axes[0] else "i"
                split.append(1)
                labels.append(role)
                op = sp.role_ops.get(name, {}).get(k, -1)
                sets[role] = self._node_set(("unit", op, roles[k]), fixed=True, unit=True)
            elif k in neuron_axes:
                role = "o" if k == neuron_axes[0] else "i"
                free_atoms = [a for a in s[0] if sp.free[a]] if len(s) == 1 else []
                if free_atoms:  # fold the fixed atoms of this axis into features
                    for a in s[0]:
                        split.append(self.sizes[a])
                        labels.append(role if sp.free[a] else "f")
                    sets[role] = self._node_set((tuple(free_atoms),), fixed=False)
                else:
                    split.append(shape[k])
                    labels.append(role)
                    sets[role] = self._node_set(tuple(s), fixed=not any(sp.free[a] for seg in s for a in seg))
            else:
                split.append(shape[k])
                labels.append("f")
        if not neuron_axes:
            sets["o"] = self._node_set(("hub", name), fixed=True, hub=True)
        order = tuple([d for d, l in enumerate(labels) if l == "o"] + [d for d, l in enumerate(labels) if l == "i"]
                      + [d for d, l in enumerate(labels) if l == "f"])
        n_out = prod(split[d] for d, l in enumerate(labels) if l == "o")
        n_in = prod(split[d] for d, l in enumerate(labels) if l == "i")
        feat = prod(split[d] for d, l in enumerate(labels) if l == "f")
        out_set, in_set = sets["o"], sets.get("i")
        self._feat_shapes[name] = tuple(split[d] for d, l in enumerate(labels) if l == "f")
        return out_set, in_set, tuple(split), order, n_out, n_in, feat

    def _best_width(self, axes_info) -> int:
        """The chunk width that makes the graph smallest (values + 16 bytes of edge index
        per edge, in units of 4-byte values)."""
        cands = sorted({info[6] for info in axes_info.values()} | {1})
        best, best_cost = 1, None
        for w in cands:
            cost = 0
            for out_set, in_set, split, order, n_out, n_in, feat in axes_info.values():
                e = n_out * n_in * max(1, ceil(feat / w))
                cost += e * (w + 6)
            if best_cost is None or cost < best_cost:
                best, best_cost = w, cost
        return best

    def _structural_edges(self, ntypes: int):
        """Typed parameter-free edges. A concatenation links each block to a node set of
        its own (so q and k blocks of a fused qkv meet in one set: their inner product);
        a product of groups (heads x dims) links every neuron to its factors (the heads
        become nodes)."""
        free = self.ws.spaces.free
        src, dst, typ = [], [], []
        for key, ns in list(self.sets.items()):
            if ns.hub or ns.unit:
                continue
            if len(key) > 1:  # concatenation: each block -> its place
                off = 0
                for seg in key:
                    n = prod(self.sizes[a] for a in seg)
                    atoms = tuple(a for a in seg if free[a]) or tuple(seg)
                    if atoms and n > 0:
                        sub = self._node_set((atoms,), fixed=not any(free[a] for a in atoms))
                        src.append(self._project(seg, atoms) + sub.offset)
                        dst.append(torch.arange(n) + ns.offset + off)
                        typ.append(torch.full((n,), ntypes, dtype=torch.long))
                    off += n
        for key, ns in list(self.sets.items()):
            if ns.hub or ns.unit or len(key) != 1:
                continue
            factors = [a for a in dict.fromkeys(key[0]) if free[a]]
            if len(factors) > 1:  # product of groups: each factor -> its rows
                for a in factors:
                    sub = self._node_set(((a,),), fixed=False)
                    src.append(self._project(key[0], (a,)) + sub.offset)
                    dst.append(torch.arange(ns.size) + ns.offset)
                    typ.append(torch.full((ns.size,), ntypes + 1, dtype=torch.long))
        return src, dst, typ

    def _project(self, seg: tuple, sub: tuple) -> torch.Tensor:
        """For every position of a product ``seg``, its position in the sub-product ``sub``."""
        sizes = [self.sizes[a] for a in seg]
        n = prod(sizes)
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        coords = torch.stack(torch.unravel_index(torch.arange(n), tuple(sizes))) if sizes else torch.zeros(0, 1)
        out = torch.zeros(n, dtype=torch.long)
        used = list(seg)
        for a in sub:
            j = used.index(a)
            out = out * self.sizes[a] + coords[j]
        return out

    def _node_features(self) -> None:
        """Features that permutations cannot change: for each node, whether all its
        coordinates are fixed, and its position among the fixed coordinates of its set."""
        N = self.num_nodes
        free = self.ws.spaces.free
        x = torch.zeros(N, 3)
        node_type = torch.zeros(N, dtype=torch.long)
        node_pos = torch.zeros(N, dtype=torch.long)
        for t, ns in enumerate(self.sets.values()):
            node_type[ns.offset:ns.offset + ns.size] = t
            if ns.hub or ns.unit:
                x[ns.offset, 0] = 1.0
                x[ns.offset, 2] = float(ns.hub)
                continue
            off, base = ns.offset, 0
            for seg in ns.key:
                sizes = [self.sizes[a] for a in seg]
                n = prod(sizes)
                fixed = [j for j, a in enumerate(seg) if not free[a]]
                n_fixed = prod(sizes[j] for j in fixed)
                pos = torch.zeros(n, dtype=torch.long)
                if fixed and n:
                    coords = torch.unravel_index(torch.arange(n), tuple(sizes))
                    for j in fixed:
                        pos = pos * sizes[j] + coords[j]
                sl = slice(off, off + n)
                node_pos[sl] = base + pos
                x[sl, 1] = pos.float() / max(n_fixed - 1, 1)
                x[sl, 0] = float(len(fixed) == len(seg))
                off += n
                base += n_fixed
        self.x, self.node_type, self.node_pos = x, node_type, node_pos

    # -- conversion ----------------------------------------------------------------------------
    def _fill(self, get, B: int, device, out: torch.Tensor | None = None) -> torch.Tensor:
        W = self.width
        if out is None:
            pad = any(p.chunks * W != p.feat for p in self.plans) or self.num_edges > self.num_param_edges
            alloc = torch.zeros if pad else torch.empty
            out = alloc(B, self.num_edges, W, dtype=self.dtype, device=device)
        else:  # refill a graph of this layout: its padding is still zero
            if out.shape[-2:] != (self.num_edges, W) or out.dtype != self.dtype:
                raise ValueError(f"out has edge features {tuple(out.shape)} {out.dtype}; this layout "
                                 f"needs ({self.num_edges}, {W}) {self.dtype}: pass a graph made by it")
            out = out.view(B, self.num_edges, W)
        for p in self.plans:
            v = get(p.name).reshape((B,) + p.split)
            v = v.permute((0,) + tuple(d + 1 for d in p.order)).reshape(B, p.n_out * p.n_in, p.feat)
            dst = out[:, p.edge_offset:p.edge_offset + p.num_edges]
            if p.chunks * W == p.feat:
                dst.view(B, p.n_out * p.n_in, p.feat).copy_(v)
            else:
                dst.reshape(B, p.n_out * p.n_in, p.chunks * W)[..., :p.feat].copy_(v)
        return out

    def _extras(self, get, B: int) -> torch.Tensor:
        vals = [get(k).reshape(B, -1).to(torch.float64) for k in self.ws.extras]
        if not vals:
            return torch.zeros(B, 0, dtype=torch.float64)
        return torch.cat(vals, dim=1)

    def _check_exact_extras(self, sd) -> None:
        for k in self.ws.extras:
            v = sd[k]
            if not v.is_floating_point() and v.numel() and v.abs().max() > 2 ** 53:
                raise ValueError(f"{k!r} holds integers too large to store exactly in the graph")

    def _check_dtypes(self, sd) -> None:
        """Refuse a tensor whose dtype differs from the traced one: casting would be lossy
        (float64 into float32) or hand back another dtype than was given."""
        from ..space.weightspace import StateDictError

        for k in self.ws.weights:
            if sd[k].dtype != self.ws.dtypes[k]:
                raise StateDictError(
                    f"{k!r} is {sd[k].dtype}, but this weight space was traced with {self.ws.dtypes[k]}: "
                    f"a graph keeps every value exactly, so cast the state dict "
                    f"(v.to({self.ws.dtypes[k]})) or trace the model in {sd[k].dtype} "
                    f"(WeightSpace.of(model.to({sd[k].dtype}), ...))")

    def graph(self, state_dict: Mapping[str, torch.Tensor], check: bool = True,
              copy: bool = False, out: ParamGraph | None = None) -> ParamGraph:
        if check:
            self.ws.check(state_dict)
            self._check_exact_extras(state_dict)
            self._check_dtypes(state_dict)
        if out is not None:  # refill in place: no new memory
            self._fill(lambda k: state_dict[k], 1, None, out.edge_attr)
            out.extras = self._extras(lambda k: state_dict[k], 1)
            return out
        dev = state_dict[self.ws.weights[0]].device if self.ws.weights else torch.device("cpu")
        edge_attr = self._fill(lambda k: state_dict[k], 1, dev)[0]
        s = self._structure(dev)
        c = (lambda t: t.clone()) if copy else (lambda t: t)  # noqa: E731
        return ParamGraph(x=c(s["x"]), edge_index=c(s["edge_index"]), edge_attr=edge_attr,
                          edge_type=c(s["edge_type"]), edge_pos=c(s["edge_pos"]),
                          node_type=c(s["node_type"]), node_pos=c(s["node_pos"]),
                          edge_role=c(s["edge_role"]), edge_depth=c(s["edge_depth"]),
                          edge_kpos=c(s["edge_kpos"]), node_kind=c(s["node_kind"]),
                          node_depth=c(s["node_depth"]),
                          extras=self._extras(lambda k: state_dict[k], 1),
                          layout=self.layout, width=torch.tensor([self.width]),
                          num_nodes=self.num_nodes)

    def _structure(self, device) -> dict[str, torch.Tensor]:
        """The structure tensors on ``device`` (kept there once made)."""
        device = torch.device(device)
        if not hasattr(self, "_on_device"):
            self._on_device = {}
        key = str(device)
        if key not in self._on_device:
            names = _STRUCTURE
            self._on_device[key] = {n: getattr(self, n).to(device) for n in names}
        return self._on_device[key]

    def graphs(self, stacked: Mapping[str, torch.Tensor], check: bool = True) -> Batch:
        if check:
            self.ws.check(stacked, batched=True)
            self._check_exact_extras(stacked)
            self._check_dtypes(stacked)
        B = int(next(iter(stacked.values())).shape[0])
        dev = stacked[self.ws.weights[0]].device if self.ws.weights else torch.device("cpu")
        E = self.num_edges
        check_memory(self.graph_bytes(B), f"a batch of {B} graphs ({self.layout} layout, {E:,} edges each)",
                     "convert in smaller batches, or use a shared-structure batch "
                     "(metanet.graph.SharedBatch: one structure for all checkpoints)")
        edge_attr = self._fill(lambda k: stacked[k], B, dev)
        return self._batch(edge_attr, self._extras(lambda k: stacked[k], B))

    def shared(self, stacked: Mapping[str, torch.Tensor], check: bool = True) -> "SharedBatch":
        """A stack of checkpoints as a :class:`~metanet.graph.SharedBatch`: edge features
        ``[B, E, width]`` and one structure for all (no per-checkpoint copies)."""
        from .batch import SharedBatch

        if check:
            self.ws.check(stacked, batched=True)
            self._check_exact_extras(stacked)
            self._check_dtypes(stacked)
        B = int(next(iter(stacked.values())).shape[0])
        dev = stacked[self.ws.weights[0]].device if self.ws.weights else torch.device("cpu")
        check_memory(B * self.num_edges * self.width * torch.empty(0, dtype=self.dtype).element_size(),
                     f"the edge features of {B} checkpoints", "convert in smaller batches")
        return SharedBatch(self, self._fill(lambda k: stacked[k], B, dev), self._extras(lambda k: stacked[k], B))

    def _batch(self, edge_attr: torch.Tensor, extras: torch.Tensor) -> Batch:
        """A PyG Batch of graphs of this layout from edge features [B, E, width]."""
        B, E, N = edge_attr.shape[0], self.num_edges, self.num_nodes
        dev = edge_attr.device
        edge_attr = edge_attr.reshape(B * E, self.width)
        node_off = torch.arange(B, device=dev) * N
        edge_index = (self.edge_index.to(dev).unsqueeze(1) + node_off.view(1, B, 1)).reshape(2, B * E)
        rep = lambda t: t.to(dev).repeat(B, *([1] * (t.dim() - 1)))  # noqa: E731
        batch = Batch(_base_cls=ParamGraph, x=rep(self.x), edge_index=edge_index, edge_attr=edge_attr,
                      edge_type=rep(self.edge_type), edge_pos=rep(self.edge_pos),
                      node_type=rep(self.node_type), node_pos=rep(self.node_pos),
                      edge_role=rep(self.edge_role), edge_depth=rep(self.edge_depth),
                      edge_kpos=rep(self.edge_kpos), node_kind=rep(self.node_kind),
                      node_depth=rep(self.node_depth),
                      extras=extras,
                      layout=[self.layout] * B, width=torch.full((B,), self.width),
                      batch=torch.arange(B, device=dev).repeat_interleave(N),
                      ptr=torch.arange(B + 1, device=dev) * N)
        steps = lambda n: torch.arange(B + 1) * n  # noqa: E731
        batch._num_graphs = B
        batch._slice_dict = {"x": steps(N), "edge_index": steps(E), "edge_attr": steps(E),
                             "edge_type": steps(E), "edge_pos": steps(E), "node_type": steps(N),
                             "node_pos": steps(N), "edge_role": steps(E), "edge_depth": steps(E),
                             "edge_kpos": steps(E), "node_kind": steps(N), "node_depth": steps(N),
                             "extras": steps(1), "layout": steps(1), "width": steps(1)}
        zeros = torch.zeros(B, dtype=torch.long)
        batch._inc_dict = {k: zeros for k in batch._slice_dict}
        batch._inc_dict["edge_index"] = torch.arange(B) * N
        return batch

    def _unfill(self, edge_attr: torch.Tensor, B: int) -> dict[str, torch.Tensor]:
        if edge_attr.shape[-1] != self.width or edge_attr.numel() != B * self.num_edges * self.width:
            raise ValueError(f"graph has edge features of shape {tuple(edge_attr.shape)}; this weight "
                             f"space's {self.layout} layout has {self.num_edges} edges of width "
                             f"{self.width} per graph: was it made by another architecture?")
        ea = edge_attr.reshape(B, self.num_edges, self.width)
        out: dict[str, torch.Tensor] = {}
        for p in self.plans:
            src = ea[:, p.edge_offset:p.edge_offset + p.num_edges]
            v = src.reshape(B, p.n_out * p.n_in, p.chunks * self.width)[..., :p.feat]
            split_perm = [p.split[d] for d in p.order]
            v = v.reshape((B,) + tuple(split_perm))
            inv = [0] * len(p.order)
            for j, d in enumerate(p.order):
                inv[d] = j
            v = v.permute((0,) + tuple(j + 1 for j in inv)).reshape((B,) + p.shape)
            # always fresh memory: editing the state dict must not edit the graph
            out[p.name] = torch.empty(v.shape, dtype=p.dtype, device=v.device).copy_(v)
        return out

    def _assemble(self, weights: dict[str, torch.Tensor], extras: torch.Tensor, B: int, batched: bool):
        ws = self.ws
        ex: dict[str, torch.Tensor] = {}
        off = 0
        for k in ws.extras:
            n = prod(ws.shapes[k])
            v = extras[:, off:off + n].reshape((B,) + ws.shapes[k]).to(ws.dtypes[k])
            ex[k] = v
            off += n
        out: dict[str, torch.Tensor] = {}
        for k in ws.keys:
            canon = ws.aliases.get(k, k)
            v = weights[canon] if canon in weights else ex[canon]
            out[k] = v if batched else v[0]
        return out

    def _with_metadata(self, out: dict) -> "OrderedDict[str, torch.Tensor]":
        """PyTorch's ``_metadata`` (module versions) on the returned state dict, so that
        every module's ``load_state_dict`` accepts it."""
        try:
            from ..space.weightspace import _with_metadata
        except ImportError:  # an older weightspace module
            _with_metadata = None
        if _with_metadata is not None:
            return _with_metadata(out, self.ws)
        od = OrderedDict(out)
        meta = getattr(self.ws, "_metadata", None)
        if meta is not None:
            od._metadata = OrderedDict((k, dict(v)) for k, v in meta.items())
        return od

    def state_dict(self, graph) -> dict[str, torch.Tensor]:
        return self._with_metadata(
            self._assemble(self._unfill(graph.edge_attr, 1), graph.extras.reshape(1, -1), 1, False))

    def state_dicts(self, batch) -> dict[str, torch.Tensor]:
        B = int(batch.num_graphs)
        return self._with_metadata(
            self._assemble(self._unfill(batch.edge_attr, B), batch.extras.reshape(B, -1), B, True))

    def node_index(self, perm) -> torch.Tensor:
        by_space = self.ws._by_space(perm.perms)
        idx = torch.arange(self.num_nodes)
        for ns in self.sets.values():
            if ns.hub or ns.unit:
                continue
            m = index_map(ns.key, self.sizes, by_space)
            if m is not None:
                idx[ns.offset:ns.offset + ns.size] = m + ns.offset
        return idx
