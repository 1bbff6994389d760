"""Alignment: the permutation of network b's neurons that brings it closest to network a.

``align(ws, sd_a, sd_b)`` returns a :class:`Permutation` P with ``ws.permute(sd_b, P)``
as close to ``sd_a`` as weight matching finds (Git Re-Basin, Ainsworth et al. 2023):
coordinate descent over the neuron groups in random order; each step solves one linear
assignment (``scipy.optimize.linear_sum_assignment``) for one group, with the others
held at their current permutation; passes repeat until no step improves.

Works for any :class:`WeightSpace`, from the axis structures alone:

- the cost of a group sums ``<a[..., i, ...], b[..., j, ...]>`` over every tensor axis
  that carries it (a group on several tensors or several axes of one tensor: a residual
  stream, tied weights);
- an axis that is a concatenation contributes each block that holds the group (fused
  q/k/v projections);
- a group inside a product is matched as a unit of that product: for attention's
  (heads, dims) axes, heads are matched as whole heads (their dims compared under the
  current dims permutation) and dims with the same map in every head.

``method="activations"`` (Git Re-Basin's activation matching) uses the same machinery
with recorded activations in place of weights: the outputs of the linear and
convolution modules that produce each group, on a batch of inputs, standardised per
neuron (so the cost is a correlation). Groups no such module produces are matched by
their weights.

Invariant: P is a valid permutation of every group and never worse than the identity
under the objective (steps are taken only when they improve it), so ``align(sd, sd)``
is the identity and ``align(sd, permute(sd, p))`` is ``p.inverse()`` whenever the
neurons are distinguishable (no two neurons with equal weights).

``loss_barrier(ws, model, sd_a, sd_b, x, y)`` measures what alignment is for: the
largest rise of the loss along the straight line from a to b above the line between
the end points' losses (BatchNorm statistics recomputed at every point when ``calib``
inputs are given, as Git Re-Basin does: interpolated statistics are wrong).
"""
from __future__ import annotations

import copy
from math import prod
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .weightspace import Permutation, WeightSpace

__all__ = ["align", "align_stack", "permute_tensor", "loss_barrier", "model_loss"]


# -- sites: where a group sits in a tensor ------------------------------------------------------------
def _sites(structs: list[tuple], sizes, space: int) -> list[tuple[int, int, int, tuple[int, ...], int]]:
    """(axis, start, length, atom sizes, position) for each segment of each axis that
    holds ``space`` (a segment is a row-major product of atoms; the group is atom
    ``position`` of it)."""
    out = []
    for axis, s in enumerate(structs):
        start = 0
        for seg in s:
            n = prod(sizes[a] for a in seg) if seg else 1
            for pos, a in enumerate(seg):
                if a == space:
                    out.append((axis, start, n, tuple(sizes[x] for x in seg), pos))
            start += n
    return out


def _axis_index(s: tuple, sizes, perms: Mapping[int, torch.Tensor], B: int, skip: int | None) -> torch.Tensor | None:
    """[B, axis] gather indices along an axis of structure ``s`` for per-space
    permutations [B, n] (space ``skip`` left as it is). None where nothing moves."""
    if not any(a in perms and a != skip for seg in s for a in seg):
        return None
    pieces, offset = [], 0
    for seg in s:
        idx = torch.zeros(B, 1, dtype=torch.long)
        for a in seg:
            p = perms.get(a) if a != skip else None
            p = torch.arange(sizes[a]).expand(B, -1) if p is None else p
            idx = (idx.unsqueeze(-1) * sizes[a] + p.unsqueeze(-2)).flatten(-2)
        pieces.append(idx + offset)
        offset += prod(sizes[a] for a in seg) if seg else 1
    return torch.cat(pieces, dim=-1)


