"""Blocks of torchvision / timm models that no other test architecture holds: channel and
spatial gates, split-and-concatenate blocks, fixed filters, token mixing, per-head norms.
Each is checked with ``ws.verify`` (every offered permutation, scaling and sign flip keeps
the outputs, at the traced shape and at other shapes) and its groups are pinned as
``(size, scaling, sign)``: a rule that fixed more axes would pass the check but lose a
symmetry that is there, one that fixed fewer would fail it."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metanet import WeightSpace


class Wrapped(nn.Module):
    """stem conv -> ReLU -> block -> global mean -> linear head."""

    def __init__(self, block, ch=8):
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.block = block
        self.head = nn.Linear(ch, 4)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


class CBAM(nn.Module):
    """Spatial gate from the channel mean and max (CBAM): permutes channels, no scaling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        m = torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], 1)
        return h * torch.sigmoid(self.spatial(m))


class BlurPool(nn.Module):
    """Anti-aliased downsampling: a fixed binomial filter (a buffer) applied per channel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        f = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (f[:, None] * f[None] / 16)[None, None].repeat(8, 1, 1, 1))

    def forward(self, x):
        h = F.pad(torch.relu(self.conv(x)), (1, 1, 1, 1), mode="reflect")
        return F.conv2d(h, self.filt, stride=2, groups=8)


class Ghost(nn.Module):
    """GhostNet: half the channels from a 1x1 conv, the other half a depthwise conv of them."""

    def __init__(self):
        super().__init__()
        self.primary = nn.Conv2d(8, 4, 1)
        self.cheap = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.out = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a = torch.relu(self.primary(x))
        return self.out(torch.cat([a, torch.relu(self.cheap(a))], 1))


class CSP(nn.Module):
    """Cross-stage partial: chunk the channels, transform one half, concatenate."""

    def __init__(self):
        super().__init__()
        self.split = nn.Conv2d(8, 8, 1)
        self.mid = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a, b = torch.relu(self.split(x)).chunk(2, 1)
        return self.out(torch.cat([a, torch.relu(self.mid(b))], 1))


class Inception(nn.Module):
    """Parallel branches (1x1; 1x1 then 3x3; max-pool then 1x1) concatenated."""

    def __init__(self):
        super().__init__()
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Sequential(nn.Conv2d(8, 3, 1), nn.ReLU(), nn.Conv2d(3, 5, 3, padding=1))
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 2, 1))
        self.out = nn.Conv2d(11, 8, 1)

    def forward(self, x):
        return self.out(torch.relu(torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)))


class MBConvV3(nn.Module):
    """MobileNetV3 block: hardswish, squeeze-excite with a hardsigmoid gate, BatchNorm."""

    def __init__(self, c=8, e=3):
        super().__init__()
        self.expand = nn.Conv2d(c, c * e, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c * e)
        self.dw = nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e, bias=False)
        self.bn2 = nn.BatchNorm2d(c * e)
        self.se_reduce = nn.Conv2d(c * e, 4, 1)
        self.se_expand = nn.Conv2d(4, c * e, 1)
        self.project = nn.Conv2d(c * e, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = F.hardswish(self.bn2(self.dw(F.hardswish(self.bn1(self.expand(x))))))
        h = h * F.hardsigmoid(self.se_expand(F.hardswish(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        return x + self.bn3(self.project(h))


class PoolFormer(nn.Module):
    """PoolFormer: token mixing by avg-pool minus identity, layer scale, 1x1 MLP."""

    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(1, 8)
        self.pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.fc1 = nn.Conv2d(8, 16, 1)
        self.fc2 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.norm(x)
        x = x + self.scale * (self.pool(y) - y)
        return x + self.fc2(F.gelu(self.fc1(x)))


class Mixer(nn.Module):
    """MLP-Mixer: a token-mixing MLP along the (transposed) token axis, a channel MLP."""

    def __init__(self, d=8, tokens=4):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.norm1 = nn.LayerNorm(d)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 6), nn.GELU(), nn.Linear(6, tokens))
        self.norm2 = nn.LayerNorm(d)
        self.channel_mlp = nn.Sequential(nn.Linear(d, 12), nn.GELU(), nn.Linear(12, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.token_mlp(self.norm1(t).transpose(1, 2)).transpose(1, 2)
        return self.head((t + self.channel_mlp(self.norm2(t))).mean(1))


class ViTClassToken(nn.Module):
    """ViT: patch embedding, a class token and a learned position table, pre-norm encoder
    layer, the head reads the class token."""

    def __init__(self, d=16):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 5, d))
        self.layer = nn.TransformerEncoderLayer(d, 4, 32, dropout=0.0, batch_first=True, norm_first=True,
                                                activation="gelu")
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.layer(t))[:, 0])


class QKNormAttention(nn.Module):
    """Attention with a LayerNorm over each head's query and key dims (timm's qk_norm)."""

    def __init__(self, d=16, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(4, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.LayerNorm(d // heads)
        self.k_norm = nn.LayerNorm(d // heads)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(self.embed(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.head(a.transpose(1, 2).reshape(b, n, -1).mean(1))


def _img():
    return (torch.randn(2, 3, 8, 8),)


CASES = {
    # name: (model factory, inputs, pinned groups (size, scaling, sign))
    "cbam": (lambda: Wrapped(CBAM()), _img, [(8, 1, 0), (8, 0, 0)]),
    "blurpool": (lambda: Wrapped(BlurPool()), _img, [(8, 1, 0), (8, 0, 0)]),
    "ghost": (lambda: Wrapped(Ghost()), _img, [(8, 1, 0), (4, 0, 0), (8, 1, 1)]),
    "csp": (lambda: Wrapped(CSP()), _img, [(8, 1, 0), (4, 1, 0), (4, 1, 0), (4, 1, 0), (8, 1, 1)]),
    "inception": (lambda: Wrapped(Inception()), _img,
                  [(8, 1, 0), (4, 1, 0), (3, 1, 0), (5, 1, 0), (2, 1, 0), (8, 1, 1)]),
    "mbconv_v3": (lambda: Wrapped(MBConvV3()), _img, [(8, 0, 0), (24, 0, 0), (4, 0, 0)]),
    "poolformer": (lambda: Wrapped(PoolFormer()), _img, [(8, 0, 0), (16, 0, 0)]),
    "mixer": (Mixer, _img, [(8, 0, 0), (6, 0, 0), (12, 0, 0)]),
    "vit_class_token": (ViTClassToken, _img, [(16, 0, 0), (4, 0, 0), (4, 0, 0), (32, 0, 0)]),
    "qk_norm": (QKNormAttention, lambda: (torch.randn(2, 5, 4),), [(16, 1, 1), (4, 0, 0), (4, 0, 0)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_block_symmetries_hold_and_are_pinned(name):
    factory, inputs, pinned = CASES[name]
    torch.manual_seed(0)
    model, x = factory().eval(), inputs()
    with torch.no_grad():   # non-trivial BatchNorm statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                nn.init.normal_(m.weight)
                nn.init.normal_(m.bias)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WeightSpace.of(model, x, cache=False)
    report = ws.verify(model, x, n=3)
    assert len(report.shapes) >= 2, report      # checked beyond the traced shape
    got = sorted((g.size, int(g.scaling), int(g.sign)) for g in ws.groups)
    assert got == sorted(pinned)
