"""Structured pruning driven by neuron groups (see :mod:`metanet.prune.core`).

>>> from metanet.prune import prune
>>> result = prune(model, example_inputs, "magnitude", ratio=0.5)
>>> result.model, result.before, result.after
"""
from .core import (ALLOCATIONS, CRITERIA, Counts, PruneResult, check_keep, count, count_flops, count_params,
                   group_norms, keep_global, keep_top, load, measure_latencies, measure_latency, prunable_groups, prune,
                   prune_model, save, scores_for)
from .hf import ConfigWarning
from .modules import RESIZERS, PruneError, ResizeContext, Resizer, register_resizer

__all__ = ["prune", "prune_model", "prunable_groups",
           "PruneResult", "PruneError", "Counts", "CRITERIA", "ALLOCATIONS", "scores_for",
           "group_norms", "keep_top", "keep_global", "check_keep", "count", "count_params", "count_flops",
           "measure_latency", "measure_latencies", "save", "load", "register_resizer", "Resizer", "ResizeContext",
           "RESIZERS", "ConfigWarning"]
