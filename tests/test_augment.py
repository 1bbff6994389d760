"""metanet.augment: exact transforms keep every network's function, refusals are clear,
approximate transforms do what they say, MixUp mixes weights and labels alike."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from archs import ARCHS, flatten_outputs
from metanet.augment import (Compose, GaussianNoise, RandomApply, INRInputTransform, MagnitudePrune, MixUp, Quantize,
                             RandomPermutation, RandomScaling, RandomSignFlip, SirenBiasShift, WeightDropout,
                             running_stat_keys, transformed)
from metanet.space import WeightSpace

ARCH_NAMES = ["mlp_relu", "mlp_tanh", "siren", "small_cnn", "cnn_flatten", "resnet_basic",
              "transformer_encoder", "gpt", "convnext", "swin", "res2net_eca"]
EXACT = [RandomPermutation, RandomScaling, RandomSignFlip, SirenBiasShift]
B = 3


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def setup(name):
    model, x = ARCHS[name]()
    ws = WeightSpace.of(model, x)
    sd = model.state_dict()
    stack = {k: torch.stack([v] * B) for k, v in sd.items()}
    return model, x, ws, sd, stack


def outputs(model, sd, x):
    m = copy.deepcopy(model)
    m.load_state_dict(sd)
    with torch.no_grad():
        return flatten_outputs(m(*x))


def rel_err(outs, ref) -> float:
    """Relative error over all outputs together (as ws.verify measures it)."""
    num = sum(float((a.double() - b.double()).norm() ** 2) for a, b in zip(outs, ref))
    den = sum(float(b.double().norm() ** 2) for b in ref)
    return math.sqrt(num / max(den, 1e-30))


def applies(T, ws) -> bool:
    if T is RandomScaling:
        return any(g.scaling for g in ws.groups)
    if T is RandomSignFlip:
        return any(g.sign for g in ws.groups)
    if T is SirenBiasShift:
        return ws.op_graph.nodes and any(n.op == "sin" for n in ws.op_graph.nodes)
    return True


@pytest.mark.parametrize("T", EXACT, ids=lambda t: t.__name__)
@pytest.mark.parametrize("name", ARCH_NAMES)
def test_exact_transforms_keep_outputs(name, T):
    model, x, ws, sd, stack = setup(name)
    if not applies(T, ws):
        with pytest.raises(ValueError, match="no positive-scaling|no sign-flip|sine layer"):
            T(ws, seed=0)
        return
    t = T(ws, seed=0)
    assert t.exact
    out = t(stack)
    ref = outputs(model, sd, x)
    for b in range(B):
        one = {k: v[b] for k, v in out.items()}
        assert rel_err(outputs(model, one, x), ref) < 1e-5, f"network {b}"
    # sensitivity: weights moved, and differently in each network of the stack (one
    # network's draw may be the identity: a sign group of 4 is all +1 once in 16)
    moved = [sum(float((out[k][b] - sd[k]).abs().sum()) for k in ws.weights) for b in range(B)]
    assert max(moved) > 0
    assert not all(torch.equal(out[k][0], out[k][1]) for k in ws.weights)


def test_expected_symmetries_hold_somewhere():
    """The parametrised test above must not only test refusals: each exact transform
    applies to at least one architecture."""
    spaces = [setup(n)[2] for n in ("mlp_relu", "mlp_tanh", "siren")]
    for T in EXACT:
        assert any(applies(T, ws) for ws in spaces), T.__name__


def test_refusals_name_the_group_and_why():
    _, _, siren, _, _ = setup("siren")
    with pytest.raises(ValueError, match=r"no positive-scaling .*aten\.sin"):
        RandomScaling(siren)
    _, _, relu, _, _ = setup("mlp_relu")
    with pytest.raises(ValueError, match=r"no sign-flip .*aten\.relu"):
        RandomSignFlip(relu)
    with pytest.raises(ValueError, match=r"sine layer.*group 0 \(net\.0\.weight\[0\]\).*does not go straight into sin"):
        SirenBiasShift(relu)
    _, _, resnet, _, _ = setup("resnet_basic")
    with pytest.raises(ValueError, match=r"sine layer.*group 0 .*not the output of a single linear layer"):
        SirenBiasShift(resnet)
    _, _, cnn, _, _ = setup("small_cnn")
    with pytest.raises(ValueError, match=r"coordinates to go straight into one linear layer.*conv2d"):
        INRInputTransform(cnn)


def test_siren_bias_shift_needs_its_sign_flip():
    """Negative control: shifting a SIREN bias by π/ω₀ without the sign flip changes the output."""
    model, x, ws, sd, _ = setup("siren")
    bad = dict(sd)
    bad["layers.0.bias"] = sd["layers.0.bias"] + math.pi / model.w0
    assert rel_err(outputs(model, bad, x), outputs(model, sd, x)) > 1e-2
    # ... and a shift by an even multiple needs no flip (2π/ω₀ is a period)
    good = dict(sd)
    good["layers.0.bias"] = sd["layers.0.bias"] + 2 * math.pi / model.w0
    assert rel_err(outputs(model, good, x), outputs(model, sd, x)) < 1e-5


def test_seeds_and_purity():
    _, _, ws, _, stack = setup("small_cnn")
    before = {k: v.clone() for k, v in stack.items()}
    t = Compose([RandomPermutation(ws), RandomScaling(ws), GaussianNoise(ws, sigma=0.1)])
    a = t(stack, generator=torch.Generator().manual_seed(3))
    b = t(stack, generator=torch.Generator().manual_seed(3))
    c = t(stack, generator=torch.Generator().manual_seed(4))
    for k in ws.weights:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        torch.testing.assert_close(stack[k], before[k], rtol=0, atol=0)
    assert not all(torch.equal(a[k], c[k]) for k in ws.weights)
    assert not t.exact and Compose([RandomPermutation(ws), RandomScaling(ws)]).exact
    # own generator from seed=: reproducible across instances
    x1 = RandomPermutation(ws, seed=5)(stack)
    x2 = RandomPermutation(ws, seed=5)(stack)
    assert all(torch.equal(x1[k], x2[k]) for k in ws.weights)


def test_single_state_dict_and_bad_input():
    model, x, ws, sd, stack = setup("mlp_relu")
    one = RandomPermutation(ws, seed=0).single(sd)
    assert set(one) == set(sd) and all(one[k].shape == sd[k].shape for k in sd)
    assert rel_err(outputs(model, one, x), outputs(model, sd, x)) < 1e-5
    with pytest.raises(Exception, match="batched|stack"):
        RandomPermutation(ws)(sd)
    with pytest.raises(TypeError, match="single"):
        RandomPermutation(ws)([sd])


def test_noise_dropout_prune_quantize():
    _, _, ws, sd, stack = setup("resnet_basic")
    stats = running_stat_keys(ws)
    assert "bn1.running_var" in stats and "bn1.weight" not in stats
    g = torch.Generator().manual_seed(0)
    noisy = GaussianNoise(ws, sigma=0.1)(stack, generator=g)
    w = "layers.0.0.conv1.weight"
    ratio = float((noisy[w] - stack[w]).std() / stack[w].std())
    assert 0.07 < ratio < 0.13
    for k in stats:
        assert torch.equal(noisy[k], stack[k])     # running statistics untouched
    drop = WeightDropout(ws, p=0.3)(stack, generator=g)
    frac = float((drop[w] == 0).float().mean())
    assert 0.2 < frac < 0.4
    pr = MagnitudePrune(ws, q=0.5)(stack)
    for k in pr:
        if k in MagnitudePrune(ws).keys:
            zero = (pr[k] == 0).reshape(B, -1).float().mean(1)
            assert bool((zero >= 0.49).all()), k
            kept = pr[k] != 0
            assert float(pr[k][kept].abs().min()) >= float(stack[k].reshape(B, -1).abs().median())
    assert torch.equal(pr["bn1.weight"], stack["bn1.weight"])   # vectors are not pruned
    q = Quantize(ws, bits=3)(stack)
    for k in Quantize(ws).keys:
        levels = torch.unique(q[k][0])
        assert len(levels) <= 2 ** 3 - 1, k
        step = float(stack[k][0].abs().max()) / 3
        assert float((q[k][0] - stack[k][0]).abs().max()) <= step / 2 + 1e-6
    with pytest.raises(ValueError, match="0 <= p < 1"):
        WeightDropout(ws, p=1.0)


def test_inr_input_transform_moves_the_image():
    model, _, ws, sd, stack = setup("siren")
    t = INRInputTransform(ws, translate=0.2, rotate=30, scale=1.2)
    M, shift = t.matrices(B, torch.Generator().manual_seed(7))
    out = t(stack, generator=torch.Generator().manual_seed(7))
    coords = torch.rand(50, 2) * 2 - 1
    for b in range(B):
        moved = (coords.double() @ M[b].T + shift[b]).float()   # the new INR at x is the old at M x + t
        new = outputs(model, {k: v[b] for k, v in out.items()}, (coords,))
        old = outputs(model, sd, (moved,))
        assert rel_err(new, old) < 1e-4
    assert not t.exact
    same = outputs(model, {k: v[0] for k, v in out.items()}, (coords,))
    assert rel_err(same, outputs(model, sd, (coords,))) > 1e-3      # it did move


def test_mixup_modes_and_labels():
    model, x, ws, sd, _ = setup("mlp_relu")
    p = ws.sample_permutation(torch.Generator().manual_seed(1))
    pair = {k: torch.stack([v, w]) for (k, v), w in zip(sd.items(), ws.permute(sd, p).values())}
    y = torch.tensor([0.2, 0.8])
    ref = outputs(model, sd, x)
    mixed, ym = MixUp(ws, alpha=1.0, mode="align", seed=0)(pair, y)
    for b in range(2):   # aligned mixing of a network with a permuted copy of itself is that network
        assert rel_err(outputs(model, {k: v[b] for k, v in mixed.items()}, x), ref) < 1e-5
    plain, yp = MixUp(ws, alpha=1.0, mode="plain", seed=0)(pair, y)
    assert max(rel_err(outputs(model, {k: v[b] for k, v in plain.items()}, x), ref) for b in range(2)) > 1e-3
    # labels follow the weights: one λ per network; with two networks each one's partner is the other
    w = "net.0.weight"
    for b in range(2):
        denom = (pair[w][b] - pair[w][1 - b]).flatten()
        i = int(denom.abs().argmax())
        lam = float((plain[w][b].flatten()[i] - pair[w][1 - b].flatten()[i]) / denom[i])
        assert abs(float(yp[b]) - (lam * float(y[b]) + (1 - lam) * float(y[1 - b]))) < 1e-4
    assert ((yp >= 0.2 - 1e-6) & (yp <= 0.8 + 1e-6)).all()
    # integer classes become one-hot rows
    _, yc = MixUp(ws, mode="permute", num_classes=3, seed=0)(pair, torch.tensor([0, 2]))
    assert yc.shape == (2, 3)
    torch.testing.assert_close(yc.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="num_classes"):
        MixUp(ws)(pair, torch.tensor([0, 2]))


def test_transformed_plugs_into_batch_iterators():
    _, _, ws, sd, stack = setup("mlp_relu")
    batches = [(stack, torch.zeros(B)), (stack, torch.ones(B))]
    t = RandomPermutation(ws, seed=0)
    got = list(transformed(iter(batches), t))
    assert len(got) == 2 and torch.equal(got[1][1], torch.ones(B))
    assert not torch.equal(got[0][0]["net.0.weight"], stack["net.0.weight"])
    mixed = list(transformed(iter(batches), MixUp(ws, seed=0)))
    assert mixed[0][0]["net.0.weight"].shape == stack["net.0.weight"].shape


def test_mixup_probability_leaves_networks_unmixed():
    _, _, ws, sd, _ = setup("mlp_relu")
    g = torch.Generator().manual_seed(0)
    stack = {k: torch.randn(64, *v.shape, generator=g) for k, v in sd.items()}
    y = torch.arange(64, dtype=torch.float32)
    w = "net.0.weight"
    same, ys = MixUp(ws, alpha=1.0, p=0.0, seed=0)(stack, y)
    assert torch.equal(same[w], stack[w]) and torch.equal(ys, y)
    # p = 1 is the default: the same draws, the same result
    a, ya = MixUp(ws, alpha=1.0, p=1.0, seed=3)(stack, y)
    b, yb = MixUp(ws, alpha=1.0, seed=3)(stack, y)
    assert torch.equal(a[w], b[w]) and torch.equal(ya, yb)
    half, yh = MixUp(ws, alpha=1.0, p=0.5, seed=3)(stack, y)
    kept = torch.tensor([torch.equal(half[w][i], stack[w][i]) for i in range(64)])
    assert 16 <= int(kept.sum()) <= 48                 # about half mixed
    assert torch.equal(yh[kept], y[kept]) and not torch.equal(yh[~kept], y[~kept])
    with pytest.raises(ValueError, match="probability"):
        MixUp(ws, p=1.5)


def test_random_apply_per_network():
    model, x, ws, sd, _ = setup("mlp_relu")
    stack = {k: torch.stack([v] * 64) for k, v in sd.items()}
    w = "net.0.weight"
    t = RandomApply(GaussianNoise(ws, sigma=0.1), p=0.5, seed=0)
    out = t(stack)
    changed = torch.tensor([not torch.equal(out[w][i], stack[w][i]) for i in range(64)])
    assert 16 <= int(changed.sum()) <= 48
    assert torch.equal(RandomApply(GaussianNoise(ws), p=0.0, seed=0)(stack)[w], stack[w])
    everyone = RandomApply(GaussianNoise(ws), p=1.0, seed=0)(stack)
    assert all(not torch.equal(everyone[w][i], stack[w][i]) for i in range(64))
    # reproducible from a generator, pure, exact when its transform is
    a = t(stack, generator=torch.Generator().manual_seed(5))
    b = t(stack, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[w], b[w]) and torch.equal(stack[w][0], sd[w])
    perm = RandomApply(RandomPermutation(ws), p=0.5, seed=1)
    assert perm.exact and not t.exact
    one = perm.single(sd, generator=torch.Generator().manual_seed(2))
    assert rel_err(outputs(model, one, x), outputs(model, sd, x)) < 1e-5
    with pytest.raises(TypeError, match="MixUp"):
        RandomApply(MixUp(ws), p=0.5)
    with pytest.raises(ValueError, match="probability"):
        RandomApply(GaussianNoise(ws), p=-0.1)
