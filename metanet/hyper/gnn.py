"""Graph networks over op graphs: GHN-2's gated GNN and GHN-3's graph transformer.

Both map node features ``h [N, hid]`` of one :class:`~metanet.hyper.graph.HyperGraph`
to new node features ``[N, hid]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .graph import HyperGraph

__all__ = ["GatedGNN", "GraphTransformer"]


class GatedGNN(nn.Module):
    r"""GHN-2's gated graph network (Knyazev et al. 2021).

    Each round runs a forward pass over the nodes in topological order, then a backward
    pass in reverse order. A node is updated once its predecessors (in the pass's
    direction) are:

    .. math::
        m_v = \sum_{u \to v} \mathrm{MLP}(h_u)
              + \sum_{u \leadsto v,\ 2 \le s(u,v) \le s_{max}} \frac{1}{s(u,v)} \mathrm{MLP}_{sp}(h_u),
        \qquad h_v \leftarrow \mathrm{GRU}(m_v, h_v)

    where the second sum runs over the virtual edges between nodes at shortest-path
    distance ``s`` (which carry information across long chains of ops). Nodes at one
    topological level do not depend on each other, so each level is one batched update.

    Args:
        hid: feature width.
        rounds: forward+backward rounds.
        max_virtual: longest distance joined by a virtual edge (``< 2``: none).
    """

    def __init__(self, hid: int, rounds: int = 1, max_virtual: int = 5):
        super().__init__()
        self.rounds, self.max_virtual = rounds, max_virtual
        self.msg = nn.ModuleList(nn.Sequential(nn.Linear(hid, hid), nn.ReLU(), nn.Linear(hid, hid))
                                 for _ in range(2))
        self.msg_sp = nn.ModuleList(nn.Sequential(nn.Linear(hid, hid), nn.ReLU(), nn.Linear(hid, hid))
                                    for _ in range(2))
        self.gru = nn.GRUCell(hid, hid)

    def forward(self, h: torch.Tensor, g: HyperGraph) -> torch.Tensor:
        for _ in range(self.rounds):
            for d, reverse in enumerate((False, True)):
                for lv in g.levels(reverse, self.max_virtual):
                    nodes = lv["nodes"]
                    m = h.new_zeros(len(nodes), h.shape[1])
                    if lv["src"].numel():
                        m = m.index_add(0, lv["dst"], self.msg[d](h[lv["src"]]))
                    if lv["vsrc"].numel():
                        vm = self.msg_sp[d](h[lv["vsrc"]]) * lv["vweight"].to(h.dtype)[:, None]
                        m = m.index_add(0, lv["vdst"], vm)
                    h = h.index_copy(0, nodes, self.gru(m, h[nodes]))
        return h

    def extra_repr(self) -> str:
        return f"rounds={self.rounds}, max_virtual={self.max_virtual}"


class _Layer(nn.Module):
    def __init__(self, hid: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hid)
        self.qkv = nn.Linear(hid, 3 * hid)
        self.proj = nn.Linear(hid, hid)
        self.norm2 = nn.LayerNorm(hid)
        self.ffn = nn.Sequential(nn.Linear(hid, 2 * hid), nn.GELU(), nn.Linear(2 * hid, hid))

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(n, 3, self.heads, d // self.heads).permute(1, 2, 0, 3)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [heads, N, dh]
        h = h + self.proj(a.transpose(0, 1).reshape(n, d))
        return h + self.ffn(self.norm2(h))


class GraphTransformer(nn.Module):
    r"""GHN-3's graph transformer (Knyazev et al. 2023), Graphormer-style.

    Node inputs get in- and out-degree embeddings; every attention layer adds a learned
    bias per head for the directed shortest-path distance ``s(u, v)`` along the data
    flow and one for ``s(v, u)`` (both capped at ``max_dist``), so attention sees the
    graph's structure in both directions:

    .. math::
        \mathrm{softmax}\Big(\frac{q_u k_v^\top}{\sqrt{d_h}} + b^{fw}_{s(u,v)} + b^{bw}_{s(v,u)}\Big)

    Args:
        hid: feature width (divisible by ``heads``).
        layers: transformer layers (pre-norm, attention + MLP).
        heads: attention heads.
        max_dist: distances at or beyond this share one bias.
        max_degree: degrees at or beyond this share one embedding.
    """

    def __init__(self, hid: int, layers: int = 3, heads: int = 4, max_dist: int = 8,
                 max_degree: int = 16):
        super().__init__()
        if hid % heads:
            raise ValueError(f"hid {hid} must be divisible by heads {heads}")
        self.max_dist, self.max_degree, self.heads = max_dist, max_degree, heads
        self.in_deg = nn.Embedding(max_degree, hid)
        self.out_deg = nn.Embedding(max_degree, hid)
        self.dist_fw = nn.Embedding(max_dist + 1, heads)
        self.dist_bw = nn.Embedding(max_dist + 1, heads)
        self.layers = nn.ModuleList(_Layer(hid, heads) for _ in range(layers))

    def forward(self, h: torch.Tensor, g: HyperGraph) -> torch.Tensor:
        dev = h.device
        h = (h + self.in_deg(g.in_degree.clamp(max=self.max_degree - 1).to(dev))
             + self.out_deg(g.out_degree.clamp(max=self.max_degree - 1).to(dev)))
        dist = g.distances(self.max_dist).to(dev).long()
        bias = (self.dist_fw(dist) + self.dist_bw(dist.t())).permute(2, 0, 1).to(h.dtype)
        for layer in self.layers:
            h = layer(h, bias)
        return h

    def extra_repr(self) -> str:
        return f"heads={self.heads}, max_dist={self.max_dist}"
