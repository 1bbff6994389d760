"""Batches of parameter graphs.

- :class:`SharedBatch`: B checkpoints of ONE architecture. The structure (edge_index,
  edge and node types, roles, depths, node features) is the same for all of them, so it
  is held once; only the edge features are per checkpoint: ``edge_attr`` [B, E, width].
  Converting a stack of checkpoints costs one gather of their weights, nothing more.
- :func:`collate`: graphs of DIFFERENT architectures (or layouts) as one PyG ``Batch``,
  edge features zero-padded to a common width, the padding counted.

Metanetworks (:mod:`metanet.nn`) accept both and give the same outputs.

>>> sb = SharedBatch.of(ws, zoo.stacked(range(64)))          # [64, E, width]
>>> ws.state_dicts(sb)                                        # exact inverse
>>> sb.to_batch()                                             # the equivalent PyG Batch
>>> mixed = collate([ws_a.graph(sd_a, "param"), ws_b.graph(sd_b, "param")])
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch_geometric.data import Batch

_SHARED_FIELDS = ("x", "edge_index", "edge_type", "edge_pos", "node_type", "node_pos",
                  "edge_role", "edge_depth", "edge_kpos", "node_kind", "node_depth")


class SharedBatch:
    """B checkpoints of one architecture: per-checkpoint edge features, one structure.

    Attributes: ``edge_attr`` [B, E, width]; ``extras`` [B, K] float64 non-weight state
    entries; the structure of the layout, shared by all B graphs and read-only:
    ``x`` [N, 3], ``edge_index`` [2, E], ``edge_type``, ``edge_pos``, ``edge_role``,
    ``edge_depth`` [E], ``edge_kpos`` [E, 2], ``node_type``, ``node_pos``, ``node_kind``,
    ``node_depth`` [N] (see :class:`~metanet.graph.ParamGraph`); ``layout`` (str),
    ``width`` [1], ``num_graphs`` (B), ``num_nodes`` (N per graph).

    ``WeightSpace.state_dicts(sb)`` turns it (or one with edited ``edge_attr``) back into
    stacked state dicts.
    """

    def __init__(self, layout, edge_attr: torch.Tensor, extras: torch.Tensor | None = None):
        if edge_attr.dim() != 3 or edge_attr.shape[1:] != (layout.num_edges, layout.width):
            raise ValueError(f"edge_attr has shape {tuple(edge_attr.shape)}; this layout needs "
                             f"[B, {layout.num_edges}, {layout.width}]")
        self._layout = layout
        self.edge_attr = edge_attr
        B = edge_attr.shape[0]
        self.extras = (torch.zeros(B, 0, dtype=torch.float64, device=edge_attr.device)
                       if extras is None else extras)
        s = layout._structure(edge_attr.device)
        for k in _SHARED_FIELDS:
            setattr(self, k, s[k])
        self.layout = layout.layout
        self.width = torch.tensor([layout.width])

    @classmethod
    def of(cls, ws, stacked: Mapping[str, torch.Tensor], layout: str = "compact", *,
           width: int | None = None, check: bool = True) -> "SharedBatch":
        """Stacked checkpoints (``{name: Tensor[B, ...]}``) of the architecture of ``ws``."""
        return ws.layout(layout, width).shared(stacked, check=check)

    @property
    def space(self):
        """The :class:`~metanet.WeightSpace` of the checkpoints."""
        return self._layout.ws

    def with_state_dicts(self, stacked) -> "SharedBatch":
        """The same layout filled with other stacked checkpoints of the architecture."""
        return self._layout.shared(stacked)

    @property
    def num_graphs(self) -> int:
        return int(self.edge_attr.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def with_edge_attr(self, edge_attr: torch.Tensor) -> "SharedBatch":
        """The same structure with other edge features (e.g. a metanetwork's edge output
        of the layout's width), ready for ``ws.state_dicts``."""
        return SharedBatch(self._layout, edge_attr, self.extras)

    def to(self, device) -> "SharedBatch":
        return SharedBatch(self._layout, self.edge_attr.to(device), self.extras.to(device))

    def to_batch(self) -> Batch:
        """The equivalent PyG Batch (structure repeated per graph), as ``ws.graphs`` makes."""
        return self._layout._batch(self.edge_attr, self.extras)

    def __len__(self) -> int:
        return self.num_graphs

    def __repr__(self) -> str:
        return (f"SharedBatch({self.num_graphs} graphs, {self.num_nodes} nodes, {self.num_edges} edges, "
                f"edge_attr={list(self.edge_attr.shape)} {self.edge_attr.dtype}, layout={self.layout!r})")


def collate(graphs: Sequence, width: int | None = None, dtype: torch.dtype | None = None) -> Batch:
    """Parameter graphs of any architectures and layouts as one PyG ``Batch``.

    Edge features are zero-padded to a common ``width`` (default: the widest) and cast to
    a common float ``dtype`` (default: promoted); non-weight entries (``extras``) are
    padded to the longest. The batch reports its padding: ``pad_values`` (padded edge
    feature slots), ``pad_fraction`` (their share of all slots); ``width`` keeps each
    graph's own width, so ``edge_attr[:, :width]`` of a graph is its own features."""
    graphs = list(graphs)
    if not graphs:
        raise ValueError("collate needs at least one graph")
    W = max(int(g.edge_attr.shape[-1]) for g in graphs) if width is None else int(width)
    if any(g.edge_attr.shape[-1] > W for g in graphs):
        raise ValueError(f"width={W} is narrower than a graph's edge features "
                         f"({max(int(g.edge_attr.shape[-1]) for g in graphs)}): pass a wider width")
    if dtype is None:
        dtype = graphs[0].edge_attr.dtype
        for g in graphs[1:]:
            dtype = torch.promote_types(dtype, g.edge_attr.dtype)
    K = max(int(g.extras.shape[-1]) for g in graphs)
    pad = 0
    out = []
    for g in graphs:
        g = copy.copy(g)   # shallow: edited fields are rebound, the graph is left alone
        ea = g.edge_attr
        if ea.shape[-1] != W or ea.dtype != dtype:
            pad += ea.shape[0] * (W - ea.shape[-1])
            new = torch.zeros(ea.shape[0], W, dtype=dtype, device=ea.device)
            new[:, :ea.shape[-1]] = ea
            g.edge_attr = new
        if g.extras.shape[-1] != K:
            g.extras = torch.nn.functional.pad(g.extras, (0, K - g.extras.shape[-1]))
        out.append(g)
    batch = Batch.from_data_list(out)
    total = int(batch.edge_attr.numel())
    batch.pad_values = int(pad)
    batch.pad_fraction = pad / total if total else 0.0
    return batch
