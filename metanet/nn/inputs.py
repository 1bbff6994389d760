"""What every graph metanetwork reads from a parameter graph, in one of two forms.

- a PyG ``Batch`` (or one ``ParamGraph``) of any architectures: node tensors [N, ·],
  edge tensors [E, ·], a ``batch`` vector;
- a :class:`~metanet.graph.SharedBatch` of one architecture: edge features
  [B, E, width], one structure: node tensors [B, N, ·], edge tensors [B, E, ·].

:class:`GraphInput` unpacks either into the same record, so that layers (which take
tensors and return ``(x, edge_attr)``) serve both. Node and edge tensors carry an
optional leading batch axis; layers work on axis -2 (``node_dim=-2`` in PyG terms).

:class:`RoleNorm` standardises weights per tensor role (see
:data:`metanet.graph.ROLES`) with statistics computed once on a training split and
saved with the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..graph.batch import SharedBatch
from ..graph.features import NODE_KINDS, ROLES

NUM_ROLES = len(ROLES)
NUM_KINDS = len(NODE_KINDS)
POOL_STATS = ("mean", "std", "max", "min")   # what a readout may pool per group


@dataclass
class GraphInput:
    """A parameter graph batch unpacked for layers.

    ``edge_attr`` [E, W] or [B, E, W]; ``edge_index`` [2, E] (node offsets applied for a
    PyG Batch; per graph for a shared batch); ``edge_role`` [E] long; ``edge_geo`` [E, 3]
    (depth, kernel position); ``x`` [N, 3]; ``node_kind`` [N] long; ``node_depth`` [N, 1];
    ``batch`` [N] graph of each node (PyG form) or None (shared form: ``num_graphs`` B);
    ``edge_width`` [E] the width of each edge's own graph where graphs of different widths
    were padded to one (:func:`metanet.graph.collate`), else None.
    """

    edge_attr: Tensor
    edge_index: Tensor
    edge_role: Tensor
    edge_geo: Tensor
    x: Tensor
    node_kind: Tensor
    node_depth: Tensor
    batch: Tensor | None
    num_graphs: int
    shared: bool
    edge_width: Tensor | None = None   # [E] each edge's own width in a padded mixed batch

    @classmethod
    def of(cls, g) -> "GraphInput":
        if isinstance(g, GraphInput):
            return g
        missing = [k for k in ("edge_role", "edge_depth", "edge_kpos", "node_kind", "node_depth")
                   if getattr(g, k, None) is None]
        if missing:
            raise ValueError(f"the graph lacks {missing}: make it with WeightSpace.graph/graphs, "
                             f"metanet.graph.SharedBatch or metanet.graph.collate")
        geo = torch.cat([g.edge_depth.float().unsqueeze(-1), g.edge_kpos.float()], dim=-1)
        common = dict(edge_index=g.edge_index, edge_role=g.edge_role.long(), edge_geo=geo,
                      x=g.x.float(), node_kind=g.node_kind.long(), node_depth=g.node_depth.float().unsqueeze(-1))
        if isinstance(g, SharedBatch):
            return cls(edge_attr=g.edge_attr, batch=None, num_graphs=g.num_graphs, shared=True, **common)
        batch = getattr(g, "batch", None)
        if batch is None:
            batch = torch.zeros(g.x.shape[0], dtype=torch.long, device=g.x.device)
        num = int(getattr(g, "num_graphs", 1) or 1)
        width = getattr(g, "width", None)
        edge_width = None
        if isinstance(width, Tensor) and width.numel() == num and bool((width.view(-1) < g.edge_attr.shape[-1]).any()):
            edge_width = width.view(-1).to(batch.device)[batch[g.edge_index[0]]]
        return cls(edge_attr=g.edge_attr, batch=batch, num_graphs=num, shared=False, edge_width=edge_width,
                   **common)

    def valid(self) -> Tensor | None:
        """[E, W] mask of the edge feature slots that hold values (not padding), or None."""
        if self.edge_width is None:
            return None
        W = self.edge_attr.shape[-1]
        return torch.arange(W, device=self.edge_width.device).view(1, W) < self.edge_width.view(-1, 1)

    def pool_nodes(self, h: Tensor) -> Tensor:
        """Mean and max over each graph's nodes: [B, 2F]."""
        if self.shared:
            return torch.cat([h.mean(-2), h.amax(-2)], -1)
        return _segment_pool(h, self.batch, self.num_graphs)

    def pool_edges(self, h: Tensor) -> Tensor:
        """Mean and max over each graph's edges: [B, 2F]."""
        if self.shared:
            return torch.cat([h.mean(-2), h.amax(-2)], -1)
        return _segment_pool(h, self.batch[self.edge_index[0]], self.num_graphs)

    def pool_edges_by_group(self, h: Tensor, bins: int, stats: tuple[str, ...] = ("mean",)) -> Tensor:
        """``stats`` (of :data:`POOL_STATS`) of each graph's edges per (role, depth bin)
        group, zero for groups a graph lacks: [B, NUM_ROLES * bins * len(stats) * F].
        Roles and depths are the same for every edge of a tensor, so the pooling is
        permutation invariant, and defined for any architecture alike (for one
        architecture and enough bins: one group per layer)."""
        gid = self.edge_role * bins + (self.edge_geo[..., 0] * bins).long().clamp(0, bins - 1)
        owner = None if self.shared else self.batch[self.edge_index[0]]
        return self._pool_groups(h, gid, NUM_ROLES * bins, owner, stats)

    def pool_nodes_by_group(self, h: Tensor, bins: int, stats: tuple[str, ...] = ("mean",)) -> Tensor:
        """``stats`` of each graph's nodes per (node kind, depth bin) group:
        [B, NUM_KINDS * bins * len(stats) * F]. A permutation moves neurons within a layer
        (one kind and depth), so this too is invariant."""
        gid = self.node_kind * bins + (self.node_depth[..., 0] * bins).long().clamp(0, bins - 1)
        return self._pool_groups(h, gid, NUM_KINDS * bins, None if self.shared else self.batch, stats)

    def _pool_groups(self, h: Tensor, gid: Tensor, G: int, owner: Tensor | None, stats) -> Tensor:
        bad = [s for s in stats if s not in POOL_STATS]
        if bad or not stats:
            raise ValueError(f"pooling statistics must be some of {POOL_STATS}, got {tuple(stats)}")
        gid = gid.to(h.device)
        if self.shared:     # h [B, E, F]: groups along axis -2, one structure
            seg, dim, n = gid, -2, G
        else:               # h [E, F]: a group per (graph, group)
            seg, dim, n = owner * G + gid, 0, self.num_graphs * G
        mean = scatter(h, seg, dim, n, reduce="mean")
        out = []
        for s in stats:
            if s == "mean":
                out.append(mean)
            elif s == "std":   # centred, then the root of the mean square (+ eps: finite gradients)
                d = h - mean.index_select(dim, seg)
                out.append((scatter(d * d, seg, dim, n, reduce="mean") + 1e-6).sqrt())
            elif s == "max":
                out.append(scatter(h, seg, dim, n, reduce="max"))
            else:
                out.append(-scatter(-h, seg, dim, n, reduce="max"))
        out = torch.cat(out, -1)
        return out.flatten(-2) if self.shared else out.view(self.num_graphs, G, -1).flatten(-2)


