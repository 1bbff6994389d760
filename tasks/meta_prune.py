"""Meta pruning (Liu, Wang and Zhang 2025, "Meta Pruning via Graph Metanetworks"): a GMN
maps a trained network to a network of the same architecture that is easy to prune.

The loop, top to bottom:
  config -> data (scikit-learn digits) -> a zoo of small digits CNNs trained here, split
  into meta-training and held-out networks -> a GMN whose edge head writes a correction
  to every weight (new = old + gate * delta, gate starting at 0: the identity) -> meta
  training: task loss of the edited networks + lambda * group lasso over WeightSpace
  groups (the L2 norm of every neuron's slices over the tensors of its group) -> at use:
  one forward pass, magnitude pruning to a FLOP reduction, a short fine-tune -> held-out
  accuracy against FLOP reduction for random, magnitude and meta pruning, with measured
  latency speed-ups.

Everything the metanetwork does is equivariant: a permuted network gives the permuted
edited network (tests/test_prune.py checks it), so the pruning scores it induces do not
depend on the order of neurons.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class MetaPruneConfig:
    arch: str = "small_cnn"           # zoo.models name: "small_cnn" (padding 1) or "tiny_resnet", on 8x8 digits
    channels: int = 8                 # its width
    n_train_nets: int = 6             # meta-training zoo
    n_test_nets: int = 3              # held out, never seen in meta-training
    net_steps: int = 300              # training steps of each zoo network
    meta_steps: int = 150
    meta_batch: int = 3               # networks per meta step
    hidden: int = 32
    layers: int = 2
    lam: float = 2e-3                 # group-lasso weight
    prune_aware: float = 0.0          # weight of the task loss of the edited network with pruned neurons zeroed
    mask_ratios: tuple[float, float] = (0.15, 0.5)   # the pruning ratio of that term, drawn per step
    mode: str = "add"                 # MetaPruner: "add" (old + gate * delta), "scale" (old * (1 + gate * delta))
                                      # or "neuron" (every slice of a neuron times exp(gate * its node-head output))
    lasso_norm: bool = False          # group lasso of each edited network divided by that of its input network
                                      # (lam is then a fraction of the initial group norm, whatever the architecture)
    lam_warmup: float = 0.0           # fraction of the meta steps over which lam ramps up linearly from 0
    mask_temperature: float = 0.0     # > 0: the pruned-task mask passes a soft-mask gradient to the norms (masked)
    open_gate: bool = False           # start at the identity with the gate open and the head's last layer zero
    batch_stats: bool = False         # meta-train with norms on batch statistics (train mode), as fine-tuning uses
    normalize: bool = False           # standardise the GMN's inputs per role (statistics of the meta-training zoo)
    allocation: str = "uniform"       # meta's plan: "uniform" (same fraction per group), "global" (metanet.prune)
                                      # or "global_max": global on each group's norms divided by the group's
                                      # largest (the published method's pruner: the edit sets each layer's share)
    sparsity: str = "lasso"           # "lasso": lam * sum of group norms; "polarize": lam * the growing
                                      # regularizer the published method meta-trains with (polarizing_penalty)
    alpha: float = 16.0               # "polarize": the smallest neuron of a group is pushed alpha x the largest
    pre_finetune: int = 0             # of the finetune_steps, steps spent on meta's edited network before it is
                                      # pruned (the published pipeline's order); the total stays finetune_steps
    apply_times: int = 1              # the metanetwork applied this many times (its output fed back in)
    select_every: int = 0             # > 0: a snapshot every this many meta steps; the one used is the best on
                                      # n_val_nets validation networks (mean accuracy of the meta pipeline over
                                      # the speedups), as the published method picks its meta-training epoch
    n_val_nets: int = 3               # with select_every or strength_grid: networks trained after the held-out
                                      # ones, never meta-trained on, never tested
    strength_grid: tuple[float, ...] = ()   # non-empty: method "meta (strength chosen)" uses the edit
                                      # new = old + s * (metanetwork's output - old), s from this grid chosen per
                                      # seed (one architecture per run) by the training-split accuracy of the
                                      # n_val_nets validation networks after pruning to the largest speedup and
                                      # the fine-tune (ties: the first in the grid); s = 0 is the original network
    lr: float = 1e-3
    speedups: tuple[float, ...] = (1.5, 2.0, 3.0)
    finetune_steps: int = 50
    batch_size: int = 128
    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = ("random", "magnitude", "meta")   # also "magnitude (global)", "magnitude (global
                                      # max)", "meta (scores)", "meta (strength chosen)" (needs strength_grid)
    progress: bool = True             # progress bars (tqdm, on stderr)
    out: str | None = None            # folder for results.json, results.md and accuracy.png


@dataclass
class MetaPruneResult:
    config: MetaPruneConfig
    rows: list[dict] = field(default_factory=list)   # seed, method, speedup, flops_reduction, latency, accuracy
    meta_loss: list[float] = field(default_factory=list)
    spread: list[dict] = field(default_factory=list)   # group-norm spread of each held-out net before/after the edit
    selection: list[dict] = field(default_factory=list)   # select_every: validation accuracy of each snapshot
    strength: list[dict] = field(default_factory=list)    # strength_grid: validation accuracy of each strength

    def mean(self, method: str, speedup: float) -> float:
        acc = [r["accuracy"] for r in self.rows if r["method"] == method and r["speedup"] == speedup]
        return sum(acc) / max(len(acc), 1)

    def _mean(self, key: str, method: str, speedup: float) -> float:
        v = [r[key] for r in self.rows if r["method"] == method and r["speedup"] == speedup]
        return sum(v) / max(len(v), 1)

    def table(self) -> str:
        """Mean accuracy per method and target, then for each method the FLOP reduction
        reached and the latency speed-up measured, as ``FLOPs / latency``."""
        methods = list(dict.fromkeys(r["method"] for r in self.rows))
        speedups = list(dict.fromkeys(r["speedup"] for r in self.rows))
        lines = ["| FLOP reduction target | " + " | ".join(methods) + " | "
                 + " | ".join(f"FLOPs / latency speed-up ({m})" for m in methods) + " |",
                 "|---" * (2 * len(methods) + 1) + "|"]
        for s in speedups:
            lines.append(f"| {s}x | " + " | ".join(f"{100 * self.mean(m, s):.1f}" for m in methods) + " | "
                         + " | ".join(f"{self._mean('flops_reduction', m, s):.2f}x / "
                                      f"{self._mean('latency_speedup', m, s):.2f}x" for m in methods) + " |")
        return "\n".join(lines)

    def table_before_finetune(self) -> str:
        methods = [m for m in dict.fromkeys(r["method"] for r in self.rows)
                   if all("accuracy_before_finetune" in r for r in self.rows if r["method"] == m)]
        speedups = list(dict.fromkeys(r["speedup"] for r in self.rows))
        lines = ["| FLOP reduction target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
        for s in speedups:
            lines.append(f"| {s}x | " + " | ".join(f"{100 * self._mean('accuracy_before_finetune', m, s):.1f}"
                                                   for m in methods) + " |")
        return "\n".join(lines)


def batched_group_norms(ws, stacked: dict[str, torch.Tensor], names: set[str]) -> dict[int, torch.Tensor]:
    """Per network and neuron of every group, the L2 norm of the neuron's slices over the
    tensors of its group (``stacked``: ``{name: [B, ...]}``; only tensors in ``names``):
    ``{group id: [B, size]}``. Differentiable."""
    from metanet.prune.core import _positions

    out = {}
    for g in ws.groups:
        acc = None
        for name, axis in ws.group_axes(g.id):
            if name not in names:
                continue
            v = stacked[name].movedim(axis + 1, 1)
            sq = v.reshape(v.shape[0], v.shape[1], -1).pow(2).sum(-1)          # [B, axis]
            pos = _positions(ws.axes(name)[axis], ws.spaces.sizes, g.space).to(sq.device)
            keep = pos >= 0
            part = sq.new_zeros(sq.shape[0], g.size).index_add(1, pos[keep], sq[:, keep])
            acc = part if acc is None else acc + part
        if acc is not None:
            out[g.id] = (acc + 1e-12).sqrt()
    return out


def group_lasso(ws, stacked: dict[str, torch.Tensor], names: set[str], per_network: bool = False) -> torch.Tensor:
    """Sum over networks, groups and neurons of each neuron's L2 norm over the tensors of its
    group (``stacked``: ``{name: [B, ...]}``; only tensors in ``names``). Differentiable.
    ``per_network``: the sum of each network apart, ``[B]``."""
    total = sum(n.sum(1) for n in batched_group_norms(ws, stacked, names).values())
    return total if per_network else total.sum()


def polarizing_penalty(ws, stacked: dict[str, torch.Tensor], names: set[str], alpha: float = 16.0,
                       per_network: bool = False) -> torch.Tensor:
    """The growing regularizer of DepGraph's group-norm pruner, which the published meta
    pruning meta-trains with: ``0.5 * sum_i gamma_i * norm_i ** 2`` over the neurons of every
    group, ``gamma_i = alpha ** ((max - norm_i) / (max - min))`` from the group's detached
    norms, so its gradient is ``gamma_i * w`` on every slice of neuron ``i``: a weight decay
    ``alpha`` times stronger on a group's smallest neuron than on its largest, which drives
    the norms of a group apart instead of shrinking them all alike. Sum over networks (or
    per network, ``[B]``)."""
    total = None
    for n in batched_group_norms(ws, stacked, names).values():
        d = n.detach()
        hi, lo = d.max(1, keepdim=True).values, d.min(1, keepdim=True).values
        gamma = alpha ** ((hi - d) / (hi - lo).clamp_min(1e-12))
        part = 0.5 * (gamma * n.pow(2)).sum(1)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no group has a tensor among the names given: nothing to regularize")
    return total if per_network else total.sum()


def _max_normalised(norms: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Each group's norms divided by the group's largest (along the last axis)."""
    return {g: n / n.amax(-1, keepdim=True).clamp_min(1e-12) for g, n in norms.items()}


