"""Predict a network's test accuracy from its weights: zoo -> metanetwork -> Kendall τ
and R² on a held-out split.

>>> from tasks.predict_accuracy import AccuracyConfig, run
>>> result = run(AccuracyConfig(zoo="zoos/digits_cnn", model="gmn", epochs=10))
>>> result.test["tau"], result.best_dir          # best: GMN.from_pretrained(best_dir)

or ``metanet train accuracy --zoo zoos/digits_cnn --model gmn``.

The loop, top to bottom: config; data (the zoo split by network into train / val /
test, fixed by ``split_seed``; checkpoints streamed in batches: a
:class:`~metanet.graph.SharedBatch` per batch where the zoo holds one architecture, a
padded PyG Batch of mixed architectures otherwise); the model (GMN, NGT, NFN-HNP or
StatNN; its input normalisation fitted once on training batches and saved with it);
AdamW with a cosine schedule; each epoch one pass over the training split, then an
evaluation on the validation split; the best model by validation τ saved as
safetensors + config (``PyTorchModelHubMixin``), never the latest as "best"; metrics as
JSON lines and plots as PNG. The test split is scored once, with the best model.
Under ``torchrun`` each process trains on its share of every batch (see :func:`fit`).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import torchrun

__all__ = ["AccuracyConfig", "Result", "run", "kendall_tau", "r2_score", "zoo_batches", "apply_transform", "build_model",
           "load_model", "predict"]


@dataclass(frozen=True)
class AccuracyConfig:
    zoo: str                          # zoo folder or hf://user/repo
    model: str = "gmn"                # gmn | gmn_hybrid | ngt | nfn | statnn
    out: str = "out/accuracy"
    target: str = "test_acc"          # metric predicted
    steps: str = "all"                # "all" checkpoints of every network, or "last"
    layout: str = "compact"           # parameter-graph layout the model reads
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 32
    layers: int = 3
    seed: int = 0
    max_train: int | None = None      # cap on training checkpoints (smoke runs)
    preload: bool = True              # read a split of one or a few architectures into memory once
    progress: bool = True
    readout_norm: str | None = None   # GMN/NGT: "batch" standardises pooled features across networks
    device: str = "cpu"               # cpu | cuda | cuda:N | auto (the GPU when there is one)


@dataclass
class Result:
    best_epoch: int
    best_dir: str
    val: dict
    test: dict
    history: list = field(default_factory=list)
    seconds: float = 0.0
    train_networks_per_s: float = 0.0


# ----------------------------------------------------------------------------- metrics
def kendall_tau(pred, true) -> float:
    """Kendall's τ-b between two sequences (ties counted as in scipy's default)."""
    x, y = torch.as_tensor(pred, dtype=torch.float64).ravel(), torch.as_tensor(true, dtype=torch.float64).ravel()
    n = len(x)
    if n < 2:
        return float("nan")
    dx = torch.sign(x.view(-1, 1) - x.view(1, -1))
    dy = torch.sign(y.view(-1, 1) - y.view(1, -1))
    conc = (dx * dy).sum() / 2
    nx, ny = (dx != 0).sum() / 2, (dy != 0).sum() / 2
    if nx == 0 or ny == 0:
        return float("nan")
    return float(conc / torch.sqrt(nx * ny))


def r2_score(pred, true) -> float:
    p, t = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(true, dtype=torch.float64)
    ss = ((t - t.mean()) ** 2).sum()
    return float(1 - ((p - t) ** 2).sum() / ss) if ss > 0 else float("nan")


# ----------------------------------------------------------------------------- data
_STRUCTURE_OF: dict[str, tuple] = {}


def _structure_key(zoo, position: int, symmetries: bool = True) -> tuple:
    """Architectures with one parameter-graph structure and one set of symmetries share
    batches (e.g. one network with different dropout). The same network with ReLU and
    with tanh has one graph but different groups (positive scalings against sign flips),
    so a batch, which carries one WeightSpace, never mixes them: canonical forms and
    augmentations read its groups. The space is the zoo's own (``Zoo.weight_space``,
    which draws nothing from the caller's random stream)."""
    from zoo.models import arch_key

    rec = zoo.record(position)
    key = arch_key(rec["arch"], zoo._graph_kwargs(rec))
    if key not in _STRUCTURE_OF:
        ws = zoo.weight_space(position)
        sp = ws.spaces
        _STRUCTURE_OF[key] = (tuple(ws.weights), tuple((k, tuple(sp.axes[k])) for k in ws.weights),
                              tuple(sp.sizes), tuple(sp.free), tuple(sp.neuron),
                              tuple((g.size, g.scaling, g.sign) for g in ws.groups))
    return _STRUCTURE_OF[key] if symmetries else _STRUCTURE_OF[key][:-1]


