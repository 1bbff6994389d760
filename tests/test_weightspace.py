"""WeightSpace on every test architecture: round trips, function-preserving symmetries,
graph equivariance, non-trivial groups and sensitivity."""
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import archs
from metanet import StateDictError, TraceError, UnsupportedOpWarning, WeightSpace
from metanet.trace.export import _default_kwargs, tensor_leaves

NAMES = sorted(archs.ARCHS)
RTOL = 1e-5


def build(name):
    if name in archs.HF_ARCHS:
        pytest.importorskip("transformers")
    return archs.ARCHS[name]()


_SPACES = {}


def space(name):
    if name not in _SPACES:
        model, x = build(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SPACES[name] = WeightSpace.of(model, x)
    return _SPACES[name]


def outputs(model, x):
    with torch.no_grad():
        return tensor_leaves(model(*x, **_default_kwargs(model, {})))


def rel_err(a, b):
    return max(((u - v).abs().max() / (u.abs().max() + 1e-12)).item() for u, v in zip(a, b))


def outputs_with(name, sd):
    model, x = build(name)
    model.load_state_dict(sd)
    return outputs(model, x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["compact", "param"])
def test_round_trip_bit_exact(name, layout):
    ws = space(name)
    model, _ = build(name)
    sd = model.state_dict()
    back = ws.state_dict(ws.graph(sd, layout))
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
        assert torch.equal(back[k], sd[k]), k


@pytest.mark.parametrize("name", NAMES)
def test_permutations_preserve_function(name):
    ws = space(name)
    model, x = build(name)
    sd = model.state_dict()
    ref = outputs(model, x)
    gen = torch.Generator().manual_seed(1)
    moved = False
    for _ in range(5):
        p = ws.sample_permutation(gen)
        psd = ws.permute(sd, p)
        moved |= any(not torch.equal(psd[k], sd[k]) for k in sd)
        assert rel_err(ref, outputs_with(name, psd)) < RTOL
    assert moved, "permutations moved no weight"


@pytest.mark.parametrize("name", NAMES)
def test_scalings_and_sign_flips_preserve_function_where_offered(name):
    ws = space(name)
    model, x = build(name)
    sd = model.state_dict()
    ref = outputs(model, x)
    gen = torch.Generator().manual_seed(2)
    for kind, sample in (("scale", ws.sample_scaling), ("sign", ws.sample_sign_flip)):
        offered = any(g.scaling if kind == "scale" else g.sign for g in ws.groups)
        if not offered:
            with pytest.raises(ValueError, match="no .* symmetry"):
                sample(gen)
            continue
        moved = False   # a draw may be the identity (a sign group of 4 is all +1 once in 16)
        for _ in range(5):
            s = sample(gen)
            ssd = ws.scale(sd, s)
            moved |= any(not torch.equal(ssd[k], sd[k]) for k in sd)
            assert rel_err(ref, outputs_with(name, ssd)) < RTOL
        assert moved, f"five {kind} draws moved no weight"


def test_symmetries_offered_where_they_hold():
    assert all(g.scaling and not g.sign for g in space("mlp_relu").groups)
    assert all(g.sign and not g.scaling for g in space("mlp_tanh").groups)
    assert all(g.sign and not g.scaling for g in space("siren").groups)
    assert not any(g.scaling or g.sign for g in space("mlp_gelu").groups)
    with pytest.raises(ValueError, match="positive-scaling"):
        space("siren").sample_scaling()
    with pytest.raises(ValueError, match="sign-flip"):
        space("mlp_relu").sample_sign_flip()
    # a scaling of one kind cannot be applied where only the other holds
    s = space("mlp_relu").sample_scaling()
    from metanet import Scaling
    with pytest.raises(ValueError, match="no sign symmetry"):
        space("mlp_relu").scale(archs.ARCHS["mlp_relu"]()[0].state_dict(), Scaling(s.factors, "sign"))


class _Act(nn.Module):
    """conv -> activation -> conv -> activation -> 1x1 conv, the activation a module."""

    def __init__(self, make):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 2, 1)
        self.p, self.q = make(), make()

    def forward(self, x):
        return self.c(self.q(self.b(self.p(self.a(x)))))


