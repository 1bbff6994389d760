"""GMN's readout and aggregation options: the PNA-style readout (mean, std, max and min per
(role, depth bin) edge group and per (kind, depth bin) node group), the statistics path
(StatNN's statistics of the input weights: a hybrid) and several message aggregations.
Each stays exactly invariant (equivariant for the heads) under the weight space's
permutations, and under scalings / sign flips with ``canonical``."""
import pytest
import torch
from test_nn import assert_heads_follow, double, permuted, space, stack

from metanet.graph import SharedBatch, collate
from metanet.nn import GMN, StatNN
from metanet.nn.gmn import WeightStats
from metanet.nn.inputs import GraphInput

OPTIONS = {"pna": dict(readout="pna"), "hybrid": dict(weight_stats_bins=4),
           "maggr": dict(aggr=("mean", "max", "std")),
           "hybrid_sum": dict(readout="pna", weight_stats_bins=4, weight_stats_fusion="sum"),
           "all": dict(readout="pna", weight_stats_bins=8, aggr=("mean", "max", "std")),
           "all_norm": dict(readout="pna", weight_stats_bins=8, aggr=("mean", "max", "std"), readout_norm="batch")}
CASES = [("mlp_relu", "param"), ("small_cnn", "compact"), ("resnet_basic", "param"), ("gpt", "compact")]


def model(width, opts, **kw):
    torch.manual_seed(0)
    return GMN(**{"in_width": width, "hidden": 16, "layers": 2, "out_dim": 2, "readout_bins": 3, **opts, **kw}).double()


def shared(name, stacked, layout="compact"):
    lay = space(name)[0].layout(layout)
    n = len(next(iter(stacked.values())))
    return SharedBatch(lay, lay._fill(lambda k: stacked[k], n, None))


@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("name,layout", CASES)
def test_options_keep_invariance_and_equivariance(name, layout, opt):
    ws, _ = space(name)
    stacked = stack(name)
    p, pstacked = permuted(name, stacked)
    # the space is traced in float32; compare in float64 for tight tolerances
    to64 = lambda b: b.__copy__().update({"edge_attr": b.edge_attr.double()})  # noqa: E731
    g, pg = to64(ws.graphs(stacked, layout)), to64(ws.graphs(pstacked, layout))
    net = model(ws.layout(layout).width, OPTIONS[opt])
    net.fit_normalization([g])
    out = net(g)
    assert out.shape == (3, 2)
    torch.testing.assert_close(net(pg), out, rtol=1e-9, atol=1e-9)
    # the heads stay equivariant (the aggregation option changes the layers)
    assert_heads_follow(net, ws, p, g, pg, layout)
    # a shared-structure batch of the same networks gives the same outputs
    net32 = net.float()
    torch.testing.assert_close(net32(SharedBatch.of(ws, stacked, layout)), net32(ws.graphs(stacked, layout)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kind,sample", [("mlp_relu", "scale", "sample_scaling"),
                                              ("small_cnn", "scale", "sample_scaling"),
                                              ("mlp_tanh", "sign", "sample_sign_flip")])
def test_scale_and_sign_aware_variant_stays_invariant(name, kind, sample):
    ws, _ = space(name)
    stacked = double(stack(name))
    rescaled = ws.scale(stacked, getattr(ws, sample)(torch.Generator().manual_seed(0)), batched=True)
    _, permuted_ = permuted(name, stacked)
    opts = OPTIONS["all"]
    aware = model(ws.layout().width, opts, canonical=kind)
    aware.fit_normalization([shared(name, stacked)])
    ref = aware(shared(name, stacked))
    torch.testing.assert_close(aware(shared(name, rescaled)), ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(aware(shared(name, permuted_)), ref, rtol=1e-6, atol=1e-8)
    # the control: the same options without canonical forms tell the rescaled network apart
    plain = model(ws.layout().width, opts)
    plain.fit_normalization([shared(name, stacked)])
    assert (plain(shared(name, rescaled)) - plain(shared(name, stacked))).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["small_cnn", "resnet_basic", "gpt"])
