"""NFN: permutation-equivariant linear layers for MLP and CNN weight spaces (neural
functionals, Zhou et al. NeurIPS 2023), derived from ``WeightSpace`` groups.

Each weight tensor is read off a parameter-graph layout as ``[B, out, in, channels]``:
an axis that carries a neuron group stays a set axis (its neurons may be permuted); a
fixed axis (inputs and outputs under HNP, kernel positions, the H·W of a flatten) is
folded into the channels. Under NP, fixed neuron axes (network inputs and outputs) are
set axes too. Because the axes come from the groups, not from state-dict key order (the
public ``nfn`` package's assumption), residual streams shared by many tensors, flattens
and lone input channels come out right.

The layer, for every tensor t with set axes (o, i), channels mixed by learned matrices:

    h'_t = A_t h_t + B_t V_o(h) [broadcast over i] + C_t V_i(h) [broadcast over o] + D_t G(h)

where V_s(h) [B, n_s, ·] concatenates, for every tensor u with an axis carrying set s,
the mean of h_u over its other axis (this couples each layer with its neighbours
through their shared neurons), and G(h) concatenates every tensor's mean over all its
set axes. Every term commutes with permutations of every set: the layer is equivariant,
and a mean over set axes after it is invariant.
"""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .inputs import RoleNorm, mlp


def nfn_spec(ws, layout: str = "compact", mode: str = "hnp") -> dict:
    """The JSON-able description of a weight space that :class:`NFN` needs: for every
    tensor, where its edges sit in the layout and which set each neuron axis is."""
    if mode not in ("np", "hnp"):
        raise ValueError(f"mode must be 'np' (input and output neurons permutable too) or 'hnp' "
                         f"(hidden neurons only), got {mode!r}")
    lay = ws.layout(layout)
    sets: dict[int, int] = {}

    def axis(ns):
        if ns is None or ns.hub:
            return None
        if not ns.fixed:
            if len(ns.key) != 1 or len(ns.key[0]) != 1:
                raise ValueError(
                    f"NFN layers read plain MLP/CNN weight spaces, where every neuron axis is one "
                    f"group; this one has a compound axis {ns.key} (attention heads, concatenation): "
                    f"use GMN or NGT, which read any parameter graph")
        elif mode == "hnp" or ns.unit:
            return None
        sets[ns.offset] = ns.size
        return ns.offset

    tensors = []
    for p, (o, i) in zip(lay.plans, lay.plan_sets):
        tensors.append({"name": p.name, "offset": p.edge_offset, "n_out": p.n_out, "n_in": p.n_in,
                        "chunks": p.chunks, "out_set": axis(o), "in_set": axis(i if i is not o else None),
                        "role": int(lay.edge_role[p.edge_offset])})
    return {"layout": layout, "width": lay.width, "num_edges": lay.num_edges, "mode": mode,
            "tensors": tensors, "sets": {str(k): v for k, v in sets.items()}}


def _channels(t: dict, width: int) -> int:
    c = t["chunks"] * width
    if t["out_set"] is None:
        c *= t["n_out"]
    if t["in_set"] is None:
        c *= t["n_in"]
    return c


class NPLayer(nn.Module):
    """One equivariant layer over the tensors of a weight space (formula in the module
    docstring).

    Args:
        spec: from :func:`nfn_spec`; in_channels / out_channels: per tensor.
        coupling: include the terms through shared neurons and the global term; False
            gives a layer that treats every tensor on its own (the negative control of
            the tests: it is still equivariant but cannot see how layers connect).

    Shapes:
        a list with one ``[B, o_t, i_t, in_channels[t]]`` per tensor -> the same with
        ``out_channels``.
    """

    def __init__(self, spec: dict, in_channels: list[int], out_channels: int, coupling: bool = True):
        super().__init__()
        self.tensors = spec["tensors"]
        self.coupling = coupling
        self.out_channels = out_channels
        # which (tensor, axis) pairs carry each set
        self.carriers: dict[int, list[tuple[int, int]]] = {}
        for j, t in enumerate(self.tensors):
            for ax, key in ((1, "out_set"), (2, "in_set")):
                if t[key] is not None:
                    self.carriers.setdefault(t[key], []).append((j, ax))
        set_width = {s: sum(in_channels[j] for j, _ in c) for s, c in self.carriers.items()}
        total = sum(in_channels)
        self.self_lin = nn.ModuleList(nn.Linear(c, out_channels) for c in in_channels)
        self.out_lin = nn.ModuleList(
            nn.Linear(set_width[t["out_set"]], out_channels, bias=False) if coupling and t["out_set"] is not None
            else nn.Identity() for t in self.tensors)
        self.in_lin = nn.ModuleList(
            nn.Linear(set_width[t["in_set"]], out_channels, bias=False) if coupling and t["in_set"] is not None
            else nn.Identity() for t in self.tensors)
        self.global_lin = nn.ModuleList(
            nn.Linear(total, out_channels, bias=False) if coupling else nn.Identity() for _ in self.tensors)
        self.reset_parameters()

    def reset_parameters(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def forward(self, hs: list[Tensor]) -> list[Tensor]:
        if len(hs) != len(self.tensors):
            raise ValueError(f"{len(hs)} tensors given, this layer reads {len(self.tensors)}")
        out = [lin(h) for lin, h in zip(self.self_lin, hs)]
        if not self.coupling:
            return out
        # pooled vectors per set: mean of each carrier over its other axis -> [B, n_s, c]
        pooled = {}
        for s, carriers in self.carriers.items():
            pooled[s] = torch.cat([hs[j].mean(3 - ax) for j, ax in carriers], -1)
        glob = torch.cat([h.mean((1, 2)) for h in hs], -1)                # [B, total]
        for j, t in enumerate(self.tensors):
            y = out[j] + self.global_lin[j](glob)[:, None, None, :]
            if t["out_set"] is not None:
                y = y + self.out_lin[j](pooled[t["out_set"]]).unsqueeze(2)
            if t["in_set"] is not None:
                y = y + self.in_lin[j](pooled[t["in_set"]]).unsqueeze(1)
            out[j] = y
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.tensors)} tensors, {len(self.carriers)} sets, "
                f"out={self.out_channels}, coupling={self.coupling})")


