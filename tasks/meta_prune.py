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
    lr: float = 1e-3
    speedups: tuple[float, ...] = (1.5, 2.0, 3.0)
    finetune_steps: int = 50
    batch_size: int = 128
    seeds: tuple[int, ...] = (0,)
    out: str | None = None            # folder for results.json, results.md and accuracy.png


@dataclass
class MetaPruneResult:
    config: MetaPruneConfig
    rows: list[dict] = field(default_factory=list)   # seed, method, speedup, flops_reduction, latency, accuracy
    meta_loss: list[float] = field(default_factory=list)

    def mean(self, method: str, speedup: float) -> float:
        acc = [r["accuracy"] for r in self.rows if r["method"] == method and r["speedup"] == speedup]
        return sum(acc) / max(len(acc), 1)

    def table(self) -> str:
        methods = list(dict.fromkeys(r["method"] for r in self.rows))
        speedups = list(dict.fromkeys(r["speedup"] for r in self.rows))
        lines = ["| FLOP reduction target | " + " | ".join(methods) + " | latency speed-up (meta) |",
                 "|---" * (len(methods) + 2) + "|"]
        for s in speedups:
            lat = [r["latency_speedup"] for r in self.rows if r["method"] == "meta" and r["speedup"] == s]
            lines.append(f"| {s}x | " + " | ".join(f"{100 * self.mean(m, s):.1f}" for m in methods)
                         + f" | {sum(lat) / max(len(lat), 1):.2f}x |")
        return "\n".join(lines)


def group_lasso(ws, stacked: dict[str, torch.Tensor], names: set[str]) -> torch.Tensor:
    """Sum over networks, groups and neurons of each neuron's L2 norm over the tensors of its
    group (``stacked``: ``{name: [B, ...]}``; only tensors in ``names``). Differentiable."""
    from metanet.prune.core import _positions

    total = 0.0
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
            total = total + (acc + 1e-12).sqrt().sum()
    return total


class MetaPruner(nn.Module):
    """A GMN edge head writing a correction to every weight: ``new = old + gate * delta``."""

    def __init__(self, ws, in_width: int, hidden: int, layers: int, layout: str = "compact"):
        super().__init__()
        from metanet.nn import GMN

        self.ws, self.layout = ws, layout
        self.in_width, self.hidden = in_width, hidden
        self.gmn = GMN(in_width=in_width, hidden=hidden, layers=layers, edge_out=in_width)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, stacked: dict[str, torch.Tensor], editable: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Edited stacked checkpoints; only tensors in ``editable`` (the parameters: running
        statistics of norms stay as they are) change, all floating tensors when None."""
        from metanet.graph import SharedBatch

        g = SharedBatch.of(self.ws, stacked, layout=self.layout)
        delta = self.ws.state_dicts(self.gmn.edit(g))
        return {k: v + self.gate * delta[k]
                if k in delta and v.is_floating_point() and (editable is None or k in editable) else v
                for k, v in stacked.items()}


def save_meta_pruner(meta: MetaPruner, path) -> None:
    """The metanetwork's weights as safetensors, its sizes in the metadata (no pickle)."""
    from safetensors.torch import save_model

    gmn = meta.gmn
    meta_info = {"in_width": str(meta.in_width), "hidden": str(meta.hidden), "layers": str(len(gmn.layers)),
                 "layout": meta.layout}
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
                      info.get("layout", "compact"))
    load_model(meta, str(path))
    return meta.eval()


@torch.no_grad()
def edit(meta: MetaPruner, model: nn.Module) -> nn.Module:
    """One forward pass of the metanetwork: a copy of ``model`` with the edited weights."""
    import copy

    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    new = {k: v[0] for k, v in meta({k: v.unsqueeze(0) for k, v in model.state_dict().items()}, params).items()}
    out = copy.deepcopy(model)
    out.load_state_dict(new)
    return out.eval() if not model.training else out


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


