"""Datasets for building zoos, all offline.

Built in (no files needed):

* ``digits``  — scikit-learn's 8x8 handwritten digits (1,797 images, 1 channel, 10
  classes), with a fixed stratified 80/20 train/test split (``random_state=0``).
  Pixels are scaled to [0, 1].
* ``mnist1d`` — MNIST-1D (Greydanus 2020) generated locally with
  ``mnist1d.data.make_dataset(get_dataset_args())``: 4,000 train / 1,000 test
  sequences of length 40, 10 classes.  The generated arrays are cached as ``.npz``
  under :func:`cache_dir`; nothing is downloaded (``get_dataset`` is never called).
* ``shapes``  — synthetic grayscale images of simple shapes (disk, square, triangle,
  cross, ring, horizontal bar, vertical bar, diagonal gradient, checker, blob), one
  class per shape, deterministic for a given seed.  Meant for INR zoos.

From a local copy (never downloaded at run time):

* ``mnist`` / ``fashion_mnist`` — the raw idx files (``train-images-idx3-ubyte`` ...,
  optionally ``.gz``) under ``root/MNIST/raw``, ``root/FashionMNIST/raw`` (torchvision's
  layout) or directly under ``root``.
* ``cifar10`` — the binary batches (``cifar-10-batches-bin/data_batch_1.bin`` ...) or
  the python batches (``cifar-10-batches-py/data_batch_1`` ...).  Python batches are
  pickles; they are read with a restricted unpickler that only builds plain containers
  and numpy arrays, so no code from the file can run.

A missing local copy raises :class:`DatasetNotFoundError`, whose message lists the
expected files and how to get them.

Every loader returns a :class:`Splits` of float32 inputs and int64 labels.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = [
    "Splits",
    "DatasetNotFoundError",
    "load_dataset",
    "list_datasets",
    "load_images",
    "cache_dir",
    "make_shapes",
    "read_idx",
]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that needs a local copy was not found where it was looked for."""


@dataclass(frozen=True)
class Splits:
    """A classification dataset held in memory.

    ``x_*`` are float32 tensors of shape ``[N, *input_shape]``; ``y_*`` int64 ``[N]``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:  # short: never print the tensors
        return (f"Splits({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"input_shape={self.input_shape}, n_classes={self.n_classes})")


def cache_dir() -> Path:
    """Folder for generated data: ``$METANET_CACHE`` or ``~/.cache/metanet``."""
    root = os.environ.get("METANET_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "metanet"


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- digits
def _digits_arrays() -> dict[str, np.ndarray]:
    """The digits split, cached as an .npz: importing scikit-learn takes ~0.7 s, which
    every zoo worker process would pay again.  The file name carries scikit-learn's
    version (the split is its ``train_test_split``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tag = version("scikit-learn")
    except PackageNotFoundError:
        tag = "unknown"
    path = cache_dir() / "digits" / f"digits_split0_sklearn{tag}.npz"
    names = ("x_train", "y_train", "x_test", "y_test")
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in names}
        except Exception:  # a damaged cache file is rewritten
            pass
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    idx_train.sort()
    idx_test.sort()
    arrays = {"x_train": x[idx_train], "y_train": y[idx_train], "x_test": x[idx_test], "y_test": y[idx_test]}
    try:
        _atomic_save_npz(path, **arrays)
    except OSError:  # a read-only cache folder only costs the import next time
        pass
    return arrays


@lru_cache(maxsize=None)
def _digits() -> Splits:
    a = _digits_arrays()
    t = torch.from_numpy
    return Splits("digits", t(a["x_train"]), t(a["y_train"]), t(a["x_test"]), t(a["y_test"]), 10)


