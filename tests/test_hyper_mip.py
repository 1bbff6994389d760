"""HyperNetwork: a batch of conditioning vectors gives per-sample parameters equal to
one-at-a-time calls; MIP's encoding removes the conditioning input's magnitude."""
import pytest
import torch
from torch import nn

from metanet.hyper import HyperNetwork, mip_encode


def target():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("parametrization", ["mip", "standard"])
def test_batch_equals_one_at_a_time(parametrization):
    net = target()
    hn = HyperNetwork(net, cond_dim=2, parametrization=parametrization, hidden=(16,))
    z = torch.rand(5, 2)
    x = torch.randn(7, 4)
    params = hn(z)
    out = hn.run(z, x)
    assert out.shape == (5, 7, 3)
    for i in range(5):
        one = hn(z[i])
        for k in params:
            torch.testing.assert_close(params[k][i], one[k])
        ref = torch.func.functional_call(net, one, (x,))
        torch.testing.assert_close(out[i], ref)
    # samples differ: the conditioning is used
    assert not torch.allclose(out[0], out[1])
    # per-sample inputs
    xs = torch.randn(5, 7, 4)
    outb = hn.run(z, xs, batched_inputs=True)
    for i in range(5):
        torch.testing.assert_close(outb[i], torch.func.functional_call(net, hn(z[i]), (xs[i],)))


def test_target_untouched_and_not_a_submodule():
    net = target()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hn = HyperNetwork(net, cond_dim=1)
    assert not any(p is q for p in hn.parameters() for q in net.parameters())
    hn.run(torch.rand(3, 1), torch.randn(2, 4)).sum().backward()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is not None for p in hn.parameters())


def test_mip_starts_at_the_targets_init():
    net = target()
    hn = HyperNetwork(net, cond_dim=1, parametrization="mip")
    p = hn(torch.tensor([0.3]))
    for k, v in net.named_parameters():
        delta = (p[k] - v).norm() / v.norm()
        assert 0 < delta < 0.5, k   # theta_0 + a small correction


def test_mip_encoding_has_constant_norm():
    z = torch.rand(100, 3)
    for scale in (1e-3, 0.1, 0.5, 1.0):
        e = mip_encode(z * scale)
        torch.testing.assert_close(e.norm(dim=-1), torch.full((100,), 3 ** 0.5))


def test_mip_removes_the_inputs_magnitude_standard_does_not():
    """The paper's point: under the standard parametrization the part of the first
    layer's output that depends on z (W enc(z)) scales with |z|, and with it the
    gradients and the predictions' dependence on z; under MIP it does not. Ratio of its
    norms for z and z * 0.01."""
    net = target()
    z = torch.rand(64, 4) * 0.5 + 0.5
    ratios = {}
    for kind in ("mip", "standard"):
        torch.manual_seed(1)
        hn = HyperNetwork(net, cond_dim=4, parametrization=kind, hidden=(32,))
        first = hn.body[0]
        big = (hn.encode(z) @ first.weight.t()).norm(dim=-1)
        small = (hn.encode(z * 0.01) @ first.weight.t()).norm(dim=-1)
        ratios[kind] = (big / small).mean().item()
    assert 1 / 3 < ratios["mip"] < 3, ratios
    assert ratios["standard"] > 50, ratios   # sensitivity control: linear in |z|


def test_subset_of_modules():
    net = target()
    hn = HyperNetwork(net, cond_dim=1, modules=["2"])
    assert hn.names == ["2.weight", "2.bias"]
    out = hn.run(torch.rand(2, 1), torch.randn(3, 4))
    assert out.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="no submodule"):
        HyperNetwork(net, cond_dim=1, modules=["head"])


def test_bad_inputs_say_what_to_do():
    hn = HyperNetwork(target(), cond_dim=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        hn(torch.tensor([[2.0]]))
    with pytest.raises(ValueError, match="1 entries"):
        hn(torch.rand(2, 3))
    with pytest.raises(ValueError, match="mip"):
        HyperNetwork(target(), cond_dim=1, parametrization="hyperfan")