def _prelu(c):
    m = nn.PReLU(c)
    with torch.no_grad():
        m.weight.uniform_(-0.5, 0.5)   # slopes that differ per channel and may be negative
    return m


@pytest.mark.parametrize("make, scaling, sign", [
    (lambda: _prelu(6), True, False),          # per-channel slope: permuted with its channel
    (lambda: _prelu(1), True, False),
    (lambda: nn.RReLU().eval(), True, False),
    (nn.Hardshrink, False, True),
    (nn.Softshrink, False, True),
])
def test_prelu_rrelu_and_shrinks_keep_the_symmetries_they_have(make, scaling, sign):
    torch.manual_seed(0)
    model, x = _Act(make).eval(), torch.randn(2, 3, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)   # each has its own rule now
        ws = WeightSpace.of(model, (x,), cache=False)
    assert [(g.size, g.scaling, g.sign) for g in ws.groups] == [(6, scaling, sign)] * 2
    # every sampled permutation / scaling / sign flip, numerically, at the traced shape and at
    # another batch size and image size
    assert len(ws.verify(model, (x,), n=5).shapes) > 1


class _Bag(nn.Module):
    """A bag of embeddings (sum, mean or max), then an odd or positively homogeneous MLP."""

    def __init__(self, mode, act):
        super().__init__()
        self.bag, self.act = nn.EmbeddingBag(10, 6, mode=mode), act
        self.a, self.o = nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, t):
        return self.o(self.act(self.a(self.bag(t))))


class _Bilinear(nn.Module):
    def __init__(self, same):
        super().__init__()
        self.same = same
        self.a, self.c = nn.Linear(4, 6), None if same else nn.Linear(3, 7)
        self.b, self.o = nn.Bilinear(6, 6 if same else 7, 5), nn.Linear(5, 2)

    def forward(self, x, y):
        h = torch.tanh(self.a(x))
        return self.o(torch.tanh(self.b(h, h if self.same else torch.tanh(self.c(y)))))


