"""Axis structures: what a permutation of neurons may do along one tensor axis.

Every axis of every tensor in a traced model gets a *structure*: a concatenation of
segments, each segment a row-major product of *atoms*, each atom a variable with a
size. Variables live in a union-find; unifying two axes says "these must be permuted
together". A variable is either free (its positions may be permuted) or fixed. A free
variable may later be *bound* to a finer structure, e.g. when a Linear's output axis is
split into heads: ``(v,)`` becomes ``(h, d)``.

Examples, for an axis of size 12:
  ((a,),)               one free group a of 12 neurons
  ((h, d),)             4 heads x 3 dims: heads permute, dims permute (same map in every head)
  ((a,), (b,))          concatenation: a on [0, 5), b on [5, 12); each permutes in its block
  ((c, s),)             flatten of channels c and fixed spatial positions s

Size-1 atoms are dropped (a size-1 axis has only the trivial permutation); a segment
with no atoms has size 1.
"""
from __future__ import annotations

from math import prod

import torch

Struct = tuple  # tuple[tuple[int, ...], ...]


class Vars:
    """Union-find over axis variables with optional structural bindings."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.neuron: list[bool] = []   # linked to an activation axis (a neuron axis)
        self.binding: dict[int, Struct] = {}

    # -- variables ---------------------------------------------------------------
    def new(self, size: int, fixed: bool = False, neuron: bool = False) -> int:
        v = len(self.parent)
        self.parent.append(v)
        self.size.append(int(size))
        self.fixed.append(bool(fixed))
        self.neuron.append(bool(neuron))
        return v

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def atom(self, size: int, fixed: bool = False, neuron: bool = False) -> Struct:
        """A fresh one-atom structure (size 1 gives the empty structure)."""
        if size == 1:
            return ((),)
        return ((self.new(size, fixed, neuron),),)

    def fixed_struct(self, size: int, neuron: bool = True) -> Struct:
        return self.atom(size, fixed=True, neuron=neuron)

    # -- structures ---------------------------------------------------------------
    def resolve(self, s: Struct) -> Struct:
        """Normal form: roots only, bindings expanded, size-1 atoms dropped."""
        segs: list[tuple[int, ...]] = []
        for seg in s:
            segs.extend(self._resolve_seg(tuple(seg)))
        return tuple(segs)

    def _resolve_seg(self, seg: tuple[int, ...]) -> list[tuple[int, ...]]:
        atoms: list[int] = []
        for i, v in enumerate(seg):
            r = self.find(v)
            if self.size[r] == 1:
                continue
            if r in self.binding:
                sub = self.resolve(self.binding[r])
                if len(sub) == 1:
                    atoms.extend(sub[0])
                    continue
                if not atoms:
                    # a concatenation leading a row-major product distributes over it:
                    # (A ⊕ B) × D = (A × D) ⊕ (B × D), e.g. the heads of a fused qkv
                    # output cut into query heads and one key and one value head
                    out: list[tuple[int, ...]] = []
                    for sub_seg in sub:
                        out.extend(self._resolve_seg(tuple(sub_seg) + tuple(seg[i + 1:])))
                    return out
                # a concatenation inside a product cannot be written in this normal
                # form: give up the symmetry of its parts (sound) and keep r opaque
                self._fix_resolved(sub)
                del self.binding[r]
                self.fixed[r] = True
            atoms.append(r)
        return [tuple(atoms)]

    def seg_size(self, seg: tuple[int, ...]) -> int:
        return prod(self.size[self.find(v)] for v in seg) if seg else 1

    def struct_size(self, s: Struct) -> int:
        return sum(self.seg_size(seg) for seg in s)

    def atoms(self, s: Struct) -> list[int]:
        return [a for seg in self.resolve(s) for a in seg]

    def fix(self, s: Struct) -> None:
        self._fix_resolved(self.resolve(s))

    def _fix_resolved(self, s: Struct) -> None:
        for seg in s:
            for a in seg:
                self.fixed[self.find(a)] = True

    def mark_neuron(self, s: Struct) -> None:
        for a in self.atoms(s):
            self.neuron[self.find(a)] = True

    def is_free(self, v: int) -> bool:
        return not self.fixed[self.find(v)]

    # -- unification ----------------------------------------------------------------
    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.size[a] != self.size[b]:
            raise ValueError(f"internal: unifying atoms of sizes {self.size[a]} and {self.size[b]}")
        self.parent[b] = a
        self.fixed[a] = self.fixed[a] or self.fixed[b]
        self.neuron[a] = self.neuron[a] or self.neuron[b]
        return a

    def unify(self, s1: Struct, s2: Struct) -> None:
        """Make two axes permute together (or fix both where that cannot be expressed)."""
        s1, s2 = self.resolve(s1), self.resolve(s2)
        if s1 == s2:
            return
        n1, n2 = self.struct_size(s1), self.struct_size(s2)
        if n1 != n2:
            raise ValueError(f"internal: unifying axes of sizes {n1} and {n2}")
        if self._single(s1) is not None:
            self._bind(self._single(s1), s2)
        elif self._single(s2) is not None:
            self._bind(self._single(s2), s1)
        elif len(s1) == len(s2) and all(self.seg_size(a) == self.seg_size(b) for a, b in zip(s1, s2)):
            for a, b in zip(s1, s2):
                self._unify_products(a, b)
        elif len(s1) == 1 and len(s2) == 1:
            self._unify_products(s1[0], s2[0])
        else:
            self._fix_resolved(s1)
            self._fix_resolved(s2)

    def _single(self, s: Struct) -> int | None:
        if len(s) == 1 and len(s[0]) == 1:
            return s[0][0]
        return None

    def _bind(self, a: int, s: Struct) -> None:
        """Unify atom ``a`` (a root) with structure ``s`` (resolved)."""
        b = self._single(s)
        if b is not None:
            self.union(a, b)
            return
        if sum(1 for seg in s for _ in seg) == 0:
            if len(s) > 1:
                # positions of different origin side by side (a concatenation of
                # single channels, each from its own op): none may move
                self.fixed[a] = True
            return
        if self.fixed[a]:
            self._fix_resolved(s)
            return
        if a in self.atoms(s):  # cannot happen with matching sizes, but never loop
            self._fix_resolved(s)
            return
        if self.neuron[a]:
            for seg in s:
                for v in seg:
                    self.neuron[self.find(v)] = True
        self.binding[a] = s

    def _unify_products(self, p1: tuple[int, ...], p2: tuple[int, ...]) -> None:
        """Unify two row-major products of equal size, block by block where the
        cumulative sizes agree."""
        i = j = 0
        while i < len(p1) or j < len(p2):
            block1, block2 = [p1[i]] if i < len(p1) else [], [p2[j]] if j < len(p2) else []
            i, j = i + len(block1), j + len(block2)
            n1 = prod(self.size[self.find(v)] for v in block1)
            n2 = prod(self.size[self.find(v)] for v in block2)
            while n1 != n2:
                if n1 < n2 and i < len(p1):
                    block1.append(p1[i]); n1 *= self.size[self.find(p1[i])]; i += 1
                elif n2 < n1 and j < len(p2):
                    block2.append(p2[j]); n2 *= self.size[self.find(p2[j])]; j += 1
                else:
                    raise ValueError("internal: products of different sizes")
            if len(block1) == 1:
                self._bind(self.find(block1[0]), (tuple(block2),))
            elif len(block2) == 1:
                self._bind(self.find(block2[0]), (tuple(block1),))
            else:
                self._fix_resolved((tuple(block1), tuple(block2)))

    # -- splitting and merging axes ---------------------------------------------------
    def product(self, structs: list[Struct]) -> Struct:
        """The structure of the merge (flatten) of consecutive axes.

        A concatenation distributes when it leads: (A ⊕ B) × X = (A × X) ⊕ (B × X). A
        concatenation of fixed atoms only is one fixed block wherever it stands. Any
        other concatenation inside a product cannot be written as a concatenation of
        products: the merged axes are fixed (sound)."""
        result: list[tuple[int, ...]] = [()]
        for s in structs:
            s = self.resolve(s)
            if len(s) == 1:
                result = [r + s[0] for r in result]
            elif result == [()]:
                result = list(s)
            elif all(self.fixed[a] for seg in s for a in seg):
                block = self.new(self.struct_size(s), fixed=True,
                                 neuron=any(self.neuron[a] for seg in s for a in seg))
                result = [r + (block,) for r in result]
            else:
                for t in structs:
                    self.fix(t)
                return self.fixed_struct(prod(self.struct_size(self.resolve(t)) for t in structs))
        return tuple(result)

    def split(self, s: Struct, sizes: list[int]) -> list[Struct]:
        """Structures of the axes a reshape splits axis ``s`` into (row-major)."""
        s = self.resolve(s)
        sizes = [int(x) for x in sizes]
        if len([x for x in sizes if x != 1]) <= 1:
            return [s if x != 1 else ((),) for x in sizes]
        if len(s) == 1 and len(s[0]) == 1 and not self.fixed[s[0][0]]:
            fresh = [self.atom(x, neuron=self.neuron[s[0][0]]) for x in sizes]
            self._bind(s[0][0], (tuple(a for f in fresh for a in f[0]),))
            return fresh
        if len(s) == 1:
            s = (self._refine(list(s[0]), sizes),)
            out: list[Struct] = []
            atoms, k = list(s[0]), 0
            ok = True
            for x in sizes:
                take: list[int] = []
                n = 1
                while n < x and k < len(atoms):
                    take.append(atoms[k]); n *= self.size[self.find(atoms[k])]; k += 1
                if n != x:
                    ok = False
                    break
                out.append((tuple(take),))
            if ok and k == len(atoms):
                return out
        self._fix_resolved(s)
        return [self.fixed_struct(x) for x in sizes]

    def _refine(self, atoms: list[int], sizes: list[int]) -> tuple[int, ...]:
        """Split free atoms that straddle a boundary of ``sizes`` into products, so that
        e.g. (batch, d) reshaped to (batch*heads, d/heads) keeps heads and dims free."""
        bounds, c = set(), 1
        for x in sizes:
            c *= x
            bounds.add(c)
        out: list[int] = []
        c = 1
        queue = list(atoms)
        while queue:
            a = self.find(queue.pop(0))
            n = self.size[a]
            inner = [b for b in sorted(bounds) if c < b < c * n and b % c == 0 and n % (b // c) == 0]
            if inner and not self.fixed[a] and a not in self.binding:
                first = inner[0] // c
                p1, p2 = self.new(first, neuron=self.neuron[a]), self.new(n // first, neuron=self.neuron[a])
                self.binding[a] = ((p1, p2),)
                out.append(p1)
                c *= first
                queue.insert(0, p2)
                continue
            out.append(a)
            c *= n
        return tuple(out)

    def cut(self, s: Struct, bounds: list[int]) -> list[Struct] | None:
        """Structures of the pieces of a split/slice of axis ``s`` at cumulative
        ``bounds`` (e.g. [0, 4, 8, 12]). A free atom that a bound falls inside is refined
        into a concatenation of smaller atoms; a fixed segment is cut into fixed pieces
        (its positions never move). None where a bound falls inside a product with free
        atoms (the caller fixes)."""
        units: list[tuple[int, tuple[int, ...]]] = []    # (start, segment)
        pos = 0
        for seg in self.resolve(s):
            size = self.seg_size(seg)
            inner = [b - pos for b in bounds if pos < b < pos + size]
            if not inner:
                units.append((pos, seg))
            else:
                cuts = [0] + inner + [size]
                if len(seg) == 1 and not self.fixed[seg[0]]:
                    pieces = [self.atom(b - a, neuron=self.neuron[seg[0]]) for a, b in zip(cuts, cuts[1:])]
                    self._bind(seg[0], tuple(p[0] for p in pieces))
                elif all(self.fixed[a] for a in seg):
                    pieces = [self.atom(b - a, fixed=True, neuron=any(self.neuron[x] for x in seg))
                              for a, b in zip(cuts, cuts[1:])]
                else:
                    return None
                units.extend((pos + a, p[0]) for a, p in zip(cuts, pieces))
            pos += size
        return [tuple(seg for st, seg in units if a <= st < b) or ((),) for a, b in zip(bounds, bounds[1:])]



def index_map(s: Struct, sizes, perms: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Index vector along an axis of (resolved) structure ``s`` for per-atom
    permutations: ``new[j] = old[idx[j]]``. None where nothing moves."""
    if not any(a in perms for seg in s for a in seg):
        return None
    pieces, offset = [], 0
    for seg in s:
        idx = torch.zeros((), dtype=torch.long)
        n = 1
        for a in seg:
            sz = sizes[a]
            p = perms.get(a)
            p = torch.arange(sz) if p is None else p
            idx = (idx.unsqueeze(-1) * sz + p).reshape(-1)
            n *= sz
        pieces.append(idx.reshape(-1) + offset)
        offset += n
    return torch.cat(pieces)


def value_map(s: Struct, sizes, values: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """Per-index factors along an axis of structure ``s`` for per-atom factors."""
    if not any(a in values for seg in s for a in seg):
        return None
    pieces = []
    for seg in s:
        m = torch.ones((), dtype=torch.float64)
        for a in seg:
            v = values.get(a)
            v = torch.ones(sizes[a], dtype=torch.float64) if v is None else v.double()
            m = (m.unsqueeze(-1) * v).reshape(-1)
        pieces.append(m.reshape(-1))
    return torch.cat(pieces)
