"""GMN: message passing over parameter graphs with edge and node updates (Graph
Metanetworks, Lim et al. ICLR 2024; neural graphs, Kofinas et al. ICLR 2024)."""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from .canonical import canonicalize
from .base import GraphMetanet, check_sizes, readout_norm_layer
from .inputs import NUM_KINDS, NUM_ROLES, POOL_STATS, GraphInput, mlp
from .statnn import NUM_STATS, fit_standardisation, role_depth_groups, standardise, weight_statistics

READOUTS = ("mean", "pna")


class GMNLayer(MessagePassing):
    r"""One round of edge and node updates over a parameter graph.

    .. math::
        e'_{ij} &= e_{ij} + \phi_e([x_i, x_j, e_{ij}]) \\
        x'_i &= x_i + \phi_x\big([x_i,\ \mathrm{aggr}_{j \to i}\ \phi_{in}([x_j, e'_{ji}]),
                \ \mathrm{aggr}_{i \to k}\ \phi_{out}([x_k, e'_{ik}])]\big)

    Messages flow both ways along every weight (a neuron hears the layer that feeds it and
    the layer it feeds), each direction with its own function. Every term is a function of
    an edge and its endpoints, so the layer is permutation equivariant.

    Args:
        hidden: node and edge feature size.
        aggr: aggregation by name ("mean", "sum", "max", "std"), or several names: each
            direction's messages aggregated by each, side by side (PNA-like; PyG's
            MultiAggregation), for ``phi_x`` to read.
        fast: compute the same functions with less per-edge work (off by default): the
            first linear map of ``phi_e``, ``phi_in`` and ``phi_out`` is split by input, its
            node parts applied once per node and gathered to the edges (no per-edge
            concatenation), messages summed by ``index_add_`` (no index broadcast to the
            feature width), and the last linear map of ``phi_in`` and ``phi_out`` applied
            per node after the aggregation instead of per edge before it. Equal to the
            default path up to float rounding (summation order), not bitwise; the same
            parameters, so a model trained either way loads in the other. Aggregations
            "mean" and "sum" only.

    Shapes:
        x [N, hidden] or [B, N, hidden]; edge_index [2, E]; edge_attr [E, hidden] or
        [B, E, hidden] -> (x, edge_attr) of the same shapes.
    """

    def __init__(self, hidden: int, aggr: str | tuple[str, ...] = "mean", fast: bool = False):
        aggrs = (aggr,) if isinstance(aggr, str) else tuple(aggr)
        if not aggrs:
            raise ValueError("aggr: give at least one aggregation")
        if fast and aggrs not in (("mean",), ("sum",)):
            raise ValueError(f"fast=True supports aggr 'mean' or 'sum', got {aggr!r}: use fast=False")
        super().__init__(aggr=aggrs[0] if len(aggrs) == 1 else list(aggrs), node_dim=-2)
        self.hidden = hidden
        self.fast = bool(fast)
        self.phi_e = mlp([3 * hidden, hidden, hidden])
        self.phi_in = mlp([2 * hidden, hidden, hidden])
        self.phi_out = mlp([2 * hidden, hidden, hidden])
        self.phi_x = mlp([(1 + 2 * len(aggrs)) * hidden, hidden, hidden])
        self.norm_x = nn.LayerNorm(hidden)
        self.norm_e = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-1] != self.hidden or edge_attr.shape[-1] != self.hidden:
            raise ValueError(f"{self}: expected features of size {self.hidden}, got nodes "
                             f"{tuple(x.shape)} and edges {tuple(edge_attr.shape)}")
        if self.fast:
            return self._fast_forward(x, edge_index, edge_attr)
        e = edge_attr + self.edge_updater(edge_index, x=self.norm_x(x), edge_attr=self.norm_e(edge_attr))
        xn, en = self.norm_x(x), self.norm_e(e)
        m_in = self.propagate(edge_index, x=xn, edge_attr=en, phi=self.phi_in)
        m_out = self.propagate(edge_index.flip(0), x=xn, edge_attr=en, phi=self.phi_out)
        return x + self.phi_x(torch.cat([xn, m_in, m_out], -1)), e

    def _fast_forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """The default forward's functions with the first linear maps split by input (see
        ``fast``): ``Linear([a, b]) = W_a a + W_b b + bias``, node terms once per node."""
        H = self.hidden
        src, dst = edge_index[0], edge_index[1]   # PyG's flow: j = source, i = target
        xn = self.norm_x(x)                          # x is unchanged until phi_x: one norm
        lin, rest = self.phi_e[0], self.phi_e[1:]
        W = lin.weight
        h = (nn.functional.linear(xn, W[:, :H]).index_select(-2, dst)
             + nn.functional.linear(xn, W[:, H:2 * H]).index_select(-2, src)
             + nn.functional.linear(self.norm_e(edge_attr), W[:, 2 * H:], lin.bias))
        e = edge_attr + rest(h)
        en = self.norm_e(e)
        m_in = self._fast_messages(self.phi_in, xn, en, src, dst)    # j -> i, at the targets
        m_out = self._fast_messages(self.phi_out, xn, en, dst, src)  # reversed: i -> j, at the sources
        return x + self.phi_x(torch.cat([xn, m_in, m_out], -1)), e

    def _fast_messages(self, phi: nn.Module, xn: Tensor, en: Tensor, frm: Tensor, to: Tensor) -> Tensor:
        """``aggr_{frm -> to} phi([x_frm, e])``, phi = Linear, SiLU, Linear: the first
        linear map split by input, the second applied after the aggregation (it is linear:
        the sum of ``W h + b`` over ``d`` messages is ``W sum(h) + d b``; the mean of none
        is 0, as PyG's)."""
        H = self.hidden
        lin, act, last = phi
        h = act(nn.functional.linear(xn, lin.weight[:, :H]).index_select(-2, frm)
                + nn.functional.linear(en, lin.weight[:, H:], lin.bias))
        N = xn.shape[-2]
        total = h.new_zeros(*h.shape[:-2], N, h.shape[-1]).index_add_(h.dim() - 2, to, h)
        count = torch.bincount(to, minlength=N).to(h.dtype).unsqueeze(-1)
        if self.aggr == "mean":
            return nn.functional.linear(total / count.clamp(min=1), last.weight, last.bias) * (count > 0)
        return nn.functional.linear(total, last.weight) + count * last.bias

    def edge_update(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        return self.phi_e(torch.cat([x_i, x_j, edge_attr], -1))

    def message(self, x_j: Tensor, edge_attr: Tensor, phi: nn.Module) -> Tensor:
        return phi(torch.cat([x_j, edge_attr], -1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hidden}, aggr={self.aggr!r}" + (", fast=True)" if self.fast else ")")