def permute_tensor(v: torch.Tensor, structs: list[tuple], sizes, perms: Mapping[int, torch.Tensor],
                   skip: int | None = None) -> torch.Tensor:
    """Permute a stacked tensor ``v`` [B, ...] whose axes (after the batch axis) have
    structures ``structs`` by per-space permutations [B, n] (``new[j] = old[p[j]]``),
    leaving space ``skip`` unmoved."""
    B = v.shape[0]
    for axis, s in enumerate(structs):
        idx = _axis_index(s, sizes, perms, B, skip)
        if idx is not None:
            shape = [1] * v.dim()
            shape[0], shape[axis + 1] = B, idx.shape[1]
            v = v.gather(axis + 1, idx.to(v.device).view(shape).expand(v.shape))
    return v


def _unit_rows(v: torch.Tensor, site) -> torch.Tensor:
    """The block of [B, ...] tensor ``v`` at ``site`` as [B, n, rest]: one row per neuron
    of the group, everything else (other atoms, other axes) flattened."""
    axis, start, length, atoms, pos = site
    x = v.narrow(axis + 1, start, length)
    x = x.reshape(*x.shape[:axis + 1], *atoms, *x.shape[axis + 2:])
    x = x.movedim(axis + 1 + pos, 1)
    return x.reshape(x.shape[0], x.shape[1], -1)


# -- the matching ------------------------------------------------------------------------------
class _Problem:
    """Tensors (a, b) with axis structures: weights, or recorded activations."""

    def __init__(self, ws: WeightSpace):
        self.ws = ws
        self.sizes = ws.spaces.sizes
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.structs: dict[str, list[tuple]] = {}

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor, structs: list[tuple]) -> None:
        self.a[name], self.b[name], self.structs[name] = a, b, structs

    def sites(self, space: int) -> list[tuple[str, tuple]]:
        return [(name, site) for name, st in self.structs.items() for site in _sites(st, self.sizes, space)]

    def cost(self, space: int, n: int, perms: dict[int, torch.Tensor], B: int) -> torch.Tensor:
        """[B, n, n] similarity: entry (i, j) is how well b's neuron j fits a's neuron i."""
        C = torch.zeros(B, n, n, dtype=torch.float64)
        by_name: dict[str, list[tuple]] = {}
        for name, site in self.sites(space):
            by_name.setdefault(name, []).append(site)
        for name, sites in by_name.items():
            a = self.a[name]
            b = permute_tensor(self.b[name], self.structs[name], self.sizes, perms, skip=space)
            for site in sites:
                xa, xb = _unit_rows(a, site), _unit_rows(b, site)
                C += torch.bmm(xa, xb.transpose(1, 2)).double().cpu()
        return C


def _solve(problem: _Problem, groups, B: int, seed: int, max_iter: int) -> dict[int, torch.Tensor]:
    perms = {g.space: torch.arange(g.size).expand(B, -1).clone() for g in groups}
    rng = np.random.default_rng(seed)
    for _ in range(max_iter):
        improved = False
        for gi in rng.permutation(len(groups)):
            g = groups[gi]
            C = problem.cost(g.space, g.size, perms, B)
            old = perms[g.space]
            new = old.clone()
            for b in range(B):
                rows, cols = linear_sum_assignment(C[b].numpy(), maximize=True)
                new[b, torch.from_numpy(rows)] = torch.from_numpy(cols).long()
            before = C.gather(2, old.unsqueeze(-1)).sum((1, 2))
            after = C.gather(2, new.unsqueeze(-1)).sum((1, 2))
            better = after > before + 1e-9 * before.abs().clamp_min(1e-12)
            if better.any():
                perms[g.space] = torch.where(better.unsqueeze(-1), new, old)
                improved = True
        if not improved:
            break
    return perms


def _stack_of(ws: WeightSpace, sd: Mapping[str, torch.Tensor], batched: bool, which: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, Mapping):
        raise TypeError(f"align() takes state dicts; {which} is a {type(sd).__name__}"
                        + (": pass model.state_dict()" if isinstance(sd, nn.Module) else ""))
    ws.check(sd, batched=batched)
    return {k: (v if batched else v.unsqueeze(0)) for k, v in sd.items()}


