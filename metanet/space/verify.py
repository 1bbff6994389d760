"""Check behaviourally that a weight space's symmetries hold for a model.

``verify(ws, model, example_inputs)`` applies random permutations of every neuron group
(and, where the space offers them, positive scalings and sign flips) to the model's
state dict and compares the transformed model's outputs with the original's, in eval
mode, on the example inputs and on inputs of other shapes. A symmetry is a claim about
every input the model accepts, so a group that only holds at the traced shape (e.g. the
unused rows of a positional table sliced to the input length) is a failure.

Invariants:

* The model is never modified: transformed weights reach it through
  ``torch.func.functional_call``; training flags are restored afterwards.
* Relative error of one check = ``max|a - b| / max|a|``, each maximum taken over every
  output tensor together (``max|a|`` = 0 counts as 1; positions that are NaN in both
  outputs count as equal). A check passes when it is ``<= rtol``.
* With ``generator=None`` a fixed seed is used: the same call gives the same result.
* On a failure, groups are re-tested one at a time (that group transformed, identity
  elsewhere) and :class:`SymmetryError` names the group(s) that fail alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..trace.export import _default_kwargs, tensor_leaves

if TYPE_CHECKING:  # pragma: no cover
    from .weightspace import Group, WeightSpace

KINDS = ("permutation", "scaling", "sign")


class SymmetryError(AssertionError):
    """A symmetry the weight space offers does not hold for the model.

    A subclass of ``AssertionError``: ``verify`` asserts a property of the weight space,
    and test runners report it as a failed check. Attributes: ``group`` (the
    :class:`~metanet.space.weightspace.Group` that fails alone, or None when only a
    combination of groups fails), ``kind`` ("permutation", "scaling" or "sign"),
    ``rel_err``, ``shape`` (the input shapes, as text) and ``failures`` (every
    ``(group, rel_err)`` that fails alone, worst first)."""

    def __init__(self, message: str, *, group: "Group | None", kind: str, rel_err: float,
                 shape: str, failures: list[tuple["Group", float]] | None = None):
        super().__init__(message)
        self.group = group
        self.kind = kind
        self.rel_err = rel_err
        self.shape = shape
        self.failures = list(failures or [])


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` checked. ``max_rel_err`` maps each kind that the space offers
    ("permutation", "scaling", "sign") to the worst relative error seen; ``shapes`` are
    the input shapes checked (the example inputs first), ``skipped`` the default shapes
    the model itself rejects."""

    groups: int
    groups_by_kind: dict[str, int]
    checks: int
    max_rel_err: dict[str, float]
    shapes: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    rtol: float = 1e-5
    draws: int = 5

    def __str__(self) -> str:
        if not self.groups:
            return "verify: no neuron groups, nothing to check"
        lines = [f"verify: {self.groups} neuron groups hold on {len(self.shapes)} input shapes "
                 f"({'; '.join(self.shapes)}): {self.checks} transformed models compared, "
                 f"{self.draws} random draws per kind and shape"]
        for kind in KINDS:
            if kind in self.max_rel_err:
                lines.append(f"  {kind:<12s} {self.groups_by_kind[kind]:4d} groups, max relative error "
                             f"{self.max_rel_err[kind]:.1e} (rtol {self.rtol:.0e})")
            else:
                lines.append(f"  {kind:<12s} not offered")
        if self.skipped:
            more = f" and {len(self.skipped) - 4} more" if len(self.skipped) > 4 else ""
            lines.append(f"  shapes the model rejects (skipped): {'; '.join(self.skipped[:4])}{more}")
        return "\n".join(lines)


