"""Several processes under ``torchrun``: the process group, sharding of global batches, and the few
collective operations the train task needs; for the denoise task, the files shared out among the processes
(:func:`assign`) and :class:`SharedTransaction`, the one commit of a run whose outputs several processes wrote.

``torchrun --nproc_per_node=K -m emdenoise train ...`` starts K copies of the task with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` (and the rendezvous address) in their environment. When ``WORLD_SIZE`` > 1 the
train task joins a process group (gloo on the CPU, NCCL on GPUs, one GPU per process: ``cuda:LOCAL_RANK``),
wraps the model in DistributedDataParallel and gives each process its share of every global batch. Without
``WORLD_SIZE`` (or with 1) nothing here does anything and the task runs as a single process.

Batch norm: on GPUs the model's BatchNorm layers become SyncBatchNorm, which normalises over the whole global
batch, as a single process would. SyncBatchNorm has no CPU implementation, so on the CPU (gloo) each process
normalises its own shard and the batch statistics differ slightly from a single-process run; models without
batch norm (cafcn, msdnet, rednet, unet) train the same as one process up to rounding either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from emdenoise.errors import RuntimeFailure
from emdenoise.outputs import Transaction

# How long a process waits for the others at a collective before giving up (a crashed peer is usually
# noticed sooner: torchrun stops all workers when one of them fails).
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size`` 1: a plain single-process run)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0


SINGLE = World()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise RuntimeFailure(
            f"environment variable {name}: expected an integer (set by torchrun), got {text!r}"
        ) from None


def from_env() -> World:
    """The world torchrun describes in ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; SINGLE without them."""
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return SINGLE
    rank = _env_int("RANK", -1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < size:
        raise RuntimeFailure(
            f"environment variable RANK: expected 0 to {size - 1} with WORLD_SIZE={size}, got "
            f"{os.environ.get('RANK')!r} (start distributed runs with torchrun)"
        )
    return World(rank, size, local_rank)


def start(world: World, device: torch.device) -> tuple[torch.device, bool]:
    """Join the process group of ``world`` (a no-op for SINGLE) and return (this process's device, whether
    this call created the group, so the caller knows to :func:`stop` it).

    On CUDA each process takes the GPU of its local rank, whatever index ``device`` named.
    """
    if not world.enabled:
        return device, False
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise RuntimeFailure(
                f"process of local rank {world.local_rank} has no GPU: this node has "
                f"{torch.cuda.device_count()}; start at most that many processes per node"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device, False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    return device, True


def stop(created: bool) -> None:
    """Leave the process group if :func:`start` created it."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, world: World) -> slice:
    """This process's contiguous part of ``n`` items; the parts differ in size by at most one (the first
    ``n % size`` ranks take one more) and may be empty when ``n`` < ``size``."""
    base, extra = divmod(n, world.size)
    begin = world.rank * base + min(world.rank, extra)
    return slice(begin, begin + base + (1 if world.rank < extra else 0))


def prepare(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The model to train in this world: on GPUs under DDP, with SyncBatchNorm in place of BatchNorm (same
    parameters, buffers and state_dict keys). Call before creating the optimiser."""
    if world.enabled and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged over the processes), or itself for SINGLE.
    The wrapper starts from rank 0's parameters and buffers, broadcast to all."""
    if not world.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def sum_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place (a no-op for SINGLE); returns it."""
    if world.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sync_buffers(model: nn.Module, world: World) -> None:
    """Give every process rank 0's buffers (batch-norm running statistics), which its own last forward pass
    may have changed, so all evaluate exactly the model that rank 0 saves."""
    if world.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


@contextlib.contextmanager
def joined(world: World, device: torch.device) -> Iterator[torch.device]:
    """:func:`start` for the ``with`` block, :func:`stop` at its end; yields this process's device."""
    device, created = start(world, device)
    try:
        yield device
    finally:
        stop(created)


def assign(weights: Sequence[int], world: World) -> list[int]:
    """The rank that handles each item, the heaviest first onto the least loaded rank (ties: the lower rank):
    deterministic, so every process computes the same assignment; each rank gets a disjoint share."""
    load = [0] * world.size
    owner = [0] * len(weights)
    for item in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        rank = min(range(world.size), key=lambda r: (load[r], r))
        owner[item] = rank
        load[rank] += max(int(weights[item]), 1)
    return owner


def all_true(flag: bool, world: World) -> bool:
    """Whether ``flag`` is true in every process (a collective: every process must call it); ``flag`` alone
    for SINGLE."""
    if not world.enabled:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def totals(values: Sequence[float], world: World, maximum: bool = False) -> list[float]:
    """``values`` summed over the processes (their largest with ``maximum``); themselves for SINGLE."""
    tensor = torch.tensor(list(values), dtype=torch.float64)
    if world.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if maximum else dist.ReduceOp.SUM)
    return tensor.tolist()


class SharedTransaction(Transaction):
    """The :class:`~emdenoise.outputs.Transaction` of a run shared by the processes of ``world``.

    Every process declares the same plan (:meth:`put` and :meth:`remove` for every output, in the same
    order) and writes only its own staged files. At the end of the ``with`` block the processes agree: when
    all succeeded, rank 0 alone commits (moves every process's staged files into place; the staging folders
    are on the output's file system, shared by all nodes in a multi-node run) and the others wait for it;
    when any failed, nobody commits and each process raises (the failing one its own error, the others a
    RuntimeFailure saying another failed). A resumable transaction keeps the finished staged files for the
    next run, as a single process does. For SINGLE it is a plain Transaction.
    """

    def __init__(self, world: World, resumable: bool = False):
        super().__init__(resumable)
        self.world = world

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if not self.world.enabled:
            return super().__exit__(kind, value, tb)
        if not self._agree(kind is None):
            self._give_up()
            if kind is None:
                raise RuntimeFailure(
                    "another process of this run failed or was stopped (its error, if any, is above); "
                    "nothing was committed"
                    + ("; finished files stay staged for the next run" if self.resumable else "")
                )
            return  # this process's own exception goes on
        committed = True
        if self.world.is_main:
            try:
                super().__exit__(None, None, None)
            except BaseException:
                committed = False
                self._agree(False)
                raise
        else:
            self._steps.clear()  # rank 0 moves this process's files
        if not self._agree(committed):
            raise RuntimeFailure("process 0 could not commit this run's outputs (its error is above)")

    def _agree(self, flag: bool) -> bool:
        """:func:`all_true`; False when a process is gone (the collective fails: gloo sees the closed
        connection), so a process that was killed is a failure of the run, never a commit without it."""
        try:
            return all_true(flag, self.world)
        except RuntimeError:  # torch.distributed.DistBackendError and the like
            return False

    def _give_up(self) -> None:
        """A failed shared run: rank 0 aborts (a non-resumable abort removes the staged files of all); the
        others leave the staging folders to it."""
        if self.world.is_main:
            self.abort()
        self._steps.clear()