class _Shuffle(nn.Module):
    """ShuffleNet's unit: grouped 1x1 conv, channel shuffle, grouped 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.pre, self.a = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1, groups=2)
        self.shuffle, self.b, self.o = nn.ChannelShuffle(2), nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.o(torch.relu(self.b(self.shuffle(torch.relu(self.a(torch.relu(self.pre(x))))))))


@pytest.mark.parametrize("make, inputs, groups", [
    # sum and mean are linear in the table: its columns scale and flip with the next layer's inputs
    (lambda: _Bag("sum", torch.tanh), lambda: (torch.randint(0, 10, (3, 4)),), [(5, False, True), (6, True, True)]),
    (lambda: _Bag("mean", torch.relu), lambda: (torch.randint(0, 10, (3, 4)),), [(5, True, False), (6, True, True)]),
    # the max over a bag commutes with positive factors only
    (lambda: _Bag("max", torch.tanh), lambda: (torch.randint(0, 10, (3, 4)),), [(5, False, True), (6, True, False)]),
    # a bilinear map's weight is one edge per (output, first input) pair: its second input's
    # neurons are fixed, its first input's and its outputs keep their groups ...
    (lambda: _Bilinear(False), lambda: (torch.randn(3, 4), torch.randn(3, 3)), [(5, False, True), (6, False, True)]),
    # ... its output neurons always do; one tensor fed to both inputs cannot be one edge per weight
    (lambda: _Bilinear(True), lambda: (torch.randn(3, 4), torch.randn(3, 3)), [(5, False, True)]),
    (_Shuffle, lambda: (torch.randn(2, 3, 5, 5),), None),
])
def test_embedding_bags_bilinear_maps_and_channel_shuffles(make, inputs, groups):
    torch.manual_seed(0)
    model, x = make().eval(), inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)   # each op has its rule
        ws = WeightSpace.of(model, x, cache=False)
    got = sorted((g.size, g.scaling, g.sign) for g in ws.groups)
    if groups is not None:
        assert got == sorted(groups)
    else:
        assert ws.groups
    assert len(ws.verify(model, x, n=5).shapes) > 1   # the traced shape and others
    sd = model.state_dict()
    for layout in ("compact", "param"):   # the parameter graph still inverts bit for bit
        back = ws.state_dict(ws.graph(sd, layout=layout))
        assert all(torch.equal(back[k], sd[k]) for k in ws.weights)


def _edge_table(g, relabel=None):
    ei = g.edge_index if relabel is None else relabel[g.edge_index]
    n = int(g.num_nodes)
    key = ((g.edge_type.long() * (int(g.edge_pos.max()) + 1 if g.edge_pos.numel() else 1) + g.edge_pos) * n + ei[0]) * n + ei[1]
    order = torch.argsort(key)
    return key[order], g.edge_attr[order]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["compact", "param"])
def test_graph_is_equivariant(name, layout):
    ws = space(name)
    model, _ = build(name)
    sd = model.state_dict()
    g0 = ws.graph(sd, layout)
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        p = ws.sample_permutation(gen)
        g1 = ws.graph(ws.permute(sd, p), layout)
        came_from = ws.node_index(p, layout)          # new node j was old node came_from[j]
        assert sorted(came_from.tolist()) == list(range(int(g0.num_nodes)))
        new_label = torch.empty_like(came_from)
        new_label[came_from] = torch.arange(len(came_from))
        k0, a0 = _edge_table(g0, new_label)
        k1, a1 = _edge_table(g1)
        assert torch.equal(k0, k1)
        assert torch.equal(a0, a1)
        for attr in ("x", "node_type", "node_pos"):
            assert torch.equal(getattr(g0, attr)[came_from], getattr(g1, attr))
        if ws.groups and not all(bool((q == torch.arange(len(q))).all()) for q in p.perms):
            assert not torch.equal(g0.edge_attr, g1.edge_attr)


def _fixed_output_layers(ws):
    """Linear/conv weights whose output axis carries no neuron group."""
    sp = ws.spaces
    out = []
    for n in ws.op_graph.nodes:
        if n.kind not in ("linear", "conv", "conv_transpose"):
            continue
        for p in n.params:
            roles = sp.roles.get(p, {})
            k = [a for a, r in roles.items() if r == "out"]
            if len(ws.shapes[p]) >= 2 and k:
                s = ws.axes(p)[k[0]]
                if not any(sp.free[a] and sp.sizes[a] > 1 for seg in s for a in seg):
                    out.append(p)
    return out


# hidden layers an op legitimately ties to their channel order: res2net_eca's ECA gate is
# a 1-D conv ACROSS the channels of concat(split 0, convs' outputs), so those channels
# (the convs' outputs; eca.weight itself has one output) cannot move
_FIXED_HIDDEN = {"res2net_eca": {"convs.0.weight", "convs.1.weight", "convs.2.weight", "eca.weight"}}


@pytest.mark.parametrize("name", NAMES)
def test_only_output_layers_are_fixed(name):
    # every hidden Linear/Conv output carries a group; only the layer that writes the
    # model's output is fixed (and the hidden layers _FIXED_HIDDEN names, no others)
    fixed = set(_fixed_output_layers(space(name)))
    hidden = _FIXED_HIDDEN.get(name, set())
    assert hidden <= fixed and len(fixed - hidden) == 1, sorted(fixed)


@pytest.mark.parametrize("name,count", [
    ("resnet_basic", 5),         # stem+stage-1 residual, 2 block-internal, stage-2 residual, 1 block-internal
    ("resnet_bottleneck", 6),    # residual 8, (2, 2), (4, 4), residual 16
    ("transformer_encoder", 7),  # residual; per layer: heads, head dims (packed qkv), FFN hidden
    ("gpt", 9),                  # residual; per block: heads, q/k dims, v dims, MLP hidden
    ("mlp_relu", 2), ("small_cnn", 3), ("cnn_flatten", 3), ("densenet", 5), ("unet", 8),
    ("gru", 1), ("lstm", 1),     # hidden units (gate blocks fixed)
])
def test_exact_group_counts(name, count):
    assert len(space(name).groups) == count


def test_attention_structure_gpt():
    ws = space("gpt")
    sizes = sorted(g.size for g in ws.groups)
    # d=8, 2 heads of 4 dims, MLP 32, in each of 2 blocks, plus the residual stream
    assert sizes == [2, 2, 4, 4, 4, 4, 8, 32, 32]
    # heads permute q, k and v together: the fused qkv weight's rows carry the heads group
    qkv = ws.axes("h.0.attn.c_attn.weight")[0]
    assert len(qkv) == 3  # q, k, v blocks


@pytest.mark.parametrize("name", NAMES)
def test_sensitivity_permuting_one_of_tied_tensors_changes_outputs(name):
    ws = space(name)
    model, x = build(name)
    # move away from initializations that hide effects (zero biases, tiny attention logits)
    params = dict(model.named_parameters())
    sd = {k: v + (0.5 * v.std() if v.numel() > 1 else 0.0) * torch.randn_like(v) + 0.2 * torch.randn_like(v)
          if k in params else v for k, v in model.state_dict().items()}
    for alias, canon in ws.aliases.items():
        sd[alias] = sd[canon]
    ref = outputs_with(name, sd)
    gen = torch.Generator().manual_seed(4)
    from metanet import Permutation
    for g in ws.groups:
        while True:
            q = torch.randperm(g.size, generator=gen)
            if not torch.equal(q, torch.arange(g.size)):
                break
        perm = Permutation(tuple(q if i == g.id else p for i, p in enumerate(ws.identity_permutation().perms)))
        full = ws.permute(sd, perm)
        errs = []
        for tensor in dict.fromkeys(t for t, _ in ws.group_axes(g.id)):
            broken = dict(sd)
            broken[tensor] = full[tensor]
            for alias, canon in ws.aliases.items():
                if canon == tensor:
                    broken[alias] = full[tensor]
            errs.append(rel_err(ref, outputs_with(name, broken)))
        assert len(errs) >= 1 and rel_err(ref, outputs_with(name, full)) < RTOL
        # a tensor permuted alone (not its tied partners) changes the function, well above
        # the ~1e-7 of a consistent permutation (some may be hidden by dead ReLUs)
        assert max(errs) > 1e-5, (g, errs)


def test_batched_graphs_match_single_graphs():
    ws = space("resnet_basic")
    sds = []
    for i in range(3):
        torch.manual_seed(i)
        m, _ = archs.ARCHS["resnet_basic"]()
        for p in m.parameters():
            p.data.normal_()
        sds.append(m.state_dict())
    stacked = {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}
    for layout in ("compact", "param"):
        fast = ws.graphs(stacked, layout)
        slow = Batch.from_data_list([ws.graph(sd, layout) for sd in sds])
        for key in ("x", "edge_index", "edge_attr", "edge_type", "edge_pos", "node_type", "node_pos",
                    "extras", "batch", "ptr"):
            assert torch.equal(getattr(fast, key), getattr(slow, key)), key
        back = ws.state_dicts(fast)
        for k in stacked:
            assert torch.equal(back[k], stacked[k])
        for i in range(3):
            one = ws.state_dict(fast.get_example(i))
            assert all(torch.equal(one[k], sds[i][k]) for k in one)


def test_graph_memory_is_not_shared_with_outputs():
    ws = space("small_cnn")
    sd = archs.ARCHS["small_cnn"]()[0].state_dict()
    g = ws.graph(sd)
    back = ws.state_dict(g)
    before = g.edge_attr.clone()
    for v in back.values():
        v.zero_()
    assert torch.equal(g.edge_attr, before)       # editing the state dict leaves the graph
    g2 = ws.graph(sd, copy=True)
    g2.x[:, 0] += 1
    assert not torch.equal(ws.graph(sd).x, g2.x)  # a copied graph owns its structure


def test_refill_a_graph_in_place():
    ws = space("resnet_basic")
    sds = [archs.ARCHS["resnet_basic"]()[0].state_dict()]
    sds.append({k: v * 2 if v.is_floating_point() else v + 1 for k, v in sds[0].items()})
    g = ws.graph(sds[0])
    ptr = g.edge_attr.data_ptr()
    again = ws.graph(sds[1], out=g)
    assert again is g and g.edge_attr.data_ptr() == ptr
    assert torch.equal(g.edge_attr, ws.graph(sds[1]).edge_attr)
    assert all(torch.equal(ws.state_dict(g)[k], sds[1][k]) for k in sds[1])
    with pytest.raises(ValueError, match="pass a graph made by it"):
        ws.graph(sds[0], "param", out=g)


def test_lone_neurons_and_attention_structure_are_nodes():
    # one output (INR) and one input channel (grayscale) are nodes, not self-loops
    siren = space("siren").layout()
    assert not any(ns.hub for ns in siren.sets.values())
    assert sum(ns.unit for ns in siren.sets.values()) == 1
    cnn = space("small_cnn").layout()
    assert sum(ns.unit for ns in cnn.sets.values()) == 1
    # in a fused qkv, the q and k blocks meet in one node set (their inner product), and
    # heads x dims sets link to a set of heads
    gpt = space("gpt")
    lay = gpt.layout()
    qkv = [k for k in lay.sets if isinstance(k[0], tuple) and len(k) == 3]
    assert len(qkv) == 2
    q_seg, k_seg, v_seg = qkv[0]
    assert q_seg == k_seg != v_seg and ((q_seg,) in lay.sets) and ((v_seg,) in lay.sets)
    n_w = len(gpt.weights)
    assert (lay.edge_type == n_w).sum() == 2 * 3 * 8       # concat edges: 2 blocks x 3 x 8
    assert (lay.edge_type == n_w + 1).sum() > 0            # product (heads) edges


def test_batched_permute_matches_single():
    ws = space("gpt")
    m, _ = archs.ARCHS["gpt"]()
    sd = m.state_dict()
    stacked = {k: torch.stack([v, v * 2]) for k, v in sd.items()}
    p = ws.sample_permutation(torch.Generator().manual_seed(0))
    a = ws.permute(stacked, p, batched=True)
    b = ws.permute(sd, p)
    assert all(torch.equal(a[k][0], b[k]) for k in sd)


def test_stacked_bidirectional_recurrent_layers():
    class Deep(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.rnn = cell(4, 6, num_layers=2, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    x = (torch.randn(2, 5, 4),)
    for cell in (nn.LSTM, nn.GRU, nn.RNN):
        model = Deep(cell).eval()
        ws = WeightSpace.of(model, x, cache=False)
        assert [g.size for g in ws.groups] == [6, 6, 6, 6]  # 2 layers x 2 directions
        sd, ref = model.state_dict(), outputs(model, x)
        model.load_state_dict(ws.permute(sd, ws.sample_permutation()))
        assert rel_err(ref, outputs(model, x)) < RTOL


def test_tied_weights_stay_tied():
    ws = space("gpt")
    assert ws.aliases == {"lm_head.weight": "wte.weight"}
    m, _ = archs.ARCHS["gpt"]()
    p = ws.sample_permutation(torch.Generator().manual_seed(5))
    psd = ws.permute(m.state_dict(), p)
    assert torch.equal(psd["lm_head.weight"], psd["wte.weight"])


def test_pickle_and_cache():
    m, x = archs.ARCHS["small_cnn"]()
    ws = WeightSpace.of(m, x)
    assert WeightSpace.of(archs.ARCHS["small_cnn"]()[0], x) is ws
    ws2 = pickle.loads(pickle.dumps(ws))
    sd = m.state_dict()
    assert torch.equal(ws2.graph(sd).edge_attr, ws.graph(sd).edge_attr)
    assert len(pickle.dumps(ws)) < 200_000


def test_state_dict_errors_name_the_key():
    ws = space("small_cnn")
    sd = archs.ARCHS["small_cnn"]()[0].state_dict()
    key = list(sd)[0]
    with pytest.raises(StateDictError, match="missing .*" + key.replace(".", r"\.")):
        ws.graph({k: v for k, v in sd.items() if k != key})
    with pytest.raises(StateDictError, match=key.replace(".", r"\.") + ".*shape"):
        ws.graph({**sd, key: sd[key][:1]})
    bad = {**sd, key: sd[key].clone()}
    bad[key].view(-1)[0] = float("nan")
    with pytest.raises(StateDictError, match="non-finite"):
        ws.check(bad, finite=True)
    g = space("mlp_relu").graph(archs.ARCHS["mlp_relu"]()[0].state_dict())
    with pytest.raises(ValueError, match="another architecture"):
        ws.state_dict(g)


def test_untraceable_model_gets_a_clear_error():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.l(x)
            return x

    with pytest.raises(TraceError, match="What to try"):
        WeightSpace.of(DataDependent(), (torch.randn(2, 3),), cache=False)
    with pytest.raises(TypeError, match="example_inputs"):
        WeightSpace.of(DataDependent(), {"x": 1}, cache=False)


def test_unknown_op_fixes_axes_and_warns_once():
    class Flip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = torch.fft.fft(h).real          # an op the propagation does not know
            return self.c(torch.relu(self.b(h)))

    with pytest.warns(UnsupportedOpWarning, match=r"fft.*axes through it are fixed"):
        ws = WeightSpace.of(Flip(), (torch.randn(2, 4),), cache=False)
    assert [g.size for g in ws.groups] == [6]  # only b's output neurons remain free
    assert any("fft" in w for w in ws.spaces.warnings)


class _OpsNet(nn.Module):
    """Hidden activations pass through one op each; the rule for it must keep the
    function under permutations and keep (or, where needed, fix) the groups."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        h = self.op(torch.relu(self.a(x)))
        h = torch.relu(self.b(h))
        return self.head(h.mean((2, 3)))


