"""Property test: the symmetries of many small random models hold behaviourally.

A seeded grammar builds small ``nn.Module``s that are shape-consistent by construction,
for any batch size and (unless their head flattens a fixed-size map) any sequence length
or image size in the tested range. Each model is traced once (``WeightSpace.of``) and
``verify`` applies every permutation, scaling and sign flip the weight space offers at
the traced shape, at another batch size and at a longer and a shorter sequence / image. Every false symmetry the propagation rules claim is a
failure that names the seed, the model's blocks and the group.

Ops the grammar draws from: Linear, Conv1d/Conv2d (plain, grouped, depthwise), cat of
blocks from the same op and from different ops, chunk, split, integer index/select,
slices of activations and of parameters (positional tables sliced to the input length),
repeat, expand, reductions with keepdim (mean/amax/sum over channels or time), view /
reshape / permute / transpose / movedim / flatten, residual adds, LayerNorm / BatchNorm /
GroupNorm / RMSNorm, multi-head attention through ``F.scaled_dot_product_attention`` with
heads split by ``view`` (fused or separate q/k/v, grouped key/value heads repeated,
differential attention's chunks, repeats and subtraction along the head axis), advanced
indexing of channels with a constant list,
relu / gelu / tanh / sin / sigmoid, and products with learned per-channel parameters.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metanet import WeightSpace
from metanet.space.verify import SymmetryError

BATCH, T0, H0 = 2, 5, 6          # traced shapes: batch 2, sequences of 5, 6x6 images
T_LONG, H_LONG = 7, 8            # other shapes every model is checked at
T_SHORT, H_SHORT = 4, 5
T_MAX = max(T0, T_LONG)
CHUNK = 10                       # models per test item
DEFAULT_CHUNKS = 20              # 200 models in the default run
SLOW_CHUNKS = 60                 # 600 more under -m slow

ACTS = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh, "sin": torch.sin,
        "sigmoid": torch.sigmoid}


# -- the grammar's state -----------------------------------------------------------------------
@dataclass
class St:
    """Where the model being built stands: the activation's layout ("seq" (B, T, C),
    "img" (B, C, H, W) or "sig" (B, C, L)), its channels, how its length differs from
    the input's (``extra``: +1 per class token, -1 per dropped step), whether a
    positional table may be added (length = input length + extra), how many 2x poolings
    were applied, and whether the head fixes the spatial size."""

    layout: str
    c: int
    extra: int = 0
    pos_ok: bool = True
    pooled: int = 0
    depth: int = 0
    fixed_size: bool = False
    ops: list[str] = field(default_factory=list)

    @property
    def cd(self) -> int:
        return -1 if self.layout == "seq" else 1


def _pick(rng: random.Random, options: dict):
    names = list(options)
    return options[rng.choices(names, weights=[options[n][0] for n in names])[0]][1]


def _divisors(c: int) -> list[int]:
    return [d for d in range(2, c) if c % d == 0]


class Act(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x):
        return ACTS[self.name](x)


def _act(rng: random.Random, st: St) -> Act:
    name = rng.choice(sorted(ACTS))
    st.ops.append(name)
    return Act(name)


class ChannelLinear(nn.Module):
    """A Linear over the channel axis of any layout (moving channels last and back for
    images and signals)."""

    def __init__(self, c_in, c_out, layout):
        super().__init__()
        self.lin, self.layout = nn.Linear(c_in, c_out), layout

    def forward(self, x):
        if self.layout == "seq":
            return self.lin(x)
        if self.layout == "img":
            return self.lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.lin(x.movedim(1, -1)).movedim(-1, 1)


def _proj(rng: random.Random, st: St, c_out: int) -> nn.Module:
    """A channel map c -> c_out: Linear for sequences; Conv (k 1 or 3) or a channels-last
    Linear for images and signals."""
    if st.layout == "seq" or rng.random() < 0.3:
        st.ops.append("linear")
        return ChannelLinear(st.c, c_out, st.layout)
    k = rng.choice([1, 3])
    conv = nn.Conv2d if st.layout == "img" else nn.Conv1d
    st.ops.append("conv2d" if st.layout == "img" else "conv1d")
    return conv(st.c, c_out, k, padding=k // 2)


# -- blocks that keep the layout and the length ------------------------------------------------
class Chain(nn.Module):
    def __init__(self, *mods):
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        for m in self.mods:
            x = m(x)
        return x


def b_linear_act(rng, st):
    c_out = rng.randint(2, 6)
    m = Chain(_proj(rng, st, c_out), _act(rng, st))
    st.c = c_out
    return m


class Grouped(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def b_grouped_conv(rng, st):
    """Depthwise or grouped convolution (images and signals)."""
    conv = nn.Conv2d if st.layout == "img" else nn.Conv1d
    g = rng.choice(_divisors(st.c) + [st.c])
    c_out = g * rng.choice([1, 2])
    st.ops.append("grouped_conv")
    m = Chain(conv(st.c, c_out, 3, padding=1, groups=g), _act(rng, st))
    st.c = c_out
    return m


class Transposed(nn.Module):
    """Apply ``inner`` to a sequence with its channels on axis 1 (norms and convs over
    channels of a (B, T, C) tensor)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.transpose(1, 2)).transpose(1, 2)


