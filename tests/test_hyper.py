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
    "lowrank-gated": dict(decoder="lowrank", gnn="gated", hid=32, layers=1, max_width=256, rank=4),
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
    """learn_gain=False: every weight tensor has exactly the rms sqrt(2 / fan_in)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    ghn = GHN(gnn="gated", decoder="tiled", hid=16, layers=1, block=8, learn_gain=False)
    with torch.no_grad():
        p = ghn.predict(model, (torch.zeros(1, 3, 6, 6),))
    for name, fan_in in (("0.weight", 27), ("3.weight", 128)):
        rms = float(p[name].pow(2).mean().sqrt())
        assert rms == pytest.approx((2 / fan_in) ** 0.5, rel=1e-4), name
    assert not any(k.startswith("gain") for k in ghn.state_dict())
