"""Architectures for zoos: a registry with uniform constructors (timm-like).

>>> import zoo
>>> net = zoo.create("small_cnn", in_channels=1)        # the Small CNN Zoo's network
>>> sum(p.numel() for p in net.parameters())
4970
>>> zoo.list_models()
['cnn', 'conv1d', 'mlp', 'modelzoo_cnn', 'siren', 'small_cnn', 'tiny_resnet', 'tiny_transformer']

Every model built by :func:`create` carries ``arch_name`` and ``arch_kwargs`` (so the
architecture can be rebuilt from a zoo record) and has ``example_input(batch)``, a zero
tensor of the shape it reads (what ``WeightSpace.of`` needs to trace it).  Constructors
take only JSON-able keyword arguments.

:func:`sample_architecture` draws a random small CNN, ResNet or transformer
(DeepNets-1M style: depth, widths, kernel sizes, strides, norms, activations) and
returns ``(name, kwargs)``.
"""
from __future__ import annotations

import json
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["create", "list_models", "register_model", "sample_architecture", "make_activation",
           "ACTIVATIONS", "NORMS", "arch_key"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None):
    """Decorator: register a constructor (class or function) under ``name``."""

    def deco(fn):
        key = name or fn.__name__
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
    """Build architecture ``name`` with keyword arguments ``kwargs``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    model = _REGISTRY[name](**kwargs)
    model.arch_name = name
    model.arch_kwargs = json.loads(json.dumps(kwargs))
    return model


def arch_key(name: str, kwargs: dict) -> str:
    """A canonical string for an architecture (name + sorted kwargs)."""
    return name + json.dumps(kwargs, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------- building blocks
class Sine(nn.Module):
    def forward(self, x):
        return torch.sin(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU, "elu": nn.ELU, "selu": nn.SELU, "leaky_relu": nn.LeakyReLU,
    "relu6": nn.ReLU6, "softplus": nn.Softplus, "identity": nn.Identity, "sin": Sine,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise KeyError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


NORMS = ("none", "batch", "group", "layer", "instance")


def _norm2d(kind: str, channels: int, ndim: int = 2) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels) if ndim == 2 else nn.BatchNorm1d(channels)
    if kind == "group":
        groups = math.gcd(channels, 4) if channels % 4 == 0 else 1
        return nn.GroupNorm(groups, channels)
    if kind == "layer":  # LayerNorm over channels (GroupNorm with one group)
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    raise KeyError(f"unknown norm {kind!r}; known: {', '.join(NORMS)}")


def _as_list(v, n: int) -> list:
    if isinstance(v, (list, tuple)):
        if len(v) != n:
            raise ValueError(f"expected {n} values, got {list(v)}")
        return list(v)
    return [v] * n


# ----------------------------------------------------------------------------- models
@register_model("mlp")
class MLP(nn.Module):
    """Fully connected classifier on flattened inputs: ``layers.i`` are Linear."""

    def __init__(self, in_features: int | Sequence[int] = 64, n_classes: int = 10,
                 hidden: Sequence[int] = (64, 64), activation: str = "relu",
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        shape = [in_features] if isinstance(in_features, int) else list(in_features)
        self.input_shape = shape
        dims = [int(np.prod(shape)), *hidden, n_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.drop(self.act(layer(x)))
        return self.layers[-1](x)


@register_model("cnn")
class ConvNet(nn.Module):
    """Plain CNN: ``convs.i`` (+ ``norms.i``) with per-layer widths, kernels and
    strides, global average pooling, a linear head ``fc``.  ``ndim`` 1 or 2."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10,
                 channels: Sequence[int] = (16, 16, 16), kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, padding: int | str | Sequence = "same",
                 activation: str = "relu", norm: str = "none", dropout: float = 0.0,
                 input_size: int | Sequence[int] = 8, ndim: int = 2, pool: str = "avg"):
        super().__init__()
        n = len(channels)
        ks, ss, ps = _as_list(kernel_size, n), _as_list(stride, n), _as_list(padding, n)
        ps = [k // 2 if p == "same" else int(p) for k, p in zip(ks, ps)]
        conv = nn.Conv2d if ndim == 2 else nn.Conv1d
        self.ndim = ndim
        self.input_shape = [in_channels, *_as_list(input_size, ndim)]
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = in_channels
        for c, k, s, p in zip(channels, ks, ss, ps):
            self.convs.append(conv(c_in, c, k, stride=s, padding=p))
            self.norms.append(_norm2d(norm, c, ndim))
            c_in = c
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.fc = nn.Linear(c_in, n_classes)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def forward(self, x):
        for conv, norm in zip(self.convs, self.norms):
            x = self.drop(self.act(norm(conv(x))))
        dims = tuple(range(2, x.dim()))
        x = x.mean(dims) if self.pool == "avg" else x.amax(dims)
        return self.fc(x)


@register_model("small_cnn")
def small_cnn(in_channels: int = 1, n_classes: int = 10, channels: int = 16, n_layers: int = 3,
              kernel_size: int = 3, stride: int = 2, padding: int = 0, activation: str = "relu",
              dropout: float = 0.0, input_size: int = 28) -> ConvNet:
    """The Small CNN Zoo's network (Unterthiner et al. 2020): 3 convolutions of 16
    channels 3x3 stride 2 ('valid' padding), global average pooling, dense to 10.
    4,970 parameters on grayscale input.  For 8x8 digits use ``padding=1``."""
    return ConvNet(in_channels, n_classes, [channels] * n_layers, kernel_size, stride, padding,
                   activation=activation, dropout=dropout, input_size=input_size)


@register_model("conv1d")
class Conv1dNet(nn.Module):
    """The MNIST-1D paper's CNN: Conv1d(1,25,5,s2,p1), Conv1d(25,25,3,s2,p1) x2,
    flatten, Linear(25*5, 10) for length-40 inputs."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, channels: int = 25,
                 kernel_sizes: Sequence[int] = (5, 3, 3), stride: int = 2, padding: int = 1,
                 input_length: int = 40, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.input_shape = [in_channels, input_length]
        self.convs = nn.ModuleList()
        c_in, length = in_channels, input_length
        for k in kernel_sizes:
            self.convs.append(nn.Conv1d(c_in, channels, k, stride=stride, padding=padding))
            length = (length + 2 * padding - k) // stride + 1
            if length < 1:
                raise ValueError(f"input_length {input_length} too short for kernels {kernel_sizes}")
            c_in = channels
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels * length, n_classes)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def forward(self, x):
        for conv in self.convs:
            x = self.drop(self.act(conv(x)))
        return self.fc(x.flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, kernel_size: int, norm: str,
                 act: str):
        super().__init__()
        p = kernel_size // 2
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=p, bias=norm == "none")
        self.norm1 = _norm2d(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size, padding=p, bias=norm == "none")
        self.norm2 = _norm2d(norm, c_out)
        self.act = make_activation(act)
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          _norm2d(norm, c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.shortcut(x))


@register_model("tiny_resnet")
class TinyResNet(nn.Module):
    """A small ResNet: stem conv, stages of basic blocks (width doubles and stride 2
    at each new stage), global average pooling, linear head."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 16,
                 blocks: Sequence[int] = (1, 1), kernel_size: int = 3, norm: str = "batch",
                 activation: str = "relu", input_size: int = 8):
        super().__init__()
        self.input_shape = [in_channels, input_size, input_size]
        self.stem = nn.Conv2d(in_channels, width, kernel_size, padding=kernel_size // 2,
                              bias=norm == "none")
        self.stem_norm = _norm2d(norm, width)
        self.act = make_activation(activation)
        layers, c = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2 ** i
            for j in range(n):
                layers.append(_BasicBlock(c, c_out, 2 if (i > 0 and j == 0) else 1, kernel_size,
                                          norm, activation))
                c = c_out
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c, n_classes)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def forward(self, x):
        x = self.act(self.stem_norm(self.stem(x)))
        x = self.blocks(x)
        return self.fc(x.mean((2, 3)))


