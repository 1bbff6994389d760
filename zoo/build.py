"""Building zoos: executors and the build driver.

An :class:`Executor` trains a list of jobs and yields each finished job's
:class:`~zoo.train.JobResult` (in any order).  That is its whole interface, so a new
executor (e.g. one that trains many small networks at once with ``torch.func.vmap``)
only has to implement ``map``.  The per-job work is ``zoo.train.train_job(job)``, a pure
function of the job.

* :class:`~zoo.batched.BatchedExecutor` (the default) — networks of one architecture
  trained together as one stacked model (:mod:`zoo.batched`), in this process or in
  ``workers`` processes that each take whole batches; jobs it cannot batch (or the only
  one of their architecture in the build) fall back to ``train_job`` with a log line
  saying which and why.
* :class:`SequentialExecutor` — one job after another in this process.
* :class:`ProcessExecutor`   — ``workers`` spawned processes (spawn start method: safe
  with threads and on every OS); at most ``max_in_flight`` jobs are submitted at once, so
  a killed build loses at most those.

:func:`build` samples the recipe's jobs, skips the ones already on disk, trains the rest
with the executor, writes each finished network atomically (see :mod:`zoo.store`) and
finally packs the zoo.  Sharding: rank ``r`` of ``w`` takes jobs ``i`` with
``i % w == r``.  Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set) the ranks
join a gloo process group, write into the same folder, meet at a barrier and rank 0
packs.  Without a shared folder (or with ``--rank/--world-size`` and no torchrun), each
rank leaves its finished jobs unpacked and :func:`zoo.store.merge` combines the folders.
"""
from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from typing import Iterator, Sequence

from .recipes import get_recipe
from .store import DEFAULT_SHARD_BYTES, ZooDir, pack
from .train import Job, JobResult, train_job

__all__ = ["Executor", "SequentialExecutor", "ProcessExecutor", "build", "make_executor",
           "EXECUTORS"]


class Executor(ABC):
    """Trains jobs; yields one JobResult per job as each finishes."""

    @abstractmethod
    def map(self, jobs: Sequence[Job]) -> Iterator[JobResult]:
        ...

    def prepare(self, jobs: Sequence[Job]) -> None:
        """Called by :func:`build` before :meth:`map` with every job of the build (the
        finished ones and other ranks' included), so that an executor can plan from the
        whole build: how a job is trained then does not depend on which jobs remain."""


class SequentialExecutor(Executor):
    def map(self, jobs: Sequence[Job]) -> Iterator[JobResult]:
        for job in jobs:
            yield train_job(job)


def _worker_init():
    import signal

    import torch

    torch.set_num_threads(1)
    # Ctrl-C in a terminal reaches every process of the group: the build's own process
    # stops the workers (see pool_map); they print nothing
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _train_to_bytes(job: Job) -> bytes:
    # bytes cross the process boundary cheaply and exactly (no shared-memory tensors)
    return train_job(job).to_bytes()


def pool_map(fn, items: Sequence, workers: int, max_in_flight: int, describe) -> Iterator[tuple]:
    """``(item, fn(item))`` for every item, computed in ``workers`` spawned processes
    with at most ``max_in_flight`` submitted at once (so a killed build loses at most
    those), in completion order. ``describe(item)`` names an item in error messages."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    items = list(items)
    if not items:
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_worker_init)
    pending = {}
    it = iter(items)
    finished = False
    try:
        for item in it:
            pending[pool.submit(fn, item)] = item
            if len(pending) >= max_in_flight:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as e:
                    raise RuntimeError(f"{describe(item)} failed: {e!r}") from e
                nxt = next(it, None)
                if nxt is not None:
                    pending[pool.submit(fn, nxt)] = nxt
                yield item, result
        finished = True
    finally:
        # on an error or Ctrl-C, do not wait for the work in flight: its results would be
        # dropped anyway (workers only return bytes; the build writes files)
        if not finished:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=finished, cancel_futures=True)


class ProcessExecutor(Executor):
    """Train jobs in ``workers`` spawned worker processes."""

    def __init__(self, workers: int = 2, max_in_flight: int | None = None):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.max_in_flight = max_in_flight or 2 * workers

    def map(self, jobs: Sequence[Job]) -> Iterator[JobResult]:
        describe = lambda job: f"job {job.id} ({job.arch}, {job.hparams})"  # noqa: E731
        for _, data in pool_map(_train_to_bytes, jobs, self.workers, self.max_in_flight, describe):
            yield JobResult.from_bytes(data)


EXECUTORS = ("auto", "batched", "sequential", "process")


def make_executor(name: str = "auto", workers: int = 1, device: str = "auto",
                  max_batch: int | None = None) -> Executor:
    """``auto`` / ``batched``: :class:`~zoo.batched.BatchedExecutor` (stacked models, on
    ``device``; ``workers`` processes take whole batches).  ``sequential``: one network
    at a time (in ``workers`` processes when ``workers > 1``).  ``process``: the
    sequential trainer in ``workers`` processes."""
    if name in ("auto", "batched"):
        from .batched import DEFAULT_MAX_BATCH, BatchedExecutor

        return BatchedExecutor(workers, max_batch or DEFAULT_MAX_BATCH, device)
    if name == "sequential":
        return ProcessExecutor(workers) if workers > 1 else SequentialExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    raise ValueError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")


def _dist_env() -> tuple[int, int, bool]:
    """(rank, world_size, launched_by_torchrun)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                "MASTER_ADDR" in os.environ)
    return 0, 1, False