def _by_arch(zoo, positions, symmetries: bool = True) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for p in positions:
        groups[_structure_key(zoo, p, symmetries)].append(p)
    return groups


def apply_transform(transform: Callable | None, stack: dict, y: torch.Tensor | None):
    """``(stack, y)`` after a batch transform: a weight-space augmentation maps the
    stack (``transform(stack)``); a MixUp maps both (``transform(stack, y)``, labels
    mixed, integer classes as one-hot rows)."""
    if transform is None:
        return stack, y
    from metanet.augment import MixUp

    if isinstance(transform, MixUp):
        return transform(stack, y) if y is not None else (transform(stack), None)
    return transform(stack), y


def zoo_batches(zoo, batch_size: int, layout: str = "compact", *, target: str | None = None,
                shuffle: bool = False, seed: int = 0, target_fn: Callable | None = None,
                transform: Callable | None = None, shard: tuple[int, int] = (0, 1)
                ) -> Iterator[tuple[object, torch.Tensor | None]]:
    """Stream ``(graphs, targets)`` batches from a zoo view: a SharedBatch where a batch
    holds one architecture, else a padded PyG Batch (metanet.graph.collate). Targets come
    from field ``target`` (or ``target_fn(zoo_view)``). ``transform`` (a
    :mod:`metanet.augment` transform or MixUp of the zoo's weight space) maps each
    batch's stacked weights, and MixUp its targets, before conversion; it needs batches
    of one architecture. ``shard=(rank, world)``: only rows ``rank::world`` of each batch
    are read (a torchrun process's share; ``(None, empty targets)`` when a short last
    batch leaves it none)."""
    from metanet.graph import SharedBatch, collate

    order = np.random.default_rng(seed).permutation(len(zoo)) if shuffle else np.arange(len(zoo))
    for a in range(0, len(order), batch_size):
        pos = order[a:a + batch_size].tolist()[shard[0]::shard[1]]
        if not pos:
            yield None, torch.empty(0)
            continue
        groups = _by_arch(zoo, pos)
        view = zoo.subset(pos)
        y = target_fn(view) if target_fn is not None else (view.targets(target) if target else None)
        if len(groups) == 1:
            stack, y = apply_transform(transform, zoo.stacked(pos), y)
            graphs = SharedBatch.of(zoo.weight_space(pos[0]), stack, layout)
        elif transform is not None:
            raise ValueError(f"a batch transform maps stacks of one architecture; this batch holds "
                             f"{len(groups)}: filter the zoo (zoo.where(arch=...)) or train without one")
        else:   # mixed: convert each architecture at once, then one padded batch in order
            where = {}
            for group in groups.values():
                b = zoo.weight_space(group[0]).graphs(zoo.stacked(group), layout)
                for p, d in zip(group, b.to_data_list()):
                    where[p] = d
            graphs = collate([where[p] for p in pos])
        yield graphs, y


def _preloadable(view, batch_size: int) -> bool:
    """Whether fit() reads a view into memory (:class:`Preloaded`): where each of its
    structures fills a batch (one or a few architectures); a zoo of many architectures
    streams padded batches instead."""
    groups = _by_arch(view, range(len(view)))
    return all(len(g) >= min(batch_size, len(view)) for g in groups.values())


