"""What GMN and NGT share: an encoder, a stack of (x, edge_attr) layers, and the heads."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor, nn

from .inputs import NUM_ROLES, GraphEncoder, GraphInput, mlp

READOUT_NORMS = (None, "batch")


class ReadoutNorm(nn.BatchNorm1d):
    """Standardises each pooled readout feature across the networks of a batch (running
    statistics in eval mode; no affine part: the readout MLP's first layer follows).

    Why: mean and max pools over hundreds of edges are nearly the same for every network
    of a zoo (a SIREN zoo's pooled features vary by about 4% of their size from network
    to network), so the readout sees a near-constant input and its gradients vanish; this
    makes the differences between networks O(1), as StatNN's standardised statistics are.
    It acts per feature across networks, so invariance to permutations (and to what
    ``canonical`` removes) is kept. A batch of one network in training mode is read with
    the running statistics (a batch of one has no spread). Under torchrun each process
    keeps its own running statistics (no SyncBatchNorm); rank 0's are saved."""

    def __init__(self, width: int):
        super().__init__(width, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, training=False,
                                            eps=self.eps)
        return super().forward(x)


def readout_norm_layer(kind: str | None, width: int) -> nn.Module:
    if kind not in READOUT_NORMS:
        raise ValueError(f"readout_norm must be one of {READOUT_NORMS}, got {kind!r}")
    return ReadoutNorm(width) if kind == "batch" else nn.Identity()


def check_sizes(owner: str, minimum: int = 1, **sizes) -> None:
    """Refuse sizes that are not integers of at least ``minimum``, naming the argument
    (a negative width otherwise fails deep inside a layer with a torch message)."""
    for name, v in sizes.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {v!r}")


class GraphMetanet(nn.Module):
    """Encoder, ``layers`` (each ``(x, edge_index, edge_attr) -> (x, edge_attr)``), an
    invariant readout (mean and max of nodes and edges; with ``readout_bins``, also the
    mean of edges per (tensor role, depth bin); with ``readout_norm="batch"`` those
    pooled features standardised across networks by :class:`ReadoutNorm`) and
    equivariant node and edge heads.
    Subclasses build the layers and may transform ``graphs`` in :meth:`encode`."""

    def _build(self, layers: nn.ModuleList, in_width: int, hidden: int, out_dim: int,
               edge_out: int | None, node_out: int, value_scales: tuple[float, ...] = (),
               readout_bins: int = 0, readout_norm: str | None = None) -> None:
        self.encoder = GraphEncoder(in_width, hidden, value_scales)
        self.layers = layers
        self.readout_bins = readout_bins
        width = 4 * hidden + (NUM_ROLES * readout_bins * hidden if readout_bins else 0)
        self.readout = mlp([width, hidden, out_dim])
        self.readout_norm = readout_norm_layer(readout_norm, width)
        self.edge_head = mlp([hidden, hidden, in_width if edge_out is None else edge_out])
        self.node_head = mlp([hidden, hidden, node_out])

    @property
    def norm(self):
        """Per-role input standardisation (``model.norm.fit(train_batches)``)."""
        return self.encoder.norm

    def fit_normalization(self, batches):
        """Per-role standardisation of the weights from ``batches`` (a training split)."""
        self.encoder.norm.fit(batches)
        return self

    def encode(self, graphs) -> tuple[GraphInput, Tensor, Tensor]:
        g = GraphInput.of(graphs)
        x, e = self.encoder(g)
        for layer in self.layers:
            x, e = layer(x, g.edge_index, e)
        return g, x, e

    def forward(self, graphs) -> Tensor:
        g, x, e = self.encode(graphs)
        pooled = [g.pool_nodes(x), g.pool_edges(e)]
        if self.readout_bins:
            pooled.append(g.pool_edges_by_group(e, self.readout_bins))
        return self.readout(self.readout_norm(torch.cat(pooled, -1)))

    def node_scores(self, graphs) -> Tensor:
        return self.node_head(self.encode(graphs)[1])

    def edit(self, graphs):
        out = self.edge_head(self.encode(graphs)[2]).to(graphs.edge_attr.dtype)
        if hasattr(graphs, "with_edge_attr"):
            return graphs.with_edge_attr(out)
        new = graphs.__copy__()
        new.edge_attr = out
        return new
