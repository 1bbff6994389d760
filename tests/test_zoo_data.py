"""zoo.data: offline datasets and the readers of torchvision-format files."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from zoo import data


def test_digits_fixed_split(tmp_path, monkeypatch):
    monkeypatch.setenv("METANET_CACHE", str(tmp_path))
    data._digits.cache_clear()
    s = data.load_dataset("digits")
    assert s.x_train.shape[1:] == (1, 8, 8) and s.x_train.dtype == torch.float32
    assert len(s.y_train) + len(s.y_test) == 1797 and len(s.y_test) == 360
    assert 0.0 <= float(s.x_train.min()) and float(s.x_train.max()) <= 1.0
    # stratified: every class in the test split
    assert set(s.y_test.tolist()) == set(range(10))
    # fixed: a second load (cache cleared) gives the same split
    data._digits.cache_clear()
    s2 = data.load_dataset("digits")
    assert torch.equal(s.x_test, s2.x_test) and torch.equal(s.y_train, s2.y_train)
    # the split is cached (workers then skip importing scikit-learn); a damaged cache
    # file is rebuilt from scikit-learn, not trusted, and gives the same split
    (cached,) = (tmp_path / "digits").glob("digits_split0_sklearn*.npz")
    from_cache = {k: v.copy() for k, v in data._digits_arrays().items()}
    cached.write_bytes(b"garbage")
    again = data._digits_arrays()
    assert all(np.array_equal(from_cache[k], again[k]) for k in from_cache)
    assert torch.equal(torch.from_numpy(again["x_train"]), s.x_train)
    assert np.load(cached)["y_test"].shape == (360,)
    data._digits.cache_clear()


def test_mnist1d_generated_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("METANET_CACHE", str(tmp_path))
    state = np.random.get_state()
    a = data._mnist1d_arrays()
    # make_dataset seeds numpy's global generator: we restore it
    assert np.array_equal(np.random.get_state()[1], state[1])
    cached = tmp_path / "mnist1d" / "mnist1d_default_seed42.npz"
    assert cached.exists()
    assert a["x"].shape == (4000, 40) and a["x_test"].shape == (1000, 40)
    assert set(np.unique(a["y"])) == set(range(10))
    b = data._mnist1d_arrays()  # read back from the cache
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # a damaged cache file is regenerated, not trusted
    cached.write_bytes(b"garbage")
    c = data._mnist1d_arrays()
    assert np.array_equal(a["x"], c["x"])


def test_shapes_deterministic_and_labelled():
    x1, y1 = data.make_shapes(30, size=16, seed=3)
    x2, y2 = data.make_shapes(30, size=16, seed=3)
    x3, _ = data.make_shapes(30, size=16, seed=4)
    assert x1.shape == (30, 1, 16, 16) and np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert set(y1.tolist()) == set(range(10))
    assert all(x1[i].max() > 0 for i in range(30))  # no empty image


def _write_idx(path, arr, gz=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def test_mnist_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ytr = np.array([0, 1, 2, 3, 4], np.uint8)
    xte = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    yte = np.array([5, 6, 7], np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", xtr, gz=True)
    _write_idx(raw / "train-labels-idx1-ubyte", ytr)
    _write_idx(raw / "t10k-images-idx3-ubyte", xte)
    _write_idx(raw / "t10k-labels-idx1-ubyte", yte, gz=True)
    s = data.load_dataset("mnist", root=tmp_path)
    assert s.x_train.shape == (5, 1, 28, 28)
    assert torch.allclose(s.x_train[:, 0] * 255, torch.from_numpy(xtr).float())
    assert s.y_test.tolist() == [5, 6, 7]
    # a truncated file is an error naming it
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + b"\x01")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*truncated"):
        data.load_dataset("mnist", root=tmp_path)


def test_missing_local_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as e:
        data.load_dataset("fashion_mnist", root=tmp_path)
    msg = str(e.value)
    assert "FashionMNIST/raw" in msg and "train-images-idx3-ubyte" in msg and "download=True" in msg
    with pytest.raises(data.DatasetNotFoundError, match="root"):
        data.load_dataset("mnist")
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-bin.*cifar-10-batches-py|cifar.html"):
        data.load_dataset("cifar10", root=tmp_path)


def test_cifar10_binary_and_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    binary = tmp_path / "bin" / "cifar-10-batches-bin"
    python = tmp_path / "py" / "cifar-10-batches-py"
    binary.mkdir(parents=True)
    python.mkdir(parents=True)
    expected = {}
    for j, n in enumerate(names):
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        y = [j % 10, (j + 1) % 10]
        expected[n] = (x, y)
        recs = np.concatenate([np.array(y, np.uint8)[:, None], x], axis=1)
        (binary / f"{n}.bin").write_bytes(recs.tobytes())
        with open(python / n, "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": b"x"}, f)
    for root in (tmp_path / "bin", tmp_path / "py"):
        s = data.load_dataset("cifar10", root=root)
        assert s.x_train.shape == (10, 3, 32, 32) and s.x_test.shape == (2, 3, 32, 32)
        assert s.y_test.tolist() == expected["test_batch"][1]
        assert torch.allclose(s.x_test.reshape(2, -1) * 255,
                              torch.from_numpy(expected["test_batch"][0]).float())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_python_batches_refuse_code(tmp_path):
    python = tmp_path / "cifar-10-batches-py"
    python.mkdir()
    for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(python / n, "wb") as f:
            pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        data.load_dataset("cifar10", root=tmp_path)


def test_load_images_for_inrs():
    images, labels, is_test = data.load_images("digits")
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    assert int(is_test.sum()) == 360
    with pytest.raises(ValueError, match="does not hold images"):
        data.load_images("mnist1d")
