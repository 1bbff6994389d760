"""Training many small networks at once: the batched executor.

Small networks train far below the machine's speed one at a time: per-step overhead
(Python, dispatch, tiny kernels) dominates.  :class:`BatchedExecutor` trains the networks
of one architecture as ONE stacked model (:mod:`zoo.stacked`): a ``[B, P]`` parameter
matrix, one grouped convolution / batched matmul per layer for all ``B`` networks, one
optimizer update for all rows.  Each network keeps its own hyperparameters: learning
rate and schedule, weight decay, momentum, optimizer (rows are sorted into runs of one
update rule), activation (runs of rows), dropout rate, initialization, training subset,
data order, seed.

Same results as alone: network ``i`` of a batch gets the initialization, data order,
dropout masks and optimizer arithmetic of :func:`zoo.train.train_job` on the same job
(both draw them the same way, see :mod:`zoo.stacked`); only the floating-point order of
the forward/backward kernels differs (grouped vs single convolutions, batched vs single
matmuls), so weights agree to float tolerance per step (~1e-7), not bit for bit.  Over a
long run, networks with chaotic training dynamics amplify that difference exactly as
they amplify a one-ulp change of their initial weights (benchmarks/zoo.md measures both).

Batch independence: a network's result is the same bit for bit whatever batch it is
trained in (which networks, how many, in which rows), so a resumed, multi-worker or
torchrun-sharded batched build equals an uninterrupted one-process build.  What it
takes on this CPU (each found by a test that failed without it): no kernel ever sees a
single row (a lone row runs beside a copy of itself: one group / one matrix take other
code paths); activations whose kernels are layout dependent (gelu, silu, ...) run on
padded contiguous buffers; sums over a network's samples are pairwise (fixed order);
evaluation runs in fixed chunks of samples; batched-matmul results are kept 16-byte
aligned per matrix (MKL's results depend on alignment).

Ragged batches: networks with different training subsets have different numbers of
steps per epoch.  All rows step together (step ``t`` of every row is its own ``t``-th
optimizer step); a row's minibatch is its own next ``batch_size`` indices, padded (and
masked out of the loss) at the end of its epoch; a network leaves the batch when it has
finished (or diverged), and the matrices are compacted.  Jobs are sorted by their
number of steps before they are cut into batches, so the networks of one batch finish
at about the same time.

Checkpoints are evaluated in batches too (all pending snapshots at once), and each
network is yielded as soon as it has finished, so the builder writes it immediately: a
killed build loses at most the networks in the batches in flight.

Jobs that cannot be batched (an architecture without a stacked form, e.g. BatchNorm
networks; an unknown task) fall back to :func:`zoo.train.train_job`, with a log line
that says which and why.  So does a network that is the only one of its kind in the
whole build (:func:`zoo.build` shows the executor every job, finished ones and other
ranks' included): a stacked model of one network is slower than ``train_job``.  A group
that has shrunk to one network (a resumed build, a rank's share) still trains it in the
stacked trainer (beside a copy of itself, see :meth:`_Batch._twin`), so that its result
does not depend on how the build was split.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, OrderedDict, defaultdict
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import load_dataset, load_images
from .models import create
from .stacked import (DropCalls, halving_sum, StackedOptimizer, Unsupported, activation_module, dropout_params,
                      lr_factor, network_keys, optimizer_kind, runs, split_arch_kwargs, stacked_arch)
from .build import Executor
from .train import Job, JobResult, image_grid, init_weights, train_job

__all__ = ["BatchedExecutor", "plan_batches", "batch_key", "train_batch", "resolve_device"]

log = logging.getLogger("zoo.build")

DEFAULT_MAX_BATCH = 64


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` is ``cuda`` (this process's ``LOCAL_RANK`` under torchrun) when a GPU is
    present, else ``cpu``."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device auto or cpu)")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return device


# ----------------------------------------------------------------------------- planning
def batch_key(job: Job) -> tuple[tuple | None, str]:
    """``(key, "")`` — jobs with equal keys can share a stacked model — or
    ``(None, reason)``."""
    if job.task not in ("classify", "inr"):
        return None, f"task {job.task!r} has no batched trainer"
    shared, _, _ = split_arch_kwargs(job.arch, job.arch_kwargs)
    try:
        arch = stacked_arch(job.arch, shared)
    except Unsupported as e:
        return None, str(e)
    if arch.task != job.task:
        return None, f"{job.arch} is not a {job.task} architecture"
    try:
        optimizer_kind(job.hparams)
        if job.task == "classify":
            lr_factor(job.hparams.get("schedule", "constant"), 0, 1)
        _, act, drop = split_arch_kwargs(job.arch, job.arch_kwargs)
        activation_module(act)
        dropout_params([drop])
    except (ValueError, KeyError) as e:
        return None, str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    data = json.dumps(job.data_kwargs, sort_keys=True)
    arch_id = job.arch + json.dumps(shared, sort_keys=True)
    if job.task == "classify":
        return ("classify", arch_id, job.dataset, data, int(job.hparams.get("batch_size", 32))), ""
    return ("inr", arch_id, job.dataset, data), ""


_N_TRAIN: dict = {}


def _n_train(job: Job) -> int:
    key = (job.dataset, json.dumps(job.data_kwargs, sort_keys=True))
    if key not in _N_TRAIN:
        _N_TRAIN[key] = len(load_dataset(job.dataset, **job.data_kwargs).y_train)
    return _N_TRAIN[key]


def _total_steps(job: Job) -> int:
    """Optimizer steps the job takes (to sort jobs into batches that end together)."""
    steps = sorted({int(s) for s in job.steps})
    last = steps[-1] if steps else 0
    if job.task == "inr":
        return last
    n = _n_train(job)
    m = max(1, int(round(float(job.hparams.get("train_fraction", 1.0)) * n)))
    return math.ceil(m / int(job.hparams.get("batch_size", 32))) * last


SINGLETON = "the only network of its architecture and data in the build (a stacked model of one is slower)"


def plan_batches(jobs: Sequence[Job], max_batch: int = DEFAULT_MAX_BATCH, workers: int = 1,
                 peers: Sequence[Job] | None = None) -> tuple[list[list[Job]], list[tuple[Job, str]]]:
    """Cut ``jobs`` into batches that train as one stacked model.

    Returns ``(batches, alone)``: ``alone`` are ``(job, reason)`` for jobs trained one at
    a time: those without a stacked form, and those whose :func:`batch_key` no other job
    of ``peers`` (default: ``jobs``; the builder passes every job of the build) shares.
    A group of compatible jobs is sorted by length (longest first, then index)
    and cut into batches of at most ``max_batch`` consecutive jobs (networks of a batch
    then finish together), smaller when that keeps all ``workers`` busy; when there are
    no more batches than workers, the sorted jobs are dealt out round-robin instead, so
    that every worker gets the same amount of work.  (A network's result does not depend
    on its batch, see :mod:`zoo.batched`.)"""
    groups: OrderedDict = OrderedDict()
    alone: list[tuple[Job, str]] = []
    for job in jobs:
        key, why = batch_key(job)
        if key is None:
            alone.append((job, why))
        else:
            groups.setdefault(key, []).append(job)
    counts = Counter(batch_key(j)[0] for j in peers) if peers is not None else None
    batches = []
    for key, members in groups.items():
        if max(len(members), counts[key] if counts is not None else 0) == 1:
            alone += [(j, SINGLETON) for j in members]
            continue
        # (a group that has shrunk to one is still a batch: the batched trainer gives a
        # network the same bits alone as in company, train_job only the same values to
        # float tolerance)
        members = sorted(members, key=lambda j: (-_total_steps(j), j.index))
        size = max(1, min(int(max_batch), math.ceil(len(members) / max(1, workers))))
        n_batches = math.ceil(len(members) / size)
        if 1 < n_batches <= workers:
            # one batch per worker: deal the jobs out so that each gets the same work
            batches += [members[i::n_batches] for i in range(n_batches)]
        else:
            # consecutive lengths: a batch's networks finish together; the pool balances
            size = math.ceil(len(members) / n_batches)
            batches += [members[i:i + size] for i in range(0, len(members), size)]
    batches.sort(key=lambda b: -_total_steps(b[0]) * len(b))  # long batches first
    return batches, alone


# ------------------------------------------------------------------------------ trainer
class _Net:
    """Bookkeeping of one network in a batch."""

    __slots__ = ("job", "act", "kind", "dropout", "steps", "total", "per_epoch", "generator",
                 "subset", "target", "out_steps", "sds", "metrics", "diverged_at", "pending", "done")

    def __init__(self, job: Job):
        self.job = job
        _, self.act, self.dropout = split_arch_kwargs(job.arch, job.arch_kwargs)
        self.kind = optimizer_kind(job.hparams)
        self.steps = sorted({int(s) for s in job.steps})
        self.out_steps: list[int] = []
        self.sds: list[dict] = []
        self.metrics: list[dict] = []
        self.diverged_at = None
        self.pending = 0
        self.done = False


_GLIBC_DEFAULTS = {-1: 128 * 1024, -2: 128 * 1024, -3: 128 * 1024}  # trim, top pad, mmap


@contextmanager
def _keep_freed_memory():
    """While training, ask glibc's malloc to reuse freed memory instead of returning it
    to the OS; restore its defaults (and give the memory back) afterwards.

    A stacked step allocates megabyte-sized temporaries; by default glibc serves them
    with fresh mmaps, and the page faults on that memory cost about a quarter of a step
    (measured: 11.6 -> 8.6 ms for 64 digits CNNs).  Restoring sets glibc's documented
    default values, which leaves its dynamic mmap threshold off.  No-op where there is
    no glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
            raise OSError("not glibc")
    except OSError:
        yield
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20)   # glibc's maximum on 64-bit
    libc.mallopt(M_TRIM_THRESHOLD, 1024 * 2 ** 20)
    libc.mallopt(M_TOP_PAD, 64 * 2 ** 20)
    try:
        yield
    finally:
        for param, value in _GLIBC_DEFAULTS.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)


