"""Hugging Face models after pruning: attention attributes and the config.

A pruned ``transformers`` model must run (its attention modules read head counts) and
must save with ``save_pretrained`` into a config that ``from_pretrained`` rebuilds at
the pruned sizes. The config holds one value per size for every layer
(``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``, ...), so:

- each size is read from the pruned modules (:data:`READERS`: one function per kind of
  size; a kind no reader finds is left as it is);
- values that differ between layers are refused: the config cannot hold them;
- the new config is checked by building the model class from it on the ``meta`` device
  (no memory, no weights) and comparing every tensor shape with the pruned model's; a
  size the config cannot express (e.g. Llama's value head size pruned apart from its
  query/key head size: one ``head_dim`` serves all three) is refused, naming the tensor.

Grouped-query attention (Llama, Qwen2, Mistral: ``num_key_value_heads`` key/value heads,
each shared by ``num_key_value_groups`` query heads) appears in ``WeightSpace`` as two
groups: the key/value heads (a key/value head goes with all its query heads) and the
query heads within every key/value group (the same ones in each). Pruning the first
changes ``num_key_value_heads`` and ``num_attention_heads``; the second changes
``num_attention_heads`` and ``num_key_value_groups`` (:func:`update_kv_groups`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .modules import HEAD_COUNT_ATTRS, HEAD_DIM_ATTRS, PruneError


def _int(m, name: str) -> int | None:
    v = getattr(m, name, None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _out_features(m) -> int | None:
    """Output width of a Linear or of Hugging Face's Conv1D (weight [in, out])."""
    if isinstance(m, nn.Linear):
        return m.out_features
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf"):
        return int(m.nf)
    return None


def update_kv_groups(module: nn.Module, path: str) -> None:
    """Grouped-query attention: ``num_key_value_groups`` (query heads per key/value head) from
    the pruned ``q_proj``/``k_proj`` widths and ``head_dim``."""
    groups, hd = _int(module, "num_key_value_groups"), _int(module, "head_dim")
    q, k = getattr(module, "q_proj", None), getattr(module, "k_proj", None)
    if groups is None or hd is None or _out_features(q) is None or _out_features(k) is None:
        return
    heads, kv = _out_features(q) // hd, _out_features(k) // hd
    if kv == 0 or heads % kv:
        raise PruneError(f"{path or '<root>'} ({type(module).__name__}): {heads} query heads cannot be shared "
                         f"by {kv} key/value heads; prune whole key/value heads or the same query heads in "
                         f"each key/value group")
    module.num_key_value_groups = heads // kv


# -- readers: one kind of size each, per layer ------------------------------------------------------
def _hidden(model: nn.Module) -> list[int]:
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        emb = None
    if isinstance(emb, nn.Embedding):
        return [emb.embedding_dim]
    proj = getattr(emb, "projection", None)        # ViT-style patch embeddings
    if isinstance(proj, nn.modules.conv._ConvNd):
        return [proj.out_channels]
    return []


