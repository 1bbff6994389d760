"""GMN's and NGT's ``readout_norm="batch"``: the pooled readout features standardised
across the networks of a batch. Without it the pooled features of a SIREN zoo barely
differ from network to network and a plain GMN or NGT stays at chance (issue 15); with it
they learn. The option keeps every invariance, and its running statistics serve
evaluation, single networks and saved models."""
import pytest
import torch
from test_nn import double, permuted, space, stack

from metanet.graph import SharedBatch, collate
from metanet.nn import GMN, NGT
from metanet.nn.base import ReadoutNorm


def make(kind, width, **kw):
    torch.manual_seed(0)
    opts = dict(in_width=width, hidden=16, layers=2, out_dim=2, readout_bins=3, readout_norm="batch", **kw)
    return GMN(**opts) if kind == "gmn" else NGT(heads=2, **opts)


def small_differences(n=64, seed=3):
    """SIRENs whose first layer is scaled by 0.9..1.1: the target, (scale - 1) / 0.1, moves
    a mean over hundreds of edges by a few percent."""
    ws, _ = space("siren")
    stacked = stack("siren", n=n, seed=seed)
    scale = 1 + 0.1 * (torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 2 - 1)
    first = ws.weights[0]
    stacked[first] = stacked[first] * scale.view(-1, 1, 1)
    return SharedBatch.of(ws, stacked, "compact"), (scale - 1) / 0.1


def train_loss(net, sb, y, steps=60):
    net.fit_normalization([sb])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = ((net(sb).squeeze(-1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item() / ((y - y.mean()) ** 2).mean().item()   # 1: as good as predicting the mean


def test_readout_norm_learns_what_the_plain_readout_cannot():
    sb, y = small_differences()
    width = sb.edge_attr.shape[-1]
    torch.manual_seed(0)
    plain = GMN(in_width=width, hidden=16, layers=1)
    torch.manual_seed(0)
    normed = GMN(in_width=width, hidden=16, layers=1, readout_norm="batch")
    assert train_loss(normed, sb, y) < 0.1
    # the control: the same model without it stays near predicting the mean
    assert train_loss(plain, sb, y) > 0.5


@pytest.mark.parametrize("kind,name,layout", [("gmn", "small_cnn", "compact"), ("gmn", "gpt", "compact"),
                                              ("ngt", "mlp_relu", "param"), ("ngt", "resnet_basic", "compact")])
def test_invariant_in_training_and_eval_mode(kind, name, layout):
    ws, _ = space(name)
    stacked = stack(name, n=4)
    _, pstacked = permuted(name, stacked)
    to64 = lambda b: b.__copy__().update({"edge_attr": b.edge_attr.double()})  # noqa: E731
    g, pg = to64(ws.graphs(stacked, layout)), to64(ws.graphs(pstacked, layout))
    net = make(kind, ws.layout(layout).width).double()
    net.fit_normalization([g])
    out = net(g)   # training mode: statistics of this batch
    torch.testing.assert_close(net(pg), out, rtol=1e-9, atol=1e-9)
    net32 = net.float()
    torch.testing.assert_close(net32(SharedBatch.of(ws, stacked, layout)), net32(ws.graphs(stacked, layout)),
                               rtol=1e-5, atol=1e-5)
    net.eval()
    net64 = net.double()
    torch.testing.assert_close(net64(pg), net64(g), rtol=1e-9, atol=1e-9)


def test_training_mode_standardises_the_pooled_features():
    sb, _ = small_differences(n=16)
    net = make("gmn", sb.edge_attr.shape[-1]).double()
    net.fit_normalization([sb])
    seen = {}
    net.readout_norm.register_forward_hook(lambda m, a, out: seen.update(x=a[0].detach(), out=out.detach()))
    net(sb)
    x, out = seen["x"], seen["out"]
    mean, var = x.mean(0), x.var(0, unbiased=False)
    torch.testing.assert_close(out, (x - mean) / (var + net.readout_norm.eps).sqrt(), rtol=1e-6, atol=1e-6)
    live = var > 0                       # features of roles a SIREN lacks stay zero
    assert live.sum() > 10
    # pooled features differ little between networks; standardised, by about one
    assert x[:, live].std(0).median() < 0.2 * x[:, live].abs().mean(0).median()
    assert out[:, live].std(0).median() > 0.5
    assert net.readout_norm.num_batches_tracked.item() == 1


def test_running_statistics_serve_eval_single_networks_and_saved_models(tmp_path):
    graphs = [space(n)[0].graph(space(n)[1], "compact") for n in ("mlp_relu", "small_cnn", "gpt")]
    W = max(int(g.edge_attr.shape[1]) for g in graphs)
    net = make("gmn", W)
    net.fit_normalization([collate(graphs)])
    for _ in range(5):                   # running statistics from a few training batches
        net(collate(graphs))
    together_train = net(collate(graphs))
    single = net(collate(graphs[:1]))    # a batch of one in training mode: running statistics, no error
    net.eval()
    together = net(collate(graphs))
    alone = torch.cat([net(collate([g])) for g in graphs])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, alone[:1], rtol=1e-5, atol=1e-5)
    assert (together_train - together).abs().max() > 1e-4   # eval reads running, not batch, statistics
    net.save_pretrained(tmp_path)
    again = GMN.from_pretrained(tmp_path).eval()
    assert isinstance(again.readout_norm, ReadoutNorm)
    torch.testing.assert_close(again(collate(graphs)), together, rtol=0, atol=0)


def test_default_is_off_and_bad_values_are_refused():
    assert isinstance(GMN().readout_norm, torch.nn.Identity) and isinstance(NGT().readout_norm, torch.nn.Identity)
    assert not any("readout_norm" in k for k in GMN().state_dict())   # old checkpoints load unchanged
    with pytest.raises(ValueError, match="readout_norm must be one of"):
        GMN(readout_norm="layer")
    with pytest.raises(ValueError, match="readout_norm must be one of"):
        NGT(readout_norm="layer")
