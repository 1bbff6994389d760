"""Meta-train a GHN to predict initial parameters of unseen architectures.

>>> from tasks.predict_init import PredictInitConfig, run
>>> result = run(PredictInitConfig(dataset="digits", steps=500, out="out/ghn"))
>>> result.best_val_acc, result.best_dir     # out/ghn/best: GHN.from_pretrained(...)

or ``metanet train ghn --dataset digits --steps 500 --out out/ghn``.

The loop, top to bottom: config; data (an offline dataset of :mod:`zoo.data`);
architectures (the zoo's random sampler: training seeds ``[0, n_archs)``, validation
seeds from ``VAL_SEED0`` on, so validation architectures are never trained on); the
GHN and its optimizer (resumed from ``out/last`` when a run was interrupted); the loop
(each step: a meta-batch of architectures, their parameters predicted, the mean task
loss of the predicted networks on one minibatch, one update of the GHN); evaluation on
the validation architectures, checkpoints (``last`` every ``ckpt_every`` steps, ``best``
when validation accuracy improves); logging through a progress bar and
``out/history.jsonl``.

Every random choice of step ``t`` (architectures, minibatch) comes from a generator
seeded with ``(seed, t)``: a resumed run takes the same steps as an uninterrupted one.

``device`` (:func:`tasks.torchrun.pick_device`): the GHN, the data and every
architecture live there. Under ``torchrun`` (:mod:`tasks.torchrun`; gloo on the CPU,
nccl on GPUs, one GPU per process) every
process takes the same steps; each predicts its share of the step's meta-batch,
gradients (and the GHN's count of op kinds seen) are summed across processes before
the update, so the GHN stays identical everywhere; only rank 0 evaluates, logs and
writes checkpoints.

Checkpoints are safetensors + JSON: ``GHN.save_pretrained`` (``model.safetensors``,
``config.json``), the optimizer's tensors in ``optimizer.safetensors`` (its
hyperparameters in the file's metadata), and ``state.json`` (step, best accuracy).
Nothing is pickled.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import torchrun

__all__ = ["PredictInitConfig", "PredictInitResult", "run", "sample_archs", "build_arch", "load_data",
           "predicted_accuracy", "accuracy", "calibrate_norms", "VAL_SEED0"]

VAL_SEED0 = 1_000_000  # validation/test architectures: sampler seeds from here on
DATASETS = ("digits", "mnist1d", "shapes32", "cifar10")


# settings a resumed run must share with the one it continues (saved in state.json)
RESUME_FIELDS = ("dataset", "steps", "meta_batch", "batch_size", "lr", "warmup", "weight_decay", "grad_clip",
                 "loss_cap", "n_archs", "val_archs", "seed")


@dataclass(frozen=True)
class PredictInitConfig:
    dataset: str = "digits"           # digits (8x8 images) | mnist1d (length-40 sequences) |
                                      # shapes32 (synthetic 32x32 images) | cifar10 (needs data_root)
    data_root: str = ""               # folder holding a local copy of CIFAR-10
    out: str = "out/ghn"
    steps: int = 1000
    meta_batch: int = 8               # architectures per step
    batch_size: int = 64              # images per step (shared by the meta-batch)
    lr: float = 3e-3                  # peak; 1000 steps at 3e-3 predict 0.79 of trained accuracy on unseen
                                      # digits archs against 0.50 at 3e-4 (benchmarks/hyper.md, lr screen)
    warmup: int = 50                  # linear warm-up steps before the cosine schedule
    weight_decay: float = 1e-5
    grad_clip: float = 5.0
    loss_cap: float = 5.0             # an architecture's loss above this is scaled down to it
    n_archs: int = 300                # training architectures (sampler seeds 0..n_archs-1)
    train_seeds: tuple = ()           # if given, these sampler seeds instead of 0..n_archs-1
                                      # (e.g. to leave out architectures kept for testing)
    val_archs: int = 16               # validation architectures (seeds VAL_SEED0...)
    eval_every: int = 100
    ckpt_every: int = 100
    seed: int = 0
    resume: bool = True
    stop_at: int = 0                  # stop after this step (0: never), to resume later
    progress: bool = True
    device: str = "cpu"               # cpu | cuda | cuda:N | auto (the GPU when there is one); a run
                                      # may resume on another device
    ghn: dict = field(default_factory=lambda: dict(gnn="transformer", decoder="tiled"))

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        for name in ("steps", "meta_batch", "batch_size", "n_archs", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.train_seeds:
            if len(set(self.train_seeds)) != len(self.train_seeds):
                raise ValueError("train_seeds must not repeat a seed")
            if len(self.train_seeds) != self.n_archs:
                raise ValueError(f"n_archs ({self.n_archs}) must equal len(train_seeds) ({len(self.train_seeds)})")


@dataclass
class PredictInitResult:
    steps: int
    best_val_acc: float
    best_step: int
    final_val_acc: float
    history: list[dict]
    best_dir: str
    last_dir: str
    seconds: float


# ------------------------------------------------------------------------------ architectures
def sample_archs(dataset: str, seeds: Sequence[int]) -> list[tuple[str, dict]]:
    """``(name, kwargs)`` of the sampler's architectures for ``seeds`` (one per seed)
    that read ``dataset``'s inputs: 8x8 images for digits; length-40 sequences for
    mnist1d (1-D CNNs and transformers); 32x32 images for shapes32 (one channel) and
    cifar10 (three)."""
    from zoo.models import sample_architecture

    out = []
    for s in seeds:
        rng = np.random.default_rng(int(s))
        if dataset == "digits":
            out.append(sample_architecture(rng, in_channels=1, n_classes=10, input_size=8))
        elif dataset in ("shapes32", "cifar10"):
            out.append(sample_architecture(rng, in_channels=3 if dataset == "cifar10" else 1,
                                           n_classes=10, input_size=32))
        elif dataset == "mnist1d":
            name, kw = sample_architecture(rng, in_channels=1, n_classes=10, input_size=40,
                                           families=("cnn", "tiny_transformer"))
            out.append((name, dict(kw, ndim=1)))
        else:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    return out


def load_data(dataset: str, data_root: str = ""):
    """The :class:`zoo.data.Splits` of ``dataset``: shapes32 is the zoo's synthetic
    ``shapes`` dataset at 32x32 pixels; cifar10 reads a local copy under ``data_root``."""
    from zoo.data import load_dataset

    if dataset == "shapes32":
        return load_dataset("shapes", size=32)
    if dataset == "cifar10":
        return load_dataset("cifar10", root=data_root or None)
    return load_dataset(dataset)


def build_arch(arch: tuple[str, dict], seed: int | None = None) -> nn.Module:
    """The zoo model of ``arch`` (initialised by its own default init, seeded)."""
    import zoo

    if seed is not None:
        torch.manual_seed(seed)
    return zoo.create(arch[0], **arch[1])


# --------------------------------------------------------------------------------- evaluation
_NORMS = (nn.modules.batchnorm._BatchNorm,)


@torch.no_grad()
def calibrate_norms(model: nn.Module, params: dict | None, x: torch.Tensor) -> None:
    """Set BatchNorm running statistics to the statistics of ``x`` under ``params``
    (one forward pass in train mode with cumulative averaging), so that eval mode
    sees statistics that fit the parameters being evaluated."""
    bns = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not bns:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was = model.training
    model.train()
    try:
        torch.func.functional_call(model, dict(params or {}), (x,), strict=False)
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was)


@torch.no_grad()
def accuracy(model: nn.Module, params: dict | None, x: torch.Tensor, y: torch.Tensor,
             calib: torch.Tensor | None = None, chunk: int = 2048) -> float:
    """Test accuracy of ``model`` under ``params`` (None: its own), eval mode, after
    :func:`calibrate_norms` on ``calib`` when given."""
    if calib is not None:
        calibrate_norms(model, params, calib)
    model.eval()
    correct = 0
    for i in range(0, len(y), chunk):
        out = torch.func.functional_call(model, dict(params or {}), (x[i:i + chunk],), strict=False)
        correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    return correct / max(len(y), 1)


def predicted_accuracy(ghn, models: Sequence[nn.Module], data, n_calib: int = 512) -> list[float]:
    """Accuracy of ``ghn``'s predicted parameters for each model on ``data``'s test split."""
    was = ghn.training
    ghn.eval()
    try:
        calib = data.x_train[:n_calib]
        out = []
        for m in models:
            with torch.no_grad():
                p = ghn.predict(m)
            out.append(accuracy(m, p, data.x_test, data.y_test, calib))
        return out
    finally:
        ghn.train(was)


# ------------------------------------------------------------------------------- checkpoints
def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{idx}.{k}"] = (v if isinstance(v, torch.Tensor) else torch.tensor(v)).contiguous()
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(sd["param_groups"])})


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open

    state: dict[int, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        for key in f.keys():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = f.get_tensor(key)
    opt.load_state_dict({"state": state, "param_groups": groups})


def _atomic_dir(save, final: Path) -> None:
    """Write a checkpoint folder next to ``final``, then swap it in."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------- run
