"""Metanetworks: networks that read the parameters of other networks.

- :class:`GMN`: message passing with edge and node updates over parameter graphs;
- :class:`NGT`: a graph transformer with edge features inside attention;
- :class:`NFN`: equivariant NP / HNP layers for plain MLP and CNN weight spaces, derived
  from ``WeightSpace`` groups;
- :class:`StatNN`: statistics of the weights per tensor role and depth, into an MLP.

Graph models read a PyG Batch of any architectures or a
:class:`~metanet.graph.SharedBatch` of one, with the same outputs. Every model has
``fit_normalization(batches)`` (input statistics from a training split, saved with the
model) and saves and loads with ``save_pretrained`` / ``from_pretrained`` (safetensors +
config.json, ``huggingface_hub.PyTorchModelHubMixin``).
"""
from .canonical import canonicalize
from .gmn import GMN, GMNLayer
from .inputs import GraphEncoder, GraphInput, RoleNorm
from .nfn import NFN, NPLayer, nfn_spec
from .ngt import NGT, NGTLayer
from .statnn import StatNN

# task model names -> the class that loads them (gmn_hybrid: a GMN with weight_stats_bins)
MODELS = {"gmn": GMN, "gmn_hybrid": GMN, "ngt": NGT, "nfn": NFN, "statnn": StatNN}

__all__ = ["GMN", "GMNLayer", "GraphEncoder", "GraphInput", "MODELS", "NFN", "NGT", "NGTLayer",
           "NPLayer", "RoleNorm", "StatNN", "canonicalize", "nfn_spec"]
