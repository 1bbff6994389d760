"""GHN: a graph hypernetwork that predicts the parameters of any model WeightSpace can
trace (GHN-2, Knyazev et al. NeurIPS 2021; GHN-3, ICML 2023; LoGAH, Zhou et al. 2024).

>>> ghn = GHN(gnn="transformer", decoder="lowrank")
>>> params = ghn.predict(model)              # differentiable {name: tensor}
>>> out = torch.func.functional_call(model, params, (x,), strict=False)
>>> ghn(model)                               # or: load them into the model
>>> params.unpredicted                       # {name: why it keeps the model's init}

Pipeline: the model's op graph (traced once per architecture) -> node features (op-kind
embedding + embeddings of the op's parameter shape and of its depth from the inputs and
to the outputs; with ``op_features``, of its exact ATen op and output shape) -> graph network (``gnn``:
"gated", GHN-2's gated GNN with forward/backward passes and virtual edges, or
"transformer", GHN-3's graph transformer with degree and shortest-path encodings) ->
one decoder call per group of equal-shaped tensors (``decoder``: "tiled" or
"lowrank"; separate small heads for 1-D tensors and for the classifier) ->
GHN-2's operation-dependent normalisation:

=============  ==============================================  ======================
transform      tensors                                          value
=============  ==============================================  ======================
fan_in         ≥2-D weights of linear/conv/embedding/RNN ops    ``g * sqrt(2 / fan_in) * raw / rms(raw)``
norm_scale     the scale of a normalisation layer               ``2 * sigmoid(raw)``
op_bias        the bias of an op with a weight (linear, conv)   ``tanh(raw)``, or with ``bias_scale="fan_in"``
                                                                ``tanh(raw) / sqrt(fan_in)``
bias           other 1-D tensors (norm shifts, ...)             ``tanh(raw)``
plain          other ≥2-D tensors (positional tables, ...)      ``g * sqrt(2 / fan_in) * raw / rms(raw)``
=============  ==============================================  ======================

With ``identity`` a conv/linear weight mixes in the identity map (see the argument).

With ``weight_norm="filter"`` a fan_in weight's ``raw`` is first centred over each output
unit's fan-in and ``rms`` is taken per unit (weight standardisation).

Weights are thus predicted at He initialisation's scale for their op's fan-in (so that
signals neither vanish nor explode through a deep predicted network, GHN-2's point),
times a gain ``g = exp(gain(e))`` that the GHN predicts per tensor from its
embedding ``e`` (starting at 1), and the decoder's output sets their direction.

With ``residual=True`` (MIP's additive form) the prediction is the model's own
initial value plus ``alpha * raw``, ``alpha`` learned per transform (starting at 0).

Predicted tensors reach a model only through ``torch.func.functional_call`` (or, for
``ghn(model)``, by copying values into the existing parameters): the GHN never
replaces ``module._parameters``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..trace.vocab import KINDS
from .decoders import LowRankDecoder, TiledDecoder, VectorHead
from .gnn import GatedGNN, GraphTransformer
from .graph import N_OP_BUCKETS, N_SHAPE_BUCKETS, HyperGraph, hyper_graph

__all__ = ["GHN", "Prediction"]

_TRANSFORMS = ("fan_in", "norm_scale", "bias", "plain")
_MAX_SLOT = 8
_MAX_DEPTH = 64


def _fan_in_dims(shape: torch.Size, fan_in: int) -> tuple[int, ...] | None:
    """The axes of a batched weight ``[G, *shape]`` that one output unit reads (their
    sizes multiply to ``fan_in``): ``[G, out, in, *kernel]`` -> (2, 3, ...), a
    ``[G, in, out]`` weight (Hugging Face's Conv1D) -> (1,); None when neither fits."""
    if math.prod(shape[2:]) == fan_in:
        return tuple(range(2, len(shape)))
    if len(shape) == 3 and shape[1] == fan_in:
        return (1,)
    return None


def _add_identity(w: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``w [G, out, in, *kernel] + coef[g] * I`` where ``I`` is 1 at ``[i, i, centre]`` for
    ``i < min(out, in)`` (the weight of a layer that passes its first channels through
    unchanged); only the diagonal is touched, no ``I`` of ``w``'s size is built."""
    g, n = w.shape[0], min(w.shape[1], w.shape[2])
    i = torch.arange(n, device=w.device).repeat(g)
    t = torch.arange(g, device=w.device).repeat_interleave(n)
    idx = (t, i, i, *[torch.full_like(i, k // 2) for k in w.shape[3:]])
    return w.index_put(idx, coef.reshape(g).repeat_interleave(n).to(w.dtype), accumulate=True)


class Prediction(dict):
    """Predicted parameters ``{name: tensor}`` (differentiable), plus which of the
    model's parameters were not predicted and why (``unpredicted``)."""

    def __init__(self, params: dict[str, torch.Tensor], unpredicted: dict[str, str]):
        super().__init__(params)
        self.unpredicted = dict(unpredicted)

    @property
    def predicted(self) -> list[str]:
        return list(self.keys())

    def report(self) -> str:
        lines = [f"predicted {len(self)} tensors ({sum(t.numel() for t in self.values()):,} values); "
                 f"{len(self.unpredicted)} keep the model's initialisation"]
        lines += [f"  {k}: {why}" for k, why in self.unpredicted.items()]
        return "\n".join(lines)


class GHN(nn.Module, PyTorchModelHubMixin, library_name="metanet",
          tags=["metanet", "graph-hypernetwork"]):
    """Graph hypernetwork. All arguments are JSON values (saved in ``config.json``).

    Args:
        hid: width of node embeddings.
        gnn: "gated" (GHN-2) or "transformer" (GHN-3).
        layers: transformer layers, or gated-GNN rounds (forward+backward passes).
        heads: attention heads (transformer).
        max_virtual: longest distance joined by a virtual edge (gated).
        max_dist: shortest-path distances encoded (transformer).
        decoder: "tiled" (GHN-2/3) or "lowrank" (LoGAH).
        block: tiled block ``[block, block, kernel, kernel]``; also the 1-D head's
            length for the tiled decoder.
        kernel: largest kernel size predicted without tiling (5: every kernel the zoo's
            sampler draws, 1, 3 and 5, is a centred crop of one block).
        max_width: widest tensor axis the low-rank decoder reaches (and its 1-D head).
        rank: rank of the low-rank decoder.
        lowrank_core: how the low-rank decoder joins its factors over kernel positions:
            "cp" (one kernel per rank) or "tucker" (a rank x rank core per kernel position;
            see :mod:`metanet.hyper.decoders`). Default "tucker" since session 8 (the 3-seed
            main table of benchmarks/hyper.md); a checkpoint saved before the option
            existed loads as "cp", the core it was trained with.
        classifier_rows: rows (classes) the classifier head predicts before repeating.
        residual: MIP's additive output (model's init + learned correction).
        learn_gain: predict each weight tensor's gain ``g`` (else ``g = 1``: GHN-2's fixed
            fan-in scale).
        positions: add embeddings of each node's depth from the inputs and to the
            outputs (capped at 63). Without them the same op in every block of a
            transformer gets the same embedding, hence the same predicted weights.
        op_features: add embeddings of each node's exact ATen op (the vocabulary's kind
            puts mean and max pooling, relu and leaky_relu, ... under one kind) and of
            its output shape (channels, and spatial size: a strided conv differs from
            one that keeps the resolution).
        bias_scale: biases of ops with a weight (linear, conv, ...): "unit" predicts
            ``tanh(raw)`` (up to 1 in size, whatever the layer), "fan_in"
            ``tanh(raw) / sqrt(fan_in)`` (PyTorch's default bias range for the op), so that
            a bias does not swamp its layer's input-dependent signal.
        weight_norm: how a weight of a linear/conv/... op is brought to He scale:
            "tensor" divides the raw output by its rms over the whole tensor; "filter"
            standardises each output unit's weights over its fan-in (zero mean, then
            rms; weight standardisation, Qiao et al. 2019), so that a unit's response
            to a constant input is zero and layers without batch normalisation do not
            pass on a growing input-independent offset. Known cost: at gain 1 a
            centred filter does not see its input's mean, so after a ReLU a layer keeps
            about sqrt(1 - 1/pi) = 0.83 of the signal's std; the learned gain makes it up.
        identity: with ``c0 > 0``, a predicted conv or linear weight (not the classifier)
            is ``g * (c * sqrt(2) * I + sqrt(1 - c^2) * W)``, where ``I`` passes channel
            ``i`` to channel ``i`` through the kernel's centre (``i < min(out, in)``), ``W``
            the normalised decoder output above, and ``c = sigmoid(.)`` is predicted per
            tensor, starting at ``c0``. A unit that reads its own channel keeps He
            initialisation's output variance for every ``c``. Without it a plain network
            (no residual connections) must get a coherent transform at every layer from
            the decoder before any signal reaches the classifier; with it the first
            layers' features pass through the rest, as they do along a ResNet's
            shortcuts. 0 (off) is the behaviour before session 6; default 0.8 (screen at
            500 meta-steps, digits: predicted / trained 0.262 -> 0.374, plain cnn family
            0.144 -> 0.275; benchmarks/hyper.md).
    """

    def __init__(self, hid: int = 64, gnn: str = "transformer", layers: int = 3, heads: int = 4,
                 max_virtual: int = 5, max_dist: int = 8, decoder: str = "tiled", block: int = 32,
                 kernel: int = 5, max_width: int = 64, rank: int = 16, classifier_rows: int = 16,
                 residual: bool = False, positions: bool = True, learn_gain: bool = True,
                 op_features: bool = True, bias_scale: str = "fan_in", weight_norm: str = "filter",
                 identity: float = 0.8, lowrank_core: str = "tucker"):
        super().__init__()
        if gnn not in ("gated", "transformer"):
            raise ValueError(f"gnn must be 'gated' (GHN-2) or 'transformer' (GHN-3), got {gnn!r}")
        if decoder not in ("tiled", "lowrank"):
            raise ValueError(f"decoder must be 'tiled' (GHN-2/3) or 'lowrank' (LoGAH), got {decoder!r}")
        self.config = dict(hid=hid, gnn=gnn, layers=layers, heads=heads, max_virtual=max_virtual,
                           max_dist=max_dist, decoder=decoder, block=block, kernel=kernel,
                           max_width=max_width, rank=rank, classifier_rows=classifier_rows,
                           residual=residual, positions=positions, learn_gain=learn_gain,
                           op_features=op_features, bias_scale=bias_scale, weight_norm=weight_norm)
        if not 0 <= identity < 1:
            raise ValueError(f"identity is the initial weight of the identity in a predicted conv/linear "
                             f"weight, in [0, 1) (0: off), got {identity!r}")
        self.config["identity"] = float(identity)
        self.config["lowrank_core"] = lowrank_core
        if bias_scale not in ("unit", "fan_in"):
            raise ValueError(f"bias_scale must be 'unit' (tanh(raw)) or 'fan_in' (tanh(raw) / "
                             f"sqrt(fan_in of the op's weight)), got {bias_scale!r}")
        if weight_norm not in ("tensor", "filter"):
            raise ValueError(f"weight_norm must be 'tensor' (one rms per tensor) or 'filter' "
                             f"(zero mean and one rms per output unit), got {weight_norm!r}")
        self.residual = residual
        self.kind_embed = nn.Embedding(len(KINDS), hid)
        self.shape_embed = nn.ModuleList(nn.Embedding(N_SHAPE_BUCKETS, hid) for _ in range(4))
        self.depth_embed = (nn.ModuleList(nn.Embedding(_MAX_DEPTH, hid) for _ in range(2))
                            if positions else None)
        if op_features:
            self.op_embed = nn.Embedding(N_OP_BUCKETS, hid)
            self.out_embed = nn.ModuleList(nn.Embedding(N_SHAPE_BUCKETS, hid) for _ in range(2))
        else:
            self.op_embed = self.out_embed = None
        if gnn == "gated":
            self.gnn = GatedGNN(hid, rounds=layers, max_virtual=max_virtual)
        else:
            self.gnn = GraphTransformer(hid, layers=layers, heads=heads, max_dist=max_dist)
        self.norm = nn.LayerNorm(hid)
        self.slot_embed = nn.Embedding(_MAX_SLOT, hid)
        self.gain = nn.Linear(hid, 1) if learn_gain else None
        if self.gain is not None:
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)
        if decoder == "tiled":
            self.decoders = nn.ModuleDict(dict(
                weight=TiledDecoder(hid, block, block, kernel),
                classifier=TiledDecoder(hid, classifier_rows, block, 1),
                vector=VectorHead(hid, block, tile=True)))
        else:
            self.decoders = nn.ModuleDict(dict(
                weight=LowRankDecoder(hid, max_width, rank, kernel, core=lowrank_core),
                classifier=LowRankDecoder(hid, max_width, rank, 1, max_out=classifier_rows,
                                          tile_rows=True),
                vector=VectorHead(hid, max_width, tile=False)))
        self.identity = None
        if identity:
            self.identity = nn.Linear(hid, 1)
            nn.init.zeros_(self.identity.weight)
            nn.init.constant_(self.identity.bias, math.log(identity / (1 - identity)))
        self.alpha = nn.Parameter(torch.zeros(len(_TRANSFORMS))) if residual else None
        # how many nodes of each op kind meta-training has seen: kinds never seen are
        # not predicted by a trained GHN (an untrained one predicts every kind)
        self.register_buffer("kinds_seen", torch.zeros(len(KINDS)))

    @classmethod
    def _from_pretrained(cls, **kwargs):
        # a checkpoint saved before the identity option existed has no "identity" in its
        # config and was trained without it: it loads without it, whatever the default
        kwargs.setdefault("identity", 0.0)
        kwargs.setdefault("lowrank_core", "cp")   # likewise: saved before the option, trained as cp
        return super()._from_pretrained(**kwargs)

    # -- graph -> node embeddings ----------------------------------------------------------------
    def embed(self, g: HyperGraph) -> torch.Tensor:
        dev = self.kind_embed.weight.device
        h = self.kind_embed(g.kinds.to(dev))
        sf = g.shape_feats.to(dev)
        for j, emb in enumerate(self.shape_embed):
            h = h + emb(sf[:, j])
        if self.depth_embed is not None:
            depth = g.depths().clamp(max=_MAX_DEPTH - 1).to(dev)
            for j, emb in enumerate(self.depth_embed):
                h = h + emb(depth[:, j])
        if self.op_embed is not None:
            h = h + self.op_embed(g.op_ids.to(dev))
            of = g.out_feats.to(dev)
            for j, emb in enumerate(self.out_embed):
                h = h + emb(of[:, j])
        return self.norm(self.gnn(h, g))

    # -- prediction --------------------------------------------------------------------------------
    def predict(self, model: nn.Module, example_inputs: Any = None) -> Prediction:
        """Predict ``model``'s parameters. Differentiable with respect to the GHN.

        ``example_inputs`` (what ``forward`` takes) may be left out for models with an
        ``example_input()`` method (the zoo's models). Parameters the GHN does not
        predict are listed in ``.unpredicted`` with the reason; pass the result to
        ``torch.func.functional_call(model, params, args, strict=False)``, which takes
        those from the model."""
        g = hyper_graph(model, example_inputs)
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.kinds_seen += torch.bincount(g.kinds, minlength=len(KINDS)).to(self.kinds_seen)
        h = self.embed(g)
        seen = self.kinds_seen > 0
        trained = bool(seen.any())
        out: dict[str, torch.Tensor] = {}
        unpredicted = dict(g.unpredicted)
        groups: dict[tuple, list] = {}
        for t in g.tensors:
            if trained and not seen[g.kinds[t.node]]:
                unpredicted[t.name] = (f"op kind {g.node_kinds[t.node]!r} was never seen in "
                                       "meta-training")
                continue
            if not self.decoders[t.head].reaches(t.shape):
                unpredicted[t.name] = (f"shape {t.shape} is beyond the {self.config['decoder']} "
                                       f"decoder's reach (max_width={self.config['max_width']}); "
                                       "build the GHN with a larger max_width to predict it")
                continue
            # tensors of one shape and transform share a decoder call; a bias's fan-in
            # only matters when it sets the bias's scale
            fan_in = t.fan_in if t.head != "vector" or (
                t.transform == "op_bias" and self.config["bias_scale"] == "fan_in") else 0
            groups.setdefault((t.head, t.shape, t.transform, fan_in), []).append(t)
        dev = h.device
        for (head, shape, transform, fan_in), specs in groups.items():
            nodes = torch.tensor([t.node for t in specs], device=dev)
            slots = torch.tensor([min(t.slot, _MAX_SLOT - 1) for t in specs], device=dev)
            e = h[nodes] + self.slot_embed(slots)
            raw = self.decoders[head](e, shape)
            ident = (self.identity is not None and head == "weight" and transform == "fan_in"
                     and not self.residual and g.node_kinds[specs[0].node] in ("conv", "linear"))
            vals = self._transform(raw, transform, fan_in, model, specs, e, identity=ident)
            for t, v in zip(specs, vals.unbind(0)):
                out[t.name] = v
        # keep the model's order
        order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        out = dict(sorted(out.items(), key=lambda kv: order.get(kv[0], 0)))
        return Prediction(out, unpredicted)

    def _transform(self, raw: torch.Tensor, transform: str, fan_in: int, model: nn.Module,
                   specs: list, e: torch.Tensor, identity: bool = False) -> torch.Tensor:
        if self.residual:
            base = torch.stack([model.get_parameter(t.name).detach().to(raw) for t in specs])
            kind = "bias" if transform == "op_bias" else transform
            return base + self.alpha[_TRANSFORMS.index(kind)] * raw
        if transform in ("fan_in", "plain"):
            dims = tuple(range(1, raw.dim()))
            if self.config["weight_norm"] == "filter" and transform == "fan_in" and fan_in > 1:
                # weight standardisation: every output unit's weights have zero mean and
                # the same rms over its fan-in
                unit = _fan_in_dims(raw.shape, fan_in)
                if unit is not None:
                    raw = raw - raw.mean(unit, keepdim=True)
                    dims = unit
            rms = raw.pow(2).mean(dims, keepdim=True).add(1e-8).sqrt()
            scale = math.sqrt(2.0 / max(fan_in, 1))
            w = raw / rms * scale
            if identity:
                # c * sqrt(2) * Dirac + sqrt(1 - c^2) * He-scale weights: a unit that reads
                # its own channel keeps He initialisation's output variance for every c
                c = torch.sigmoid(self.identity(e)).view(-1, *([1] * (raw.dim() - 1)))
                w = _add_identity((1 - c * c).sqrt() * w, c * math.sqrt(2.0))
            if self.gain is None:
                return w
            return w * self.gain(e).exp().view(-1, *([1] * (raw.dim() - 1)))
        if transform == "norm_scale":
            return 2 * torch.sigmoid(raw)
        if transform == "op_bias" and self.config["bias_scale"] == "fan_in":
            return torch.tanh(raw) / math.sqrt(max(fan_in, 1))
        return torch.tanh(raw)

    @torch.no_grad()
    def load(self, model: nn.Module, example_inputs: Any = None) -> Prediction:
        """Predict ``model``'s parameters and copy them into it (in place, no graph kept).
        Returns the prediction, whose ``unpredicted`` lists what kept its own init."""
        pred = self.predict(model, example_inputs)
        for name, v in pred.items():
            p = model.get_parameter(name)
            if p.is_meta:
                raise ValueError(f"{name} lives on the meta device: use ghn.predict(model) for "
                                 "meta models (there is no storage to load values into)")
            p.copy_(v.to(p))
        return pred

    def forward(self, model: nn.Module, example_inputs: Any = None) -> nn.Module:
        """Initialise ``model`` with predicted parameters and return it. Warns with the
        names that kept the model's own initialisation (see :meth:`load`)."""
        pred = self.load(model, example_inputs)
        if pred.unpredicted:
            names = list(pred.unpredicted)
            warnings.warn(f"GHN: {len(names)} parameter(s) keep the model's own initialisation: "
                          + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
                          + " (ghn.load(model).unpredicted says why)", stacklevel=2)
        return model

    def extra_repr(self) -> str:
        c = self.config
        return f"gnn={c['gnn']}, decoder={c['decoder']}, hid={c['hid']}"
