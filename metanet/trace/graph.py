"""The op graph: one node per op of an exported model, in plain picklable Python."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .vocab import KIND_INDEX


@dataclass(frozen=True)
class Ref:
    """An argument that is the output of op node ``index``."""

    index: int


@dataclass(frozen=True)
class Param:
    """An argument that is a state-dict entry (parameter or persistent buffer)."""

    name: str


@dataclass(frozen=True)
class Const:
    """An argument that is a tensor the state dict does not hold (lifted constant,
    non-persistent buffer)."""

    name: str
    shape: tuple[int, ...]
    values: tuple[int, ...] | None = None   # a small integer constant's values (index lists)


@dataclass
class OpNode:
    index: int
    name: str                     # node name in the exported graph
    op: str                       # ATen op (overload packet), e.g. "conv2d"; "input"/"output"
    kind: str                     # vocabulary kind, see metanet.trace.vocab.KINDS
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    shape: Any = None             # output shape tuple, a list of them for multi-output ops, or None
    dtype: str | None = None
    module: str = ""              # module path ("layer1.0.conv1"); "" for the root
    module_type: str = ""         # class name of that module
    inputs: tuple[int, ...] = ()  # data-flow predecessors (op node indices)
    params: tuple[str, ...] = ()  # state-dict entries this op reads directly

    @property
    def kind_index(self) -> int:
        return KIND_INDEX[self.kind]

    def where(self) -> str:
        """Human-readable location for messages."""
        place = self.module or "<root>"
        return f"aten.{self.op} at {place}" + (f" ({self.module_type})" if self.module_type else "")


@dataclass
class OpGraph:
    """Op-level DAG of a model, as traced by torch.export.

    ``nodes`` are in topological order. ``inputs`` are the indices of the nodes that
    are model inputs; ``outputs`` the references (or constants) the model returns,
    flattened. ``param_shapes`` gives every state-dict entry the graph reads.
    """

    nodes: list[OpNode]
    inputs: list[int]
    outputs: list[Any]
    param_shapes: dict[str, tuple[int, ...]]
    const_shapes: dict[str, tuple[int, ...]]

    @property
    def edges(self) -> list[tuple[int, int]]:
        return [(i, n.index) for n in self.nodes for i in n.inputs]

    def edge_index(self) -> torch.Tensor:
        e = self.edges
        if not e:
            return torch.zeros(2, 0, dtype=torch.long)
        return torch.tensor(e, dtype=torch.long).t().contiguous()

    def kinds(self) -> torch.Tensor:
        return torch.tensor([n.kind_index for n in self.nodes], dtype=torch.long)

    def count(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.kind] = out.get(n.kind, 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.nodes)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.count().items(), key=lambda kv: -kv[1]))
        return f"OpGraph: {len(self.nodes)} ops, {len(self.edges)} edges ({counts})"

    def __repr__(self) -> str:
        return f"<{self.summary()}>"
