"""Metanetworks: invariance and equivariance under the weight space's permutations, a
sensitivity control, mixed and shared batches, a tiny training run, save/load."""
import warnings

import pytest
import torch

import archs
from metanet import WeightSpace
from metanet.graph import SharedBatch, collate
from metanet.nn import GMN, NFN, NGT, StatNN

_SPACES = {}


def space(name):
    if name not in _SPACES:
        model, x = archs.ARCHS[name]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SPACES[name] = (WeightSpace.of(model, x), model.state_dict())
    return _SPACES[name]


def stack(name, n=3, seed=0):
    """``n`` random checkpoints of one architecture, stacked."""
    ws, sd = space(name)
    gen = torch.Generator().manual_seed(seed)
    return {k: (v + 0.5 * torch.randn((n, *v.shape), generator=gen) if v.is_floating_point()
                else v.expand(n, *v.shape).clone()) for k, v in sd.items()}


def graph_model(kind, width):
    """A small GMN or NGT with the value encoding and the per-(role, depth) readout on."""
    torch.manual_seed(0)
    opts = dict(in_width=width, hidden=16, layers=2, out_dim=2, value_scales=(1.0, 10.0), readout_bins=3)
    if kind == "gmn":
        return GMN(**opts).double()
    return NGT(heads=2, **opts).double()


def double(stacked):
    return {k: v.double() if v.is_floating_point() else v for k, v in stacked.items()}


def permuted(name, stacked, seed=1):
    ws, _ = space(name)
    p = ws.sample_permutation(torch.Generator().manual_seed(seed))
    out = ws.permute(stacked, p, batched=True)
    assert any(not torch.equal(out[k], stacked[k]) for k in stacked), "the permutation moved nothing"
    return p, out


GRAPH_CASES = [("gmn", "mlp_relu", "param"), ("gmn", "small_cnn", "compact"), ("gmn", "resnet_basic", "param"),
               ("gmn", "gpt", "compact"), ("ngt", "mlp_relu", "compact"), ("ngt", "small_cnn", "compact"),
               ("ngt", "resnet_basic", "compact"), ("ngt", "gpt", "param"),
               ("gmn", "convnext", "compact"), ("gmn", "res2net_eca", "param"), ("ngt", "swin", "compact")]