def run(config: PredictInitConfig, on_step=None) -> PredictInitResult:
    """Meta-train as ``config`` says. ``on_step(step, ghn)``, if given, is called on the
    main process after every step (``step`` counts the steps done), e.g. to evaluate
    the GHN at chosen steps of one run; the global torch random state is restored after
    it, so a hook does not change the run."""
    from tqdm.auto import tqdm

    from metanet.hyper import GHN

    cfg = config
    device = torchrun.pick_device(cfg.device)
    rank, world = torchrun.init(device)   # read once; below only logging and saving depend on it
    main = rank == 0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last_dir, best_dir = out / "last", out / "best"
    t0 = time.time()

    # data
    data = load_data(cfg.dataset, cfg.data_root)
    if device.type != "cpu":
        data = replace(data, **{k: getattr(data, k).to(device)
                                            for k in ("x_train", "y_train", "x_test", "y_test")})
    xs, ys = data.x_train, data.y_train

    # architectures: training pool built lazily (traced on first use), validation fixed
    train_archs = sample_archs(cfg.dataset, cfg.train_seeds or range(cfg.n_archs))
    pool: dict[int, nn.Module] = {}

    def model_of(i: int) -> nn.Module:
        if i not in pool:
            pool[i] = build_arch(train_archs[i], seed=i).to(device)
        return pool[i]

    val_models = [build_arch(a, seed=VAL_SEED0 + j).to(device)
                  for j, a in enumerate(sample_archs(cfg.dataset, range(VAL_SEED0, VAL_SEED0 + cfg.val_archs)))]

    # the GHN and its optimizer, resumed when a previous run left a checkpoint
    torch.manual_seed(cfg.seed)
    # what a resumed run must share with the run it continues (a changed learning rate or
    # step count would otherwise resume silently on another schedule)
    run_key = {k: getattr(cfg, k) for k in RESUME_FIELDS}
    run_key["train_seeds"] = list(cfg.train_seeds)
    state = {"step": 0, "best_val_acc": -1.0, "best_step": 0, "run": run_key}
    resumed = cfg.resume and (last_dir / "state.json").exists()
    if resumed:
        ghn = GHN.from_pretrained(last_dir)
        state = json.loads((last_dir / "state.json").read_text())
        if ghn.config != GHN(**cfg.ghn).config:
            raise ValueError(f"{last_dir} holds a GHN with config {ghn.config}, not the requested "
                             f"{cfg.ghn}; use another --out or pass --no-resume to start over")
        saved = state.setdefault("run", run_key)   # a state saved before the key: nothing to compare
        differ = {k: (saved.get(k), v) for k, v in run_key.items() if saved.get(k, v) != v}
        if differ:
            raise ValueError(f"{last_dir} holds a run with other settings ("
                             + ", ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in differ.items())
                             + "); use another --out or pass --no-resume to start over")
    else:
        ghn = GHN(**cfg.ghn)
    ghn.to(device)
    opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if resumed:
        load_optimizer(opt, last_dir / "optimizer.safetensors")
    history_path = out / "history.jsonl"
    history = [json.loads(l) for l in history_path.read_text().splitlines()] if resumed and history_path.exists() else []
    history = [h for h in history if h["step"] <= state["step"]]

    def save(step: int) -> None:
        def write(d: Path) -> None:
            ghn.save_pretrained(d)
            save_optimizer(opt, d / "optimizer.safetensors")
            (d / "state.json").write_text(json.dumps(dict(state, step=step)))
        _atomic_dir(write, last_dir)
        history_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    # the loop
    ghn.train()
    bar = tqdm(range(state["step"], cfg.steps), initial=state["step"], total=cfg.steps,
               disable=not (cfg.progress and main), desc=f"ghn {cfg.dataset}")
    val_acc = float("nan")
    for step in bar:
        rng = np.random.default_rng([cfg.seed, step])
        lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))   # cosine schedule
        lr *= min(1.0, (step + 1) / max(cfg.warmup, 1))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.from_numpy(rng.choice(len(ys), cfg.batch_size, replace=False)).to(device)
        xb, yb = xs[idx], ys[idx]
        chosen = rng.choice(cfg.n_archs, cfg.meta_batch, replace=cfg.meta_batch > cfg.n_archs)
        seen = ghn.kinds_seen.clone()
        loss = torch.zeros((), device=device)
        for i in chosen[rank::world]:     # this process's share of the meta-batch
            model = model_of(int(i)).train()
            params = ghn.predict(model)
            logits = torch.func.functional_call(model, dict(params), (xb,), strict=False)
            arch_loss = F.cross_entropy(logits, yb)
            # an exploding predicted net (no normalisation, He-scale weights) must not
            # dominate the step: its loss counts with its gradient scaled to the cap
            arch_loss = arch_loss / arch_loss.detach().div(cfg.loss_cap).clamp(min=1.0)
            loss = loss + arch_loss / cfg.meta_batch
        opt.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        for p in ghn.parameters():   # every process updates every parameter alike
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # sum gradients, op-kind counts and the loss over processes (no-op in one process)
        new_kinds, loss_sum = torchrun.sum_gradients(ghn.parameters(), ghn.kinds_seen - seen, loss)
        ghn.kinds_seen.copy_(seen + new_kinds)
        loss_value = float(loss_sum)
        gnorm = float(torch.nn.utils.clip_grad_norm_(ghn.parameters(), cfg.grad_clip))
        if math.isfinite(gnorm):   # a non-finite gradient skips the step instead of poisoning the GHN
            opt.step()
        done = step + 1
        rec = {"step": done, "loss": loss_value, "grad_norm": gnorm, "lr": lr}
        if main and (done % cfg.eval_every == 0 or done == cfg.steps):
            val_acc = float(np.mean(predicted_accuracy(ghn, val_models, data)))
            rec["val_acc"] = val_acc
            if val_acc > state["best_val_acc"]:
                state.update(best_val_acc=val_acc, best_step=done)
                _atomic_dir(lambda d: (ghn.save_pretrained(d),
                                       (d / "state.json").write_text(json.dumps(dict(state, step=done)))),
                            best_dir)
        history.append(rec)
        if main and on_step is not None:
            rng_state = torch.get_rng_state()
            on_step(done, ghn)
            torch.set_rng_state(rng_state)
            ghn.train()
        bar.set_postfix(loss=f"{rec['loss']:.3f}", val=f"{val_acc:.3f}")
        if main and (done % cfg.ckpt_every == 0 or done == cfg.steps or done == cfg.stop_at):
            save(done)
        if done == cfg.stop_at:
            break
    bar.close()
    torchrun.barrier()
    if main and not best_dir.exists():  # resumed after the last step: nothing new to compare
        _atomic_dir(lambda d: ghn.save_pretrained(d), best_dir)
    if main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    finals = [h["val_acc"] for h in history if "val_acc" in h]
    return PredictInitResult(steps=cfg.steps, best_val_acc=state["best_val_acc"],
                             best_step=state["best_step"], final_val_acc=finals[-1] if finals else float("nan"),
                             history=history, best_dir=str(best_dir), last_dir=str(last_dir),
                             seconds=time.time() - t0)
