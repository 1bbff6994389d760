"""Structured pruning driven by neuron groups.

A :class:`~metanet.space.WeightSpace` group is a set of tensor axes that permute
together; removing neurons is the same selection restricted to the neurons kept. So a
pruning plan is one ``keep`` index per group (old indices, ascending), and every axis of
every tensor that carries the group is cut through the same index map
(:func:`metanet.space.structure.index_map`) that permutations use:

- an axis that is the group itself keeps ``keep[g]``;
- a product such as heads x dims keeps whole heads when the head group is pruned and the
  same dims in every head when the dim group is pruned;
- a concatenation shrinks block by block (each block keeps its own group's neurons).

Invariants:
- The model given is never modified. Work happens on a deep copy that is returned only
  when every module holding a cut tensor could be rebuilt (the table in
  :mod:`metanet.prune.modules`) and, given example inputs, the copy runs on them and
  gives outputs of the original shapes. Otherwise :class:`PruneError` says which module
  and why.
- Keeping every neuron is the identity: no tensor is replaced.
- Tied tensors (one storage under two names) stay tied: both names get the same new
  ``nn.Parameter``.
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..space.structure import index_map
from .hf import is_hf_model, update_config, update_kv_groups
from .modules import PruneError, ResizeContext, known_types, resizer_for, update_head_attributes

Keep = dict[int, torch.Tensor]
CRITERIA = ("random", "magnitude", "l1", "l2")


# -- inputs ------------------------------------------------------------------------------------------
def _as_inputs(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"example_inputs must be a tensor or a tuple of forward() arguments, "
                        f"got {type(example_inputs).__name__}")
    return example_inputs


def _space(model: nn.Module, example_inputs: tuple, kwargs: dict | None, ws=None):
    from ..space import WeightSpace

    if not isinstance(model, nn.Module):
        raise TypeError(f"prune() takes an nn.Module, got {type(model).__name__}")
    return ws if ws is not None else WeightSpace.of(model, example_inputs, kwargs)


def check_keep(ws, keep: Mapping[int, Any]) -> Keep:
    """``keep`` as ``{group id: ascending LongTensor of old indices}``, checked."""
    if not isinstance(keep, Mapping):
        raise TypeError(f"keep must map group ids to the indices kept, got {type(keep).__name__}")
    out: Keep = {}
    for gid, idx in keep.items():
        try:
            g = ws.groups[int(gid)]
        except (TypeError, ValueError, IndexError):
            raise PruneError(f"keep names group {gid!r}; this model has groups 0..{len(ws.groups) - 1} "
                             f"(see ws.summary())") from None
        t = torch.as_tensor(list(idx) if isinstance(idx, range) else idx)
        if t.numel() == 0:
            raise PruneError(f"keep[{g.id}] ({g.name}) keeps no neuron: keep at least one of {g.size}")
        if t.is_floating_point() or t.dtype == torch.bool or t.dim() != 1:
            raise PruneError(f"keep[{g.id}] ({g.name}) must be a 1-d list of integer indices, got "
                             f"{t.dtype} of shape {tuple(t.shape)}")
        t = t.long().sort().values
        if t[0] < 0 or t[-1] >= g.size or bool((t[1:] == t[:-1]).any()):
            raise PruneError(f"keep[{g.id}] ({g.name}) must hold distinct indices in 0..{g.size - 1}, "
                             f"got {t.tolist()}")
        if t.numel() < g.size:
            out[g.id] = t
    return out


# -- scores ------------------------------------------------------------------------------------------
def _positions(s: tuple, sizes: Sequence[int], atom: int) -> torch.Tensor:
    """For each position along an axis of structure ``s``, the neuron of ``atom`` it
    belongs to (-1 in segments without it)."""
    pieces = []
    for seg in s:
        n = prod(sizes[a] for a in seg)
        if atom in seg:
            i = seg.index(atom)
            stride = prod(sizes[a] for a in seg[i + 1:])
            pieces.append(torch.arange(n) // stride % sizes[atom])
        else:
            pieces.append(torch.full((n,), -1, dtype=torch.long))
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def group_norms(ws, state_dict: Mapping[str, torch.Tensor], p: int = 2,
                names: set[str] | None = None) -> dict[int, torch.Tensor]:
    """Per neuron of every group: the L``p`` norm of its slices over every tensor carrying
    the group (``names``: only these tensors, e.g. the parameters without running
    statistics). ``{group id: float64 [size]}``."""
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    out = {}
    for g in ws.groups:
        acc = torch.zeros(g.size, dtype=torch.float64)
        for name, axis in ws.group_axes(g.id):
            if names is not None and name not in names:
                continue
            v = state_dict[name].detach().to("cpu", torch.float64).movedim(axis, 0)
            v = v.reshape(v.shape[0], -1)
            per = v.abs().sum(1) if p == 1 else v.pow(2).sum(1)
            pos = _positions(ws.axes(name)[axis], ws.spaces.sizes, g.space)
            m = pos >= 0
            acc.index_add_(0, pos[m], per[m])
        out[g.id] = acc if p == 1 else acc.sqrt()
    return out


def scores_for(ws, model: nn.Module, criterion: str | Mapping[int, torch.Tensor] | Callable,
               generator: torch.Generator | None = None) -> dict[int, torch.Tensor]:
    """One score per neuron of every group (higher = more important).

    ``criterion``: "random"; "magnitude" or "l2" (L2 norm of each neuron's slices over
    every parameter tensor of its group); "l1"; a mapping ``{group id: scores [size]}``
    (learned scores; groups it leaves out are not pruned); or a callable
    ``(ws, model) -> mapping``."""
    if callable(criterion) and not isinstance(criterion, (str, Mapping)):
        criterion = criterion(ws, model)
    if isinstance(criterion, Mapping):
        out = {}
        for gid, s in criterion.items():
            try:
                g = ws.groups[int(gid)]
            except (TypeError, ValueError, IndexError):
                raise PruneError(f"scores name group {gid!r}; this model has groups 0..{len(ws.groups) - 1}") from None
            s = torch.as_tensor(s).detach().reshape(-1).to("cpu", torch.float64)
            if s.numel() != g.size:
                raise PruneError(f"scores for group {g.id} ({g.name}) have {s.numel()} values, the group "
                                 f"has {g.size} neurons")
            out[g.id] = s
        return out
    if criterion == "random":
        return {g.id: torch.rand(g.size, generator=generator, dtype=torch.float64) for g in ws.groups}
    if criterion in ("magnitude", "l2", "l1"):
        params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        params = {ws.aliases.get(n, n) for n in params}
        return group_norms(ws, model.state_dict(), 1 if criterion == "l1" else 2, params)
    raise PruneError(f"unknown criterion {criterion!r}: use one of {', '.join(CRITERIA)}, a mapping "
                     f"{{group id: scores}} or a callable (ws, model) -> mapping")


def keep_top(ws, scores: Mapping[int, torch.Tensor], ratio: float | Mapping[int, float],
             groups: Sequence[int] | None = None) -> Keep:
    """Keep the highest-scoring neurons of each scored group: ``ratio`` of each group is
    removed (rounded; at least one neuron stays). ``ratio`` may be per group."""
    sel = set(scores) if groups is None else {int(g) for g in groups} & set(scores)
    out: Keep = {}
    for gid in sorted(sel):
        r = ratio[gid] if isinstance(ratio, Mapping) else ratio
        if r is None:
            continue
        if not 0 <= r < 1:
            raise PruneError(f"ratio must be in [0, 1) (the fraction of each group's neurons removed), got {r}")
        size = ws.groups[gid].size
        n = max(1, size - int(round(size * r)))
        if n < size:
            out[gid] = scores[gid].topk(n).indices.sort().values
    return out


def keep_global(ws, scores: Mapping[int, torch.Tensor], ratio: float,
                groups: Sequence[int] | None = None) -> Keep:
    """Keep the highest-scoring neurons over all scored groups together: the ``ratio`` of
    all their neurons with the lowest scores is removed, wherever they are (at least one
    neuron of each group stays). Layers lose different fractions; this fits scores that
    are comparable across groups (e.g. group norms driven apart by a group lasso), not raw
    magnitudes of layers of different scales."""
    if not 0 <= ratio < 1:
        raise PruneError(f"ratio must be in [0, 1) (the fraction of all neurons removed), got {ratio}")
    sel = sorted(set(scores) if groups is None else {int(g) for g in groups} & set(scores))
    if not sel:
        return {}
    flat = torch.cat([scores[g].to(torch.float64) for g in sel])
    n_remove = int(round(flat.numel() * ratio))
    if n_remove == 0:
        return {}
    threshold = flat.sort().values[n_remove - 1]
    out: Keep = {}
    for gid in sel:
        s = scores[gid].to(torch.float64)
        kept = (s > threshold).nonzero().flatten()
        if kept.numel() == 0:
            kept = s.argmax().reshape(1)
        if kept.numel() < s.numel():
            out[gid] = kept.sort().values
    return out


ALLOCATIONS = ("uniform", "global")


def _keep_for(ws, scores, ratio, groups, allocation: str) -> Keep:
    if allocation == "uniform":
        return keep_top(ws, scores, ratio, groups)
    if allocation == "global":
        if isinstance(ratio, Mapping):
            raise PruneError("allocation='global' takes one ratio (the fraction of all neurons removed), "
                             "not one per group")
        return keep_global(ws, scores, ratio, groups)
    raise PruneError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")


# -- applying a plan ----------------------------------------------------------------------------------
@dataclass
class _Plan:
    tensors: dict[str, torch.Tensor]                      # canonical name -> new tensor
    kept: dict[str, dict[int, torch.Tensor]]              # canonical name -> axis -> old indices kept
    products: dict[str, list[tuple[int, int, int, int]]]  # canonical name -> (old h, old d, new h, new d)
    groups_of: dict[str, set[int]]                        # canonical name -> groups cutting it


def _plan(ws, state_dict: Mapping[str, torch.Tensor], keep: Keep) -> _Plan:
    sizes = ws.spaces.sizes
    by_space = {ws.groups[g].space: idx for g, idx in keep.items()}
    group_of_space = {ws.groups[g].space: g for g in keep}
    new_size = {sp: int(idx.numel()) for sp, idx in by_space.items()}
    plan = _Plan({}, defaultdict(dict), defaultdict(list), defaultdict(set))
    for name in ws.weights:
        v = state_dict[name]
        changed = False
        for k, s in enumerate(ws.spaces.axes[name]):
            idx = index_map(s, sizes, by_space)
            if idx is None or idx.numel() == v.shape[k]:
                continue
            v = v.index_select(k, idx.to(v.device))
            plan.kept[name][k] = idx
            changed = True
            for seg in s:
                plan.groups_of[name].update(group_of_space[a] for a in seg if a in group_of_space)
                for a, b in zip(seg, seg[1:]):
                    plan.products[name].append((sizes[a], sizes[b], new_size.get(a, sizes[a]),
                                                new_size.get(b, sizes[b])))
        if changed:
            plan.tensors[name] = v.detach().clone()
    return plan


def _owners(model: nn.Module):
    """(full name, module path, local name, is parameter) of every parameter and buffer,
    tied ones under each name."""
    for path, m in model.named_modules(remove_duplicate=False):
        for local, _ in m._parameters.items():
            yield (f"{path}.{local}" if path else local), path, local, True
        for local, _ in m._buffers.items():
            yield (f"{path}.{local}" if path else local), path, local, False


def _describe_groups(ws, gids) -> str:
    return ", ".join(f"{g} ({ws.groups[g].name})" for g in sorted(gids))


def prune_model(ws, model: nn.Module, keep: Mapping[int, Any], example_inputs: Any = None, *,
                kwargs: dict | None = None, check: bool = True) -> nn.Module:
    """A pruned copy of ``model`` keeping, for each group ``g`` in ``keep``, the neurons
    ``keep[g]`` (old indices). ``model`` is not modified.

    Raises :class:`PruneError` when a module holding a cut tensor cannot be rebuilt, or
    (with ``example_inputs`` and ``check``) when the pruned copy fails to run on them or
    returns outputs of other shapes (a ``forward`` that hard-codes a size)."""
    keep = check_keep(ws, keep)
    sd = model.state_dict()
    ws.check(sd)
    plan = _plan(ws, sd, keep)
    new = copy.deepcopy(model)
    if not plan.tensors:
        return new
    modules = dict(new.named_modules(remove_duplicate=False))

    # 1. every module owning a cut tensor must be in the table (refuse before editing); a
    #    module of another type is accepted only if the pruned model is then run and checked
    verify = check and example_inputs is not None
    unlisted: list[str] = []
    per_module: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)   # path -> (local, canon, param)
    for full, path, local, is_param in _owners(new):
        canon = ws.aliases.get(full, full)
        if canon in plan.tensors:
            per_module[path].append((local, canon, is_param))
    for path, items in per_module.items():
        m = modules[path]
        r = resizer_for(m)
        gids = set().union(*(plan.groups_of[c] for _, c, _ in items))
        if r is None:
            if verify:   # it holds plain tensors (e.g. a positional table): the run check decides
                unlisted.append(f"{path or '<root>'} ({type(m).__name__})")
                continue
            raise PruneError(
                f"cannot rebuild {path or '<root>'} ({type(m).__name__}): its tensor "
                f"{items[0][0]!r} would shrink (groups {_describe_groups(ws, gids)}) and its type is not in "
                f"the resize table, so its forward may depend on sizes we cannot update. Leave those "
                f"groups out (groups=... or keep=...), register the type with "
                f"metanet.prune.register_resizer, or pass example inputs so that the pruned model can be "
                f"run to check it. Known types: {', '.join(known_types())}")
        if r.tensors is not None:
            unknown = [local for local, _, _ in items if local not in r.tensors]
            if unknown:
                raise PruneError(f"cannot rebuild {path or '<root>'} ({type(m).__name__}): its tensor "
                                 f"{unknown[0]!r} would shrink, but the resize entry for "
                                 f"{r.type.__qualname__} only knows {', '.join(r.tensors)}")

    # 2. new tensors, one object per canonical name (ties stay ties)
    made: dict[str, torch.Tensor] = {}
    for path, items in per_module.items():
        m = modules[path]
        for local, canon, is_param in items:
            old = (m._parameters if is_param else m._buffers)[local]
            if canon not in made:
                t = plan.tensors[canon].to(old.dtype)
                made[canon] = nn.Parameter(t, requires_grad=old.requires_grad) if is_param else t
            if is_param:
                setattr(m, local, made[canon])
            else:
                m._buffers[local] = made[canon]

    # 3. size attributes through the table, then head counts of attention blocks
    shapes = ws.shapes
    products_under: dict[str, list] = defaultdict(list)
    for path, items in per_module.items():
        m = modules[path]
        prefix = f"{path}." if path else ""
        ctx = ResizeContext(path, {(local, k): idx for local, canon, _ in items
                                   for k, idx in plan.kept[canon].items()},
                            {local: shapes[prefix + local] if prefix + local in shapes else shapes[canon]
                             for local, canon, _ in items})
        r = resizer_for(m)
        if r is not None:
            r.resize(m, ctx)
        prods = [p for _, canon, _ in items for p in plan.products[canon]]
        parts = path.split(".") if path else []
        for i in range(len(parts) + 1):
            products_under[".".join(parts[:i])].extend(prods)
    for path, prods in products_under.items():
        m = modules[path]
        if resizer_for(m) is None:
            update_head_attributes(m, path, prods)
            update_kv_groups(m, path)

    # 4. a Hugging Face model's config takes the new sizes (save_pretrained / from_pretrained)
    if is_hf_model(new):
        update_config(model, new)

    if verify:
        _check_runs(model, new, _as_inputs(example_inputs), kwargs or {}, ws, plan, unlisted)
    return new


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for k in out for t in _flat_tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


class _EvalMode:
    """Eval mode for the duration of a block (training flags restored after)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, f in self.flags:
            m.training = f


