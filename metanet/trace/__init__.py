"""Model -> op graph with torch.export."""
from .export import TraceError, trace
from .graph import Const, OpGraph, OpNode, Param, Ref
from .vocab import KINDS, kind_of

__all__ = ["trace", "TraceError", "OpGraph", "OpNode", "Ref", "Param", "Const", "KINDS", "kind_of"]