def _reads(ws, gid: int, names: set[str]) -> list[tuple[str, int]]:
    """The axes of tensors in ``names`` that read the neurons of group ``gid`` (edge role "in")."""
    return [(n, a) for n, a in ws.group_axes(gid) if n in names and ws.spaces.roles.get(n, {}).get(a) == "in"]


def scale_neurons(ws, stacked: dict[str, torch.Tensor], names: set[str], factors: dict[int, torch.Tensor],
                  reads_only: set[int] = frozenset()) -> dict[str, torch.Tensor]:
    """``stacked`` with every slice of each neuron multiplied by its factor, in every tensor
    of its group that is in ``names`` (``factors``: ``{group id: [B, size]}``; groups left
    out are unchanged; groups in ``reads_only``: only in the weights that read the neuron).
    Differentiable in the factors and the tensors."""
    from metanet.prune.core import _positions

    out = dict(stacked)
    for g in ws.groups:
        if g.id not in factors:
            continue
        m = factors[g.id]
        axes = _reads(ws, g.id, names) if g.id in reads_only else ws.group_axes(g.id)
        for name, axis in axes:
            if name not in names:
                continue
            pos = _positions(ws.axes(name)[axis], ws.spaces.sizes, g.space).to(m.device)
            full = torch.where(pos >= 0, m[:, pos.clamp_min(0)], torch.ones((), dtype=m.dtype, device=m.device))
            shape = [m.shape[0]] + [1] * (out[name].dim() - 1)
            shape[axis + 1] = pos.numel()
            out[name] = out[name] * full.reshape(shape)
    return out


