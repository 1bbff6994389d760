"""WeightSpace: neuron groups (symmetries), permutations, scalings."""
from .propagate import Spaces, UnsupportedOpWarning
from .rules import RuleError, register_rule
from .verify import SymmetryError, VerifyReport
from .weightspace import Group, Permutation, Scaling, StateDictError, WeightSpace, architecture_key

__all__ = ["WeightSpace", "Group", "Permutation", "Scaling", "StateDictError", "Spaces",
           "UnsupportedOpWarning", "architecture_key", "register_rule", "RuleError",
           "SymmetryError", "VerifyReport"]