class Preloaded:
    """A zoo view read into memory once (in chunks, per parameter-graph structure; see
    :func:`_structure_key`), then served as SharedBatches of one structure each by
    indexing: for zoos whose weights fit in memory, it saves re-reading the shards every
    epoch."""

    def __init__(self, zoo, layout: str, target: str | None, target_fn: Callable | None, chunk: int = 512):
        self.layout = layout
        y = target_fn(zoo) if target_fn is not None else (zoo.targets(target) if target else None)
        self.parts = []     # (weight space, stacked weights, targets) per structure
        for positions in _by_arch(zoo, range(len(zoo))).values():
            view = zoo.subset(positions)
            chunks = [view.stacked(range(a, min(a + chunk, len(view)))) for a in range(0, len(view), chunk)]
            stacked = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
            self.parts.append((view.weight_space(0), stacked, None if y is None else y[torch.as_tensor(positions)]))

    def __len__(self) -> int:
        return sum(len(next(iter(st.values()))) for _, st, _ in self.parts)

    def plan(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> list[tuple[int, torch.Tensor]]:
        """``(part, rows)`` of every batch, in order; with several structures, batches of
        each interleave."""
        rng = np.random.default_rng(seed)
        plan = []
        for i, (_, st, _) in enumerate(self.parts):
            n = len(next(iter(st.values())))
            order = torch.from_numpy(rng.permutation(n)) if shuffle else torch.arange(n)
            plan += [(i, order[a:a + batch_size]) for a in range(0, n, batch_size)]
        if shuffle and len(self.parts) > 1:
            plan = [plan[j] for j in rng.permutation(len(plan))]
        return plan

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0,
                transform: Callable | None = None, shard: tuple[int, int] = (0, 1)):
        from metanet.graph import SharedBatch

        for i, idx in self.plan(batch_size, shuffle, seed):
            ws, stacked, y = self.parts[i]
            idx = idx[shard[0]::shard[1]]   # this process's rows (see zoo_batches)
            if len(idx) == 0:
                yield None, torch.empty(0)
                continue
            stack, y = apply_transform(transform, {k: v[idx] for k, v in stacked.items()},
                                       None if y is None else y[idx])
            yield SharedBatch.of(ws, stack, self.layout, check=False), y


# ----------------------------------------------------------------------------- model
def build_model(kind: str, zoo, *, layout: str, hidden: int, layers: int, out_dim: int,
                readout_norm: str | None = None):
    """A fresh metanetwork of ``kind`` sized for the architectures of ``zoo``;
    ``readout_norm`` is GMN's and NGT's option (:class:`metanet.nn.GMN`), refused for
    the models without that readout."""
    from metanet.nn import GMN, NFN, NGT, StatNN

    groups = _by_arch(zoo, range(len(zoo)), symmetries=False)   # the models read the graph, not the scalings
    spaces = [zoo.weight_space(g[0]) for g in groups.values()]
    width = max(ws.layout(layout).width for ws in spaces)
    norm = {} if readout_norm is None else {"readout_norm": readout_norm}
    if norm and kind not in ("gmn", "gmn_hybrid", "ngt"):
        raise ValueError(f"readout_norm is an option of gmn, gmn_hybrid and ngt, not of {kind!r}")
    if kind == "gmn":
        return GMN(in_width=width, hidden=hidden, layers=layers, out_dim=out_dim, **norm)
    if kind == "gmn_hybrid":    # GMN + StatNN's statistics of the input weights, outputs summed
        return GMN(in_width=width, hidden=hidden, layers=layers, out_dim=out_dim,
                   weight_stats_bins=8, weight_stats_fusion="sum", **norm)
    if kind == "ngt":
        return NGT(in_width=width, hidden=hidden, layers=layers, heads=4 if hidden % 4 == 0 else 1,
                   out_dim=out_dim, **norm)
    if kind == "nfn":
        if len(spaces) > 1:
            raise ValueError(f"NFN reads one MLP/CNN weight space; this zoo holds {len(spaces)} "
                             f"architectures: filter it (zoo.where(arch=...)) or use gmn/ngt/statnn")
        return NFN.for_space(spaces[0], layout, "hnp", hidden=hidden, layers=layers, out_dim=out_dim)
    if kind == "statnn":
        return StatNN(hidden=max(hidden, 32), out_dim=out_dim)
    raise ValueError(f"unknown model {kind!r}: gmn, gmn_hybrid, ngt, nfn or statnn")


def load_model(path: str | Path):
    """A metanetwork saved by a task (``best/``), whatever its kind."""
    from metanet.nn import MODELS

    meta = json.loads((Path(path) / "task.json").read_text())
    # huggingface_hub prints a line when it loads from a folder: keep stdout for results
    with contextlib.redirect_stdout(io.StringIO()):
        model = MODELS[meta["model"]].from_pretrained(str(path))
    return model, meta


