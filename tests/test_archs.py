"""Smoke test for the test-architecture registry in ``tests/archs.py``."""

import pytest
import torch

try:
    from archs import ARCHS, HF_ARCHS, flatten_outputs
except ImportError:  # tests/ imported as a package
    from tests.archs import ARCHS, HF_ARCHS, flatten_outputs


def _build(name):
    if name in HF_ARCHS:
        pytest.importorskip("transformers")
    return ARCHS[name]()


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_arch_builds_deterministically(name):
    model_a, inputs_a = _build(name)
    model_b, inputs_b = _build(name)

    assert isinstance(inputs_a, tuple) and len(inputs_a) > 0
    assert all(isinstance(x, torch.Tensor) for x in inputs_a)
    assert all(x.shape[0] == 2 for x in inputs_a)
    assert not model_a.training and not model_b.training
    assert sum(p.numel() for p in model_a.parameters()) > 0

    # identical construction: same state dict and same example inputs
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    for xa, xb in zip(inputs_a, inputs_b, strict=True):
        assert torch.equal(xa, xb)

    with torch.no_grad():
        out_a = flatten_outputs(model_a(*inputs_a))
        out_b = flatten_outputs(model_b(*inputs_a))
    assert len(out_a) > 0 and len(out_a) == len(out_b)
    for ta, tb in zip(out_a, out_b):
        assert ta.shape[0] == 2
        assert torch.isfinite(ta).all()
        assert torch.equal(ta, tb)


def test_norm_buffers_are_nontrivial():
    for name in ("resnet_basic", "norms_cnn"):
        model, _ = ARCHS[name]()
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                assert not torch.all(mod.running_mean == 0)
                assert not torch.all(mod.running_var == 1)
            if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.LayerNorm,
                                torch.nn.GroupNorm, torch.nn.RMSNorm)):
                assert not torch.all(mod.weight == 1)