class WeightStats(nn.Module):
    """StatNN's statistics (mean, variance, five quantiles, log count) of a network's
    weight values per (tensor role, depth bin), standardised with their mean and
    deviation on a training split (buffers, saved with the model): :class:`GMN`'s
    statistics path. A function of the multiset of values of each tensor, so invariant
    under every permutation of neurons. ``clip``: standardised values limited to
    [-clip, clip] training deviations, as StatNN's (None: not limited)."""

    def __init__(self, bins: int, clip: float | None = None):
        super().__init__()
        self.bins, self.clip = bins, clip
        dim = NUM_ROLES * bins * NUM_STATS
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))

    def features(self, g: GraphInput) -> Tensor:
        return weight_statistics(g, role_depth_groups(g, self.bins), NUM_ROLES * self.bins).to(self.feat_mean.dtype)

    @torch.no_grad()
    def fit(self, inputs) -> "WeightStats":
        fit_standardisation(self.feat_mean, self.feat_std, torch.cat([self.features(g) for g in inputs]))
        return self

    def forward(self, g: GraphInput) -> Tensor:
        return standardise(self.features(g), self.feat_mean, self.feat_std, self.clip)


class GMN(GraphMetanet, PyTorchModelHubMixin):
    """Graph metanetwork: an encoder, ``layers`` rounds of :class:`GMNLayer`, and heads.

    - ``model(graphs)`` -> [B, out_dim]: invariant (one vector per network: accuracy,
      the class of an INR);
    - ``model.edit(graphs)`` -> the same kind of batch whose edge features are the edge
      head's output (``edge_out`` wide; with the layout's width, ``ws.state_dicts``
      turns it into a network of the same architecture);
    - ``model.node_scores(graphs)`` -> [N, node_out] or [B, N, node_out] (pruning
      scores, one per neuron).

    ``graphs`` is a PyG Batch or ParamGraph of any architectures, or a
    :class:`~metanet.graph.SharedBatch`; both give the same outputs.

    Args:
        in_width: widest edge feature vector read (1 for the param layout).
        hidden: feature size; layers: rounds of message passing; out_dim: invariant
        output size; edge_out (default in_width) / node_out: equivariant head sizes;
        aggr: aggregation.
        canonical: "scale", "sign" or "both" makes the model invariant (its node and edge
            heads equivariant) to the positive scalings / sign flips the weight space
            offers, by reading canonical forms (:func:`metanet.nn.canonicalize`; ScaleGMN's
            idea); needs a :class:`~metanet.graph.SharedBatch`, which knows its weight space.
        value_scales: each standardised weight is also read as ``asinh(s * w)`` for these
            ``s`` (:class:`~metanet.nn.GraphEncoder`); () reads ``w`` through one linear map.
        readout_bins: the readout also pools edges per (tensor role, depth bin), with this
            many depth bins; 0 pools all edges together only.
        readout: "mean" pools the mean of each (role, depth bin) group of final edge
            features; "pna" pools their mean, std, max and min, and the same four of the
            final node features per (node kind, depth bin) (needs ``readout_bins``).
        weight_stats_bins: > 0 makes the model a hybrid: the readout also reads StatNN's
            statistics of the input weights per (role, depth bin) with this many depth bins
            (:class:`WeightStats`, of the canonical forms when ``canonical`` is set); 0: off.
        weight_stats_fusion: how the hybrid reads them: "concat" (beside the pooled
            features, into the readout MLP) or "sum" (StatNN's own MLP on them, its output
            added to the readout's: the message passing learns a correction to StatNN).
        weight_stats_clip: the hybrid's standardised statistics are limited to
            [-clip, clip] training deviations, as :class:`~metanet.nn.StatNN`'s ``clip``
            (a (role, depth) group that few training architectures have gets a tiny
            deviation; on a mixed zoo a network of a rarer kind then reaches the readout
            at thousands of deviations); None: not limited. Checkpoints saved before the
            option load unclipped, as they were trained.
        readout_norm: "batch" standardises the pooled readout features across the networks
            of a batch (:class:`~metanet.nn.base.ReadoutNorm`: batch statistics in
            training, running statistics in eval); None (the default) reads them as
            pooled. Without it a plain GMN stays at chance on the digits-SIREN zoo.
        fast: the layers' faster computation of the same functions (:class:`GMNLayer`'s
            ``fast``: node terms of the first linear maps once per node; equal to float
            rounding; aggr "mean" or "sum"); off by default. About 1.6x the training
            throughput on large graphs (benchmarks/metanet_mixed.md).
    """

    def __init__(self, in_width: int = 1, hidden: int = 64, layers: int = 3, out_dim: int = 1,
                 edge_out: int | None = None, node_out: int = 1, aggr: str = "mean",
                 canonical: str | None = None, value_scales: tuple[float, ...] = (1.0, 10.0, 100.0),
                 readout_bins: int = 4, readout: str = "mean", weight_stats_bins: int = 0,
                 weight_stats_fusion: str = "concat", readout_norm: str | None = None, fast: bool = False,
                 weight_stats_clip: float | None = 10.0):
        super().__init__()
        check_sizes("GMN", in_width=in_width, hidden=hidden, out_dim=out_dim, edge_out=edge_out, node_out=node_out)
        check_sizes("GMN", 0, layers=layers, readout_bins=readout_bins)
        if canonical not in (None, "scale", "sign", "both"):
            raise ValueError(f"canonical must be None, 'scale', 'sign' or 'both', got {canonical!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if readout == "pna" and readout_bins < 1:
            raise ValueError("readout='pna' pools per (role, depth bin) group: give readout_bins >= 1")
        if weight_stats_bins < 0:
            raise ValueError(f"weight_stats_bins must be >= 0, got {weight_stats_bins}")
        if weight_stats_fusion not in ("concat", "sum"):
            raise ValueError(f"weight_stats_fusion must be 'concat' or 'sum', got {weight_stats_fusion!r}")
        if weight_stats_clip is not None and not weight_stats_clip > 0:
            raise ValueError(f"weight_stats_clip must be a positive number of deviations or None, "
                             f"got {weight_stats_clip!r}")
        self.canonical = canonical
        aggr = aggr if isinstance(aggr, str) else tuple(aggr)
        self._build(nn.ModuleList(GMNLayer(hidden, aggr, fast) for _ in range(layers)), in_width, hidden,
                    out_dim, edge_out, node_out, tuple(value_scales), readout_bins, readout_norm)
        self.readout_kind = readout
        self.weight_stats = WeightStats(weight_stats_bins, weight_stats_clip) if weight_stats_bins else None
        self.stats_fusion = weight_stats_fusion
        concat = weight_stats_bins and weight_stats_fusion == "concat"
        if readout != "mean" or concat:   # a wider readout (the default is built by _build)
            k = len(POOL_STATS) if readout == "pna" else 1
            width = 4 * hidden + NUM_ROLES * readout_bins * k * hidden
            if readout == "pna":
                width += NUM_KINDS * readout_bins * k * hidden
            if concat:
                width += NUM_ROLES * weight_stats_bins * NUM_STATS
            self.readout = mlp([width, hidden, out_dim])
            self.readout_norm = readout_norm_layer(readout_norm, width)
        if weight_stats_bins and weight_stats_fusion == "sum":   # StatNN's MLP (as build_model sizes it)
            h = max(hidden, 32)
            self.stats_head = mlp([NUM_ROLES * weight_stats_bins * NUM_STATS, h, h, out_dim], act=nn.ReLU)

    @classmethod
    def _from_pretrained(cls, **kwargs):
        # a checkpoint saved before weight_stats_clip has no such key in its config and was
        # trained unclipped: it loads unclipped, whatever the default
        kwargs.setdefault("weight_stats_clip", None)
        return super()._from_pretrained(**kwargs)

    def _canonical(self, graphs):
        if self.canonical is None:
            return graphs
        if not hasattr(graphs, "space"):
            raise ValueError(f"GMN(canonical={self.canonical!r}) reads a SharedBatch (it needs the "
                             f"weight space to canonicalise); got {type(graphs).__name__}")
        ws = graphs.space
        return graphs.with_state_dicts(canonicalize(ws, ws.state_dicts(graphs), self.canonical))

    def fit_normalization(self, batches):
        """Per-role standardisation of the weights (and, for the statistics path, of the
        statistics) from ``batches`` (a training split)."""
        batches = list(batches)
        super().fit_normalization(batches)
        if self.weight_stats is not None:
            self.weight_stats.fit([GraphInput.of(self._canonical(b)) for b in batches])
        return self

    def forward(self, graphs) -> Tensor:
        if self.readout_kind == "mean" and self.weight_stats is None:
            return super().forward(graphs)
        g, x, e = self.encode(graphs)
        pooled = [g.pool_nodes(x), g.pool_edges(e)]
        if self.readout_kind == "pna":
            pooled += [g.pool_edges_by_group(e, self.readout_bins, POOL_STATS),
                       g.pool_nodes_by_group(x, self.readout_bins, POOL_STATS)]
        elif self.readout_bins:
            pooled.append(g.pool_edges_by_group(e, self.readout_bins))
        if self.weight_stats is None:
            return self.readout(self.readout_norm(torch.cat(pooled, -1)))
        stats = self.weight_stats(g).to(x.dtype)
        if self.stats_fusion == "sum":
            return self.readout(self.readout_norm(torch.cat(pooled, -1))) + self.stats_head(stats)
        return self.readout(self.readout_norm(torch.cat(pooled + [stats], -1)))

    def encode(self, graphs) -> tuple[GraphInput, Tensor, Tensor]:
        return super().encode(self._canonical(graphs))
