"""Zoo.weight_space holds each architecture's space and compact layout (a speed change for
zoos of many architectures, where mixed batches convert every architecture anew): the
same objects on every call and in every view, as metanet's own lookup would give, and
nothing held across pickling."""
import gc
import pickle
import weakref

import torch

from metanet import WeightSpace
from zoo import Zoo
from zoo.models import create

CNN = dict(in_channels=1, padding=1, input_size=8)


def _zoo():
    recs = [{"id": str(i), "job": str(i), "arch": a, "arch_kwargs": kw}
            for i, (a, kw) in enumerate([("small_cnn", {**CNN, "dropout": 0.1}), ("mlp", dict(in_features=[1, 8, 8], hidden=[16])),
                                         ("small_cnn", {**CNN, "dropout": 0.3}), ("mlp", dict(in_features=[1, 8, 8], hidden=[12]))])]
    return Zoo(None, {}, recs)


def test_spaces_and_layouts_are_held_per_architecture():
    z = _zoo()
    ws = z.weight_space(0)
    lay = weakref.ref(ws.layout("compact"))   # held by the zoo, not by this test
    assert z.weight_space(0) is ws and z.subset([2, 3]).weight_space(0) is ws   # dropout: one space
    assert z.weight_space(1) is not ws and z.weight_space(3) is not z.weight_space(1)
    for i in range(4):   # other layouts built since, collected: this one is still the same object
        z.weight_space(i).layout("compact")
        z.weight_space(i).layout("param")
    gc.collect()
    assert lay() is not None and ws.layout("compact") is lay()
    # the space is the one metanet traces for that architecture
    m = create("mlp", in_features=[1, 8, 8], hidden=[16])
    ref = WeightSpace.of(m, m.example_input())
    assert list(z.weight_space(1).weights) == list(ref.weights)
    sd = {k: torch.randn(v.shape) for k, v in m.state_dict().items()}
    g = z.weight_space(1).graph(sd)
    assert torch.equal(g.edge_attr, ref.graph(sd).edge_attr)


def test_pickled_zoo_holds_no_spaces():
    z = _zoo()
    z.weight_space(0)
    clone = pickle.loads(pickle.dumps(z))
    assert clone._spaces == {} and len(z._spaces) == 1
    assert list(clone.weight_space(0).weights) == list(z.weight_space(0).weights)


def test_looking_up_an_architecture_draws_no_random_numbers():
    """Building and tracing a model for its space draws random numbers (initialisation,
    example input). A lookup must leave the caller's stream alone, or a seeded training
    run would start from other weights depending on whether an earlier run in the process
    had already traced (and cached) its zoo's architectures."""
    from tasks.predict_accuracy import _STRUCTURE_OF, _structure_key

    z = _zoo()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    z.weight_space(1)                                   # traced now: first time for this zoo
    _STRUCTURE_OF.clear()
    _structure_key(z, 3)                                # traced now: first time for this key
    assert torch.equal(torch.get_rng_state(), state)
