"""StatNN's statistics after the speed-up (one int64 sort of float32 weights by segment
and value; the kept slots of a mixed batch gathered once) equal those of the direct way:
an argsort by value, a stable argsort by segment, the padding masked out of flattened
copies. Exactly, not to rounding."""
import pytest
import torch

from metanet.graph import collate
from metanet.nn import StatNN
from metanet.nn.inputs import GraphInput
from metanet.nn.statnn import _QUANTILES, _STRUCT, role_depth_groups, segment_stats, standardise
from test_nn import space, stack


def reference_stats(values, seg, n):
    values = values.double()
    count = torch.bincount(seg, minlength=n).double()
    s = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, values)
    s2 = torch.zeros(n, dtype=torch.float64).index_add_(0, seg, values ** 2)
    c = count.clamp(min=1)
    mean = s / c
    var = (s2 / c - mean ** 2).clamp(min=0)
    order = torch.argsort(values)
    order = order[torch.argsort(seg[order], stable=True)]
    sorted_vals = values[order]
    start = torch.cumsum(count, 0) - count
    qs = []
    for q in _QUANTILES:
        idx = (start + torch.round(q * (count - 1).clamp(min=0))).long().clamp(max=max(len(values) - 1, 0))
        qs.append(sorted_vals[idx] if len(values) else torch.zeros(n, dtype=torch.float64))
    out = torch.stack([mean, var, *qs, torch.log1p(count)], -1)
    return torch.where((count > 0).unsqueeze(-1), out, torch.zeros_like(out)).float()


def reference_features(graphs, bins=8, groups=None):
    """StatNN(by='role_depth').features the direct way (flattened copies, masked)."""
    g = GraphInput.of(graphs)
    groups = groups or StatNN(bins=bins).groups
    gid = role_depth_groups(g, bins)
    keep = g.edge_role < _STRUCT
    W = g.edge_attr.shape[-1]
    eb = g.batch[g.edge_index[0]]
    vals = g.edge_attr[keep].reshape(-1)
    seg = (eb[keep] * groups + gid[keep]).unsqueeze(-1).expand(-1, W).reshape(-1)
    valid = g.valid()
    if valid is not None:
        mask = valid[keep].reshape(-1)
        vals, seg = vals[mask], seg[mask]
    return reference_stats(vals, seg, g.num_graphs * groups).reshape(g.num_graphs, -1)


def test_segment_stats_equal_the_two_argsorts():
    gen = torch.Generator().manual_seed(0)
    n = 40
    v = torch.randn(5000, generator=gen) * torch.logspace(-6, 3, 5000)[torch.randperm(5000, generator=gen)]
    v[::7] = torch.round(v[::7])                      # ties, many zeros
    v[::11] = -0.0
    v[1:3] = torch.tensor([float("inf"), -float("inf")])
    v[3:6] = torch.tensor([1e-40, -1e-40, 3.4e38])     # subnormals, near the largest float32
    seg = torch.randint(0, n, (5000,), generator=gen)
    seg[seg == 5] = 6                                  # an empty segment
    seg[0] = 7
    seg[seg == 7] = 8
    seg[0] = 7                                         # a segment of one value
    for values in (v, v.double()):                     # float32: the fast path; float64: the direct one
        torch.testing.assert_close(segment_stats(values, seg, n), reference_stats(values, seg, n), rtol=0, atol=0,
                                   equal_nan=True)
    assert torch.equal(segment_stats(v[:0], seg[:0], 3), reference_stats(v[:0], seg[:0], 3))
    # the sorted values themselves: the quantile at 0 and 1 are each segment's min and max
    out = segment_stats(v, seg, n)
    for k in (0, 8, 13):
        assert out[k, 2] == v[seg == k].min() and out[k, 6] == v[seg == k].max()


def test_statnn_features_equal_the_direct_way_on_mixed_and_plain_batches():
    names = ("mlp_relu", "small_cnn", "gpt")
    graphs = []
    for i, name in enumerate(names):
        ws, _ = space(name)
        graphs += ws.graphs(stack(name, n=3, seed=i), "compact").to_data_list()
    mixed = collate(graphs)                            # padded: edge widths 1 to 9 in one batch
    assert GraphInput.of(mixed).valid() is not None
    net = StatNN()
    assert torch.equal(net.features(mixed), reference_features(mixed))
    ws, _ = space("small_cnn")
    plain = ws.graphs(stack("small_cnn", n=4), "compact")   # one architecture: no padding mask
    assert GraphInput.of(plain).valid() is None
    assert torch.equal(net.features(plain), reference_features(plain))


def test_statnn_clip_bounds_a_rare_group(tmp_path):
    """A (role, depth) group that one training network in many has gets a tiny deviation; a
    test network of that kind reaches the MLP at thousands of deviations unclipped, and
    StatNN's default clip keeps it at the clip. Checkpoints saved before the option load
    unclipped."""
    import json

    ws_cnn, _ = space("small_cnn")
    ws_gpt, _ = space("gpt")
    train = collate(ws_cnn.graphs(stack("small_cnn", n=40, seed=0), "compact").to_data_list()
                    + ws_gpt.graphs(stack("gpt", n=1, seed=1), "compact").to_data_list())
    test = ws_gpt.graphs(stack("gpt", n=2, seed=2), "compact")
    for clip, bound in ((None, 1e3), (10.0, 10.0)):
        net = StatNN(hidden=16, clip=clip).fit_normalization([train])
        z = standardise(net.features(test), net.feat_mean, net.feat_std, net.clip)
        if clip is None:
            assert z.abs().max() > 1e1   # the rare groups, far outside what the MLP saw
        else:
            assert z.abs().max() <= bound
    net = StatNN(hidden=16).fit_normalization([train])
    assert net.clip == 10.0
    net.save_pretrained(tmp_path / "new")
    assert StatNN.from_pretrained(tmp_path / "new").clip == 10.0
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    del cfg["clip"]                                    # as saved before the option existed
    (tmp_path / "new" / "config.json").write_text(json.dumps(cfg))
    old = StatNN.from_pretrained(tmp_path / "new")
    assert old.clip is None
    z_old = standardise(old.features(test), old.feat_mean, old.feat_std)
    assert torch.equal(old(test), old.net(z_old))
    with pytest.raises(ValueError, match="clip"):
        StatNN(clip=0)