def align(ws: WeightSpace, sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor],
          method: str = "weights", *, model: nn.Module | None = None, inputs: Any = None,
          batched: bool = False, seed: int = 0, max_iter: int = 100) -> Permutation:
    """The permutation P that maps network b onto network a: ``ws.permute(sd_b, P)`` ≈ ``sd_a``.

    Args:
        ws: the weight space both state dicts belong to.
        sd_a, sd_b: state dicts; with ``batched=True`` stacks ``{name: Tensor[B, ...]}``
            (pair b of the stacks is aligned; P holds ``[B, size]`` tensors). ``sd_a``
            may be one state dict while ``sd_b`` is a stack: every network is aligned to it.
        method: "weights" (weight matching) or "activations" (needs ``model`` and ``inputs``:
            a module of this architecture and a batch of inputs, a tensor or a tuple).
        seed: the random order of groups in coordinate descent.
        max_iter: most passes over the groups.
    """
    if method not in ("weights", "activations"):
        raise ValueError(f"align(method=...) is 'weights' or 'activations', got {method!r}")
    if batched:
        sd_b = _stack_of(ws, sd_b, True, "sd_b")
        B = WeightSpace._batch_size(sd_b)
        one_a = isinstance(sd_a, Mapping) and all(tuple(v.shape) == ws.shapes.get(k) for k, v in sd_a.items())
        sd_a = _stack_of(ws, sd_a, not one_a, "sd_a")
        if one_a:
            sd_a = {k: v.expand(B, *v.shape[1:]) for k, v in sd_a.items()}
        elif WeightSpace._batch_size(sd_a) != B:
            raise ValueError(f"align(batched=True): sd_a stacks {WeightSpace._batch_size(sd_a)} networks, "
                             f"sd_b {B}; give equal stacks or one reference state dict as sd_a")
    else:
        sd_a, sd_b = _stack_of(ws, sd_a, False, "sd_a"), _stack_of(ws, sd_b, False, "sd_b")
        B = 1
    groups = list(ws.groups)
    if not groups:
        return Permutation(())
    problem = _Problem(ws)
    matched_by_acts: set[int] = set()
    if method == "activations":
        if model is None or inputs is None:
            raise ValueError("align(method='activations') needs model= (a module of this architecture) and "
                             "inputs= (a batch of inputs); or use method='weights'")
        if B != 1:
            raise ValueError("align(method='activations') aligns one pair at a time (batched=False)")
        matched_by_acts = _add_activations(problem, ws, model, inputs, sd_a, sd_b)
    for name in ws.weights:
        if matched_by_acts and all(not _sites(ws.axes(name), ws.spaces.sizes, g.space) for g in groups
                                   if g.space not in matched_by_acts):
            continue   # only groups matched by activations read this tensor
        a, b = sd_a[ws.aliases.get(name, name)], sd_b[ws.aliases.get(name, name)]
        problem.add(name, a.float(), b.float(), ws.axes(name))
    perms = _solve(problem, groups, B, seed, max_iter)
    return Permutation(tuple(perms[g.space] if batched else perms[g.space][0] for g in groups))


def align_stack(ws: WeightSpace, stack: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None = None,
                **kw) -> dict[str, torch.Tensor]:
    """Every network of a stack permuted onto one reference (default: the first of the
    stack): do it once, ahead of training, before MixUp with alignment."""
    if reference is None:
        reference = {k: v[0] for k, v in stack.items()}
    perm = align(ws, reference, stack, batched=True, **kw)
    return ws.permute(stack, perm, batched=True)


# -- activations -------------------------------------------------------------------------------------
_PRODUCERS = {"linear": (nn.Linear, -1), "conv1d": (nn.Conv1d, 1), "conv2d": (nn.Conv2d, 1),
              "conv3d": (nn.Conv3d, 1)}


