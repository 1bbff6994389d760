"""Parameter-graph features shared by every architecture, dtypes kept exactly, memory
refused before allocation, shared-structure batches and mixed-architecture batches."""
import warnings

import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

import archs
from metanet import StateDictError, WeightSpace
from metanet.graph import NODE_KINDS, ROLES, GraphTooLargeError, SharedBatch, collate
from metanet.graph import layout as layout_mod
from metanet.graph.layout import GraphLayout

_SPACES = {}


def space(name):
    if name not in _SPACES:
        if name in archs.HF_ARCHS:
            pytest.importorskip("transformers")
        model, x = archs.ARCHS[name]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SPACES[name] = (WeightSpace.of(model, x), model)
    return _SPACES[name]


def role_counts(g):
    return {ROLES[i]: int((g.edge_role == i).sum()) for i in g.edge_role.unique().tolist()}


def test_roles_follow_the_ops_that_read_each_tensor():
    ws, model = space("resnet_basic")
    g = ws.graph(model.state_dict(), "param")
    counts = role_counts(g)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert counts["conv.weight"] == sum(m.weight.numel() for m in convs)
    for role in ("norm.scale", "norm.shift", "norm.running_mean", "norm.running_var"):
        assert counts[role] == sum(m.num_features for m in bns), role
    assert counts["linear.weight"] == model.fc.weight.numel() and counts["bias"] == model.fc.bias.numel()


def test_attention_projections_and_structure_have_their_roles():
    ws, model = space("gpt")
    g = ws.graph(model.state_dict(), "param")
    counts = role_counts(g)
    qkv = sum(v.numel() for k, v in model.state_dict().items() if k.endswith("c_attn.weight"))
    out = sum(v.numel() for k, v in model.state_dict().items() if k.endswith("attn.c_proj.weight"))
    assert counts["attention.in_weight"] == qkv and counts["attention.out_weight"] == out
    n_w = len(ws.weights)
    assert counts["struct.concat"] == int((g.edge_type == n_w).sum()) > 0
    assert counts["struct.product"] == int((g.edge_type == n_w + 1).sum()) > 0


def test_depth_kinds_and_kernel_positions():
    ws, model = space("small_cnn")
    g = ws.graph(model.state_dict(), "param")
    lay = ws.layout("param")
    depth = {p.name: float(g.edge_depth[p.edge_offset]) for p in lay.plans}
    order = ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    assert all(0 <= depth[a] < depth[b] <= 1 for a, b in zip(order, order[1:]))
    kinds = {NODE_KINDS[i]: int((g.node_kind == i).sum()) for i in g.node_kind.unique().tolist()}
    assert kinds == {"input": 1, "hidden": 48, "output": 10}
    # a 3x3 kernel: 9 positions from (-1, -1) to (1, 1), the centre at 0
    p = lay.plans[0]
    kpos = g.edge_kpos[p.edge_offset:p.edge_offset + 9].float()
    assert kpos.unique(dim=0).shape == (9, 2)
    torch.testing.assert_close(kpos[4], torch.zeros(2))
    torch.testing.assert_close(kpos[0], torch.tensor([-1.0, -1.0]))
    # fixed input/output neurons keep their positions, hidden neurons have none
    out = g.node_kind == NODE_KINDS.index("output")
    assert sorted(g.x[out, 1].tolist()) == pytest.approx([i / 9 for i in range(10)])
    assert (g.x[g.node_kind == NODE_KINDS.index("hidden"), 1] == 0).all()


@pytest.mark.parametrize("name", ["small_cnn", "resnet_basic", "gpt", "lstm", "hf_bert"])
@pytest.mark.parametrize("layout", ["compact", "param"])
def test_node_features_do_not_break_the_symmetry(name, layout):
    ws, model = space(name)
    g = ws.graph(model.state_dict(), layout)
    gen = torch.Generator().manual_seed(0)
    p = ws.sample_permutation(gen)
    came_from = ws.node_index(p, layout)
    assert not torch.equal(came_from, torch.arange(len(came_from)))
    for key in ("node_kind", "node_depth", "x"):
        assert torch.equal(getattr(g, key)[came_from], getattr(g, key)), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["compact", "param"])
def test_dtypes_round_trip_bit_exact(dtype, layout):
    model, x = archs.ARCHS["resnet_basic"]()
    model = model.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WeightSpace.of(model, tuple(t.to(dtype) for t in x))
    sd = model.state_dict()
    g = ws.graph(sd, layout)
    assert g.edge_attr.dtype == dtype
    back = ws.state_dict(g)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and torch.equal(back[k], sd[k]), k


