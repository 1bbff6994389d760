"""Small built-in example models, for the ``metanet convert`` command, docs and tests.

``EXAMPLES`` maps a name to a factory ``() -> (model, example_inputs)``. Every factory
seeds its own generator (two calls give identical models), returns the model in eval
mode and a tuple of example inputs with batch size 1. The models are tiny so that their
parameter graphs can be drawn and read.

>>> from metanet.examples import EXAMPLES
>>> model, inputs = EXAMPLES["cnn"]()
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EXAMPLES", "DEFAULT_EXAMPLE", "TinyCNN", "TinyMLP", "TinyResNet", "TinyGPT", "TinyDenseNet"]


class TinyMLP(nn.Module):
    """4 -> 12 -> 12 -> 3 with ReLU."""

    def __init__(self, dims=(4, 12, 12, 3)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for lin in self.layers[:-1]:
            x = F.relu(lin(x))
        return self.layers[-1](x)


class TinyCNN(nn.Module):
    """RGB 6x6 -> conv 3x3 (8 channels) -> ReLU -> 2x2 max pool -> flatten of the 2x2 map
    -> linear to 10 classes. The flatten gives a neuron group of 8 channels whose 2x2
    positions become the edge features of the linear layer."""

    def __init__(self, in_ch=3, width=8, n_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3)      # 6x6 -> 4x4
        self.pool = nn.MaxPool2d(2)                  # 4x4 -> 2x2
        self.fc = nn.Linear(width * 2 * 2, n_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv(x)))
        return self.fc(torch.flatten(x, 1))


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class TinyResNet(nn.Module):
    """A ResNet with basic blocks: stem 4, an identity block at width 4, a stride-2
    projection block to width 8; global average pool; linear to 5 classes."""

    def __init__(self, stem=4, widths=(4, 8), n_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, cin = [], stem
        for i, w in enumerate(widths):
            blocks.append(_BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, n_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(x.mean((2, 3)))


class _DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class TinyDenseNet(nn.Module):
    """DenseNet-like: stem 4, two dense layers of growth 3 (concatenations), global
    average pool, linear to 4 classes."""

    def __init__(self, stem=4, growth=3, n_layers=2, n_classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        ch, layers = stem, []
        for _ in range(n_layers):
            layers.append(_DenseLayer(ch, growth))
            ch += growth
        self.dense = nn.Sequential(*layers)
        self.fc = nn.Linear(ch, n_classes)

    def forward(self, x):
        x = self.dense(self.stem(x))
        return self.fc(F.relu(x).mean((2, 3)))


class _Attention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head, self.d = n_head, d
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.d, dim=2)
        H = self.n_head
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class _Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = _Attention(d, n_head)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    """nanoGPT-style decoder: vocabulary 11, context 6, width 4, 2 heads, 1 block, tied
    input/output embeddings."""

    def __init__(self, vocab=11, block_size=6, d=4, n_head=2, n_layer=1):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block_size, d)
        self.h = nn.ModuleList(_Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _seeded(build: Callable[[], nn.Module], make_inputs: Callable[[torch.Generator], tuple]):
    def factory():
        gen = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build().eval()
            # non-trivial norm statistics, so that the picture shows them
            with torch.no_grad():
                for mod in model.modules():
                    if isinstance(mod, nn.BatchNorm2d):
                        mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
                        mod.running_var.uniform_(0.5, 1.5, generator=gen)
                        mod.weight.copy_(1 + 0.1 * torch.randn(mod.num_features, generator=gen))
                        mod.bias.copy_(0.1 * torch.randn(mod.num_features, generator=gen))
        return model, make_inputs(gen)
    factory.__doc__ = f"() -> ({build.__name__ if hasattr(build, '__name__') else 'model'}, example_inputs)"
    return factory


EXAMPLES: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "mlp": _seeded(TinyMLP, lambda g: (torch.randn(1, 4, generator=g),)),
    "cnn": _seeded(TinyCNN, lambda g: (torch.randn(1, 3, 6, 6, generator=g),)),
    "resnet": _seeded(TinyResNet, lambda g: (torch.randn(1, 3, 8, 8, generator=g),)),
    "densenet": _seeded(TinyDenseNet, lambda g: (torch.randn(1, 3, 6, 6, generator=g),)),
    "gpt": _seeded(TinyGPT, lambda g: (torch.randint(0, 11, (1, 6), generator=g),)),
}

DEFAULT_EXAMPLE = "cnn"