def _add_activations(problem: _Problem, ws: WeightSpace, model: nn.Module, inputs: Any,
                     sd_a, sd_b) -> set[int]:
    """Record the outputs of modules producing groups (Linear, Conv) for both networks,
    standardised per neuron, as tensors of the problem. Returns the spaces covered."""
    modules = dict(model.named_modules())
    sites: dict[str, tuple[int, tuple]] = {}   # module path -> (channel dim, axis structure)
    for node in ws.op_graph.nodes:
        kind = _PRODUCERS.get(node.op)
        if kind is None or not node.params:
            continue
        mod = modules.get(node.module)
        w = node.params[0]
        if not node.module or not isinstance(mod, kind[0]) or w != f"{node.module}.weight":
            continue
        s = ws.axes(w)[0]
        if any(ws.spaces.free[a] for seg in s for a in seg):
            sites[node.module] = (kind[1], s)
    covered = {a for _, s in sites.values() for seg in s for a in seg if ws.spaces.free[a]}
    if not covered:
        raise ValueError("align(method='activations'): no Linear or Conv module of the model produces a "
                         "neuron group; use method='weights'")
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    recs = []
    for sd in (sd_a, sd_b):
        acts: dict[str, torch.Tensor] = {}
        hooks = [modules[p].register_forward_hook(
            lambda m, i, o, p=p: acts.__setitem__(p, o.detach())) for p in sites]
        try:
            state = {k: v[0] for k, v in sd.items()}
            was = model.training
            model.eval()
            with torch.no_grad():
                torch.func.functional_call(model, state, inputs)
            model.train(was)
        finally:
            for h in hooks:
                h.remove()
        recs.append(acts)
    for path, (dim, s) in sites.items():
        xs = []
        for acts in recs:
            x = acts[path].float().movedim(dim, -1)
            x = x.reshape(-1, x.shape[-1])
            x = (x - x.mean(0)) / x.std(0).clamp_min(1e-8)
            xs.append(x.T.unsqueeze(0))    # [1, channels, samples]
        problem.add(f"activation:{path}", xs[0], xs[1], [s, ((),)])
    return covered


@torch.no_grad()
def model_loss(model: nn.Module, state_dict: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
               calib: torch.Tensor | None = None) -> float:
    """Cross-entropy of ``model`` with ``state_dict`` loaded (a copy; ``model`` is not
    changed) on ``(x, y)`` in eval mode; with ``calib``, BatchNorm running statistics are
    first recomputed on those inputs (one train-mode pass, cumulative average)."""
    m = copy.deepcopy(model)
    m.load_state_dict(state_dict)
    bns = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
    if calib is not None and bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        m.train()
        m(calib)
    m.eval()
    return float(F.cross_entropy(m(x), y))


def loss_barrier(ws: WeightSpace, model: nn.Module, sd_a: Mapping[str, torch.Tensor],
                 sd_b: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                 calib: torch.Tensor | None = None, n: int = 11) -> float:
    """max over t in (0, 1) of loss(t a + (1 - t) b) - (t loss(a) + (1 - t) loss(b)), on
    ``n - 2`` evenly spaced inner points; the weights of ``ws`` (floating point) are
    interpolated, everything else is a's. See :func:`model_loss` for ``calib``."""
    la, lb = model_loss(model, sd_a, x, y, calib=calib), model_loss(model, sd_b, x, y, calib=calib)
    worst = 0.0
    for i in range(1, n - 1):
        t = i / (n - 1)
        mid = {k: t * v + (1 - t) * sd_b[k] if k in ws.weights and v.is_floating_point() else v
               for k, v in sd_a.items()}
        worst = max(worst, model_loss(model, mid, x, y, calib=calib) - (t * la + (1 - t) * lb))
    return worst