class ChannelsLast(nn.Module):
    """Apply ``inner`` (a LayerNorm/RMSNorm) over the channels of an image or signal."""

    def __init__(self, inner, layout):
        super().__init__()
        self.inner, self.layout = inner, layout

    def forward(self, x):
        if self.layout == "img":
            return self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.inner(x.transpose(1, 2)).transpose(1, 2)


def b_norm(rng, st):
    c = st.c
    kinds = ["layer_norm", "rms_norm", "batch_norm", "group_norm"]
    kind = rng.choice(kinds)
    st.ops.append(kind)
    if kind == "layer_norm":
        norm = nn.LayerNorm(c)
    elif kind == "rms_norm":
        norm = nn.RMSNorm(c)
    elif kind == "group_norm":
        norm = nn.GroupNorm(rng.choice([1] + _divisors(c) + [c]), c)     # 1: layer norm, c: instance norm
    else:
        norm = nn.BatchNorm2d(c) if st.layout == "img" else nn.BatchNorm1d(c)
    if st.layout == "seq":
        return norm if kind in ("layer_norm", "rms_norm") else Transposed(norm)
    return ChannelsLast(norm, st.layout) if kind in ("layer_norm", "rms_norm") else norm


class Scale(nn.Module):
    """Product with a learned per-channel parameter (layer scale), optionally plus a shift."""

    def __init__(self, c, layout, shift):
        super().__init__()
        shape = (c,) if layout == "seq" else (c, 1, 1) if layout == "img" else (c, 1)
        self.gamma = nn.Parameter(torch.randn(shape))
        self.beta = nn.Parameter(torch.randn(shape)) if shift else None

    def forward(self, x):
        return x * self.gamma + (self.beta if self.beta is not None else 0)


def b_scale(rng, st):
    st.ops.append("param_mul")
    return Scale(st.c, st.layout, rng.random() < 0.5)


def b_act(rng, st):
    return _act(rng, st)


class CatSame(nn.Module):
    def __init__(self, a, b, cd):
        super().__init__()
        self.a, self.b, self.cd = a, b, cd

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], self.cd)


def b_cat_same(rng, st):
    """Two projections of one input concatenated along channels."""
    ca, cb = rng.randint(1, 4), rng.randint(1, 4)
    st.ops.append("cat_same")
    a, b = _proj(rng, st, ca), _proj(rng, st, cb)
    st.c = ca + cb
    return CatSame(a, b, st.cd)


class CatDiff(nn.Module):
    """Channel concatenation of blocks made by different ops."""

    def __init__(self, kind, cd, proj=None, act=None):
        super().__init__()
        self.kind, self.cd, self.proj, self.act = kind, cd, proj, act

    def forward(self, x):
        cd = self.cd
        if self.kind == "proj_act":
            parts = [self.proj(x), self.act(x)]
        elif self.kind == "x_mean":
            parts = [x, x.mean(cd, keepdim=True)]
        elif self.kind == "mean_amax":                  # CBAM-style channel statistics
            parts = [x.mean(cd, keepdim=True), x.amax(cd, keepdim=True)]
        elif self.kind == "proj_sum":
            parts = [self.proj(x), x.sum(cd, keepdim=True)]
        else:                                           # "proj_slice": a projection and a slice of x
            parts = [self.proj(x), x.narrow(cd, 0, 1)]
        return torch.cat(parts, cd)


def b_cat_diff(rng, st):
    kind = rng.choice(["proj_act", "x_mean", "mean_amax", "proj_sum", "proj_slice"])
    st.ops.append("cat_diff")
    st.ops.append({"x_mean": "reduce_mean", "mean_amax": "reduce_amax", "proj_sum": "reduce_sum",
                   "proj_slice": "slice_act"}.get(kind, "cat_diff"))
    k = rng.randint(1, 4)
    proj = _proj(rng, st, k) if kind.startswith("proj") else None
    act = _act(rng, st) if kind == "proj_act" else None
    st.c = {"proj_act": k + st.c, "x_mean": st.c + 1, "mean_amax": 2, "proj_sum": k + 1,
            "proj_slice": k + 1}[kind]
    return CatDiff(kind, st.cd, proj, act)


class Chunked(nn.Module):
    def __init__(self, proj, kind, cd):
        super().__init__()
        self.proj, self.kind, self.cd = proj, kind, cd

    def forward(self, x):
        a, b = self.proj(x).chunk(2, self.cd)
        if self.kind == "glu":
            return a * torch.sigmoid(b)
        return torch.cat([b, torch.tanh(a)], self.cd)   # "swap"


