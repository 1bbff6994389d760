"""Recipes: deterministic lists of network jobs.

``get_recipe(name).jobs(n, seed, **options)`` returns ``n`` :class:`~zoo.train.Job` s.
Job ``i`` depends only on ``(recipe, seed, i, options)`` (its random generator is
``numpy.random.default_rng([seed, i])``), so a longer list extends a shorter one and a
resumed or sharded build sees exactly the same jobs.

Hyperparameters are sampled like the Small CNN Zoo (Unterthiner et al. 2020):
optimizer in {adam, sgd, rmsprop}, learning rate log-uniform in [5e-4, 5e-2], L2
weight decay log-uniform in [1e-8, 1e-2], initialization scheme and std (log-uniform
in [1e-3, 0.5]), dropout uniform in [0, 0.7), fraction of the training data in
{0.1, 0.25, 0.5, 1.0}, activation in {relu, tanh} (plus gelu/silu for the MLPs).
Pass ``sample=False`` to train every network with the recipe's tuned reference
hyperparameters instead (only the seed varies).

Options common to all recipes:

* ``steps``     — checkpoint epochs (iterations for INR recipes), e.g. ``[0, 1, 5, 10]``;
* ``sample``    — sample hyperparameters (default) or use the reference ones;
* ``hparams``   — dict overriding individual hyperparameters of every job;
* ``data_root`` — folder holding local copies of torchvision-format datasets.

Recipes: ``digits_cnn``, ``digits_mlp``, ``mnist1d_cnn``, ``mnist1d_mlp``,
``digits_cnn_wide``, ``digits_siren``, ``shapes_siren``, ``mixed``, and ``mnist_cnn`` /
``fashion_mnist_cnn`` (Small CNN Zoo setting; need local data).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .models import sample_architecture
from .train import Job

__all__ = ["Recipe", "get_recipe", "list_recipes", "register_recipe", "sample_hparams"]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_hparams(rng: np.random.Generator, activations=("relu", "tanh")) -> dict:
    """Small-CNN-Zoo-style hyperparameters (see the module docstring)."""
    opt = str(rng.choice(["adam", "sgd", "rmsprop"]))
    hp = {
        "optimizer": opt,
        "lr": _log_uniform(rng, 5e-4, 5e-2),
        "weight_decay": _log_uniform(rng, 1e-8, 1e-2),
        "init": str(rng.choice(["normal", "truncated_normal", "xavier_uniform",
                                "xavier_normal", "kaiming_normal", "default"])),
        "init_std": _log_uniform(rng, 1e-3, 0.5),
        "dropout": float(rng.uniform(0.0, 0.7)),
        "train_fraction": float(rng.choice([0.1, 0.25, 0.5, 1.0])),
        "activation": str(rng.choice(list(activations))),
    }
    if opt == "sgd":
        hp["momentum"] = float(rng.choice([0.0, 0.9]))
    return hp


@dataclass(frozen=True)
class Recipe:
    """A named job sampler.

    ``make(index, rng, options) -> dict`` returns the job fields other than
    ``index``, ``recipe`` and ``seed``; ``defaults`` are the options' defaults.
    """

    name: str
    doc: str
    make: Callable[[int, np.random.Generator, dict], dict]
    defaults: dict = field(default_factory=dict)
    prepare: Callable[[int, int, dict], dict] | None = None  # (n, seed, options) -> extra options

    def options(self, **overrides) -> dict:
        unknown = set(overrides) - set(self.defaults) - {"steps", "sample", "hparams", "data_root"}
        if unknown:
            raise TypeError(f"recipe {self.name!r} has no option(s) {sorted(unknown)}; "
                            f"options: {sorted(set(self.defaults) | {'steps', 'sample', 'hparams', 'data_root'})}")
        opts = {"sample": True, "hparams": {}, "data_root": None, **self.defaults}
        opts.update({k: v for k, v in overrides.items() if v is not None})
        opts["steps"] = sorted({int(s) for s in opts["steps"]})
        if not opts["steps"]:
            raise ValueError("steps must name at least one checkpoint step")
        return opts

    def jobs(self, n: int, seed: int = 0, **options) -> list[Job]:
        opts = self.options(**options)
        extra = self.prepare(n, seed, opts) if self.prepare else {}
        out = []
        for i in range(n):
            rng = np.random.default_rng([seed, i])
            job_seed = int(rng.integers(0, 2 ** 31 - 1))
            fields = self.make(i, rng, {**opts, **extra})
            hp = dict(fields.pop("hparams"))
            hp.update(opts["hparams"])
            data_kwargs = fields.pop("data_kwargs", {})
            if opts["data_root"] is not None:
                data_kwargs = {**data_kwargs, "root": str(opts["data_root"])}
            out.append(Job(index=i, recipe=self.name, seed=job_seed, steps=list(opts["steps"]),
                           hparams=hp, data_kwargs=data_kwargs, **fields))
        return out


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    """Make ``recipe`` buildable by name; a name is registered once."""
    if _RECIPES.get(recipe.name, recipe) is not recipe:
        raise ValueError(f"recipe {recipe.name!r} is already registered; give yours another name")
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(list_recipes())}")
    return _RECIPES[name]


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


# --------------------------------------------------------------------- classification
def _classifier(arch: str, arch_kwargs: dict, dataset: str, reference: dict,
                activations=("relu", "tanh"), arch_hp=("activation", "dropout")):
    """make() for a fixed-architecture classifier recipe."""

    def make(i: int, rng: np.random.Generator, opts: dict) -> dict:
        if opts["sample"]:
            hp = sample_hparams(rng, activations)
            hp["batch_size"] = reference["batch_size"]
        else:
            hp = dict(reference)
        kw = dict(arch_kwargs)
        for k in arch_hp:  # architecture-level hyperparameters go to the constructor
            if k in hp:
                kw[k] = hp.pop(k)
        return dict(arch=arch, arch_kwargs=kw, task="classify", dataset=dataset, hparams=hp)

    return make


register_recipe(Recipe(
    "digits_cnn",
    "Small CNN Zoo network (3x conv 16ch 3x3 stride 2, GAP, dense; 4,970 params) on "
    "scikit-learn digits (8x8, so padding=1), Small-CNN-Zoo hyperparameters.",
    _classifier("small_cnn", dict(in_channels=1, padding=1, input_size=8), "digits",
                dict(optimizer="adam", lr=1e-2, schedule="cosine", batch_size=32,
                     activation="relu")),
    defaults={"steps": [0, 1, 2, 5, 10, 20]},
))

register_recipe(Recipe(
    "digits_mlp",
    "MLP 64-32-32-10 on scikit-learn digits, Small-CNN-Zoo hyperparameters.",
    _classifier("mlp", dict(in_features=[1, 8, 8], hidden=[32, 32]), "digits",
                dict(optimizer="adam", lr=3e-3, schedule="cosine", batch_size=32,
                     activation="relu"), activations=("relu", "tanh", "gelu", "silu")),
    defaults={"steps": [0, 1, 2, 5, 10, 20]},
))

register_recipe(Recipe(
    "mnist1d_cnn",
    "The MNIST-1D paper's CNN (3x Conv1d 25ch, 5,210 params) on locally generated "
    "MNIST-1D, Small-CNN-Zoo hyperparameters.",
    _classifier("conv1d", dict(in_channels=1, input_length=40), "mnist1d",
                dict(optimizer="adam", lr=1e-2, schedule="constant", batch_size=100,
                     activation="relu")),
    defaults={"steps": [0, 1, 5, 10, 20]},
))

register_recipe(Recipe(
    "mnist1d_mlp",
    "The MNIST-1D paper's MLP (40-100-100-10) on locally generated MNIST-1D.",
    _classifier("mlp", dict(in_features=[1, 40], hidden=[100, 100]), "mnist1d",
                dict(optimizer="adam", lr=1e-2, schedule="constant", batch_size=100,
                     activation="relu"), activations=("relu", "tanh", "gelu", "silu")),
    defaults={"steps": [0, 1, 5, 10, 20]},
))

def _digits_cnn_wide(i: int, rng: np.random.Generator, opts: dict) -> dict:
    """The digits CNN made wider and/or deeper (never its own 16 channels x 3 layers)."""
    shapes = [(c, n) for c in (16, 24, 32) for n in (3, 4) if (c, n) != (16, 3)]
    channels, n_layers = shapes[int(rng.integers(len(shapes)))]
    job = _classifier("small_cnn", dict(in_channels=1, padding=1, input_size=8, channels=channels,
                                        n_layers=n_layers), "digits",
                      dict(optimizer="adam", lr=1e-2, schedule="cosine", batch_size=32,
                           activation="relu"))(i, rng, opts)
    return job


register_recipe(Recipe(
    "digits_cnn_wide",
    "The digits CNN of recipe digits_cnn made wider and/or deeper (16, 24 or 32 channels, "
    "3 or 4 convolutions, not 16 x 3), Small-CNN-Zoo hyperparameters: architectures a "
    "metanetwork trained on digits_cnn never saw.",
    _digits_cnn_wide, defaults={"steps": [0, 1, 2, 5, 10, 20]},
))


for _ds in ("mnist", "fashion_mnist"):
    register_recipe(Recipe(
        f"{_ds}_cnn",
        f"The Small CNN Zoo setting on {_ds} (28x28, 'valid' padding); needs a local "
        f"copy (option data_root).",
        _classifier("small_cnn", dict(in_channels=1, padding=0, input_size=28), _ds,
                    dict(optimizer="adam", lr=3e-3, schedule="cosine", batch_size=32,
                         activation="relu")),
        defaults={"steps": [0, 1, 2, 3, 10, 20]},
    ))


def _mixed(i: int, rng: np.random.Generator, opts: dict) -> dict:
    name, kw = sample_architecture(rng, in_channels=1, n_classes=10, input_size=8)
    if opts["sample"]:
        hp = sample_hparams(rng)
        hp.pop("activation")
        hp.pop("dropout")
        # normalization layers and attention train poorly from arbitrary inits: keep
        # the modules' own initialization half of the time
        if rng.uniform() < 0.5:
            hp["init"] = "default"
    else:
        hp = dict(optimizer="adam", lr=3e-3, schedule="cosine")
    hp["batch_size"] = 32
    return dict(arch=name, arch_kwargs=kw, task="classify", dataset="digits", hparams=hp)


register_recipe(Recipe(
    "mixed",
    "Random architectures (DeepNets-1M-style small CNNs, ResNets and transformers from "
    "zoo.sample_architecture) on scikit-learn digits.",
    _mixed, defaults={"steps": [0, 1, 5, 10]},
))


# ----------------------------------------------------------------------------- INRs
def _inr_prepare(dataset: str):
    def prepare(n: int, seed: int, opts: dict) -> dict:
        from .data import load_images

        kwargs = {"root": opts["data_root"]} if opts["data_root"] else {}
        if dataset == "shapes":
            kwargs.update(n_train=opts["n_images"], n_test=0, size=opts["image_size"])
        _, labels, is_test = load_images(dataset, **kwargs)
        order = np.random.default_rng([seed, 2 ** 31]).permutation(len(labels))
        return {"_order": order, "_labels": labels.numpy(), "_is_test": is_test.numpy()}

    return prepare


def _inr(dataset: str):
    def make(i: int, rng: np.random.Generator, opts: dict) -> dict:
        views = int(opts["views"])
        k = i // views
        if k >= len(opts["_order"]):
            raise ValueError(f"{dataset} has {len(opts['_order'])} images: at {views} views each "
                             f"a zoo holds at most {len(opts['_order']) * views} INRs")
        image = int(opts["_order"][k])
        hp = dict(optimizer="adam", lr=float(opts["lr"]))
        if opts["sample"]:
            hp["lr"] = _log_uniform(rng, opts["lr"] / 3, opts["lr"] * 3)
        kw = dict(in_features=2, out_features=1, hidden=int(opts["hidden"]),
                  n_layers=int(opts["n_layers"]), w0=30.0)
        if opts.get("init", "sitzmann") != "sitzmann":   # DWSNets' INRs: their init, output offset 0.5
            kw.update(init=str(opts["init"]), out_offset=0.5)
        data_kwargs = {}
        if dataset == "shapes":
            data_kwargs = dict(n_train=int(opts["n_images"]), n_test=0, size=int(opts["image_size"]))
        elif opts.get("image_size") is not None:
            data_kwargs = dict(resize=int(opts["image_size"]))
        return dict(arch="siren", arch_kwargs=kw, task="inr", dataset=dataset, hparams=hp,
                    data_kwargs=data_kwargs,
                    meta={"image": image, "label": int(opts["_labels"][image]),
                          "view": i % views,
                          "split": "test" if opts["_is_test"][image] else "train"})

    return make


register_recipe(Recipe(
    "digits_siren",
    "INR zoo: one SIREN (2-32-32-1, w0 30) per scikit-learn digits image, resampled "
    "bilinearly to `image_size` pixels a side (16 by default: more pixels than the 8x8 "
    "original, whose 64 a SIREN interpolates in many ways); `init` 'dwsnets' by default "
    "(DWSNets' INRs: small first layer, zero biases, output offset 0.5: the fit, not the "
    "random start, sets the weights; with the paper's 'sitzmann' init no metanetwork "
    "here beats chance); label = the digit; `views` fits of each image from different seeds.",
    _inr("digits"), prepare=_inr_prepare("digits"),
    defaults={"steps": [0, 100, 500], "views": 2, "hidden": 32, "n_layers": 3, "lr": 1e-3,
              "image_size": 16, "init": "dwsnets"},
))

register_recipe(Recipe(
    "shapes_siren",
    "INR zoo on synthetic 16x16 shape images (10 classes): one SIREN per image, "
    "`views` fits per image; `init` as digits_siren's.",
    _inr("shapes"), prepare=_inr_prepare("shapes"),
    defaults={"steps": [0, 100, 500], "views": 2, "hidden": 32, "n_layers": 3, "lr": 1e-3,
              "n_images": 1000, "image_size": 16, "init": "dwsnets"},
))
