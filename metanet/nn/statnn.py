"""StatNN (Unterthiner et al. 2020): statistics of the weights into an MLP, the baseline
every metanetwork is compared with.

Statistics are taken per group of weights: by default per (tensor role, depth bin), which
is defined for every architecture alike (for one architecture with ``bins`` large
enough, that is one group per tensor, as in the original); ``by="tensor"`` groups by
tensor index (one architecture only). Each group gives mean, variance, the 0/25/50/75/100%
quantiles and log(1 + count); empty groups give zeros.
"""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from ..graph.features import ROLE_INDEX, ROLES
from .inputs import GraphInput, mlp

_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
NUM_STATS = 3 + len(_QUANTILES)   # statistics per group: mean, variance, the quantiles, log(1 + count)
_STRUCT = min(ROLE_INDEX["struct.concat"], ROLE_INDEX["struct.product"])


def _sorted_by_segment(values: Tensor, seg: Tensor) -> Tensor:
    """``values`` sorted by (segment, value), as float64. float32 values (the weights) take one
    sort of an int64 key, the segment above an order-preserving 32-bit image of the float's
    bits, decoded back after the sort (the same values in the same order as an argsort by
    value then a stable argsort by segment, in a third of the time on a mixed batch); other
    dtypes take the two argsorts."""
    if values.dtype == torch.float32 and len(values) and int(seg.max()) < 2 ** 31 and not bool(values.isnan().any()):
        bits = values.view(torch.int32).long()
        # negative floats (sign bit set): larger magnitude first; non-negative after them
        key = torch.where(bits < 0, -1 - bits, bits + 2 ** 31)
        k = torch.sort(seg.long() * 2 ** 32 + key).values & 0xFFFFFFFF
        return torch.where(k >= 2 ** 31, k - 2 ** 31, -1 - k).int().view(torch.float32).double()
    values = values.double()
    order = torch.argsort(values)
    order = order[torch.argsort(seg[order], stable=True)]
    return values[order]


def segment_stats(values: Tensor, seg: Tensor, n: int) -> Tensor:
    """Mean, variance, quantiles and log(1 + count) of ``values`` per segment id in
    [0, n): [n, NUM_STATS]."""
    sorted_vals = _sorted_by_segment(values, seg)   # by (segment, value)
    values = values.double()
    count = torch.bincount(seg, minlength=n).double()
    s = torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, seg, values)
    s2 = torch.zeros(n, dtype=torch.float64, device=values.device).index_add_(0, seg, values ** 2)
    c = count.clamp(min=1)
    mean = s / c
    var = (s2 / c - mean ** 2).clamp(min=0)
    start = torch.cumsum(count, 0) - count
    qs = []
    for q in _QUANTILES:
        idx = (start + torch.round(q * (count - 1).clamp(min=0))).long().clamp(max=max(len(values) - 1, 0))
        qs.append(sorted_vals[idx] if len(values) else torch.zeros(n, dtype=torch.float64, device=values.device))
    out = torch.stack([mean, var, *qs, torch.log1p(count)], -1)
    return torch.where((count > 0).unsqueeze(-1), out, torch.zeros_like(out)).float()