def test_a_state_dict_of_another_dtype_is_refused_naming_both():
    ws, model = space("small_cnn")
    sd = {k: v.double() for k, v in model.state_dict().items()}
    with pytest.raises(StateDictError, match=r"'conv1.weight' is torch.float64.*torch.float32"):
        ws.graph(sd)
    stacked = {k: v.unsqueeze(0) for k, v in sd.items()}
    with pytest.raises(StateDictError, match="float64"):
        ws.graphs(stacked)


def test_state_dicts_from_graphs_keep_module_versions():
    ws, model = space("resnet_basic")
    sd = model.state_dict()
    back = ws.state_dict(ws.graph(sd))
    assert back._metadata == sd._metadata
    model.load_state_dict(back)
    stacked = ws.state_dicts(ws.graphs({k: v.unsqueeze(0) for k, v in sd.items()}))
    assert stacked._metadata == sd._metadata


def test_a_graph_too_large_is_refused_before_allocation(monkeypatch):
    ws, model = space("small_cnn")
    monkeypatch.setattr(layout_mod, "_SMALL", 0)
    monkeypatch.setattr(layout_mod, "available_memory", lambda: 1000)
    with pytest.raises(GraphTooLargeError, match=r"needs about .* GiB.*layout='compact'"):
        GraphLayout(ws, "param")
    monkeypatch.setattr(layout_mod, "available_memory", lambda: None)   # unknown: no refusal
    assert GraphLayout(ws, "param").num_edges == ws.num_params


def test_structure_integers_are_small_and_batch():
    ws, model = space("small_cnn")
    g = ws.graph(model.state_dict(), "param")
    assert g.edge_pos.element_size() <= 2 and g.edge_role.dtype == torch.int8
    b = Batch.from_data_list([g, g])
    assert torch.equal(b.edge_pos, torch.cat([g.edge_pos, g.edge_pos]))
    assert torch.equal(b.edge_index[:, g.num_edges:], g.edge_index + g.num_nodes)


@pytest.mark.parametrize("layout", ["compact", "param"])
def test_shared_batch_matches_pyg_batch_and_inverts(layout):
    ws, model = space("resnet_basic")
    torch.manual_seed(0)
    stacked = {k: (torch.randn(3, *v.shape) if v.is_floating_point() else v.expand(3, *v.shape).clone())
               for k, v in model.state_dict().items()}
    sb = SharedBatch.of(ws, stacked, layout)
    assert sb.edge_attr.shape == (3, ws.layout(layout).num_edges, ws.layout(layout).width)
    assert sb.edge_index.shape[1] == sb.num_edges      # one structure, not three
    ref = ws.graphs(stacked, layout)
    fast = sb.to_batch()
    for key in ("x", "edge_index", "edge_attr", "edge_role", "edge_depth", "node_kind", "batch", "ptr"):
        assert torch.equal(getattr(fast, key), getattr(ref, key)), key
    back = ws.state_dicts(sb)
    assert all(torch.equal(back[k], stacked[k]) for k in stacked)
    with pytest.raises(ValueError, match=r"needs \[B, "):
        sb.with_edge_attr(sb.edge_attr[:, :-1])


def test_collate_mixed_architectures_pads_and_reports():
    graphs = []
    for name in ("small_cnn", "gpt", "mlp_relu"):
        ws, model = space(name)
        graphs.append(ws.graph(model.state_dict(), "compact"))
    b = collate(graphs)
    widths = [int(g.edge_attr.shape[1]) for g in graphs]
    W = max(widths)
    assert b.edge_attr.shape == (sum(g.num_edges for g in graphs), W)
    assert b.pad_values == sum(g.num_edges * (W - w) for g, w in zip(graphs, widths)) > 0
    assert b.pad_fraction == pytest.approx(b.pad_values / b.edge_attr.numel())
    for i, (g, w) in enumerate(zip(graphs, widths)):
        one = b.get_example(i)
        assert torch.equal(one.edge_attr[:, :w], g.edge_attr)
        assert torch.equal(one.edge_role, g.edge_role)
    with pytest.raises(ValueError, match="pass a wider width"):
        collate(graphs, width=1)


def test_graph_bytes_estimate_matches_the_graph():
    ws, model = space("resnet_basic")
    for layout in ("compact", "param"):
        g = ws.graph(model.state_dict(), layout)
        real = sum(v.numel() * v.element_size() for _, v in g if isinstance(v, torch.Tensor))
        est = ws.layout(layout).graph_bytes(1)
        assert abs(est - real) <= 64 + g.extras.numel() * 8, (layout, est, real)