def masked(ws, stacked: dict[str, torch.Tensor], names: set[str], ratio: float,
           allocation: str = "uniform", temperature: float = 0.0) -> dict[str, torch.Tensor]:
    """``stacked`` with the neurons that magnitude pruning at ``ratio`` would remove set to
    zero in every tensor of their group (per network; "uniform": that fraction of each
    group, "global": of all neurons together, at least one per group). A neuron zeroed in
    every tensor of its group contributes nothing, so this is the pruned network at the
    original size, and gradients reach the neurons kept. Which neurons go is chosen on the
    detached norms.

    ``temperature`` > 0 (uniform allocation only): the same network function forward, and
    backward the gradient of a soft mask ``sigmoid((norm - threshold) / (temperature * mean
    norm of the group))`` (straight through), so that the norms of the neurons near the
    threshold learn which side of it they should be on: the choice itself gets a gradient.
    The mask then zeroes only the weights that read a removed neuron (an unread neuron is
    removed as well, and its output, which the soft mask's gradient needs, is not zero)."""
    raw = batched_group_norms(ws, stacked, names)
    norms = {g: n.detach() for g, n in raw.items()}
    keep = {}
    if allocation == "global_max":
        norms, allocation = _max_normalised(norms), "global"
    if allocation == "global":
        flat = torch.cat(list(norms.values()), 1)                          # [B, all neurons]
        n_remove = int(round(flat.shape[1] * ratio))
        thr = flat.sort(1).values[:, max(n_remove - 1, 0)].unsqueeze(1) if n_remove else None
        for g, n in norms.items():
            k = (n > thr) if thr is not None else torch.ones_like(n, dtype=torch.bool)
            k[torch.arange(n.shape[0]), n.argmax(1)] = True
            keep[g] = k
    else:
        for g, n in norms.items():
            size = n.shape[1]
            n_keep = max(1, size - int(round(size * ratio)))
            k = torch.zeros_like(n, dtype=torch.bool)
            k.scatter_(1, n.topk(n_keep, 1).indices, True)
            keep[g] = k
    factors = {g: k.to(norms[g].dtype) for g, k in keep.items()}
    reads_only = set()
    if temperature > 0 and allocation == "uniform":
        for g, hard in factors.items():
            n = norms[g]
            if n.shape[1] < 2 or bool(hard.all()):
                continue
            # threshold halfway between the smallest norm kept and the largest removed
            kept_min = n.masked_fill(hard == 0, float("inf")).min(1, keepdim=True).values
            gone_max = n.masked_fill(hard == 1, float("-inf")).max(1, keepdim=True).values
            thr = (kept_min + gone_max) / 2
            soft = torch.sigmoid((raw[g] - thr) / (temperature * n.mean(1, keepdim=True) + 1e-12))
            factors[g] = hard + soft - soft.detach()
            if _reads(ws, g, names):
                reads_only.add(g)
    return scale_neurons(ws, stacked, names, factors, reads_only)


# GMN options pinned (metanet.nn's defaults change as it is tuned for other tasks): mean
# aggregation, raw weights (no canonical forms, one linear map of the standardised values)
# and the plain readout (unused here). Options a GMN version does not have are its default.
GMN_PINS = {"aggr": "mean", "canonical": None, "value_scales": (), "readout_bins": 0}


def _gmn_pins(gmn_class) -> dict:
    import inspect

    accepted = inspect.signature(gmn_class.__init__).parameters
    return {k: v for k, v in GMN_PINS.items() if k in accepted}


MODES = ("add", "scale", "neuron", "rebalance")


