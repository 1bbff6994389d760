"""Jobs and the per-job trainer.

A :class:`Job` is everything needed to train one network: architecture name and
kwargs, dataset, hyperparameters, seed, and the steps at which to checkpoint (epochs
for classifiers, optimizer iterations for INRs).  ``train_job(job)`` is a pure
function of the job: the seed fixes initialization, data order, the training subset
and dropout; torch runs on one thread inside it, so the same job gives bitwise the same
checkpoints in any process on the same machine.

Hyperparameters understood by :func:`train_job` (``job.hparams``):

=================  =====================================================================
optimizer          ``adam`` | ``sgd`` | ``rmsprop`` | ``adamw``
lr                 learning rate
weight_decay       L2 penalty (the optimizer's ``weight_decay``)
momentum           for ``sgd`` / ``rmsprop`` (default 0)
batch_size         minibatch size (classification)
init               ``default`` (the module's own) | ``normal`` | ``truncated_normal`` |
                   ``uniform`` | ``xavier_uniform`` | ``xavier_normal`` |
                   ``kaiming_uniform`` | ``kaiming_normal`` | ``orthogonal``
init_std           std (``normal``, ``truncated_normal``), bound (``uniform``) or gain
train_fraction     fraction of the training set used (a seeded subset)
schedule           ``constant`` | ``cosine``
=================  =====================================================================

A network whose loss becomes non-finite stops training; the checkpoints before that
are kept and ``JobResult.diverged_at`` records the step.

Randomness and arithmetic shared with the batched trainer (:mod:`zoo.batched`), so that
a network trained in a batch equals the same job trained here (see :mod:`zoo.stacked`):
the global RNG seeded with ``job.seed`` builds and initializes the model; a generator
seeded with ``job.seed`` draws the training subset, then one permutation per epoch;
dropout masks are keyed by ``job.seed`` and the call number
(:class:`~zoo.stacked.KeyedDropout` replaces ``nn.Dropout``); the update is
:class:`~zoo.stacked.StackedOptimizer` with one row (torch.optim's formulas).
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import load_dataset, load_images
from .models import create
from .stacked import StackedOptimizer, attach_keyed_dropout, lr_factor

__all__ = ["Job", "JobResult", "train_job", "init_weights", "JOB_FIELDS", "image_grid"]


@dataclass(frozen=True)
class Job:
    """One network to train.  JSON-able; ``Job.from_dict(job.to_dict()) == job``."""

    index: int
    recipe: str
    arch: str
    arch_kwargs: dict
    task: str                      # "classify" | "inr"
    dataset: str
    hparams: dict
    seed: int
    steps: list                    # checkpoint steps (epochs, or iterations for INRs)
    meta: dict = field(default_factory=dict)
    data_kwargs: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.index:06d}"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**{k: d[k] for k in JOB_FIELDS if k in d})


JOB_FIELDS = ("index", "recipe", "arch", "arch_kwargs", "task", "dataset", "hparams", "seed",
              "steps", "meta", "data_kwargs")


@dataclass
class JobResult:
    """Checkpoints of one trained network, in step order, with their metrics."""

    job: Job
    steps: list[int]
    state_dicts: list[dict[str, torch.Tensor]]
    metrics: list[dict[str, float]]
    diverged_at: int | None = None

    def record(self) -> dict:
        """The job-level record stored with the tensors."""
        return {"job": self.job.to_dict(), "steps": list(self.steps),
                "metrics": [dict(m) for m in self.metrics], "diverged_at": self.diverged_at}

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat dict ``"{step}/{param}" -> tensor`` (what a job file holds)."""
        out = {}
        for step, sd in zip(self.steps, self.state_dicts):
            for k, v in sd.items():
                out[f"{step}/{k}"] = v.detach().contiguous()
        return out

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return save(self.tensors(), metadata={"metanet_zoo_job": json.dumps(self.record())})

    @classmethod
    def from_parts(cls, record: dict, tensors: dict[str, torch.Tensor],
                   key_order: dict[int, list[str]] | None = None) -> "JobResult":
        job = Job.from_dict(record["job"])
        sds = []
        for step in record["steps"]:
            prefix = f"{step}/"
            keys = (key_order or {}).get(step) or sorted(k[len(prefix):] for k in tensors
                                                          if k.startswith(prefix))
            sds.append({k: tensors[prefix + k] for k in keys})
        return cls(job, list(record["steps"]), sds, list(record["metrics"]),
                   record.get("diverged_at"))

    @classmethod
    def from_bytes(cls, data: bytes) -> "JobResult":
        from safetensors.torch import load

        record = json.loads(header_metadata(data)["metanet_zoo_job"])
        return cls.from_parts(record, load(data), _key_order(record))


