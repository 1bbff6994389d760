"""The op-rule registry: one entry per ATen op (or custom op), each saying how neuron
groups pass through the op and how positive scalings and sign flips pass.

A rule is a function ``rule(P, n) -> structures`` where ``P`` is the running
:class:`~metanet.space.propagate.Propagator` (its helpers: ``P.t(arg)`` the axis
structures of an argument, ``P.shape(arg)``, ``P.V`` the union-find of axis variables,
``P.role``, ``P.forbid``, ``P.give_up``) and ``n`` the :class:`~metanet.trace.OpNode`.
It returns the structures of the op's output axes (a list of structures; a list of
those for multi-output ops).

``symmetry`` says what the op does to per-channel factors, so that everything about an
op sits in its registration:

- ``"linear"``: the op commutes with per-channel positive scaling and sign flips on
  every axis (views, dropout, concatenation, average pooling, negation). The rule may
  still forbid some axes itself (a sum over channels, for instance).
- ``"positive"``: positively homogeneous (ReLU, max pooling): scalings pass, sign flips
  do not.
- ``"odd"``: odd functions (tanh, sin): sign flips pass, scalings do not.
- ``"none"`` (the default): neither passes, on any input or output axis.
- ``"custom"``: the rule decides, by calling ``P.forbid`` itself (linear layers,
  convolutions, additions and products, which also give parameters their roles).

A rule must be sound: where it cannot prove that an axis may be permuted, it fixes it
(``P.V.fix``) or gives the op up (``P.give_up(n, why)``), never guesses. An exception
inside a rule is a bug in the rule and surfaces as :class:`RuleError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ...trace.graph import Const, Param, Ref

SYMMETRIES = ("linear", "positive", "odd", "none", "custom")


class RuleError(RuntimeError):
    """An op rule raised: a bug in the rule, reported with the op and where it sits."""


@dataclass(frozen=True)
class Rule:
    op: str
    fn: Callable[[Any, Any], Any]
    symmetry: str
    family: str

    @property
    def scaling_passes(self) -> bool:
        return self.symmetry in ("linear", "positive", "custom")

    @property
    def sign_passes(self) -> bool:
        return self.symmetry in ("linear", "odd", "custom")


RULES: dict[str, Rule] = {}


def register_rule(op: str | tuple[str, ...], fn: Callable | None = None, *, symmetry: str = "none",
                  replace: bool = False):
    """Register ``fn`` as the propagation rule for ``op`` (an ATen op name such as
    ``"conv2d"``, or ``"namespace.name"`` for a custom op such as ``"mylib.fused_mlp"``).

    Usable as a decorator: ``@register_rule("mylib.fused_mlp", symmetry="none")``.
    Registering an op twice raises unless ``replace=True``.
    """
    if symmetry not in SYMMETRIES:
        raise ValueError(f"symmetry must be one of {SYMMETRIES}, got {symmetry!r}")
    ops = (op,) if isinstance(op, str) else tuple(op)

    def deco(f: Callable) -> Callable:
        family = getattr(f, "__module__", "") or ""
        for name in ops:
            if name in RULES and not replace:
                raise ValueError(f"a rule for {name!r} is already registered "
                                 f"({RULES[name].family}); pass replace=True to override it")
            RULES[name] = Rule(name, f, symmetry, family.rsplit(".", 1)[-1])
        return f

    return deco(fn) if fn is not None else deco


rule = register_rule  # the short name used inside the rule files


class StructArg:
    """A pseudo-argument carrying axis structures (to broadcast against)."""

    def __init__(self, structs, shape):
        self.structs, self.shape_ = structs, tuple(shape)


def is_tensor(a: Any) -> bool:
    return isinstance(a, (Ref, Param, Const, StructArg))