# -------------------------------------------------------------------------- mnist1d
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    path = cache_dir() / "mnist1d" / "mnist1d_default_seed42.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # a damaged cache file is regenerated
            pass
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()  # make_dataset seeds numpy's global generator
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    arrays = {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
              "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}
    _atomic_save_npz(path, **arrays)
    return arrays


@lru_cache(maxsize=None)
def _mnist1d() -> Splits:
    a = _mnist1d_arrays()
    t = torch.from_numpy
    return Splits("mnist1d", t(a["x"])[:, None, :], t(a["y"]), t(a["x_test"])[:, None, :],
                  t(a["y_test"]), 10)


# --------------------------------------------------------------------------- shapes
SHAPE_CLASSES = ("disk", "square", "triangle", "cross", "ring", "hbar", "vbar",
                 "gradient", "checker", "blob")


def make_shapes(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` grayscale images ``[n, 1, size, size]`` in [0, 1] and their labels.

    Classes cycle through :data:`SHAPE_CLASSES`; position, scale and intensity are
    random (seeded).  Deterministic for given ``(n, size, seed)``.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    images = np.zeros((n, 1, size, size), np.float32)
    labels = np.arange(n, dtype=np.int64) % len(SHAPE_CLASSES)
    for i, c in enumerate(labels):
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        r = rng.uniform(0.35, 0.6)
        v = rng.uniform(0.6, 1.0)
        dx, dy = xx - cx, yy - cy
        name = SHAPE_CLASSES[c]
        if name == "disk":
            m = dx ** 2 + dy ** 2 <= r ** 2
        elif name == "square":
            m = (abs(dx) <= r * 0.8) & (abs(dy) <= r * 0.8)
        elif name == "triangle":
            m = (dy <= r * 0.7) & (dy >= -r * 0.7) & (abs(dx) <= (dy + r * 0.7) * 0.6)
        elif name == "cross":
            w = r * 0.3
            m = ((abs(dx) <= w) & (abs(dy) <= r)) | ((abs(dy) <= w) & (abs(dx) <= r))
        elif name == "ring":
            d2 = dx ** 2 + dy ** 2
            m = (d2 <= r ** 2) & (d2 >= (0.6 * r) ** 2)
        elif name == "hbar":
            m = (abs(dy) <= r * 0.3) & (abs(dx) <= r * 1.2)
        elif name == "vbar":
            m = (abs(dx) <= r * 0.3) & (abs(dy) <= r * 1.2)
        elif name == "gradient":
            a = rng.uniform(0, 2 * np.pi)
            g = (np.cos(a) * xx + np.sin(a) * yy + 1.5) / 3.0
            images[i, 0] = (v * g).astype(np.float32)
            continue
        elif name == "checker":
            k = rng.integers(2, 4)
            m = ((np.floor((xx + 1) * k) + np.floor((yy + 1) * k)) % 2) == 0
        else:  # blob: smooth bump
            images[i, 0] = (v * np.exp(-(dx ** 2 + dy ** 2) / (2 * (r * 0.5) ** 2))).astype(np.float32)
            continue
        images[i, 0] = v * m.astype(np.float32)
    return images, labels


@lru_cache(maxsize=None)
def _shapes(n_train: int = 2000, n_test: int = 500, size: int = 16, seed: int = 0) -> Splits:
    x, y = make_shapes(n_train + n_test, size=size, seed=seed)
    t = torch.from_numpy
    return Splits("shapes", t(x[:n_train]), t(y[:n_train]), t(x[n_train:]), t(y[n_train:]),
                  len(SHAPE_CLASSES))


# ---------------------------------------------------------------------- local files
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_HOW_TO_GET = {
    "mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/ (or http://yann.lecun.com/exdb/mnist/)"),
    "fashion_mnist": ("FashionMNIST",
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (MNIST's format), plain or gzip-compressed."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown idx data type 0x{code:02x}")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(dtypes[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{path}: idx file truncated or padded: header says {expected} bytes "
                         f"of data, found {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, candidates: list[Path], name: str) -> Path | None:
    for folder in candidates:
        for suffix in ("", ".gz"):
            p = folder / (name + suffix)
            if p.exists():
                return p
    return None


def _mnist_like(name: str, root: str | os.PathLike | None) -> Splits:
    folder_name, url = _HOW_TO_GET[name]
    if root is None:
        raise DatasetNotFoundError(
            f"{name} needs a local copy: pass root=... (CLI: --option data_root=DIR). "
            f"Put the four idx files ({', '.join(_MNIST_FILES)}, plain or .gz) in "
            f"DIR/{folder_name}/raw/. Get them from {url}, or on a machine with internet run "
            f"`python -c \"import torchvision; torchvision.datasets.{folder_name}('DIR', download=True)\"` "
            f"and copy DIR here.")
    root = Path(root)
    candidates = [root / folder_name / "raw", root / folder_name, root]
    paths = [_find(root, candidates, f) for f in _MNIST_FILES]
    missing = [f for f, p in zip(_MNIST_FILES, paths) if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"{name}: missing {', '.join(missing)} under {root} (looked in "
            f"{', '.join(str(c) for c in candidates)}). Put the idx files (plain or .gz) in "
            f"{root / folder_name / 'raw'}. Get them from {url}, or on a machine with internet run "
            f"`python -c \"import torchvision; torchvision.datasets.{folder_name}('{root}', download=True)\"` "
            f"and copy the folder here. Nothing is downloaded at run time.")
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    for p, a, nd in zip(paths, (xtr, ytr, xte, yte), (3, 1, 3, 1)):
        if a.ndim != nd:
            raise ValueError(f"{p}: expected a {nd}-d idx array, got shape {a.shape}")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"{name} under {root}: image and label counts differ")
    t = torch.from_numpy
    f = lambda a: t((a.astype(np.float32) / 255.0)[:, None])
    return Splits(name, f(xtr), t(ytr.astype(np.int64)), f(xte), t(yte.astype(np.int64)), 10)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR's python batches: only numpy arrays and plain containers."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: CIFAR batches may only contain numpy arrays, "
            f"lists, dicts and strings")


