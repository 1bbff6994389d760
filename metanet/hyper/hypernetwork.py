"""A conditional hypernetwork with the magnitude-invariant parametrization (MIP).

>>> hn = HyperNetwork(target, cond_dim=1, parametrization="mip")
>>> params = hn(z)                      # z [B, cond_dim] in [0, 1] -> {name: [B, *shape]}
>>> out = hn.run(z, x)                  # the target under each sample's parameters (vmap)

MIP (Ortiz, Guttag and Dalca, "Magnitude invariant parametrizations improve hypernetwork
learning", ICLR 2024):

* inputs ``z`` in ``[0, 1]`` are encoded as ``[cos(pi z / 2), sin(pi z / 2)]`` per
  coordinate, so the encoding's norm is ``sqrt(cond_dim)`` whatever ``z`` is: the
  scale of the hypernetwork's activations, and so of its predicted parameters, no
  longer depends on the magnitude of the conditioning input;
* the output is additive: ``theta = theta_0 + delta(z)``, where ``theta_0`` is a learned
  tensor that starts as the target's own initial parameters and ``delta`` starts small
  (its output layer is initialised per predicted tensor to 1/10 of that tensor's initial
  spread).

``parametrization="standard"`` is the usual hypernetwork for comparison: ``z`` enters
as it is and ``theta = W h(z) + b``, with the output layer initialised per tensor so
that predictions start at the spread of the target's init (hyperfan-in style).

Unlike the public MIP code, a batch of conditioning vectors gives a batch of parameter
sets, one per sample, and :meth:`HyperNetwork.run` evaluates the target under each one
at once with ``torch.vmap`` over ``torch.func.functional_call``. The target model is
never modified and is not a submodule (its parameters are not the hypernetwork's).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["HyperNetwork", "mip_encode"]

PARAMETRIZATIONS = ("mip", "standard")


def mip_encode(z: torch.Tensor) -> torch.Tensor:
    """``[..., d]`` in [0, 1] -> ``[..., 2d]``: ``[cos(pi z/2), sin(pi z/2)]``, norm sqrt(d)."""
    a = z * (math.pi / 2)
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


class HyperNetwork(nn.Module):
    """Predicts all, or a chosen subset, of ``target``'s parameters from a conditioning
    vector.

    Args:
        target: the model whose parameters are predicted (kept, not registered).
        cond_dim: size of the conditioning vector.
        parametrization: "mip" (inputs in [0, 1], encoded; additive output) or "standard".
        modules: names of ``target``'s submodules whose parameters are predicted (all of
            them when None); the other parameters stay the target's own.
        hidden: widths of the hypernetwork's hidden layers.
    """

    def __init__(self, target: nn.Module, cond_dim: int, parametrization: str = "mip",
                 modules: Sequence[str] | None = None, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, "
                             f"got {parametrization!r}")
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be at least 1, got {cond_dim}")
        self.__dict__["target"] = target          # not a submodule: its params are not ours
        self.cond_dim, self.parametrization = cond_dim, parametrization
        named = dict(target.named_parameters())
        if modules is None:
            self.names = list(named)
        else:
            known = dict(target.named_modules())
            unknown = [m for m in modules if m not in known]
            if unknown:
                raise ValueError(f"no submodule(s) {unknown} in {type(target).__name__}; known: "
                                 + ", ".join(k for k in known if k))
            prefixes = tuple(m + "." for m in modules if m)
            self.names = [n for n in named if not prefixes or n.startswith(prefixes)]
            if "" in modules:
                self.names = list(named)
        if not self.names:
            raise ValueError(f"modules={list(modules or [])} hold no parameters to predict")
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        total = sum(self.sizes)
        dims = [2 * cond_dim if parametrization == "mip" else cond_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(dims[-1], total, bias=parametrization == "standard")
        init = torch.cat([named[n].detach().reshape(-1).float() for n in self.names])
        self.theta0 = nn.Parameter(init.clone()) if parametrization == "mip" else None
        self._init_output(named, dims[-1])

    @torch.no_grad()
    def _init_output(self, named: dict, width: int) -> None:
        """Per predicted tensor: rows of the output layer with a spread fitted to that
        tensor's initial values (ReLU features have second moment ~1/2)."""
        rel = 0.1 if self.parametrization == "mip" else 1.0
        start = 0
        for n, size, shape in zip(self.names, self.sizes, self.shapes):
            p = named[n].detach().float()
            spread = float(p.std()) if p.numel() > 1 else 0.0
            if not spread > 0:  # constant inits (zero biases, unit norm scales)
                fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
                spread = 1.0 / math.sqrt(max(fan_in, 1))
            self.out.weight[start:start + size].normal_(0.0, rel * spread * math.sqrt(2.0 / width))
            if self.out.bias is not None:
                # standard: predictions start around the target's init mean
                self.out.bias[start:start + size] = p.reshape(-1) if p.numel() == 1 else p.mean()
            start += size

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.cond_dim:
            raise ValueError(f"conditioning vectors must have {self.cond_dim} entries, got shape "
                             f"{tuple(z.shape)}")
        if self.parametrization == "standard":
            return z
        if z.numel() and (z.min() < 0 or z.max() > 1):
            raise ValueError("MIP expects conditioning inputs in [0, 1] (got values in "
                             f"[{float(z.min()):.3g}, {float(z.max()):.3g}]); rescale them, "
                             "e.g. (z - low) / (high - low)")
        return mip_encode(z)

    def flat(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, cond_dim] -> [B, n_predicted_values]``."""
        out = self.out(self.body(self.encode(z)))
        return out + self.theta0 if self.theta0 is not None else out

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters for each conditioning vector: ``z [B, cond_dim]`` ->
        ``{name: [B, *shape]}``; ``z [cond_dim]`` -> ``{name: [*shape]}``."""
        single = z.dim() == 1
        flat = self.flat(z[None] if single else z)
        parts = flat.split(self.sizes, dim=-1)
        out = {n: p.reshape(p.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}
        return {n: v[0] for n, v in out.items()} if single else out

    def run(self, z: torch.Tensor, *args: Any, batched_inputs: bool = False) -> Any:
        """The target's output under each sample's predicted parameters.

        ``z [B, cond_dim]``; ``args`` are the target's inputs, shared by every sample,
        or (``batched_inputs=True``) with a leading axis of size B, one per sample."""
        params = self(z)
        dims = 0 if batched_inputs else None

        def one(p, *a):
            return torch.func.functional_call(self.target, p, a, strict=False)

        return torch.vmap(one, in_dims=(0,) + (dims,) * len(args), randomness="different")(params, *args)

    def extra_repr(self) -> str:
        return (f"{self.parametrization}, cond_dim={self.cond_dim}, predicts {len(self.names)} "
                f"tensors ({sum(self.sizes):,} values) of {type(self.target).__name__}")
