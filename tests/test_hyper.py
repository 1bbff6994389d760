"""GHN: exact shapes on every test architecture with both decoders, forward passes of
predicted models, gradients to every GHN parameter, bit-exact save/load, and the
report of what was not predicted."""
import warnings

import pytest
import torch
from torch import nn

import archs
from metanet.hyper import GHN, hyper_graph
from metanet.hyper.decoders import fit_spatial
from metanet.trace.export import _default_kwargs, tensor_leaves

NAMES = sorted(archs.ARCHS)
CONFIGS = {
    "tiled-transformer": dict(decoder="tiled", gnn="transformer", hid=32, layers=2, block=8),
    "lowrank-gated": dict(decoder="lowrank", gnn="gated", hid=32, layers=1, max_width=256, rank=4,
                          lowrank_core="cp"),
    "tiled-gated-identity": dict(decoder="tiled", gnn="gated", hid=32, layers=1, block=8, identity=0.5),
    "lowrank-tucker-transformer": dict(decoder="lowrank", gnn="transformer", hid=32, layers=1, max_width=256,
                                       rank=4, lowrank_core="tucker"),
}
_BUILT = {}


def build(name):
    if name in archs.HF_ARCHS:
        pytest.importorskip("transformers")
    if name not in _BUILT:
        model, x = archs.ARCHS[name]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hyper_graph(model, x)  # trace once; later calls hit the cache
        _BUILT[name] = (model, x)
    return _BUILT[name]


def ghn_of(config, seed=0):
    torch.manual_seed(seed)
    return GHN(**CONFIGS[config])


def run(model, params, x):
    out = torch.func.functional_call(model, dict(params), x, _default_kwargs(model, {}), strict=False)
    return tensor_leaves(out)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("name", NAMES)
