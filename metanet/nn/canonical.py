"""Canonical forms under the scaling and sign symmetries a ``WeightSpace`` offers.

ScaleGMN (Kalogeropoulos et al. 2024) makes a graph metanetwork invariant to the
positive scalings of ReLU neurons and the sign flips of odd activations. Here the same
invariance comes from a canonical representative, for every scaling and sign group the
weight space offers (not only ReLU MLPs): group by group, in order,

- scaling: each neuron's outgoing side (its row of the layer that computes it, its bias,
  every tensor axis whose scaling role is "out") is divided by its norm, and its
  incoming side in the next layers multiplied by it (``ws.scale``'s convention);
- sign: each neuron is flipped so that the sum of cubes of its outgoing side is >= 0.

Two networks that differ by a scaling (or sign flip) of these groups have the same
canonical form, and a permutation commutes with it, so a metanetwork reading canonical
forms is invariant to both. Groups are processed in order of first appearance; each
step leaves the earlier groups' outgoing sides unchanged in sequential networks.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..space.structure import value_map


def _carriers(ws, g) -> list[tuple[str, int, Tensor, str]]:
    """(tensor, axis, neuron index of every position or -1, scaling role) for group g."""
    out = []
    sizes = ws.spaces.sizes
    for name in ws.weights:
        for axis, s in enumerate(ws.spaces.axes[name]):
            if not any(g.space in seg for seg in s):
                continue
            idx = value_map(s, sizes, {g.space: torch.arange(g.size, dtype=torch.float64) + 2})
            idx = torch.where(idx >= 2, idx - 2, torch.full_like(idx, -1)).long()
            role = ws.spaces.scale_roles.get(name, {}).get(axis, "out")
            out.append((name, axis, idx, role))
    return out


def _per_neuron(v: Tensor, axis: int, idx: Tensor, n: int, fn) -> Tensor:
    """Sum over every position of neuron j (along ``axis``) of fn(v): [B, n]."""
    B = v.shape[0]
    moved = fn(v.double()).movedim(axis + 1, 1).reshape(B, v.shape[axis + 1], -1).sum(-1)
    keep = idx >= 0
    return torch.zeros(B, n, dtype=torch.float64, device=v.device).index_add_(1, idx[keep].to(v.device),
                                                                             moved[:, keep])


def _apply(sd: dict, carriers, f: Tensor) -> None:
    for name, axis, idx, role in carriers:
        v = sd[name]
        keep = idx >= 0
        ff = torch.ones(v.shape[0], len(idx), dtype=torch.float64, device=v.device)
        ff[:, keep] = f[:, idx[keep]]
        if role == "in":
            ff = 1.0 / ff
        shape = [v.shape[0]] + [1] * (v.dim() - 1)
        shape[axis + 1] = -1
        sd[name] = (v.double() * ff.view(shape)).to(v.dtype)


def canonicalize(ws, stacked: Mapping[str, Tensor], kind: str = "both") -> dict[str, Tensor]:
    """The canonical form of stacked checkpoints (leading batch axis) under the
    positive-scaling (``"scale"``), sign-flip (``"sign"``) groups of ``ws``, or both."""
    if kind not in ("scale", "sign", "both"):
        raise ValueError(f"kind must be 'scale', 'sign' or 'both', got {kind!r}")
    sd = dict(stacked)
    for g in ws.groups:
        car = _carriers(ws, g)
        outs = [c for c in car if c[3] != "in"]
        if not outs:
            continue
        if g.scaling and kind in ("scale", "both"):
            sumsq = sum(_per_neuron(sd[n], a, i, g.size, lambda t: t * t) for n, a, i, _ in outs)
            _apply(sd, car, sumsq.clamp(min=1e-30).rsqrt())
        if g.sign and kind in ("sign", "both"):
            cubes = sum(_per_neuron(sd[n], a, i, g.size, lambda t: t ** 3) for n, a, i, _ in outs)
            _apply(sd, car, torch.where(cubes < 0, -1.0, 1.0).double())
    return sd
