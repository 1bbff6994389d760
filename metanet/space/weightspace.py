"""WeightSpace: the parameters of one architecture and the neuron symmetries that
leave its function unchanged."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..trace import OpGraph, trace
from .propagate import Propagator, Spaces
from .structure import index_map, value_map


class StateDictError(ValueError):
    """A state dict does not match its weight space."""


@dataclass(frozen=True)
class Group:
    """A neuron group: ``size`` neurons that may be permuted jointly along every axis
    that carries this group."""

    id: int
    size: int
    space: int          # space id in the propagation result
    name: str           # first tensor axis carrying it, e.g. "layer1.0.conv1.weight[0]"
    scaling: bool       # positive scaling is a symmetry (ReLU-like)
    sign: bool          # sign flips are a symmetry (odd activations)


@dataclass(frozen=True)
class Permutation:
    """One permutation per neuron group: ``perms[g][j]`` is the old index of new neuron j."""

    perms: tuple[torch.Tensor, ...]

    def __getitem__(self, g: int) -> torch.Tensor:
        return self.perms[g]

    def __len__(self) -> int:
        return len(self.perms)

    def inverse(self) -> "Permutation":
        return Permutation(tuple(torch.argsort(p) for p in self.perms))


@dataclass(frozen=True)
class Scaling:
    """Per-neuron factors for some groups: ``kind`` is "scale" (positive factors,
    ReLU-like layers) or "sign" (±1, odd activations)."""

    factors: dict[int, torch.Tensor]
    kind: str


_CACHE: "OrderedDict[str, WeightSpace]" = OrderedDict()
_CACHE_SIZE = 64


def _spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), str(x.dtype))
    if isinstance(x, (list, tuple)):
        return tuple(_spec(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _spec(v)) for k, v in x.items()))
    return repr(x)


def architecture_key(model: nn.Module, example_inputs: Any, kwargs: dict | None = None) -> str:
    """A key identifying an architecture (module tree, state-dict shapes, input specs)."""
    h = hashlib.sha1()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    h.update(repr(model).encode())
    for k, v in model.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype};".encode())
    h.update(repr(_spec(example_inputs)).encode())
    h.update(repr(_spec(kwargs or {})).encode())
    return h.hexdigest()


class WeightSpace:
    """The weight space of one architecture.

    Build with :meth:`of`. Holds the op graph, the weight tensors' names, shapes and
    dtypes, and for every axis of every weight its neuron-group structure. Cheap to
    pickle: no model, no exported program.
    """

    def __init__(self, op_graph: OpGraph, keys: list[str], shapes: dict[str, tuple[int, ...]],
                 dtypes: dict[str, torch.dtype], aliases: dict[str, str], weights: list[str],
                 spaces: Spaces):
        self.op_graph = op_graph
        self.keys = keys                # every state-dict key, in order
        self.shapes = shapes            # every state-dict key -> shape
        self.dtypes = dtypes
        self.aliases = aliases          # tied entry -> the entry it shares storage with
        self.weights = weights          # canonical weight entries (in the graphs)
        self.extras = [k for k in keys if k not in aliases and k not in set(weights)]
        self.spaces = spaces
        groups: list[Group] = []
        self._group_of_space: dict[int, int] = {}
        first: dict[int, str] = {}
        for name in weights:
            for k, s in enumerate(spaces.axes[name]):
                for seg in s:
                    for a in seg:
                        first.setdefault(a, f"{name}[{k}]")
        for sp, name in first.items():
            if spaces.free[sp] and spaces.sizes[sp] > 1:
                self._group_of_space[sp] = len(groups)
                groups.append(Group(len(groups), spaces.sizes[sp], sp, name,
                                    sp not in spaces.no_scale, sp not in spaces.no_sign))
        self.groups = groups
        self._layouts: dict = {}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def of(cls, model: nn.Module, example_inputs: Any, kwargs: dict | None = None, *,
           cache: bool = True) -> "WeightSpace":
        """Trace ``model`` on ``example_inputs`` and find its neuron groups.

        Cached per architecture (module tree, parameter shapes, input shapes): many
        checkpoints of one architecture are traced once."""
        key = architecture_key(model, example_inputs, kwargs) if cache else None
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        graph = trace(model, example_inputs, kwargs)
        ws = cls.from_op_graph(graph, model.state_dict(keep_vars=True))
        if key is not None:
            _CACHE[key] = ws
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return ws

    @classmethod
    def from_op_graph(cls, graph: OpGraph, state_dict: Mapping[str, torch.Tensor]) -> "WeightSpace":
        keys = list(state_dict.keys())
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        dtypes = {k: v.dtype for k, v in state_dict.items()}
        seen: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for k, v in state_dict.items():
            ident = id(v)
            if ident in seen:
                aliases[k] = seen[ident]
            else:
                seen[ident] = k
        used = set(graph.param_shapes)
        weights = [k for k in keys if k not in aliases and dtypes[k].is_floating_point
                   and (k in used or any(a in used for a, c in aliases.items() if c == k))]
        # the op graph may name a tied entry by either of its names
        for a, c in aliases.items():
            if c not in graph.param_shapes and a in graph.param_shapes:
                graph.param_shapes[c] = graph.param_shapes[a]
        spaces = Propagator(graph, aliases).run()
        return cls(graph, keys, shapes, dtypes, aliases, weights, spaces)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_layouts"] = {}
        return state

    # -- description -------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        from math import prod
        return sum(prod(self.shapes[k]) for k in self.weights)

    def axes(self, name: str) -> list[tuple]:
        """Structure of every axis of a weight: segments of space ids."""
        return self.spaces.axes[self.aliases.get(name, name)]

    def group_axes(self, g: int) -> list[tuple[str, int]]:
        """(tensor, axis) pairs that carry group ``g``."""
        sp = self.groups[g].space
        return [(name, k) for name in self.weights for k, s in enumerate(self.spaces.axes[name])
                if any(sp in seg for seg in s)]

    def __repr__(self) -> str:
        return (f"WeightSpace({len(self.weights)} tensors, {self.num_params:,} weights, "
                f"{len(self.groups)} neuron groups, {len(self.op_graph)} ops)")

    def summary(self) -> str:
        lines = [repr(self), self.op_graph.summary()]
        for g in self.groups:
            sym = ", ".join(x for x, ok in (("scaling", g.scaling), ("sign", g.sign)) if ok)
            lines.append(f"  group {g.id:3d}: {g.size:5d} neurons  {g.name}" + (f"  [{sym}]" if sym else ""))
        if self.spaces.warnings:
            lines.append("unsupported ops (axes through them fixed):")
            lines.extend("  " + w for w in self.spaces.warnings)
        return "\n".join(lines)

    # -- checks ----------------------------------------------------------------------------
    def check(self, state_dict: Mapping[str, torch.Tensor], *, finite: bool = False,
              batched: bool = False) -> None:
        """Raise :class:`StateDictError` naming the first entry that does not match."""
        missing = [k for k in self.weights + self.extras if k not in state_dict]
        if missing:
            raise StateDictError(
                f"state dict is missing {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; it must hold every entry of model.state_dict() for this architecture")
        unexpected = [k for k in state_dict if k not in self.shapes]
        if unexpected:
            raise StateDictError(f"state dict has {unexpected[0]!r}, which this architecture does not have")
        for k in self.weights + self.extras:
            v = state_dict[k]
            shape = tuple(v.shape[1:]) if batched else tuple(v.shape)
            if shape != self.shapes[k]:
                raise StateDictError(f"{k!r} has shape {tuple(v.shape)}, expected "
                                     f"{('[batch] + ' if batched else '')}{self.shapes[k]}")
            if finite and v.is_floating_point() and not torch.isfinite(v).all():
                raise StateDictError(f"{k!r} has non-finite values (nan or inf)")

    # -- permutations ------------------------------------------------------------------------
    def sample_permutation(self, generator: torch.Generator | None = None) -> Permutation:
        """A uniformly random permutation of every neuron group."""
        return Permutation(tuple(torch.randperm(g.size, generator=generator) for g in self.groups))

    def identity_permutation(self) -> Permutation:
        return Permutation(tuple(torch.arange(g.size) for g in self.groups))

    def _by_space(self, per_group: Mapping[int, torch.Tensor] | tuple) -> dict[int, torch.Tensor]:
        items = per_group.items() if isinstance(per_group, Mapping) else enumerate(per_group)
        return {self.groups[g].space: v for g, v in items}

    def permute(self, state_dict: Mapping[str, torch.Tensor], perm: Permutation, *,
                batched: bool = False) -> dict[str, torch.Tensor]:
        """Apply ``perm`` to every axis carrying a group. With ``batched=True`` the
        tensors carry a leading batch axis (stacked checkpoints)."""
        if len(perm) != len(self.groups):
            raise ValueError(f"permutation has {len(perm)} groups, this space has {len(self.groups)}")
        by_space = self._by_space(perm.perms)
        out: dict[str, torch.Tensor] = {}
        for k, v in state_dict.items():
            canon = self.aliases.get(k, k)
            if canon not in self.spaces.axes or canon not in self.weights:
                out[k] = v
                continue
            for axis, s in enumerate(self.spaces.axes[canon]):
                idx = index_map(s, self.spaces.sizes, by_space)
                if idx is not None:
                    v = v.index_select(axis + int(batched), idx.to(v.device))
            out[k] = v
        return out

    # -- scalings and sign flips -------------------------------------------------------------------
    def _symmetric_groups(self, kind: str) -> list[Group]:
        return [g for g in self.groups if (g.scaling if kind == "scale" else g.sign)]

    def _refuse(self, kind: str) -> None:
        what = "positive-scaling (ReLU-like)" if kind == "scale" else "sign-flip (odd activation)"
        why = self.spaces.no_scale if kind == "scale" else self.spaces.no_sign
        reasons = sorted({why.get(g.space, "?") for g in self.groups})[:3]
        raise ValueError(
            f"this weight space has no {what} symmetry: every neuron group passes through an "
            f"op that breaks it, e.g. {'; '.join(reasons) or 'there are no neuron groups'}")

    def sample_scaling(self, generator: torch.Generator | None = None, low: float = 0.5,
                       high: float = 2.0) -> Scaling:
        """Log-uniform positive factors in [low, high] for every group that admits them."""
        groups = self._symmetric_groups("scale")
        if not groups:
            self._refuse("scale")
        if not 0 < low <= high:
            raise ValueError("scaling needs 0 < low <= high")
        lo, hi = torch.log(torch.tensor(low)), torch.log(torch.tensor(high))
        return Scaling({g.id: torch.exp(lo + (hi - lo) * torch.rand(g.size, generator=generator))
                        for g in groups}, "scale")

    def sample_sign_flip(self, generator: torch.Generator | None = None) -> Scaling:
        """Random ±1 for every group whose neurons pass only through odd functions."""
        groups = self._symmetric_groups("sign")
        if not groups:
            self._refuse("sign")
        return Scaling({g.id: torch.randint(0, 2, (g.size,), generator=generator).float() * 2 - 1
                        for g in groups}, "sign")

    def scale(self, state_dict: Mapping[str, torch.Tensor], scaling: Scaling, *,
              batched: bool = False) -> dict[str, torch.Tensor]:
        """Apply per-neuron factors: outgoing side (rows, bias) times f, incoming side
        (columns of the next layer) divided by f."""
        allowed = {g.id for g in self._symmetric_groups(scaling.kind)}
        bad = [g for g in scaling.factors if g not in allowed]
        if bad:
            g = self.groups[bad[0]]
            why = (self.spaces.no_scale if scaling.kind == "scale" else self.spaces.no_sign).get(g.space, "?")
            raise ValueError(f"group {g.id} ({g.name}) has no {scaling.kind} symmetry: it passes through {why}")
        if scaling.kind == "scale" and any((f <= 0).any() for f in scaling.factors.values()):
            raise ValueError("positive scaling needs factors > 0")
        by_space = self._by_space(scaling.factors)
        out: dict[str, torch.Tensor] = {}
        for k, v in state_dict.items():
            canon = self.aliases.get(k, k)
            if canon not in self.weights:
                out[k] = v
                continue
            roles = self.spaces.scale_roles.get(canon, {})
            m = None
            for axis, s in enumerate(self.spaces.axes[canon]):
                f = value_map(s, self.spaces.sizes, by_space)
                if f is None:
                    continue
                if roles.get(axis) == "in":
                    f = 1.0 / f
                shape = [1] * v.dim()
                shape[axis + int(batched)] = -1
                f = f.reshape(shape)
                m = f if m is None else m * f
            out[k] = v if m is None else (v.double() * m.to(v.device)).to(v.dtype)
        return out

    # -- parameter graphs (see metanet.graph) ----------------------------------------------------------
    def layout(self, layout: str = "compact", width: int | None = None):
        from ..graph.layout import GraphLayout
        key = (layout, width)
        if key not in self._layouts:
            self._layouts[key] = GraphLayout(self, layout, width)
        return self._layouts[key]

    def graph(self, state_dict: Mapping[str, torch.Tensor], layout: str = "compact", *,
              width: int | None = None, check: bool = True, copy: bool = False, out=None):
        """The neuron-level parameter graph of one checkpoint (a PyG ``Data``).

        Its structure tensors are shared with every graph of this architecture (read-only)
        unless ``copy=True``. ``out=g`` refills a graph made earlier by this space (same
        layout) instead of allocating: the cheap way to convert checkpoints in a loop."""
        return self.layout(layout, width).graph(state_dict, check=check, copy=copy, out=out)

    def graphs(self, stacked: Mapping[str, torch.Tensor], layout: str = "compact", *,
               width: int | None = None, check: bool = True):
        """Parameter graphs of a stack of checkpoints (leading batch axis) as one PyG ``Batch``."""
        return self.layout(layout, width).graphs(stacked, check=check)

    def state_dict(self, graph) -> dict[str, torch.Tensor]:
        """Exact inverse of :meth:`graph`."""
        return self.layout(graph.layout, int(graph.width)).state_dict(graph)

    def state_dicts(self, batch) -> dict[str, torch.Tensor]:
        """Exact inverse of :meth:`graphs`: stacked tensors with a leading batch axis."""
        return self.layout(batch.layout if isinstance(batch.layout, str) else batch.layout[0],
                           int(batch.width.reshape(-1)[0])).state_dicts(batch)

    def node_index(self, perm: Permutation, layout: str = "compact", width: int | None = None) -> torch.Tensor:
        """For the graph of ``permute(sd, perm)``: the node of ``graph(sd)`` each node came from."""
        return self.layout(layout, width).node_index(perm)

    # -- behavioural check -------------------------------------------------------------------
    def verify(self, model: nn.Module, example_inputs: Any, *, n: int = 5, shapes=None,
               rtol: float = 1e-5, generator: torch.Generator | None = None,
               kwargs: dict | None = None):
        """Check that every symmetry this space offers keeps ``model``'s outputs, on the
        example inputs and on inputs of other shapes; returns a report or raises
        :class:`~metanet.space.verify.SymmetryError` naming the group that fails.
        See :func:`metanet.space.verify.verify`."""
        from .verify import verify
        return verify(self, model, example_inputs, n=n, shapes=shapes, rtol=rtol,
                      generator=generator, kwargs=kwargs)
