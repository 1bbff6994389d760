"""Parameter graphs <-> state dicts (neurons as nodes, weights as edges)."""
from .batch import SharedBatch, collate
from .features import NODE_KINDS, ROLES
from .layout import GraphLayout, GraphTooLargeError, ParamGraph

__all__ = ["GraphLayout", "GraphTooLargeError", "NODE_KINDS", "ParamGraph", "ROLES", "SharedBatch",
           "collate"]
