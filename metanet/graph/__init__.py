"""Parameter graphs <-> state dicts (neurons as nodes, weights as edges)."""
from .layout import GraphLayout, ParamGraph

__all__ = ["GraphLayout", "ParamGraph"]
