"""WeightSpace: the parameters of one architecture and the neuron symmetries that
leave its function unchanged.

Memory. :meth:`WeightSpace.of` caches weight spaces per architecture (the trace and the
neuron groups: small), bounded by their estimated memory (:data:`CACHE_BYTES`; an entry
is estimated at 8x its pickled size: a GPT-2 space pickles to 108 kB and takes 0.7 MB).
Graph layouts (the structure tensors every graph of an architecture shares: the big
part) are not cached with them. A weight space holds its layouts weakly; a graph from
:meth:`WeightSpace.graph` holds the layout whose tensors it shares, and the cache keeps
the most recently used layouts alive (at most :data:`RECENT_LAYOUTS`, and beyond the
most recent one only while they total at most :data:`RECENT_LAYOUT_BYTES`). So a layout
goes once no graph uses it and newer ones have replaced it, and converting many
architectures one after another keeps memory flat. ``state_dict(g)`` of a graph that
does not hold its layout (``copy=True``, unpickled) rebuilds the layout if it was let go.
"""
from __future__ import annotations

import functools
import hashlib
import operator
import pickle
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from math import prod
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..trace import OpGraph, trace
from .propagate import Propagator, Spaces


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
    """One permutation per neuron group: ``perms[g][j]`` is the old index of new neuron j.

    For a stack of networks (``permute(..., batched=True)``) each ``perms[g]`` is either
    ``[size]`` (the same permutation for every network) or ``[B, size]`` (one per
    network); :meth:`stack` makes the latter from a list of permutations."""

    perms: tuple[torch.Tensor, ...]

    def __getitem__(self, g: int) -> torch.Tensor:
        return self.perms[g]

    def __len__(self) -> int:
        return len(self.perms)

    @property
    def batch_size(self) -> int | None:
        """B when some group holds one permutation per network ([B, size]), else None."""
        return next((int(p.shape[0]) for p in self.perms if p.dim() == 2), None)

    def inverse(self) -> "Permutation":
        return Permutation(tuple(torch.argsort(p, dim=-1) for p in self.perms))

    @classmethod
    def stack(cls, perms: Sequence["Permutation"]) -> "Permutation":
        """One permutation per network, ``perms[b]`` for network b, as ``[B, size]`` tensors."""
        perms = list(perms)
        if not perms or not all(isinstance(p, Permutation) for p in perms):
            raise TypeError("Permutation.stack takes a non-empty list of Permutations, got "
                            + (", ".join(sorted({type(p).__name__ for p in perms})) or "an empty list"))
        if any(p.batch_size is not None for p in perms):
            raise ValueError("Permutation.stack takes one permutation per network; some already hold a batch")
        sizes = {tuple(int(t.shape[-1]) for t in p.perms) for p in perms}
        if len(sizes) > 1:
            raise ValueError(f"cannot stack permutations of different weight spaces (group sizes {sorted(sizes)[:2]})")
        return cls(tuple(torch.stack(ts) for ts in zip(*(p.perms for p in perms))))


@dataclass(frozen=True)
class Scaling:
    """Per-neuron factors for some groups: ``kind`` is "scale" (positive factors,
    ReLU-like layers) or "sign" (±1, odd activations). Like a :class:`Permutation`, each
    ``factors[g]`` is ``[size]`` or, for a stack of networks, ``[B, size]``."""

    factors: dict[int, torch.Tensor]
    kind: str

    @classmethod
    def stack(cls, scalings: Sequence["Scaling"]) -> "Scaling":
        """One scaling per network, ``scalings[b]`` for network b, as ``[B, size]`` tensors."""
        scalings = list(scalings)
        if not scalings or not all(isinstance(s, Scaling) for s in scalings):
            raise TypeError("Scaling.stack takes a non-empty list of Scalings")
        kinds = {s.kind for s in scalings}
        groups = {tuple(sorted(s.factors)) for s in scalings}
        if len(kinds) > 1 or len(groups) > 1:
            raise ValueError("Scaling.stack needs scalings of one kind over the same groups")
        return cls({g: torch.stack([s.factors[g] for s in scalings]) for g in scalings[0].factors},
                   scalings[0].kind)