# -- inputs ------------------------------------------------------------------------------------
def _map(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map(v, fn) for v in obj)
    if isinstance(obj, list):
        return [_map(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _leaves(obj: Any) -> list[torch.Tensor]:
    acc: list[torch.Tensor] = []
    _map(obj, acc.append)
    return acc


def describe_shape(args: tuple, kwargs: Mapping[str, Any]) -> str:
    """Input shapes as text: ``(2, 6)`` or ``(2, 3, 8, 8), mask=(2, 8)``."""
    parts = [str(tuple(t.shape)) for t in _leaves(args)]
    for k, v in kwargs.items():
        parts.extend(f"{k}={tuple(t.shape)}" for t in _leaves(v))
    return ", ".join(parts) or "()"


def _resample(x: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A tensor of ``shape`` whose entries are drawn (with replacement) from ``x``'s:
    token ids stay valid ids, masks stay masks, images keep their value range."""
    flat = x.detach().reshape(-1).cpu()
    if flat.numel() == 0:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    idx = torch.randint(flat.numel(), shape, generator=gen)
    return flat[idx].to(x.device)


def _with_sizes(args: tuple, kwargs: dict, pick: Callable[[torch.Tensor], tuple[int, ...] | None],
                gen: torch.Generator) -> tuple[tuple, dict] | None:
    """Inputs where every tensor ``pick`` gives a new shape for is resampled at it."""
    changed = False

    def fn(t: torch.Tensor) -> torch.Tensor:
        nonlocal changed
        shape = pick(t)
        if shape is None or shape == tuple(t.shape):
            return t
        changed = True
        return _resample(t, shape, gen)

    out = (_map(args, fn), _map(kwargs, fn))
    return out if changed else None


def _default_variants(args: tuple, kwargs: dict, gen: torch.Generator) -> list[list[tuple[tuple, dict]]]:
    """Families of candidate inputs of other shapes; of each family the first the model
    accepts is checked. Families: another batch size; a longer and a shorter sequence
    (axis 1 of token-like and (B, T, D) inputs); a larger and a smaller spatial size
    (axes 2.. of (B, C, ...) float inputs)."""
    leaves = [t for t in _leaves((args, kwargs)) if t.dim() >= 1]
    if not leaves:
        return []
    families: list[list[tuple[tuple, dict]]] = []
    batch = int(leaves[0].shape[0])
    new_batch = batch + 1
    v = _with_sizes(args, kwargs, lambda t: (new_batch,) + tuple(t.shape[1:])
                    if t.dim() >= 1 and t.shape[0] == batch else None, gen)
    if v is not None:
        families.append([v])

    def lengths(n: int, longer: bool) -> list[int]:
        cands = [n + 1, n + 2, n + 4, 2 * n] if longer else [n - 1, n - 2, n - 4, n // 2]
        return [c for c in dict.fromkeys(cands) if c >= 1 and c != n]

    # sequences: axis 1 of token-like inputs (integer or bool, >= 2 axes) and of 3-d float
    # inputs (B, T, D), wherever it has the first one's size (a 2-d float input is features;
    # axis 1 of a 4-d float input is channels)
    seq = [t for t in leaves if (t.dim() >= 2 and not t.is_floating_point()) or
           (t.is_floating_point() and t.dim() == 3)]
    if seq:
        n = int(seq[0].shape[1])
        for longer in (True, False):
            fam = []
            for m in lengths(n, longer):
                v = _with_sizes(args, kwargs, lambda t, m=m: tuple(t.shape[:1]) + (m,) + tuple(t.shape[2:])
                                if t.dim() >= 2 and t.shape[1] == n and any(t is s for s in seq) else None, gen)
                if v is not None:
                    fam.append(v)
            families.append(fam)
    # spatial: axes 2.. of float inputs with >= 3 axes, every spatial axis moved by the same step
    img = [t for t in leaves if t.is_floating_point() and t.dim() >= 3]
    if img:
        spatial = tuple(img[0].shape[2:])
        n = min(spatial)
        for longer in (True, False):
            fam = []
            for m in lengths(n, longer):
                d = m - n
                if min(spatial) + d < 1:
                    continue
                v = _with_sizes(args, kwargs, lambda t, d=d: tuple(t.shape[:2]) + tuple(s + d for s in t.shape[2:])
                                if t.is_floating_point() and tuple(t.shape[2:]) == spatial else None, gen)
                if v is not None:
                    fam.append(v)
            families.append(fam)
    return [f for f in families if f]


def _as_call(entry: Any) -> tuple[tuple, dict | None]:
    """A user's shape entry: a tensor, a tuple of positional inputs, or ``(args, kwargs)``."""
    if isinstance(entry, torch.Tensor):
        return (entry,), None
    if isinstance(entry, list):
        entry = tuple(entry)
    if (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], (tuple, list))
            and isinstance(entry[1], dict)):
        return tuple(entry[0]), dict(entry[1])
    if isinstance(entry, tuple):
        return entry, None
    raise TypeError(f"shapes entries must be a tensor, a tuple of forward() inputs or a pair "
                    f"(args tuple, kwargs dict); got {type(entry).__name__}")


# -- comparing outputs ---------------------------------------------------------------------------
def relative_error(ref: list[torch.Tensor], out: list[torch.Tensor]) -> float:
    """max|a - b| / max|a|, both maxima over every output tensor together (so an output
    that is zero up to rounding, e.g. a mean of centred values, is judged against the
    model's scale, not its own). max|a| = 0 counts as 1; NaN in both outputs at one
    position counts as equal; a missing or reshaped output is inf."""
    if len(ref) != len(out):
        return math.inf
    diff = scale = 0.0
    for a, b in zip(ref, out):
        if a.shape != b.shape:
            return math.inf
        if a.numel() == 0:
            continue
        a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
        both_nan = torch.isnan(a) & torch.isnan(b)
        d = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
        if torch.isnan(d).any():
            return math.inf
        diff = max(diff, d.max().item())
        scale = max(scale, torch.nan_to_num(a.abs(), nan=0.0).max().item())
    return diff / (scale if scale > 0 else 1.0)


class _Runner:
    """Calls the model with a given state dict (functional_call; aliases dropped, so
    tied weights stay tied) on one set of inputs and returns its output tensors."""

    def __init__(self, ws: "WeightSpace", model: nn.Module, kwargs: dict):
        self.ws, self.model, self.kwargs = ws, model, kwargs

    def __call__(self, sd: Mapping[str, torch.Tensor], args: tuple, kwargs: dict | None) -> list[torch.Tensor]:
        params = {k: v for k, v in sd.items() if k not in self.ws.aliases}
        kw = dict(self.kwargs if kwargs is None else _default_kwargs(self.model, kwargs))
        # models that cache tensors computed from their parameters in eval mode (timm's LeViT
        # keeps its attention biases, gathered once) drop the cache on train(): without it
        # every call would reuse the first call's values, whatever state dict it is given
        self.model.train()
        self.model.eval()
        with torch.no_grad():
            out = torch.func.functional_call(self.model, params, args, kw)
        return tensor_leaves(out)


# -- transforms -------------------------------------------------------------------------------------
def _kinds(ws: "WeightSpace") -> dict[str, list["Group"]]:
    return {"permutation": list(ws.groups),
            "scaling": [g for g in ws.groups if g.scaling],
            "sign": [g for g in ws.groups if g.sign]}


def _sample(ws: "WeightSpace", kind: str, gen: torch.Generator):
    if kind == "permutation":
        return ws.sample_permutation(gen)
    return ws.sample_scaling(gen) if kind == "scaling" else ws.sample_sign_flip(gen)


def _apply(ws: "WeightSpace", sd: Mapping[str, torch.Tensor], kind: str, t) -> dict[str, torch.Tensor]:
    return ws.permute(sd, t) if kind == "permutation" else ws.scale(sd, t)


def _only(ws: "WeightSpace", kind: str, t, g: int, gen: torch.Generator):
    """``t`` restricted to group ``g`` (identity elsewhere); a fresh draw for ``g`` when
    ``t`` leaves it unchanged. None if no draw moves ``g``."""
    from .weightspace import Permutation, Scaling

    for attempt in range(8):
        if kind == "permutation":
            q = t[g] if attempt == 0 else torch.randperm(ws.groups[g].size, generator=gen)
            if torch.equal(q, torch.arange(len(q))):
                continue
            return Permutation(tuple(q if i == g else torch.arange(h.size) for i, h in enumerate(ws.groups)))
        f = t.factors.get(g) if attempt == 0 else _sample(ws, kind, gen).factors[g]
        if f is None or bool((f == 1).all()):
            continue
        return Scaling({g: f}, t.kind)
    return None


# -- the check ---------------------------------------------------------------------------------------
def verify(ws: "WeightSpace", model: nn.Module, example_inputs: Any, *, n: int = 5,
           shapes: Iterable[Any] | Callable[[tuple], Iterable[Any]] | None = None,
           rtol: float = 1e-5, generator: torch.Generator | None = None,
           kwargs: dict | None = None) -> VerifyReport:
    """Check that every symmetry ``ws`` offers keeps ``model``'s outputs.

    Args:
        ws: the weight space of ``model``'s architecture.
        model: the model (its current weights are used; it is not modified).
        example_inputs: a tensor or a tuple of forward() inputs (as for ``WeightSpace.of``).
        n: random draws of each kind (permutation; scaling and sign flip where offered)
            per input shape.
        shapes: inputs of other shapes to check as well: a list whose entries are a
            tensor, a tuple of forward() inputs, or ``(args, kwargs)``; or a callable
            taking the example inputs tuple and returning such a list. Each must be an
            input the model accepts. Default: another batch size and, for sequence and
            image inputs, a longer and a shorter length / spatial size, each where the
            model accepts it (shapes it rejects are skipped and listed in the report).
        rtol: the largest relative error (see the module docstring) that counts as equal.
        generator: random source for the draws and the inputs of other shapes
            (default: seeded with 0, so results repeat).
        kwargs: keyword arguments for forward(), as given to ``WeightSpace.of``.

    Returns a :class:`VerifyReport`. Raises :class:`SymmetryError` naming the group, the
    first tensor axis carrying it, the kind of symmetry, the relative error and the input
    shape where a symmetry does not hold; ``StateDictError`` if the model does not match
    ``ws``; ``ValueError`` if the model is not deterministic in eval mode or rejects one
    of the given ``shapes``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    elif isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"example_inputs must be a tensor or a tuple of forward() inputs, got "
                        f"{type(example_inputs).__name__}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    sd = model.state_dict()
    ws.check(sd)
    base_kwargs = _default_kwargs(model, kwargs or {})
    kinds = {k: gs for k, gs in _kinds(ws).items() if gs}
    if not ws.groups:
        return VerifyReport(0, {}, 0, {}, (), rtol=rtol, draws=n)

    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        run = _Runner(ws, model, base_kwargs)
        calls, skipped = _inputs(run, sd, example_inputs, base_kwargs, shapes, gen)
        worst = {k: 0.0 for k in kinds}
        checks = 0
        for args, kw, label in calls:
            ref = run(sd, args, kw)
            err = relative_error(ref, run(sd, args, kw))
            if err > rtol:
                raise ValueError(
                    f"the model's outputs differ between two identical calls on inputs {label} "
                    f"(relative error {err:.1e}, eval mode): verify needs a deterministic forward "
                    "(no random ops outside dropout)")
            for kind in kinds:
                for _ in range(n):
                    t = _sample(ws, kind, gen)
                    err = relative_error(ref, run(_apply(ws, sd, kind, t), args, kw))
                    checks += 1
                    worst[kind] = max(worst[kind], err)
                    if not err <= rtol:
                        _blame(ws, run, sd, ref, args, kw, label, kind, t, err, rtol, gen)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return VerifyReport(len(ws.groups), {k: len(gs) for k, gs in kinds.items()}, checks, worst,
                        tuple(label for _, _, label in calls), tuple(skipped), rtol=rtol, draws=n)


def _accepts(run: _Runner, sd, args: tuple, kwargs: dict | None) -> bool:
    try:
        run(sd, args, kwargs)
    except Exception:  # any failure means the model does not take this input
        return False
    return True


def _inputs(run: _Runner, sd, example: tuple, kwargs: dict, shapes, gen):
    """The inputs to check: (args, kwargs or None for the default, label) for the example
    and every other shape, and the labels of default shapes the model rejects."""
    calls = [(example, None, describe_shape(example, kwargs))]
    skipped: list[str] = []
    if shapes is None:
        for family in _default_variants(example, kwargs, gen):
            for args, kw in family:
                label = describe_shape(args, kw)
                if label in (c[2] for c in calls):
                    break
                if _accepts(run, sd, args, kw):
                    calls.append((args, kw, label))
                    break
                skipped.append(label)
        return calls, skipped
    entries = shapes(example) if callable(shapes) else shapes
    for entry in entries:
        args, kw = _as_call(entry)
        label = describe_shape(args, kwargs if kw is None else kw)
        try:
            run(sd, args, kw)
        except Exception as err:
            raise ValueError(f"verify: the model rejects the inputs {label} given in shapes "
                             f"({type(err).__name__}: {str(err).strip()[:200]}); pass only inputs "
                             "the model accepts") from err
        calls.append((args, kw, label))
    return calls, skipped


def _blame(ws, run, sd, ref, args, kw, label, kind, t, err, rtol, gen) -> None:
    """Re-test the groups of ``kind`` one at a time and raise :class:`SymmetryError`."""
    failures: list[tuple[Any, float]] = []
    for g in _kinds(ws)[kind]:
        e = 0.0
        for attempt in range(3):
            one = _only(ws, kind, t if attempt == 0 else _sample(ws, kind, gen), g.id, gen)
            if one is None:
                break
            e = relative_error(ref, run(_apply(ws, sd, kind, one), args, kw))
            if not e <= rtol:
                break
        if not e <= rtol:
            failures.append((g, e))
    failures.sort(key=lambda ge: -ge[1])
    what = {"permutation": "a permutation", "scaling": "a positive scaling", "sign": "a sign-flip"}[kind]
    advice = ("The weight space claims a false symmetry: do not use it for augmentation, "
              "alignment or pruning of this model. This is a bug in metanet's propagation "
              "rules; please report it with the model.")
    if not failures:
        raise SymmetryError(
            f"{what} symmetry of all {len(_kinds(ws)[kind])} groups together changes the "
            f"outputs by {err:.1e} relative (rtol {rtol:.0e}) on inputs {label}, but no group "
            f"fails alone: the groups interact. {advice}",
            group=None, kind=kind, rel_err=err, shape=label)
    g, e = failures[0]
    others = "".join(f"; group {h.id} ({h.name}) also fails alone ({x:.1e})" for h, x in failures[1:6])
    if len(failures) > 6:
        others += f"; and {len(failures) - 6} more groups"
    raise SymmetryError(
        f"group {g.id} ({g.name}, {g.size} neurons) is not {what} symmetry: transforming it "
        f"alone changes the outputs by {e:.1e} relative (rtol {rtol:.0e}) on inputs {label}"
        f"{others}. {advice}",
        group=g, kind=kind, rel_err=e, shape=label, failures=failures)