@register_model("siren")
class Siren(nn.Module):
    """SIREN (Sitzmann et al. 2020): ``layers.i`` Linear, ``sin(w0 * (W x + b))`` after
    every layer but the last, plus ``out_offset`` on the output (DWSNets' INRs use 0.5).

    ``n_layers`` counts Linear layers (DWSNets' MNIST INRs: 3 layers, hidden 32).
    ``init``: ``"sitzmann"`` (the paper's: first layer U(±1/fan_in), biases
    U(±1/sqrt(fan_in))) or ``"dwsnets"`` (DWSNets' INR code: every layer
    U(±sqrt(6/fan_in)/w0), biases zero)."""

    def __init__(self, in_features: int = 2, out_features: int = 1, hidden: int = 32,
                 n_layers: int = 3, w0: float = 30.0, w0_first: float | None = None,
                 out_offset: float = 0.0, n_points: int = 64, init: str = "sitzmann"):
        super().__init__()
        if n_layers < 2:
            raise ValueError("a SIREN needs at least 2 layers")
        if init not in ("sitzmann", "dwsnets"):
            raise ValueError(f"SIREN init is 'sitzmann' or 'dwsnets', got {init!r}")
        dims = [in_features] + [hidden] * (n_layers - 1) + [out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.w0 = float(w0)
        self.w0_first = float(w0 if w0_first is None else w0_first)
        self.out_offset = float(out_offset)
        self.in_features = in_features
        self.n_points = n_points
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                fan_in = layer.in_features
                bound = 1.0 / fan_in if i == 0 and init == "sitzmann" else math.sqrt(6.0 / fan_in) / self.w0
                layer.weight.uniform_(-bound, bound)
                if init == "sitzmann":
                    layer.bias.uniform_(-1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
                else:
                    layer.bias.zero_()

    def example_input(self, batch: int | None = None) -> torch.Tensor:
        return torch.zeros(self.n_points if batch is None else batch, self.in_features)

    def forward(self, x):
        for i, layer in enumerate(self.layers[:-1]):
            x = torch.sin((self.w0_first if i == 0 else self.w0) * layer(x))
        return self.layers[-1](x) + self.out_offset


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, d // h).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d // h).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // h), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, act: str, norm: str,
                 dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if norm == "layer" else nn.Identity()
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim) if norm == "layer" else nn.Identity()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = make_activation(act)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.fc2(self.act(self.fc1(self.norm2(x)))))


