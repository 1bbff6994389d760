"""Weight-space augmentations: random maps of stacked checkpoints of one architecture.

Every transform works on a stack ``{name: Tensor[B, ...]}`` (one leading batch axis, as
``Zoo.stacked`` and ``Zoo.batches`` give it) and draws one random change per network in
one vectorised step: no Python loop over networks. ``t.single(sd)`` applies it to one
state dict. Invariants:

- Pure: inputs are never modified; the result is a new dict (entries no transform
  touches are shared with the input).
- Seedable: randomness comes from ``generator=`` (a ``torch.Generator``) or, without it,
  the transform's own generator made from ``seed=`` at construction. Small draws (a
  permutation or a factor per neuron) are made on the CPU; per-weight draws (noise,
  dropout masks) on the tensors' device from a generator seeded by the CPU one, so a
  seed gives the same result on every device of one kind.
- Tagged: ``exact = True`` where the network computes the same function afterwards
  (up to float rounding), ``False`` otherwise. An exact transform asked for where its
  symmetry does not hold raises ``ValueError`` saying which group and why.
- Only the weight space's floating weights change; extras (``num_batches_tracked``) pass
  through. Approximate transforms leave BatchNorm running statistics alone by default
  (noise could make a variance negative).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import torch

from ..space.weightspace import WeightSpace
from ..trace.graph import Param, Ref

Stack = Mapping[str, torch.Tensor]

__all__ = ["Transform", "Compose", "RandomApply", "RandomPermutation", "RandomScaling", "RandomSignFlip",
           "SirenBiasShift", "GaussianNoise", "WeightDropout", "MagnitudePrune", "Quantize",
           "INRInputTransform", "make_generator", "running_stat_keys", "transformed"]


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator: the one given, one seeded with ``seed``, or one seeded from the
    global RNG when ``seed`` is None."""
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _device_generator(gen: torch.Generator, device: torch.device) -> torch.Generator:
    """``gen`` itself when it lives on ``device``, else a generator on ``device`` seeded
    from ``gen`` (one draw)."""
    device = torch.device(device)
    if gen.device.type == device.type:
        return gen
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen).item())
    return torch.Generator(device).manual_seed(seed)


def running_stat_keys(ws: WeightSpace) -> set[str]:
    """State-dict entries read as running statistics by batch-norm ops (mean, variance)."""
    out = set()
    for n in ws.op_graph.nodes:
        if "batch_norm" in n.op:
            for a in n.args[3:5]:
                if isinstance(a, Param):
                    out.add(ws.aliases.get(a.name, a.name))
    return out


def _batch_of(stack: Stack, ws: WeightSpace) -> int:
    if not isinstance(stack, Mapping):
        raise TypeError(f"a transform takes a stacked state dict {{name: Tensor[B, ...]}}, got "
                        f"{type(stack).__name__}; for one state dict use transform.single(sd)")
    ws.check(stack, batched=True)
    return WeightSpace._batch_size(stack)


