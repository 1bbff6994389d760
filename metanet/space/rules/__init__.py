"""Op rules for neuron-group propagation, one file per family of ops.

``RULES`` maps an op name to its :class:`Rule`; :func:`register_rule` adds one (a user's
custom op included). See :mod:`metanet.space.rules.registry` for what a rule is."""
from .registry import RULES, Rule, RuleError, StructArg, is_tensor, register_rule
from . import attention, elementwise, linear, norm, recurrent, reduce, shape  # noqa: F401  (registers)

__all__ = ["RULES", "Rule", "RuleError", "StructArg", "is_tensor", "register_rule"]
