"""Weight-space augmentations (pure, seedable transforms of stacked checkpoints) and MixUp.

>>> ws = zoo.weight_space()
>>> t = Compose([RandomPermutation(ws, seed=0), GaussianNoise(ws, sigma=0.05)])
>>> for stack, y in transformed(zoo.batches(64, target="test_acc"), t): ...

Exact transforms (``t.exact``) keep the function of every network; approximate ones
change it a little. See :mod:`metanet.augment.transforms` and :mod:`metanet.augment.mixup`.
"""
from .mixup import MixUp
from .transforms import (Compose, RandomApply, GaussianNoise, INRInputTransform, MagnitudePrune, Quantize,
                         RandomPermutation, RandomScaling, RandomSignFlip, SirenBiasShift, Transform,
                         WeightDropout, make_generator, running_stat_keys, transformed)

EXACT = (RandomPermutation, RandomScaling, RandomSignFlip, SirenBiasShift)
APPROXIMATE = (GaussianNoise, WeightDropout, MagnitudePrune, Quantize, INRInputTransform)

__all__ = ["Transform", "Compose", "RandomApply", "RandomPermutation", "RandomScaling", "RandomSignFlip",
           "SirenBiasShift", "GaussianNoise", "WeightDropout", "MagnitudePrune", "Quantize",
           "INRInputTransform", "MixUp", "EXACT", "APPROXIMATE", "make_generator",
           "running_stat_keys", "transformed"]
