"""metanet.prune: structured pruning by neuron groups.

What is checked: removing neurons whose outgoing weights are zero keeps the outputs
(exactly, with integer-valued float64 weights; to float tolerance for attention heads),
with a control where the weights are not zero and the outputs change; parameter and
FLOP counts equal a hand computation; pruning runs and shrinks residual, depthwise with
squeeze-excitation, concatenation and transformer models (whole heads, MLP neurons) and
Hugging Face models; the pruned model saves, reloads into a fresh instance and runs;
refusals leave the model untouched.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from archs import ARCHS, flatten_outputs, swin
from metanet.prune import (PruneError, count_flops, group_norms, keep_global, keep_top, load, prunable_groups, prune,
                           prune_model, save, scores_for)
from metanet.prune.core import _positions
from metanet.space import WeightSpace

warnings.filterwarnings("ignore", category=UserWarning)


def _space(name):
    model, inputs = ARCHS[name]()
    return model, inputs, WeightSpace.of(model, inputs)


def _outputs(model, inputs):
    with torch.no_grad():
        return flatten_outputs(model(*inputs))


def _zero_outgoing(ws, model, gid, removed):
    """Zero, in place, every weight that reads neurons ``removed`` of group ``gid`` (axes
    whose edge role is "in")."""
    sd = model.state_dict()
    removed = torch.as_tensor(removed)
    n = 0
    with torch.no_grad():
        for name, axis in ws.group_axes(gid):
            if ws.spaces.roles.get(name, {}).get(axis) != "in":
                continue
            pos = _positions(ws.axes(name)[axis], ws.spaces.sizes, ws.groups[gid].space)
            hit = torch.isin(pos, removed).nonzero().flatten()
            sd[name].index_fill_(axis, hit, 0.0)
            n += 1
    assert n, f"group {gid} has no outgoing weights"


def _integer_weights(model):
    """float64 copy with small integer weights: every sum is exact in any order."""
    model = model.double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-3, 4, p.shape, generator=g).double())
    return model


def _group_named(ws, prefix):
    return next(g.id for g in ws.groups if g.name.startswith(prefix))


# -- removing dead neurons is exact ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp_relu", "small_cnn"])
def test_removing_neurons_with_zero_outgoing_weights_is_exact(name):
    model, inputs = ARCHS[name]()
    model = _integer_weights(model)
    inputs = tuple(torch.randint(-2, 3, x.shape).double() for x in inputs)
    ws = WeightSpace.of(model, inputs)
    gid = ws.groups[0].id
    removed = [1, 2, 5]
    keep = {gid: [i for i in range(ws.groups[gid].size) if i not in removed]}

    # control: the neurons matter while their outgoing weights are not zero
    live = prune_model(ws, model, keep, inputs)
    assert not torch.equal(_outputs(live, inputs)[0], _outputs(model, inputs)[0])

    _zero_outgoing(ws, model, gid, removed)
    pruned = prune_model(ws, model, keep, inputs)
    assert torch.equal(_outputs(pruned, inputs)[0], _outputs(model, inputs)[0])
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,prefix", [("transformer_encoder", "encoder.layers.0.self_attn.in_proj_weight[0]"),
                                         ("hf_bert", "bert.encoder.layer.0.attention.self.query.weight[0]"),
                                         ("hf_gpt2", "transformer.h.0.attn.c_attn.weight[1]")])
def test_removing_a_head_with_zero_output_weights_keeps_outputs(name, prefix):
    model, inputs, ws = _space(name)
    heads = next(g.id for g in ws.groups if g.name == prefix and g.size == 2)   # 2 heads
    _zero_outgoing(ws, model, heads, [0])
    pruned = prune_model(ws, model, {heads: [1]}, inputs)
    torch.testing.assert_close(_outputs(pruned, inputs)[0], _outputs(model, inputs)[0], rtol=1e-5, atol=1e-6)
    attn = [m for m in pruned.modules() if hasattr(m, "num_heads") or hasattr(m, "num_attention_heads")]
    counts = sorted(getattr(m, "num_heads", getattr(m, "num_attention_heads", None)) for m in attn)
    assert counts == [1, 2]   # layer 0 lost a whole head, layer 1 did not


# -- counts --------------------------------------------------------------------------------------------
def test_mlp_counts_match_hand_computation():
    model, inputs, ws = _space("mlp_relu")            # 6 -> 8 -> 8 -> 3, batch 2
    a, b = 5, 3
    res = prune(model, inputs, keep={0: [0, 2, 3, 4, 7], 1: [1, 4, 6]}, latency=False)
    B = inputs[0].shape[0]
    assert res.before.params == (6 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    assert res.after.params == (6 * a + a) + (a * b + b) + (b * 3 + 3)
    assert res.before.flops == 2 * B * (6 * 8 + 8 * 8 + 8 * 3)
    assert res.after.flops == 2 * B * (6 * a + a * b + b * 3)
    assert res.groups == {0: (8, 5), 1: (8, 3)}
    assert res.model.net[0].out_features == a and res.model.net[2].in_features == a


def test_cnn_counts_match_hand_computation():
    model, inputs, ws = _space("small_cnn")           # 1 -> 16 -> 16 -> 16 convs 3x3, 8x8 input; fc to 10
    c1, c2, c3 = 7, 9, 4
    res = prune(model, inputs, keep={0: range(c1), 1: range(3, 3 + c2), 2: [0, 5, 10, 15]}, latency=False)
    B = inputs[0].shape[0]

    def params(c1, c2, c3):
        return (9 * c1 + c1) + (c1 * 9 * c2 + c2) + (c2 * 9 * c3 + c3) + (c3 * 10 + 10)

    def flops(c1, c2, c3):   # output maps 6x6, 4x4, 2x2
        return 2 * B * (36 * c1 * 9 + 16 * c2 * c1 * 9 + 4 * c3 * c2 * 9 + c3 * 10)

    assert (res.before.params, res.before.flops) == (params(16, 16, 16), flops(16, 16, 16))
    assert (res.after.params, res.after.flops) == (params(c1, c2, c3), flops(c1, c2, c3))
    assert res.flops_reduction == pytest.approx(flops(16, 16, 16) / flops(c1, c2, c3))


# -- criteria --------------------------------------------------------------------------------------------
def test_magnitude_is_the_norm_over_every_tensor_of_the_group():
    model, inputs, ws = _space("mlp_relu")
    w1, b1, w2 = model.net[0].weight, model.net[0].bias, model.net[2].weight
    want = (w1.pow(2).sum(1) + b1.pow(2) + w2.pow(2).sum(0)).sqrt().double()
    torch.testing.assert_close(group_norms(ws, model.state_dict())[0], want)
    with torch.no_grad():
        w1[[2, 5]] *= 100
    keep = keep_top(ws, scores_for(ws, model, "magnitude"), 0.75, groups=[0])
    assert keep[0].tolist() == [2, 5]


def test_learned_and_random_scores():
    model, inputs, ws = _space("mlp_relu")
    learned = {1: torch.tensor([0.0, 9, 1, 8, 2, 7, 3, 6])}
    res = prune(model, inputs, learned, ratio=0.5, latency=False)
    assert res.keep[1].tolist() == [1, 3, 5, 7] and 0 not in res.keep    # unscored groups stay
    a = prune(model, inputs, "random", ratio=0.5, generator=torch.Generator().manual_seed(3), latency=False)
    b = prune(model, inputs, "random", ratio=0.5, generator=torch.Generator().manual_seed(3), latency=False)
    assert all(torch.equal(a.keep[g], b.keep[g]) for g in a.keep) and len(a.keep) == 2
    with pytest.raises(PruneError, match="has 8 neurons"):
        prune(model, inputs, {0: torch.ones(3)}, ratio=0.5)
    with pytest.raises(PruneError, match="unknown criterion"):
        prune(model, inputs, "taylor", ratio=0.5)


def test_speedup_target_is_reached():
    model, inputs = ARCHS["small_cnn"]()
    res = prune(model, inputs, "magnitude", speedup=2.0, latency=False)
    assert res.flops_reduction >= 2.0
    assert res.flops_reduction < 3.0     # the smallest ratio that reaches it, not everything


def test_global_allocation_removes_the_lowest_scores_over_all_groups():
    model, inputs, ws = _space("mlp_relu")          # two groups of 8
    scores = {0: torch.arange(8.0) + 100, 1: torch.arange(8.0)}
    keep = keep_global(ws, scores, 0.5)             # the 8 lowest are all in group 1: one of it stays
    assert 0 not in keep and keep[1].tolist() == [7]
    keep = keep_global(ws, {0: torch.arange(8.0), 1: torch.arange(8.0) + 0.5}, 0.5)
    assert keep[0].tolist() == [4, 5, 6, 7] and keep[1].tolist() == [4, 5, 6, 7]
    uniform = prune(model, inputs, scores, speedup=1.5, latency=False, ws=ws)
    glob = prune(model, inputs, scores, speedup=1.5, latency=False, ws=ws, allocation="global")
    assert glob.flops_reduction >= 1.5 and uniform.flops_reduction >= 1.5
    assert glob.groups[1][1] < uniform.groups[1][1] and 0 not in glob.groups   # group 1 pays for both
    with pytest.raises(PruneError, match="allocation must be"):
        prune(model, inputs, scores, ratio=0.5, latency=False, ws=ws, allocation="layerwise")


# -- architectures ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "mobilenetv2_se", "depthwise_grouped",
                                  "densenet", "hf_gpt2", "hf_bert", "hf_vit", "gru", "convnext"])
def test_prunes_architecture(name):
    model, inputs, ws = _space(name)
    ref = _outputs(model, inputs)
    res = prune(model, inputs, "magnitude", ratio=0.5, ws=ws, latency=False)
    assert set(res.keep) == {g.id for g in ws.groups}
    assert res.after.params < res.before.params and res.after.flops < res.before.flops
    out = _outputs(res.model, inputs)
    assert [o.shape for o in out[:1]] == [r.shape for r in ref[:1]]
    assert torch.isfinite(out[0]).all()
    # every tensor carrying a group shrank together: the pruned model's weight space has
    # the new sizes, group for group
    small = WeightSpace.of(res.model, inputs)
    assert sorted(g.size for g in small.groups if g.size > 1) == \
        sorted(new for old, new in res.groups.values() if new > 1)


@pytest.mark.parametrize("name,free", [
    # SwinBlock reads its head count from an attribute and its head size from the
    # residual width: only the MLP's hidden neurons can go
    ("swin", (".fc1.",)),
    # Res2Block splits the reduce conv's channels by a fixed width: stem and side branch can go
    ("res2net_eca", ("stem.", "side.")),
])
def test_sizes_hard_coded_in_a_forward_refuse_cleanly_and_the_rest_prunes(name, free):
    """A custom block whose forward uses a stored size (heads, split width): pruning every
    group is refused with PruneError and the model is unchanged; the groups it does not
    size prune, and the pruned model runs with the new sizes."""
    model, inputs, ws = _space(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = _outputs(model, inputs)
    with pytest.raises(PruneError, match="fails on the example inputs"):
        prune(model, inputs, "magnitude", ratio=0.5, ws=ws, latency=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ids = [g.id for g in ws.groups if any(f in g.name for f in free)]
    assert ids and len(ids) < len(ws.groups)
    # the probe finds exactly those groups, and says why each other one failed
    ok, failed = prunable_groups(model, inputs, ws=ws)
    assert ok == ids and set(failed) == {g.id for g in ws.groups} - set(ids)
    assert all("Error" in why for why in failed.values())
    for res in (prune(model, inputs, "magnitude", ratio=0.5, groups=ids, ws=ws, latency=False),
                prune(model, inputs, "magnitude", ratio=0.5, groups="prunable", ws=ws, latency=False)):
        assert res.after.params < res.before.params
        assert {gid for gid, (old, new) in res.groups.items() if new < old} == set(ids)
        out = _outputs(res.model, inputs)
        assert out[0].shape == ref[0].shape and torch.isfinite(out[0]).all()
    assert res.skipped == failed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(PruneError, match="'prunable'"):
        prune(model, inputs, "magnitude", ratio=0.5, groups="some", ws=ws, latency=False)


def test_depthwise_groups_shrink_with_channels():
    model, inputs, ws = _space("mobilenetv2_se")
    res = prune(model, inputs, "l1", ratio=0.5, ws=ws, latency=False)
    dw = [m for m in res.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw and all(m.groups == m.in_channels == m.out_channels for m in dw)
    assert all(m.out_channels < o.out_channels for m, o in
               zip(dw, [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]))


def test_concatenation_shrinks_per_block():
    model, inputs, ws = _space("densenet")
    res = prune(model, inputs, "magnitude", ratio=0.5, ws=ws, latency=False)
    old = {k: v.shape for k, v in model.state_dict().items()}
    new = {k: v.shape for k, v in res.model.state_dict().items()}
    grew = [k for k in old if k.endswith("weight") and len(old[k]) == 4 and new[k][1] < old[k][1]]
    assert grew, "some convolution reading a concatenation lost input channels"
    for k in grew:   # every block of the concatenation is halved
        assert new[k][1] * 2 == old[k][1]


def test_transformer_heads_and_mlp_neurons():
    model, inputs, ws = _space("transformer_encoder")    # nn.TransformerEncoder: nn.MultiheadAttention
    mlp = [g.id for g in ws.groups if ".linear1." in g.name]
    res = prune(model, inputs, "magnitude", ratio=0.5, groups=mlp, ws=ws, latency=False)
    assert [layer.linear1.out_features for layer in res.model.encoder.layers] == [8, 8]
    assert all(type(layer.self_attn) is nn.MultiheadAttention for layer in res.model.encoder.layers)
    # every group, heads and the model dimension included: attention's inner size (heads x
    # head dim) then differs from its model dimension, which nn.MultiheadAttention cannot hold
    res = prune(model, inputs, "magnitude", ratio=0.5, ws=ws, latency=False)
    attn = [layer.self_attn for layer in res.model.encoder.layers]
    assert [(a.num_heads, a.head_dim, a.embed_dim) for a in attn] == [(1, 2, 4)] * 2
    assert res.flops_reduction > 2 and _outputs(res.model, inputs)[0].shape == _outputs(model, inputs)[0].shape


# -- saving and loading --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet_basic", "hf_gpt2"])
def test_pruned_model_saves_and_reloads(name, tmp_path):
    model, inputs, ws = _space(name)
    res = prune(model, inputs, "magnitude", ratio=0.5, ws=ws, latency=False)
    path = tmp_path / "pruned.safetensors"
    save(res.model, path, keep=res.keep)
    fresh, _ = ARCHS[name]()   # a fresh instance of the original architecture
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)        # different weights: they must come from the file
    back = load(fresh, inputs, path)
    torch.testing.assert_close(_outputs(back, inputs)[0], _outputs(res.model, inputs)[0])
    # and into the pruned module itself
    from safetensors.torch import load_model
    again = prune_model(ws, fresh, res.keep, inputs)
    load_model(again, str(path))
    torch.testing.assert_close(_outputs(again, inputs)[0], _outputs(res.model, inputs)[0])


# -- refusals -------------------------------------------------------------------------------------------------
class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.shape[0], 16, -1).mean(-1))   # 16: the channel count, hard-coded


class Scale(nn.Module):   # a module type the resize table does not know
    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.gain


def test_hard_coded_size_is_refused_and_model_untouched():
    torch.manual_seed(0)
    model, inputs = HardCodedView().eval(), (torch.randn(2, 3, 8, 8),)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    with pytest.raises(PruneError, match=r"fails on the example inputs.*group.*conv\.weight"):
        prune(model, inputs, "magnitude", ratio=0.5)
    assert model.conv.out_channels == 16 and list(model.parameters()) == params
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_unknown_module_type_without_inputs_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), Scale(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    inputs = (torch.randn(2, 4),)
    ws = WeightSpace.of(model, inputs)
    with pytest.raises(PruneError, match=r"cannot rebuild 1 \(Scale\).*not in the resize table"):
        ws.prune(model, {0: [0, 1, 2]})
    assert model[1].gain.shape == (6,)
    # given example inputs, the pruned model is run and checked instead, and it works
    pruned = ws.prune(model, {0: [0, 1, 2]}, inputs)
    assert pruned[1].gain.shape == (3,) and pruned(*inputs).shape == (2, 2)


def test_bad_plans_are_refused():
    model, inputs, ws = _space("mlp_relu")
    with pytest.raises(PruneError, match="keeps no neuron"):
        prune_model(ws, model, {0: []})
    with pytest.raises(PruneError, match="distinct indices in 0..7"):
        prune_model(ws, model, {0: [0, 8]})
    with pytest.raises(PruneError, match="names group 9"):
        prune_model(ws, model, {9: [0]})
    with pytest.raises(PruneError, match="exactly one of"):
        prune(model, inputs, ratio=0.5, speedup=2.0)
    assert count_flops(prune_model(ws, model, {0: range(8)}), inputs) == count_flops(model, inputs)


# -- the command -------------------------------------------------------------------------------------------------
def test_prune_command(tmp_path, capsys):
    from metanet.cli import main
    from metanet.examples import EXAMPLES

    out = tmp_path / "p.safetensors"
    assert main(["prune", "--model", "cnn", "--speedup", "2", "--no-latency", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "FLOPs" in text and "reduction" in text and "group   0:" in text
    model, inputs = EXAMPLES["cnn"]()
    pruned = load(model, inputs, out)
    assert count_flops(model, inputs) >= 2 * count_flops(pruned, inputs)
    assert main(["prune", "--model", "cnn", "--speedup", "2", "--allocation", "global", "--no-latency"]) == 0
    assert "of all neurons (global) removed" in capsys.readouterr().out
    assert main(["prune", "--model", "cnn", "--ratio", "1.5"]) == 2
    assert "--ratio must be in (0, 1)" in capsys.readouterr().err
    # --weights: a checkpoint of the model is read; a missing, unreadable or mismatched one is refused
    sd = model.state_dict()
    torch.save(sd, tmp_path / "w.pt")
    assert main(["prune", "--model", "cnn", "--weights", str(tmp_path / "w.pt"), "--ratio", "0.3",
                 "--no-latency"]) == 0
    capsys.readouterr()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    torch.save({k: v[:1] for k, v in sd.items()}, tmp_path / "cut.pt")
    for name, says in (("missing.pt", "no such --weights file"), ("junk.safetensors", "unreadable safetensors"),
                       ("cut.pt", "does not fit --model")):
        assert main(["prune", "--model", "cnn", "--weights", str(tmp_path / name), "--ratio", "0.3",
                     "--no-latency"]) == 2, name
        assert says in capsys.readouterr().err, name


def test_prune_command_only_prunable(tmp_path, capsys):
    """A model whose forward hard-codes sizes (a Swin block's head count): the plain
    command refuses (exit 1, nothing written); --only-prunable prunes the MLP groups and
    lists the groups it kept whole with the reason."""
    from metanet.cli import main

    factory = tmp_path / "swin_factory.py"
    factory.write_text(f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                       "from archs import swin\n")
    out = tmp_path / "p.safetensors"
    args = ["prune", "--model", f"{factory}:swin", "--ratio", "0.5", "--no-latency", "--out", str(out)]
    assert main(args) == 1
    assert "fails on the example inputs" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--only-prunable"]) == 0
    text = capsys.readouterr().out
    assert "blocks.0.fc1.weight[0]" in text and "kept whole (5 groups" in text and "blocks.0.table[1]:" in text
    model, inputs = swin()
    assert count_flops(load(model, inputs, out), inputs) < count_flops(model, inputs)


# -- meta pruning -----------------------------------------------------------------------------------------------
def _digits_cnn():
    from zoo.models import small_cnn
    torch.manual_seed(0)
    return small_cnn(channels=6, padding=1, input_size=8).eval(), (torch.randn(2, 1, 8, 8),)


def test_meta_pruner_is_equivariant():
    from tasks.meta_prune import MetaPruner

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    meta = MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=2)
    with torch.no_grad():
        meta.gate.fill_(1.0)     # the gate starts at 0 (the identity); open it to see the edit
    sd = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
    perm = ws.sample_permutation(torch.Generator().manual_seed(1))
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perm.perms)
    with torch.no_grad():
        edited = meta(sd)
        edited_of_permuted = meta(ws.permute(sd, perm, batched=True))
    want = ws.permute(edited, perm, batched=True)
    assert any((edited[k] - sd[k]).abs().max() > 1e-3 for k in sd)          # it edits something
    for k in sd:
        torch.testing.assert_close(edited_of_permuted[k], want[k], rtol=1e-4, atol=1e-5)
    # control: permuting one tensor alone breaks it
    broken = dict(ws.permute(sd, perm, batched=True))
    k0 = ws.group_axes(0)[0][0]
    broken[k0] = sd[k0]
    with torch.no_grad():
        out = meta(broken)
    assert not all(torch.allclose(out[k], want[k], rtol=1e-4, atol=1e-5) for k in sd)


def test_group_lasso_matches_group_norms():
    from tasks.meta_prune import group_lasso

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    sd = model.state_dict()
    names = {n for n, _ in model.named_parameters()}
    want = sum(v.sum() for v in group_norms(ws, sd, 2, names).values())
    got = group_lasso(ws, {k: v.unsqueeze(0) for k, v in sd.items()}, names)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["small_cnn", "resnet_basic"])
def test_masked_output_is_the_pruned_network(name):
    # zeroing the neurons magnitude pruning removes, in every tensor of their group, is the pruned network
    from tasks.meta_prune import masked

    model, inputs, ws = _space(name)
    params = {n for n, _ in model.named_parameters()}
    sd = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
    for ratio, temperature in ((0.25, 0.0), (0.5, 0.0), (0.5, 0.1)):
        zeroed = {k: v[0] for k, v in masked(ws, sd, params, ratio, temperature=temperature).items()}
        assert any(not torch.equal(zeroed[k], sd[k][0]) for k in params)
        keep = keep_top(ws, scores_for(ws, model, "magnitude"), ratio)
        pruned = prune_model(ws, model, keep, inputs)
        twin = copy.deepcopy(model)
        twin.load_state_dict(zeroed)
        torch.testing.assert_close(_outputs(twin, inputs)[0], _outputs(pruned, inputs)[0], rtol=1e-4, atol=1e-5)


def test_soft_mask_is_the_same_mask_forward_and_gives_removed_neurons_a_gradient():
    from tasks.meta_prune import masked

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    params = {n for n, _ in model.named_parameters()}
    sd = {k: v.unsqueeze(0).clone().requires_grad_(k in params) for k, v in model.state_dict().items()}
    hard, soft = masked(ws, sd, params, 0.5), masked(ws, sd, params, 0.5, temperature=0.1)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():                              # the same network function
        torch.testing.assert_close(_outputs_of(model, soft, (x,)), _outputs_of(model, hard, (x,)))
    name, axis = ws.group_axes(0)[0]                   # a tensor of group 0, its neurons along ``axis``
    dead = hard[name][0].detach().movedim(axis, 0).reshape(ws.groups[0].size, -1).abs().sum(1) == 0
    assert dead.any() and not dead.all()
    grads = {}
    for label, out in (("hard", hard), ("soft", soft)):
        loss = _outputs_of(model, out, (x,)).square().sum()
        g = torch.autograd.grad(loss, sd[name], retain_graph=True)[0][0].movedim(axis, 0)
        grads[label] = g.reshape(ws.groups[0].size, -1).abs().sum(1)
    assert bool((grads["hard"][dead] == 0).all())      # a hard mask: nothing reaches the removed neurons
    assert bool((grads["soft"][dead] > 0).all())       # the soft mask's gradient does


def _outputs_of(model, stacked, inputs):
    from torch.func import functional_call
    return functional_call(model, {k: v[0] for k, v in stacked.items()}, inputs)


def test_meta_pruner_starts_at_the_identity_and_scale_mode_is_equivariant():
    from tasks.meta_prune import MetaPruner

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    sd = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
    meta = MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=2, mode="scale").start_at_identity()
    with torch.no_grad():
        assert all(torch.equal(v, sd[k]) for k, v in meta(sd).items())
        for p in meta.gmn.edge_head.parameters():
            p.normal_(0, 0.3)
        perm = ws.sample_permutation(torch.Generator().manual_seed(2))
        edited = meta(sd)
        assert any((edited[k] - sd[k]).abs().max() > 1e-3 for k in sd)
        want = ws.permute(edited, perm, batched=True)
        got = meta(ws.permute(sd, perm, batched=True))
    for k in sd:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["small_cnn", "cnn_flatten", "resnet_basic"])
def test_neuron_gates_start_at_identity_scale_whole_neurons_and_are_equivariant(name):
    from tasks.meta_prune import MetaPruner

    model, inputs, ws = _space(name)
    meta = MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=2, mode="neuron").start_at_identity()
    nodes = meta.neuron_nodes()
    assert set(nodes) == {g.id for g in ws.groups}                   # every group has nodes standing for it
    for gid, (_, neurons, count) in nodes.items():
        assert set(neurons.tolist()) == set(range(ws.groups[gid].size)) and bool((count >= 1).all())
    sd = {k: v.unsqueeze(0).float() for k, v in model.state_dict().items()}
    params = {n for n, _ in model.named_parameters()}
    with torch.no_grad():
        assert all(torch.equal(v, sd[k]) for k, v in meta(sd, params).items())
        for p in meta.gmn.node_head.parameters():
            p.normal_(0, 0.3)
        edited = meta(sd, params)
        factors = meta.neuron_factors(sd)
        perm = ws.sample_permutation(torch.Generator().manual_seed(2))
        got = meta(ws.permute(sd, perm, batched=True), params)
    assert any((edited[k] - sd[k]).abs().max() > 1e-3 for k in params)
    assert all(torch.equal(edited[k], sd[k]) for k in sd if k not in params)    # running statistics untouched
    want = ws.permute(edited, perm, batched=True)
    for k in sd:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    # a whole neuron is scaled: with the other groups' factors 1, a group's factors are exactly
    # the ratios of its neurons' group norms after / before (every slice, every tensor)
    from tasks.meta_prune import scale_neurons

    before = group_norms(ws, {k: v[0] for k, v in sd.items()}, 2, params)
    for g in ws.groups:
        one = scale_neurons(ws, sd, params, {g.id: factors[g.id]})
        ratio = group_norms(ws, {k: v[0] for k, v in one.items()}, 2, params)[g.id] / before[g.id]
        torch.testing.assert_close(ratio.float(), factors[g.id][0].float(), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(ratio.float(), torch.ones_like(ratio.float()))


def test_rebalance_keeps_the_function_and_moves_group_norms():
    from torch.func import functional_call

    from tasks.meta_prune import MetaPruner

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    params = {n for n, _ in model.named_parameters()}
    meta = MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=2, mode="rebalance").start_at_identity()
    sd = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        for p in meta.gmn.node_head.parameters():
            p.normal_(0, 0.3)
        edited = meta(sd, params)
        perm = ws.sample_permutation(torch.Generator().manual_seed(4))
        got = meta(ws.permute(sd, perm, batched=True), params)
        torch.testing.assert_close(functional_call(model, {k: v[0] for k, v in edited.items()}, (x,)), model(x),
                                   rtol=1e-4, atol=1e-5)
    before = group_norms(ws, {k: v[0] for k, v in sd.items()}, 2, params)
    after = group_norms(ws, {k: v[0] for k, v in edited.items()}, 2, params)
    assert any(not torch.allclose(before[g], after[g], rtol=1e-3) for g in before)
    want = ws.permute(edited, perm, batched=True)
    for k in sd:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    # a space with no positive-scaling symmetry (batch norms) is left as it is
    model, inputs, ws = _space("resnet_basic")
    meta = MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=1, mode="rebalance")
    with torch.no_grad():
        meta.gate.fill_(1.0)
        sd = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
        assert all(torch.equal(v, sd[k]) for k, v in meta(sd).items())


def test_group_lasso_per_network_and_bad_mode():
    from tasks.meta_prune import MetaPruner, group_lasso

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    names = {n for n, _ in model.named_parameters()}
    sd = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
    two = {k: torch.cat([v, 3 * v]) for k, v in sd.items()}
    per = group_lasso(ws, two, names, per_network=True)
    assert per.shape == (2,)
    torch.testing.assert_close(per[1], 3 * per[0])
    torch.testing.assert_close(per.sum(), group_lasso(ws, two, names))
    with pytest.raises(ValueError, match="MetaPruner mode is one of"):
        MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=1, mode="gates")


@pytest.mark.slow
@pytest.mark.parametrize("design", [{}, {"mode": "neuron", "open_gate": True, "lasso_norm": True, "prune_aware": 1.0,
                                         "mask_temperature": 0.2, "lam_warmup": 0.5}])
def test_meta_prune_task_runs(tmp_path, design):
    from tasks.meta_prune import MetaPruneConfig, run

    res = run(MetaPruneConfig(channels=6, n_train_nets=2, n_test_nets=1, net_steps=20, meta_steps=3, meta_batch=2,
                              speedups=(2.0,), finetune_steps=2, out=str(tmp_path), **design), log=lambda m: None)
    assert {r["method"] for r in res.rows} == {"random", "magnitude", "meta"}
    assert all(r["flops_reduction"] >= 2.0 for r in res.rows)
    assert (tmp_path / "results.md").exists() and (tmp_path / "accuracy.png").exists()


def test_meta_pruner_saves_loads_and_drives_the_command(tmp_path, capsys):
    from metanet.cli import main
    from tasks.meta_prune import MetaPruner, edit, load_meta_pruner, save_meta_pruner

    model, inputs = _digits_cnn()
    ws = WeightSpace.of(model, inputs)
    meta = MetaPruner(ws, int(ws.layout("compact").width), hidden=8, layers=1)
    with torch.no_grad():
        meta.gate.fill_(0.5)
    path = tmp_path / "meta.safetensors"
    save_meta_pruner(meta, path)
    back = load_meta_pruner(path, ws)
    a, b = edit(meta, model), edit(back, model)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    factory = tmp_path / "net.py"
    factory.write_text("import torch\nfrom zoo.models import small_cnn\n"
                       "def make():\n    torch.manual_seed(0)\n"
                       "    return small_cnn(channels=6, padding=1, input_size=8).eval(), (torch.randn(2, 1, 8, 8),)\n")
    assert main(["prune", "--model", f"{factory}:make", "--metanet", str(path), "--ratio", "0.5",
                 "--no-latency"]) == 0
    assert "edited by the meta-pruning metanetwork" in capsys.readouterr().out