def _run(model: nn.Module, inputs: tuple, kwargs: dict) -> Any:
    with _EvalMode(model), torch.no_grad():
        return model(*inputs, **kwargs)


def _check_runs(original: nn.Module, pruned: nn.Module, inputs: tuple, kwargs: dict, ws, plan: _Plan,
                unlisted: list[str]) -> None:
    gids = set().union(*plan.groups_of.values())
    if unlisted:
        gids_note = (f"; modules outside the resize table hold cut tensors: {', '.join(unlisted)} "
                     f"(register them with metanet.prune.register_resizer)")
    else:
        gids_note = ""
    try:
        out = _run(pruned, inputs, kwargs)
    except Exception as err:
        raise PruneError(
            f"the pruned model fails on the example inputs ({type(err).__name__}: {err}); some module's "
            f"forward uses a size that pruning groups {_describe_groups(ws, gids)} changed (e.g. a "
            f"hard-coded .view or an attribute the resize table does not know). Leave those groups out "
            f"(groups=..., groups='prunable' or keep=...) or register the module type with "
            f"metanet.prune.register_resizer. "
            f"The model was not changed{gids_note}") from err
    ref = _flat_tensors(_run(original, inputs, kwargs))
    got = _flat_tensors(out)
    if len(ref) != len(got):
        raise PruneError(f"the pruned model returns {len(got)} tensors, the original {len(ref)}; "
                         f"the model was not changed")
    for i, (a, b) in enumerate(zip(ref, got)):
        if a.shape != b.shape:
            raise PruneError(
                f"output {i} of the pruned model has shape {tuple(b.shape)}, the original {tuple(a.shape)}: a "
                f"module's forward reshapes with a size that pruning groups {_describe_groups(ws, gids)} "
                f"changed. Leave those groups out (groups=... or keep=...); the model was not changed{gids_note}")