def _segment_pool(h: Tensor, index: Tensor, n: int) -> Tensor:
    return torch.cat([scatter(h, index, 0, n, reduce="mean"), scatter(h, index, 0, n, reduce="max")], -1)


class RoleNorm(nn.Module):
    """Standardise weights per tensor role: ``(w - mean[role]) / std[role]``.

    Statistics are buffers (saved with the model); :meth:`fit` computes them once on a
    training split. Until fitted it is the identity."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(NUM_ROLES))
        self.register_buffer("std", torch.ones(NUM_ROLES))

    @torch.no_grad()
    def fit(self, batches) -> "RoleNorm":
        """Per-role mean and standard deviation over every weight value of ``batches``
        (graphs in any form)."""
        s = torch.zeros(NUM_ROLES, dtype=torch.float64)
        s2 = torch.zeros(NUM_ROLES, dtype=torch.float64)
        n = torch.zeros(NUM_ROLES, dtype=torch.float64)
        for g in batches:
            gi = GraphInput.of(g)
            ea = gi.edge_attr.double()
            vals = ea.reshape(-1, ea.shape[-2], ea.shape[-1]) if gi.shared else ea.unsqueeze(0)
            per_edge = vals.sum((0, 2))
            per_edge2 = (vals ** 2).sum((0, 2))
            count = torch.full_like(per_edge, vals.shape[0] * vals.shape[2])
            s.index_add_(0, gi.edge_role.cpu(), per_edge.cpu())
            s2.index_add_(0, gi.edge_role.cpu(), per_edge2.cpu())
            n.index_add_(0, gi.edge_role.cpu(), count.cpu())
        seen = n > 0
        mean = torch.where(seen, s / n.clamp(min=1), torch.zeros_like(s))
        var = torch.where(seen, s2 / n.clamp(min=1) - mean ** 2, torch.ones_like(s))
        self.mean.copy_(mean.float())
        self.std.copy_(var.clamp(min=1e-12).sqrt().float().clamp(min=1e-6))
        return self

    def forward(self, edge_attr: Tensor, edge_role: Tensor) -> Tensor:
        mean, std = self.mean[edge_role].unsqueeze(-1), self.std[edge_role].unsqueeze(-1)
        return (edge_attr.to(mean.dtype) - mean) / std


class GraphEncoder(nn.Module):
    """Embeds edges (standardised values, role, depth, kernel position) and nodes (fixed
    flag and position, kind, depth) into ``hidden`` features. Edge values wider than
    ``in_width`` are refused; narrower ones are zero-padded.

    ``value_scales``: each standardised value ``w`` is read as ``w`` and
    ``asinh(s * w)`` for every ``s`` (through a small MLP): zoo weights span orders of
    magnitude (initial scales from 1e-3 to 0.5), and after one linear map a network of
    small weights is all near zero. The maps are element-wise and odd (0 stays 0), so
    equivariance and the padding of mixed batches are untouched."""

    def __init__(self, in_width: int, hidden: int, value_scales: tuple[float, ...] = ()):
        super().__init__()
        self.in_width = in_width
        self.value_scales = tuple(float(s) for s in value_scales)
        self.norm = RoleNorm()
        k = in_width * (1 + len(self.value_scales))
        self.edge_value = nn.Linear(k, hidden) if not self.value_scales else mlp([k, hidden, hidden])
        self.edge_role = nn.Embedding(NUM_ROLES, hidden)
        self.edge_geo = nn.Linear(3, hidden)
        self.node_x = nn.Linear(3 + 1, hidden)
        self.node_kind = nn.Embedding(NUM_KINDS, hidden)

    def forward(self, g: GraphInput) -> tuple[Tensor, Tensor]:
        ea = self.norm(g.edge_attr, g.edge_role)
        valid = g.valid()
        if valid is not None:   # padding of a mixed batch stays zero, as if unpadded
            ea = ea * valid
        w = ea.shape[-1]
        if w > self.in_width:
            raise ValueError(f"edge features are {w} wide, this model reads at most {self.in_width}: "
                             f"use the param layout (width 1) or a model made with in_width >= {w}")
        if w < self.in_width:
            ea = nn.functional.pad(ea, (0, self.in_width - w))
        dt = self.edge_role.weight.dtype
        ea = ea.to(dt)
        if self.value_scales:
            ea = torch.cat([ea] + [torch.asinh(s * ea) for s in self.value_scales], -1)
        e = self.edge_value(ea) + self.edge_role(g.edge_role) + self.edge_geo(g.edge_geo.to(dt))
        x = self.node_x(torch.cat([g.x, g.node_depth], -1).to(dt)) + self.node_kind(g.node_kind)
        if g.shared:
            x = x.expand(g.num_graphs, *x.shape)
        return x, e


def mlp(sizes: list[int], act=nn.SiLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1])
