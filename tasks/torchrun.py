"""torchrun support shared by the training tasks.

Under ``torchrun`` every process runs the same loop over the same global batches and
takes its own share of each; the gradients of the shares are summed across processes
before the optimizer step. Each share's loss is weighted so that the sum is the loss of
the whole global batch, so the summed gradient is the one a single process would get
(to float rounding), and since every process then applies the same update to the same
numbers, the model stays identical everywhere. Only rank 0 evaluates, logs and saves.

Outside torchrun (``WORLD_SIZE`` unset or 1) every function here is a no-op, so a loop
written with them runs unchanged in one process. Gradients are summed by hand (one
``all_reduce`` of a flat vector) rather than through ``DistributedDataParallel``: a
metanetwork has parameters its invariant forward never uses (GMN's node and edge heads)
and the last global batch can leave a process with no rows, two cases DDP does not
handle without ``find_unused_parameters`` and a forward on every process.

The process group uses ``nccl`` when the tensors it reduces live on a GPU, ``gloo``
otherwise.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch

__all__ = ["pick_device", "init", "close", "barrier", "active", "broadcast", "sum_gradients"]

_CREATED = False   # whether init() joined the group (close() then leaves it)


def pick_device(requested: str | torch.device = "cpu") -> torch.device:
    """The device a task trains on: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
    (the GPU when PyTorch sees one, else the CPU). A plain ``"cuda"`` under torchrun is
    the GPU of the process's ``LOCAL_RANK`` (one GPU per process), made current."""
    name = str(requested)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {requested!r}: use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"device {requested!r} is not supported for training: use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for, but this PyTorch sees no GPU "
                         f"(torch.cuda.is_available() is False; torch {torch.__version__}): "
                         f"use --device cpu, or auto to take a GPU only where there is one")
    if dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {dev} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    torch.cuda.set_device(dev)
    return dev


def init(device: str | torch.device = "cpu") -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, joining the process group when
    the world has more than one process."""
    global _CREATED
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
        _CREATED = True
    return dist.get_rank(), dist.get_world_size()


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def close() -> None:
    """Wait for every process, then leave the process group if :func:`init` joined it."""
    global _CREATED
    if active():
        torch.distributed.barrier()
        if _CREATED:
            torch.distributed.destroy_process_group()
            _CREATED = False


def broadcast(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers to every process (one identical start)."""
    if not active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(t.data, 0)


def sum_gradients(params: Iterable[torch.nn.Parameter], *values: torch.Tensor) -> list[torch.Tensor]:
    """Sum the gradients of ``params`` (and ``values``, e.g. the loss) over processes,
    in one ``all_reduce``; returns the summed ``values``.

    A parameter without a gradient counts as zero; it keeps ``grad=None`` only when no
    process gave it one, so the optimizer skips it exactly as it would in one process."""
    if not active():
        return [v.detach() for v in values]
    params = [p for p in params if p.requires_grad]
    ref = params[0]
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    used = torch.tensor([p.grad is not None for p in params], dtype=ref.dtype, device=ref.device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [used]
                     + [v.detach().reshape(-1).to(ref) for v in values])
    torch.distributed.all_reduce(flat)
    sizes = [p.numel() for p in params] + [len(params)] + [v.numel() for v in values]
    parts = flat.split(sizes)
    for p, g, u in zip(params, parts, parts[len(params)].tolist()):
        p.grad = g.view_as(p).clone() if u else None
    return [s.view_as(v).to(v.dtype) for s, v in zip(parts[len(params) + 1:], values)]
