"""Neuron-group propagation over an op graph.

Channel identity flows through the traced ops: a Linear ties its input's feature axis
to its weight's input axis, a residual add ties its operands, a flatten of (C, H, W)
makes C-by-(H·W) structure, a split of a fused qkv output makes a concatenation,
attention ties query and key dims and the heads of q, k and v. What each op does is
its rule in :mod:`metanet.space.rules` (a registry keyed by op name, one file per
family of ops). Ops without a rule fix every axis through them and warn once, naming
the op and its module path (sound before complete).

The result is a :class:`Spaces` record: for every axis of every state-dict entry, a
structure over *spaces* (free spaces are the neuron groups; fixed spaces are inputs,
outputs, kernel positions...), plus which groups admit positive scaling (ReLU-like)
and sign flips (odd activations).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from ..trace.graph import Const, OpGraph, OpNode, Param, Ref
from .rules import RULES, RuleError, StructArg, is_tensor
from .structure import Struct, Vars


class UnsupportedOpWarning(UserWarning):
    """An op the group propagation does not understand: axes through it are fixed."""


@dataclass
class Spaces:
    """Result of propagation, in compact picklable form.

    ``axes[name][k]`` is the structure of axis k of state-dict entry ``name``: a tuple
    of segments, each a tuple of space ids. Space ``i`` has ``sizes[i]`` elements; it
    is a neuron group iff ``free[i]``. ``neuron[i]`` says whether it indexes neurons
    (activation channels, inputs, outputs) rather than kernel positions.
    """

    axes: dict[str, list[Struct]]
    sizes: list[int]
    free: list[bool]
    neuron: list[bool]
    roles: dict[str, dict[int, str]]          # name -> axis -> "in" / "out" (edge direction)
    no_scale: dict[int, str] = field(default_factory=dict)   # space -> why no positive scaling
    no_sign: dict[int, str] = field(default_factory=dict)    # space -> why no sign flip
    scale_roles: dict[str, dict[int, str]] = field(default_factory=dict)
    role_ops: dict[str, dict[int, int]] = field(default_factory=dict)   # name -> axis -> op index
    warnings: list[str] = field(default_factory=list)


_FILLED = {"zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like", "empty_like",
           "new_zeros", "new_ones", "new_full", "new_empty", "scalar_tensor"}


def _flat(res: Any) -> list[Struct]:
    """The axis structures in a rule result (nested lists for multi-output ops)."""
    if res is None:
        return []
    if isinstance(res, tuple):
        return [res]
    return [s for r in res for s in _flat(r)]


class Propagator:
    """Runs the op rules over an op graph in topological order.

    State: ``V`` (the union-find of axis variables), ``out[i]`` (the structures of op i's
    output axes), ``p[name]`` (those of every state-dict entry), edge roles and scaling
    roles of parameter axes, and the axes where scalings or sign flips are forbidden.
    The helpers below are what rules use."""

    def __init__(self, graph: OpGraph, aliases: dict[str, str] | None = None):
        self.g = graph
        self.V = Vars()
        self.out: dict[int, Any] = {}
        self.p: dict[str, list[Struct]] = {}
        self.aliases = aliases or {}
        self.roles: dict[str, dict[int, str]] = {}
        self.role_ops: dict[str, dict[int, int]] = {}   # which op gave the role
        self.current = -1
        self.scale_roles: dict[str, dict[int, str]] = {}
        self.no_scale: list[tuple[Struct, str]] = []
        self.no_sign: list[tuple[Struct, str]] = []
        self.extra_neuron: list[Struct] = []
        self.warned: list[str] = []
        self.unknown_ops: list[tuple[str, list[int]]] = []
        self.slices: list[tuple[Any, Struct, list[Struct]]] = []   # (source, taken, skipped)
        # which ops a model input flows into (the rest are computed from parameters alone)
        self.from_input = [False] * len(graph.nodes)
        self.users: dict[int, list[int]] = {}
        for n in graph.nodes:
            self.from_input[n.index] = n.op == "input" or any(self.from_input[i] for i in n.inputs)
            for i in n.inputs:
                self.users.setdefault(i, []).append(n.index)
        for name, shape in graph.param_shapes.items():
            canon = self.aliases.get(name, name)
            if canon in self.p:
                self.p[name] = self.p[canon]
            else:
                self.p[name] = [self.V.atom(s, neuron=False) for s in shape]
                if canon != name:
                    self.p[canon] = self.p[name]

    # -- helpers for rules ------------------------------------------------------------------
    def shape(self, a: Any) -> tuple[int, ...]:
        if isinstance(a, Ref):
            s = self.g.nodes[a.index].shape
            if s is None:   # not a tensor (a symbolic size, a scalar read from a tensor)
                return ()
            if isinstance(s, list):
                raise ValueError("internal: multi-output node used as a tensor")
            return tuple(s)
        if isinstance(a, Param):
            return tuple(self.g.param_shapes[a.name])
        if isinstance(a, Const):
            return tuple(a.shape)
        if isinstance(a, StructArg):
            return a.shape_
        return ()

    def t(self, a: Any) -> list[Struct] | None:
        """Structures of the axes of a tensor argument."""
        if isinstance(a, Ref):
            return self.out.get(a.index)
        if isinstance(a, Param):
            return self.p[a.name]
        if isinstance(a, Const):
            return [self.V.fixed_struct(s) for s in a.shape]
        if isinstance(a, StructArg):
            return a.structs
        return None

    def arg(self, n: OpNode, i: int, name: str, default: Any = None) -> Any:
        if len(n.args) > i:
            return n.args[i]
        return n.kwargs.get(name, default)

    def fresh(self, shape, fixed=True) -> list[Struct]:
        return [self.V.atom(s, fixed=fixed, neuron=True) for s in shape]

    def fresh_like(self, shape, fixed=True):
        if shape is None:
            return None
        if isinstance(shape, list):
            return [self.fresh_like(s, fixed) for s in shape]
        return self.fresh(shape, fixed)

    def prod(self, *structs: Struct) -> Struct | None:
        """The row-major product of axis structures (None where one is a concatenation,
        which a product cannot hold: the caller gives up)."""
        atoms: list[int] = []
        for s in structs:
            r = self.V.resolve(s)
            if len(r) != 1:
                return None
            atoms.extend(r[0])
        return (tuple(atoms),)

    def tensor_args(self, n: OpNode) -> list[Any]:
        acc: list[Any] = []

        def walk(a):
            if is_tensor(a):
                acc.append(a)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    walk(x)
            elif isinstance(a, dict):
                for x in a.values():
                    walk(x)
        walk(n.args)
        walk(n.kwargs)
        return acc

    def is_filled(self, a: Any) -> bool:
        """A tensor made with one value everywhere (zeros, ones, full)."""
        return isinstance(a, Ref) and self.g.nodes[a.index].op in _FILLED

    def const_values(self, a: Any) -> tuple[int, ...] | None:
        """The values of a small integer constant argument (through copies), else None."""
        while isinstance(a, Ref) and self.g.nodes[a.index].op in ("lift_fresh_copy", "clone", "detach",
                                                                  "alias", "_to_copy", "contiguous"):
            a = self.g.nodes[a.index].args[0]
        return a.values if isinstance(a, Const) else None

    def output_used(self, n: OpNode, *which: int) -> bool:
        """Whether outputs ``which`` of multi-output op ``n`` are read by any op."""
        for u in self.users.get(n.index, []):
            user = self.g.nodes[u]
            if user.op != "getitem" or user.args[0] != Ref(n.index):
                return True
            if int(user.args[1]) in which and self.users.get(u):
                return True
        return False

    def sliced(self, source: Any, taken: Struct, skipped: list[Struct]) -> None:
        """A slice of ``source`` kept ``taken`` and dropped ``skipped`` (see finish)."""
        self.slices.append((source, taken, skipped))

    def role(self, a: Any, axis: int, role: str, scale_role: str | None = None) -> None:
        """Give a parameter axis its edge role ("in"/"out") and scaling role."""
        if isinstance(a, Param):
            self.roles.setdefault(a.name, {})[axis] = role
            self.role_ops.setdefault(a.name, {})[axis] = self.current
            self.scale_roles.setdefault(a.name, {})[axis] = scale_role or role

    def forbid(self, structs, why: str, scale: bool = True, sign: bool = True) -> None:
        """Groups on these axes admit no positive scaling / no sign flips."""
        for s in structs or []:
            if s is None:
                continue
            if isinstance(s, list):
                self.forbid(s, why, scale, sign)
                continue
            if scale:
                self.no_scale.append((s, why))
            if sign:
                self.no_sign.append((s, why))

    def broadcast(self, args: list[Any], out_shape) -> list[Struct]:
        """Unify the axes of broadcast operands (right-aligned) with each other."""
        out_shape = tuple(out_shape)
        res: list[Struct] = []
        structs = [(self.t(a), self.shape(a)) for a in args if is_tensor(a)]
        for k in range(1, len(out_shape) + 1):
            size = out_shape[-k]
            if size == 1:
                res.append(((),))
                continue
            cands = [st[-k] for st, sh in structs if len(sh) >= k and sh[-k] == size]
            if not cands:
                res.append(self.V.atom(size, neuron=True))
                continue
            for c in cands[1:]:
                self.V.unify(cands[0], c)
            res.append(cands[0])
        return list(reversed(res))

    def give_up(self, n: OpNode, why: str | None = None) -> Any:
        """Fix every axis into and out of ``n`` (sound) and remember why, to warn where
        it costs a weight its symmetry."""
        msg = why or (f"{n.where()}: the neuron-group propagation has no rule for this op; "
                      f"axes through it are fixed (sound, but fewer symmetries). "
                      f"metanet.space.register_rule adds one")
        structs = [s for x in self.tensor_args(n) for s in _flat(self.t(x))]
        lost = [a for s in structs for a in self.V.atoms(s) if not self.V.fixed[self.V.find(a)]]
        self.unknown_ops.append((msg, lost))
        for s in structs:
            self.V.fix(s)
        return self.fresh_like(n.shape)

    # -- main loop --------------------------------------------------------------------------
    def run(self) -> Spaces:
        for n in self.g.nodes:
            if n.op == "input":
                self.out[n.index] = self.fresh_like(n.shape)
                continue
            if n.op == "output":
                for a in n.args:
                    for s in self.t(a) or []:
                        self.V.fix(s)
                continue
            if n.shape is None:   # no tensor out (asserts, symbolic sizes and their arithmetic)
                continue
            self.current = n.index
            r = RULES.get(n.op)
            if r is None or self._data_dependent(n):
                why = None if r is None else (f"{n.where()}: a size depends on tensor values; "
                                              f"axes through it are fixed")
                self.out[n.index] = self.give_up(n, why)
                continue
            try:
                res = r.fn(self, n)
            except Exception as err:
                raise RuleError(f"the propagation rule for {n.where()} ({r.family}.{r.fn.__name__}) "
                                f"failed: {type(err).__name__}: {err}") from err
            self._check_rank(n, r, res)
            self.out[n.index] = res
            if r.symmetry in ("none", "positive", "odd"):
                ins = [self.t(a) for a in self.tensor_args(n)]
                self.forbid(ins + [res], n.where(), scale=not r.scaling_passes, sign=not r.sign_passes)
        self._fix_skipped()
        return self.finish()

    def _data_dependent(self, n: OpNode) -> bool:
        """An op with a size known only at run time (traced as -1)."""
        shapes = [n.shape] + [self.shape(a) for a in self.tensor_args(n)
                              if not (isinstance(a, Ref) and isinstance(self.g.nodes[a.index].shape, list))]

        def bad(s):
            if isinstance(s, list):
                return any(bad(x) for x in s)
            return isinstance(s, tuple) and any(x < 0 for x in s)
        return any(bad(s) for s in shapes)

    @staticmethod
    def _check_rank(n: OpNode, r, res) -> None:
        """A rule returns one structure per output axis (a rule bug otherwise)."""
        if isinstance(n.shape, tuple) and (not isinstance(res, list) or len(res) != len(n.shape)):
            got = len(res) if isinstance(res, list) else type(res).__name__
            raise RuleError(f"the propagation rule for {n.where()} ({r.family}.{r.fn.__name__}) "
                            f"returned {got} axis structures for an output of shape {n.shape}")

    def _fix_skipped(self) -> None:
        """A slice's bound may follow the input's shape (``pos[:, :L]``), and the trace
        sees one value of it: the symmetry must not depend on where the bound falls.
        So where the sliced tensor is computed from parameters alone (a table), the
        whole sliced axis is fixed, and where the part kept is positions (fixed), the
        part skipped is fixed too. Repeated until nothing changes, as fixing one slice's
        parts can fix another's kept part."""
        V = self.V
        changed = True
        while changed:
            changed = False
            for source, taken, skipped in self.slices:
                from_params = not (isinstance(source, Ref) and self.from_input[source.index])
                atoms = V.atoms(taken)
                taken_fixed = bool(atoms) and all(V.fixed[V.find(a)] for a in atoms)
                if not (from_params or taken_fixed):
                    continue
                for s in skipped + [taken]:
                    if any(not V.fixed[V.find(a)] for a in V.atoms(s)):
                        V.fix(s)
                        changed = True

    def finish(self) -> Spaces:
        V = self.V
        resolved = {name: [V.resolve(s) for s in structs] for name, structs in self.p.items()}
        # neuron spaces: those that index activation axes anywhere
        neuron_roots: set[int] = set()
        for res in self.out.values():
            self._collect(res, neuron_roots)
        for s in self.extra_neuron:
            neuron_roots.update(V.atoms(s))
        # more than two neuron axes cannot be one edge: keep the first two, fix the rest
        for name, structs in resolved.items():
            naxes = [k for k, s in enumerate(structs) if any(V.find(a) in neuron_roots for seg in s for a in seg)]
            if len(naxes) > 2:
                keep = [k for k in naxes if k in self.roles.get(name, {})][:2] or naxes[:2]
                for k in naxes:
                    if k not in keep:
                        V.fix(structs[k])
        resolved = {name: [V.resolve(s) for s in structs] for name, structs in self.p.items()}
        # warn about unknown ops only where fixing their axes cost a weight its symmetry
        param_roots = {V.find(a) for structs in resolved.values() for s in structs for seg in s for a in seg}
        for msg, lost in self.unknown_ops:
            if msg not in self.warned and any(V.find(a) in param_roots for a in lost):
                self.warned.append(msg)
                warnings.warn(msg, UnsupportedOpWarning, stacklevel=5)
        order: dict[int, int] = {}
        for name in self.g.param_shapes:
            for s in resolved[name]:
                for seg in s:
                    for a in seg:
                        order.setdefault(V.find(a), len(order))
        axes = {name: [tuple(tuple(order[V.find(a)] for a in seg) for seg in s) for s in structs]
                for name, structs in resolved.items()}
        sizes = [0] * len(order)
        free = [False] * len(order)
        neuron = [False] * len(order)
        for root, i in order.items():
            sizes[i] = V.size[root]
            free[i] = not V.fixed[root]
            neuron[i] = root in neuron_roots
        no_scale: dict[int, str] = {}
        no_sign: dict[int, str] = {}
        for lst, dst in ((self.no_scale, no_scale), (self.no_sign, no_sign)):
            for s, why in lst:
                for a in V.atoms(s):
                    r = V.find(a)
                    if r in order:
                        dst.setdefault(order[r], why)
        # a group on a parameter axis whose scaling role is unknown cannot be scaled
        for name, structs in axes.items():
            for k, s in enumerate(structs):
                if k not in self.scale_roles.get(name, {}):
                    for seg in s:
                        for a in seg:
                            no_scale.setdefault(a, f"{name} axis {k}")
                            no_sign.setdefault(a, f"{name} axis {k}")
        return Spaces(axes=axes, sizes=sizes, free=free, neuron=neuron, roles=self.roles,
                      no_scale=no_scale, no_sign=no_sign, scale_roles=self.scale_roles,
                      role_ops=self.role_ops,
                      warnings=list(self.warned))

    def _collect(self, res: Any, acc: set[int]) -> None:
        if res is None:
            return
        if isinstance(res, list):
            for r in res:
                self._collect(r, acc)
            return
        if isinstance(res, tuple):
            acc.update(self.V.atoms(res))