def b_chunk(rng, st):
    k = rng.randint(1, 3)
    st.ops.append("chunk")
    kind = rng.choice(["glu", "swap"])
    proj = _proj(rng, st, 2 * k)
    st.c = k if kind == "glu" else 2 * k
    return Chunked(proj, kind, st.cd)


class Split(nn.Module):
    def __init__(self, sizes, kind, cd):
        super().__init__()
        self.sizes, self.kind, self.cd = sizes, kind, cd

    def forward(self, x):
        a, b = x.split(self.sizes, self.cd)
        if self.kind == "swap":
            return torch.cat([b, a], self.cd)
        if self.kind == "mixed":
            return torch.cat([torch.relu(a), torch.tanh(b)], self.cd)
        if self.kind == "gate":
            return a * torch.sigmoid(b.sum(self.cd, keepdim=True))
        return a                                        # "drop"


def b_split(rng, st):
    if st.c < 2:
        return b_linear_act(rng, st)
    k = rng.randint(1, st.c - 1)
    kind = rng.choice(["swap", "mixed", "gate", "drop"])
    st.ops.append("split")
    m = Split([k, st.c - k], kind, st.cd)
    st.c = k if kind in ("gate", "drop") else st.c
    return m


class Select(nn.Module):
    """Integer indexing of one channel, broadcast back over the channels."""

    def __init__(self, j, kind, cd):
        super().__init__()
        self.j, self.kind, self.cd = j, kind, cd

    def forward(self, x):
        if self.kind == "select":
            g = x.select(self.cd, self.j).unsqueeze(self.cd)
        elif self.kind == "index":
            g = x[..., self.j:self.j + 1] if self.cd == -1 else x[:, self.j:self.j + 1]
        else:                                           # "narrow"
            g = x.narrow(self.cd, self.j, 1)
        return x * torch.sigmoid(g)


def b_select(rng, st):
    st.ops.append("select")
    return Select(rng.randrange(st.c), rng.choice(["select", "index", "narrow"]), st.cd)


class SliceChannels(nn.Module):
    def __init__(self, start, cd):
        super().__init__()
        self.start, self.cd = start, cd

    def forward(self, x):
        return x[..., self.start:] if self.cd == -1 else x[:, self.start:]


def b_slice_channels(rng, st):
    if st.c < 3:
        return b_scale(rng, st)
    start = rng.randint(1, st.c - 2)
    st.ops.append("slice_act")
    st.c -= start
    return SliceChannels(start, st.cd)


class Repeat(nn.Module):
    def __init__(self, r, layout):
        super().__init__()
        self.r, self.layout = r, layout

    def forward(self, x):
        if self.layout == "seq":
            return x.repeat(1, 1, self.r)
        if self.layout == "img":
            return x.repeat(1, self.r, 1, 1)
        return x.repeat(1, self.r, 1)


def b_repeat(rng, st):
    r = 2 if st.c <= 4 else 1
    if r == 1:
        return b_scale(rng, st)
    st.ops.append("repeat")
    st.c *= r
    return Repeat(r, st.layout)


class ReduceKeep(nn.Module):
    """Reductions that keep a size-1 axis, broadcast back."""

    def __init__(self, kind, cd, time_axis):
        super().__init__()
        self.kind, self.cd, self.time_axis = kind, cd, time_axis

    def forward(self, x):
        if self.kind == "center":
            return x - x.mean(self.cd, keepdim=True)
        if self.kind == "amax":
            return x * torch.sigmoid(x.amax(self.cd, keepdim=True))
        if self.kind == "sum":
            return x + x.sum(self.cd, keepdim=True)
        return x + x.mean(self.time_axis, keepdim=True)       # "time_mean"


def b_reduce(rng, st):
    kind = rng.choice(["center", "amax", "sum", "time_mean"])
    st.ops.append({"center": "reduce_mean", "amax": "reduce_amax", "sum": "reduce_sum",
                   "time_mean": "reduce_mean"}[kind])
    time_axis = 1 if st.layout == "seq" else -1
    return ReduceKeep(kind, st.cd, time_axis)


class Shuffle(nn.Module):
    """Channel shuffle by view + transpose + reshape (c = g * k)."""

    def __init__(self, g, k, layout, kind):
        super().__init__()
        self.g, self.k, self.layout, self.kind = g, k, layout, kind

    def forward(self, x):
        if self.layout == "seq":
            B, T, C = x.shape
            y = x.view(B, T, self.g, self.k)
            return y.transpose(2, 3).reshape(B, T, C) if self.kind == "shuffle" else y.mean(-1)
        B, C = x.shape[:2]
        rest = x.shape[2:]
        y = x.reshape(B, self.g, self.k, *rest)
        return y.transpose(1, 2).flatten(1, 2) if self.kind == "shuffle" else y.amax(2)


