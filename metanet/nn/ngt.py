"""NGT: a graph transformer over parameter graphs with edge features inside attention
(neural graphs' NG-T, Kofinas et al. ICLR 2024), on PyG's ``TransformerConv``."""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch_geometric.nn import TransformerConv

from .base import GraphMetanet, check_sizes
from .inputs import mlp


class NGTLayer(nn.Module):
    r"""Attention over a neuron's incoming and outgoing weights, then an edge update.

    .. math::
        x'_i &= x_i + \mathrm{FF}\big(\mathrm{Attn}_{in}(x, e)_i + \mathrm{Attn}_{out}(x, e)_i\big) \\
        \mathrm{Attn}(x, e)_i &= \textstyle\sum_j \alpha_{ij} (W_v x_j + W_e e_{ij}),\quad
        \alpha_{ij} = \mathrm{softmax}_j\big((W_q x_i)^\top (W_k x_j + W_e e_{ij}) / \sqrt{d}\big) \\
        e'_{ij} &= e_{ij} + \phi_e([x'_i, x'_j, e_{ij}])

    Args:
        hidden: feature size (divisible by ``heads``); heads: attention heads.

    Shapes:
        x [N, hidden] or [B, N, hidden]; edge_index [2, E]; edge_attr [E, hidden] or
        [B, E, hidden] -> (x, edge_attr) of the same shapes. With a batch axis the B
        graphs are attended separately (node offsets added here).
    """

    def __init__(self, hidden: int, heads: int = 4):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        self.hidden, self.heads = hidden, heads
        self.attn_in = TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=hidden)
        self.attn_out = TransformerConv(hidden, hidden // heads, heads=heads, edge_dim=hidden)
        self.ff = mlp([hidden, 2 * hidden, hidden])
        self.phi_e = mlp([3 * hidden, hidden, hidden])
        self.norm_x = nn.LayerNorm(hidden)
        self.norm_e = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self):
        self.attn_in.reset_parameters()
        self.attn_out.reset_parameters()
        for part in (self.ff, self.phi_e, self.norm_x, self.norm_e):
            for m in part.modules():
                if isinstance(m, (nn.Linear, nn.LayerNorm)):
                    m.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        shape_x, shape_e = x.shape, edge_attr.shape
        if x.dim() == 3:  # [B, N, H]: one big graph of B copies
            B, N, _ = x.shape
            off = (torch.arange(B, device=x.device) * N).view(1, B, 1)
            edge_index = (edge_index.unsqueeze(1) + off).reshape(2, -1)
            x, edge_attr = x.reshape(B * N, -1), edge_attr.reshape(-1, edge_attr.shape[-1])
        xn, en = self.norm_x(x), self.norm_e(edge_attr)
        a = self.attn_in(xn, edge_index, en) + self.attn_out(xn, edge_index.flip(0), en)
        x = x + a
        x = x + self.ff(self.norm_x(x))
        xn = self.norm_x(x)
        src, dst = edge_index
        e = edge_attr + self.phi_e(torch.cat([xn[dst], xn[src], en], -1))
        return x.reshape(shape_x), e.reshape(shape_e)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hidden}, heads={self.heads})"


class NGT(GraphMetanet, PyTorchModelHubMixin):
    """Graph transformer metanetwork; the same interface as :class:`~metanet.nn.GMN`
    (``model(graphs)`` invariant, ``edit``, ``node_scores``; ``value_scales``,
    ``readout_bins`` and ``readout_norm`` as there)."""

    def __init__(self, in_width: int = 1, hidden: int = 64, layers: int = 3, heads: int = 4,
                 out_dim: int = 1, edge_out: int | None = None, node_out: int = 1,
                 value_scales: tuple[float, ...] = (1.0, 10.0, 100.0), readout_bins: int = 4,
                 readout_norm: str | None = None):
        super().__init__()
        check_sizes("NGT", in_width=in_width, hidden=hidden, heads=heads, out_dim=out_dim, edge_out=edge_out,
                    node_out=node_out)
        check_sizes("NGT", 0, layers=layers, readout_bins=readout_bins)
        self._build(nn.ModuleList(NGTLayer(hidden, heads) for _ in range(layers)), in_width, hidden,
                    out_dim, edge_out, node_out, tuple(value_scales), readout_bins, readout_norm)