def test_exact_shapes_and_forward(name, config):
    model, x = build(name)
    ghn = ghn_of(config)
    params = ghn.predict(model, x)
    own = dict(model.named_parameters())
    assert not params.unpredicted, params.report()
    assert set(params) == set(own)
    for k, v in params.items():
        assert v.shape == own[k].shape, k
        assert torch.isfinite(v).all(), k
    outs = run(model, params, x)
    assert outs and all(torch.isfinite(o).all() for o in outs if o.is_floating_point())
    # the predicted parameters were used: outputs differ from the model's own
    ref = tensor_leaves(model(*x, **_default_kwargs(model, {})))
    assert any(not torch.allclose(a, b) for a, b in zip(outs, ref) if a.is_floating_point())


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_gradients_reach_every_ghn_parameter(config):
    ghn = ghn_of(config)
    loss = 0.0
    for name in ("resnet_basic", "transformer_encoder", "norms_cnn", "lstm"):
        model, x = build(name)
        params = ghn.predict(model, x)
        out = run(model, params, x)
        loss = loss + sum(o.float().pow(2).mean() for o in out if o.is_floating_point())
    loss.backward()
    missing = [n for n, p in ghn.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_save_load_round_trip_bit_exact(config, tmp_path):
    ghn = ghn_of(config, seed=3)
    model, x = build("resnet_bottleneck")
    ghn.train()
    ghn.predict(model, x)  # marks kinds as seen: a buffer that must round-trip too
    ghn.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    back = GHN.from_pretrained(tmp_path)
    assert back.config == ghn.config
    a, b = ghn.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ghn.eval(), back.eval()
    pa, pb = ghn.predict(model, x), back.predict(model, x)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_call_loads_in_place_without_replacing_parameters():
    ghn = ghn_of("tiled-transformer")
    model, x = archs.ARCHS["small_cnn"]()
    before = {k: (id(p), p.detach().clone()) for k, p in model.named_parameters()}
    ghn.eval()
    expected = ghn.predict(model, x)
    assert ghn(model, x) is model
    for k, p in model.named_parameters():
        assert id(p) == before[k][0] and isinstance(p, nn.Parameter), k
        torch.testing.assert_close(p.detach(), expected[k].detach(), rtol=0, atol=0)
        assert not torch.equal(p.detach(), before[k][1]), k


def test_unreachable_shapes_keep_the_model_init_and_are_reported():
    torch.manual_seed(0)
    ghn = GHN(decoder="lowrank", gnn="transformer", hid=16, layers=1, max_width=12, rank=2)
    model, x = archs.ARCHS["cnn_flatten"]()  # fc1 [16, 54], its bias [16], fc2 [10, 16]: wider than 12
    own = {k: p.detach().clone() for k, p in model.named_parameters()}
    with pytest.warns(UserWarning, match="keep the model's own initialisation"):
        ghn(model, x)
    pred = ghn.load(model, x)
    assert set(pred.unpredicted) == {"fc1.weight", "fc1.bias", "fc2.weight"}
    assert "max_width" in pred.unpredicted["fc1.weight"]
    assert torch.equal(model.fc1.weight, own["fc1.weight"])
    assert not torch.equal(model.conv1.weight, own["conv1.weight"])


def test_kinds_never_seen_in_training_are_not_predicted():
    ghn = ghn_of("tiled-transformer")
    cnn, xc = build("small_cnn")
    ghn.train()
    ghn.predict(cnn, xc)          # "training" on a CNN: conv, linear, relu ... seen
    ghn.eval()
    gru, xg = build("gru")
    pred = ghn.predict(gru, xg)
    assert set(pred.unpredicted) == {n for n, _ in gru.named_parameters() if n.startswith("rnn.")}
    assert all("recurrent" in why for why in pred.unpredicted.values())
    assert "fc.weight" in pred


def test_tied_parameters_are_predicted_once():
    model, x = build("gpt")  # lm_head.weight is wte.weight
    pred = ghn_of("tiled-transformer").predict(model, x)
    assert "wte.weight" in pred and "lm_head.weight" not in pred
    assert not pred.unpredicted


def test_the_graph_matters():
    """Equal shapes at different places of a network get different values; the same
    tensor in two architectures that differ elsewhere gets different values."""
    ghn = ghn_of("tiled-transformer")
    model, x = build("small_cnn")
    p = ghn.predict(model, x)
    assert not torch.allclose(p["conv2.weight"], p["conv3.weight"])
    deep = archs.MLP((6, 8, 8, 8, 3))
    shallow = archs.MLP((6, 8, 8, 3))
    a = ghn.predict(deep, (torch.zeros(2, 6),))
    b = ghn.predict(shallow, (torch.zeros(2, 6),))
    assert a["net.0.weight"].shape == b["net.0.weight"].shape
    assert not torch.allclose(a["net.0.weight"], b["net.0.weight"])


def test_kernels_are_cropped_around_the_centre():
    block = torch.arange(25.0).view(1, 1, 1, 5, 5)
    assert torch.equal(fit_spatial(block, (3, 3))[0, 0, 0], block[0, 0, 0, 1:4, 1:4])
    assert fit_spatial(block, ()).item() == 12.0
    assert torch.equal(fit_spatial(block, (3,))[0, 0, 0], block[0, 0, 0, 2, 1:4])
    assert fit_spatial(block, (7, 7)).shape[-2:] == (7, 7)


def test_fan_in_normalisation_follows_the_op():
    """HF GPT-2 stores Conv1D weights [in, out]; their fan-in is the first axis."""
    model, x = build("hf_gpt2")
    g = hyper_graph(model, x)
    spec = {t.name: t for t in g.tensors}
    t = spec["transformer.h.0.mlp.c_fc.weight"]
    assert t.shape == (8, 32) and t.fan_in == 8
    assert spec["transformer.h.0.mlp.c_proj.weight"].fan_in == 32
    assert spec["transformer.ln_f.weight"].transform == "norm_scale"
    assert spec["transformer.ln_f.bias"].transform == "bias"


def test_meta_device_models_are_predicted_without_storage():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(cfg)
    x = (torch.zeros(1, 4, dtype=torch.long, device="meta"),)
    ghn = ghn_of("tiled-transformer")
    with torch.no_grad():
        pred = ghn.predict(model, x)
    own = dict(model.named_parameters())
    assert set(pred) == set(own)
    assert all(v.device.type == "cpu" and v.shape == own[k].shape for k, v in pred.items())
    with pytest.raises(ValueError, match="meta device"):
        ghn.load(model, x)


def test_bad_config_names_the_choices():
    with pytest.raises(ValueError, match="tiled"):
        GHN(decoder="dense")
    with pytest.raises(ValueError, match="gated"):
        GHN(gnn="gcn")
    with pytest.raises(ValueError, match="example_inputs"):
        GHN().predict(nn.Linear(2, 2))


def test_residual_ghn_starts_at_the_models_init_and_learns_a_correction():
    torch.manual_seed(0)
    ghn = GHN(hid=16, layers=1, block=8, residual=True)
    model, x = build("small_cnn")
    pred = ghn.predict(model, x)
    for k, p in model.named_parameters():
        torch.testing.assert_close(pred[k], p.detach(), rtol=0, atol=0)
    sum(o.pow(2).mean() for o in run(model, pred, x)).backward()
    assert ghn.alpha.grad is not None and ghn.alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("positions", [True, False])
def test_depth_embeddings_tell_repeated_blocks_apart(positions):
    """The same op in every block of a transformer has the same kind, shape and
    neighbourhood; only its depth tells the blocks apart, so only with depth embeddings
    do the blocks get different predicted weights."""
    import zoo

    torch.manual_seed(0)
    model = zoo.create("tiny_transformer", in_channels=1, n_classes=10, input_size=8, patch_size=2,
                       dim=16, depth=3, heads=2, mlp_ratio=2.0, activation="gelu", norm="layer")
    ghn = GHN(gnn="transformer", decoder="tiled", hid=32, layers=2, block=16, positions=positions)
    with torch.no_grad():
        p = ghn.predict(model)
    w = [p[f"blocks.{i}.fc1.weight"].flatten() for i in range(3)]
    cos = max(float(torch.cosine_similarity(w[i], w[j], 0)) for i in range(3) for j in range(i + 1, 3))
    if positions:
        assert cos < 0.99
    else:
        assert cos > 0.999
    depth = hyper_graph(model).depths()
    assert depth.shape == (hyper_graph(model).n, 2) and int(depth.min()) == 0


def test_fixed_gain_predicts_weights_at_he_scale():
    """learn_gain=False (and no identity prior): every weight tensor has exactly the rms
    sqrt(2 / fan_in)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    ghn = GHN(gnn="gated", decoder="tiled", hid=16, layers=1, block=8, learn_gain=False, identity=0.0)
    with torch.no_grad():
        p = ghn.predict(model, (torch.zeros(1, 3, 6, 6),))
    for name, fan_in in (("0.weight", 27), ("3.weight", 128)):
        rms = float(p[name].pow(2).mean().sqrt())
        assert rms == pytest.approx((2 / fan_in) ** 0.5, rel=1e-4), name
    assert not any(k.startswith("gain") for k in ghn.state_dict())


def test_kernels_larger_than_the_block_are_tiled_around_its_centre():
    """A 5x5 (or 7x7) kernel tiled from a 3x3 block has the block's centre at its own
    centre, as the 1x1 and 3x3 kernels cut from the same block do: the centre tap means
    the same pixel offset whatever the kernel size."""
    block = torch.arange(9.0).view(1, 3, 3)
    for k in (1, 3, 5, 7):
        out = fit_spatial(block, (k, k))[0]
        assert out.shape == (k, k)
        assert out[k // 2, k // 2] == 4.0, k          # the block's centre
    five = fit_spatial(block, (5, 5))[0]
    assert torch.equal(five[1:4, 1:4], block[0])      # the block itself around the centre
    # 1-D kernels: the block's centre row, tiled around its centre tap
    assert torch.equal(fit_spatial(block, (5,))[0], torch.tensor([5.0, 3, 4, 5, 3]))


def test_a_block_as_large_as_the_kernel_is_never_tiled():
    """kernel=5: every kernel size the zoo's sampler draws (1, 3, 5) is a centred crop
    of one predicted 5x5 block, with no repeated taps."""
    import zoo

    torch.manual_seed(0)
    model = zoo.create("cnn", in_channels=1, n_classes=10, input_size=8, channels=[8, 8, 8],
                       kernel_size=[5, 3, 1], stride=[1, 1, 1], activation="relu", norm="none")
    ghn = GHN(hid=16, layers=1, block=8, kernel=5)
    with torch.no_grad():
        p = ghn.predict(model)
    w5 = p["convs.0.weight"][:, 0]                    # [8, 5, 5]: no tap repeats another
    flat = w5.flatten(1)
    assert all(len(set(row.tolist())) == 25 for row in flat)
    assert ghn.decoders["weight"].kernel == 5


def _cnn(**kw):
    import zoo

    args = dict(in_channels=1, n_classes=10, input_size=8, channels=[8, 12], kernel_size=[3, 3],
                stride=[1, 1], activation="relu", norm="none", pool="avg")
    args.update(kw)
    torch.manual_seed(0)
    return zoo.create("cnn", **args)


@pytest.mark.parametrize("op_features", [False, True])
def test_op_features_tell_pooling_and_stride_apart(op_features):
    """Mean and max pooling share the vocabulary kind 'reduce', and a strided conv has
    the same parameter shapes as an unstrided one: only the exact-op and output-shape
    embeddings let the GHN predict different weights for them. Two CNNs that differ
    only in their pool option (a plain attribute, not a module) get separate graphs
    from the architecture cache."""
    torch.manual_seed(0)
    ghn = GHN(hid=16, layers=1, block=16, op_features=op_features)
    with torch.no_grad():
        base = ghn.predict(_cnn())["fc.weight"]
        maxp = ghn.predict(_cnn(pool="max"))["fc.weight"]
        strided = ghn.predict(_cnn(stride=[2, 1]))["convs.0.weight"]
        plain = ghn.predict(_cnn())["convs.0.weight"]
    assert torch.allclose(base, maxp) != op_features
    assert torch.allclose(strided, plain) != op_features
    g = hyper_graph(_cnn(pool="max"))
    assert g.op_ids.shape == (g.n,) and g.out_feats.shape == (g.n, 2)
    red = g.node_kinds.index("reduce")
    assert int(g.op_ids[red]) != int(hyper_graph(_cnn()).op_ids[red])


def test_bias_scale_fan_in_keeps_layer_biases_in_pytorchs_default_range():
    """bias_scale='fan_in': the bias of a conv/linear op lies within 1/sqrt(fan_in of its
    weight) (PyTorch's default bias range); a norm's shift keeps the unit range."""
    model = _cnn(norm="batch", channels=[8, 32])
    spec = {t.name: t for t in hyper_graph(model).tensors}
    assert spec["convs.1.bias"].transform == "op_bias" and spec["convs.1.bias"].fan_in == 8 * 9
    assert spec["fc.bias"].fan_in == 32
    assert spec["norms.1.bias"].transform == "bias"
    torch.manual_seed(0)
    ghn = GHN(hid=16, layers=1, block=32, bias_scale="fan_in")
    # a large raw output saturates tanh: the bound, not the raw scale, decides
    with torch.no_grad():
        ghn.decoders["vector"].net[2].bias.fill_(50.0)
        p = ghn.predict(model)
    assert float(p["convs.1.bias"].abs().max()) == pytest.approx(72 ** -0.5, rel=1e-5)
    assert float(p["fc.bias"].abs().max()) == pytest.approx(32 ** -0.5, rel=1e-5)
    assert float(p["norms.1.bias"].abs().max()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="fan_in"):
        GHN(bias_scale="large")


@pytest.mark.parametrize("weight_norm,identity", [
    ("tensor", 0.0),
    pytest.param("filter", 0.0, marks=pytest.mark.xfail(strict=True, reason=(
        "known: zero-mean filters at He scale drop the input's mean, so after a ReLU each "
        "layer keeps about sqrt(1 - 1/pi) = 0.83 of the std at gain 1 (0.15-0.32 over 8 "
        "layers); the learned gain has to make it up, or the identity prior carries the mean"))),
    ("filter", 0.5), ("tensor", 0.5),
    pytest.param("filter", 0.8, marks=pytest.mark.xfail(strict=True, reason=(
        "known, the session-6 default: at c = 0.8 the identity also passes a ReLU's positive "
        "mean on, so the std grows about 1.23x per layer at gain 1 (5.2x over 8 layers, just "
        "past the bound; the sampler's CNNs have at most 5 layers); the learned gain and c "
        "have to make it up")))])
def test_predicted_plain_cnn_keeps_its_activation_scale_through_depth(weight_norm, identity):
    """A deep plain CNN (no normalisation, ReLU) with predicted weights: the activations'
    scale neither vanishes nor explodes from the first conv to the last (He scale per
    op fan-in, kernel size included)."""
    import zoo

    torch.manual_seed(0)
    model = zoo.create("cnn", in_channels=1, n_classes=10, input_size=8, channels=[16, 24, 8, 32, 16, 16, 24, 16],
                       kernel_size=[5, 3, 1, 3, 5, 1, 3, 3], stride=1, activation="relu", norm="none")
    ghn = GHN(hid=16, layers=1, block=32, kernel=5, weight_norm=weight_norm, bias_scale="fan_in",
              identity=identity)
    with torch.no_grad():
        p = ghn.predict(model)
    stds = []
    hooks = [c.register_forward_hook(lambda m, i, o: stds.append(float(o.std()))) for c in model.convs]
    with torch.no_grad():
        torch.func.functional_call(model, dict(p), (torch.rand(64, 1, 8, 8),), strict=False)
    for h in hooks:
        h.remove()
    assert len(stds) == 8
    assert 0.2 < stds[-1] / stds[0] < 5, stds


def test_filter_norm_standardises_every_output_unit():
    """weight_norm='filter': each output unit's weights have zero mean and rms
    g * sqrt(2 / fan_in) over its fan-in; a fan-in of 1 is scaled, not centred."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 1), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 10))
    ghn = GHN(gnn="gated", hid=16, layers=1, block=8, learn_gain=False, weight_norm="filter", identity=0.0)
    with torch.no_grad():
        p = ghn.predict(model, (torch.zeros(1, 1, 6, 6),))
    for name, fan_in in (("2.weight", 72), ("5.weight", 96)):
        unit = p[name].flatten(1)
        assert float(unit.mean(1).abs().max()) < 1e-6, name
        torch.testing.assert_close(unit.pow(2).mean(1).sqrt(), torch.full((unit.shape[0],), (2 / fan_in) ** 0.5))
    w0 = p["0.weight"].flatten()
    assert torch.isfinite(w0).all() and float(w0.abs().max()) > 0
    assert float(w0.pow(2).mean().sqrt()) == pytest.approx(2 ** 0.5, rel=1e-4)
    with pytest.raises(ValueError, match="filter"):
        GHN(weight_norm="unit")


def test_the_default_block_covers_every_kernel_the_sampler_draws():
    """The default GHN's kernel block is at least as large as every conv kernel of the
    zoo sampler's architectures (digits, MNIST-1D, 32x32): none is tiled from a smaller
    block, all are centred crops of one block."""
    from tasks.predict_init import build_arch, sample_archs

    k = GHN().config["kernel"]
    seen = set()
    for dataset in ("digits", "mnist1d", "shapes32"):
        for arch in sample_archs(dataset, range(60)):
            model = build_arch(arch)
            for m in model.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    seen.update(m.kernel_size)
    assert seen and max(seen) <= k, (sorted(seen), k)
    assert {1, 3, 5} <= seen


@pytest.mark.parametrize("weight_norm", ["tensor", "filter"])
def test_identity_prior_mixes_the_identity_into_conv_and_linear_weights(weight_norm):
    """identity=c0: a conv/linear weight is c0 * sqrt(2) * I + sqrt(1 - c0^2) * W with W the
    weight the GHN would predict without it (He scale per output unit under the filter
    norm); the classifier, biases and norm parameters are the same as without it."""
    import zoo

    model = zoo.create("cnn", in_channels=1, n_classes=10, input_size=8, channels=[8, 12, 6],
                       kernel_size=[3, 1, 5], stride=1, activation="relu", norm="batch")
    preds = {}
    for c0 in (0.0, 0.6):
        torch.manual_seed(0)
        ghn = GHN(hid=16, layers=1, block=16, learn_gain=False, weight_norm=weight_norm, identity=c0)
        with torch.no_grad():
            preds[c0] = ghn.predict(model)
    plain, mixed = preds[0.0], preds[0.6]
    assert set(plain) == set(mixed)
    for name in plain:
        w0, w1 = plain[name], mixed[name]
        if name.startswith("convs.") and name.endswith(".weight"):
            out, inp, k = w0.shape[0], w0.shape[1], w0.shape[-1]
            eye = torch.zeros_like(w0)
            for i in range(min(out, inp)):
                eye[i, i, k // 2, k // 2] = 1.0
            torch.testing.assert_close(w1, 0.6 * 2 ** 0.5 * eye + 0.8 * w0)
            assert not torch.allclose(w1, w0)
        else:
            torch.testing.assert_close(w1, w0, msg=name)


def test_identity_prior_out_of_range_is_refused():
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="identity"):
            GHN(hid=16, layers=1, identity=bad)


def test_a_checkpoint_saved_before_the_identity_option_loads_without_it(tmp_path):
    """config.json without "identity" (checkpoints of earlier sessions): the loaded GHN has
    no identity prior and predicts exactly what the saved one did."""
    import json

    torch.manual_seed(0)
    ghn = GHN(hid=16, layers=1, block=8, identity=0.0).eval()
    ghn.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("identity")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = GHN.from_pretrained(tmp_path).eval()
    assert back.config["identity"] == 0.0 and back.identity is None
    model, x = build("resnet_basic")
    with torch.no_grad():
        pa, pb = ghn.predict(model, x), back.predict(model, x)
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    assert GHN.from_pretrained(tmp_path, identity=0.5).config["identity"] == 0.5


def test_a_checkpoint_saved_before_the_lowrank_core_option_loads_as_cp(tmp_path):
    """config.json without "lowrank_core" (low-rank checkpoints of sessions before 8, all
    trained with the CP core): the loaded GHN has a CP decoder whatever the default is, and
    predicts exactly what the saved one did; the default itself is now tucker."""
    import json

    assert GHN(decoder="lowrank", hid=16, layers=1).decoders["weight"].core == "tucker"
    torch.manual_seed(0)
    ghn = GHN(decoder="lowrank", hid=16, layers=1, max_width=32, rank=4, lowrank_core="cp").eval()
    ghn.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("lowrank_core")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = GHN.from_pretrained(tmp_path).eval()
    assert back.config["lowrank_core"] == "cp" and back.decoders["weight"].core == "cp"
    model, x = build("resnet_basic")
    with torch.no_grad():
        pa, pb = ghn.predict(model, x), back.predict(model, x)
    assert set(pa) == set(pb) and len(pa) > 0
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    with pytest.raises(RuntimeError):   # loading it as tucker would not fit the saved tensors
        GHN.from_pretrained(tmp_path, lowrank_core="tucker")


@pytest.mark.parametrize("shape", [(8, 6, 3, 3), (8, 6), (5, 7, 5), (10, 12, 1, 1), (6, 4, 2, 2)])
def test_lowrank_tucker_core_is_the_sum_over_rank_pairs(shape):
    """core='tucker': W[o, i, s] = sum_{r, q} A[o, r] C[r, q, s] B[q, i] / r, with the
    factors' rows and columns cut to the shape and the core's kernel cropped around its
    centre; core='cp' is another function of the same embedding."""
    from metanet.hyper.decoders import LowRankDecoder, fit_spatial

    torch.manual_seed(0)
    dec = LowRankDecoder(16, 64, 4, 5, core="tucker")
    e = torch.randn(3, 16)
    t = dec.trunk(e)
    a = torch.nn.functional.linear(t, dec.a.weight, dec.a.bias).view(3, 64, 4)[:, :shape[0]]
    b = torch.nn.functional.linear(t, dec.b.weight, dec.b.bias).view(3, 64, 4)[:, :shape[1]].transpose(1, 2)
    c = fit_spatial(dec.c(t).view(3, 16, 5, 5), tuple(shape[2:])).reshape(3, 4, 4, -1)
    ref = torch.einsum("gor,grqs,gqi->gois", a, c, b).reshape(3, *shape) / 4
    torch.testing.assert_close(dec(e, shape), ref)
    with pytest.raises(ValueError, match="core must be"):
        LowRankDecoder(16, 64, 4, 5, core="tt")