class NFN(nn.Module, PyTorchModelHubMixin):
    """NFN-NP / NFN-HNP metanetwork with invariant pooling: ``model(batch)`` -> [B, out_dim].

    Build with :meth:`for_space` (``NFN.for_space(ws, mode="hnp")``); ``batch`` is a
    :class:`~metanet.graph.SharedBatch` or a PyG Batch of that architecture and layout.
    """

    def __init__(self, spec: dict, hidden: int = 32, layers: int = 3, out_dim: int = 1,
                 coupling: bool = True):
        super().__init__()
        self.spec = spec
        W = spec["width"]
        chans = [_channels(t, W) for t in spec["tensors"]]
        self.norm = RoleNorm()
        sizes = [chans] + [[hidden] * len(chans)] * layers
        self.layers = nn.ModuleList(NPLayer(spec, sizes[k], hidden, coupling) for k in range(layers))
        self.act = nn.SiLU()
        self.readout = mlp([hidden * len(chans), hidden, out_dim])
        self.register_buffer("roles", torch.tensor([t["role"] for t in spec["tensors"]], dtype=torch.long),
                             persistent=False)

    @classmethod
    def for_space(cls, ws, layout: str = "compact", mode: str = "hnp", **kwargs) -> "NFN":
        return cls(nfn_spec(ws, layout, mode), **kwargs)

    def tensors(self, batch) -> list[Tensor]:
        """The weight tensors of ``batch`` as ``[B, o, i, channels]`` (fixed axes folded)."""
        ea = batch.edge_attr
        E, W = self.spec["num_edges"], self.spec["width"]
        if ea.dim() == 2:
            if ea.shape[-1] != W or ea.shape[0] % E:
                raise ValueError(f"edge features {tuple(ea.shape)} do not come from this model's "
                                 f"{self.spec['layout']} layout ({E} edges of width {W} per graph)")
            ea = ea.reshape(-1, E, W)
        elif ea.shape[1:] != (E, W):
            raise ValueError(f"edge features {tuple(ea.shape)}: this model reads [B, {E}, {W}]")
        B = ea.shape[0]
        out = []
        for t, role in zip(self.spec["tensors"], self.roles):
            n = t["n_out"] * t["n_in"] * t["chunks"]
            v = ea[:, t["offset"]:t["offset"] + n].to(self.norm.mean.dtype)
            v = (v - self.norm.mean[role]) / self.norm.std[role]
            v = v.reshape(B, t["n_out"], t["n_in"], t["chunks"] * W)
            if t["out_set"] is None and t["in_set"] is not None:   # fold outputs into channels
                v = v.transpose(1, 2).reshape(B, 1, t["n_in"], -1)
            elif t["out_set"] is not None and t["in_set"] is None:  # fold inputs
                v = v.reshape(B, t["n_out"], 1, -1)
            elif t["out_set"] is None:
                v = v.reshape(B, 1, 1, -1)
            out.append(v)
        return out

    @torch.no_grad()
    def fit_normalization(self, batches) -> "NFN":
        s = torch.zeros(len(self.norm.mean), dtype=torch.float64)
        s2, n = torch.zeros_like(s), torch.zeros_like(s)
        E, W = self.spec["num_edges"], self.spec["width"]
        for b in batches:
            ea = b.edge_attr.reshape(-1, E, W).double()
            for t, role in zip(self.spec["tensors"], self.roles):
                v = ea[:, t["offset"]:t["offset"] + t["n_out"] * t["n_in"] * t["chunks"]]
                s[role] += v.sum()
                s2[role] += (v ** 2).sum()
                n[role] += v.numel()
        seen = n > 0
        mean = torch.where(seen, s / n.clamp(min=1), torch.zeros_like(s))
        var = torch.where(seen, s2 / n.clamp(min=1) - mean ** 2, torch.ones_like(s))
        self.norm.mean.copy_(mean.float())
        self.norm.std.copy_(var.clamp(min=1e-12).sqrt().float().clamp(min=1e-6))
        return self

    def forward(self, batch) -> Tensor:
        hs = self.tensors(batch)
        for layer in self.layers:
            hs = layer(hs)
            hs = [self.act(h) for h in hs]
        return self.readout(torch.cat([h.mean((1, 2)) for h in hs], -1))

