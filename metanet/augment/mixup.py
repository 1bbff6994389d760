"""MixUp in weight space: each network of a batch is interpolated with a partner from
the same batch, and its label with the partner's by the same weight.

``mode``:
- ``"plain"``: ``λ a + (1 - λ) b`` as they are (neurons of a and b do not correspond,
  so this mostly averages noise unless the stack was aligned beforehand with
  :func:`metanet.space.align.align_stack`, the cheap way to mix aligned networks);
- ``"permute"``: the partner is randomly permuted first (a random correspondence);
- ``"align"``: the partner is aligned onto the network by weight matching first
  (one linear assignment per group and pair; costs computed batched over pairs).

``p``: the probability that a network is mixed at all (a network left out keeps its
weights and label: λ = 1); ``p = 1`` mixes every network.

Invariants: pure (inputs untouched), one λ ~ Beta(α, α) and one partner per network
drawn from the generator (partners follow a random cycle through the batch, so no
network is mixed with itself when B > 1), labels mixed with the same λ; integer class labels become
one-hot rows (``num_classes``) before mixing.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

from ..space.weightspace import WeightSpace
from .transforms import _batch_of, make_generator, running_stat_keys

__all__ = ["MixUp"]

MODES = ("plain", "permute", "align")


class MixUp:
    """Batch transform ``(stack, labels) -> (mixed stack, mixed labels)``; approximate."""

    exact = False

    def __init__(self, ws: WeightSpace, alpha: float = 0.2, mode: str = "plain", *,
                 num_classes: int | None = None, p: float = 1.0, seed: int | torch.Generator | None = None):
        if not isinstance(ws, WeightSpace):
            raise TypeError(f"MixUp takes a WeightSpace first, got {type(ws).__name__}")
        if mode not in MODES:
            raise ValueError(f"MixUp mode is one of {MODES}, got {mode!r}")
        if alpha <= 0:
            raise ValueError(f"MixUp needs alpha > 0 (Beta(alpha, alpha) weights), got {alpha}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"MixUp's p is the probability of mixing a network, in [0, 1]; got {p}")
        self.ws, self.alpha, self.mode, self.num_classes = ws, float(alpha), mode, num_classes
        self.p = float(p)
        self.generator = make_generator(seed)
        stats = running_stat_keys(ws)
        self.keys = [k for k in ws.weights if k not in stats]

    def __repr__(self) -> str:
        return f"MixUp(alpha={self.alpha}, mode={self.mode!r}" + (f", p={self.p})" if self.p < 1 else ")")

    def _labels(self, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():
            return y
        if self.num_classes is None:
            raise ValueError("MixUp got integer class labels: pass num_classes= to mix them as one-hot rows")
        return torch.nn.functional.one_hot(y.long(), self.num_classes).float()

    def __call__(self, stack: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None):
        """Mix a stack ``{name: Tensor[B, ...]}`` (and ``labels`` [B, ...]); returns the
        mixed stack, or ``(stack, labels)`` when labels are given."""
        B = _batch_of(stack, self.ws)
        gen = generator if generator is not None else self.generator
        order = torch.randperm(B, generator=gen)   # partners along a random cycle: never oneself
        partner = torch.empty_like(order)
        partner[order] = order.roll(-1)
        g1, g2 = _gamma(self.alpha, B, gen), _gamma(self.alpha, B, gen)
        lam = g1 / (g1 + g2)          # Beta(alpha, alpha), one per network
        if self.p < 1:                # networks left unmixed keep themselves (λ = 1)
            lam = torch.where(torch.rand(B, generator=gen, dtype=torch.float64) < self.p, lam,
                              torch.ones_like(lam))
        other = {k: v[partner] for k, v in stack.items()}
        if self.mode == "permute" and self.ws.groups:
            other = self.ws.permute(other, self.ws.sample_permutation(gen, batch=B), batched=True)
        elif self.mode == "align" and self.ws.groups:
            from ..space.align import align
            other = self.ws.permute(other, align(self.ws, stack, other, batched=True), batched=True)
        out = OrderedDict(stack)
        for k in self.keys:
            v = stack[k]
            w = lam.to(v.device, v.dtype).reshape(B, *([1] * (v.dim() - 1)))
            out[k] = w * v + (1 - w) * other[k]
        for alias, canon in self.ws.aliases.items():
            if alias in out:
                out[alias] = out[canon]
        if labels is None:
            return out
        if labels.shape[0] != B:
            raise ValueError(f"MixUp got {labels.shape[0]} labels for a stack of {B} networks")
        y = self._labels(labels)
        w = lam.to(y.device, y.dtype).reshape(B, *([1] * (y.dim() - 1)))
        return out, w * y + (1 - w) * y[partner.to(y.device)]


def _gamma(alpha: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n draws of Gamma(alpha, 1) from ``gen`` (float64)."""
    return torch._standard_gamma(torch.full((n,), alpha, dtype=torch.float64), generator=gen)