@torch.no_grad()
def predict(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of ``model`` on every batch (moved to the model's device), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    preds, ys = [], []
    for graphs, y in batches:
        preds.append(model(graphs.to(device)).squeeze(-1).cpu())
        if y is not None:
            ys.append(y)
    return torch.cat(preds), (torch.cat(ys) if ys else torch.empty(0))


# ----------------------------------------------------------------------------- the loop
def _regression_scores(pred, y) -> dict:
    return {"tau": kendall_tau(pred, y), "r2": r2_score(pred, y), "mse": float(((pred - y) ** 2).mean())}


def fit(config, *, out_dim: int, loss_fn, scores_fn, key: str, target_fn: Callable | None = None,
        split_by: str = "job", plot_fn: Callable | None = None, model: torch.nn.Module | None = None,
        transform: Callable | None = None) -> Result:
    """The training loop shared by the metanetwork tasks (see the module docstring).
    ``split_by``: the record field whose values stay in one part of the split (a zoo whose
    records all lack it, such as imported INRs, splits by network).
    ``model``: a ready metanetwork instead of ``config.model`` (e.g. a baseline from
    another package; it needs ``fit_normalization`` and ``save_pretrained``).
    ``transform``: a weight-space augmentation (or MixUp) applied to every training
    batch, never to validation or test batches (see :func:`apply_transform`); with MixUp
    the loss receives mixed targets (soft class rows for a classifier).

    ``config.device`` (:func:`tasks.torchrun.pick_device`): the model trains there and
    every batch is read on the CPU, then moved to it; predictions come back to the CPU.

    Under ``torchrun`` (:mod:`tasks.torchrun`; gloo on the CPU, nccl on GPUs, one GPU
    per process) each
    process trains on its share of every global batch and gradients are summed across
    processes, so the run follows the one-process run with the same ``batch_size`` to
    float rounding (a transform draws its randomness per share, so with one it does
    not); rank 0 evaluates, logs and saves, the other processes return a Result
    without scores."""
    from tqdm.auto import tqdm
    from zoo import Zoo

    t0 = time.perf_counter()
    device = torchrun.pick_device(getattr(config, "device", "cpu"))
    rank, world = torchrun.init(device)   # read once: below, only the batch share, logging and saving use them
    main = rank == 0
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    # data: a fixed split by network; checkpoints stream from the zoo in batches
    zoo = Zoo.open(config.zoo)
    if config.steps == "last":
        zoo = zoo.where(step="last")
    if all(v is None for v in zoo.column(split_by)):
        split_by = "job"   # e.g. imported INRs: no "image" field, one network per image
    train, val, test = zoo.split(list(config.split), seed=config.split_seed, by=split_by)
    if config.max_train is not None and len(train) > config.max_train:
        train = train.subset(np.random.default_rng(config.seed).permutation(len(train))[:config.max_train].tolist())
    tgt = None if target_fn is not None else config.target

    cache: dict[int, Preloaded] = {}

    def batches(view, shuffle=False, epoch=0, transform=None, shard=(0, 1)):
        seed = config.seed * 1000 + epoch
        if id(view) not in cache and config.preload and _preloadable(view, config.batch_size):
            cache[id(view)] = Preloaded(view, config.layout, tgt, target_fn)
        if id(view) in cache:   # grouped once, not again every epoch
            return cache[id(view)].batches(config.batch_size, shuffle, seed, transform, shard)
        return zoo_batches(view, config.batch_size, config.layout, target=tgt, target_fn=target_fn,
                           shuffle=shuffle, seed=seed, transform=transform, shard=shard)

    # model, with its input statistics from (a few) training batches
    if model is None:
        model = build_model(config.model, train, layout=config.layout, hidden=config.hidden,
                            layers=config.layers, out_dim=out_dim,
                            readout_norm=config.readout_norm)
    # (fitted on the CPU, where the batches are read; the fitted model then moves to the device)
    model.fit_normalization([g for g, _ in _take(batches(train, shuffle=True), 8)])
    model.to(device)
    torchrun.broadcast(model)       # every process starts from rank 0's model
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    def global_sizes(view, epoch):   # rows of every global batch of a training epoch, in order
        if id(view) in cache:
            return [len(idx) for _, idx in cache[id(view)].plan(config.batch_size, True, config.seed * 1000 + epoch)]
        return [min(config.batch_size, len(view) - a) for a in range(0, len(view), config.batch_size)]

    steps_per_epoch = len(global_sizes(train, 0))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs * steps_per_epoch))
    # loop: train one epoch, evaluate on validation, keep the best
    best, best_epoch, history, seen, train_s = -math.inf, -1, [], 0, 0.0
    log = (out / "metrics.jsonl").open("w") if main else None
    for epoch in range(config.epochs):
        model.train()
        total, count = 0.0, 0
        t_ep = time.perf_counter()
        bar = tqdm(batches(train, shuffle=True, epoch=epoch, transform=transform, shard=(rank, world)),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not (config.progress and main), leave=False)
        for (graphs, y), n in zip(bar, global_sizes(train, epoch), strict=True):   # n: the global batch
            # this process's rows, weighted by their share of the global batch (all of it in
            # one process); the sum over processes is the global batch's loss and gradient
            if len(y):
                graphs, y = graphs.to(device), y.to(device)
            loss = loss_fn(model(graphs), y) * (len(y) / n) if len(y) else torch.zeros((), device=device)
            opt.zero_grad()
            if loss.requires_grad:
                loss.backward()
            loss = float(torchrun.sum_gradients(model.parameters(), loss)[0])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total, count = total + loss * n, count + n
            bar.set_postfix(loss=f"{total / count:.4g}")
        train_s += time.perf_counter() - t_ep
        seen += count
        if main:   # evaluate, log and keep the best on rank 0; the others wait at the barrier
            pred, y = predict(model, batches(val))
            scores = scores_fn(pred, y)
            row = {"epoch": epoch + 1, "train_loss": total / max(count, 1),
                   **{f"val_{k}": v for k, v in scores.items()},
                   "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
            history.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            # checkpoint: the best by the validation score, explicitly tracked
            if not math.isnan(scores[key]) and scores[key] > best:
                best, best_epoch = scores[key], epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.save_pretrained(str(out / "best"))
                (out / "best" / "task.json").write_text(json.dumps(
                    {"model": config.model, "epoch": best_epoch, "config": asdict(config), "val": scores}, indent=1))
            if config.progress:
                print(f"epoch {epoch + 1}: train loss {row['train_loss']:.4g}, val {key} {scores[key]:.4f}")
        torchrun.barrier()
    # test once, with the best model
    val_scores, test_scores = {}, {}
    if main:
        log.close()
        if best_epoch > 0:
            model.load_state_dict(best_state)
        pred, y = predict(model, batches(test))
        test_scores = scores_fn(pred, y)
        val_scores = history[best_epoch - 1] if best_epoch > 0 else {}
        (out / "result.json").write_text(json.dumps({"best_epoch": best_epoch, "test": test_scores,
                                                     "val": val_scores, "config": asdict(config)}, indent=1))
        _plot_curves(history, key, out / "learning_curves.png")
        if plot_fn is not None:
            plot_fn(pred, y, out)
    torchrun.close()
    return Result(best_epoch, str(out / "best"), val_scores, test_scores, history,
                  time.perf_counter() - t0, seen / train_s if train_s else 0.0)


def _take(it, n):
    for i, v in enumerate(it):
        if i >= n:
            return
        yield v


def _plot_curves(history, key, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    ax[0].plot(ep, [h["train_loss"] for h in history])
    ax[0].set(xlabel="epoch", ylabel="train loss", yscale="log")
    ax[1].plot(ep, [h[f"val_{key}"] for h in history])
    ax[1].set(xlabel="epoch", ylabel=f"validation {key}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_scatter(pred, y, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(y.numpy(), pred.numpy(), s=4, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="true accuracy", ylabel="predicted accuracy",
           title=f"test: τ={kendall_tau(pred, y):.3f}, R²={r2_score(pred, y):.3f}")
    fig.tight_layout()
    fig.savefig(out / "predicted_vs_true.png", dpi=100)
    plt.close(fig)


def run(config: AccuracyConfig) -> Result:
    def mse(pred, y):
        return ((pred.squeeze(-1) - y) ** 2).mean()

    return fit(config, out_dim=1, loss_fn=mse, scores_fn=_regression_scores, key="tau",
               plot_fn=_plot_scatter)
