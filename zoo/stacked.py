"""What a network trained alone and the same network trained in a batch share.

Three pieces, each used by both :func:`zoo.train.train_job` (one network, an ordinary
``nn.Module``) and :mod:`zoo.batched` (many networks of one architecture as one stacked
model), so that network ``i`` of a batch gets the same initialization, data order,
dropout masks and optimizer arithmetic as network ``i`` trained alone:

* **Keyed dropout** — dropout masks are a counter-based hash of (network seed, dropout
  call number, element index), not draws from a stateful generator: a batch computes
  every network's mask in one vectorized integer op, with no per-network generator
  calls, and the result does not depend on batch size, padding or position.  Integer
  hashing is exact, so the masks match bit for bit.
* **Stacked optimizer** — Adam, AdamW, SGD (momentum) and RMSprop (momentum) written
  over a ``[B, P]`` matrix whose rows are networks, with per-row learning rate, weight
  decay and momentum.  The formulas are torch.optim's (same order of operations, same
  defaults), written with single elementwise ops only (no fused multiply-adds), so a
  row's result does not depend on the other rows: a network alone is ``B = 1``.
* **Stacked architectures** — ``forward(params, x)`` for ``B`` networks at once with
  parameters ``[B, *shape]``: linear layers as batched matmuls, convolutions as one
  grouped convolution (channels-last: fastest on CPU here, measured against
  ``vmap(functional_call)`` and im2col + bmm), per-row activations.  Supported:
  ``mlp``, ``cnn``/``small_cnn`` (norm none/group/layer/instance), ``conv1d``,
  ``siren``; :func:`stacked_arch` says why anything else is not.
"""
from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import _REGISTRY, create, make_activation

__all__ = ["halving_sum", "mix32", "network_keys", "call_bases", "dropout_params", "dropout_mask",
           "element_index", "KeyedDropout",
           "DropoutStream", "attach_keyed_dropout", "StackedOptimizer", "optimizer_kind",
           "lr_factor", "StackedArch", "stacked_arch", "Unsupported", "runs"]


# ------------------------------------------------------------------------- keyed dropout
_M1 = 0x7FEB352D
_M2 = 0x846CA68B - (1 << 32)          # int32 two's complement of 0x846ca68b
_GOLDEN = 0x9E3779B9
_SEED_SALT = 0x2545F491


def _i32(v: int) -> int:
    """A Python int wrapped to int32 (two's complement)."""
    return ((int(v) + 2 ** 31) % 2 ** 32) - 2 ** 31


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int32 tensors, wrapping arithmetic.

    Right shifts are made logical with a mask, so the result equals the unsigned hash
    reinterpreted as int32."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * _M1
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * _M2
    return x ^ ((x >> 16) & 0xFFFF)


def _mix_elems(index_m1: torch.Tensor, base_m1: torch.Tensor) -> torch.Tensor:
    """The element hash ``((index + base) * M1) ^ (.. >> 15)) * M2`` from ``index * M1``
    and ``base * M1`` (wrapping int32).  It runs on every activation element of every
    training step, so it is short: the arithmetic shift (no mask) costs the top bit of
    the middle value, which the final multiply does not need; only the high bits of the
    result are used (a signed comparison), and they depend on every input bit."""
    x = torch.add(index_m1, base_m1)
    x ^= x >> 15
    x *= _M2
    return x


def network_keys(seeds: Sequence[int], device=None) -> torch.Tensor:
    """int32 ``[k]`` dropout keys of networks with these job seeds."""
    s = torch.tensor([_i32(v) for v in seeds], dtype=torch.int32, device=device)
    return mix32(mix32(s ^ _SEED_SALT))


def call_bases(keys: torch.Tensor, call: int) -> torch.Tensor:
    """int32 ``[k]``: the hash offset of dropout call number ``call`` of each network."""
    return mix32(keys + _i32(call * _GOLDEN))