def b_shuffle(rng, st):
    if not _divisors(st.c):
        return b_norm(rng, st)
    g = rng.choice(_divisors(st.c))
    kind = rng.choice(["shuffle", "group_reduce"])
    st.ops.append("view_shuffle" if kind == "shuffle" else "view_reduce")
    m = Shuffle(g, st.c // g, st.layout, kind)
    st.c = st.c if kind == "shuffle" else g
    return m


class Residual(nn.Module):
    def __init__(self, inner, proj=None):
        super().__init__()
        self.inner, self.proj = inner, proj

    def forward(self, x):
        h = self.inner(x)
        return x + (self.proj(h) if self.proj is not None else h)


def b_residual(rng, st):
    if st.depth >= 2:
        return b_linear_act(rng, st)
    st.ops.append("residual")
    inner_st = replace(st, depth=st.depth + 1, ops=st.ops)
    mods = [_block(rng, inner_st, keep_length=True) for _ in range(rng.randint(1, 2))]
    proj = None
    if inner_st.c != st.c:
        proj = _proj(rng, inner_st, st.c)
    return Residual(Chain(*mods), proj)


class Attention(nn.Module):
    """Multi-head attention with heads split by view: fused qkv (split or chunk) or
    separate projections; key/value heads optionally fewer and repeated (grouped)."""

    def __init__(self, c, heads, kv_heads, dh, fused, split_kind, causal):
        super().__init__()
        self.h, self.kvh, self.dh, self.causal = heads, kv_heads, dh, causal
        self.fused, self.split_kind = fused, split_kind
        q, kv = heads * dh, kv_heads * dh
        if fused:
            self.qkv = nn.Linear(c, q + 2 * kv)
        else:
            self.q, self.k, self.v = nn.Linear(c, q), nn.Linear(c, kv), nn.Linear(c, kv)
        self.out = nn.Linear(q, c)

    def forward(self, x):
        B, T, _ = x.shape
        if self.fused:
            y = self.qkv(x)
            if self.split_kind == "chunk" and self.kvh == self.h:
                q, k, v = y.chunk(3, -1)
            else:
                q, k, v = y.split([self.h * self.dh, self.kvh * self.dh, self.kvh * self.dh], -1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(B, T, self.h, self.dh).transpose(1, 2)
        k = k.view(B, T, self.kvh, self.dh).transpose(1, 2)
        v = v.view(B, T, self.kvh, self.dh).transpose(1, 2)
        if self.kvh != self.h:
            k = k.repeat_interleave(self.h // self.kvh, 1) if self.split_kind == "interleave" \
                else k.repeat(1, self.h // self.kvh, 1, 1)
            v = v.repeat_interleave(self.h // self.kvh, 1) if self.split_kind == "interleave" \
                else v.repeat(1, self.h // self.kvh, 1, 1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(B, T, self.h * self.dh))


def b_attention(rng, st):
    if st.layout != "seq":
        return b_linear_act(rng, st)
    heads = rng.choice([1, 2, 2, 3])
    kv_heads = rng.choice([d for d in range(1, heads + 1) if heads % d == 0])
    fused = rng.random() < 0.5
    split_kind = rng.choice(["split", "chunk", "interleave"])
    st.ops.append("attention")
    if kv_heads != heads:
        st.ops.append("repeat")
    if fused:
        st.ops.append("chunk" if split_kind == "chunk" and kv_heads == heads else "split")
    m = Attention(st.c, heads, kv_heads, rng.choice([1, 2, 3]), fused, split_kind, rng.random() < 0.5)
    return Residual(m) if rng.random() < 0.7 else m


class DiffAttention(nn.Module):
    """Differential attention (as in Hugging Face's DiffLlama): value heads chunked in two
    along the head axis, concatenated along the head dim and repeated back to the head
    count; the attention output chunked along heads and the halves subtracted with a
    learned lambda (from per-head-dim parameters summed over the head dim), then an
    RMSNorm over twice the head dim."""

    def __init__(self, c, heads, dh):
        super().__init__()
        self.h, self.dh = heads, dh                     # heads is even
        self.q, self.k, self.v = (nn.Linear(c, heads * dh) for _ in range(3))
        self.lq1, self.lk1, self.lq2, self.lk2 = (nn.Parameter(0.3 * torch.randn(dh)) for _ in range(4))
        self.norm = nn.RMSNorm(2 * dh)
        self.out = nn.Linear(heads * dh, c)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)
        k = self.k(x).view(B, T, self.h, self.dh).transpose(1, 2)
        v = self.v(x).view(B, T, self.h, self.dh).transpose(1, 2)
        v = torch.cat(torch.chunk(v, 2, dim=1), dim=-1).repeat(1, 2, 1, 1)   # (B, h, T, 2 dh)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y1, y2 = torch.chunk(y, 2, dim=1)
        lam = torch.exp(torch.sum(self.lq1 * self.lk1, -1)) - torch.exp(torch.sum(self.lq2 * self.lk2, -1)) + 0.2
        y = 0.8 * self.norm(y1 - lam * y2)
        return self.out(y.transpose(1, 2).reshape(B, T, self.h * self.dh))


def b_diff_attention(rng, st):
    if st.layout != "seq":
        return b_chunk(rng, st)
    st.ops += ["diff_attention", "chunk", "repeat", "cat_same", "rms_norm"]
    m = DiffAttention(st.c, rng.choice([2, 4]), rng.choice([1, 2]))
    return Residual(m) if rng.random() < 0.5 else m


class IndexList(nn.Module):
    """Advanced indexing of the channel axis with a constant list (reorders, drops and
    repeats channels)."""

    def __init__(self, idx, cd):
        super().__init__()
        self.idx, self.cd = idx, cd

    def forward(self, x):
        return x[..., self.idx] if self.cd == -1 else x[:, self.idx]


def b_index_list(rng, st):
    idx = [rng.randrange(st.c) for _ in range(rng.randint(2, 5))]
    st.ops.append("index_list")
    st.c = len(idx)
    return IndexList(idx, st.cd)


class SqueezeExcite(nn.Module):
    def __init__(self, c, r, layout):
        super().__init__()
        conv = nn.Conv2d if layout == "img" else nn.Conv1d
        self.reduce, self.expand = conv(c, r, 1), conv(r, c, 1)
        self.dims = (2, 3) if layout == "img" else (2,)

    def forward(self, x):
        s = torch.relu(self.reduce(x.mean(self.dims, keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


def b_se(rng, st):
    if st.layout == "seq":
        return b_reduce(rng, st)
    st.ops.append("reduce_mean")
    return SqueezeExcite(st.c, rng.randint(1, 3), st.layout)


class SpatialAttention(nn.Module):
    """CBAM: a conv over the channel mean and max, concatenated, gates every channel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(s))


def b_cbam(rng, st):
    if st.layout != "img":
        return b_cat_diff(rng, st)
    st.ops += ["cat_diff", "reduce_amax"]
    return SpatialAttention()


class MeanExpand(nn.Module):
    """The mean over time / space, expanded back and mixed in."""

    def __init__(self, layout):
        super().__init__()
        self.layout = layout

    def forward(self, x):
        if self.layout == "seq":
            return x * x.mean(1, keepdim=True).expand(-1, x.shape[1], -1)
        dims = (2, 3) if self.layout == "img" else (2,)
        return x - x.mean(dims, keepdim=True).expand_as(x)


def b_mean_expand(rng, st):
    st.ops += ["expand", "reduce_mean"]
    return MeanExpand(st.layout)


class Pool(nn.Module):
    def __init__(self, kind, layout):
        super().__init__()
        self.kind, self.layout = kind, layout

    def forward(self, x):
        if self.layout == "img":
            return F.max_pool2d(x, 2) if self.kind == "max" else F.avg_pool2d(x, 2)
        return F.max_pool1d(x, 2) if self.kind == "max" else F.avg_pool1d(x, 2)


def b_pool(rng, st):
    if st.layout == "seq" or st.pooled >= 1:
        return b_act(rng, st)
    st.pooled += 1
    st.pos_ok = False
    st.ops.append("pool")
    return Pool(rng.choice(["max", "avg"]), st.layout)


# -- blocks that change the length or the layout ---------------------------------------------
class PositionalSlice(nn.Module):
    """A positional table of P >= the longest input's length, sliced to the input's."""

    def __init__(self, c, p, layout, kind):
        super().__init__()
        self.layout, self.kind, self.p = layout, kind, p
        shape = {"seq": (p, c) if kind != "batched" else (1, p, c), "sig": (c, p), "img": (1, c, p, p)}[layout]
        self.pos = nn.Parameter(torch.randn(shape))

    def forward(self, x):
        if self.layout == "img":
            return x + self.pos[:, :, : x.shape[2], : x.shape[3]]
        n = x.shape[1] if self.layout == "seq" else x.shape[2]
        if self.layout == "sig":
            return x + self.pos[:, :n]
        if self.kind == "batched":
            return x + self.pos[:, :n]
        if self.kind == "tail":
            return x + self.pos[self.p - n:]
        return x + self.pos[:n]


def b_positional(rng, st):
    if not st.pos_ok:
        return b_scale(rng, st)
    longest = (H_LONG if st.layout == "img" else T_MAX) + st.extra
    st.ops.append("param_slice")
    return PositionalSlice(st.c, longest + rng.randint(0, 2), st.layout,
                           rng.choice(["head", "batched", "tail"]))


class ClassToken(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, c))

    def forward(self, x):
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)


def b_class_token(rng, st):
    if st.layout != "seq":
        return b_mean_expand(rng, st)
    st.extra += 1
    st.ops += ["expand", "cat_diff"]
    return ClassToken(st.c)


class DropFirst(nn.Module):
    def __init__(self, layout):
        super().__init__()
        self.layout = layout

    def forward(self, x):
        return x[:, 1:] if self.layout == "seq" else x[..., 1:]


def b_drop_first(rng, st):
    if st.layout == "img" or st.extra < -1 or not st.pos_ok:
        return b_act(rng, st)
    st.extra -= 1
    st.ops.append("slice_time")
    return DropFirst(st.layout)


class ToSequence(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if self.kind == "flatten":           # image (B, C, H, W) -> (B, H*W, C)
            return x.flatten(2).transpose(1, 2)
        return x.transpose(1, 2)             # signal <-> sequence


def b_relayout(rng, st):
    if st.layout == "img":
        st.layout, st.pos_ok = "seq", False
        st.ops.append("flatten")
        return ToSequence("flatten")
    st.ops.append("transpose")
    st.layout = "sig" if st.layout == "seq" else "seq"
    return ToSequence("transpose")


BLOCKS = {  # name -> (weight, maker, keeps the length)
    "linear_act": (3, b_linear_act, True),
    "grouped_conv": (2, b_grouped_conv, True),
    "norm": (2, b_norm, True),
    "scale": (1, b_scale, True),
    "act": (1, b_act, True),
    "cat_same": (1, b_cat_same, True),
    "cat_diff": (2, b_cat_diff, True),
    "chunk": (1, b_chunk, True),
    "split": (1, b_split, True),
    "select": (1, b_select, True),
    "slice_channels": (1, b_slice_channels, True),
    "repeat": (1, b_repeat, True),
    "reduce": (1, b_reduce, True),
    "shuffle": (3, b_shuffle, True),
    "residual": (2, b_residual, True),
    "attention": (2, b_attention, True),
    "diff_attention": (1, b_diff_attention, True),
    "index_list": (1, b_index_list, True),
    "se": (1, b_se, True),
    "cbam": (1, b_cbam, True),
    "mean_expand": (1, b_mean_expand, True),
    "pool": (1, b_pool, False),
    "positional": (1, b_positional, True),
    "class_token": (1, b_class_token, False),
    "drop_first": (1, b_drop_first, False),
    "relayout": (2, b_relayout, False),
}


def _block(rng: random.Random, st: St, keep_length: bool = False) -> nn.Module:
    names = [n for n, (_, _, keeps) in BLOCKS.items() if keeps or not keep_length]
    if st.layout == "seq":
        names = [n for n in names if n not in ("grouped_conv", "pool")]
    name = rng.choices(names, weights=[BLOCKS[n][0] for n in names])[0]
    return BLOCKS[name][1](rng, st)


# -- stems and heads -----------------------------------------------------------------------------
class TokenStem(nn.Module):
    def __init__(self, c, positions):
        super().__init__()
        self.embed = nn.Embedding(11, c)
        self.positions = positions
        if positions == "embedding":
            self.pos = nn.Embedding(T_MAX + 2, c)
        elif positions == "table":
            self.pos = nn.Parameter(torch.randn(1, T_MAX + 2, c))

    def forward(self, tokens):
        x = self.embed(tokens)
        if self.positions == "embedding":
            return x + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        if self.positions == "table":
            return x + self.pos[:, : tokens.shape[1]]
        return x


class Head(nn.Module):
    def __init__(self, kind, layout, c, n_out, flat=None, second=False):
        super().__init__()
        self.kind, self.layout, self.second = kind, layout, second
        if kind == "dense":
            self.fc = (nn.Linear(c, n_out) if layout == "seq" else
                       nn.Conv2d(c, n_out, 1) if layout == "img" else nn.Conv1d(c, n_out, 1))
        else:
            self.fc = nn.Linear(flat if kind == "flatten" else c, n_out)

    def forward(self, x):
        t = 1 if self.layout == "seq" else -1
        dims = (2, 3) if self.layout == "img" else t
        if self.kind == "mean":
            z = x.mean(dims)
        elif self.kind == "amax":
            z = x.amax(dims)
        elif self.kind == "sum":
            z = x.sum(dims)
        elif self.kind == "first":
            z = x[:, 0]
        elif self.kind == "last":
            z = x[:, -1]
        elif self.kind == "flatten":
            z = x.flatten(1)
        else:                                     # "dense": an output per position
            z = x
        out = self.fc(z)
        return (out, x.mean(dims)) if self.second else out


class RandomNet(nn.Module):
    def __init__(self, stem, blocks, head):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head

    def forward(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


@dataclass
class Case:
    seed: int
    model: nn.Module
    inputs: tuple
    others: list            # inputs of other shapes the model accepts
    ops: list[str]

    def describe(self) -> str:
        return f"seed {self.seed} [{' > '.join(self.ops)}]"


def _inputs(kind: str, batch: int, n: int, gen: torch.Generator) -> tuple:
    if kind == "tokens":
        return (torch.randint(0, 11, (batch, n), generator=gen),)
    if kind == "features":
        return (torch.randn(batch, n, 3, generator=gen),)
    if kind == "image":
        return (torch.randn(batch, 3, n, n, generator=gen),)
    return (torch.randn(batch, 2, n, generator=gen),)        # "signal"


@torch.no_grad()
def _randomize(model: nn.Module) -> None:
    """Random running statistics and affine parameters for every norm (defaults of ones
    and zeros would hide errors)."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
            if m.weight is not None:
                m.weight.normal_(1, 0.3)
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.3)


def build(seed: int) -> Case:
    """The random model of ``seed``, its traced inputs and the inputs of other shapes."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    kind = rng.choice(["tokens", "features", "image", "signal"])
    c = rng.randint(2, 5)
    layout = {"tokens": "seq", "features": "seq", "image": "img", "signal": "sig"}[kind]
    st = St(layout, c)
    if kind == "tokens":
        positions = rng.choice(["none", "embedding", "table"])
        stem = TokenStem(c, positions)
        st.ops += ["embedding"] + (["param_slice"] if positions == "table" else [])
    elif kind == "features":
        stem, st.ops = nn.Linear(3, c), ["linear"]
    elif kind == "image":
        stem, st.ops = nn.Conv2d(3, c, 3, padding=1), ["conv2d"]
    else:
        stem, st.ops = nn.Conv1d(2, c, 3, padding=1), ["conv1d"]
    blocks = [_block(rng, st) for _ in range(rng.randint(2, 4))]
    # the head: pooled, a position picked by an integer index, dense, or a fixed-size flatten
    heads = ["mean", "amax", "sum", "dense"] + (["first", "last"] if st.layout == "seq" else [])
    if st.layout != "seq" and rng.random() < 0.15:
        heads = ["flatten"]
    head_kind = rng.choice(heads)
    st.ops.append(f"head:{head_kind}")
    flat = None
    gen = torch.Generator().manual_seed(seed)
    n0 = H0 if kind == "image" else T0
    x = _inputs(kind, BATCH, n0, gen)
    if head_kind == "flatten":
        st.fixed_size = True
        with torch.no_grad():
            body = nn.Sequential(stem, *blocks).eval()
            flat = body(*x)[0].numel()
    head = Head(head_kind, st.layout, st.c, 3, flat, second=rng.random() < 0.15)
    model = RandomNet(stem, blocks, head)
    _randomize(model)
    model.eval()
    others = [_inputs(kind, BATCH + 1, n0, gen)]
    if not st.fixed_size:
        others.append(_inputs(kind, BATCH, H_LONG if kind == "image" else T_LONG, gen))
        others.append(_inputs(kind, BATCH, H_SHORT if kind == "image" else T_SHORT, gen))
    return Case(seed, model, x, others, st.ops)


# -- the property -----------------------------------------------------------------------------------
def check(seed: int) -> tuple[str | None, int]:
    """None if every symmetry of the random model of ``seed`` holds, else what failed;
    and the number of neuron groups checked."""
    case = build(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WeightSpace.of(case.model, case.inputs, cache=False)
    if not ws.groups:
        return None, 0
    try:
        report = ws.verify(case.model, case.inputs, n=5, shapes=case.others)
    except SymmetryError as err:
        return f"{case.describe()}: {err}", len(ws.groups)
    assert len(report.shapes) == 1 + len(case.others), report
    return None, len(ws.groups)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is several times faster than two on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_chunk(seeds):
    failures, with_groups = [], 0
    for seed in seeds:
        try:
            problem, groups = check(seed)
        except Exception as err:  # a rule's or the tracer's exception: report it with the seed
            problem, groups = f"seed {seed}: {type(err).__name__}: {err}", 1
        with_groups += groups > 0
        if problem:
            failures.append(problem)
    assert not failures, f"{len(failures)} of {len(seeds)} random models have false symmetries:\n" + \
        "\n".join(failures)
    # the property is not vacuous: many models have neuron groups to check (some have none,
    # soundly: hidden features returned as an output, a constant index list that repeats
    # channels; 4 of 10 in the worst chunk of 800)
    assert with_groups >= 0.3 * len(seeds), f"only {with_groups} of {len(seeds)} models have neuron groups"


@pytest.mark.parametrize("chunk", range(DEFAULT_CHUNKS))
def test_random_models_keep_their_function(chunk):
    run_chunk(range(chunk * CHUNK, (chunk + 1) * CHUNK))


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(DEFAULT_CHUNKS, DEFAULT_CHUNKS + SLOW_CHUNKS))
def test_random_models_keep_their_function_slow(chunk):
    run_chunk(range(chunk * CHUNK, (chunk + 1) * CHUNK))


# Seeds of the default run whose models the propagation rules before the rewrite of issue
# 14 (commit c05aaad) got wrong: 62 of 200, most often a positional table sliced to the
# input length (its unused rows made a group), concatenated channel statistics, channel
# slices and selects, chunked or split attention heads, and scaling through products with
# parameters. They are in the default run; the slow run checks them one by one too.
FOUND_FALSE_SYMMETRIES = (
    3, 4, 13, 19, 23, 27, 28, 29, 32, 34, 35, 37, 42, 43, 44, 53, 54, 56, 57, 58, 61, 66,
    69, 70, 80, 86, 89, 91, 95, 98, 99, 101, 102, 103, 104, 105, 108, 114, 119, 120, 121,
    126, 131, 141, 142, 148, 155, 158, 162, 163, 165, 172, 173, 176, 178, 183, 185, 188,
    191, 195, 197, 199,
)


@pytest.mark.slow
@pytest.mark.parametrize("seed", FOUND_FALSE_SYMMETRIES)
def test_seeds_that_found_false_symmetries(seed):
    problem, _ = check(seed)
    assert problem is None, problem


# Found by this test while the rules were being rewritten (minimised; the random models that
# showed them came from an earlier version of the grammar).
class ParamProduct(nn.Module):
    """Minimised: hidden units times a learned per-channel parameter. Scaling the units
    must not scale the parameter too."""

    def __init__(self, shift):
        super().__init__()
        self.a, self.fc = nn.Linear(3, 4), nn.Linear(4, 3)
        self.g = nn.Parameter(torch.randn(4))
        self.b = nn.Parameter(torch.randn(4)) if shift else None

    def forward(self, x):
        h = torch.relu(self.a(x)) * self.g
        return self.fc(h + self.b if self.b is not None else h)


class CopiesOfOne(nn.Module):
    """Minimised: one channel repeated (or expanded) into copies. The copies may be
    permuted (they are equal) but not scaled or sign-flipped one by one."""

    def __init__(self, how, act):
        super().__init__()
        self.a, self.fc = nn.Linear(3, 1), nn.Linear(4, 3)
        self.how, self.act = how, act

    def forward(self, x):
        h = ACTS[self.act](self.a(x))
        return self.fc(h.repeat(1, 4) if self.how == "repeat" else h.expand(-1, 4))


MINIMISED = {
    "param_product": lambda: ParamProduct(False),
    "param_product_shift": lambda: ParamProduct(True),
    "repeat_one_channel_relu": lambda: CopiesOfOne("repeat", "relu"),
    "repeat_one_channel_tanh": lambda: CopiesOfOne("repeat", "tanh"),
    "expand_one_channel": lambda: CopiesOfOne("expand", "relu"),
}


@pytest.mark.parametrize("name", sorted(MINIMISED))
def test_minimised_false_symmetries(name):
    torch.manual_seed(0)
    model = MINIMISED[name]()
    _randomize(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.normal_(0, 0.3)
    model.eval()
    x = (torch.randn(2, 3),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WeightSpace.of(model, x, cache=False)
    ws.verify(model, x)


GRAMMAR_OPS = {"linear", "conv1d", "conv2d", "grouped_conv", "cat_same", "cat_diff", "chunk", "split",
               "select", "slice_act", "slice_time", "param_slice", "repeat", "expand", "reduce_mean",
               "reduce_amax", "reduce_sum", "view_shuffle", "view_reduce", "transpose", "flatten",
               "residual", "layer_norm", "batch_norm", "group_norm", "rms_norm", "attention",
               "relu", "gelu", "tanh", "sin", "sigmoid", "param_mul", "embedding", "pool",
               "diff_attention", "index_list",
               "head:first", "head:last", "head:flatten", "head:dense"}


def test_default_run_covers_the_grammar():
    """Every op of the grammar occurs in the default run, many times, and every model
    is valid at each of its input shapes."""
    counts: dict[str, int] = {}
    for seed in range(DEFAULT_CHUNKS * CHUNK):
        case = build(seed)
        for op in case.ops:
            counts[op] = counts.get(op, 0) + 1
    missing = {op for op in GRAMMAR_OPS if counts.get(op, 0) < 3}
    assert not missing, f"ops drawn fewer than 3 times in the default run: {sorted(missing)}"
    assert sum(1 for s in range(DEFAULT_CHUNKS * CHUNK) if len(build(s).others) >= 2) >= 150


@pytest.mark.parametrize("seed", range(0, DEFAULT_CHUNKS * CHUNK, 7))
def test_random_models_run_at_every_shape(seed):
    case = build(seed)
    with torch.no_grad():
        for x in [case.inputs] + case.others:
            out = case.model(*x)
            outs = out if isinstance(out, tuple) else (out,)
            assert all(torch.isfinite(o).all() for o in outs)