def test_statistics_read_every_tensor(name):
    """Changing one tensor's values (every other tensor as it was) changes the
    statistics, for every tensor; so does the hybrid's output."""
    ws, _ = space(name)
    stacked = double(stack(name, n=2))
    stats = WeightStats(8).double()
    net = model(ws.layout().width, OPTIONS["hybrid"], layers=0)   # no message passing: the readout alone
    base_stats = stats.features(GraphInput.of(shared(name, stacked)))
    base_out = net(shared(name, stacked))
    for k in ws.weights:
        if not stacked[k].is_floating_point():
            continue
        changed = dict(stacked)
        changed[k] = stacked[k] * 1.5 + 0.1
        g = shared(name, changed)
        assert (stats.features(GraphInput.of(g)) - base_stats).abs().max() > 1e-6, f"{k} is ignored"
        assert (net(g) - base_out).abs().max() > 1e-9, f"{k} does not reach the output"


def test_statistics_path_matches_statnn():
    """The hybrid's statistics are StatNN's (per role and depth bin), standardised alike."""
    ws, _ = space("small_cnn")
    g = shared("small_cnn", double(stack("small_cnn", n=5)))
    stat = StatNN(bins=8).double().fit_normalization([g])
    path = WeightStats(8).double().fit([GraphInput.of(g)])
    torch.testing.assert_close(path.features(GraphInput.of(g)), stat.features(g), rtol=0, atol=0)
    varied = stat.feat_std > 1e-6
    expect = torch.where(varied, (stat.features(g) - stat.feat_mean) / stat.feat_std, torch.zeros(()).double())
    torch.testing.assert_close(path(GraphInput.of(g)), expect)


@pytest.mark.parametrize("opt", ["pna", "all"])
def test_three_architectures_in_one_batch_equal_each_alone(opt):
    graphs = [space(n)[0].graph(space(n)[1], "compact") for n in ("mlp_relu", "small_cnn", "gpt")]
    W = max(int(g.edge_attr.shape[1]) for g in graphs)
    net = model(W, OPTIONS[opt]).float()
    net.fit_normalization([collate(graphs)])   # padding stays out of the statistics
    together = net(collate(graphs))
    alone = torch.cat([net(collate([g])) for g in graphs])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opt", list(OPTIONS))
def test_save_and_load_keep_the_options(opt, tmp_path):
    ws, _ = space("small_cnn")
    sb = SharedBatch.of(ws, stack("small_cnn", n=4))
    torch.manual_seed(0)
    net = GMN(in_width=9, hidden=16, layers=2, **OPTIONS[opt])
    net.fit_normalization([sb])
    net.save_pretrained(tmp_path)
    again = GMN.from_pretrained(tmp_path)
    assert (again.readout_kind, again.weight_stats is None) == (net.readout_kind, net.weight_stats is None)
    assert not again.training   # from_pretrained gives an eval-mode model (readout_norm: running statistics)
    torch.testing.assert_close(again(sb), net.eval()(sb), rtol=0, atol=0)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="readout must be one of"):
        GMN(readout="sum")
    with pytest.raises(ValueError, match="readout_bins >= 1"):
        GMN(readout="pna", readout_bins=0)
    with pytest.raises(ValueError, match="weight_stats_bins"):
        GMN(weight_stats_bins=-1)
    with pytest.raises(ValueError, match="weight_stats_fusion"):
        GMN(weight_stats_bins=4, weight_stats_fusion="product")
    g = shared("small_cnn", stack("small_cnn"))
    with pytest.raises(ValueError, match="pooling statistics"):
        GraphInput.of(g).pool_edges_by_group(torch.zeros(3, g.edge_attr.shape[1], 4), 2, ("median",))


