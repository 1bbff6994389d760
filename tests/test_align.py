"""metanet.space.align: weight matching recovers known permutations on every kind of
space (products, concatenations, residual streams), batched alignment, activation
matching, `metanet align`, and a lower loss barrier between independently trained
networks after alignment."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from archs import ARCHS
from metanet.cli import main
from metanet.space import Permutation, WeightSpace
from metanet.space.align import align, align_stack, loss_barrier

RECOVER = ["mlp_relu", "small_cnn", "cnn_flatten", "resnet_basic", "resnet_bottleneck",
           "transformer_encoder", "gpt", "convnext", "swin", "res2net_eca"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def space(name):
    model, x = ARCHS[name]()
    return model, x, WeightSpace.of(model, x), model.state_dict()


def assert_same_perm(p: Permutation, q: Permutation):
    assert len(p) == len(q)
    for a, b in zip(p.perms, q.perms):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", RECOVER)
def test_recovers_a_known_permutation(name):
    _, _, ws, sd = space(name)
    p = ws.sample_permutation(torch.Generator().manual_seed(1))
    assert any(not torch.equal(t, torch.arange(len(t))) for t in p.perms)
    sd_b = ws.permute(sd, p)
    found = ws.align(sd, sd_b)
    assert_same_perm(found, p.inverse())           # maps b back onto a ...
    back = ws.permute(sd_b, found)
    for k in ws.weights:                           # ... bit for bit
        torch.testing.assert_close(back[k], sd[k], rtol=0, atol=0)
    assert_same_perm(ws.align(sd, sd), ws.identity_permutation())


def test_heads_are_matched_as_heads():
    """GPT's qkv axis is (heads x qk-dims) ++ (heads x qk-dims) ++ (heads x v-dims): a
    permutation that only swaps heads is recovered as a head swap, dims untouched."""
    _, _, ws, sd = space("gpt")
    heads = [g for g in ws.groups if "c_attn" in g.name and g.size == 2]
    assert heads
    p = list(ws.identity_permutation().perms)
    p[heads[0].id] = torch.tensor([1, 0])
    found = ws.align(sd, ws.permute(sd, Permutation(tuple(p))))
    assert_same_perm(found, Permutation(tuple(p)).inverse())


def test_batched_alignment_to_one_reference():
    _, _, ws, sd = space("small_cnn")
    perms = [ws.sample_permutation(torch.Generator().manual_seed(s)) for s in range(4)]
    stack = {k: torch.stack([ws.permute(sd, p)[k] for p in perms]) for k in sd}
    found = align(ws, sd, stack, batched=True)
    assert found.batch_size == 4
    assert_same_perm(found, Permutation.stack([p.inverse() for p in perms]))
    aligned = align_stack(ws, stack, sd)
    for k in ws.weights:
        torch.testing.assert_close(aligned[k], sd[k].expand_as(aligned[k]), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mlp_relu", "small_cnn", "resnet_basic"])
def test_activation_matching(name):
    model, x, ws, sd = space(name)
    p = ws.sample_permutation(torch.Generator().manual_seed(2))
    inputs = torch.randn(64, *x[0].shape[1:])
    found = ws.align(sd, ws.permute(sd, p), method="activations", model=model, inputs=inputs)
    assert_same_perm(found, p.inverse())


def test_clear_errors():
    model, x, ws, sd = space("mlp_relu")
    with pytest.raises(ValueError, match="'weights' or 'activations'"):
        ws.align(sd, sd, method="cosine")
    with pytest.raises(ValueError, match="needs model="):
        ws.align(sd, sd, method="activations")
    with pytest.raises(TypeError, match="model.state_dict"):
        ws.align(sd, model)
    with pytest.raises(Exception, match="missing"):
        ws.align(sd, {k: v for k, v in list(sd.items())[1:]})


def test_cli_align(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from zoo.models import create

    m = create("small_cnn")
    ws = WeightSpace.of(m, m.example_input())
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    p = ws.sample_permutation(torch.Generator().manual_seed(0))
    save_file(sd, str(tmp_path / "a.safetensors"))
    torch.save(ws.permute(sd, p), str(tmp_path / "b.pt"))
    rc = main(["align", str(tmp_path / "a.safetensors"), str(tmp_path / "b.pt"), "--model", "small_cnn",
               "--out", str(tmp_path / "c.safetensors")])
    assert rc == 0
    c = load_file(str(tmp_path / "c.safetensors"))
    for k in ws.weights:
        torch.testing.assert_close(c[k], sd[k], rtol=0, atol=0)
    assert "-> 0" in capsys.readouterr().out
    rc = main(["align", str(tmp_path / "a.safetensors"), str(tmp_path / "nope.pt"), "--model", "small_cnn",
               "--out", str(tmp_path / "d.pt")])
    assert rc == 2 and "no such checkpoint" in capsys.readouterr().err
    # files that are not what they say: a clear line and exit code 2, never a traceback
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    torch.save({"step": 3}, str(tmp_path / "nostate.pt"))
    torch.save({"net": torch.nn.Linear(2, 2)}, str(tmp_path / "pickled.pt"))   # needs full pickle
    for name, says in (("junk.safetensors", "unreadable safetensors"), ("nostate.pt", "holds no state dict"),
                       ("pickled.pt", "refusing to load")):
        rc = main(["align", str(tmp_path / "a.safetensors"), str(tmp_path / name), "--model", "small_cnn",
                   "--out", str(tmp_path / "e.pt")])
        assert rc == 2 and says in capsys.readouterr().err, name
    assert not (tmp_path / "e.pt").exists()


# -- loss barriers between independently trained networks ------------------------------------------
def train(model, data, steps, seed, lr):
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.y_train), (256,), generator=g)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def barrier(model, ws, a, b, data, n=9) -> float:
    """max over λ of loss(λ a + (1-λ) b) minus the straight line between the end losses,
    BatchNorm statistics recomputed at every point (interpolated ones are wrong)."""
    return loss_barrier(ws, model, a, b, data.x_test, data.y_test, calib=data.x_train, n=n)


@pytest.mark.parametrize("arch,kwargs,steps,methods", [
    ("small_cnn", {"padding": 1, "input_size": 8}, 300, ("weights",)),
    # ~60 s on a shared 2-core CPU: the default run has the CNN; benchmarks/augment.py reports both
    pytest.param("tiny_resnet", {"width": 16, "blocks": (1, 1)}, 150, ("weights", "activations"),
                 marks=pytest.mark.slow),
])
def test_alignment_lowers_the_loss_barrier(arch, kwargs, steps, methods, capsys):
    from zoo.data import load_dataset
    from zoo.models import create

    data = load_dataset("digits")
    model = create(arch, **kwargs)
    ws = WeightSpace.of(model, model.example_input())
    a = train(model, data, steps, seed=1, lr=1e-2)
    b = train(model, data, steps, seed=2, lr=1e-2)
    before = barrier(model, ws, a, b, data)
    # a network and itself: the line is flat (no barrier)
    assert abs(barrier(model, ws, a, a, data)) < 1e-6 and before > 1e-3
    model.load_state_dict(a)
    for method in methods:
        extra = dict(model=model, inputs=data.x_train[:512]) if method == "activations" else {}
        b_aligned = ws.permute(b, ws.align(a, b, method=method, **extra))
        after = barrier(model, ws, a, b_aligned, data)
        with capsys.disabled():
            print(f"\n{arch}: loss barrier {before:.4f} before alignment, {after:.4f} after ({method})")
        assert after < before