def _attention(model: nn.Module, kind: str) -> list[int]:
    out = []
    for m in model.modules():
        hd = _int(m, "head_dim")
        q, k = getattr(m, "q_proj", None), getattr(m, "k_proj", None)
        if hd and _out_features(q) is not None and _out_features(k) is not None:    # Llama-style projections
            out.append({"heads": _out_features(q) // hd, "kv": _out_features(k) // hd, "dim": hd}[kind])
            continue
        count = next((_int(m, a) for a in HEAD_COUNT_ATTRS if _int(m, a) is not None), None)
        if count is None:
            continue
        if kind == "heads":
            out.append(count)
        elif kind == "dim":
            d = next((_int(m, a) for a in HEAD_DIM_ATTRS if _int(m, a) is not None), None)
            if d is not None:
                out.append(d)
    return out


_MLP_IN = ("gate_proj", "up_proj", "c_fc", "fc1", "w1")


def _intermediate(model: nn.Module) -> list[int]:
    out = []
    for name, m in model.named_modules():
        child = next((getattr(m, c) for c in _MLP_IN if _out_features(getattr(m, c, None)) is not None), None)
        if child is not None:
            out.append(_out_features(child))
        elif name.endswith("intermediate") and _out_features(getattr(m, "dense", None)) is not None:   # BERT, ViT
            out.append(_out_features(m.dense))
    return out


READERS: dict[tuple[str, ...], Callable[[nn.Module], list[int]]] = {
    ("hidden_size", "n_embd", "d_model"): _hidden,
    ("num_attention_heads", "n_head"): lambda m: _attention(m, "heads"),
    ("num_key_value_heads",): lambda m: _attention(m, "kv"),
    ("head_dim",): lambda m: _attention(m, "dim"),
    ("intermediate_size", "n_inner", "ffn_dim"): _intermediate,
}


def is_hf_model(model: nn.Module) -> bool:
    try:
        from transformers import PretrainedConfig, PreTrainedModel
    except Exception:   # transformers is optional
        return False
    return isinstance(model, PreTrainedModel) and isinstance(getattr(model, "config", None), PretrainedConfig)


class ConfigWarning(UserWarning):
    """A pruned Hugging Face model whose config cannot describe it: it runs, and
    :func:`metanet.prune.save` / :func:`metanet.prune.load` (the plan in the file) keep
    it, but ``from_pretrained`` on what ``save_pretrained`` writes would fail."""


def config_updates(original: nn.Module, pruned: nn.Module) -> tuple[dict[str, int], list[str]]:
    """The config attributes whose value pruning changed, read from the pruned modules, and
    the problems: sizes that differ between layers (the config holds one)."""
    cfg = pruned.config
    updates, problems = {}, []
    for attrs, read in READERS.items():
        present = [a for a in attrs if _int(cfg, a) is not None or (a == "n_inner" and hasattr(cfg, a))]
        if not present:
            continue
        new, old = set(read(pruned)), set(read(original))
        if not new or new == old:
            continue
        if len(new) > 1:
            problems.append(f"the config holds one {present[0]} for every layer, the pruned layers have "
                            f"{sorted(new)} (prune the same number in every layer: allocation='uniform')")
            continue
        value = new.pop()
        updates.update({a: value for a in present})
    # a config without head_dim derives it as hidden_size // num_attention_heads (Qwen2, Mistral):
    # write it where that no longer holds after pruning
    if _int(cfg, "head_dim") is None and updates.keys() & {"hidden_size", "num_attention_heads"}:
        dims = set(_attention(pruned, "dim"))
        hidden = updates.get("hidden_size", _int(cfg, "hidden_size"))
        heads = updates.get("num_attention_heads", _int(cfg, "num_attention_heads"))
        if len(dims) == 1 and hidden and heads and hidden // heads != next(iter(dims)):
            updates["head_dim"] = dims.pop()
    return updates, problems


def update_config(original: nn.Module, pruned: nn.Module) -> dict[str, int]:
    """Write the pruned sizes into ``pruned.config`` (a copy of the original's) and check that
    the model class built from it on the ``meta`` device has the pruned model's tensor
    shapes. Returns the attributes changed. Where the config cannot describe the pruned
    model, warns with :class:`ConfigWarning`, naming the tensor and the way out."""
    import warnings

    cfg = pruned.config
    updates, problems = config_updates(original, pruned)
    for a, v in updates.items():
        setattr(cfg, a, v)
    try:
        with torch.device("meta"):
            fresh = type(pruned)(cfg)
        want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
        for k, v in pruned.state_dict().items():
            if k in want and want[k] != tuple(v.shape):
                problems.append(f"{k} is {tuple(v.shape)} after pruning, {want[k]} in {type(pruned).__name__} "
                                f"built from the config (e.g. a head size the config ties to another)")
                break
    except Exception as err:
        problems.append(f"{type(pruned).__name__} cannot be built from it ({type(err).__name__}: {err})")
    if problems:
        changed = ", ".join(f"{a}={v}" for a, v in updates.items()) or "nothing changed"
        warnings.warn(f"the pruned model's Hugging Face config ({changed}) cannot describe it: "
                      f"{'; '.join(problems)}. It runs, but from_pretrained would not rebuild what "
                      f"save_pretrained writes: leave those groups out (groups=...) or save with "
                      f"metanet.prune.save (the plan in the file)", ConfigWarning, stacklevel=4)
    return updates
