"""``verify``: the behavioural check of a weight space's symmetries. It passes on real
groups at several input shapes, and it catches (and names) a false group planted in a
weight space, including one that only shows at another input shape."""
import dataclasses
import warnings

import pytest
import torch
from torch import nn

import archs
from metanet import WeightSpace
from metanet.cli import main
from metanet.space.verify import SymmetryError, VerifyReport, relative_error, verify


def traced(name):
    if name in archs.HF_ARCHS:
        pytest.importorskip("transformers")
    model, x = archs.ARCHS[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, x, WeightSpace.of(model, x, cache=False)


def rebuilt(ws, **changes):
    """A WeightSpace built by the constructor from ``ws``'s Spaces with ``changes``
    (fields of Spaces): how a wrong propagation result would reach users."""
    spaces = dataclasses.replace(ws.spaces, **changes)
    return WeightSpace(ws.op_graph, ws.keys, ws.shapes, ws.dtypes, ws.aliases, ws.weights, spaces)


def space_of(ws, name, axis):
    (seg,) = ws.axes(name)[axis]
    (sp,) = seg
    return sp


# -- real groups hold --------------------------------------------------------------------------
IMAGE_OR_SEQUENCE = {"small_cnn", "resnet_basic", "unet", "gpt", "lstm", "mobilenetv2_se", "conv1d"}


@pytest.mark.parametrize("name", ["mlp_relu", "siren", "small_cnn", "resnet_basic", "unet", "gpt",
                                  "lstm", "mobilenetv2_se", "conv1d", "hf_gpt2"])
def test_verify_passes_on_test_architectures_at_several_shapes(name):
    model, x, ws = traced(name)
    report = ws.verify(model, x)
    assert isinstance(report, VerifyReport)
    assert report.groups == len(ws.groups) > 0
    assert report.shapes[0] == ", ".join(str(tuple(t.shape)) for t in x)
    # another batch size always; another length or image size where the model takes one
    assert len(report.shapes) >= (3 if name in IMAGE_OR_SEQUENCE else 2), report.shapes
    assert len(set(report.shapes)) == len(report.shapes)
    offered = {"permutation"} | {k for k, ok in (("scaling", any(g.scaling for g in ws.groups)),
                                                 ("sign", any(g.sign for g in ws.groups))) if ok}
    assert set(report.max_rel_err) == offered
    assert all(0 <= e <= 1e-5 for e in report.max_rel_err.values())
    assert report.checks == 5 * len(offered) * len(report.shapes)


def test_default_shapes_change_batch_and_length():
    model, x, ws = traced("gpt")  # tokens (2, 6); the positional table has 8 rows
    report = verify(ws, model, x)
    assert report.shapes[:2] == ("(2, 6)", "(3, 6)")
    assert "(2, 7)" in report.shapes and "(2, 5)" in report.shapes
    model, x, ws = traced("unet")  # two poolings and skip connections: sizes 4k only
    report = verify(ws, model, x)
    assert "(2, 1, 20, 20)" in report.shapes and "(2, 1, 12, 12)" in report.shapes
    assert "(2, 1, 17, 17)" in report.skipped
    text = str(report)
    assert "(2, 1, 20, 20)" in text and "permutation" in text and "rejects" in text


def test_given_shapes_replace_the_defaults_and_must_be_accepted():
    model, x, ws = traced("small_cnn")
    other = torch.randn(4, 1, 11, 11)
    report = verify(ws, model, x, shapes=[(other,)])
    assert report.shapes == ("(2, 1, 8, 8)", "(4, 1, 11, 11)")
    report = verify(ws, model, x, shapes=lambda ex: [torch.cat([ex[0], ex[0]])])
    assert report.shapes == ("(2, 1, 8, 8)", "(4, 1, 8, 8)")
    assert verify(ws, model, x, shapes=[]).shapes == ("(2, 1, 8, 8)",)
    with pytest.raises(ValueError, match=r"rejects the inputs \(2, 3, 8, 8\)"):
        verify(ws, model, x, shapes=[(torch.randn(2, 3, 8, 8),)])


def test_verify_leaves_the_model_as_it_was():
    model, x, ws = traced("resnet_basic")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    verify(ws, model, x, n=2)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_same_generator_seed_same_report():
    model, x, ws = traced("small_cnn")
    a = verify(ws, model, x, n=2)
    b = verify(ws, model, x, n=2, generator=torch.Generator().manual_seed(0))
    assert a == b


# -- false groups are caught and named ------------------------------------------------------------
def test_catches_output_classes_made_free():
    model, x, ws = traced("mlp_relu")
    out = space_of(ws, "net.4.weight", 0)          # the 3 output classes: fixed
    assert not ws.spaces.free[out]
    free = list(ws.spaces.free)
    free[out] = True
    bad = rebuilt(ws, free=free)
    assert len(bad.groups) == len(ws.groups) + 1
    false = next(g for g in bad.groups if g.space == out)
    with pytest.raises(SymmetryError) as info:
        bad.verify(model, x)
    err = info.value
    assert err.group == false and err.kind == "permutation" and err.shape == "(2, 6)"
    assert [g for g, _ in err.failures] == [false]  # the real groups pass alone
    assert err.rel_err > 1e-2
    msg = str(err)
    assert f"group {false.id} (net.4.weight[0], 3 neurons)" in msg
    assert "permutation" in msg and "(2, 6)" in msg and f"{err.rel_err:.1e}" in msg


def test_catches_positions_made_free():
    model, x, ws = traced("gpt")
    pos = space_of(ws, "wpe.weight", 0)             # positions of the 8-row table: fixed
    free = list(ws.spaces.free)
    free[pos] = True
    bad = rebuilt(ws, free=free)
    with pytest.raises(SymmetryError) as info:
        verify(bad, model, x)
    assert info.value.group.name == "wpe.weight[0]" and info.value.group.size == 8
    assert "wpe.weight[0]" in str(info.value)


def test_catches_a_group_merged_with_an_unrelated_space():
    torch.manual_seed(0)
    model = archs.MLP((8, 8, 8, 3)).eval()
    x = (torch.randn(2, 8),)
    ws = WeightSpace.of(model, x, cache=False)
    inputs, hidden = space_of(ws, "net.0.weight", 1), space_of(ws, "net.0.weight", 0)
    assert not ws.spaces.free[inputs] and ws.spaces.free[hidden]
    # the input features (fixed) merged into the first hidden group: a false group
    axes = {name: [tuple(tuple(hidden if s == inputs else s for s in seg) for seg in st) for st in structs]
            for name, structs in ws.spaces.axes.items()}
    bad = rebuilt(ws, axes=axes)
    assert [g.size for g in bad.groups] == [8, 8]
    with pytest.raises(SymmetryError) as info:
        verify(bad, model, x)
    assert info.value.group == bad.groups[0] and info.value.group.name == "net.0.weight[0]"
    assert [g for g, _ in info.value.failures] == [bad.groups[0]]
    # merging two real groups is no error: one permutation for both is still a symmetry
    a, b = hidden, space_of(ws, "net.2.weight", 0)
    axes = {name: [tuple(tuple(a if s == b else s for s in seg) for seg in st) for st in structs]
            for name, structs in ws.spaces.axes.items()}
    assert verify(rebuilt(ws, axes=axes), model, x).groups == 1


@pytest.mark.parametrize("name,kind,field", [("mlp_gelu", "scaling", "no_scale"),
                                               ("mlp_relu", "sign", "no_sign")])
def test_catches_a_false_scaling_or_sign_flip(name, kind, field):
    model, x, ws = traced(name)
    bad = rebuilt(ws, **{field: {}})                # every group claims the symmetry
    assert all(g.scaling if kind == "scaling" else g.sign for g in bad.groups)
    with pytest.raises(SymmetryError) as info:
        verify(bad, model, x)
    assert info.value.kind == kind and info.value.group in bad.groups
    assert kind in str(info.value)


class SlicedPositions(nn.Module):
    """A positional table of 8 rows sliced to the input length."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.pos = nn.Parameter(torch.randn(8, 4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x) + self.pos[: x.shape[1]]))


def test_a_group_that_holds_only_at_the_traced_shape_is_caught_at_another():
    torch.manual_seed(0)
    model = SlicedPositions().eval()
    x = (torch.randn(2, 5, 3),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = WeightSpace.of(model, x, cache=False)
    # plant the false group: rows 5..7 of the table (unused at length 5) as a free block
    sp = ws.spaces
    fixed5, free3 = len(sp.sizes), len(sp.sizes) + 1
    axes = dict(sp.axes)
    axes["pos"] = [((fixed5,), (free3,))] + list(sp.axes["pos"][1:])
    bad = rebuilt(ws, axes=axes, sizes=sp.sizes + [5, 3], free=sp.free + [False, True],
                  neuron=sp.neuron + [True, True], no_scale={**sp.no_scale, free3: "planted"},
                  no_sign={**sp.no_sign, free3: "planted"})
    false = next(g for g in bad.groups if g.space == free3)
    assert false.name == "pos[0]" and false.size == 3
    assert verify(bad, model, x, shapes=[]).max_rel_err["permutation"] <= 1e-5  # traced shape only
    with pytest.raises(SymmetryError) as info:
        verify(bad, model, x)
    assert info.value.group == false and info.value.shape == "(2, 6, 3)"


def test_relative_error():
    a = [torch.tensor([1.0, -4.0]), torch.zeros(2)]
    assert relative_error(a, a) == 0
    assert relative_error(a, [torch.tensor([1.0, -3.0]), torch.zeros(2)]) == pytest.approx(0.25)
    # over all outputs together: an output that is zero is judged against the others' scale
    assert relative_error(a, [a[0], torch.tensor([0.0, 1e-3])]) == pytest.approx(2.5e-4)
    assert relative_error([torch.zeros(2)], [torch.tensor([0.0, 1e-3])]) == pytest.approx(1e-3)
    nan = [torch.tensor([float("nan"), 1.0])]
    assert relative_error(nan, nan) == 0
    assert relative_error(nan, [torch.tensor([0.0, 1.0])]) == float("inf")
    assert relative_error(a, a[:1]) == float("inf")


# -- input errors ----------------------------------------------------------------------------------
class Noisy(nn.Module):
    def __init__(self, noisy):
        super().__init__()
        self.noisy = noisy
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h + torch.rand_like(h) if self.noisy else h)


def test_a_nondeterministic_model_is_refused():
    ws = WeightSpace.of(Noisy(False), (torch.randn(2, 3),), cache=False)
    with pytest.raises(ValueError, match="deterministic"):
        verify(ws, Noisy(True), (torch.randn(2, 3),))


class EvalCache(nn.Module):
    """Caches a tensor computed from its parameters in eval mode and drops it on train(),
    as timm's LeViT does with its attention biases."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)
        self.shift = nn.Parameter(torch.randn(6))
        self.cache = {}

    def train(self, mode=True):
        super().train(mode)
        if mode:
            self.cache = {}
        return self

    def offset(self):
        if self.training:
            return self.shift.exp()
        if "offset" not in self.cache:
            self.cache["offset"] = self.shift.exp()
        return self.cache["offset"]

    def forward(self, x):
        return self.b(torch.relu(self.a(x) + self.offset()))


def test_a_cache_of_the_first_calls_weights_is_not_taken_for_a_false_symmetry():
    model, x = EvalCache(), torch.randn(4, 3)
    with warnings.catch_warnings():   # export's note on the cache attribute
        warnings.simplefilter("ignore", UserWarning)
        ws = WeightSpace.of(model, (x,), cache=False)
    assert [g.size for g in ws.groups] == [6]   # the hidden neurons, shift's axis among them
    model.eval()
    model(x)   # the cache now holds the offsets of these weights
    report = verify(ws, model, (x,))
    assert report.max_rel_err["permutation"] < 1e-6
    # the check can fail here: permuted weights with the shift left in place change the outputs
    sd = ws.permute(model.state_dict(), ws.sample_permutation(torch.Generator().manual_seed(1)))
    sd["shift"] = model.state_dict()["shift"]
    ref = model.train().eval()(x)
    out = torch.func.functional_call(model.train().eval(), sd, (x,))
    assert relative_error([ref], [out]) > 1e-3


def test_a_model_of_another_architecture_is_refused():
    model, x, ws = traced("mlp_relu")
    other, y, _ = traced("small_cnn")
    with pytest.raises(ValueError, match="missing|does not have"):
        verify(ws, other, y)
    with pytest.raises(ValueError, match="n must be"):
        verify(ws, model, x, n=0)


# -- metanet convert --verify --------------------------------------------------------------------------
def test_convert_verify_prints_the_report(tmp_path, capsys):
    assert main(["convert", "--model", "mlp", "--verify", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "verify:" in out and "permutation" in out and "max relative error" in out


def test_convert_verify_fails_on_a_false_group(tmp_path, capsys, monkeypatch):
    real_of = WeightSpace.of

    def of_with_free_outputs(model, inputs, kwargs=None, *, cache=True):
        ws = real_of(model, inputs, kwargs, cache=False)
        free = list(ws.spaces.free)
        for name, structs in ws.spaces.axes.items():   # free every fixed axis of the last layer
            if name == ws.weights[-2]:
                free[structs[0][0][0]] = True
        return rebuilt(ws, free=free)

    monkeypatch.setattr(WeightSpace, "of", staticmethod(of_with_free_outputs))
    assert main(["convert", "--model", "mlp", "--verify", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "verify: FAILED: group" in err and "permutation" in err