def assert_heads_follow(net, ws, p, g, pg, layout):
    """The equivariant heads of ``net`` on a batch of 3 networks ``g`` and the same
    networks permuted by ``p`` (``pg``): per-node outputs move with the neurons, and the
    per-edge outputs are a network of the same architecture permuted like the input."""
    N = ws.layout(layout).num_nodes
    came_from = ws.node_index(p, layout)
    nodes, pnodes = net.node_scores(g).view(3, N, -1), net.node_scores(pg).view(3, N, -1)
    torch.testing.assert_close(pnodes, nodes[:, came_from], rtol=1e-9, atol=1e-9)
    out, pout = ws.state_dicts(net.edit(g)), ws.state_dicts(net.edit(pg))
    expect = ws.permute(out, p, batched=True)
    for k in ws.weights:
        torch.testing.assert_close(pout[k], expect[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,name,layout", GRAPH_CASES)
def test_graph_models_invariant_and_equivariant(kind, name, layout):
    ws, _ = space(name)
    stacked = stack(name)
    p, pstacked = permuted(name, stacked)
    # the space is traced in float32; compare in float64 for tight tolerances
    g, pg = ws.graphs(stacked, layout), ws.graphs(pstacked, layout)
    W = ws.layout(layout).width
    net = graph_model(kind, W)
    to64 = lambda b: b.__copy__().update({"edge_attr": b.edge_attr.double()})  # noqa: E731
    g64, pg64 = to64(g), to64(pg)
    torch.testing.assert_close(net(pg64), net(g64), rtol=1e-9, atol=1e-9)
    assert_heads_follow(net, ws, p, g64, pg64, layout)


@pytest.mark.parametrize("name", ["mlp_relu", "small_cnn", "cnn_flatten"])
@pytest.mark.parametrize("mode", ["hnp", "np"])
def test_nfn_is_invariant(name, mode):
    ws, _ = space(name)
    stacked = double(stack(name))
    _, pstacked = permuted(name, stacked)
    torch.manual_seed(0)
    net = NFN.for_space(ws, mode=mode, hidden=8, layers=2).double()
    lay = ws.layout("compact")
    a = net(SharedBatch(lay, lay._fill(lambda k: stacked[k], 3, None)))
    b = net(SharedBatch(lay, lay._fill(lambda k: pstacked[k], 3, None)))
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


def test_nfn_refuses_weight_spaces_it_cannot_read():
    ws, _ = space("gpt")
    with pytest.raises(ValueError, match="use GMN or NGT"):
        NFN.for_space(ws)


def _moves_when_one_tensor_is_permuted_alone(net, name, layout="compact"):
    """Permute the rows of the first hidden layer's weight alone (its bias and the next
    layer left as they are): a different function, which a metanetwork that sees how
    layers connect must tell apart from the original."""
    ws, _ = space(name)
    stacked = double(stack(name, n=2))
    first = ws.weights[0]
    broken = dict(stacked)
    perm = torch.roll(torch.arange(stacked[first].shape[1]), 1)
    broken[first] = stacked[first][:, perm]
    lay = ws.layout(layout)
    a = net(SharedBatch(lay, lay._fill(lambda k: stacked[k], 2, None)))
    b = net(SharedBatch(lay, lay._fill(lambda k: broken[k], 2, None)))
    return (a - b).abs().max().item() > 1e-6


@pytest.mark.parametrize("name", ["mlp_relu", "small_cnn"])
def test_sensitivity_control(name):
    ws, _ = space(name)
    torch.manual_seed(0)
    assert _moves_when_one_tensor_is_permuted_alone(NFN.for_space(ws, hidden=8, layers=2).double(), name)
    assert _moves_when_one_tensor_is_permuted_alone(GMN(in_width=ws.layout().width, hidden=8, layers=2).double(), name)
    # a layer that ignores the coupling between tensors is blind to it: the check fails
    blind = NFN.for_space(ws, hidden=8, layers=2, coupling=False).double()
    assert not _moves_when_one_tensor_is_permuted_alone(blind, name)


@pytest.mark.parametrize("kind", ["gmn", "ngt", "statnn"])
def test_three_architectures_in_one_batch_equal_each_alone(kind):
    graphs = [space(n)[0].graph(space(n)[1], "compact") for n in ("mlp_relu", "small_cnn", "gpt")]
    W = max(int(g.edge_attr.shape[1]) for g in graphs)
    torch.manual_seed(0)
    net = StatNN(hidden=16, out_dim=2) if kind == "statnn" else graph_model(kind, W).float()
    net.fit_normalization([collate(graphs)])   # padding must stay out of statistics and inputs
    together = net(collate(graphs))
    alone = torch.cat([net(collate([g])) for g in graphs])
    assert together.shape == (3, 2)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gmn", "gmn_plain", "ngt", "nfn", "statnn"])
def test_shared_batch_equals_pyg_batch(kind):
    ws, _ = space("small_cnn")
    stacked = stack("small_cnn", n=4)
    torch.manual_seed(0)
    net = {"gmn": lambda: GMN(in_width=9, hidden=16, layers=2),
           "gmn_plain": lambda: GMN(in_width=9, hidden=16, layers=2, value_scales=(), readout_bins=0),
           "ngt": lambda: NGT(in_width=9, hidden=16, layers=2, heads=2),
           "nfn": lambda: NFN.for_space(ws, hidden=8),
           "statnn": lambda: StatNN(by="tensor", num_tensors=len(ws.weights))}[kind]()
    sb, pyg = SharedBatch.of(ws, stacked), ws.graphs(stacked)
    torch.testing.assert_close(net(sb), net(pyg), rtol=1e-5, atol=1e-6)


def test_tiny_training_run_learns():
    """GMN learns the scale of the first layer's weights from graphs of random MLPs."""
    ws, _ = space("mlp_relu")
    torch.manual_seed(0)
    stacked = stack("mlp_relu", n=32, seed=3)
    scale = torch.rand(32) * 2 + 0.5
    first = ws.weights[0]
    stacked[first] = stacked[first] * scale.view(-1, 1, 1)
    y = scale.log()
    sb = SharedBatch.of(ws, stacked, "param")
    net = GMN(in_width=1, hidden=16, layers=1)
    net.fit_normalization([sb])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(120):   # the per-(role, depth) readout is wider: more steps than a bare readout
        loss = ((net(sb).squeeze(-1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    baseline = ((y - y.mean()) ** 2).mean()   # predicting the mean
    assert loss.item() < 0.2 * baseline.item(), (loss.item(), baseline.item())


@pytest.mark.parametrize("kind", ["gmn", "ngt", "nfn", "statnn"])
def test_save_and_load_give_identical_outputs(kind, tmp_path):
    ws, _ = space("small_cnn")
    sb = SharedBatch.of(ws, stack("small_cnn", n=4))
    torch.manual_seed(0)
    net = {"gmn": lambda: GMN(in_width=9, hidden=16, layers=2),
           "ngt": lambda: NGT(in_width=9, hidden=16, layers=2, heads=2),
           "nfn": lambda: NFN.for_space(ws, hidden=8),
           "statnn": lambda: StatNN(hidden=16)}[kind]()
    net.fit_normalization([sb])
    net.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    again = type(net).from_pretrained(tmp_path)
    torch.testing.assert_close(again(sb), net(sb), rtol=0, atol=0)


@pytest.mark.parametrize("name,kind,sample", [("mlp_relu", "scale", "sample_scaling"),
                                              ("small_cnn", "scale", "sample_scaling"),
                                              ("mlp_tanh", "sign", "sample_sign_flip"),
                                              ("siren", "sign", "sample_sign_flip")])
def test_scale_and_sign_aware_gmn(name, kind, sample):
    ws, _ = space(name)
    stacked = double(stack(name))
    rescaled = ws.scale(stacked, getattr(ws, sample)(torch.Generator().manual_seed(0)), batched=True)
    assert any(not torch.equal(rescaled[k], stacked[k]) for k in ws.weights)
    _, permuted_ = permuted(name, stacked)
    lay = ws.layout("compact")

    def batch(sd):
        return SharedBatch(lay, lay._fill(lambda k: sd[k], 3, None))

    torch.manual_seed(0)
    aware = GMN(in_width=lay.width, hidden=16, layers=2, canonical=kind)
    plain = GMN(in_width=lay.width, hidden=16, layers=2)
    torch.testing.assert_close(aware(batch(rescaled)), aware(batch(stacked)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(aware(batch(permuted_)), aware(batch(stacked)), rtol=1e-4, atol=1e-5)
    # the control: without canonical forms the same model tells the rescaled network apart
    assert (plain(batch(rescaled)) - plain(batch(stacked))).abs().max() > 1e-3
    with pytest.raises(ValueError, match="reads a SharedBatch"):
        aware(ws.graphs(stack(name)))
