"""Metanetworks refuse sizes that cannot build, naming the argument, instead of failing
deep inside a layer with a torch message."""
import pytest

from metanet.nn import GMN, NGT


@pytest.mark.parametrize("cls", [GMN, NGT])
@pytest.mark.parametrize("kwargs, says", [({"hidden": -1}, "hidden must be an integer >= 1"),
                                          ({"hidden": 0}, "hidden must be an integer >= 1"),
                                          ({"in_width": 2.5}, "in_width must be an integer >= 1"),
                                          ({"out_dim": 0}, "out_dim must be an integer >= 1"),
                                          ({"layers": -1}, "layers must be an integer >= 0")])
def test_bad_sizes_are_named(cls, kwargs, says):
    with pytest.raises(ValueError, match=f"{cls.__name__}: {says}"):
        cls(**kwargs)


def test_good_sizes_build():
    assert GMN(hidden=8, layers=0).layers is not None   # no message passing: encoder and readout only
    assert NGT(hidden=8, heads=2, layers=1, readout_bins=0) is not None