def dropout_params(ps: Sequence[float], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(threshold int32 [k], scale float32 [k])``: an element is kept when its hash
    (a uniform int32) is ``>= threshold`` (probability ``1 - p``) and then multiplied by
    ``scale = 1 / (1 - p)``."""
    thr, scale = [], []
    for p in ps:
        p = float(p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        thr.append(min(max(round(p * 2 ** 32) - 2 ** 31, -2 ** 31), 2 ** 31 - 1))
        scale.append(1.0 / (1.0 - p))
    return (torch.tensor(thr, dtype=torch.int32, device=device),
            torch.tensor(scale, dtype=torch.float32, device=device))


def element_index(shape, device=None) -> torch.Tensor:
    """``arange(numel).view(shape) * M1`` (int32, wrapping): what :func:`dropout_mask`
    takes as each element's index."""
    n = 1
    for d in shape:
        n *= int(d)
    return (torch.arange(n, dtype=torch.int32, device=device) * _M1).view(*shape)


def dropout_mask(index_m1: torch.Tensor, bases: torch.Tensor, thr: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
    """The float mask ``scale`` (kept) / ``0`` (dropped); all arguments broadcast.

    ``index_m1`` (:func:`element_index`) encodes each element's flat index in its own
    network's activation, so it is the same for a network alone and in a batch;
    ``bases``, ``thr`` and ``scale`` are per network."""
    h = _mix_elems(index_m1, bases * _M1)
    # the comparison written straight into a float tensor, then scaled: 2.7x faster than
    # bool * float (a conversion copy), much faster than torch.where
    mask = torch.empty(h.shape, dtype=scale.dtype, device=h.device)
    torch.ge(h, thr, out=mask)
    return mask.mul_(scale)


class DropoutStream:
    """The dropout randomness of one network: a key and a call counter shared by all
    its dropout modules (calls are numbered in forward order, training mode only)."""

    def __init__(self, seed: int, device=None):
        self.keys = network_keys([seed], device)
        self.calls = 0


class KeyedDropout(nn.Module):
    """``nn.Dropout`` with masks from a :class:`DropoutStream` (see module docstring)."""

    def __init__(self, p: float, stream: DropoutStream):
        super().__init__()
        self.p = float(p)
        self.stream = stream
        self._thr, self._scale = dropout_params([p])
        self._index: dict = {}

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        call = self.stream.calls
        self.stream.calls += 1
        key = (tuple(x.shape), x.device)
        if key not in self._index:
            self._index[key] = element_index(x.shape, x.device)
        bases = call_bases(self.stream.keys.to(x.device), call)
        mask = dropout_mask(self._index[key], bases, self._thr.to(x.device), self._scale.to(x.device))
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, keyed"


def attach_keyed_dropout(model: nn.Module, seed: int) -> DropoutStream:
    """Replace every ``nn.Dropout`` of ``model`` by a :class:`KeyedDropout` of the same
    ``p`` drawing from one stream keyed by ``seed``.  State dicts are unchanged."""
    stream = DropoutStream(seed)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, child_name, KeyedDropout(child.p, stream))
    return stream


# --------------------------------------------------------------------------- optimizer
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def optimizer_kind(hp: dict) -> str:
    """The update rule of a job: its optimizer, with RMSprop split by whether it keeps a
    momentum buffer (a different order of operations)."""
    name = hp.get("optimizer", "adam")
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
    if name == "rmsprop" and float(hp.get("momentum", 0.0)) > 0:
        return "rmsprop_momentum"
    return name


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based), as
    ``torch.optim.lr_scheduler.LambdaLR`` applies it (Python double)."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    raise ValueError(f"unknown schedule {schedule!r} (known: constant, cosine)")


def runs(labels: Sequence) -> list[tuple[object, int, int]]:
    """Maximal runs of equal consecutive labels: ``[(label, start, end), ...]``."""
    out = []
    for i, lab in enumerate(labels):
        if out and out[-1][0] == lab:
            out[-1] = (lab, out[-1][1], i + 1)
        else:
            out.append((lab, i, i + 1))
    return out