@register_model("tiny_transformer")
class TinyTransformer(nn.Module):
    """A small pre-norm transformer classifier (ViT-like): non-overlapping patch
    embedding (``ndim=2`` images or ``ndim=1`` sequences), learned positions,
    ``depth`` blocks of multi-head attention (separate q/k/v/o projections) and MLP,
    mean pooling, linear head."""

    def __init__(self, in_channels: int = 1, n_classes: int = 10, input_size: int = 8,
                 patch_size: int = 2, dim: int = 32, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 2.0, activation: str = "gelu", norm: str = "layer",
                 dropout: float = 0.0, ndim: int = 2):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} not divisible by patch_size {patch_size}")
        if norm not in ("layer", "none"):
            raise ValueError(f"transformer norm must be 'layer' or 'none', got {norm!r}")
        conv = nn.Conv2d if ndim == 2 else nn.Conv1d
        self.input_shape = [in_channels] + [input_size] * ndim
        self.embed = conv(in_channels, dim, patch_size, stride=patch_size)
        n_tokens = (input_size // patch_size) ** ndim
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, mlp_ratio, activation, norm, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim) if norm == "layer" else nn.Identity()
        self.head = nn.Linear(dim, n_classes)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


@register_model("modelzoo_cnn")
class ModelZooCNN(nn.Module):
    """The CNNs of Schürholt et al.'s Model Zoos (NeurIPS 2022 datasets track), with
    their parameter names (``module_list.i``) so their checkpoints load unchanged.

    ``variant="cnn"`` (MNIST/FashionMNIST/USPS, 28x28): Conv(c,8,5) MaxPool act
    [Drop] Conv(8,6,5) MaxPool act [Drop] Conv(6,4,2) act Flatten Linear(36,20) act
    [Drop] Linear(20,10).  ``variant="cnn3"`` (CIFAR-10/SVHN/STL-10 small zoos,
    32x32): Conv(c,16,3) MaxPool act Drop Conv(16,32,3) MaxPool act Drop Conv(32,15,3)
    MaxPool act Drop Flatten Linear(60,20) act Drop Linear(20,10).  Dropout modules
    take list positions even at p=0 where the original code always added them."""

    def __init__(self, in_channels: int = 1, variant: str = "cnn", activation: str = "tanh",
                 dropout: float = 0.0, n_classes: int = 10):
        super().__init__()
        act = lambda: make_activation(activation)
        m: list[nn.Module] = []
        if variant == "cnn":
            drop = lambda: [nn.Dropout(dropout)] if dropout > 0 else []
            m += [nn.Conv2d(in_channels, 8, 5), nn.MaxPool2d(2, 2), act(), *drop()]
            m += [nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), act(), *drop()]
            m += [nn.Conv2d(6, 4, 2), act(), nn.Flatten(), nn.Linear(36, 20), act(), *drop()]
            m += [nn.Linear(20, n_classes)]
            self.input_shape = [in_channels, 28, 28]
        elif variant == "cnn3":
            drop = lambda: [nn.Dropout(dropout)]
            m += [nn.Conv2d(in_channels, 16, 3), nn.MaxPool2d(2, 2), act(), *drop()]
            m += [nn.Conv2d(16, 32, 3), nn.MaxPool2d(2, 2), act(), *drop()]
            m += [nn.Conv2d(32, 15, 3), nn.MaxPool2d(2, 2), act(), *drop()]
            m += [nn.Flatten(), nn.Linear(60, 20), act(), *drop(), nn.Linear(20, n_classes)]
            self.input_shape = [in_channels, 32, 32]
        else:
            raise ValueError(f"unknown Model Zoos CNN variant {variant!r} (known: cnn, cnn3)")
        self.module_list = nn.ModuleList(m)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros(batch, *self.input_shape)

    def forward(self, x):
        for layer in self.module_list:
            x = layer(x)
        return x


