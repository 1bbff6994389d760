"""How modules are rebuilt at their new sizes: one table keyed by module type.

Pruning first shrinks tensors (every axis carrying a pruned neuron group, through the
same index map that permutations use). A module whose own parameters or buffers shrank
must then have its size attributes made to agree (``nn.Linear.in_features``,
``nn.Conv2d.groups``, ...), or its ``forward`` would build the wrong shapes. That is
what a :class:`Resizer` does. There is exactly one table, :data:`RESIZERS`, keyed by
module type and looked up along the class's MRO (so ``NonDynamicallyQuantizableLinear``
uses ``nn.Linear``'s entry); each entry names the tensors it knows and the function
that sets the attributes. Users add their own types with :func:`register_resizer`.

A module type that is not in the table but holds a pruned tensor is refused: its
``forward`` may read sizes we cannot see (see :class:`PruneError`).

Modules that own no pruned tensor themselves but read head counts in ``forward``
(attention blocks built from Linear children, as in Hugging Face models) are handled by
:func:`update_head_attributes`, which matches ``num_heads``/``head_dim``-style
attributes against the heads × dims products of the weight space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn


class PruneError(ValueError):
    """A pruning request that cannot be carried out; the model is left unchanged."""


@dataclass(frozen=True)
class ResizeContext:
    """What a resizer learns about one module.

    ``kept[(local_name, axis)]`` holds the old indices kept along that axis of the
    module's own tensor ``local_name`` (only for axes that shrank); ``old_shapes`` the
    shapes before pruning. ``path`` is the module's path in the model (for messages)."""

    path: str
    kept: Mapping[tuple[str, int], torch.Tensor]
    old_shapes: Mapping[str, tuple[int, ...]]

    def where(self, module: nn.Module) -> str:
        return f"{self.path or '<root>'} ({type(module).__name__})"


@dataclass(frozen=True)
class Resizer:
    """One entry of the table: the tensors a module type owns that may shrink, and the
    function that sets its size attributes from their new shapes."""

    type: type
    tensors: tuple[str, ...] | None   # None: every tensor the module owns
    resize: Callable[[nn.Module, ResizeContext], None]


RESIZERS: dict[type, Resizer] = {}


def register_resizer(module_type: type, tensors: tuple[str, ...] | list[str] | None):
    """Decorator: ``resize(module, ctx)`` sets ``module_type``'s size attributes after its
    own tensors named in ``tensors`` (None: any of them) shrank. Registering a type twice
    raises."""
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_resizer takes an nn.Module subclass, got {module_type!r}")

    def deco(fn: Callable[[nn.Module, ResizeContext], None]):
        if module_type in RESIZERS:
            raise ValueError(f"a resizer for {module_type.__qualname__} is already registered")
        RESIZERS[module_type] = Resizer(module_type, None if tensors is None else tuple(tensors), fn)
        return fn

    return deco


def resizer_for(module: nn.Module) -> Resizer | None:
    for cls in type(module).__mro__:
        if cls in RESIZERS:
            return RESIZERS[cls]
    return None


def known_types() -> list[str]:
    return sorted(t.__qualname__ for t in RESIZERS)