def test_statistics_sizes_follow_statnn():
    """The statistics path sizes its features from StatNN's number of statistics per group."""
    from metanet.nn.statnn import NUM_STATS

    g = GraphInput.of(shared("small_cnn", stack("small_cnn")))
    for bins in (2, 5):
        path = WeightStats(bins)
        n = path.features(g).shape[-1]
        assert n == path.feat_mean.numel() == StatNN(bins=bins).feat_mean.numel() == n // NUM_STATS * NUM_STATS
        assert GMN(weight_stats_bins=bins, weight_stats_fusion="sum").stats_head[0].in_features == n


def test_statistics_constant_on_the_training_zoo_read_as_zero_elsewhere():
    """StatNN and the hybrid fitted on one architecture, read on another: the statistics that
    were constant (counts, empty groups) give 0, not their change over the 1e-6 floor."""
    from metanet.nn.statnn import standardise

    g = shared("small_cnn", double(stack("small_cnn", n=5)))
    other = space("mlp_relu")[0].graphs(stack("mlp_relu", n=2), "compact")
    stat = StatNN(bins=8).double().fit_normalization([g])
    constant = stat.feat_std <= 1e-6
    assert constant.any() and (~constant).any()
    z = standardise(stat.features(other), stat.feat_mean, stat.feat_std)
    raw = (stat.features(other) - stat.feat_mean) / stat.feat_std
    assert raw.abs().max() > 1e4            # what the unguarded standardisation gives
    assert (z[:, constant] == 0).all() and z.abs().max() < 1e3
    path = WeightStats(8).double().fit([GraphInput.of(g)])
    torch.testing.assert_close(path(GraphInput.of(other)), z)
    assert torch.isfinite(stat(other)).all() and stat(other).abs().max() < 1e3


def test_hybrid_statistics_clip_bounds_a_rare_group(tmp_path):
    """As StatNN's: a (role, depth) group that one training network in many has gets a tiny
    deviation, and a test network of that kind reaches the readout at many deviations
    unclipped; the hybrid's default clip keeps it at 10. A checkpoint saved before the
    option (no key in its config) loads unclipped, as it was trained."""
    import json

    ws_cnn, _ = space("small_cnn")
    ws_gpt, _ = space("gpt")
    train = collate(ws_cnn.graphs(stack("small_cnn", n=40, seed=0), "compact").to_data_list()
                    + ws_gpt.graphs(stack("gpt", n=1, seed=1), "compact").to_data_list())
    test = GraphInput.of(ws_gpt.graphs(stack("gpt", n=2, seed=2), "compact"))
    W = int(train.edge_attr.shape[1])
    unclipped = WeightStats(8).fit([GraphInput.of(train)])
    assert unclipped(test).abs().max() > 10          # the rare groups, far outside what was seen
    torch.manual_seed(0)
    net = GMN(in_width=W, hidden=8, layers=1, weight_stats_bins=8, weight_stats_fusion="sum")
    net.fit_normalization([train])
    assert net.weight_stats.clip == 10.0 and net.weight_stats(test).abs().max() <= 10.0
    torch.testing.assert_close(net.weight_stats(test), unclipped(test).clamp(-10, 10))
    net.eval().save_pretrained(tmp_path / "new")
    assert GMN.from_pretrained(tmp_path / "new").weight_stats.clip == 10.0
    cfg = json.loads((tmp_path / "new" / "config.json").read_text())
    del cfg["weight_stats_clip"]                     # as saved before the option existed
    (tmp_path / "new" / "config.json").write_text(json.dumps(cfg))
    old = GMN.from_pretrained(tmp_path / "new")
    assert old.weight_stats.clip is None
    torch.testing.assert_close(old.weight_stats(test), unclipped(test))
    with pytest.raises(ValueError, match="weight_stats_clip"):
        GMN(weight_stats_bins=4, weight_stats_clip=0)
