"""More Hugging Face families with their default code paths (small configs): the
converter must cope with rotary embeddings, grouped-query attention, windowed
attention, mask-building ops and output dataclasses without special cases."""
import pytest
import torch

from metanet import WeightSpace
from metanet.trace.export import _default_kwargs, tensor_leaves

T = pytest.importorskip("transformers")
IDS = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
IMG = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
IDS2 = torch.randint(0, 30, (3, 9), generator=torch.Generator().manual_seed(1))
IMG2 = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

CASES = {
    "llama": lambda: (T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16)), (IDS,), 9),
    "distilbert": lambda: (T.DistilBertForSequenceClassification(T.DistilBertConfig(
        vocab_size=32, dim=16, hidden_dim=32, n_layers=2, n_heads=2, max_position_embeddings=16)), (IDS,), 10),
    "opt": lambda: (T.OPTForCausalLM(T.OPTConfig(
        vocab_size=32, hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, word_embed_proj_dim=16)), (IDS,), 9),
    "swin": lambda: (T.SwinForImageClassification(T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4,
        num_labels=3)), (IMG,), 10),
    # ALiBi attention: scores = baddbmm(position bias, q, k); one slope per head, so heads stay put
    "bloom": lambda: (T.BloomForCausalLM(T.BloomConfig(vocab_size=32, hidden_size=16, n_layer=2, n_head=4)),
                      (IDS,), 5),
    "resnet": lambda: (T.ResNetForImageClassification(T.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)), (IMG,), 6),
}


def _outputs(model, x):
    with torch.no_grad():
        return tensor_leaves(model(*x, **_default_kwargs(model, {})))


@pytest.mark.parametrize("name", sorted(CASES))
def test_hf_family(name):
    torch.manual_seed(0)
    model, x, n_groups = CASES[name]()
    model.eval()
    params = dict(model.named_parameters())
    with torch.no_grad():  # away from zero-initialized heads and biases
        for p in params.values():
            p.add_(0.2 * torch.randn_like(p))
    ws = WeightSpace.of(model, x, cache=False)
    assert len(ws.groups) == n_groups
    assert not ws.spaces.warnings
    sd = model.state_dict()
    # the traced input and one of another shape: a longer sequence, or another batch of images
    other = (IDS2,) if x[0] is IDS else (IMG2,)
    refs = [_outputs(model, xi) for xi in (x, other)]
    for seed in range(2):
        p = ws.sample_permutation(torch.Generator().manual_seed(seed))
        model.load_state_dict(ws.permute(sd, p))
        for xi, ref in zip((x, other), refs):
            out = _outputs(model, xi)
            err = max(((a - b).abs().max() / (a.abs().max() + 1e-12)).item() for a, b in zip(ref, out))
            assert err < 1e-5, (tuple(xi[0].shape), err)
    model.load_state_dict(sd)
    for layout in ("compact", "param"):
        back = ws.state_dict(ws.graph(sd, layout))
        assert all(torch.equal(back[k], sd[k]) for k in sd)
