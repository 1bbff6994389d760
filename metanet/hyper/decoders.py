"""Decoders: node embedding -> parameter tensor of any shape, batched over tensors of
equal shape.

Every decoder maps ``e [G, hid]`` (one row per tensor of one shape) to ``[G, *shape]``
in one call, and says which shapes it can reach (:meth:`reaches`).

* :class:`TiledDecoder` (GHN-2/3): one fixed block ``[b_out, b_in, K, K]`` per tensor,
  repeated along the channel axes when the tensor is wider than the block and sliced
  when narrower; kernels smaller than ``K`` are cropped around the centre, larger ones
  tiled. Reaches every shape. Its size is ``hid * b_out * b_in * K * K``: predicting
  width ``d`` without copies costs ``d**2`` per hidden unit.
* :class:`LowRankDecoder` (LoGAH, Zhou et al. 2024): factors ``A [d, r]``,
  ``B [r, d]`` and one spatial kernel per rank ``C [r, K, K]``;
  ``W[o, i, s] = sum_r A[o, r] B[r, i] C[r, s] / sqrt(r)`` (``core="cp"``), or a core
  ``C [r, r, K, K]`` joining every pair of ranks,
  ``W[o, i, s] = sum_{r, q} A[o, r] C[r, q, s] B[q, i] / r`` (``core="tucker"``: each
  kernel position its own rank-r matrix, instead of one shared pair of factors whose
  rank-one terms differ only by a scalar per position). Any width up to ``d`` is
  predicted without copies, at a cost of ``hid * r * (2 d + K * K)`` (cp) or
  ``hid * r * (2 d + r * K * K)`` (tucker); wider tensors are out of reach (the GHN
  leaves them at the model's own initialisation).
* :class:`VectorHead` (1-D tensors) and the classifier heads are small decoders of the
  same two kinds.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TiledDecoder", "LowRankDecoder", "VectorHead", "fit_axis", "fit_spatial"]


def fit_axis(x: torch.Tensor, dim: int, n: int, centre: bool = False) -> torch.Tensor:
    """Slice ``x`` to length ``n`` along ``dim`` (around the centre when ``centre``), or
    repeat it periodically when it is shorter than ``n``: from its start, or with
    ``centre`` so that the block's centre lands on the output's centre (a 5-tap kernel
    tiled from a 3-tap block reads block taps 2 0 1 2 0 — its centre is the block's,
    as it is for the 1-tap and 3-tap kernels cut from the same block)."""
    size = x.shape[dim]
    if n > size:
        start = (size // 2 - n // 2) % size if centre else 0
        reps = [1] * x.dim()
        reps[dim] = math.ceil((start + n) / size)
        x = x.repeat(*reps)
        return x.narrow(dim, start, n)
    start = (size - n) // 2 if centre else 0
    return x.narrow(dim, start, n)


def fit_spatial(x: torch.Tensor, rest: tuple[int, ...]) -> torch.Tensor:
    """``x [..., K, K]`` -> ``[..., *rest]``: the centre for no spatial axes, the centre
    row for 1-D kernels, a centred crop (or tiling) for 2-D, flattened for more."""
    k = x.shape[-1]
    c = k // 2
    if len(rest) == 0:
        return x[..., c, c]
    if len(rest) == 1:
        return fit_axis(x[..., c, :], -1, rest[0], centre=True)
    if len(rest) == 2:
        return fit_axis(fit_axis(x, -2, rest[0], centre=True), -1, rest[1], centre=True)
    flat = fit_axis(x.flatten(-2), -1, math.prod(rest), centre=True)
    return flat.reshape(*x.shape[:-2], *rest)


def _mlp(hid: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hid, hid), nn.GELU(), nn.Linear(hid, out))


class TiledDecoder(nn.Module):
    """GHN-2/3 tiled decoder: a ``[b_out, b_in, K, K]`` block per tensor."""

    def __init__(self, hid: int, b_out: int = 32, b_in: int = 32, kernel: int = 3):
        super().__init__()
        self.b_out, self.b_in, self.kernel = b_out, b_in, kernel
        self.net = _mlp(hid, b_out * b_in * kernel * kernel)

    def reaches(self, shape: tuple[int, ...]) -> bool:
        return len(shape) >= 2

    def forward(self, e: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        g = e.shape[0]
        block = self.net(e).view(g, self.b_out, self.b_in, self.kernel, self.kernel)
        block = fit_axis(fit_axis(block, 1, shape[0]), 2, shape[1])
        return fit_spatial(block, tuple(shape[2:]))

    def extra_repr(self) -> str:
        return f"block=[{self.b_out}, {self.b_in}, {self.kernel}, {self.kernel}]"


class LowRankDecoder(nn.Module):
    """LoGAH low-rank decoder: ``W = A B`` per tensor (with one kernel per rank)."""

    def __init__(self, hid: int, max_width: int = 64, rank: int = 16, kernel: int = 3,
                 max_out: int | None = None, tile_rows: bool = False, core: str = "cp"):
        super().__init__()
        if core not in ("cp", "tucker"):
            raise ValueError(f"core must be 'cp' (one kernel per rank) or 'tucker' (a rank x rank core per "
                             f"kernel position), got {core!r}")
        self.max_out = max_out or max_width
        self.max_in, self.rank, self.kernel, self.tile_rows = max_width, rank, kernel, tile_rows
        self.core = core
        self.trunk = nn.Sequential(nn.Linear(hid, hid), nn.GELU())
        self.a = nn.Linear(hid, self.max_out * rank)
        self.b = nn.Linear(hid, rank * self.max_in)
        self.c = nn.Linear(hid, rank * (rank if core == "tucker" else 1) * kernel * kernel)

    def reaches(self, shape: tuple[int, ...]) -> bool:
        return len(shape) >= 2 and shape[1] <= self.max_in and (self.tile_rows or shape[0] <= self.max_out)

    def forward(self, e: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        g, r = e.shape[0], self.rank
        t = self.trunk(e)
        # only the rows of A and columns of B this shape uses are computed
        rows = min(shape[0], self.max_out)
        a = F.linear(t, self.a.weight[: rows * r], self.a.bias[: rows * r]).view(g, rows, r)
        a = fit_axis(a, 1, shape[0])
        b = F.linear(t, self.b.weight[: shape[1] * r], self.b.bias[: shape[1] * r])
        b = b.view(g, shape[1], r).transpose(1, 2)                 # [g, r, i]
        if self.core == "tucker":
            c = fit_spatial(self.c(t).view(g, r * r, self.kernel, self.kernel), tuple(shape[2:]))
            c = c.reshape(g, r, r, -1)                             # [g, r, q, s]
            # W[o, i, s] = sum_{r, q} A[o, r] C[r, q, s] B[q, i]
            ac = torch.einsum("gor,grqs->gosq", a, c).reshape(g, -1, r)
            w = torch.bmm(ac, b).view(g, shape[0], -1, shape[1]).transpose(2, 3) / r
            return w.reshape(g, *shape)
        c = fit_spatial(self.c(t).view(g, r, self.kernel, self.kernel), tuple(shape[2:]))
        c = c.reshape(g, r, -1)                                    # [g, r, s]
        s = c.shape[-1]
        # W[o, i, s] = sum_r A[o, r] C[r, s] B[r, i], as one batched matmul (no [o, r, i])
        ac = (a[:, :, None, :] * c.transpose(1, 2)[:, None, :, :]).reshape(g, shape[0] * s, r)
        w = torch.bmm(ac, b).view(g, shape[0], s, shape[1]).transpose(2, 3) / math.sqrt(r)
        return w.reshape(g, *shape)

    def extra_repr(self) -> str:
        return f"max_width={self.max_in}, rank={self.rank}, kernel={self.kernel}, core={self.core}"


class VectorHead(nn.Module):
    """1-D tensors (biases, norm scales): a block of ``length`` values, repeated when
    the tensor is longer (``tile=True``) or out of reach (``tile=False``)."""

    def __init__(self, hid: int, length: int = 32, tile: bool = True):
        super().__init__()
        self.length, self.tile = length, tile
        self.net = _mlp(hid, length)

    def reaches(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 1 and (self.tile or shape[0] <= self.length)

    def forward(self, e: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return fit_axis(self.net(e), 1, shape[0])

    def extra_repr(self) -> str:
        return f"length={self.length}"
