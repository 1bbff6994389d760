"""Pruning Hugging Face models: the config after pruning, and grouped-query attention.

A pruned model saved with ``save_pretrained`` must come back with ``from_pretrained``
(the config carries the new sizes); sizes the config cannot describe are warned about.
For grouped-query attention (Llama / Qwen2 style, ``num_key_value_heads`` <
``num_attention_heads``) the weight space has two head groups per layer: the key/value
heads (each with all its query heads) and the query heads within every key/value group.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from archs import ARCHS
from metanet.prune import ConfigWarning, PruneError, prune, prune_model
from metanet.space import WeightSpace

transformers = pytest.importorskip("transformers")

HEADS, KV, HEAD_DIM, HIDDEN, FFN = 4, 2, 4, 16, 24


def _gqa(family: str = "llama", attn: str = "eager"):
    torch.manual_seed(0)
    common = dict(vocab_size=32, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=2,
                  num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=16,
                  tie_word_embeddings=False, attn_implementation=attn)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    ids = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(1))
    return model.eval(), (ids,)


def _logits(model, inputs):
    with torch.no_grad():
        return model(*inputs).logits


def _head_groups(ws, layer: int):
    """(key/value-head group, query-heads-within-a-group group) of one layer, found by the
    tensors they cut: the first cuts k_proj, the second only q_proj (and o_proj)."""
    q = f"model.layers.{layer}.self_attn.q_proj.weight"
    k = f"model.layers.{layer}.self_attn.k_proj.weight"
    on_q = [g.id for g in ws.groups if (q, 0) in ws.group_axes(g.id)]     # output axis: heads x dims
    kv = [g for g in on_q if (k, 0) in ws.group_axes(g)]
    within = [g for g in on_q if g not in kv]
    assert len(kv) == 1 and len(within) == 1, (kv, within)
    return kv[0], within[0]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gqa_weight_space_has_kv_head_and_query_head_groups(family):
    model, inputs = _gqa(family)
    ws = WeightSpace.of(model, inputs)
    for layer in range(2):
        kv, within = _head_groups(ws, layer)
        assert ws.groups[kv].size == KV                  # key/value heads
        assert ws.groups[within].size == HEADS // KV     # query heads sharing one key/value head


def _zero_query_heads(model, layer: int, heads: list[int]) -> None:
    """Zero o_proj's input columns of these query heads: they then contribute nothing."""
    o = model.model.layers[layer].self_attn.o_proj.weight
    with torch.no_grad():
        for h in heads:
            o[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0


@pytest.mark.filterwarnings("ignore::metanet.prune.ConfigWarning")   # one layer pruned: the config cannot say so
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("which", ["kv_head", "query_head"])
def test_gqa_removing_silent_heads_is_exact(family, attn, which):
    model, inputs = _gqa(family, attn)
    ws = WeightSpace.of(model, inputs)
    kv, within = _head_groups(ws, 0)
    # query head h = kv head * (HEADS // KV) + index within its group (q_proj's axis is kv x group x dim)
    if which == "kv_head":     # key/value head 0 and both of its query heads
        keep, silent = {kv: [1]}, [0, 1]
    else:                      # the first query head of every key/value group
        keep, silent = {within: [1]}, [0, 2]
    reference = _logits(model, inputs)
    pruned_live = prune_model(ws, model, keep, inputs)
    assert not torch.allclose(_logits(pruned_live, inputs), reference, atol=1e-4)   # control: those heads mattered
    _zero_query_heads(model, 0, silent)
    reference = _logits(model, inputs)
    pruned = prune_model(ws, model, keep, inputs)
    torch.testing.assert_close(_logits(pruned, inputs), reference, rtol=1e-5, atol=1e-6)
    attn0 = pruned.model.layers[0].self_attn
    heads, kvs = (HEADS - 2, KV - 1) if which == "kv_head" else (HEADS - 2, KV)
    assert attn0.q_proj.out_features == heads * HEAD_DIM and attn0.k_proj.out_features == kvs * HEAD_DIM
    assert attn0.num_key_value_groups == heads // kvs
    assert pruned.model.layers[1].self_attn.q_proj.out_features == HEADS * HEAD_DIM   # other layer untouched


@pytest.mark.filterwarnings("ignore::metanet.prune.ConfigWarning")
def test_gqa_value_head_size_alone_is_refused():
    # Llama uses one head_dim for queries, keys and values: the value dims cannot shrink alone
    model, inputs = _gqa("llama")
    ws = WeightSpace.of(model, inputs)
    v = "model.layers.0.self_attn.v_proj.weight"
    vdims = next(g.id for g in ws.groups if (v, 0) in ws.group_axes(g.id) and g.id not in _head_groups(ws, 0))
    before = {k: t.clone() for k, t in model.state_dict().items()}
    with pytest.raises(PruneError, match="pruned model fails"):
        prune(model, inputs, "magnitude", ratio=0.5, groups=[vdims], latency=False, ws=ws)
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_pruned_gqa_model_saves_with_a_config_that_reloads(family, tmp_path):
    model, inputs = _gqa(family)
    ws = WeightSpace.of(model, inputs)
    heads = [g for layer in range(2) for g in _head_groups(ws, layer)]
    mlp = [g.id for g in ws.groups if g.size == FFN]
    hidden = [g.id for g in ws.groups if g.size == HIDDEN]
    res = prune(model, inputs, "magnitude", ratio=0.5, groups=heads + mlp + hidden, latency=False, ws=ws)
    cfg = res.model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.hidden_size) == \
        (HEADS // 4, KV // 2, FFN // 2, HIDDEN // 2)
    assert model.config.num_attention_heads == HEADS                       # the original's config is unchanged
    res.model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()                   # raises on any size mismatch
    torch.testing.assert_close(_logits(back, inputs), _logits(res.model, inputs))


# groups the configs can describe: hidden size, whole heads and MLP neurons of both layers
# (not head dims: these configs tie the head size to hidden_size / num_attention_heads), and
# BERT's pooler output, which its config ties to hidden_size
POOLER = "bert.pooler.dense.weight[0]"
DESCRIBABLE = {"hf_gpt2": ("transformer.wte.weight[1]", 2, "mlp.c_fc"),
               "hf_bert": ("bert.embeddings.word_embeddings.weight[1]", 2, "intermediate.dense"),
               "hf_vit": ("vit.embeddings.cls_token[2]", 2, "mlp.fc1")}


def _describable(ws, name):
    hidden, n_heads, mlp = DESCRIBABLE[name]
    out = [g.id for g in ws.groups if g.name == hidden]
    out += [g.id for g in ws.groups if g.size == n_heads]
    out += [g.id for g in ws.groups if mlp in g.name or g.name == POOLER]
    assert len(out) == 5 + (name == "hf_bert"), [g.name for g in ws.groups]
    return out


def _first(out):
    return out.logits if hasattr(out, "logits") else out[0]


@pytest.mark.parametrize("name", ["hf_gpt2", "hf_bert", "hf_vit"])
def test_pruned_hf_model_saves_with_a_config_that_reloads(name, tmp_path):
    model, inputs = ARCHS[name]()
    ws = WeightSpace.of(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)
        res = prune(model, inputs, "magnitude", ratio=0.5, groups=_describable(ws, name), latency=False, ws=ws)
    res.model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(_first(back(*inputs)), _first(res.model(*inputs)))
    got, want = back.config.to_dict(), res.model.config.to_dict()
    got.pop("_name_or_path", None), want.pop("_name_or_path", None)
    assert got == want


def test_config_that_cannot_describe_the_pruned_model_warns():
    model, inputs = ARCHS["hf_gpt2"]()
    # GPT-2's head size is n_embd / n_head: its head dims cannot shrink in the config
    with pytest.warns(ConfigWarning, match="c_attn"):
        res = prune(model, inputs, "magnitude", ratio=0.5, latency=False)
    with torch.no_grad():
        assert _first(res.model(*inputs)).shape == _first(model(*inputs)).shape   # it still runs
