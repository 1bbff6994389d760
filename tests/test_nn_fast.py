"""GMN's ``fast`` option: the same functions as the default layers (node terms of the
first linear maps computed once per node, messages summed by index_add_), so with the
same parameters it gives the default model's outputs and gradients to float rounding, on
mixed PyG batches and on shared-structure batches, and stays exactly invariant and
equivariant under the weight space's permutations."""
import pytest
import torch
from test_nn import GRAPH_CASES, assert_heads_follow, permuted, space, stack

from metanet.graph import SharedBatch, collate
from metanet.nn import GMN
from metanet.nn.gmn import GMNLayer


def pair(width, **kw):
    """A default GMN and a fast one with the same parameters (float64)."""
    torch.manual_seed(0)
    opts = dict(in_width=width, hidden=16, layers=2, out_dim=2, value_scales=(1.0, 10.0), readout_bins=3, **kw)
    slow = GMN(**opts).double()
    fast = GMN(**opts, fast=True).double()
    fast.load_state_dict(slow.state_dict())
    return slow, fast


def mixed_batch():
    graphs = [space(n)[0].graph(space(n)[1], "compact") for n in ("mlp_relu", "small_cnn", "gpt", "resnet_basic")]
    b = collate(graphs)
    b.edge_attr = b.edge_attr.double()
    return b


def grads(net, graphs):
    net.zero_grad()
    out = net(graphs)
    (out ** 2).sum().backward()
    return out.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kw", [{}, {"aggr": "sum"}, {"readout_norm": "batch"}])
def test_fast_equals_default_on_a_mixed_batch(kw):
    g = mixed_batch()
    slow, fast = pair(int(g.edge_attr.shape[1]), **kw)
    slow.fit_normalization([g])
    fast.fit_normalization([g])
    slow.train(), fast.train()
    out, gs = grads(slow, g)
    fout, gf = grads(fast, g)
    torch.testing.assert_close(fout, out, rtol=1e-10, atol=1e-10)
    assert gs.keys() == gf.keys()
    scale = max(v.abs().max() for v in gs.values())
    for k in gs:
        torch.testing.assert_close(gf[k], gs[k], rtol=0, atol=1e-10 * float(scale), msg=k)
    slow.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast.node_scores(g), slow.node_scores(g), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fast.edit(g).edge_attr, slow.edit(g).edge_attr, rtol=1e-10, atol=1e-10)


def test_fast_equals_default_on_a_shared_batch():
    ws, _ = space("small_cnn")
    stacked = stack("small_cnn", n=4)
    sb = SharedBatch.of(ws, stacked)
    sb = sb.with_edge_attr(sb.edge_attr.double())
    slow, fast = pair(ws.layout().width)
    slow.fit_normalization([sb])
    fast.fit_normalization([sb])
    torch.testing.assert_close(fast(sb), slow(sb), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.node_scores(sb), slow.node_scores(sb), rtol=1e-10, atol=1e-10)
    # and the shared batch gives what the PyG batch of the same networks gives
    pyg = ws.graphs(stacked)
    pyg.edge_attr = pyg.edge_attr.double()
    torch.testing.assert_close(fast(sb), fast(pyg), rtol=1e-9, atol=1e-9)


def test_a_different_layer_is_told_apart():
    """The control: the comparison above sees a change of the layer's function (here the
    fast layer with its two message directions swapped)."""
    g = mixed_batch()
    slow, fast = pair(int(g.edge_attr.shape[1]))
    for layer in fast.layers:
        layer.phi_in, layer.phi_out = layer.phi_out, layer.phi_in
    assert (fast(g) - slow(g)).abs().max() > 1e-4


@pytest.mark.parametrize("kind,name,layout", [c for c in GRAPH_CASES if c[0] == "gmn"])
def test_fast_is_invariant_and_equivariant(kind, name, layout):
    ws, _ = space(name)
    stacked = stack(name)
    p, pstacked = permuted(name, stacked)
    to64 = lambda b: b.__copy__().update({"edge_attr": b.edge_attr.double()})  # noqa: E731
    g, pg = to64(ws.graphs(stacked, layout)), to64(ws.graphs(pstacked, layout))
    _, net = pair(ws.layout(layout).width)
    net.fit_normalization([g])
    torch.testing.assert_close(net(pg), net(g), rtol=1e-9, atol=1e-9)
    assert_heads_follow(net, ws, p, g, pg, layout)


def test_fast_refuses_other_aggregations_and_saves_its_option(tmp_path):
    with pytest.raises(ValueError, match="fast=True supports aggr"):
        GMNLayer(8, aggr=("mean", "max"), fast=True)
    with pytest.raises(ValueError, match="fast=True supports aggr"):
        GMN(in_width=1, hidden=8, aggr="max", fast=True)
    net = GMN(in_width=1, hidden=8, layers=1, fast=True)
    net.save_pretrained(str(tmp_path))
    again = GMN.from_pretrained(str(tmp_path))
    assert all(layer.fast for layer in again.layers)
    assert not any(layer.fast for layer in GMN(in_width=1, hidden=8, layers=1).layers)