class StackedOptimizer:
    """Independent optimizers for the rows of a ``[B, P]`` parameter matrix.

    ``hparams[i]`` are row ``i``'s job hyperparameters (``optimizer``, ``lr``,
    ``weight_decay``, ``momentum``).  :meth:`step` takes the learning rates of this step
    (after scheduling).  The formulas are torch.optim's defaults: Adam/AdamW betas
    (0.9, 0.999), eps 1e-8; RMSprop alpha 0.99, eps 1e-8; SGD dampening 0, no Nesterov;
    L2 weight decay added to the gradient (AdamW: decoupled).

    Adam, AdamW, SGD and RMSprop rows take ONE pass of elementwise ops with per-row
    coefficients (a handful of ops per step whatever the mix of optimizers)::

        g += p * wd2;  p *= d                       # L2 decay / AdamW's decoupled decay
        m = m * c1 + g * c2                         # Adam: b1, 1-b1   SGD: mom, 1   RMSprop: 0, 1
        v = v * c3 + g * g * c4                     # Adam: b2, 1-b2   RMSprop: a, 1-a   SGD: 0, 0
        p += m * a / (sqrt(v) / s + eps)            # SGD: s = 1, eps = 1 (denominator 1)

    with ``a = -lr / (1 - b1^t)``, ``s = sqrt(1 - b2^t)`` for Adam and ``a = -lr``,
    ``s = 1`` otherwise: for each kind, the same operations in the same order as
    torch.optim's single-tensor code (its scalars become float32 columns, which gives
    the same float32 products).  RMSprop with momentum (a different order) is handled
    separately; its rows are kept last.
    """

    def __init__(self, hparams: Sequence[dict], n_params: int, device=None):
        self.kinds = [optimizer_kind(hp) for hp in hparams]
        if "rmsprop_momentum" in self.kinds and \
                self.kinds != sorted(self.kinds, key=lambda kd: kd == "rmsprop_momentum"):
            raise ValueError("StackedOptimizer: rows with RMSprop momentum must come last")
        wd = [float(hp.get("weight_decay", 0.0)) for hp in hparams]
        mom = [float(hp.get("momentum", 0.0)) for hp in hparams]
        b1, b2 = ADAM_BETAS
        a = RMSPROP_ALPHA
        coef = {"adam": (b1, 1 - b1, b2, 1 - b2, ADAM_EPS), "adamw": (b1, 1 - b1, b2, 1 - b2, ADAM_EPS),
                "rmsprop": (0.0, 1.0, a, 1 - a, RMSPROP_EPS), "rmsprop_momentum": (0.0, 1.0, a, 1 - a, RMSPROP_EPS)}
        rows = []
        for kind, w, mo in zip(self.kinds, wd, mom):
            c = coef.get(kind, (mo, 1.0, 0.0, 0.0, 1.0))   # sgd
            rows.append((0.0 if kind == "adamw" else w, mo) + c)
        cols = torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(rows), 7)
        self._cols = cols          # wd2, mom, c1, c2, c3, c4, eps   ([k, 7] float32)
        self.wd = wd
        k = len(hparams)
        self.m = torch.zeros(k, n_params, device=device)
        self.v = torch.zeros(k, n_params, device=device)
        self.steps = 0
        self.device = device

    def select(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Keep only ``rows`` (in that order)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        keep = idx.tolist()
        self.kinds = [self.kinds[i] for i in keep]
        self.wd = [self.wd[i] for i in keep]
        dev_idx = idx.to(self._cols.device)
        self._cols = self._cols.index_select(0, dev_idx)
        self.m = self.m.index_select(0, dev_idx)
        self.v = self.v.index_select(0, dev_idx)

    @torch.no_grad()
    def step(self, p: torch.Tensor, g: torch.Tensor, lrs: Sequence[float]) -> None:
        """One update of every row: ``p`` (``[B, P]``) in place; ``g`` is consumed."""
        self.steps += 1
        t = self.steps
        b1, b2 = ADAM_BETAS
        bc1 = 1 - b1 ** t
        bc2_sqrt = (1 - b2 ** t) ** 0.5
        # per-row step scalars as torch.optim forms them (Python doubles -> float32)
        a, d, s = [], [], []
        for kind, lr, wd in zip(self.kinds, lrs, self.wd):
            adam = kind in ("adam", "adamw")
            a.append(-(lr / bc1) if adam else -lr)
            d.append(1 - lr * wd if kind == "adamw" else 1.0)
            s.append(bc2_sqrt if adam else 1.0)
        step = torch.tensor([a, d, s], dtype=torch.float32).t().to(p.device, non_blocking=True)
        n = len(self.kinds)
        e = self.kinds.index("rmsprop_momentum") if "rmsprop_momentum" in self.kinds else n
        if e:
            P, G, M, V = p[:e], g[:e], self.m[:e], self.v[:e]
            col = self._cols[:e]
            wd2, c1, c2, c3, c4, eps = (col[:, i:i + 1] for i in (0, 2, 3, 4, 5, 6))
            A, D, S = step[:e, 0:1], step[:e, 1:2], step[:e, 2:3]
            G.add_(P * wd2)
            if "adamw" in self.kinds:
                P.mul_(D)
            M.mul_(c1).add_(G * c2)
            V.mul_(c3).add_((G * G).mul_(c4))
            P.add_((M * A).div_(V.sqrt().div_(S).add_(eps)))
        if e < n:  # RMSprop with momentum: buf = buf * mom + g / avg; p -= lr * buf
            P, G, M, V = p[e:], g[e:], self.m[e:], self.v[e:]
            col = self._cols[e:]
            G.add_(P * col[:, 0:1])
            V.mul_(col[:, 4:5]).add_((G * G).mul_(col[:, 5:6]))
            avg = V.sqrt().add_(col[:, 6:7])
            M.mul_(col[:, 1:2]).add_(G / avg)
            P.add_(M * step[e:, 0:1])


# ------------------------------------------------------------------ stacked architectures
class Unsupported(Exception):
    """An architecture (or configuration) the stacked trainer cannot batch."""


# constructor arguments that may differ between the networks of one batch
PER_NETWORK_KWARGS = ("activation", "dropout")


def _constructor_default(arch: str, name: str, fallback):
    try:
        p = inspect.signature(_REGISTRY[arch]).parameters.get(name)
    except (TypeError, ValueError, KeyError):
        return fallback
    return fallback if p is None or p.default is inspect.Parameter.empty else p.default


def split_arch_kwargs(arch: str, kwargs: dict) -> tuple[dict, str | None, float]:
    """``(shared kwargs, activation, dropout)`` of a job's architecture kwargs."""
    shared = {k: v for k, v in kwargs.items() if k not in PER_NETWORK_KWARGS}
    takes = set()
    try:
        takes = set(inspect.signature(_REGISTRY[arch]).parameters)
    except (TypeError, ValueError, KeyError):
        pass
    act = kwargs.get("activation", _constructor_default(arch, "activation", None)) \
        if "activation" in takes else None
    drop = float(kwargs.get("dropout", _constructor_default(arch, "dropout", 0.0)) or 0.0) \
        if "dropout" in takes else 0.0
    return shared, act, drop


@dataclass
class _Param:
    name: str
    shape: tuple
    offset: int
    numel: int


class StackedArch:
    """``B`` networks of one architecture as one model over a ``[B, P]`` parameter matrix.

    The parameter order is the module's ``named_parameters()`` order (which
    :func:`zoo.train.train_job` flattens the same way); :meth:`state_dict` rebuilds a
    network's state dict in ``state_dict()`` order.
    """

    n_dropout_calls = 0          # dropout calls per training forward
    task = "classify"

    def __init__(self, arch: str, kwargs: dict):
        self.arch = arch
        self.kwargs = dict(kwargs)
        with torch.device("meta"):
            probe = create(arch, **self._probe_kwargs(kwargs))
        self.probe = probe
        self.params: list[_Param] = []
        off = 0
        for name, p in probe.named_parameters():
            self.params.append(_Param(name, tuple(p.shape), off, p.numel()))
            off += p.numel()
        self.n_params = off
        self.by_name = {p.name: p for p in self.params}
        self.sd_keys = list(probe.state_dict())
        if set(self.sd_keys) != set(self.by_name):
            extra = sorted(set(self.sd_keys) - set(self.by_name))
            # named by their kinds, not every layer's, so that one log line covers the
            # networks of an architecture whatever their depth
            kinds = sorted({k.rsplit(".", 1)[-1] for k in extra})
            raise Unsupported(f"{arch} has buffers ({', '.join(kinds)}): running statistics "
                              f"cannot be stacked")
        self.n_classes = None

    @staticmethod
    def _probe_kwargs(kwargs: dict) -> dict:
        return dict(kwargs)

    # ---- parameters
    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        k = flat.shape[0]
        return {p.name: flat[:, p.offset:p.offset + p.numel].view(k, *p.shape) for p in self.params}

    def leaves(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter leaf tensors sharing ``flat``'s memory (gradients come back per
        parameter: cheaper than slicing one ``[B, P]`` leaf, whose backward would
        materialize a ``[B, P]`` zero matrix per parameter)."""
        return [v.detach().requires_grad_(True) for v in self.views(flat).values()]

    def flatten(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([state[p.name].detach().reshape(-1) for p in self.params])

    def state_dict(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        row = row.detach().to("cpu")
        return {k: row[self.by_name[k].offset:self.by_name[k].offset + self.by_name[k].numel]
                .view(self.by_name[k].shape).clone() for k in self.sd_keys}

    # ---- data
    def prepare_data(self, x: torch.Tensor) -> torch.Tensor:
        """Dataset inputs ``[M, ...]`` in the layout :meth:`gather` reads."""
        raise NotImplementedError

    def gather(self, data: torch.Tensor, idx: torch.Tensor):
        """Inputs of network ``b`` = samples ``idx[b]`` (``[k, n]``)."""
        raise NotImplementedError

    def shared(self, data: torch.Tensor, k: int):
        """The same samples (``data`` from :meth:`prepare_data`) for ``k`` networks."""
        raise NotImplementedError

    def forward(self, p: dict, x, acts: list, drop=None) -> torch.Tensor:
        """Outputs ``[k, n, out]``.  ``acts``: runs ``(activation module, start, end)``
        over rows; ``drop``: ``None`` (eval) or a :class:`DropCalls`."""
        raise NotImplementedError


class DropCalls:
    """Per-network dropout state of one training forward of a stacked model."""

    def __init__(self, keys, thr, scale, first_call: int, cache: dict | None = None):
        self.keys, self.thr, self.scale = keys, thr, scale
        self.call = first_call
        self.cache = {} if cache is None else cache   # index tensors, reused across steps

    def next_bases(self) -> torch.Tensor:
        b = call_bases(self.keys, self.call)
        self.call += 1
        return b


# Activations whose CPU kernels give the same bits for an element whatever the tensor's
# layout and the element's position (checked: contiguous, strided, vector tails).  The
# others (gelu, sigmoid, silu, elu, selu, softplus) take a different code path for
# strided inputs or for the scalar tail of a vectorized loop, so they are evaluated on a
# contiguous buffer padded to a multiple of 64 elements: every element takes the
# vectorized path, and a network's result does not depend on its batch.
_LAYOUT_SAFE = (nn.ReLU, nn.Tanh, nn.LeakyReLU, nn.ReLU6, nn.Identity)


def _act(fn: nn.Module, h: torch.Tensor) -> torch.Tensor:
    if isinstance(fn, _LAYOUT_SAFE) or type(fn).__name__ == "Sine":
        return fn(h)
    phys = h.permute(0, 2, 3, 1) if h.dim() == 4 else h   # memory order of the layouts
    flat = phys.reshape(-1)
    pad = (-flat.numel()) % 64
    y = fn(F.pad(flat, (0, pad)) if pad else flat)[:flat.numel()].view(phys.shape)
    return y.permute(0, 3, 1, 2) if h.dim() == 4 else y


def _apply_rows(h: torch.Tensor, acts: list, dim: int, unit: int) -> torch.Tensor:
    """Apply each run's activation to its rows (blocks of ``unit`` along ``dim``)."""
    if len(acts) == 1:
        return _act(acts[0][0], h)
    sizes = [(e - s) * unit for _, s, e in acts]
    if h.dim() == 4:
        # channels-last: split and concatenate in memory order ([n, H, W, k*C]): a cat
        # along the logical channel dim is ~50x slower.  split (not narrow): its
        # backward is one cat, narrow's a zero tensor of the full size per part.
        parts = h.permute(0, 2, 3, 1).split(sizes, 3)
        outs = [_act(fn, q.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) for (fn, _, _), q in zip(acts, parts)]
        return torch.cat(outs, 3).permute(0, 3, 1, 2)
    parts = h.split(sizes, dim)
    return torch.cat([_act(fn, q) for (fn, _, _), q in zip(acts, parts)], dim)


def dense(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h @ w^T + b`` for each row: ``h [k, n, in]``, ``w [k, out, in]``, ``b [k, out]``.

    MKL's batched matrix product gives a matrix different bits depending on its position
    in the batch when the per-matrix result of the weight gradient (``in x out`` floats)
    is not 16-byte aligned (e.g. 125 x 10): ``in`` is then zero-padded to a multiple of 4."""
    fan_in = h.shape[-1]
    if (fan_in * w.shape[1]) % 4:
        pad = (-fan_in) % 4
        h, w = F.pad(h, (0, pad)), F.pad(w, (0, pad))
    wt = w.transpose(1, 2)
    return torch.baddbmm(b.unsqueeze(1), h, wt) if b is not None else torch.bmm(h, wt)


def halving_sum(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum over ``dim`` by pairwise halving (zero-padded to a power of two): elementwise
    adds only, so each output's order of additions depends only on the reduced size —
    not on the other dimensions, as a library reduction's strategy may."""
    dim = dim % x.dim()
    n = x.shape[dim]
    p = 1 << max(0, (n - 1).bit_length())
    if p != n:
        pad = [0, 0] * (x.dim() - dim - 1) + [0, p - n]
        x = F.pad(x, pad)
    while x.shape[dim] > 1:
        h = x.shape[dim] // 2
        x = x.narrow(dim, 0, h) + x.narrow(dim, h, h)
    return x.squeeze(dim)


class _StackedConv(StackedArch):
    """ConvNet (``cnn``, ``small_cnn``) and Conv1dNet (``conv1d``).

    Activations of ``k`` networks are one channels-last tensor: logical
    ``[n, k*C, H, W]`` (1-D nets: ``H = 1``), memory ``[n, H, W, k, C]``; a layer is one
    grouped convolution with ``groups = k``."""

    def __init__(self, arch: str, kwargs: dict):
        super().__init__(arch, kwargs)
        m = self.probe
        self.convs = list(m.convs)
        self.ndim = 2 if isinstance(self.convs[0], nn.Conv2d) else 1
        self.norms = []
        for i in range(len(self.convs)):
            norm = m.norms[i] if hasattr(m, "norms") else nn.Identity()
            if isinstance(norm, nn.Identity):
                self.norms.append(None)
            elif isinstance(norm, nn.GroupNorm):
                self.norms.append((norm.num_groups, norm.eps, norm.affine))
            else:
                raise Unsupported(f"{arch}: normalization {type(norm).__name__} cannot be stacked "
                                  f"(running statistics)")
        self.pool = getattr(m, "pool", None) if arch != "conv1d" else "flatten"
        self.input_shape = list(m.input_shape)
        self.n_dropout_calls = len(self.convs)
        self.n_classes = m.fc.out_features
        for c in self.convs:
            if c.groups != 1 or c.dilation not in ((1,), (1, 1)) or c.padding_mode != "zeros" \
                    or isinstance(c.padding, str):
                raise Unsupported(f"{arch}: convolution options {c} are not stacked")

    @staticmethod
    def _probe_kwargs(kwargs):
        return {**kwargs, "dropout": 0.0}

    def prepare_data(self, x):
        # [M, C, *sp] -> [M, S, C] (channels last, spatial flattened)
        return x.flatten(2).transpose(1, 2).contiguous()

    def _to_layout(self, g: torch.Tensor) -> torch.Tensor:
        # g: [n, S, k, C] contiguous -> logical [n, k*C, H, W] channels-last
        n, S, k, C = g.shape
        sp = self.input_shape[1:] if self.ndim == 2 else [1, self.input_shape[1]]
        return g.view(n, sp[0], sp[1], k * C).permute(0, 3, 1, 2)

    def gather(self, data, idx):
        return self._to_layout(data[idx.t()].transpose(1, 2).contiguous())

    def shared(self, data, k):
        return self._to_layout(data.unsqueeze(2).expand(-1, -1, k, -1).contiguous())

    def _dropout(self, h: torch.Tensor, k: int, drop: DropCalls) -> torch.Tensor:
        n, kc, H, W = h.shape
        C = kc // k
        key = ("conv", n, C, H, W)
        if key not in drop.cache:
            # each element's flat index in its own network's [n, C, H, W] (or [n, C, L])
            # activation, laid out like h's memory: [n, H, W, 1, C]
            drop.cache[key] = element_index((n, C, H, W), h.device) \
                .permute(0, 2, 3, 1).unsqueeze(3).contiguous()
        mask = dropout_mask(drop.cache[key], drop.next_bases().view(1, 1, 1, k, 1),
                            drop.thr.view(1, 1, 1, k, 1), drop.scale.view(1, 1, 1, k, 1))
        return h * mask.view(n, H, W, kc).permute(0, 3, 1, 2)

    def forward(self, p, x, acts, drop=None):
        h = x
        k = next(iter(p.values())).shape[0]
        for i, conv in enumerate(self.convs):
            w = p[f"convs.{i}.weight"]
            w = w.reshape(k * w.shape[1], *w.shape[2:])
            b = p.get(f"convs.{i}.bias")
            b = b.reshape(-1) if b is not None else None
            if self.ndim == 1:
                w = w.unsqueeze(2)
                stride, pad = (1, conv.stride[0]), (0, conv.padding[0])
            else:
                stride, pad = conv.stride, conv.padding
            h = F.conv2d(h, w, b, stride=stride, padding=pad, groups=k)
            if self.norms[i] is not None:
                groups, eps, affine = self.norms[i]
                nw = p[f"norms.{i}.weight"].reshape(-1) if affine else None
                nb = p[f"norms.{i}.bias"].reshape(-1) if affine else None
                h = F.group_norm(h, k * groups, nw, nb, eps)
            h = _apply_rows(h, acts, 1, conv.out_channels)
            if drop is not None:
                h = self._dropout(h, k, drop)
        n, kc = h.shape[:2]
        C = kc // k
        if self.pool == "flatten":
            # Conv1dNet: x.flatten(1) of [n, C, L] -> [k, n, C*L]
            h = h.reshape(n, k, C, -1).permute(1, 0, 2, 3).reshape(k, n, -1)
        else:
            if self.pool == "avg":
                hw = h.shape[2] * h.shape[3]
                h = halving_sum(h.permute(0, 2, 3, 1).reshape(n, hw, kc), 1) / hw
            else:
                h = h.amax((2, 3))
            h = h.reshape(n, k, C).transpose(0, 1)
        return dense(h, p["fc.weight"], p["fc.bias"])


class _StackedMLP(StackedArch):
    """``mlp``: activations ``[k, n, F]``, layers as batched matmuls."""

    def __init__(self, arch, kwargs):
        super().__init__(arch, kwargs)
        m = self.probe
        self.n_layers = len(m.layers)
        self.bias = m.layers[0].bias is not None
        self.n_dropout_calls = self.n_layers - 1
        self.n_classes = m.layers[-1].out_features

    @staticmethod
    def _probe_kwargs(kwargs):
        return {**kwargs, "dropout": 0.0}

    def prepare_data(self, x):
        return x.reshape(x.shape[0], -1).contiguous()

    def gather(self, data, idx):
        return data[idx]

    def shared(self, data, k):
        return data.unsqueeze(0).expand(k, -1, -1)

    def _linear(self, p, i, h):
        return dense(h, p[f"layers.{i}.weight"], p.get(f"layers.{i}.bias"))

    def forward(self, p, x, acts, drop=None):
        h = x
        k, n = h.shape[:2]
        for i in range(self.n_layers - 1):
            h = _apply_rows(self._linear(p, i, h), acts, 0, 1)
            if drop is not None:
                f = h.shape[2]
                key = ("dense", n, f)
                if key not in drop.cache:
                    drop.cache[key] = element_index((1, n, f), h.device)
                h = h * dropout_mask(drop.cache[key], drop.next_bases().view(k, 1, 1),
                                     drop.thr.view(k, 1, 1), drop.scale.view(k, 1, 1))
        return self._linear(p, self.n_layers - 1, h)


class _StackedSiren(StackedArch):
    """``siren``: inputs are coordinates shared by all networks."""

    task = "inr"

    def __init__(self, arch, kwargs):
        super().__init__(arch, kwargs)
        m = self.probe
        self.n_layers = len(m.layers)
        self.w0, self.w0_first, self.out_offset = m.w0, m.w0_first, m.out_offset

    def shared(self, data, k):
        return data.unsqueeze(0).expand(k, -1, -1)

    def forward(self, p, x, acts=None, drop=None):
        h = x
        for i in range(self.n_layers):
            h = dense(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])
            if i < self.n_layers - 1:
                h = torch.sin((self.w0_first if i == 0 else self.w0) * h)
        return h + self.out_offset


_STACKED = {"cnn": _StackedConv, "small_cnn": _StackedConv, "conv1d": _StackedConv,
            "mlp": _StackedMLP, "siren": _StackedSiren}
_CACHE: dict[str, StackedArch | Unsupported] = {}


def stacked_arch(arch: str, shared_kwargs: dict) -> StackedArch:
    """The stacked form of ``arch`` (kwargs without the per-network ones), or raise
    :class:`Unsupported` with the reason."""
    key = arch + json.dumps(shared_kwargs, sort_keys=True)
    if key not in _CACHE:
        try:
            if arch not in _STACKED:
                raise Unsupported(f"no stacked form of architecture {arch!r} "
                                  f"(stacked: {', '.join(sorted(_STACKED))})")
            _CACHE[key] = _STACKED[arch](arch, shared_kwargs)
        except Unsupported as e:
            _CACHE[key] = e
        except Exception as e:  # the architecture does not even build: report it
            _CACHE[key] = Unsupported(f"{arch}: {type(e).__name__}: {e}")
    r = _CACHE[key]
    if isinstance(r, Unsupported):
        raise r
    return r


def activation_module(name: str | None) -> nn.Module:
    return nn.Identity() if name is None else make_activation(name)