def header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a serialized safetensors blob."""
    import struct

    if len(data) < 8:
        raise ValueError("not a safetensors blob: shorter than 8 bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("not a safetensors blob: header length past the end")
    return json.loads(data[8:8 + n]).get("__metadata__", {}) or {}


def _key_order(record: dict) -> dict[int, list[str]] | None:
    """Parameter order of the job's architecture (state-dict order), if it builds."""
    try:
        job = record["job"]
        keys = list(_arch_shapes(job["arch"], json.dumps(job["arch_kwargs"], sort_keys=True)))
    except Exception:
        return None
    return {s: keys for s in record["steps"]}


_SHAPES_CACHE: dict[tuple[str, str], dict[str, tuple]] = {}


def _arch_shapes(arch: str, kwargs_json: str) -> dict[str, tuple]:
    key = (arch, kwargs_json)
    if key not in _SHAPES_CACHE:
        with torch.device("meta"):
            m = create(arch, **json.loads(kwargs_json))
        _SHAPES_CACHE[key] = {k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
                              for k, v in m.state_dict().items()}
    return _SHAPES_CACHE[key]


# ------------------------------------------------------------------------------ init
def init_weights(model: nn.Module, scheme: str = "default", std: float = 0.05) -> None:
    """Re-initialize the weights of every Linear / Conv layer (biases to zero).

    ``default`` keeps the modules' own initialization.  Uses torch's global RNG (seed
    it first).
    """
    if scheme == "default":
        return
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        w = m.weight
        with torch.no_grad():
            if scheme == "normal":
                nn.init.normal_(w, 0.0, std)
            elif scheme == "truncated_normal":
                nn.init.trunc_normal_(w, 0.0, std, -2 * std, 2 * std)
            elif scheme == "uniform":
                nn.init.uniform_(w, -std, std)
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(w)
            elif scheme == "xavier_normal":
                nn.init.xavier_normal_(w)
            elif scheme == "kaiming_uniform":
                nn.init.kaiming_uniform_(w, nonlinearity="relu")
            elif scheme == "kaiming_normal":
                nn.init.kaiming_normal_(w, nonlinearity="relu")
            elif scheme == "orthogonal":
                nn.init.orthogonal_(w)
            else:
                raise ValueError(f"unknown init scheme {scheme!r}")
            if m.bias is not None:
                m.bias.zero_()


def _flat_parameters(model: nn.Module) -> tuple[torch.Tensor, list[nn.Parameter]]:
    """Make the module's parameters views of one ``[1, P]`` matrix (``named_parameters``
    order, as :class:`zoo.stacked.StackedArch` lays out a row) and return it."""
    params = [p for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params]).unsqueeze(0)
    off = 0
    for p in params:
        p.data = flat[0, off:off + p.numel()].view_as(p)
        off += p.numel()
    return flat, params


def _flat_grad(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0)


@contextmanager
def _single_thread_seeded(seed: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1024):
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), chunk):
        out = model(x[i:i + chunk])
        loss += F.cross_entropy(out, y[i:i + chunk], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + chunk]).sum().item()
    n = max(len(y), 1)
    return loss / n, correct / n


