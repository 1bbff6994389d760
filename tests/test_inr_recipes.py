"""INR recipes: digits resampled for fitting, the option reaching both trainers."""
import pytest
import torch

from zoo.data import load_images
from zoo.recipes import get_recipe
from zoo.train import train_job


def test_resize_resamples_and_keeps_labels_and_range():
    small, labels, is_test = load_images("digits")
    big, labels16, is_test16 = load_images("digits", resize=16)
    assert small.shape[-2:] == (8, 8) and big.shape[-2:] == (16, 16) and len(big) == len(small)
    assert torch.equal(labels, labels16) and torch.equal(is_test, is_test16)
    assert float(big.min()) >= 0 and float(big.max()) <= 1
    # corners aligned: the four corner pixels are the originals'
    torch.testing.assert_close(big[:, :, [0, 0, -1, -1], [0, -1, 0, -1]], small[:, :, [0, 0, -1, -1], [0, -1, 0, -1]])
    assert not torch.allclose(big[:, :, 1, 1], small[:, :, 0, 0])


@pytest.mark.parametrize("size", [None, 12])
def test_digits_siren_fits_the_resampled_image(size):
    opts = {"steps": [0, 30], "views": 1} | ({} if size is None else {"image_size": size})
    job = get_recipe("digits_siren").jobs(1, seed=0, **opts)[0]
    want = 16 if size is None else size
    assert job.data_kwargs == {"resize": want}
    result = train_job(job)
    # the fit improves on the resampled image (mse is measured against it)
    assert result.metrics[-1]["mse"] < 0.5 * result.metrics[0]["mse"]
    img = load_images("digits", resize=want)[0][job.meta["image"]]
    assert img.shape[-1] == want


def test_dwsnets_init_zero_biases_small_first_layer_and_the_same_in_a_batch():
    from zoo.batched import train_batch
    from zoo.models import create

    torch.manual_seed(0)
    m = create("siren", hidden=32, n_layers=3, init="dwsnets", out_offset=0.5)
    assert all(float(layer.bias.detach().abs().max()) == 0 for layer in m.layers)
    assert float(m.layers[0].weight.detach().abs().max()) <= (6 / 2) ** 0.5 / 30
    torch.manual_seed(0)
    paper = create("siren", hidden=32, n_layers=3)
    assert float(paper.layers[0].weight.detach().abs().max()) > 0.1 and float(paper.layers[0].bias.detach().abs().max()) > 0
    with pytest.raises(ValueError, match="sitzmann"):
        create("siren", init="xavier")
    jobs = get_recipe("digits_siren").jobs(3, seed=0, steps=[0, 20], views=1, init="dwsnets")
    assert all(j.arch_kwargs["init"] == "dwsnets" and j.arch_kwargs["out_offset"] == 0.5 for j in jobs)
    for b in train_batch(jobs):
        alone = train_job(b.job)
        for k, v in alone.state_dicts[-1].items():
            torch.testing.assert_close(b.state_dicts[-1][k], v, rtol=1e-5, atol=1e-6)
        assert alone.metrics[-1]["mse"] < alone.metrics[0]["mse"]