@contextmanager
def _torch_settings(device: torch.device):
    threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn
    saved = (cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    torch.set_num_threads(1)
    # GPU: float32 convolutions (no TF32), and deterministic algorithms chosen without
    # benchmarking, so that a build is reproducible (untested here: no GPU)
    cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = False, True, False
    try:
        if device.type == "cpu":
            with _keep_freed_memory():
                yield
        else:
            yield
    finally:
        torch.set_num_threads(threads)
        cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


class _Batch:
    """Common part of the batched trainers: rows, compaction, checkpoints, results."""

    def __init__(self, jobs: Sequence[Job], device: torch.device, eval_budget: int = 16384):
        self.device = device
        self.eval_budget = eval_budget
        j0 = jobs[0]
        shared, _, _ = split_arch_kwargs(j0.arch, j0.arch_kwargs)
        self.arch = stacked_arch(j0.arch, shared)
        nets = [_Net(j) for j in jobs]
        # rows sorted into runs of one activation (RMSprop-with-momentum rows last: the
        # optimizer updates them separately)
        nets.sort(key=lambda n: (n.kind == "rmsprop_momentum", str(n.act), n.kind, n.job.index))
        self.nets = nets
        self.acts = {a: activation_module(a) for a in {n.act for n in nets}}
        rows = []
        for net in nets:
            rows.append(self.init_network(net))
        self.flat = torch.stack(rows).to(device)
        self.opt = StackedOptimizer([n.job.hparams for n in nets], self.arch.n_params, device)
        self.lr = [float(n.job.hparams.get("lr", 1e-3)) for n in nets]
        self.pending: list[tuple[_Net, int, torch.Tensor]] = []
        self._update_runs()

    # ---- per-network setup, identical to train_job's order of random draws
    def init_network(self, net: _Net) -> torch.Tensor:
        job = net.job
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.seed)
            model = create(job.arch, **job.arch_kwargs)
            if job.task == "classify":
                init_weights(model, job.hparams.get("init", "default"),
                             float(job.hparams.get("init_std", 0.05)))
            self.after_init(net)
        return self.arch.flatten(dict(model.named_parameters()))

    def after_init(self, net: _Net) -> None:
        pass

    def _update_runs(self):
        self.act_runs = [(self.acts[a], s, e) for a, s, e in runs([n.act for n in self.nets])]

    # ---- rows
    def compact(self) -> None:
        keep = [i for i, n in enumerate(self.nets) if not n.done]
        if len(keep) == len(self.nets):
            return
        idx = torch.tensor(keep, dtype=torch.long)
        didx = idx.to(self.device)
        self.flat = self.flat.index_select(0, didx)
        self.opt.select(idx)
        self.nets = [self.nets[i] for i in keep]
        self.lr = [self.lr[i] for i in keep]
        self.select_rows(keep, didx)
        self._update_runs()

    def select_rows(self, keep: list[int], didx: torch.Tensor) -> None:
        pass

    def snapshot(self, rows: Sequence[int], step: int) -> None:
        for r in rows:
            net = self.nets[r]
            self.pending.append((net, step, self.flat[r].clone()))
            net.pending += 1

    def flush(self) -> Iterator[JobResult]:
        """Evaluate the pending checkpoints; yield the networks that are complete."""
        if self.pending:
            pending, self.pending = self.pending, []
            # one activation per evaluation chunk; similar training-subset sizes together
            # (a chunk evaluates up to its largest subset)
            pending.sort(key=lambda e: (str(e[0].act), self.eval_size(e[0]), e[0].job.index, e[1]))
            metrics = self.evaluate(pending)
            for (net, step, row), m in zip(pending, metrics):
                net.out_steps.append(step)
                net.sds.append(self.arch.state_dict(row))
                net.metrics.append(m)
                net.pending -= 1
        for net in list(self.finished):
            if net.pending == 0:
                self.finished.remove(net)
                order = sorted(range(len(net.out_steps)), key=lambda i: net.out_steps[i])
                yield JobResult(net.job, [net.out_steps[i] for i in order], [net.sds[i] for i in order],
                                [net.metrics[i] for i in order], net.diverged_at)

    def evaluate(self, entries) -> list[dict]:
        raise NotImplementedError

    def eval_size(self, net: _Net) -> int:
        return 0

    def _eval_chunks(self, entries):
        """Split ``entries`` into runs of one activation and chunks of rows (rows x
        samples per step within the evaluation budget)."""
        rows_per = max(2, self.eval_budget // 256)
        for act, s, e in runs([str(en[0].act) for en in entries]):
            for a in range(s, e, rows_per):
                chunk = entries[a:min(e, a + rows_per)]
                rows = [en[2] for en in chunk]
                if len(rows) == 1:
                    rows = rows * 2           # never one row alone (see _twin); ignored
                yield chunk, torch.stack(rows), [(self.acts[chunk[0][0].act], 0, len(rows))]

    # ---- the loop
    def run(self) -> Iterator[JobResult]:
        self.finished: list[_Net] = []
        self._drop_cache: dict = {}
        t = 0
        self.start()
        yield from self.flush()
        self.compact()
        while self.nets:
            loss = self.loss(t)
            lossv = loss.detach()
            bad = ~torch.isfinite(lossv)
            bad_rows = bad.nonzero().flatten().tolist() if bool(bad.any()) else []
            grads = torch.autograd.grad(loss.sum(), self._leaves)
            self._leaves = None
            grad = torch.cat([g.reshape(g.shape[0], -1) for g in grads], 1)
            lrs = self.lrs(t)
            self.opt.step(self.flat, grad, lrs)
            for r in bad_rows:
                net = self.nets[r]
                net.diverged_at = self.diverged_step(r, t)
                net.done = True
                self.finished.append(net)
            t += 1
            self.events(t, set(bad_rows))
            if any(n.done for n in self.nets):
                yield from self.flush()
                self.compact()
        yield from self.flush()

    def params(self) -> dict:
        self._leaves = self.arch.leaves(self.flat)
        return {p.name: self._twin(leaf) for p, leaf in zip(self.arch.params, self._leaves)}

    def _twin(self, x: torch.Tensor) -> torch.Tensor:
        """A lone row runs beside a copy of itself (its loss is not used).  Kernels take
        other code paths for one matrix / one group (plain instead of grouped
        convolution, matrix-vector instead of batched products), and the copy keeps a
        network's arithmetic the same when its batch has shrunk to it."""
        return torch.cat([x, x]) if len(self.nets) == 1 else x

    def finish(self, rows) -> None:
        for r in rows:
            net = self.nets[r]
            if not net.done:
                net.done = True
                self.finished.append(net)


class _ClassifyBatch(_Batch):
    def __init__(self, jobs, device, **kw):
        j0 = jobs[0]
        data = load_dataset(j0.dataset, **j0.data_kwargs)
        self.data = data
        self.n_train = len(data.y_train)
        self.bs = int(j0.hparams.get("batch_size", 32))
        super().__init__(jobs, device, **kw)
        arch = self.arch
        self.x_train = arch.prepare_data(data.x_train).to(device)
        self.y_train = data.y_train.to(device)
        self.x_test = arch.prepare_data(data.x_test).to(device)
        self.y_test = data.y_test.to(device)
        nets = self.nets
        self.per_epoch = np.array([n.per_epoch for n in nets], dtype=np.int64)
        self.total = np.array([n.total for n in nets], dtype=np.int64)
        self.schedule = [n.job.hparams.get("schedule", "constant") for n in nets]
        width = int(self.per_epoch.max()) * self.bs if len(nets) else 0
        self.order = torch.full((len(nets), width), -1, dtype=torch.long)
        self.keys = network_keys([n.job.seed for n in nets], device)
        self.thr, self.scale = dropout_params([n.dropout for n in nets], device)
        self._pe_t = torch.tensor(self.per_epoch, dtype=torch.long)
        self._arange_bs = torch.arange(self.bs)

    def after_init(self, net):
        # train_job: a generator seeded with the job seed draws the subset, then one
        # permutation per epoch (drawn lazily at each epoch start, in the same order)
        job = net.job
        g = torch.Generator().manual_seed(job.seed)
        m = max(1, int(round(float(job.hparams.get("train_fraction", 1.0)) * self.n_train)))
        net.subset = torch.randperm(self.n_train, generator=g)[:m].sort().values
        net.generator = g
        net.per_epoch = math.ceil(m / self.bs)
        net.total = net.per_epoch * (net.steps[-1] if net.steps else 0)

    def select_rows(self, keep, didx):
        idx = torch.tensor(keep, dtype=torch.long)
        self.per_epoch = self.per_epoch[keep]
        self.total = self.total[keep]
        self.schedule = [self.schedule[i] for i in keep]
        self.order = self.order.index_select(0, idx)
        self.keys = self.keys.index_select(0, didx)
        self.thr = self.thr.index_select(0, didx)
        self.scale = self.scale.index_select(0, didx)
        self._pe_t = self._pe_t.index_select(0, idx)

    def start(self):
        if any(0 in n.steps for n in self.nets):
            self.snapshot([r for r, n in enumerate(self.nets) if 0 in n.steps], 0)
        self.finish([r for r, n in enumerate(self.nets) if n.total == 0])

    def loss(self, t: int) -> torch.Tensor:
        # a new epoch starts for the rows whose step count is a multiple of their epoch
        for r in np.nonzero(t % self.per_epoch == 0)[0].tolist():
            net = self.nets[r]
            m = len(net.subset)
            perm = torch.randperm(m, generator=net.generator)
            self.order[r, :m] = net.subset[perm]
        cols = (t % self._pe_t).unsqueeze(1) * self.bs + self._arange_bs
        idx = self._twin(self.order.gather(1, cols).to(self.device))   # [k, bs]; -1 = padding
        valid = idx >= 0
        safe = idx.clamp(min=0)
        x = self.arch.gather(self.x_train, safe)
        y = self.y_train[safe]
        drop = None
        if self.arch.n_dropout_calls and any(n.dropout > 0 for n in self.nets):
            drop = DropCalls(self._twin(self.keys), self._twin(self.thr), self._twin(self.scale),
                             t * self.arch.n_dropout_calls, self._drop_cache)
        acts = self.act_runs if len(self.nets) > 1 else [(self.act_runs[0][0], 0, 2)]
        out = self.arch.forward(self.params(), x, acts, drop)
        k, n, c = out.shape
        ce = F.cross_entropy(out.reshape(k * n, c), y.reshape(-1), reduction="none").view(k, n)
        loss = halving_sum(torch.where(valid, ce, 0.0), 1) / valid.sum(1)
        return loss[:len(self.nets)]

    def lrs(self, t: int) -> list[float]:
        return [lr * lr_factor(s, t, int(T)) for lr, s, T in zip(self.lr, self.schedule, self.total)]

    def diverged_step(self, r: int, t: int) -> int:
        return t // int(self.per_epoch[r]) + 1   # the epoch in progress

    def events(self, t: int, exclude: set) -> None:
        ends = [r for r in np.nonzero(t % self.per_epoch == 0)[0].tolist() if r not in exclude]
        snap = [r for r in ends if t // int(self.per_epoch[r]) in self.nets[r].steps]
        if snap:
            by_epoch = defaultdict(list)
            for r in snap:
                by_epoch[t // int(self.per_epoch[r])].append(r)
            for epoch, rows in by_epoch.items():
                self.snapshot(rows, epoch)
        self.finish([r for r in ends if t >= int(self.total[r])])

    @torch.no_grad()
    def evaluate(self, entries):
        out = [None] * len(entries)
        pos = {id(e): i for i, e in enumerate(entries)}
        for chunk, flat, acts in self._eval_chunks(entries):
            p = self.arch.views(flat.to(self.device))
            subsets = [e[0].subset for e in chunk]
            subsets = (subsets * 2)[:len(flat)]      # the copy of a lone row (see _twin)
            te = self._metrics_shared(p, acts, len(flat))
            tr = self._metrics_subsets(p, acts, subsets)
            for i, e in enumerate(chunk):
                out[pos[id(e)]] = {"train_loss": tr[0][i], "train_acc": tr[1][i],
                                   "test_loss": te[0][i], "test_acc": te[1][i]}
        return out

    def eval_size(self, net):
        return len(net.subset)

    EVAL_CHUNK = 256  # samples per evaluation step: fixed, so sums do not depend on the batch

    def _metrics_shared(self, p, acts, k):
        n = len(self.y_test)
        loss = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.long, device=self.device)
        step = self.EVAL_CHUNK
        for a in range(0, n, step):
            x, y = self.x_test[a:a + step], self.y_test[a:a + step]
            m = len(y)
            pad = (-m) % 16   # keep per-matrix sizes aligned (see stacked.dense)
            if pad:
                x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
                y = torch.cat([y, y[:1].expand(pad)])
            o = self.arch.forward(p, self.arch.shared(x, k), acts)[:, :m]
            y = y[:m]
            kk, nn_, c = o.shape
            ce = F.cross_entropy(o.reshape(kk * nn_, c), y.repeat(kk), reduction="none").view(kk, nn_)
            loss += halving_sum(ce, 1).double()
            correct += (o.argmax(2) == y).sum(1)
        nn_ = max(n, 1)
        return (loss / nn_).tolist(), (correct.double() / nn_).tolist()

    def _metrics_subsets(self, p, acts, subsets):
        k = len(subsets)
        width = max(len(s) for s in subsets)
        width += (-width) % 16    # aligned per-matrix sizes (see stacked.dense)
        idx = torch.full((k, width), -1, dtype=torch.long)
        for i, s in enumerate(subsets):
            idx[i, :len(s)] = s
        idx = idx.to(self.device)
        loss = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.long, device=self.device)
        step = self.EVAL_CHUNK
        for a in range(0, width, step):
            ix = idx[:, a:a + step]
            valid = ix >= 0
            safe = ix.clamp(min=0)
            o = self.arch.forward(p, self.arch.gather(self.x_train, safe), acts)
            y = self.y_train[safe]
            kk, nn_, c = o.shape
            ce = F.cross_entropy(o.reshape(kk * nn_, c), y.reshape(-1), reduction="none").view(kk, nn_)
            loss += halving_sum(torch.where(valid, ce, 0.0), 1).double()
            correct += ((o.argmax(2) == y) & valid).sum(1)
        sizes = torch.tensor([max(len(s), 1) for s in subsets], dtype=torch.float64, device=self.device)
        return (loss / sizes).tolist(), (correct.double() / sizes).tolist()


class _InrBatch(_Batch):
    def __init__(self, jobs, device, **kw):
        j0 = jobs[0]
        self.images, _, _ = load_images(j0.dataset, **j0.data_kwargs)
        super().__init__(jobs, device, **kw)
        c, h, w = self.images[0].shape
        self.coords = image_grid(h, w).to(device)
        self.targets = torch.stack([n.target for n in self.nets]).to(device)
        self.total = np.array([n.steps[-1] if n.steps else 0 for n in self.nets], dtype=np.int64)

    def after_init(self, net):
        img = self.images[int(net.job.meta["image"])]
        net.target = img.permute(1, 2, 0).reshape(-1, img.shape[0])

    def select_rows(self, keep, didx):
        self.targets = self.targets.index_select(0, didx)
        self.total = self.total[keep]

    def start(self):
        self.snapshot([r for r, n in enumerate(self.nets) if 0 in n.steps], 0)
        self.finish([r for r, n in enumerate(self.nets) if not n.steps or n.steps[-1] == 0])

    def loss(self, t):
        p = self.params()
        out = self.arch.forward(p, self.arch.shared(self.coords, len(self._twin(self.targets))))
        return _mse(out, self._twin(self.targets))[:len(self.nets)]

    def lrs(self, t):
        return self.lr

    def diverged_step(self, r, t):
        return t + 1

    def events(self, t, exclude):
        rows = [r for r, n in enumerate(self.nets) if r not in exclude and t in n.steps]
        if rows:
            self.snapshot(rows, t)
        self.finish([r for r in range(len(self.nets)) if r not in exclude and t >= int(self.total[r])])

    @torch.no_grad()
    def evaluate(self, entries):
        out = []
        for chunk, flat, _ in self._eval_chunks(entries):
            p = self.arch.views(flat.to(self.device))
            pred = self.arch.forward(p, self.arch.shared(self.coords, len(flat)))
            targets = torch.stack(([e[0].target for e in chunk] * 2)[:len(flat)]).to(self.device)
            mse = _mse(pred, targets).tolist()[:len(chunk)]
            out += [{"mse": v, "psnr": 10 * math.log10(1.0 / max(v, 1e-12))} for v in mse]
        return out


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row mean squared error of ``[k, n, c]`` tensors."""
    k = out.shape[0]
    return halving_sum(((out - target) ** 2).reshape(k, -1), 1) / (out[0].numel())


def train_batch(jobs: Sequence[Job], device: str | torch.device = "cpu") -> Iterator[JobResult]:
    """Train ``jobs`` (one :func:`batch_key`) as one stacked model; yield each network's
    :class:`~zoo.train.JobResult` as soon as it is complete."""
    jobs = list(jobs)
    if not jobs:
        return
    keys = {batch_key(j)[0] for j in jobs}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_batch: the jobs do not share one batch key (see plan_batches)")
    device = resolve_device(device)
    with _torch_settings(device):
        cls = _ClassifyBatch if jobs[0].task == "classify" else _InrBatch
        yield from cls(jobs, device).run()


# ----------------------------------------------------------------------------- executor
def _run_unit(unit: tuple[str, list[dict], str]) -> list[bytes]:
    kind, jobs, device = unit
    jobs = [Job.from_dict(d) for d in jobs]
    if kind == "alone":
        return [train_job(j).to_bytes() for j in jobs]
    return [r.to_bytes() for r in train_batch(jobs, device)]


class BatchedExecutor(Executor):
    """Train compatible jobs as stacked models (see the module docstring).

    ``workers > 1``: that many spawned processes, each training whole batches (a batch's
    networks come back together when it ends).  ``max_batch`` bounds the networks per
    stacked model.  ``device``: ``auto`` | ``cpu`` | ``cuda``; with several workers on
    a GPU they share it.
    """

    def __init__(self, workers: int = 1, max_batch: int = DEFAULT_MAX_BATCH, device: str = "auto"):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.workers = int(workers)
        self.max_batch = int(max_batch)
        self.device = str(resolve_device(device))
        self.peers: list[Job] | None = None

    def prepare(self, jobs: Sequence[Job]) -> None:
        self.peers = list(jobs)

    def describe(self, batches, alone) -> list[str]:
        lines = []
        if batches:
            lines.append(f"batched executor: {sum(map(len, batches))} networks in {len(batches)} stacked "
                         f"batch(es) of up to {max(map(len, batches))} on {self.device}"
                         + (f", {self.workers} workers" if self.workers > 1 else ""))
        reasons = defaultdict(list)
        for job, why in alone:
            reasons[why].append(job.id)
        for why, ids in reasons.items():
            shown = ", ".join(ids[:8]) + (f", ... ({len(ids)} jobs)" if len(ids) > 8 else "")
            lines.append(f"batched executor: trained one at a time (sequential): {shown}: {why}")
        return lines

    def map(self, jobs: Sequence[Job]) -> Iterator[JobResult]:
        jobs = list(jobs)
        if not jobs:
            return
        batches, alone = plan_batches(jobs, self.max_batch, self.workers, self.peers)
        for line in self.describe(batches, alone):
            (log.warning if "sequential" in line and SINGLETON not in line else log.info)(line)
        if self.workers == 1:
            for b in batches:
                yield from train_batch(b, self.device)
            for job, _ in alone:
                yield train_job(job)
            return
        units = [("batch", [j.to_dict() for j in b], self.device) for b in batches]
        units += [("alone", [job.to_dict()], self.device) for job, _ in alone]
        yield from self._pool(units)

    def _pool(self, units) -> Iterator[JobResult]:
        from .build import pool_map

        def describe(unit):
            return f"{unit[0]} of jobs [{', '.join(str(d['index']) for d in unit[1][:8])}]"

        for _, blobs in pool_map(_run_unit, units, self.workers, self.workers, describe):
            for data in blobs:
                yield JobResult.from_bytes(data)