# -- the architecture cache ------------------------------------------------------------------
CACHE_BYTES = 256 * 2 ** 20   # bound on the cached weight spaces' estimated memory
MEMORY_PER_PICKLED_BYTE = 8   # Python objects take ~6.4x their pickled size (measured: GPT-2)
RECENT_LAYOUTS = 2            # graph layouts kept alive by the cache, most recently used ...
RECENT_LAYOUT_BYTES = 256 * 2 ** 20   # ... and past the most recent one, only up to this size

_CACHE: "OrderedDict[str, WeightSpace]" = OrderedDict()   # architecture key -> space
_CACHE_SIZES: dict[str, int] = {}                        # architecture key -> estimated bytes
_RECENT: "list[tuple[Any, int]]" = []   # (layout, its tensor bytes), most recent first


def clear_cache() -> None:
    """Forget every cached weight space and let go of every layout that no graph holds."""
    _CACHE.clear()
    _CACHE_SIZES.clear()
    _RECENT.clear()


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct storages of the tensors an object holds in its attributes,
    directly or in (nested) dicts."""
    storages: dict[int, int] = {}

    def walk(x: Any, depth: int) -> None:
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
        elif isinstance(x, dict) and depth:
            for v in x.values():
                walk(v, depth - 1)

    for v in vars(obj).values():
        walk(v, 3)
    return sum(storages.values())


def cache_info() -> dict:
    """What the cache holds: ``spaces`` (cached weight spaces), ``bytes`` (their estimated
    size), ``layouts`` (graph layouts still alive for cached spaces or recently used) and
    ``layout_bytes`` (the tensors those layouts hold)."""
    layouts = {id(lay): lay for lay, _ in _RECENT}
    for ws in _CACHE.values():
        for lay in list(ws._layouts.values()):
            layouts[id(lay)] = lay
    return {"spaces": len(_CACHE), "bytes": sum(_CACHE_SIZES.values()),
            "layouts": len(layouts), "layout_bytes": sum(_tensor_bytes(x) for x in layouts.values())}


def _remember(ws: "WeightSpace", key: str) -> None:
    size = MEMORY_PER_PICKLED_BYTE * len(pickle.dumps(ws, protocol=pickle.HIGHEST_PROTOCOL))
    if size > CACHE_BYTES:
        return  # larger than the whole cache: not kept
    _CACHE[key], _CACHE_SIZES[key] = ws, size
    total = sum(_CACHE_SIZES.values())
    while total > CACHE_BYTES:
        old, _ = _CACHE.popitem(last=False)
        total -= _CACHE_SIZES.pop(old)


def _keep_recent(layout) -> None:
    if _RECENT and _RECENT[0][0] is layout:
        return
    for i, (lay, _) in enumerate(_RECENT):
        if lay is layout:
            entry = _RECENT.pop(i)
            break
    else:
        entry = (layout, _tensor_bytes(layout))
    _RECENT.insert(0, entry)
    del _RECENT[RECENT_LAYOUTS:]
    while len(_RECENT) > 1 and sum(b for _, b in _RECENT) > RECENT_LAYOUT_BYTES:
        _RECENT.pop()


class _KeepAlive:
    """Keeps an object alive as long as its holder; pickles to nothing (a graph sent to a
    DataLoader worker does not carry its layout along)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any = None):
        self.obj = obj

    def __reduce__(self):
        return (_KeepAlive, ())


# -- helpers for entry points -----------------------------------------------------------------
def _with_metadata(out: Mapping[str, torch.Tensor], *sources: Any) -> "OrderedDict[str, torch.Tensor]":
    """``out`` as an OrderedDict carrying PyTorch's ``_metadata`` (each module's state-dict
    version, which ``load_state_dict`` passes to modules that check it, e.g. BatchNorm)
    taken from the first source that has one: a state dict, or a :class:`WeightSpace`
    (the traced model's)."""
    res = out if isinstance(out, OrderedDict) else OrderedDict(out)
    for src in sources:
        meta = getattr(src, "_metadata", None)
        if meta is not None:
            res._metadata = OrderedDict((k, dict(v)) for k, v in meta.items())
            break
    return res


