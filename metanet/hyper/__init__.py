"""Hypernetworks: GHN (graph hypernetworks with tiled and low-rank decoders) and
HyperNetwork (conditional, with the magnitude-invariant parametrization MIP)."""
from .decoders import LowRankDecoder, TiledDecoder, VectorHead
from .ghn import GHN, Prediction
from .graph import HyperGraph, hyper_graph
from .hypernetwork import HyperNetwork, mip_encode

__all__ = ["GHN", "HyperNetwork", "mip_encode", "Prediction", "HyperGraph", "hyper_graph", "TiledDecoder", "LowRankDecoder",
           "VectorHead"]