def _preflight(jobs: Sequence[Job]) -> None:
    """Load each dataset the jobs need once, here, so that a missing local copy fails
    with its explanatory error before any worker starts."""
    import json

    from .data import load_dataset, load_images

    seen = set()
    for j in jobs:
        key = (j.dataset, json.dumps(j.data_kwargs, sort_keys=True))
        if key not in seen:
            seen.add(key)
            (load_images if j.task == "inr" else load_dataset)(j.dataset, **j.data_kwargs)


def build(recipe: str, n: int, out: str | os.PathLike, seed: int = 0, *,
          executor: Executor | None = None, workers: int = 1, options: dict | None = None,
          rank: int | None = None, world_size: int | None = None, do_pack: bool | None = None,
          shard_bytes: int = DEFAULT_SHARD_BYTES, progress: bool = True) -> dict:
    """Build (or resume, or extend) a zoo of ``n`` networks from ``recipe`` in ``out``.

    ``options`` are the recipe's options (``steps``, ``sample``, ``hparams``, ...).
    ``do_pack`` defaults to packing when this process can see the whole build (one rank,
    or rank 0 after a torchrun barrier).  Returns a summary dict.
    """
    t0 = time.perf_counter()
    options = dict(options or {})
    rec = get_recipe(recipe)
    jobs = rec.jobs(n, seed, **options)
    resolved = {k: v for k, v in rec.options(**options).items() if not k.startswith("_")}
    build_info = {"recipe": recipe, "seed": int(seed), "n": int(n), "options": resolved}

    env_rank, env_world, torchrun = _dist_env()
    if rank is None and world_size is None:
        rank, world_size = env_rank, env_world
    else:
        rank, world_size, torchrun = int(rank or 0), int(world_size or 1), False
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    use_dist = torchrun and world_size > 1
    if use_dist:
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))

    zd = ZooDir(out)
    zd.root.mkdir(parents=True, exist_ok=True)
    zd.init(build_info)
    mine = [j for j in jobs if j.index % world_size == rank]
    done = zd.done_job_ids()
    todo = [j for j in mine if j.id not in done]

    _preflight(todo)
    if executor is None:
        executor = make_executor("auto", workers)
    if hasattr(executor, "prepare"):   # optional: executors need only ``map``
        executor.prepare(jobs)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        desc = recipe if world_size == 1 else f"{recipe} rank {rank}/{world_size}"
        bar = tqdm(total=len(todo), desc=desc, unit="net", position=rank if world_size > 1 else None)
    trained = 0
    diverged = 0
    try:
        for result in executor.map(todo):
            zd.write_job(result)
            trained += 1
            diverged += result.diverged_at is not None
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    train_s = time.perf_counter() - t0

    packed = None
    if use_dist:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0 and do_pack is not False:
            packed = pack(out, shard_bytes=shard_bytes, progress=progress)
        dist.barrier()
    elif do_pack or (do_pack is None and world_size == 1):
        packed = pack(out, shard_bytes=shard_bytes, progress=progress)
    return {"recipe": recipe, "n": n, "rank": rank, "world_size": world_size,
            "distributed": use_dist, "assigned": len(mine), "skipped": len(mine) - len(todo), "trained": trained,
            "diverged": diverged, "train_seconds": train_s,
            "seconds": time.perf_counter() - t0, "packed": packed}