OPS = {  # op -> group sizes it leaves ([6, 6]: both hidden layers keep theirs)
    "roll": (lambda h: torch.roll(h, shifts=(1, 2), dims=(2, 3)), [6, 6]),
    "flip": (lambda h: torch.flip(h, dims=(3,)), [6, 6]),
    "pad_crop": (lambda h: nn.functional.pad(h, (1, 1, 1, 1))[:, :, 1:-1, 1:-1], [6, 6]),
    "einsum": (lambda h: torch.einsum("bchw->bchw", h) * 2.0, [6, 6]),
    "chunk_cat": (lambda h: torch.cat(h.chunk(2, dim=1)[::-1], dim=1), [3, 3, 6]),  # two blocks
    "permute_back": (lambda h: h.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), [6, 6]),
    "softmax_channels": (lambda h: torch.softmax(h, dim=1), [6, 6]),
    "cumsum_channels": (lambda h: torch.cumsum(h, dim=1), [6]),     # channel order matters
    "select_channel": (lambda h: h * h[:, :1], [5, 6]),             # channel 0 singled out
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_rules(op):
    fn, sizes = OPS[op]
    torch.manual_seed(0)
    model = _OpsNet(fn).eval()
    x = (torch.randn(2, 3, 6, 6),)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedOpWarning)
        ws = WeightSpace.of(model, x, cache=False)
    assert [g.size for g in ws.groups] == sizes
    sd, ref = model.state_dict(), outputs(model, x)
    for seed in range(3):
        model.load_state_dict(ws.permute(sd, ws.sample_permutation(torch.Generator().manual_seed(seed))))
        assert rel_err(ref, outputs(model, x)) < RTOL
