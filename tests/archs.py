"""Registry of small test architectures for the weight-space converter test suite.

``ARCHS`` maps a name to a factory ``() -> (model, example_inputs)``. Every factory

* seeds the global RNG (``torch.manual_seed(0)``), so two calls give identical models
  and identical example inputs;
* puts the model in eval mode;
* makes buffers and norm affine parameters non-trivial (BatchNorm running stats, and
  the weight/bias of BatchNorm, LayerNorm, GroupNorm and RMSNorm are random), so that
  permutation tests cannot pass by accident;
* returns ``example_inputs`` as a tuple of tensors with batch size 2.

Models are tiny (widths 4-16, a few layers, 8x8 / 16x16 images, sequences of 5-8) so
that tracing with ``torch.export`` and many forward passes stay fast.

``HF_ARCHS`` names the entries that need ``transformers`` (imported lazily inside the
factory); tests should skip them when it is missing.

``flatten_outputs(out)`` turns a model output (tensor, tuple, dict, HF ``ModelOutput``,
HF cache object) into a flat list of tensors, for comparing outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHS", "HF_ARCHS", "flatten_outputs"]

BATCH = 2

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NORM_TYPES = _BN_TYPES + (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


@torch.no_grad()
def _randomize_norms(model: nn.Module) -> nn.Module:
    """Random running stats for BatchNorm, random affine params for every norm layer.

    Only ``torch.nn`` norm classes are touched (HF models use ``nn.LayerNorm``)."""
    for mod in model.modules():
        if isinstance(mod, _BN_TYPES) and mod.track_running_stats:
            mod.running_mean.copy_(torch.randn_like(mod.running_mean) * 0.1)
            mod.running_var.copy_(torch.empty_like(mod.running_var).uniform_(0.5, 1.5))
        if isinstance(mod, _NORM_TYPES):
            w = getattr(mod, "weight", None)
            b = getattr(mod, "bias", None)
            if isinstance(w, torch.Tensor):
                w.copy_(1.0 + 0.1 * torch.randn_like(w))
            if isinstance(b, torch.Tensor):
                b.copy_(0.1 * torch.randn_like(b))
    return model


def _finish(model: nn.Module) -> nn.Module:
    _randomize_norms(model)
    return model.eval()


def _images(c: int, h: int, w: int | None = None) -> torch.Tensor:
    return torch.randn(BATCH, c, h, h if w is None else w)


# ---------------------------------------------------------------------------
# MLPs and INRs
# ---------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, dims=(6, 8, 8, 3), act: Callable[[], nn.Module] = nn.ReLU):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(act())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _mlp(act):
    def factory():
        torch.manual_seed(0)
        model = _finish(MLP((6, 8, 8, 3), act))
        return model, (torch.randn(BATCH, 6),)

    return factory


class Siren(nn.Module):
    """SIREN (Sitzmann et al. 2020): sin(w0 * (W x + b)) hidden layers, linear output."""

    def __init__(self, dims=(2, 16, 16, 1), w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        with torch.no_grad():
            for i, lin in enumerate(self.layers):
                fan_in = lin.in_features
                bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.w0
                lin.weight.uniform_(-bound, bound)

    def forward(self, x):
        for lin in self.layers[:-1]:
            x = torch.sin(self.w0 * lin(x))
        return self.layers[-1](x)


def siren():
    torch.manual_seed(0)
    model = _finish(Siren())
    coords = torch.rand(BATCH, 2) * 2 - 1
    return model, (coords,)


# ---------------------------------------------------------------------------
# Plain CNNs
# ---------------------------------------------------------------------------


class CNNFlatten(nn.Module):
    """Conv -> pool -> conv -> flatten of a 3x3 map -> MLP head. Input 1x8x8."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)  # 8 -> 6
        self.pool = nn.MaxPool2d(2)  # 6 -> 3
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)  # 3 -> 3
        self.fc1 = nn.Linear(6 * 3 * 3, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = F.relu(self.conv2(x))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def cnn_flatten():
    torch.manual_seed(0)
    return _finish(CNNFlatten()), (_images(1, 8),)


class SmallCNN(nn.Module):
    """Small CNN Zoo style (Unterthiner et al. 2020): 3 convs, global avg pool, linear."""

    def __init__(self, in_ch=1, width=16, n_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3)
        self.conv2 = nn.Conv2d(width, width, 3)
        self.conv3 = nn.Conv2d(width, width, 3)
        self.fc = nn.Linear(width, n_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


def small_cnn():
    torch.manual_seed(0)
    return _finish(SmallCNN()), (_images(1, 8),)


class Conv1dNet(nn.Module):
    """MNIST-1D style 1d conv net. Input (B, 1, 40)."""

    def __init__(self, length=40):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)  # 40 -> 40
        self.conv2 = nn.Conv1d(8, 8, 3, stride=2)  # 40 -> 19
        out_len = (length - 3) // 2 + 1
        self.fc = nn.Linear(8 * out_len, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def conv1d():
    torch.manual_seed(0)
    return _finish(Conv1dNet()), (torch.randn(BATCH, 1, 40),)


# ---------------------------------------------------------------------------
# ResNets
# ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self, block, stem_width, stages, n_classes=10):
        """stages: list of (planes, n_blocks, stride)."""
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem_width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_planes = stem_width
        layers = []
        for planes, n_blocks, stride in stages:
            blocks = []
            for i in range(n_blocks):
                blocks.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, n_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet_basic():
    torch.manual_seed(0)
    # stage 1: identity block at width 4; stage 2: stride-2 projection block, then identity.
    model = TinyResNet(BasicBlock, 4, [(4, 1, 1), (8, 2, 2)])
    return _finish(model), (_images(3, 16),)


def resnet_bottleneck():
    torch.manual_seed(0)
    # block 1: 8 -> (2) -> 8, identity shortcut; block 2: 8 -> (4) -> 16, stride 2, projection.
    model = TinyResNet(Bottleneck, 8, [(2, 1, 1), (4, 1, 2)])
    return _finish(model), (_images(3, 16),)


# ---------------------------------------------------------------------------
# Depthwise / grouped, MobileNetV2 + SE, DenseNet, U-Net, norms
# ---------------------------------------------------------------------------


class DepthwiseGrouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise
        self.grouped = nn.Conv2d(8, 12, 3, padding=1, groups=4)  # grouped, 2 -> 3 per group
        self.dw_mult = nn.Conv2d(12, 24, 3, padding=1, groups=12)  # depthwise, multiplier 2
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.dw(x))
        x = F.relu(self.grouped(x))
        x = F.relu(self.dw_mult(x))
        return self.fc(x.mean((2, 3)))


def depthwise_grouped():
    torch.manual_seed(0)
    return _finish(DepthwiseGrouped()), (_images(3, 8),)


class SqueezeExcite(nn.Module):
    def __init__(self, ch, reduced):
        super().__init__()
        self.reduce = nn.Conv2d(ch, reduced, 1)
        self.expand = nn.Conv2d(reduced, ch, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(self.reduce(s))
        s = torch.sigmoid(self.expand(s))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, in_ch, out_ch, expand, stride, se_reduced):
        super().__init__()
        hidden = in_ch * expand
        self.use_res = stride == 1 and in_ch == out_ch
        self.expand_conv = nn.Conv2d(in_ch, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, se_reduced)
        self.project = nn.Conv2d(hidden, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        out = F.relu6(self.bn1(self.expand_conv(x)))
        out = F.relu6(self.bn2(self.dw_conv(out)))
        out = self.se(out)
        out = self.bn3(self.project(out))
        return x + out if self.use_res else out


class MobileNetV2SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.block1 = InvertedResidual(8, 8, expand=2, stride=1, se_reduced=4)  # residual
        self.block2 = InvertedResidual(8, 12, expand=2, stride=2, se_reduced=4)  # no residual
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = F.relu6(self.stem_bn(self.stem(x)))
        x = self.block1(x)
        x = self.block2(x)
        return self.fc(x.mean((2, 3)))


def mobilenetv2_se():
    torch.manual_seed(0)
    return _finish(MobileNetV2SE()), (_images(3, 8),)


class DenseLayer(nn.Module):
    def __init__(self, in_ch, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = nn.Conv2d(in_ch, growth, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv(F.relu(self.bn(x)))
        return torch.cat([x, new], dim=1)


class TinyDenseNet(nn.Module):
    def __init__(self, stem=8, growth=4, n_layers=3, n_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        ch = stem
        layers = []
        for _ in range(n_layers):
            layers.append(DenseLayer(ch, growth))
            ch += growth
        self.dense = nn.Sequential(*layers)
        # transition: BN-ReLU-1x1 conv (halve channels) - avg pool
        self.trans_bn = nn.BatchNorm2d(ch)
        self.trans_conv = nn.Conv2d(ch, ch // 2, 1, bias=False)
        self.trans_pool = nn.AvgPool2d(2)
        self.final_bn = nn.BatchNorm2d(ch // 2)
        self.fc = nn.Linear(ch // 2, n_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.dense(x)
        x = self.trans_pool(self.trans_conv(F.relu(self.trans_bn(x))))
        x = F.relu(self.final_bn(x))
        return self.fc(x.mean((2, 3)))


def densenet():
    torch.manual_seed(0)
    return _finish(TinyDenseNet()), (_images(3, 8),)


class TinyUNet(nn.Module):
    """Two-level U-Net. Input 1x16x16, output 2x16x16."""

    def __init__(self, in_ch=1, out_ch=2):
        super().__init__()
        self.enc1a = nn.Conv2d(in_ch, 4, 3, padding=1)
        self.enc1b = nn.Conv2d(4, 4, 3, padding=1)
        self.enc2 = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = nn.Conv2d(8, 16, 3, padding=1)
        self.bottleneck_bn = nn.BatchNorm2d(16)
        self.up2 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec2 = nn.Conv2d(16, 8, 3, padding=1)  # cat(up2, enc2)
        self.up1 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.dec1 = nn.Conv2d(8, 4, 3, padding=1)  # cat(up1, enc1)
        self.head = nn.Conv2d(4, out_ch, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1b(F.relu(self.enc1a(x))))  # 4 x 16 x 16
        e2 = F.relu(self.enc2(self.pool(e1)))  # 8 x 8 x 8
        b = F.relu(self.bottleneck_bn(self.bottleneck(self.pool(e2))))  # 16 x 4 x 4
        d2 = F.relu(self.dec2(torch.cat([self.up2(b), e2], dim=1)))  # 8 x 8 x 8
        d1 = F.relu(self.dec1(torch.cat([self.up1(d2), e1], dim=1)))  # 4 x 16 x 16
        return self.head(d1)


def unet():
    torch.manual_seed(0)
    return _finish(TinyUNet()), (_images(1, 16),)


class NormsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16)
        self.rms = nn.RMSNorm(16)
        self.fc3 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.gn(self.conv2(x)))
        x = x.mean((2, 3))
        x = F.relu(self.ln(self.fc1(x)))
        x = F.relu(self.rms(self.fc2(x)))
        return self.fc3(x)


def norms_cnn():
    torch.manual_seed(0)
    return _finish(NormsCNN()), (_images(3, 8),)


# ---------------------------------------------------------------------------
# Sequence models
# ---------------------------------------------------------------------------


class TransformerClassifier(nn.Module):
    def __init__(self, vocab=11, d_model=8, seq_len=6, n_classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(0.1 * torch.randn(1, seq_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model=d_model, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        x = self.encoder(x)
        return self.head(x.mean(1))


def transformer_encoder():
    torch.manual_seed(0)
    model = _finish(TransformerClassifier())
    return model, (torch.randint(0, 11, (BATCH, 6)),)


class CausalSelfAttention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.d = d
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.d, dim=2)
        H = self.n_head
        q = q.view(B, T, H, C // H).transpose(1, 2)
        k = k.view(B, T, H, C // H).transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class GPTMLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class GPTBlock(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, n_head)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = GPTMLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """nanoGPT-style decoder with tied input/output embeddings."""

    def __init__(self, vocab=13, block_size=8, d=8, n_head=2, n_layer=2):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block_size, d)
        self.h = nn.ModuleList(GPTBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying

    def forward(self, idx):
        B, T = idx.size()
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        return self.lm_head(x)


def gpt():
    torch.manual_seed(0)
    model = _finish(GPT())
    return model, (torch.randint(0, 13, (BATCH, 6)),)


class RNNClassifier(nn.Module):
    def __init__(self, cell: type[nn.RNNBase], input_size=4, hidden=6, n_classes=3):
        super().__init__()
        self.rnn = cell(input_size, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def gru():
    torch.manual_seed(0)
    return _finish(RNNClassifier(nn.GRU)), (torch.randn(BATCH, 5, 4),)


def lstm():
    torch.manual_seed(0)
    return _finish(RNNClassifier(nn.LSTM)), (torch.randn(BATCH, 5, 4),)


# ---------------------------------------------------------------------------
# Hugging Face transformers (small configs; library defaults otherwise)
# ---------------------------------------------------------------------------


def hf_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=8,
        vocab_size=17,
        n_positions=8,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # defaults (50256) lie outside the tiny vocab and make transformers warn;
        # they do not affect forward()
        bos_token_id=16,
        eos_token_id=16,
    )
    model = _finish(GPT2LMHeadModel(cfg))
    return model, (torch.randint(0, 17, (BATCH, 6)),)


def hf_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=17,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    model = _finish(BertForSequenceClassification(cfg))
    return model, (torch.randint(0, 17, (BATCH, 6)),)


def hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    model = _finish(ViTForImageClassification(cfg))
    return model, (_images(3, 8),)


# ---------------------------------------------------------------------------
# Block patterns of torchvision / timm models: ConvNeXt, Swin, Res2Net + ECA
# ---------------------------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, LayerNorm over channels in channels-last layout
    (permute), pointwise MLP as Linear layers, layer scale (a per-channel parameter
    multiplying the branch), residual."""

    def __init__(self, dim):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(0.5 + torch.rand(dim))

    def forward(self, x):
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.pw2(F.gelu(self.pw1(self.norm(h)))) * self.gamma
        return x + h.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    """Patchify stem, a channels-first LayerNorm written as permute + layer_norm, two
    ConvNeXt blocks around a downsampling layer, pooled head."""

    def __init__(self, dims=(8, 12), n_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, dims[0], 2, stride=2)
        self.stem_norm = nn.LayerNorm(dims[0])
        self.block1 = ConvNeXtBlock(dims[0])
        self.down_norm = nn.LayerNorm(dims[0])
        self.down = nn.Conv2d(dims[0], dims[1], 2, stride=2)
        self.block2 = ConvNeXtBlock(dims[1])
        self.head_norm = nn.LayerNorm(dims[1])
        self.head = nn.Linear(dims[1], n_classes)

    @staticmethod
    def _norm2d(norm, x):
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x):
        x = self.block1(self._norm2d(self.stem_norm, self.stem(x)))
        x = self.block2(self.down(self._norm2d(self.down_norm, x)))
        return self.head(self.head_norm(x.mean((2, 3))))


def convnext():
    torch.manual_seed(0)
    return _finish(TinyConvNeXt()), (_images(3, 8),)


class SwinBlock(nn.Module):
    """Shifted-window attention (cyclic shift with torch.roll, window partition by
    view/permute, a relative-position bias table per head indexed by a buffer), then an
    MLP; both pre-norm residual, on channels-last tokens [B, H, W, C]."""

    def __init__(self, dim, heads, window, shift):
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.table = nn.Parameter(0.1 * torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + window - 1
        self.register_buffer("rel_index", (rel[..., 0] * (2 * window - 1) + rel[..., 1]).flatten())

    def forward(self, x):
        b, h, w, c = x.shape
        ws, n = self.window, self.window * self.window
        t = torch.roll(self.norm1(x), (-self.shift, -self.shift), (1, 2))
        t = t.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        q, k, v = self.qkv(t).view(t.shape[0], n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.table[self.rel_index].view(n, n, self.heads).permute(2, 0, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5 + bias, dim=-1)
        t = self.proj((att @ v).transpose(1, 2).reshape(-1, n, c))
        t = t.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        x = x + torch.roll(t, (self.shift, self.shift), (1, 2))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinySwin(nn.Module):
    """Patch embedding, a regular and a shifted window block, pooled head."""

    def __init__(self, dim=8, heads=2, window=2, n_classes=10):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.blocks = nn.Sequential(SwinBlock(dim, heads, window, 0), SwinBlock(dim, heads, window, 1))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        t = self.blocks(self.embed(x).permute(0, 2, 3, 1))
        return self.head(self.norm(t).mean((1, 2)))


def swin():
    torch.manual_seed(0)
    return _finish(TinySwin()), (_images(3, 8),)


class Res2Block(nn.Module):
    """Res2Net block: a 1x1 conv, its channels split into scales, each scale's 3x3 conv
    fed the previous scale's output plus its own split (torch.split, hierarchical sums),
    concatenated back, an ECA gate (a 1-D conv ACROSS channels, which ties the channel
    order), a 1x1 conv, and an Inception-style side branch (max-pool then 1x1) joined by
    concatenation before the classifier."""

    def __init__(self, ch=8, scales=4, n_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, ch, 3, padding=1)
        self.reduce = nn.Conv2d(ch, ch, 1)
        self.width = ch // scales
        self.convs = nn.ModuleList(nn.Conv2d(self.width, self.width, 3, padding=1) for _ in range(scales - 1))
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.expand = nn.Conv2d(ch, ch, 1)
        self.side = nn.Conv2d(ch, 4, 1)
        self.fc = nn.Linear(ch + 4, n_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        splits = torch.split(F.relu(self.reduce(x)), self.width, dim=1)
        outs, prev = [splits[0]], None
        for conv, part in zip(self.convs, splits[1:]):
            prev = F.relu(conv(part if prev is None else prev + part))
            outs.append(prev)
        h = torch.cat(outs, dim=1)
        gate = torch.sigmoid(self.eca(h.mean((2, 3))[:, None, :]))[:, 0]
        h = F.relu(x + self.expand(h * gate[:, :, None, None]))
        side = self.side(F.max_pool2d(x, 3, 1, 1))
        return self.fc(torch.cat([h, side], dim=1).mean((2, 3)))


def res2net_eca():
    torch.manual_seed(0)
    return _finish(Res2Block()), (_images(3, 8),)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

ARCHS: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "mlp_relu": _mlp(nn.ReLU),
    "mlp_gelu": _mlp(nn.GELU),
    "mlp_tanh": _mlp(nn.Tanh),
    "siren": siren,
    "cnn_flatten": cnn_flatten,
    "small_cnn": small_cnn,
    "conv1d": conv1d,
    "resnet_basic": resnet_basic,
    "resnet_bottleneck": resnet_bottleneck,
    "depthwise_grouped": depthwise_grouped,
    "mobilenetv2_se": mobilenetv2_se,
    "densenet": densenet,
    "unet": unet,
    "norms_cnn": norms_cnn,
    "transformer_encoder": transformer_encoder,
    "gpt": gpt,
    "gru": gru,
    "lstm": lstm,
    "convnext": convnext,
    "swin": swin,
    "res2net_eca": res2net_eca,
    "hf_gpt2": hf_gpt2,
    "hf_bert": hf_bert,
    "hf_vit": hf_vit,
}

HF_ARCHS: frozenset[str] = frozenset({"hf_gpt2", "hf_bert", "hf_vit"})


def flatten_outputs(out) -> list[torch.Tensor]:
    """All tensors in a model output, in a stable order.

    Handles tensors, tuples/lists, mappings (incl. HF ``ModelOutput``) and HF cache
    objects (anything with ``key_cache``/``value_cache`` or ``layers`` holding
    ``keys``/``values``). Other objects (and ``None``) contribute nothing."""
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for k in out for t in flatten_outputs(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flatten_outputs(o)]
    layers = getattr(out, "layers", None)
    if isinstance(layers, (list, tuple)):
        res = []
        for layer in layers:
            for attr in ("keys", "values"):
                res.extend(flatten_outputs(getattr(layer, attr, None)))
        return res
    res = []
    for attr in ("key_cache", "value_cache"):
        res.extend(flatten_outputs(getattr(out, attr, None)))
    return res