class Transform:
    """A random map of stacked checkpoints of one weight space (see the module docstring).

    Subclasses set ``exact`` and implement :meth:`apply`."""

    exact: ClassVar[bool]

    def __init__(self, ws: WeightSpace, *, seed: int | torch.Generator | None = None):
        if not isinstance(ws, WeightSpace):
            raise TypeError(f"{type(self).__name__} takes a WeightSpace first (WeightSpace.of(model, "
                            f"example_inputs)), got {type(ws).__name__}")
        self.ws = ws
        self.generator = make_generator(seed)

    def __call__(self, stack: Stack, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Transform a stack ``{name: Tensor[B, ...]}``: one random draw per network."""
        B = _batch_of(stack, self.ws)
        return self.apply(stack, B, generator if generator is not None else self.generator)

    def single(self, state_dict: Stack, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Transform one state dict (a stack of one)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"single() takes a state dict, got {type(state_dict).__name__}")
        out = self({k: v.unsqueeze(0) for k, v in state_dict.items()}, generator=generator)
        return OrderedDict((k, v.squeeze(0)) for k, v in out.items())

    def apply(self, stack: Stack, B: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(exact={self.exact})"


class Compose:
    """Apply transforms in order. Exact when every part is exact."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)
        if not self.transforms:
            raise ValueError("Compose needs at least one transform")
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose takes transforms (callables on stacked state dicts), got {type(t).__name__}")

    @property
    def exact(self) -> bool:
        return all(getattr(t, "exact", False) for t in self.transforms)

    def __call__(self, stack: Stack, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        for t in self.transforms:
            stack = t(stack, generator=generator) if isinstance(t, (Transform, Compose, RandomApply)) else t(stack)
        return stack

    def single(self, state_dict: Stack, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = self({k: v.unsqueeze(0) for k, v in state_dict.items()}, generator=generator)
        return OrderedDict((k, v.squeeze(0)) for k, v in out.items())

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class RandomApply:
    """Apply ``transform`` to each network of a stack with probability ``p`` (one draw per
    network; the others pass through unchanged). Exact when ``transform`` is.

    The transform runs on the whole stack once and its result is kept where the draw says
    so: a batched select, no loop over networks."""

    def __init__(self, transform: Callable, p: float = 0.5, *, seed: int | torch.Generator | None = None):
        from .mixup import MixUp

        if isinstance(transform, MixUp):
            raise TypeError("RandomApply takes a stack transform; for MixUp pass p= to MixUp itself "
                            "(it mixes labels too)")
        if not callable(transform):
            raise TypeError(f"RandomApply takes a transform (a callable on stacked state dicts), "
                            f"got {type(transform).__name__}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomApply's p is a probability, in [0, 1]; got {p}")
        self.transform, self.p = transform, float(p)
        self.generator = make_generator(seed)

    @property
    def exact(self) -> bool:
        return bool(getattr(self.transform, "exact", False))

    def __call__(self, stack: Stack, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        gen = generator if generator is not None else self.generator
        t = self.transform
        out = t(stack, generator=gen) if isinstance(t, (Transform, Compose, RandomApply)) else t(stack)
        keys = [k for k in out if k in stack and out[k] is not stack[k]]
        if not keys:
            return out
        B = out[keys[0]].shape[0]
        keep = torch.rand(B, generator=gen) < self.p
        res = OrderedDict(out)
        for k in keys:
            m = keep.to(out[k].device).reshape(B, *([1] * (out[k].dim() - 1)))
            res[k] = torch.where(m, out[k], stack[k])
        return res

    def single(self, state_dict: Stack, *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = self({k: v.unsqueeze(0) for k, v in state_dict.items()}, generator=generator)
        return OrderedDict((k, v.squeeze(0)) for k, v in out.items())

    def __repr__(self) -> str:
        return f"RandomApply({self.transform!r}, p={self.p})"


def transformed(batches: Iterable, transform: Callable) -> Iterable:
    """Apply ``transform`` to the stacked part of each batch of an iterator such as
    ``zoo.batches(64, form="stacked", target="test_acc")``: a stack, or ``(stack, y)``
    (with a MixUp, ``(stack, y)`` goes through it whole and labels are mixed)."""
    from .mixup import MixUp

    for item in batches:
        if isinstance(item, tuple):
            stack, y = item
            yield transform(stack, y) if isinstance(transform, MixUp) else (transform(stack), y)
        else:
            yield transform(item)


# -- exact transforms ----------------------------------------------------------------------------
class RandomPermutation(Transform):
    """Permute the neurons of every group, independently per network (exact)."""

    exact = True

    def apply(self, stack, B, gen):
        if not self.ws.groups:
            return dict(stack)
        return self.ws.permute(stack, self.ws.sample_permutation(gen, batch=B), batched=True)


class RandomScaling(Transform):
    """Positive per-neuron factors, log-uniform in [low, high], on every ReLU-like group
    (exact: ``relu(f x) = f relu(x)`` for f > 0). Refused where no group admits it."""

    exact = True

    def __init__(self, ws, low: float = 0.5, high: float = 2.0, *, seed=None):
        super().__init__(ws, seed=seed)
        if not 0 < low <= high:
            raise ValueError(f"RandomScaling needs 0 < low <= high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        if not any(g.scaling for g in ws.groups):
            ws._refuse("scale")   # the weight space's own message: which op breaks it

    def apply(self, stack, B, gen):
        return self.ws.scale(stack, self.ws.sample_scaling(gen, self.low, self.high, batch=B), batched=True)


class RandomSignFlip(Transform):
    """Random ±1 per neuron of every group that passes only through odd functions (tanh,
    sin, identity) (exact). Refused where no group admits it."""

    exact = True

    def __init__(self, ws, *, seed=None):
        super().__init__(ws, seed=seed)
        if not any(g.sign for g in ws.groups):
            ws._refuse("sign")

    def apply(self, stack, B, gen):
        return self.ws.scale(stack, self.ws.sample_sign_flip(gen, batch=B), batched=True)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x != 0


def _scalar_factor(node, prev: int) -> float | None:
    """The constant c with ``node(x) = c x`` when ``node`` multiplies or divides the
    output of op ``prev`` by a nonzero number; None otherwise."""
    a = node.args
    if len(a) != 2:
        return None
    if node.op == "mul" and a[0] == Ref(prev) and _number(a[1]):
        return float(a[1])
    if node.op == "mul" and a[1] == Ref(prev) and _number(a[0]):
        return float(a[0])
    if node.op == "div" and a[0] == Ref(prev) and _number(a[1]):
        return 1.0 / float(a[1])
    return None


def _siren_layers(ws: WeightSpace) -> list[dict]:
    """Groups whose neurons pass ``linear -> (mul/div by a constant number)* -> sin``.

    For each: the group id, the bias entry of the linear, ω₀ (the product of the
    constants) and the (entry, axis) pairs that read the sine's output. Raises
    ValueError naming the first group where this cannot be proven."""
    g_nodes = ws.op_graph.nodes
    users: dict[int, list[int]] = {}
    for n in g_nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n.index)
    roles, role_ops = ws.spaces.scale_roles, ws.spaces.role_ops
    found, why = [], []
    for g in ws.groups:
        axes = ws.group_axes(g.id)
        outs = [(k, a) for k, a in axes if roles.get(k, {}).get(a) == "out"]
        ins = [(k, a) for k, a in axes if roles.get(k, {}).get(a) == "in"]
        rest = [(k, a) for k, a in axes if (k, a) not in outs and (k, a) not in ins]
        producers = {role_ops.get(k, {}).get(a) for k, a in outs}
        if rest or len(producers) != 1 or None in producers:
            why.append(f"group {g.id} ({g.name}) is not the output of a single linear layer")
            continue
        lin = g_nodes[producers.pop()]
        bias = lin.args[2] if lin.op == "linear" and len(lin.args) > 2 else None
        if lin.op != "linear" or not isinstance(bias, Param) or (bias.name, 0) not in outs:
            why.append(f"group {g.id} ({g.name}) is produced by aten.{lin.op} at {lin.module or '<root>'}, "
                       f"not a linear layer with a bias")
            continue
        omega, node, ok = 1.0, lin, True
        while ok:
            nxt = users.get(node.index, [])
            if len(nxt) != 1:
                ok = False
                break
            prev, node = node, g_nodes[nxt[0]]
            if node.op == "sin":
                break
            c = _scalar_factor(node, prev.index)
            if c is None:
                ok = False
            else:
                omega *= c
        if not ok or node.op != "sin":
            why.append(f"group {g.id} ({g.name}): the output of {lin.where()} does not go straight "
                       f"into sin (only multiplications by constant numbers may sit between)")
            continue
        readers = set(users.get(node.index, []))
        if not ins or any(role_ops.get(k, {}).get(a) not in readers for k, a in ins):
            why.append(f"group {g.id} ({g.name}): its sine's output is not read only by the layers "
                       f"that carry the group")
            continue
        found.append({"group": g.id, "bias": bias.name, "omega": float(omega), "ins": ins})
    if why or not found:
        raise ValueError("SirenBiasShift needs every neuron group to be a sine layer "
                         "sin(ω₀ (W x + b)): " + ("; ".join(why) if why else "this space has no neuron groups")
                         + ". Use RandomPermutation or RandomSignFlip for other odd activations.")
    return found


class SirenBiasShift(Transform):
    """The SIREN bias shift (exact): for a sine layer ``sin(ω₀ (W x + b))``, adding
    ``k π / ω₀`` to the bias of a neuron multiplies its output by ``(-1)^k``; the
    columns that read that neuron are multiplied by ``(-1)^k`` to match. ``k`` is drawn
    uniformly from ``-max_shift..max_shift`` per neuron and network.

    Where it applies is read from the op graph: every group must be the output of one
    linear layer with a bias, followed only by multiplications by constant numbers (ω₀)
    and ``sin``; anything else is refused with the group and the reason."""

    exact = True

    def __init__(self, ws, max_shift: int = 2, *, seed=None):
        super().__init__(ws, seed=seed)
        if int(max_shift) < 1:
            raise ValueError(f"max_shift must be a positive integer, got {max_shift}")
        self.max_shift = int(max_shift)
        self.layers = _siren_layers(ws)

    def apply(self, stack, B, gen):
        out = OrderedDict(stack)
        sizes = self.ws.spaces.sizes
        for layer in self.layers:
            g = self.ws.groups[layer["group"]]
            k = torch.randint(-self.max_shift, self.max_shift + 1, (B, g.size), generator=gen)
            bias = out[layer["bias"]]
            shift = (k.double() * (math.pi / layer["omega"])).to(bias.device)
            out[layer["bias"]] = (bias.double() + shift).to(bias.dtype)
            sign = (1 - 2 * (k % 2)).double()     # (-1)^k
            for name, axis in layer["ins"]:
                v = out[name]
                f = _axis_factors(self.ws.axes(name)[axis], sizes, g.space, sign)
                shape = [1] * v.dim()
                shape[0], shape[axis + 1] = B, f.shape[-1]
                out[name] = (v.double() * f.reshape(shape).to(v.device)).to(v.dtype)
        for alias, canon in self.ws.aliases.items():
            if alias in out:
                out[alias] = out[canon]
        return out


def _axis_factors(s: tuple, sizes: Sequence[int], space: int, f: torch.Tensor) -> torch.Tensor:
    """[B, axis] factors along an axis of structure ``s`` given [B, n] factors of one space
    (1 where it does not appear)."""
    B = f.shape[0]
    pieces = []
    for seg in s:
        m = torch.ones(B, 1, dtype=torch.float64)
        for a in seg:
            v = f if a == space else torch.ones(B, sizes[a], dtype=torch.float64)
            m = (m.unsqueeze(-1) * v.unsqueeze(-2)).flatten(-2)
        pieces.append(m)
    return torch.cat(pieces, dim=-1)


# -- approximate transforms --------------------------------------------------------------------------
class _PerTensor(Transform):
    """An approximate transform applied to each selected floating weight of a stack.

    ``keys``: the entries it changes (default: every floating weight except BatchNorm
    running statistics; ``min_dim=2`` keeps it to matrices and kernels)."""

    exact = False
    min_dim = 1

    def __init__(self, ws, *, keys: Iterable[str] | None = None, seed=None):
        super().__init__(ws, seed=seed)
        if keys is None:
            stats = running_stat_keys(ws)
            keys = [k for k in ws.weights if k not in stats and len(ws.shapes[k]) >= self.min_dim]
        keys = list(keys)
        unknown = [k for k in keys if k not in ws.weights]
        if unknown:
            raise ValueError(f"{type(self).__name__}: {unknown[0]!r} is not a floating weight of this space "
                             f"(weights are e.g. {ws.weights[:3]})")
        self.keys = keys

    def apply(self, stack, B, gen):
        out = OrderedDict(stack)
        dev_gen: dict[str, torch.Generator] = {}
        for k in self.keys:
            v = stack[k]
            key = str(v.device)
            if key not in dev_gen:
                dev_gen[key] = _device_generator(gen, v.device)
            flat = v.reshape(B, -1)
            out[k] = self.tensor(flat, dev_gen[key]).reshape(v.shape).to(v.dtype)
        for alias, canon in self.ws.aliases.items():
            if alias in out:
                out[alias] = out[canon]
        return out

    def tensor(self, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The transform of one entry, flattened per network: [B, n] -> [B, n]."""
        raise NotImplementedError


class GaussianNoise(_PerTensor):
    """Add ``sigma * std(w) * N(0, 1)``: noise scaled to each tensor's spread in each
    network (a tensor of one value gets no noise)."""

    def __init__(self, ws, sigma: float = 0.1, **kw):
        super().__init__(ws, **kw)
        if sigma < 0:
            raise ValueError(f"GaussianNoise needs sigma >= 0, got {sigma}")
        self.sigma = float(sigma)

    def tensor(self, v, gen):
        std = v.std(dim=1, keepdim=True, unbiased=False) if v.shape[1] > 1 else torch.zeros_like(v[:, :1])
        return v + self.sigma * std * torch.randn(v.shape, generator=gen, device=v.device, dtype=v.dtype)


class WeightDropout(_PerTensor):
    """Zero each weight with probability ``p`` (DropConnect on the weights); with
    ``rescale=True`` the kept ones are divided by ``1 - p``."""

    def __init__(self, ws, p: float = 0.1, rescale: bool = False, **kw):
        super().__init__(ws, **kw)
        if not 0 <= p < 1:
            raise ValueError(f"WeightDropout needs 0 <= p < 1, got {p}")
        self.p, self.rescale = float(p), bool(rescale)

    def tensor(self, v, gen):
        keep = torch.rand(v.shape, generator=gen, device=v.device) >= self.p
        out = v * keep
        return out / (1 - self.p) if self.rescale else out


class MagnitudePrune(_PerTensor):
    """Zero the weights whose magnitude is below the ``q`` quantile of their tensor, in
    each network (matrices and kernels only by default). Deterministic."""

    min_dim = 2

    def __init__(self, ws, q: float = 0.2, **kw):
        super().__init__(ws, **kw)
        if not 0 <= q < 1:
            raise ValueError(f"MagnitudePrune needs 0 <= q < 1, got {q}")
        self.q = float(q)

    def tensor(self, v, gen):
        k = int(self.q * v.shape[1])
        if k == 0:
            return v
        a = v.abs()
        thresh = a.kthvalue(k, dim=1, keepdim=True).values
        return torch.where(a <= thresh, torch.zeros_like(v), v)


class Quantize(_PerTensor):
    """Round each tensor to ``2^bits - 1`` symmetric levels of its own range
    (``max |w|`` per network and tensor). Deterministic."""

    def __init__(self, ws, bits: int = 8, **kw):
        super().__init__(ws, **kw)
        if int(bits) < 2:
            raise ValueError(f"Quantize needs bits >= 2, got {bits}")
        self.bits = int(bits)

    def tensor(self, v, gen):
        levels = 2 ** (self.bits - 1) - 1
        scale = v.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny) / levels
        return torch.round(v / scale) * scale


def _first_linear(ws: WeightSpace) -> tuple[str, str | None, int]:
    """The coordinate-input layer of an INR: (weight, bias or None, input dimension).

    The model's single input must be read by exactly one op, a linear layer."""
    nodes = ws.op_graph.nodes
    if len(ws.op_graph.inputs) != 1:
        raise ValueError(f"INRInputTransform needs a model with one input (coordinates), this one has "
                         f"{len(ws.op_graph.inputs)}")
    inp = ws.op_graph.inputs[0]
    readers = [n for n in nodes if inp in n.inputs]
    if len(readers) != 1 or readers[0].op != "linear" or not isinstance(readers[0].args[1], Param):
        what = ", ".join(n.where() for n in readers) or "nothing"
        raise ValueError(f"INRInputTransform needs the coordinates to go straight into one linear layer "
                         f"(a coordinate MLP); here they are read by {what}")
    lin = readers[0]
    bias = lin.args[2] if len(lin.args) > 2 and isinstance(lin.args[2], Param) else None
    if len(lin.args) > 2 and lin.args[2] is not None and bias is None:
        raise ValueError(f"INRInputTransform: the bias of {lin.where()} is not a state-dict entry")
    w = lin.args[1].name
    return w, (bias.name if bias else None), ws.shapes[w][1]


class INRInputTransform(Transform):
    """Move an INR's input space: the new network computes ``f(s R x + t)`` for a random
    rotation R (angle uniform in ±``rotate`` degrees; 2-D coordinates only), scale s
    (log-uniform in [1/``scale``, ``scale``]) and translation t (uniform in
    ±``translate`` per coordinate). Written into the first layer: ``W <- s W R``,
    ``b <- b + W t``. Approximate: the image is moved, not kept (content leaves or enters
    the sampled domain)."""

    exact = False

    def __init__(self, ws, translate: float = 0.1, rotate: float = 15.0, scale: float = 1.1, *, seed=None):
        super().__init__(ws, seed=seed)
        self.weight, self.bias, self.dim = _first_linear(ws)
        if rotate and self.dim != 2:
            raise ValueError(f"INRInputTransform: rotation needs 2-D coordinates, this INR reads {self.dim}-D; "
                             f"pass rotate=0")
        if scale < 1 or translate < 0 or rotate < 0:
            raise ValueError("INRInputTransform needs translate >= 0, rotate >= 0 (degrees) and scale >= 1")
        self.translate, self.rotate, self.scale = float(translate), float(rotate), float(scale)

    def matrices(self, B: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Per network: M = s R ([B, d, d]) and t ([B, d]), float64."""
        d = self.dim
        s = torch.exp((torch.rand(B, generator=gen, dtype=torch.float64) * 2 - 1) * math.log(self.scale))
        t = (torch.rand(B, d, generator=gen, dtype=torch.float64) * 2 - 1) * self.translate
        if d == 2:
            th = (torch.rand(B, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(self.rotate)
            c, n = torch.cos(th), torch.sin(th)
            R = torch.stack([torch.stack([c, -n], -1), torch.stack([n, c], -1)], -2)
        else:
            R = torch.eye(d, dtype=torch.float64).expand(B, d, d)
        return s[:, None, None] * R, t

    def apply(self, stack, B, gen):
        M, t = self.matrices(B, gen)
        out = OrderedDict(stack)
        W = stack[self.weight]
        Wd = W.double()
        out[self.weight] = torch.einsum("boi,bij->boj", Wd, M.to(W.device)).to(W.dtype)
        if self.bias is not None:
            b = stack[self.bias]
            out[self.bias] = (b.double() + torch.einsum("boi,bi->bo", Wd, t.to(W.device))).to(b.dtype)
        elif t.abs().max() > 0:
            raise ValueError(f"INRInputTransform: {self.weight} has no bias to carry a translation; "
                             f"pass translate=0")
        for alias, canon in self.ws.aliases.items():
            if alias in out:
                out[alias] = out[canon]
        return out