# -- helpers ---------------------------------------------------------------------------------------
def kept_blocks(idx: torch.Tensor | None, size: int, blocks: int, what: str) -> int:
    """How many of ``blocks`` equal contiguous blocks of an axis of ``size`` keep some index
    of ``idx`` (old indices kept); every block kept must keep the same number, else the
    module cannot be rebuilt (e.g. a grouped convolution losing more channels in one
    group than in another)."""
    if idx is None or blocks == 1:
        return blocks
    per = size // blocks
    counts = torch.bincount(idx // per, minlength=blocks)
    nonzero = counts[counts > 0]
    if nonzero.numel() and not bool((nonzero == nonzero[0]).all()):
        raise PruneError(f"{what}: its {blocks} groups would keep different numbers of channels "
                         f"({counts.tolist()}); prune whole groups or the same number in each group")
    return int(nonzero.numel())


# -- the table -------------------------------------------------------------------------------------
@register_resizer(nn.Linear, ("weight", "bias"))
def _linear(m: nn.Linear, ctx: ResizeContext) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_resizer(nn.Bilinear, ("weight", "bias"))
def _bilinear(m: nn.Bilinear, ctx: ResizeContext) -> None:
    m.out_features, m.in1_features, m.in2_features = m.weight.shape


def _conv(m: nn.modules.conv._ConvNd, ctx: ResizeContext) -> None:
    old = ctx.old_shapes["weight"]
    # Conv: weight [out, in/groups, *k]; transposed: [in, out/groups, *k]. Groups are blocks
    # of the first axis; the groups that keep any channel stay.
    groups = kept_blocks(ctx.kept.get(("weight", 0)), old[0], m.groups, ctx.where(m))
    a, b = m.weight.shape[:2]
    if m.transposed:
        m.in_channels, m.out_channels = a, b * groups
    else:
        m.out_channels, m.in_channels = a, b * groups
    m.groups = groups


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_resizer(_t, ("weight", "bias"))(_conv)


@register_resizer(nn.modules.batchnorm._NormBase, ("weight", "bias", "running_mean", "running_var"))
def _batchnorm(m, ctx: ResizeContext) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    m.num_features = int(t.shape[0])


@register_resizer(nn.LayerNorm, ("weight", "bias"))
def _layernorm(m: nn.LayerNorm, ctx: ResizeContext) -> None:
    m.normalized_shape = tuple(m.weight.shape)


@register_resizer(nn.RMSNorm, ("weight",))
def _rmsnorm(m: nn.RMSNorm, ctx: ResizeContext) -> None:
    m.normalized_shape = tuple(m.weight.shape)


@register_resizer(nn.GroupNorm, ("weight", "bias"))
def _groupnorm(m: nn.GroupNorm, ctx: ResizeContext) -> None:
    m.num_groups = kept_blocks(ctx.kept.get(("weight", 0)), ctx.old_shapes["weight"][0], m.num_groups,
                               ctx.where(m))
    m.num_channels = int(m.weight.shape[0])


@register_resizer(nn.Embedding, ("weight",))
def _embedding(m: nn.Embedding, ctx: ResizeContext) -> None:
    if ("weight", 0) in ctx.kept and m.padding_idx is not None:
        raise PruneError(f"{ctx.where(m)}: pruning rows of an embedding with padding_idx is not supported")
    m.num_embeddings, m.embedding_dim = m.weight.shape


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose heads x head_dim (``inner_dim``) may differ from its
    input and output size (``embed_dim``), as after pruning heads or head dims but not the
    model dimension. Same parameters and state-dict keys; ``scale`` is the attention scale
    of the original module (1/sqrt(original head_dim)), so that removing head dims keeps the
    trained function. PyTorch's fused fast path is off for it (``_qkv_same_embed_dim`` is
    False), and ``bias_k``/``bias_v``/``add_zero_attn`` are not supported."""

    inner_dim: int
    scale: float

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        import torch.nn.functional as F

        if self.batch_first:
            query, key, value = (x.transpose(0, 1) if x.dim() == 3 else x for x in (query, key, value))
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        T, B, _ = query.shape
        S = key.shape[0]
        I, H = self.inner_dim, self.num_heads
        w = self.in_proj_weight
        b = self.in_proj_bias if self.in_proj_bias is not None else None
        q = F.linear(query, w[:I], None if b is None else b[:I])
        k = F.linear(key, w[I:2 * I], None if b is None else b[I:2 * I])
        v = F.linear(value, w[2 * I:], None if b is None else b[2 * I:])
        # [T, B, H*D] -> [B, H, T, D]
        q, k, v = (x.reshape(x.shape[0], B, H, -1).permute(1, 2, 0, 3) for x in (q, k, v))
        mask = None
        if attn_mask is not None:
            am = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(B, H, T, S)
            mask = (torch.zeros(am.shape, dtype=q.dtype, device=q.device).masked_fill(am, float("-inf"))
                    if am.dtype == torch.bool else am.to(q.dtype))
        elif is_causal:
            mask = torch.full((T, S), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        if key_padding_mask is not None:
            kp = key_padding_mask.reshape(B, 1, 1, S)
            kp = (torch.zeros(kp.shape, dtype=q.dtype, device=q.device).masked_fill(kp, float("-inf"))
                  if kp.dtype == torch.bool else kp.to(q.dtype))
            mask = kp if mask is None else mask + kp
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if mask is not None:
            logits = logits + mask
        weights = logits.softmax(-1)
        attn = F.dropout(weights, self.dropout, self.training)
        out = (attn @ v).permute(2, 0, 1, 3).reshape(T, B, -1)     # [T, B, H*Dv]
        out = self.out_proj(out)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, (weights.squeeze(0) if not batched else weights)


@register_resizer(nn.MultiheadAttention, ("in_proj_weight", "in_proj_bias"))
def _mha(m: nn.MultiheadAttention, ctx: ResizeContext) -> None:
    # nn.MultiheadAttention computes with one size, embed_dim, for its query input, its
    # heads x head_dim and its output (out_proj is a child Linear, resized on its own).
    # Where pruning makes the inner size differ from the outer one, the module becomes a
    # PrunedMultiheadAttention (same parameters, a forward that allows both sizes).
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        raise PruneError(f"{ctx.where(m)}: nn.MultiheadAttention with separate kdim/vdim, bias_k/bias_v or "
                         f"add_zero_attn is not supported; leave its groups out (groups=...)")
    three_inner, outer = m.in_proj_weight.shape
    inner = three_inner // 3
    o_out, o_in = m.out_proj.weight.shape
    if o_out != outer or o_in != inner:
        raise PruneError(f"{ctx.where(m)}: out_proj is {o_out}x{o_in}, expected {outer}x{inner}")
    old_heads, old_dim = m.num_heads, m.head_dim
    q_idx = ctx.kept.get(("in_proj_weight", 0))
    if q_idx is not None:
        q_idx = q_idx[q_idx < old_heads * old_dim]
    heads = kept_blocks(q_idx, old_heads * old_dim, old_heads, ctx.where(m))
    if inner % heads:
        raise PruneError(f"{ctx.where(m)}: {inner} channels cannot be split into {heads} heads")
    scale = getattr(m, "scale", old_dim ** -0.5)
    m.num_heads, m.head_dim = heads, inner // heads
    m.embed_dim = m.kdim = m.vdim = outer
    if inner == outer and m.head_dim == old_dim and type(m) is nn.MultiheadAttention:
        return   # still an ordinary nn.MultiheadAttention with the same scale
    m.__class__ = PrunedMultiheadAttention
    m.inner_dim, m.scale = inner, scale
    m._qkv_same_embed_dim = False   # keeps PyTorch's fused fast path (which assumes one size) away


@register_resizer(nn.RNNBase, None)
def _rnn(m: nn.RNNBase, ctx: ResizeContext) -> None:
    if m.proj_size:
        raise PruneError(f"{ctx.where(m)}: LSTM with proj_size is not supported")
    m.hidden_size = int(m.weight_hh_l0.shape[1])
    m.input_size = int(m.weight_ih_l0.shape[1])
    m._flat_weights = [getattr(m, n) for n in m._flat_weights_names]
    m.flatten_parameters()


def _register_optional() -> None:
    try:
        from transformers.pytorch_utils import Conv1D
    except Exception:   # transformers is optional
        return

    @register_resizer(Conv1D, ("weight", "bias"))
    def _hf_conv1d(m, ctx: ResizeContext) -> None:
        m.nx, m.nf = m.weight.shape   # weight [in, out]


_register_optional()


# -- attention blocks: head counts read in forward ---------------------------------------------------
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")
HEAD_PRODUCT_ATTRS = ("all_head_size", "split_size", "inner_dim", "embed_dim")


def update_head_attributes(module: nn.Module, path: str, products: list[tuple[int, int, int, int]]) -> None:
    """Set a module's head-count attributes after pruning.

    ``products`` lists, for the heads x dims products on axes of tensors under the module,
    ``(old_heads, old_dim, new_heads, new_dim)``. An attribute pair such as
    ``num_heads``/``head_dim`` is matched to the products with the same old sizes; the
    head count, the head size and attributes that held their product (``all_head_size``,
    ``split_size``, ...) take the new values. Products that disagree (e.g. query/key dims
    pruned to 2 and value dims to 3 in a module with a single ``head_dim``) are refused.
    The attention scale a module computed at construction is left as it is: it belongs to
    the trained function."""
    ints = {a: getattr(module, a) for a in HEAD_COUNT_ATTRS + HEAD_DIM_ATTRS + HEAD_PRODUCT_ATTRS
            if isinstance(getattr(module, a, None), int) and not isinstance(getattr(module, a), bool)}
    count = next((a for a in HEAD_COUNT_ATTRS if a in ints), None)
    if count is None:
        return
    h = ints[count]
    dim = next((a for a in HEAD_DIM_ATTRS if a in ints), None)
    if dim is not None:
        d = ints[dim]
    elif "all_head_size" in ints or "embed_dim" in ints:
        total = ints.get("all_head_size", ints.get("embed_dim"))
        d = total // h if h and total % h == 0 else None
    else:
        d = None
    if d is None:
        return
    new = {(nh, nd) for oh, od, nh, nd in products if (oh, od) == (h, d) and (nh, nd) != (oh, od)}
    if not new:
        return
    if len(new) > 1:
        raise PruneError(f"{path or '<root>'} ({type(module).__name__}): its {count}={h}, head size {d} would "
                         f"become several different sizes {sorted(new)} (e.g. query/key and value dims pruned "
                         f"differently); prune them to the same number per head")
    nh, nd = new.pop()
    setattr(module, count, nh)
    if dim is not None:
        setattr(module, dim, nd)
    for a in HEAD_PRODUCT_ATTRS:
        if a in ints and ints[a] == h * d:
            setattr(module, a, nh * nd)
