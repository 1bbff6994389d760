"""zoo.models: the architecture registry and the random-architecture sampler."""
import numpy as np
import pytest
import torch

import zoo
from zoo.models import sample_architecture


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_the_required_architectures():
    names = zoo.list_models()
    for required in ("mlp", "small_cnn", "conv1d", "tiny_resnet", "siren", "tiny_transformer"):
        assert required in names
    with pytest.raises(KeyError, match="unknown architecture 'nope'"):
        zoo.create("nope")


def test_small_cnn_zoo_parameter_count():
    # 1->16: 160, 16->16: 2320, 16->16: 2320, 16->10: 170
    assert n_params(zoo.create("small_cnn", in_channels=1)) == 4970
    assert n_params(zoo.create("small_cnn", in_channels=3)) == 4970 + 2 * 16 * 9
    m = zoo.create("small_cnn", in_channels=1)
    assert tuple(m(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
    # stride 2, 'valid' padding as in the Small CNN Zoo: 28 -> 13 -> 6 -> 2
    assert m.convs[0].stride == (2, 2) and m.convs[0].padding == (0, 0)


def test_mnist1d_reference_models():
    assert n_params(zoo.create("conv1d")) == 5210  # the MNIST-1D paper's CNN
    mlp = zoo.create("mlp", in_features=[1, 40], hidden=[100, 100])
    assert n_params(mlp) == 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert tuple(mlp(torch.zeros(3, 1, 40)).shape) == (3, 10)


@pytest.mark.parametrize("name", ["mlp", "cnn", "small_cnn", "conv1d", "tiny_resnet", "siren",
                                  "tiny_transformer", "modelzoo_cnn"])
def test_every_model_builds_runs_and_records_its_kwargs(name):
    m = zoo.create(name)
    out = m(m.example_input())
    assert torch.isfinite(out).all()
    assert m.arch_name == name and m.arch_kwargs == {}
    m2 = zoo.create(name, **m.arch_kwargs)
    assert [tuple(v.shape) for v in m.state_dict().values()] == \
        [tuple(v.shape) for v in m2.state_dict().values()]


def test_activation_is_a_kwarg_and_changes_the_function():
    torch.manual_seed(0)
    a = zoo.create("small_cnn", padding=1, input_size=8, activation="relu")
    b = zoo.create("small_cnn", padding=1, input_size=8, activation="tanh")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 1, 8, 8)
    assert not torch.allclose(a(x), b(x))
    with pytest.raises(KeyError, match="unknown activation"):
        zoo.create("mlp", activation="nope")


def test_siren_matches_its_formula():
    torch.manual_seed(0)
    m = zoo.create("siren", hidden=8, n_layers=3, w0=30.0, out_offset=0.5)
    x = torch.rand(5, 2) * 2 - 1
    h = torch.sin(30.0 * m.layers[0](x))
    h = torch.sin(30.0 * m.layers[1](h))
    assert torch.allclose(m(x), m.layers[2](h) + 0.5)


def test_modelzoo_cnn_matches_schuerholt_layout():
    m = zoo.create("modelzoo_cnn", in_channels=1, variant="cnn")
    assert n_params(m) == 2464
    assert list(m.state_dict())[:2] == ["module_list.0.weight", "module_list.0.bias"]
    assert tuple(m(torch.zeros(2, 1, 28, 28)).shape) == (2, 10)
    m3 = zoo.create("modelzoo_cnn", in_channels=3, variant="cnn3", dropout=0.1)
    assert tuple(m3(torch.zeros(2, 3, 32, 32)).shape) == (2, 10)


def test_sample_architecture_reproducible_and_diverse():
    draws = [sample_architecture(np.random.default_rng(i)) for i in range(40)]
    assert draws == [sample_architecture(np.random.default_rng(i)) for i in range(40)]
    families = {name for name, _ in draws}
    assert families == {"cnn", "tiny_resnet", "tiny_transformer"}
    assert len({zoo.models.arch_key(n, k) for n, k in draws}) > 30
    sizes = set()
    for name, kw in draws:
        m = zoo.create(name, **kw)
        assert tuple(m(torch.zeros(2, 1, 8, 8)).shape) == (2, 10)
        sizes.add(n_params(m))
    assert len(sizes) > 30