def run(config: MetaPruneConfig = MetaPruneConfig(), log: Callable[[str], None] = print,
        extra_methods: dict[str, Callable] | None = None) -> MetaPruneResult:
    """Run the job. ``extra_methods`` adds baselines: ``{name: fn(net, example_inputs, speedup,
    seed) -> (pruned model, FLOP reduction)}``, evaluated like the others (e.g. another
    library's pruner, see benchmarks/prune.py)."""
    from metanet.prune import measure_latencies, prune
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

    for seed in config.seeds:
        # -- zoo: networks trained here; the held-out ones are never seen in meta-training
        gen = torch.Generator().manual_seed(seed)
        nets = []
        t0 = time.perf_counter()
        for i in range(config.n_train_nets + config.n_test_nets):
            torch.manual_seed(1000 * seed + i)
            nets.append(_train_net(make(), data, config.net_steps, config.batch_size, gen))
        train_nets, test_nets = nets[:config.n_train_nets], nets[config.n_train_nets:]
        log(f"seed {seed}: trained {len(nets)} networks in {time.perf_counter() - t0:.0f} s, held-out accuracy "
            + ", ".join(f"{100 * _accuracy(n, data):.1f}" for n in test_nets))

        # -- metanetwork
        ws = WeightSpace.of(train_nets[0], example)
        params = {n for n, _ in train_nets[0].named_parameters()}
        width = int(ws.layout("compact").width)
        meta = MetaPruner(ws, width, config.hidden, config.layers)
        opt = torch.optim.AdamW(meta.parameters(), lr=config.lr)
        stacked_all = {k: torch.stack([n.state_dict()[k] for n in train_nets]) for k in ws.keys}
        template = make().eval()

        # -- meta-training: task loss of the edited networks + group lasso
        for step in range(config.meta_steps):
            pick = torch.randperm(len(train_nets), generator=gen)[:config.meta_batch]
            stacked = {k: v[pick] for k, v in stacked_all.items()}
            new = meta(stacked, params)
            idx = torch.randint(0, len(data.y_train), (config.batch_size,), generator=gen)
            x, y = data.x_train[idx], data.y_train[idx]
            task = sum(F.cross_entropy(functional_call(template, {k: v[b] for k, v in new.items()}, (x,)), y)
                       for b in range(len(pick))) / len(pick)
            sparsity = group_lasso(ws, new, params) / len(pick)
            loss = task + config.lam * sparsity
            opt.zero_grad()
            loss.backward()
            opt.step()
            result.meta_loss.append(float(loss.detach()))
            if step % max(config.meta_steps // 5, 1) == 0 or step == config.meta_steps - 1:
                log(f"  meta step {step + 1}/{config.meta_steps}: task {float(task.detach()):.3f}  group lasso "
                    f"{float(sparsity.detach()):.1f}  gate {float(meta.gate.detach()):.3f}")

        meta.eval()
        if config.out:
            Path(config.out).mkdir(parents=True, exist_ok=True)
            save_meta_pruner(meta, Path(config.out) / f"metapruner_seed{seed}.safetensors")
        # -- held-out networks: one forward pass, magnitude pruning, a short fine-tune
        for j, net in enumerate(test_nets):
            edited = edit(meta, net)
            sources = {"random": (net, "random"), "magnitude": (net, "magnitude"), "meta": (edited, "magnitude")}
            methods = list(sources) + list(extra_methods or {})
            for s in config.speedups:
                for method in methods:
                    if method in sources:
                        src, crit = sources[method]
                        res = prune(src, example, crit, speedup=s, latency=False, ws=ws,
                                    generator=torch.Generator().manual_seed(seed * 100 + j))
                        model, reduction = res.model, res.flops_reduction
                    else:
                        model, reduction = extra_methods[method](net, example, s, seed)
                    pruned = _train_net(model, data, config.finetune_steps, config.batch_size,
                                        torch.Generator().manual_seed(seed * 100 + j), lr=1e-3)
                    t_before, t_after = measure_latencies([net, pruned], (data.x_test[:64],), repeats=10)
                    row = {"seed": seed, "net": j, "method": method, "speedup": s,
                           "flops_reduction": reduction, "latency_speedup": t_before / t_after,
                           "accuracy": _accuracy(pruned, data)}
                    result.rows.append(row)
                log(f"  held-out net {j}, {s}x: " + ", ".join(
                    f"{r['method']} {100 * r['accuracy']:.1f}%" for r in result.rows[-len(methods):]))

    log(result.table())
    if config.out:
        _save(result, Path(config.out))
    return result


def _save(result: MetaPruneResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg = asdict(result.config)
    (out / "results.json").write_text(json.dumps({"config": cfg, "rows": result.rows,
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