def _cifar10(root: str | os.PathLike | None) -> Splits:
    how = ("Get cifar-10-binary.tar.gz or cifar-10-python.tar.gz from "
           "https://www.cs.toronto.edu/~kriz/cifar.html and extract it under DIR "
           "(giving DIR/cifar-10-batches-bin/ or DIR/cifar-10-batches-py/). Nothing is "
           "downloaded at run time.")
    if root is None:
        raise DatasetNotFoundError(f"cifar10 needs a local copy: pass root=DIR. {how}")
    root = Path(root)
    binary = root / "cifar-10-batches-bin"
    python = root / "cifar-10-batches-py"
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    if all((binary / f"{n}.bin").exists() for n in train_names + ["test_batch"]):
        def read(n):
            path = binary / f"{n}.bin"
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size % 3073:
                raise ValueError(f"{path}: size {raw.size} is not a multiple of 3073 bytes")
            raw = raw.reshape(-1, 3073)
            return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)
    elif all((python / n).exists() for n in train_names + ["test_batch"]):
        def read(n):
            path = python / n
            with open(path, "rb") as f:
                try:
                    d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
                except pickle.UnpicklingError as e:
                    raise ValueError(f"{path}: {e}") from None
            d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            return x, np.asarray(d["labels"], dtype=np.int64)
    else:
        raise DatasetNotFoundError(
            f"cifar10: neither {binary} nor {python} holds data_batch_1..5 and test_batch. {how}")
    parts = [read(n) for n in train_names]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = read("test_batch")
    t = torch.from_numpy
    f = lambda a: t(a.astype(np.float32) / 255.0)
    return Splits("cifar10", f(xtr), t(ytr), f(xte), t(yte), 10)


# ------------------------------------------------------------------------- registry
_LOADERS: dict[str, Callable[..., Splits]] = {
    "digits": lambda root=None: _digits(),
    "mnist1d": lambda root=None: _mnist1d(),
    "shapes": lambda root=None, **kw: _shapes(**kw),
    "mnist": lambda root=None: _mnist_like("mnist", root),
    "fashion_mnist": lambda root=None: _mnist_like("fashion_mnist", root),
    "cifar10": lambda root=None: _cifar10(root),
}


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> Splits:
    """Load a dataset by name (see the module docstring)."""
    if name not in _LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _LOADERS[name](root=root, **kwargs)


def load_images(name: str, root: str | os.PathLike | None = None, resize: int | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All images of an image dataset for INR fitting.

    Returns ``(images [N, C, H, W] in [0, 1], labels [N], is_test [N] bool)`` with the
    training images first. ``resize``: bilinear resampling to ``resize x resize`` pixels
    (corners aligned), e.g. the 8x8 digits at 28x28 so that an INR has more pixels
    than weights to fit.
    """
    s = load_dataset(name, root=root, **kwargs)
    if s.x_train.dim() != 4:
        raise ValueError(f"dataset {name!r} does not hold images (input shape {s.input_shape})")
    images = torch.cat([s.x_train, s.x_test])
    if resize is not None and tuple(images.shape[-2:]) != (resize, resize):
        images = torch.nn.functional.interpolate(images, size=(int(resize), int(resize)), mode="bilinear",
                                                 align_corners=True).clamp(0, 1)
    labels = torch.cat([s.y_train, s.y_test])
    is_test = torch.cat([torch.zeros(len(s.y_train), dtype=torch.bool),
                         torch.ones(len(s.y_test), dtype=torch.bool)])
    return images, labels, is_test
