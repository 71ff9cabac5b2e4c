"""Data-parallel training under `torchrun`: process-group setup and the few collectives the loop needs.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process, so the
training loop has one code path. Backend: NCCL on CUDA, gloo on CPU, chosen automatically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run's files and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> Context:
    """Join the process group torchrun describes in the environment, or run as a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if world_size == 1:
        return Context(device=device)
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not cuda:  # share this machine's cores between the processes instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    return Context(dist.get_rank(), world_size, local_rank, device)


def device_name(device: torch.device) -> str:
    """What a run trained on, for its record: the GPU's name, or CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def cleanup(ctx: Context) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: torch.Tensor, ctx: Context) -> torch.Tensor:
    """This process's disjoint share of a global batch (strided, so shares differ by at most one)."""
    return batch[ctx.rank::ctx.world_size] if ctx.enabled else batch


def sum_across(values: list[float], ctx: Context) -> list[float]:
    """Element-wise sum of a few numbers over all processes."""
    if not ctx.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_across(flag: bool, ctx: Context) -> bool:
    """True if any process says so: all processes must leave the loop at the same batch."""
    return sum_across([float(flag)], ctx)[0] > 0 if ctx.enabled else flag


def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(obj, ctx: Context):
    """The main process's value of `obj` on every process (e.g. the run folder it created)."""
    if not ctx.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