def _require_state_dict(obj: Any, method: str, batched: bool) -> None:
    """A clear TypeError for things that are not a state dict."""
    if isinstance(obj, Mapping):
        return
    what = "one stacked state dict {name: Tensor[B, ...]}" if batched else "a state dict {name: Tensor}"
    if isinstance(obj, nn.Module):
        raise TypeError(f"{method}() takes {what}, got the module {type(obj).__name__}: "
                        f"pass model.state_dict()")
    if isinstance(obj, (list, tuple)):
        if batched:
            raise TypeError(f"{method}() takes {what}, got a {type(obj).__name__} of {len(obj)} items: "
                            f"stack state dicts with {{k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}}")
        raise TypeError(f"{method}() takes {what}, got a {type(obj).__name__} of {len(obj)} items: "
                        f"pass one state dict, or stack them and use batched=True / graphs()")
    hint = ""
    if hasattr(obj, "edge_attr"):
        hint = ": for a parameter graph, take ws.state_dict(graph) first"
    raise TypeError(f"{method}() takes {what}, got {type(obj).__name__}{hint}")


def _require_graph(obj: Any, method: str, maker: str) -> None:
    """A clear TypeError for things that are not a parameter graph."""
    if isinstance(obj, Mapping):
        raise TypeError(f"{method}() takes a parameter graph made by ws.{maker}(), got a state dict "
                        f"({type(obj).__name__}): it needs no conversion")
    if not all(hasattr(obj, a) for a in ("edge_attr", "extras", "layout", "width")):
        what = f"the module {type(obj).__name__}" if isinstance(obj, nn.Module) else type(obj).__name__
        raise TypeError(f"{method}() takes a parameter graph made by ws.{maker}(), got {what}")