def _train_classifier(job: Job) -> JobResult:
    hp = job.hparams
    data = load_dataset(job.dataset, **job.data_kwargs)
    g = torch.Generator().manual_seed(job.seed)
    model = create(job.arch, **job.arch_kwargs)
    init_weights(model, hp.get("init", "default"), float(hp.get("init_std", 0.05)))
    attach_keyed_dropout(model, job.seed)
    n = len(data.y_train)
    frac = float(hp.get("train_fraction", 1.0))
    subset = torch.randperm(n, generator=g)[: max(1, int(round(frac * n)))].sort().values
    x, y = data.x_train[subset], data.y_train[subset]
    bs = int(hp.get("batch_size", 32))
    steps = sorted(set(int(s) for s in job.steps))
    max_epoch = steps[-1] if steps else 0
    per_epoch = math.ceil(len(y) / bs)
    flat, params = _flat_parameters(model)
    opt = StackedOptimizer([hp], flat.shape[1])
    lr, schedule, total = float(hp.get("lr", 1e-3)), hp.get("schedule", "constant"), per_epoch * max_epoch
    lr_factor(schedule, 0, total)  # unknown schedules fail before training
    t = 0

    out_steps, sds, metrics = [], [], []
    diverged_at = None

    def checkpoint(epoch: int):
        tr_loss, tr_acc = _evaluate(model, x, y)
        te_loss, te_acc = _evaluate(model, data.x_test, data.y_test)
        out_steps.append(epoch)
        sds.append(_snapshot(model))
        metrics.append({"train_loss": tr_loss, "train_acc": tr_acc,
                        "test_loss": te_loss, "test_acc": te_acc})

    if 0 in steps:
        checkpoint(0)
    for epoch in range(1, max_epoch + 1):
        model.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), bs):
            b = perm[i:i + bs]
            loss = F.cross_entropy(model(x[b]), y[b])
            if not math.isfinite(loss.item()):
                diverged_at = epoch
                break
            opt.step(flat, _flat_grad(loss, params), [lr * lr_factor(schedule, t, total)])
            t += 1
        if diverged_at is not None:
            break
        if epoch in steps:
            checkpoint(epoch)
    return JobResult(job, out_steps, sds, metrics, diverged_at)


def image_grid(h: int, w: int) -> torch.Tensor:
    """Pixel-centre coordinates in [-1, 1], shape ``[h*w, 2]`` (row-major, (y, x))."""
    ys = torch.linspace(-1, 1, h)
    xs = torch.linspace(-1, 1, w)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


def _train_inr(job: Job) -> JobResult:
    hp = job.hparams
    images, _, _ = load_images(job.dataset, **job.data_kwargs)
    img = images[int(job.meta["image"])]
    c, h, w = img.shape
    coords = image_grid(h, w)
    target = img.permute(1, 2, 0).reshape(-1, c)
    model = create(job.arch, **job.arch_kwargs)
    flat, params = _flat_parameters(model)
    opt = StackedOptimizer([hp], flat.shape[1])
    lr = float(hp.get("lr", 1e-3))
    steps = sorted(set(int(s) for s in job.steps))
    out_steps, sds, metrics = [], [], []
    diverged_at = None

    def checkpoint(step: int):
        with torch.no_grad():
            mse = F.mse_loss(model(coords), target).item()
        out_steps.append(step)
        sds.append(_snapshot(model))
        metrics.append({"mse": mse, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))})

    if 0 in steps:
        checkpoint(0)
    for step in range(1, (steps[-1] if steps else 0) + 1):
        loss = F.mse_loss(model(coords), target)
        if not math.isfinite(loss.item()):
            diverged_at = step
            break
        opt.step(flat, _flat_grad(loss, params), [lr])
        if step in steps:
            checkpoint(step)
    return JobResult(job, out_steps, sds, metrics, diverged_at)


_TASKS = {"classify": _train_classifier, "inr": _train_inr}


def train_job(job: Job) -> JobResult:
    """Train one network; a pure function of ``job`` (see the module docstring)."""
    if job.task not in _TASKS:
        raise ValueError(f"job {job.id}: unknown task {job.task!r} (known: {', '.join(_TASKS)})")
    with _single_thread_seeded(job.seed):
        return _TASKS[job.task](job)