def weight_statistics(g: GraphInput, gid: Tensor, groups: int) -> Tensor:
    """Statistics (:func:`segment_stats`) of the weight values of every graph of ``g``
    per group id ``gid`` [E] in [0, groups), structural edges left out: [B, groups * NUM_STATS]."""
    keep = g.edge_role < _STRUCT        # weights only, not structural edges
    ea = g.edge_attr
    W = ea.shape[-1]
    if g.shared:
        B = ea.shape[0]
        vals = ea[:, keep].reshape(-1)
        gk = gid[keep]
        seg = (torch.arange(B, device=ea.device).view(B, 1) * groups + gk.view(1, -1))
        seg = seg.unsqueeze(-1).expand(B, len(gk), W).reshape(-1)
    else:
        B = g.num_graphs
        eb = g.batch[g.edge_index[0]]
        valid = g.valid()
        # the kept slots (weights, not padding of a mixed batch), edge by edge, slot by slot
        mask = keep.unsqueeze(-1) if valid is None else valid & keep.unsqueeze(-1)
        slots = mask.expand(-1, W).reshape(-1).nonzero().squeeze(1)
        vals = ea.reshape(-1)[slots]
        seg = (eb * groups + gid)[slots // W]
    stats = segment_stats(vals, seg, B * groups)
    return stats.reshape(B, -1)


def role_depth_groups(g: GraphInput, bins: int) -> Tensor:
    """Each edge's statistics group: its tensor role and its layer's depth bin."""
    return g.edge_role * bins + (g.edge_geo[..., 0] * bins).long().clamp(0, bins - 1)


STD_FLOOR = 1e-6   # a feature whose deviation on the training split is at most this is constant there


@torch.no_grad()
def fit_standardisation(mean: Tensor, std: Tensor, feats: Tensor) -> None:
    """Write the per-feature mean and deviation of ``feats`` [n, dim] (a training split's
    statistics) into the buffers ``mean`` and ``std`` (1 where a feature is seen once;
    :data:`STD_FLOOR` where it is constant, which :func:`standardise` reads as 0)."""
    mean.copy_(feats.mean(0))
    std.copy_(feats.std(0).nan_to_num(1.0).clamp(min=STD_FLOOR))


def standardise(feats: Tensor, mean: Tensor, std: Tensor, clip: float | None = None) -> Tensor:
    """``(feats - mean) / std``, with 0 for the features that were constant on the training
    split (``std`` at :data:`STD_FLOOR`): one architecture's zoo has constant statistics
    (per-group counts, empty groups), and a network of another architecture would move them
    by a count's difference divided by the floor, reaching the MLP at ~1e6, while the MLP
    never learned from them. ``clip``: values limited to [-clip, clip]. A feature that is
    nearly always zero on the training split (a (role, depth) group that few of its
    architectures have) has a tiny deviation, and a network of a rarer architecture would
    reach the MLP at hundreds or thousands of deviations, far from anything it learned."""
    z = torch.where(std > STD_FLOOR, (feats - mean) / std, torch.zeros_like(feats))
    return z if clip is None else z.clamp(-clip, clip)


class StatNN(nn.Module, PyTorchModelHubMixin):
    """Weight statistics per (role, depth bin) or per tensor, standardised, into an MLP.

    Args:
        by: "role_depth" (any architecture) or "tensor" (one architecture: ``num_tensors``
        tensors); bins: depth bins; hidden, out_dim: MLP sizes; clip: the standardised
        statistics are limited to [-clip, clip] training deviations (None: not limited; see
        :func:`standardise`).
    """

    def __init__(self, by: str = "role_depth", bins: int = 8, num_tensors: int = 0, hidden: int = 64,
                 out_dim: int = 1, clip: float | None = 10.0):
        super().__init__()
        if by not in ("role_depth", "tensor"):
            raise ValueError(f"by must be 'role_depth' or 'tensor', got {by!r}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be a positive number of deviations or None, got {clip!r}")
        if by == "tensor" and num_tensors < 1:
            raise ValueError("by='tensor' needs num_tensors (len(ws.weights))")
        self.by, self.bins, self.num_tensors, self.clip = by, bins, num_tensors, clip
        self.groups = len(ROLES) * bins if by == "role_depth" else num_tensors
        dim = self.groups * NUM_STATS
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        self.net = mlp([dim, hidden, hidden, out_dim], act=nn.ReLU)

    @classmethod
    def _from_pretrained(cls, **kwargs):
        # a checkpoint saved before the clip option has no "clip" in its config and was
        # trained unclipped: it loads unclipped, whatever the default
        kwargs.setdefault("clip", None)
        return super()._from_pretrained(**kwargs)

    def features(self, graphs) -> Tensor:
        """The statistics of every graph: [B, groups * NUM_STATS]."""
        g = GraphInput.of(graphs)
        if self.by == "tensor":
            gid = graphs.edge_type.long()
            if int(gid[g.edge_role < _STRUCT].max()) >= self.num_tensors:
                raise ValueError(f"a graph has more than num_tensors={self.num_tensors} tensors")
        else:
            gid = role_depth_groups(g, self.bins)
        return weight_statistics(g, gid, self.groups).to(self.feat_mean.dtype)

    @torch.no_grad()
    def fit_normalization(self, batches) -> "StatNN":
        fit_standardisation(self.feat_mean, self.feat_std, torch.cat([self.features(b) for b in batches]))
        return self

    def forward(self, graphs) -> Tensor:
        return self.net(standardise(self.features(graphs), self.feat_mean, self.feat_std, self.clip))