def _index_map(s: tuple, sizes, perms: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """Index vector along an axis of structure ``s`` (new[j] = old[idx[j]]) for per-atom
    permutations of shape [n] or [B, n]; [axis] or [B, axis]. None where nothing moves."""
    if not any(a in perms for seg in s for a in seg):
        return None
    pieces, offset = [], 0
    for seg in s:
        idx = torch.zeros(1, dtype=torch.long)
        for a in seg:
            p = perms.get(a)
            p = torch.arange(sizes[a]) if p is None else p
            idx = (idx.unsqueeze(-1) * sizes[a] + p.unsqueeze(-2)).flatten(-2)
        pieces.append(idx + offset)
        offset += prod(sizes[a] for a in seg)
    return torch.cat(_common_batch(pieces), dim=-1)


def _factor_map(s: tuple, sizes, values: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
    """Per-index float64 factors along an axis of structure ``s`` for per-atom factors of
    shape [n] or [B, n]; [axis] or [B, axis]. None where nothing is scaled."""
    if not any(a in values for seg in s for a in seg):
        return None
    pieces = []
    for seg in s:
        m = torch.ones(1, dtype=torch.float64)
        for a in seg:
            v = values.get(a)
            v = torch.ones(sizes[a], dtype=torch.float64) if v is None else v
            m = (m.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2)
        pieces.append(m)
    return torch.cat(_common_batch(pieces), dim=-1)


def _common_batch(pieces: list[torch.Tensor]) -> list[torch.Tensor]:
    """Give [n] pieces the batch axis of any [B, n] piece, so that they concatenate."""
    B = next((p.shape[0] for p in pieces if p.dim() == 2), None)
    return pieces if B is None else [p.expand(B, -1) if p.dim() == 1 else p for p in pieces]


def _take(v: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``v`` reordered along ``dim`` by ``idx``: [n] for every network, or [B, n] (one row per
    network of a stack whose batch axis is 0). Exact in every dtype."""
    if idx.dim() == 1:
        return v.index_select(dim, idx)
    shape = [1] * v.dim()
    shape[0], shape[dim] = idx.shape[0], idx.shape[1]
    return v.gather(dim, idx.view(shape).expand(v.shape))


def _spec(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), str(x.dtype))
    if isinstance(x, (list, tuple)):
        return tuple(_spec(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _spec(v)) for k, v in x.items()))
    return repr(x)


_PLAIN = (str, int, float, complex, bool, type(None))
_MODULE_SLOTS = frozenset(vars(nn.Module())) | {"training"}


def _cell_contents(cell) -> Any:
    """A closure cell's value; a cell not yet filled (a name bound after the function was
    made) reads as its own marker."""
    try:
        return cell.cell_contents
    except ValueError:
        return "<empty cell>"


def _describe(v: Any, depth: int = 0) -> str | None:
    """What of an attribute's value can change the traced graph, as text; ``None`` for
    values that the module tree and the state dict already describe (submodules,
    parameters, buffers)."""
    if isinstance(v, _PLAIN):
        return repr(v)
    if isinstance(v, (nn.Module, nn.Parameter)):
        return None
    if isinstance(v, torch.Tensor):
        if v.is_meta or v.numel() > 4096:
            return f"T{tuple(v.shape)}{v.dtype}"
        data = v.detach().cpu().contiguous()
        return f"T{tuple(v.shape)}{v.dtype}:{hashlib.sha1(data.view(torch.uint8).numpy().tobytes()).hexdigest()}" \
            if data.numel() else f"T{tuple(v.shape)}{v.dtype}"
    if isinstance(v, (tuple, list, set, frozenset)):
        items = sorted(map(str, v)) if isinstance(v, (set, frozenset)) else v
        return f"{type(v).__name__}({','.join(str(_describe(e, depth + 1)) for e in items)})"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k!r}:{_describe(e, depth + 1)}" for k, e in v.items()) + "}"
    if isinstance(v, functools.partial):
        return (f"partial({_describe(v.func, depth + 1)},{_describe(v.args, depth + 1)},"
                f"{_describe(v.keywords, depth + 1)})")
    if callable(v) and hasattr(v, "__qualname__"):
        owner = getattr(v, "__self__", None)
        bound = "" if owner is None or isinstance(owner, type(torch)) else f"@{type(owner).__qualname__}"
        # a closure or a default argument can choose what the function computes
        cells = tuple(x for x in map(_cell_contents, getattr(v, "__closure__", None) or ()) if x is not v)
        defaults = getattr(v, "__defaults__", None) or ()
        state = f"({_describe(cells, depth + 1)},{_describe(defaults, depth + 1)})" if cells or defaults else ""
        return f"{getattr(v, '__module__', None)}.{v.__qualname__}{bound}{state}"
    name = f"{type(v).__module__}.{type(v).__qualname__}"
    if depth < 2 and hasattr(v, "__dict__"):
        return name + "{" + ",".join(f"{k}:{_describe(e, depth + 1)}" for k, e in sorted(vars(v).items())) + "}"
    try:
        text = repr(v)
    except Exception:  # a repr that fails says nothing reliable: the type must do
        return name
    return name if " at 0x" in text else f"{name}:{text}"


def _forward_state(model: nn.Module) -> str:
    """Every module's attributes beyond its submodules and tensors in the state dict
    (plain options such as ``act="tanh"``, callables such as ``self.fn = torch.tanh``,
    config objects, hooks): forward-time choices that ``repr(model)`` does not show but
    the trace, and so the symmetries, depend on."""
    parts = []
    for path, m in model.named_modules():
        for k, v in vars(m).items():
            if k in _MODULE_SLOTS:
                continue
            d = _describe(v)
            if d is not None:
                parts.append(f"{path}.{k}={d}")
        for slot in ("_forward_hooks", "_forward_pre_hooks"):
            hooks = getattr(m, slot, None)
            if hooks:
                parts.append(f"{path}.{slot}=" + ",".join(str(_describe(h)) for h in hooks.values()))
    return ";".join(parts)


def architecture_key(model: nn.Module, example_inputs: Any, kwargs: dict | None = None) -> str:
    """A key identifying an architecture: module tree, every module's other attributes
    (forward-time options, callables, hooks), state-dict shapes, input specs. Two models
    with one key trace to one graph unless their forward reads state outside the model
    (a global flag): pass ``cache=False`` to :meth:`WeightSpace.of` for those."""
    h = hashlib.sha1()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    h.update(repr(model).encode())
    h.update(_forward_state(model).encode())
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
                 spaces: Spaces, metadata: Mapping | None = None):
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
        self._metadata = metadata       # module versions of the traced model's state dict
        self._layouts = weakref.WeakValueDictionary()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def of(cls, model: nn.Module, example_inputs: Any, kwargs: dict | None = None, *,
           cache: bool = True) -> "WeightSpace":
        """Trace ``model`` on ``example_inputs`` and find its neuron groups.

        Cached per architecture (module tree, parameter shapes, input shapes): many
        checkpoints of one architecture are traced once."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"WeightSpace.of() takes a torch.nn.Module and example inputs, got "
                            f"{type(model).__name__}")
        key = architecture_key(model, example_inputs, kwargs) if cache else None
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        graph = trace(model, example_inputs, kwargs)
        ws = cls.from_op_graph(graph, model.state_dict(keep_vars=True))
        if key is not None:
            _remember(ws, key)
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
        metadata = getattr(state_dict, "_metadata", None)
        return cls(graph, keys, shapes, dtypes, aliases, weights, spaces,
                   None if metadata is None else OrderedDict((k, dict(v)) for k, v in metadata.items()))

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_layouts"]   # layouts are rebuilt where needed
        return state

    def __setstate__(self, state):
        state.setdefault("_metadata", None)
        state.pop("_layouts", None)
        self.__dict__.update(state)
        self._layouts = weakref.WeakValueDictionary()

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
        """Raise :class:`StateDictError` naming the first entry that does not match: a
        missing or unknown key, a value that is not a tensor, a wrong shape; with
        ``batched=True`` (tensors stacked along a new first axis) also a ragged batch."""
        _require_state_dict(state_dict, "check", batched)
        missing = [k for k in self.weights + self.extras if k not in state_dict]
        if missing:
            raise StateDictError(
                f"state dict is missing {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                + "; it must hold every entry of model.state_dict() for this architecture")
        unexpected = [k for k in state_dict if k not in self.shapes]
        if unexpected:
            raise StateDictError(f"state dict has {unexpected[0]!r}, which this architecture does not have"
                                 + (f" (and {len(unexpected) - 1} more unknown keys)" if len(unexpected) > 1 else ""))
        first = None
        for k, v in state_dict.items():
            if not isinstance(v, torch.Tensor):
                raise StateDictError(f"{k!r} is a {type(v).__name__}, expected a torch.Tensor")
            want, shape = self.shapes[k], tuple(v.shape)
            if not batched:
                if shape != want:
                    stacked = len(shape) == len(want) + 1 and shape[1:] == want
                    raise StateDictError(f"{k!r} has shape {shape}, expected {want}"
                                         + (": that is a stack of checkpoints, pass batched=True" if stacked else ""))
            elif not shape or shape[1:] != want:
                raise StateDictError(f"{k!r} has shape {shape}, expected [batch, *{want}]"
                                     + (": that is one checkpoint, stack checkpoints along a new first axis "
                                        "(or pass batched=False)" if shape == want else ""))
            elif first is None:
                first = (k, shape[0])
            elif shape[0] != first[1]:
                raise StateDictError(f"ragged batch: {k!r} stacks {shape[0]} checkpoints, {first[0]!r} "
                                     f"stacks {first[1]}; every entry needs the same batch size")
            if finite and v.is_floating_point() and not torch.isfinite(v).all():
                raise StateDictError(f"{k!r} has non-finite values (nan or inf)")

    @staticmethod
    def _batch_size(stacked: Mapping[str, torch.Tensor]) -> int:
        return int(next(iter(stacked.values())).shape[0]) if stacked else 0

    # -- permutations ------------------------------------------------------------------------
    def sample_permutation(self, generator: torch.Generator | None = None, *,
                           batch: int | None = None) -> Permutation:
        """A uniformly random permutation of every neuron group; with ``batch=B``, one for
        each of B networks (``[B, size]`` tensors, for ``permute(..., batched=True)``)."""
        if batch is None:
            return Permutation(tuple(torch.randperm(g.size, generator=generator) for g in self.groups))
        return Permutation(tuple(torch.rand(batch, g.size, generator=generator).argsort(-1)
                                 for g in self.groups))

    def identity_permutation(self) -> Permutation:
        return Permutation(tuple(torch.arange(g.size) for g in self.groups))

    def _by_space(self, per_group: Mapping[int, torch.Tensor] | tuple) -> dict[int, torch.Tensor]:
        items = per_group.items() if isinstance(per_group, Mapping) else enumerate(per_group)
        return {self.groups[g].space: v for g, v in items}

    def _per_network(self, what: str, g: Group, t: Any, batch: int | None) -> torch.Tensor:
        """Check one group's tensor of a permutation or scaling: [size], or [B, size] for a
        stack of B networks. Returns it on the CPU."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} of group {g.id} ({g.name}) is a {type(t).__name__}, expected a tensor")
        if t.dim() == 2 and batch is None:
            raise ValueError(f"{what} of group {g.id} ({g.name}) holds {t.shape[0]} networks ({tuple(t.shape)}): "
                             f"pass a stacked state dict with batched=True")
        if t.dim() == 2 and t.shape[0] != batch:
            raise ValueError(f"{what} of group {g.id} ({g.name}) holds {t.shape[0]} networks, "
                             f"the stacked state dict {batch}")
        if t.dim() not in (1, 2) or t.shape[-1] != g.size:
            raise ValueError(f"{what} of group {g.id} ({g.name}) has shape {tuple(t.shape)}, expected "
                             f"[{g.size}]" + (f" or [{batch}, {g.size}]" if batch is not None else ""))
        return t.cpu()

    def _permutation(self, perm: Any, batch: int | None, method: str = "permute") -> list[torch.Tensor]:
        if isinstance(perm, (list, tuple)) and perm and all(isinstance(p, Permutation) for p in perm):
            if batch is None:
                raise TypeError(f"{method}() got a list of {len(perm)} Permutations (one per network): "
                                f"that needs a stacked state dict and batched=True")
            if len(perm) != batch:
                raise ValueError(f"{method}() got {len(perm)} Permutations for a stack of {batch} networks")
            perm = Permutation.stack(perm)
        if isinstance(perm, Scaling):
            raise TypeError(f"{method}() takes a Permutation, got a Scaling ({perm.kind}): apply it "
                            f"with ws.scale(state_dict, scaling)")
        if not isinstance(perm, Permutation):
            raise TypeError(f"{method}() takes a Permutation (e.g. ws.sample_permutation()), got {type(perm).__name__}")
        if len(perm) != len(self.groups):
            raise ValueError(f"permutation has {len(perm)} groups, this space has {len(self.groups)}: "
                             f"was it made for another weight space?")
        out = []
        for g, p in zip(self.groups, perm.perms):
            p = self._per_network("permutation", g, p, batch)
            if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
                raise TypeError(f"permutation of group {g.id} ({g.name}) has dtype {p.dtype}, expected integers")
            if not torch.equal(p.sort(-1).values, torch.arange(g.size).expand_as(p)):
                raise ValueError(f"permutation of group {g.id} ({g.name}) is not a permutation of "
                                 f"0..{g.size - 1} (repeated or out-of-range indices)")
            out.append(p.long())
        return out

    def permute(self, state_dict: Mapping[str, torch.Tensor], perm: Permutation | Sequence[Permutation], *,
                batched: bool = False) -> dict[str, torch.Tensor]:
        """Apply ``perm`` to every axis carrying a group (exact: values are only moved, and
        every tensor keeps its dtype and device).

        With ``batched=True`` the tensors carry a leading batch axis (stacked
        checkpoints) and ``perm`` is one :class:`Permutation` for every network, or one
        per network: a list of B Permutations or a Permutation of ``[B, size]`` tensors
        (``sample_permutation(batch=B)``, :meth:`Permutation.stack`). The state dict is
        checked like :meth:`graph` does; the result keeps its ``_metadata`` (module
        versions) and shares the tensors nothing moves with it."""
        _require_state_dict(state_dict, "permute", batched)
        self.check(state_dict, batched=batched)
        batch = self._batch_size(state_dict) if batched else None
        by_space = self._by_space(self._permutation(perm, batch))
        out: dict[str, torch.Tensor] = OrderedDict()
        for k, v in state_dict.items():
            canon = self.aliases.get(k, k)
            if canon in self._weight_set:
                for axis, s in enumerate(self.spaces.axes[canon]):
                    idx = _index_map(s, self.spaces.sizes, by_space)
                    if idx is not None:
                        v = _take(v, axis + int(batched), idx.to(v.device))
            out[k] = v
        return _with_metadata(out, state_dict, self)

    @property
    def _weight_set(self) -> set[str]:
        if "_weights_set" not in self.__dict__:
            self.__dict__["_weights_set"] = set(self.weights)
        return self.__dict__["_weights_set"]

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
                       high: float = 2.0, *, batch: int | None = None) -> Scaling:
        """Log-uniform positive factors in [low, high] for every group that admits them
        (``[B, size]`` factors with ``batch=B``)."""
        groups = self._symmetric_groups("scale")
        if not groups:
            self._refuse("scale")
        if not 0 < low <= high:
            raise ValueError("scaling needs 0 < low <= high")
        lo, hi = torch.log(torch.tensor(low)), torch.log(torch.tensor(high))
        lead = () if batch is None else (batch,)
        return Scaling({g.id: torch.exp(lo + (hi - lo) * torch.rand(*lead, g.size, generator=generator))
                        for g in groups}, "scale")

    def sample_sign_flip(self, generator: torch.Generator | None = None, *,
                         batch: int | None = None) -> Scaling:
        """Random ±1 for every group whose neurons pass only through odd functions
        (``[B, size]`` with ``batch=B``)."""
        groups = self._symmetric_groups("sign")
        if not groups:
            self._refuse("sign")
        lead = () if batch is None else (batch,)
        return Scaling({g.id: torch.randint(0, 2, (*lead, g.size), generator=generator).float() * 2 - 1
                        for g in groups}, "sign")

    def _scaling(self, scaling: Any, batch: int | None) -> dict[int, torch.Tensor]:
        if isinstance(scaling, (list, tuple)) and scaling and all(isinstance(s, Scaling) for s in scaling):
            if batch is None:
                raise TypeError(f"scale() got a list of {len(scaling)} Scalings (one per network): "
                                f"that needs a stacked state dict and batched=True")
            if len(scaling) != batch:
                raise ValueError(f"scale() got {len(scaling)} Scalings for a stack of {batch} networks")
            scaling = Scaling.stack(scaling)
        if isinstance(scaling, Permutation):
            raise TypeError("scale() takes a Scaling (ws.sample_scaling() or ws.sample_sign_flip()), "
                            "got a Permutation: apply it with ws.permute(state_dict, perm)")
        if not isinstance(scaling, Scaling):
            raise TypeError(f"scale() takes a Scaling (ws.sample_scaling() or ws.sample_sign_flip()), "
                            f"got {type(scaling).__name__}")
        if scaling.kind not in ("scale", "sign"):
            raise ValueError(f"Scaling.kind is 'scale' or 'sign', got {scaling.kind!r}")
        allowed = {g.id for g in self._symmetric_groups(scaling.kind)}
        out = {}
        for gid, f in scaling.factors.items():
            try:
                g = self.groups[operator.index(gid)]
            except (TypeError, IndexError):
                raise ValueError(f"scaling names group {gid!r}; this space has groups "
                                 f"0..{len(self.groups) - 1}") from None
            if g.id not in allowed:
                why = (self.spaces.no_scale if scaling.kind == "scale" else self.spaces.no_sign).get(g.space, "?")
                raise ValueError(f"group {g.id} ({g.name}) has no {scaling.kind} symmetry: it passes through {why}")
            f = self._per_network("scaling", g, f, batch).double()
            if scaling.kind == "scale" and not (torch.isfinite(f) & (f > 0)).all():
                raise ValueError(f"scaling of group {g.id} ({g.name}): positive scaling needs finite factors > 0")
            if scaling.kind == "sign" and not (f.abs() == 1).all():
                raise ValueError(f"sign flip of group {g.id} ({g.name}): factors must be +1 or -1")
            out[g.id] = f
        return out

    def scale(self, state_dict: Mapping[str, torch.Tensor], scaling: Scaling | Sequence[Scaling], *,
              batched: bool = False) -> dict[str, torch.Tensor]:
        """Apply per-neuron factors: outgoing side (rows, bias) times f, incoming side
        (columns of the next layer) divided by f.

        Each tensor keeps its dtype: the product is computed in float64 and rounded once
        (exact for sign flips). With ``batched=True`` the tensors carry a leading batch
        axis and ``scaling`` is one :class:`Scaling` for every network or one per network
        (a list, or ``[B, size]`` factors). Checked and ``_metadata`` kept as in :meth:`permute`."""
        _require_state_dict(state_dict, "scale", batched)
        self.check(state_dict, batched=batched)
        batch = self._batch_size(state_dict) if batched else None
        by_space = self._by_space(self._scaling(scaling, batch))
        out: dict[str, torch.Tensor] = OrderedDict()
        for k, v in state_dict.items():
            canon = self.aliases.get(k, k)
            if canon not in self._weight_set:
                out[k] = v
                continue
            roles = self.spaces.scale_roles.get(canon, {})
            m = None
            for axis, s in enumerate(self.spaces.axes[canon]):
                f = _factor_map(s, self.spaces.sizes, by_space)
                if f is None or roles.get(axis) == "none":   # e.g. a gain multiplying a scaled stream
                    continue
                if roles.get(axis) == "in":
                    f = 1.0 / f
                shape = [1] * v.dim()
                if f.dim() == 2:
                    shape[0] = f.shape[0]
                shape[axis + int(batched)] = f.shape[-1]
                f = f.reshape(shape)
                m = f if m is None else m * f
            if m is not None and not v.is_floating_point():
                raise StateDictError(f"{k!r} has dtype {v.dtype}: scaling needs floating-point weights "
                                     f"(the traced model's is {self.dtypes[k]})")
            out[k] = v if m is None else (v.double() * m.to(v.device)).to(v.dtype)
        return _with_metadata(out, state_dict, self)

    # -- parameter graphs (see metanet.graph) ----------------------------------------------------------
    def layout(self, layout: str = "compact", width: int | None = None):
        """The :class:`~metanet.graph.layout.GraphLayout` of this space (built on first use,
        held weakly: see the module docstring)."""
        from ..graph.layout import GraphLayout
        key = (layout, 1 if layout == "param" else width)
        lay = self._layouts.get(key)
        if lay is None:
            lay = GraphLayout(self, layout, width)
            self._layouts[key] = lay
            self._layouts[(layout, lay.width)] = lay   # the same layout, asked for by its width
        _keep_recent(lay)
        return lay

    def graph(self, state_dict: Mapping[str, torch.Tensor], layout: str = "compact", *,
              width: int | None = None, check: bool = True, copy: bool = False, out=None):
        """The neuron-level parameter graph of one checkpoint (a PyG ``Data``).

        Its structure tensors are shared with every graph of this architecture (read-only)
        unless ``copy=True``. ``out=g`` refills a graph made earlier by this space (same
        layout) instead of allocating: the cheap way to convert checkpoints in a loop."""
        _require_state_dict(state_dict, "graph", False)
        lay = self.layout(layout, width)
        g = lay.graph(state_dict, check=check, copy=copy, out=out)
        if not copy:   # it shares the layout's structure tensors: keep the layout with them
            g._metanet_layout = _KeepAlive(lay)
        return g

    def graphs(self, stacked: Mapping[str, torch.Tensor], layout: str = "compact", *,
               width: int | None = None, check: bool = True):
        """Parameter graphs of a stack of checkpoints (``{name: Tensor[B, ...]}``, one
        leading batch axis) as one PyG ``Batch``."""
        _require_state_dict(stacked, "graphs", True)
        return self.layout(layout, width).graphs(stacked, check=check)

    def state_dict(self, graph) -> dict[str, torch.Tensor]:
        """Exact inverse of :meth:`graph`."""
        _require_graph(graph, "state_dict", "graph")
        n = getattr(graph, "num_graphs", 1)
        if n != 1:
            raise TypeError(f"state_dict() takes one graph, got a batch of {n}: use state_dicts()")
        return self.layout(graph.layout, int(graph.width)).state_dict(graph)

    def state_dicts(self, batch) -> dict[str, torch.Tensor]:
        """Exact inverse of :meth:`graphs`: stacked tensors with a leading batch axis."""
        _require_graph(batch, "state_dicts", "graphs")
        return self.layout(batch.layout if isinstance(batch.layout, str) else batch.layout[0],
                           int(batch.width.reshape(-1)[0])).state_dicts(batch)

    def node_index(self, perm: Permutation, layout: str = "compact", width: int | None = None) -> torch.Tensor:
        """For the graph of ``permute(sd, perm)``: the node of ``graph(sd)`` each node came from."""
        perm = Permutation(tuple(self._permutation(perm, None, "node_index")))
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

    # -- pruning -------------------------------------------------------------------------------
    def prune(self, model: nn.Module, keep: Mapping[int, Any], example_inputs: Any = None, *,
              kwargs: dict | None = None) -> nn.Module:
        """A copy of ``model`` keeping neurons ``keep[g]`` (old indices) of each group ``g``
        given, with its modules rebuilt at their new sizes; ``model`` is not modified.
        See :func:`metanet.prune.prune_model`."""
        from ..prune import prune_model
        return prune_model(self, model, keep, example_inputs, kwargs=kwargs)

    # -- alignment -----------------------------------------------------------------------------
    def align(self, sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor],
              method: str = "weights", **kwargs) -> Permutation:
        """The permutation P with ``self.permute(sd_b, P)`` closest to ``sd_a`` (weight or
        activation matching); see :func:`metanet.space.align.align` for the options."""
        from .align import align
        return align(self, sd_a, sd_b, method=method, **kwargs)