class MetaPruner(nn.Module):
    """A GMN editing a network. Mode "add": its edge head writes a correction to every
    weight, ``new = old + gate * delta``; "scale": ``new = old * (1 + gate * delta)`` (the
    edit can shrink a neuron's weights towards zero but not create weights where there were
    none); "neuron": its node head gives one number ``s`` per neuron of every group (the
    mean over the graph nodes that stand for that neuron), and every slice of the neuron,
    in every tensor of its group, is multiplied by ``exp(gate * s)`` (its exponent clipped to
    [-8, 8]): the metanetwork only
    chooses how much to shrink each neuron; "rebalance": the same factors, applied as the
    weight space's positive scaling (the weights a neuron writes times ``f``, those that read
    it divided by ``f``), which leaves the network's function unchanged and moves only its
    group norms, i.e. what magnitude pruning reads; groups without that symmetry (e.g.
    through a batch norm) are left as they are."""

    def __init__(self, ws, in_width: int, hidden: int, layers: int, layout: str = "compact", mode: str = "add"):
        super().__init__()
        from metanet.nn import GMN

        if mode not in MODES:
            raise ValueError(f"MetaPruner mode is one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.ws, self.layout, self.mode = ws, layout, mode
        self.in_width, self.hidden = in_width, hidden
        self.gmn = GMN(in_width=in_width, hidden=hidden, layers=layers, edge_out=in_width, **_gmn_pins(GMN))
        self.gate = nn.Parameter(torch.zeros(()))
        self._nodes = None

    def neuron_nodes(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per group: (graph node, neuron of the group it stands for) pairs and the number of
        nodes per neuron. A neuron is every node whose set's axis structure carries the
        group's atom at that position (a channel of a conv is one node; a channel flattened
        into a linear layer with its H*W positions is H*W nodes)."""
        if self._nodes is None:
            from metanet.prune.core import _positions

            lay = self.ws.layout(self.layout)
            self._nodes = {}
            for g in self.ws.groups:
                nodes, neurons = [], []
                for ns in lay.sets.values():
                    if ns.hub or ns.unit:
                        continue
                    pos = _positions(ns.key, lay.sizes, g.space)
                    if pos.numel() != ns.size:
                        continue
                    inside = pos >= 0
                    nodes.append(torch.arange(ns.offset, ns.offset + ns.size)[inside])
                    neurons.append(pos[inside])
                if nodes and sum(n.numel() for n in nodes):
                    nodes_t, neurons_t = torch.cat(nodes), torch.cat(neurons)
                    count = torch.zeros(g.size).index_add_(0, neurons_t, torch.ones(neurons_t.numel()))
                    self._nodes[g.id] = (nodes_t, neurons_t, count.clamp_min(1))
        return self._nodes

    def neuron_factors(self, stacked: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Mode "neuron": ``{group id: [B, size]}``, the factor ``exp(gate * s)`` of every neuron."""
        from metanet.graph import SharedBatch

        g = SharedBatch.of(self.ws, stacked, layout=self.layout)
        x = self.gmn.node_head(self.gmn.encode(g)[1])
        B = next(iter(stacked.values())).shape[0]
        x = x.reshape(B, -1)                                                   # [B, nodes]
        out = {}
        for gid, (nodes, neurons, count) in self.neuron_nodes().items():
            size = self.ws.groups[gid].size
            s = x.new_zeros(B, size).index_add(1, neurons.to(x.device), x[:, nodes.to(x.device)])
            out[gid] = torch.exp((self.gate * s / count.to(x)).clamp(-8.0, 8.0))   # finite, never 0
        return out

    def start_at_identity(self) -> "MetaPruner":
        """Open the gate and zero the edge head's last layer instead: still the identity, but
        the gradient reaches the head from the first step (with a closed gate it reaches only
        the gate)."""
        head = self.gmn.node_head if self.mode in ("neuron", "rebalance") else self.gmn.edge_head
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
            self.gate.fill_(1.0)
        return self

    def forward(self, stacked: dict[str, torch.Tensor], editable: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Edited stacked checkpoints; only tensors in ``editable`` (the parameters: running
        statistics of norms stay as they are) change, all floating tensors when None."""
        from metanet.graph import SharedBatch

        if self.mode == "neuron":
            names = {k for k, v in stacked.items() if v.is_floating_point()
                     and (editable is None or k in editable)}
            return scale_neurons(self.ws, stacked, names, self.neuron_factors(stacked))
        if self.mode == "rebalance":
            from metanet.space import Scaling

            try:
                allowed = set(self.ws.sample_scaling().factors)
            except ValueError:          # no group has the symmetry: nothing to rebalance
                return dict(stacked)
            f = {g: v for g, v in self.neuron_factors(stacked).items() if g in allowed}
            scaled = self.ws.scale(stacked, Scaling(f, "scale"), batched=True)
            return {k: scaled[k] if editable is None or k in editable else v for k, v in stacked.items()}
        g = SharedBatch.of(self.ws, stacked, layout=self.layout)
        delta = self.ws.state_dicts(self.gmn.edit(g))

        def new(k, v):
            if k not in delta or not v.is_floating_point() or (editable is not None and k not in editable):
                return v
            return v + self.gate * delta[k] if self.mode == "add" else v * (1 + self.gate * delta[k])

        return {k: new(k, v) for k, v in stacked.items()}


def save_meta_pruner(meta: MetaPruner, path) -> None:
    """The metanetwork's weights as safetensors, its sizes in the metadata (no pickle)."""
    from safetensors.torch import save_model

    gmn = meta.gmn
    meta_info = {"in_width": str(meta.in_width), "hidden": str(meta.hidden), "layers": str(len(gmn.layers)),
                 "layout": meta.layout, "mode": meta.mode}
    save_model(meta, str(path), metadata=meta_info)


def load_meta_pruner(path, ws) -> MetaPruner:
    """A :class:`MetaPruner` saved by :func:`save_meta_pruner`, for networks of weight space ``ws``."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    with safe_open(str(path), "pt") as f:
        info = f.metadata() or {}
    missing = [k for k in ("in_width", "hidden", "layers") if k not in info]
    if missing:
        raise ValueError(f"{path} is not a meta-pruner checkpoint (its metadata lacks {', '.join(missing)}); "
                         f"make one with tasks.meta_prune (MetaPruneConfig(out=...))")
    width = int(ws.layout(info.get("layout", "compact")).width)
    if width != int(info["in_width"]):
        raise ValueError(f"{path} reads edge features of width {info['in_width']} (e.g. 3x3 kernels), this "
                         f"model's parameter graph has width {width}: the metanetwork cannot read it")
    meta = MetaPruner(ws, int(info["in_width"]), int(info["hidden"]), int(info["layers"]),
                      info.get("layout", "compact"), info.get("mode", "add"))
    load_model(meta, str(path))
    return meta.eval()


@torch.no_grad()
def edit(meta: MetaPruner, model: nn.Module, times: int = 1) -> nn.Module:
    """One forward pass of the metanetwork: a copy of ``model`` with the edited weights
    (``times`` > 1: the output fed back in, that many passes in all)."""
    if times < 1:
        raise ValueError(f"edit: times is the number of passes of the metanetwork, at least 1, got {times}")
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    new = {k: v.unsqueeze(0) for k, v in model.state_dict().items()}
    for _ in range(times):
        new = meta(new, params)
    new = {k: v[0] for k, v in new.items()}
    out = copy.deepcopy(model)
    out.load_state_dict(new)
    return out.eval() if not model.training else out


@torch.no_grad()
def with_strength(model: nn.Module, edited: nn.Module, strength: float) -> nn.Module:
    """A copy of ``model`` moved ``strength`` times the metanetwork's edit:
    ``old + strength * (edited - old)`` on every floating tensor (0: ``model`` itself, 1:
    ``edited``, 2: twice the edit). Equivariant whenever the edit is: a permutation acts on
    ``old`` and ``edited`` alike."""
    strength = float(strength)
    if strength != strength or strength in (float("inf"), float("-inf")):
        raise ValueError(f"with_strength: the strength is a finite number, got {strength}")
    src = edited if strength == 1.0 else model
    out = copy.deepcopy(src)
    if strength in (0.0, 1.0):
        return out
    old, new = model.state_dict(), edited.state_dict()
    if old.keys() != new.keys():
        raise ValueError("with_strength: the edited network does not have the original's tensors")
    out.load_state_dict({k: v + strength * (new[k] - v) if v.is_floating_point() else v for k, v in old.items()})
    return out


def _train_net(net: nn.Module, data, steps: int, batch: int, gen: torch.Generator, lr: float = 3e-3) -> nn.Module:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.y_train), (batch,), generator=gen)
        loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _accuracy(net: nn.Module, data) -> float:
    net.eval()
    return float((net(data.x_test).argmax(-1) == data.y_test).float().mean())


@torch.no_grad()
def _train_accuracy(net: nn.Module, data) -> float:
    net.eval()
    return float((net(data.x_train).argmax(-1) == data.y_train).float().mean())


def _meta_train(config: MetaPruneConfig, ws, train_nets: list[nn.Module], template: nn.Module, data,
                gen: torch.Generator, log: Callable[[str], None], losses: list[float],
                snapshots: list | None = None) -> MetaPruner:
    """Meta-train a :class:`MetaPruner` on ``train_nets``: task loss of the edited networks,
    ``prune_aware`` x task loss of the edited networks with the neurons that magnitude
    pruning at a random ratio would remove zeroed (:func:`masked`), and ``lam`` x group
    lasso (or, ``sparsity="polarize"``, :func:`polarizing_penalty`) of the edited networks.
    With ``config.select_every`` and a list ``snapshots``, ``(step, state dict)`` is appended
    every that many steps."""
    from tqdm.auto import tqdm

    if config.sparsity not in ("lasso", "polarize"):
        raise ValueError(f"MetaPruneConfig.sparsity is 'lasso' or 'polarize', got {config.sparsity!r}")

    def penalty(stacked, per_network=False):
        if config.sparsity == "polarize":
            return polarizing_penalty(ws, stacked, params, config.alpha, per_network)
        return group_lasso(ws, stacked, params, per_network)

    params = {n for n, _ in train_nets[0].named_parameters()}
    width = int(ws.layout("compact").width)
    meta = MetaPruner(ws, width, config.hidden, config.layers, mode=config.mode)
    stacked_all = {k: torch.stack([n.state_dict()[k] for n in train_nets]) for k in ws.keys}
    if config.normalize:    # per-role standardisation of the GMN's inputs, fitted on the meta-training zoo
        from metanet.graph import SharedBatch
        meta.gmn.fit_normalization([SharedBatch.of(ws, stacked_all, layout="compact")])
    if config.open_gate:
        meta.start_at_identity()
    if config.lasso_norm:   # each network's group lasso at the input, the unit of its edited group lasso
        lasso0 = penalty(stacked_all, per_network=True).detach()
    opt = torch.optim.AdamW(meta.parameters(), lr=config.lr)
    lo, hi = config.mask_ratios

    # with batch_stats, norms use batch statistics (train mode) as the fine-tune will: the
    # running statistics belong to the unedited network and the fine-tune replaces them, so
    # an edit tuned to them would not survive it. Only parameters are passed then (running
    # statistics updated in train mode are the template's own and never read).
    template.train(config.batch_stats)
    keys = params if config.batch_stats else set(ws.keys)

    def task_loss(new, x, y, n):
        return sum(F.cross_entropy(functional_call(template, {k: v[b] for k, v in new.items() if k in keys},
                                                   (x,), strict=False), y)
                   for b in range(n)) / n

    bar = tqdm(range(config.meta_steps), desc="meta-training", disable=not config.progress, leave=False)
    for step in bar:
        pick = torch.randperm(len(train_nets), generator=gen)[:config.meta_batch]
        stacked = {k: v[pick] for k, v in stacked_all.items()}
        new = meta(stacked, params)
        idx = torch.randint(0, len(data.y_train), (config.batch_size,), generator=gen)
        x, y = data.x_train[idx], data.y_train[idx]
        task = task_loss(new, x, y, len(pick))
        if config.lasso_norm:
            sparsity = (penalty(new, per_network=True) / lasso0[pick]).sum() / len(pick)
        else:
            sparsity = penalty(new) / len(pick)
        warm = config.lam_warmup * config.meta_steps
        lam = config.lam * min(1.0, (step + 1) / warm) if warm > 0 else config.lam
        loss = task + lam * sparsity
        pruned_task = torch.zeros(())
        if config.prune_aware:
            r = lo + (hi - lo) * float(torch.rand((), generator=gen))
            pruned_task = task_loss(masked(ws, new, params, r, config.allocation, config.mask_temperature),
                                    x, y, len(pick))
            loss = loss + config.prune_aware * pruned_task
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(task=f"{float(task.detach()):.3f}", pruned=f"{float(pruned_task):.3f}",
                        lasso=f"{float(sparsity.detach()):.3g}", refresh=False)
        if step % max(config.meta_steps // 5, 1) == 0 or step == config.meta_steps - 1:
            log(f"  meta step {step + 1}/{config.meta_steps}: task {float(task.detach()):.3f}  pruned task "
                f"{float(pruned_task):.3f}  group lasso {float(sparsity.detach()):.3g}  "
                f"gate {float(meta.gate.detach()):.3f}")
        if snapshots is not None and config.select_every > 0 and (step + 1) % config.select_every == 0:
            snapshots.append((step + 1, copy.deepcopy(meta.state_dict())))
    return meta.eval()


# Zoos trained in this process, for runs that share one (the design sweep runs several designs on
# the same seed): key -> (state dicts, generator state, global RNG state after training).
# Restoring both RNG states makes a cached run identical to one that trains the zoo again.
_ZOO_CACHE: dict[tuple, tuple[list[dict], torch.Tensor, torch.Tensor]] = {}
_ZOO_CACHE_SIZE = 2


def norm_spread(ws, model: nn.Module) -> dict[str, float]:
    """How far apart a network's group norms are: the mean over groups of the coefficient of
    variation of its neurons' norms, and the fraction of neurons whose norm is under 10% of
    the largest in their group."""
    from metanet.prune import group_norms

    params = {n for n, _ in model.named_parameters()}
    norms = group_norms(ws, model.state_dict(), 2, params)
    cv = [float(n.std() / n.mean().clamp_min(1e-12)) for n in norms.values() if n.numel() > 1]
    small = sum(int((n < 0.1 * n.max()).sum()) for n in norms.values())
    total = sum(n.numel() for n in norms.values())
    return {"cv": sum(cv) / max(len(cv), 1), "small": small / max(total, 1)}


def run(config: MetaPruneConfig = MetaPruneConfig(), log: Callable[[str], None] = print,
        extra_methods: dict[str, Callable] | None = None) -> MetaPruneResult:
    """Run the job. ``extra_methods`` adds baselines: ``{name: fn(net, example_inputs, speedup,
    seed) -> (pruned model, FLOP reduction)}``, evaluated like the others (e.g. another
    library's pruner, see benchmarks/prune.py)."""
    from tqdm.auto import tqdm

    from metanet.prune import group_norms, measure_latencies, prune
    from metanet.space import WeightSpace
    from zoo.data import load_dataset
    from zoo.models import create, small_cnn

    result = MetaPruneResult(config)
    data = load_dataset("digits")
    example = (data.x_train[:1],)

    def make() -> nn.Module:
        if config.arch == "small_cnn":
            return small_cnn(channels=config.channels, padding=1, input_size=8)
        if config.arch == "tiny_resnet":
            return create("tiny_resnet", width=config.channels, input_size=8)
        raise ValueError(f"MetaPruneConfig.arch is 'small_cnn' or 'tiny_resnet', got {config.arch!r}")

    # method -> (network pruned: the original or the metanetwork's output, criterion, allocation);
    # "meta (scores)" prunes the original network, keeping the neurons of largest norm in the output
    known = {"random": ("net", "random", "uniform"), "magnitude": ("net", "magnitude", "uniform"),
             "magnitude (global)": ("net", "magnitude", "global"),
             "magnitude (global max)": ("net", "magnitude", "global_max"),
             "meta": ("edited", "magnitude", config.allocation),
             "meta (strength chosen)": ("chosen", "magnitude", config.allocation),
             "meta (scores)": ("net", "edited norms", config.allocation)}
    unknown = [m for m in config.methods if m not in known]
    if unknown:
        raise ValueError(f"MetaPruneConfig.methods: unknown {unknown}; known: {', '.join(known)}")
    if not 0 <= config.pre_finetune <= config.finetune_steps:
        raise ValueError(f"MetaPruneConfig.pre_finetune is a part of finetune_steps ({config.finetune_steps}), "
                         f"got {config.pre_finetune}")
    if config.apply_times < 1:
        raise ValueError(f"MetaPruneConfig.apply_times is at least 1, got {config.apply_times}")
    if "meta (strength chosen)" in config.methods and not config.strength_grid:
        raise ValueError("MetaPruneConfig.methods: 'meta (strength chosen)' needs a strength_grid to choose from")
    if config.strength_grid and config.n_val_nets < 1:
        raise ValueError(f"MetaPruneConfig.strength_grid needs validation networks (n_val_nets >= 1), "
                         f"got n_val_nets={config.n_val_nets}")
    methods = list(config.methods) + list(extra_methods or {})

    tuned: dict = {}     # the pre-fine-tuned edited network of the network in hand

    def prune_by(method: str, net: nn.Module, edited: nn.Module | None, s: float, seed: int, j: int,
                 ws, params) -> tuple[nn.Module, float, int, list[int]]:
        """(pruned model, FLOP reduction, fine-tune steps left, neurons kept per group) of a
        known method; ``edited`` is the edit the method prunes (for "meta (strength chosen)" the
        edit at the chosen strength)."""
        which, crit, alloc = known[method]
        target, steps = net, config.finetune_steps
        if which in ("edited", "chosen"):
            target = edited
            if config.pre_finetune:   # the published order: the edited network is fine-tuned, then pruned
                key = (id(edited), seed, j)
                if key not in tuned or tuned[key][0] is not edited:   # an id is reused once its object is freed
                    tuned.clear()
                    tuned[key] = (edited, _train_net(copy.deepcopy(edited), data, config.pre_finetune,
                                                     config.batch_size,
                                                     torch.Generator().manual_seed(10_000 + seed * 100 + j),
                                                     lr=1e-3))
                target = tuned[key][1]
                steps -= config.pre_finetune
        if crit == "edited norms":
            crit = group_norms(ws, edited.state_dict(), 2, params)
        if alloc == "global_max":
            norms = group_norms(ws, target.state_dict(), 2, params) if crit == "magnitude" else crit
            crit, alloc = _max_normalised(norms), "global"
        res = prune(target, example, crit, speedup=s, latency=False, ws=ws, allocation=alloc,
                    generator=torch.Generator().manual_seed(seed * 100 + j))
        return res.model, res.flops_reduction, steps, [res.groups.get(g.id, (g.size, g.size))[1] for g in ws.groups]

    for seed in config.seeds:
        # -- zoo: networks trained here; the held-out ones are never seen in meta-training
        gen = torch.Generator().manual_seed(seed)
        nets = []
        n_val = config.n_val_nets if config.select_every > 0 or config.strength_grid else 0
        n_all = config.n_train_nets + config.n_test_nets + n_val
        t0 = time.perf_counter()
        zoo_key = (config.arch, config.channels, seed, n_all, config.net_steps, config.batch_size)
        if zoo_key in _ZOO_CACHE:
            states, gen_state, rng_state = _ZOO_CACHE[zoo_key]
            for sd in states:
                nets.append(make())
                nets[-1].load_state_dict(sd)
                nets[-1].eval()
            gen.set_state(gen_state)
            torch.set_rng_state(rng_state)
        else:
            for i in tqdm(range(n_all), desc=f"seed {seed}: training the zoo", disable=not config.progress,
                          leave=False):
                torch.manual_seed(1000 * seed + i)
                nets.append(_train_net(make(), data, config.net_steps, config.batch_size, gen))
            while len(_ZOO_CACHE) >= _ZOO_CACHE_SIZE:
                _ZOO_CACHE.pop(next(iter(_ZOO_CACHE)))
            _ZOO_CACHE[zoo_key] = ([{k: v.clone() for k, v in n.state_dict().items()} for n in nets],
                                   gen.get_state(), torch.get_rng_state())
        # validation networks are trained last, so that the others are those of a run without them
        train_nets = nets[:config.n_train_nets]
        test_nets = nets[config.n_train_nets:config.n_train_nets + config.n_test_nets]
        val_nets = nets[config.n_train_nets + config.n_test_nets:]
        log(f"seed {seed}: trained {len(nets)} networks in {time.perf_counter() - t0:.0f} s, held-out accuracy "
            + ", ".join(f"{100 * _accuracy(n, data):.1f}" for n in test_nets))

        # -- meta-training
        ws = WeightSpace.of(train_nets[0], example)
        params = {n for n, _ in train_nets[0].named_parameters()}
        snapshots: list = []
        meta = _meta_train(config, ws, train_nets, make().eval(), data, gen, log, result.meta_loss, snapshots)
        if val_nets and snapshots:
            # the snapshot whose meta pipeline does best on the validation networks (accuracy on
            # the training split after the fine-tune; the test split is left to the held-out nets)
            scores = []
            for step, state in snapshots:
                meta.load_state_dict(state)
                meta.eval()
                acc = []
                for j, vnet in enumerate(val_nets):
                    ed = edit(meta, vnet, config.apply_times)
                    for s in config.speedups:
                        model, _, steps, _ = prune_by("meta", vnet, ed, s, seed, 50 + j, ws, params)
                        model = _train_net(model, data, steps, config.batch_size,
                                           torch.Generator().manual_seed(seed * 100 + 50 + j), lr=1e-3)
                        acc.append(_train_accuracy(model, data))
                scores.append(sum(acc) / len(acc))
            best = max(range(len(snapshots)), key=lambda i: scores[i])
            meta.load_state_dict(snapshots[best][1])
            meta.eval()
            result.selection.append({"seed": seed, "steps": [st for st, _ in snapshots], "val_accuracy": scores,
                                     "chosen": snapshots[best][0]})
            log(f"  snapshot chosen on {len(val_nets)} validation networks: step {snapshots[best][0]} ("
                + ", ".join(f"{st}: {100 * a:.1f}%" for (st, _), a in zip(snapshots, scores)) + ")")
        if config.strength_grid:
            # the edit's strength, one rule for every architecture: the s of the grid whose meta pipeline
            # at the largest speedup does best on the validation networks (training-split accuracy after
            # the fine-tune); s = 0 prunes the original network, i.e. what magnitude (or, with global_max,
            # the control) prunes
            s_max = max(config.speedups)
            val_edits = [edit(meta, vnet, config.apply_times) for vnet in val_nets]
            scores = []
            for strength in config.strength_grid:
                acc = []
                for j, (vnet, ved) in enumerate(zip(val_nets, val_edits)):
                    model, _, steps, _ = prune_by("meta", vnet, with_strength(vnet, ved, strength), s_max, seed,
                                                  50 + j, ws, params)
                    model = _train_net(model, data, steps, config.batch_size,
                                       torch.Generator().manual_seed(seed * 100 + 50 + j), lr=1e-3)
                    acc.append(_train_accuracy(model, data))
                scores.append(sum(acc) / len(acc))
            best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            s_chosen = float(config.strength_grid[best])
            result.strength.append({"seed": seed, "grid": list(config.strength_grid), "val_accuracy": scores,
                                    "chosen": s_chosen, "speedup": s_max, "n_val_nets": len(val_nets)})
            log(f"  edit strength chosen on {len(val_nets)} validation networks at {s_max}x: {s_chosen:g} ("
                + ", ".join(f"{s:g}: {100 * a:.1f}%" for s, a in zip(config.strength_grid, scores)) + ")")
        if config.out:
            Path(config.out).mkdir(parents=True, exist_ok=True)
            save_meta_pruner(meta, Path(config.out) / f"metapruner_seed{seed}.safetensors")

        # -- held-out networks: one forward pass, magnitude pruning, a short fine-tune
        bar = tqdm(total=len(test_nets) * len(config.speedups) * len(methods), desc=f"seed {seed}: held-out",
                   disable=not config.progress, leave=False)
        for j, net in enumerate(test_nets):
            edited = edit(meta, net, config.apply_times)
            chosen = with_strength(net, edited, s_chosen) if config.strength_grid else None
            before, after = norm_spread(ws, net), norm_spread(ws, edited)
            result.spread.append({"seed": seed, "net": j, "before": before, "after": after})
            log(f"  held-out net {j}: group-norm spread (mean CV) {before['cv']:.2f} -> {after['cv']:.2f}, "
                f"neurons under 10% of their group's largest {100 * before['small']:.0f}% -> "
                f"{100 * after['small']:.0f}%; edited accuracy {100 * _accuracy(edited, data):.1f}%")
            for s in config.speedups:
                for method in methods:
                    sizes = None
                    if method in known:
                        ed = chosen if known[method][0] == "chosen" else edited
                        model, reduction, steps, sizes = prune_by(method, net, ed, s, seed, j, ws, params)
                    else:
                        (model, reduction), steps = extra_methods[method](net, example, s, seed), config.finetune_steps
                    pruned_acc = _accuracy(model, data)   # extra methods too: the same test split
                    pruned = _train_net(model, data, steps, config.batch_size,
                                        torch.Generator().manual_seed(seed * 100 + j), lr=1e-3)
                    t_before, t_after = measure_latencies([net, pruned], (data.x_test,), repeats=10)
                    result.rows.append({"seed": seed, "net": j, "method": method, "speedup": s,
                                        "flops_reduction": reduction, "latency_speedup": t_before / t_after,
                                        "accuracy_before_finetune": pruned_acc, "accuracy": _accuracy(pruned, data)}
                                       | ({"kept": sizes} if sizes is not None else {}))
                    bar.update()
                log(f"  held-out net {j}, {s}x: " + ", ".join(
                    f"{r['method']} {100 * r['accuracy']:.1f}% ({100 * r['accuracy_before_finetune']:.1f}% "
                    f"before fine-tune)" for r in result.rows[-len(methods):]))
        bar.close()

    log(result.table())
    if config.out:
        _save(result, Path(config.out))
    return result


def _save(result: MetaPruneResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = asdict(result.config)
    (out / "results.json").write_text(json.dumps({"config": cfg, "rows": result.rows, "spread": result.spread,
                                                  "selection": result.selection, "strength": result.strength,
                                                  "meta_loss": result.meta_loss}, indent=1))
    (out / "results.md").write_text(
        "# Meta pruning: held-out accuracy (%) after pruning to a FLOP reduction and a short fine-tune\n\n"
        f"Config: `{json.dumps(cfg)}`\n\n" + result.table() + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in dict.fromkeys(r["method"] for r in result.rows):
        pts = sorted({r["speedup"] for r in result.rows if r["method"] == method})
        ax.plot(pts, [100 * result.mean(method, s) for s in pts], marker="o", label=method)
    ax.set_xlabel("FLOP reduction target (x)")
    ax.set_ylabel("held-out accuracy after fine-tune (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":   # python -m tasks.meta_prune [OUT]
    import sys
    run(MetaPruneConfig(out=sys.argv[1] if len(sys.argv) > 1 else "out/meta_prune"))