# ---------------------------------------------------------------- architecture sampler
def sample_architecture(rng: np.random.Generator | int, in_channels: int = 1,
                        n_classes: int = 10, input_size: int = 8,
                        families: Sequence[str] = ("cnn", "tiny_resnet", "tiny_transformer"),
                        ) -> tuple[str, dict]:
    """Draw a random small architecture, DeepNets-1M style.

    Returns ``(name, kwargs)`` such that ``create(name, **kwargs)`` rebuilds it; the
    kwargs are plain JSON values, so a zoo record reproduces the architecture.
    Diversity: family, depth, per-layer widths, kernel sizes, strides, norms,
    activations, pooling; transformers vary patch size, width, depth and heads.
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    family = str(rng.choice(list(families)))
    act = str(rng.choice(["relu", "gelu", "silu", "tanh", "leaky_relu", "elu"]))
    base = dict(in_channels=in_channels, n_classes=n_classes, input_size=input_size)
    if family == "cnn":
        depth = int(rng.integers(2, 6))
        channels = [int(rng.choice([8, 12, 16, 24, 32])) for _ in range(depth)]
        kernels = [int(rng.choice([1, 3, 3, 5])) for _ in range(depth)]
        # downsample at most log2(input_size) times
        max_down = max(0, int(math.log2(max(input_size, 1))) - 1)
        strides = [1] * depth
        for i in rng.permutation(depth)[: int(rng.integers(0, min(depth, max_down) + 1))]:
            strides[int(i)] = 2
        return "cnn", dict(base, channels=channels, kernel_size=kernels, stride=strides,
                           activation=act, norm=str(rng.choice(["none", "batch", "group", "layer"])),
                           pool=str(rng.choice(["avg", "max"])))
    if family == "tiny_resnet":
        n_stages = int(rng.integers(1, 4))
        return "tiny_resnet", dict(base, width=int(rng.choice([8, 12, 16, 24])),
                                   blocks=[int(rng.integers(1, 3)) for _ in range(n_stages)],
                                   kernel_size=int(rng.choice([3, 5])),
                                   norm=str(rng.choice(["batch", "group", "layer", "none"])),
                                   activation=act)
    if family == "tiny_transformer":
        patch = int(rng.choice([p for p in (1, 2, 4) if input_size % p == 0 and input_size // p >= 2]))
        heads = int(rng.choice([1, 2, 4]))
        dim = heads * int(rng.choice([4, 8, 16]))
        return "tiny_transformer", dict(base, patch_size=patch, dim=dim,
                                        depth=int(rng.integers(1, 4)), heads=heads,
                                        mlp_ratio=float(rng.choice([1.0, 2.0, 4.0])),
                                        activation=str(rng.choice(["gelu", "relu", "silu"])),
                                        norm=str(rng.choice(["layer", "layer", "none"])))
    raise KeyError(f"unknown architecture family {family!r}")
