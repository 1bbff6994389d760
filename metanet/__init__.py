"""metanet: learning in weight space.

>>> ws = metanet.WeightSpace.of(model, example_inputs)
>>> g = ws.graph(model.state_dict())          # neuron-level parameter graph (PyG Data)
>>> sd = ws.state_dict(g)                      # exact inverse
>>> p = ws.sample_permutation(); ws.permute(sd, p)
"""
from .space import (Group, Permutation, RuleError, Scaling, StateDictError, SymmetryError, UnsupportedOpWarning,
                    WeightSpace, register_rule)
from .trace import OpGraph, TraceError, trace

__version__ = "0.1.0"
__all__ = ["WeightSpace", "Permutation", "Scaling", "Group", "StateDictError", "TraceError",
           "UnsupportedOpWarning", "OpGraph", "trace", "SymmetryError", "RuleError",
           "register_rule"]