# -- counting -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    """Size and cost of a model: parameters (distinct tensors), FLOPs of one forward pass on
    the example inputs (torch.utils.flop_counter: 2 per multiply-add of matmuls and
    convolutions) and latency in milliseconds (best of 20 runs) (None when not measured)."""

    params: int
    flops: int
    latency_ms: float | None = None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: Any, kwargs: dict | None = None) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # PyTorch's fused transformer fast path runs as one op the counter does not see: count
    # the unfused ops instead (same arithmetic)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter:
            _run(model, _as_inputs(example_inputs), kwargs or {})
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(counter.get_total_flops())


def measure_latency(model: nn.Module, example_inputs: Any, kwargs: dict | None = None, *,
                    repeats: int = 20, warmup: int = 3) -> float:
    """Best wall time of one forward pass over ``repeats`` runs, in milliseconds (eval
    mode, no grad). The minimum, as ``timeit`` advises: on a shared machine the slower
    runs measure the other processes."""
    return measure_latencies([model], example_inputs, kwargs, repeats=repeats, warmup=warmup)[0]


def measure_latencies(models: Sequence[nn.Module], example_inputs: Any, kwargs: dict | None = None, *,
                      repeats: int = 20, warmup: int = 3) -> list[float]:
    """:func:`measure_latency` of several models, measured in interleaved rounds so that a
    burst of load elsewhere hits all of them alike."""
    inputs, kwargs = _as_inputs(example_inputs), kwargs or {}
    for m in models:
        for _ in range(warmup):
            _run(m, inputs, kwargs)
    best = [math.inf] * len(models)
    for _ in range(repeats):
        for i, m in enumerate(models):
            t0 = time.perf_counter()
            _run(m, inputs, kwargs)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [1e3 * b for b in best]


def count(model: nn.Module, example_inputs: Any, kwargs: dict | None = None, *, latency: bool = True,
          repeats: int = 20) -> Counts:
    return Counts(count_params(model), count_flops(model, example_inputs, kwargs),
                  measure_latency(model, example_inputs, kwargs, repeats=repeats) if latency else None)


# -- the entry point -------------------------------------------------------------------------------------
@dataclass
class PruneResult:
    """A pruned model with its plan (``keep``: old indices kept per group) and its size and
    cost before and after."""

    model: nn.Module
    keep: Keep
    before: Counts
    after: Counts
    ratio: float | None = None
    groups: dict[int, tuple[int, int]] = field(default_factory=dict)   # group -> (old size, new size)
    skipped: dict[int, str] = field(default_factory=dict)   # groups="prunable": group kept whole -> why

    @property
    def flops_reduction(self) -> float:
        return self.before.flops / max(self.after.flops, 1)

    @property
    def params_reduction(self) -> float:
        return self.before.params / max(self.after.params, 1)

    @property
    def latency_speedup(self) -> float | None:
        if self.before.latency_ms is None or self.after.latency_ms is None:
            return None
        return self.before.latency_ms / max(self.after.latency_ms, 1e-9)

    def table(self) -> str:
        rows = [("parameters", f"{self.before.params:,}", f"{self.after.params:,}", f"{self.params_reduction:.2f}x"),
                ("FLOPs", f"{self.before.flops:,}", f"{self.after.flops:,}", f"{self.flops_reduction:.2f}x")]
        if self.latency_speedup is not None:
            rows.append(("latency (ms)", f"{self.before.latency_ms:.3f}", f"{self.after.latency_ms:.3f}",
                         f"{self.latency_speedup:.2f}x"))
        head = ("", "before", "after", "reduction")
        w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
        lines = ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))
                 for r in [head] + rows]
        return "\n".join(lines)


def prune(model: nn.Module, example_inputs: Any, criterion: str | Mapping | Callable = "magnitude", *,
          ratio: float | Mapping[int, float] | None = None, keep: Mapping[int, Any] | None = None,
          speedup: float | None = None, groups: Sequence[int] | str | None = None,
          kwargs: dict | None = None, generator: torch.Generator | None = None, latency: bool = True, ws=None,
          allocation: str = "uniform", progress: Callable[[str], None] | None = None) -> PruneResult:
    """Prune ``model`` group by group; return the pruned copy with before/after counts.

    Give exactly one of:
      ``keep``    ``{group id: indices kept}`` (an explicit plan; ``criterion`` unused);
      ``ratio``   the fraction of each group's neurons removed, lowest scores first
                  (one float, or per group);
      ``speedup`` a target FLOP reduction (e.g. 2.0): the smallest uniform ratio that
                  reaches it, found by bisection.
    ``criterion`` scores neurons: "random", "magnitude"/"l2", "l1", or learned scores
    ``{group id: tensor [size]}`` (see :func:`scores_for`). ``groups`` restricts pruning
    to those group ids (default: every group); ``groups="prunable"`` to the groups that
    :func:`prunable_groups` finds prunable alone (a model whose ``forward`` hard-codes
    some sizes keeps those groups whole; ``result.skipped`` says why each was kept).
    ``allocation``: "uniform" removes the same fraction of every group; "global" removes
    the lowest scores over all groups together (:func:`keep_global`; the ratio is then the
    fraction of all neurons). ``model`` itself
    is never modified."""
    given = [n for n, v in (("keep", keep), ("ratio", ratio), ("speedup", speedup)) if v is not None]
    if len(given) != 1:
        raise PruneError("give exactly one of keep={group: indices}, ratio=fraction removed or speedup=target "
                         f"FLOP reduction (got {', '.join(given) or 'none'})")
    inputs = _as_inputs(example_inputs)
    say = progress or (lambda msg: None)
    say("tracing the model and finding its neuron groups")
    ws = _space(model, inputs, kwargs, ws)
    if not ws.groups:
        raise PruneError("this model has no neuron groups (every axis is fixed): nothing can be pruned")
    skipped: dict[int, str] = {}
    if isinstance(groups, str):
        if groups != "prunable":
            raise PruneError(f"groups must be a list of group ids or 'prunable', got {groups!r}")
        if keep is not None:
            raise PruneError("groups='prunable' chooses groups to score; with keep=... the plan names them")
        say(f"probing which of the {len(ws.groups)} groups prune alone")
        groups, skipped = prunable_groups(model, inputs, ws=ws, kwargs=kwargs)
        if not groups:
            raise PruneError("no group prunes on its own: " + "; ".join(
                f"group {g} ({ws.groups[g].name}): {why}" for g, why in list(skipped.items())[:5]))
    say("counting parameters and FLOPs before pruning")
    before = count(model, inputs, kwargs, latency=False)
    chosen = None
    if keep is None:
        say(f"scoring neurons ({criterion if isinstance(criterion, str) else 'given scores'})")
        scores = scores_for(ws, model, criterion, generator)
        if speedup is not None:
            if not speedup > 1:
                raise PruneError(f"speedup must be > 1 (a FLOP reduction factor), got {speedup}")
            chosen = _search_ratio(ws, model, inputs, kwargs, scores, groups, before.flops / speedup, say,
                                   allocation)
            ratio = chosen
        keep = _keep_for(ws, scores, ratio, groups, allocation)
        if not keep:
            say("nothing to remove at this ratio")
    else:
        keep = check_keep(ws, keep)
    say(f"pruning {len(keep)} of {len(ws.groups)} groups and rebuilding modules")
    pruned = prune_model(ws, model, keep, inputs, kwargs=kwargs)
    say("counting after pruning" + (", measuring latency before and after" if latency else ""))
    after = count(pruned, inputs, kwargs, latency=False)
    if latency:
        t_before, t_after = measure_latencies([model, pruned], inputs, kwargs)
        before, after = (Counts(before.params, before.flops, t_before), Counts(after.params, after.flops, t_after))
    return PruneResult(pruned, keep, before, after, chosen if chosen is not None else
                       (ratio if isinstance(ratio, float) else None),
                       {g: (ws.groups[g].size, int(idx.numel())) for g, idx in keep.items()}, skipped)


def prunable_groups(model: nn.Module, example_inputs: Any, *, ws=None, kwargs: dict | None = None,
                    groups: Sequence[int] | None = None) -> tuple[list[int], dict[int, str]]:
    """Which groups can be pruned on their own: each group of two or more neurons (of
    ``groups``, default all) loses its last neuron alone, and the pruned copy is rebuilt
    and run on ``example_inputs``. Returns ``(ids that ran, {id: why it failed})``; a
    group fails when a module holding one of its tensors cannot be rebuilt, or a
    ``forward`` uses a size the group sets (a stored head count, a split width).
    Groups that each prune alone usually prune together too; :func:`prune` still runs
    the final model. ``model`` is not modified."""
    inputs = _as_inputs(example_inputs)
    ws = _space(model, inputs, kwargs, ws)
    ids = range(len(ws.groups)) if groups is None else [int(g) for g in groups]
    ok, failed = [], {}
    for g in ids:
        size = ws.groups[g].size
        if size < 2:
            failed[g] = "a single neuron: pruning would remove the group"
            continue
        try:
            prune_model(ws, model, {g: torch.arange(size - 1)}, inputs, kwargs=kwargs)
        except PruneError as err:
            cause = err.__cause__
            failed[g] = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
        else:
            ok.append(g)
    return ok, failed


def _search_ratio(ws, model, inputs, kwargs, scores, groups, target: float, say,
                  allocation: str = "uniform") -> float:
    """The smallest ratio (to 1/256) whose pruned model needs at most ``target`` FLOPs."""
    def flops(r: float) -> int:
        plan = _keep_for(ws, scores, r, groups, allocation)
        return count_flops(prune_model(ws, model, plan, check=False), inputs, kwargs)

    lo, hi = 0.0, 255 / 256
    f_hi = flops(hi)
    if f_hi > target:
        raise PruneError(f"even removing all but one neuron of every group leaves {f_hi:,} FLOPs, more than the "
                         f"target {int(target):,}: the FLOPs are in layers no group shrinks; ask for less")
    for step in range(8):
        mid = (lo + hi) / 2
        f = flops(mid)
        say(f"  search {step + 1}/8: ratio {mid:.3f} -> {f:,} FLOPs (target {int(target):,})")
        if f <= target:
            hi = mid
        else:
            lo = mid
    return hi


# -- saving and loading -----------------------------------------------------------------------------------
PLAN_KEY = "metanet.prune.keep"


def save(model: nn.Module, path, keep: Mapping[int, torch.Tensor] | None = None) -> None:
    """Save a pruned model's weights as safetensors; with ``keep``, the plan goes into the
    file's metadata so that :func:`load` can rebuild the pruned model from a fresh
    instance of the original architecture."""
    from safetensors.torch import save_model

    meta = None
    if keep is not None:
        meta = {PLAN_KEY: json.dumps({str(g): [int(i) for i in idx] for g, idx in keep.items()})}
    save_model(model, str(path), metadata=meta)


def load(model: nn.Module, example_inputs: Any, path, *, kwargs: dict | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save` (with its plan): prune a fresh instance of the
    original architecture ``model`` by the stored plan and load the weights into it."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if PLAN_KEY not in meta:
        raise PruneError(f"{path} holds no pruning plan: it was not saved by metanet.prune.save(..., keep=...); "
                         f"load its weights into the pruned module itself with safetensors.torch.load_model")
    keep = {int(g): torch.tensor(idx, dtype=torch.long) for g, idx in json.loads(meta[PLAN_KEY]).items()}
    inputs = _as_inputs(example_inputs)
    ws = _space(model, inputs, kwargs)
    pruned = prune_model(ws, model, keep, inputs, kwargs=kwargs)
    load_model(pruned, str(path))
    return pruned
