"""Distributed data-parallel training under ``torchrun``, for users who outgrow one machine.

``torchrun --nproc_per_node N -m src train ...`` starts N processes; each joins the process group
(``nccl`` on GPUs, one GPU per process; ``gloo`` on CPUs), trains on its own shard of every
epoch (``DistributedSampler``) and averages gradients with the others (``DistributedDataParallel``).
Each process also validates a share of the validation photos, and each epoch's figures are those of every shard
together (:func:`summed_over_ranks`); the transfer recipe's cached features are encoded a share by each process
(:func:`share`, :func:`gathered_rows`). Only rank 0 prints, saves checkpoints and exports. A plain
``python -m src train`` is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout

import torch
import torch.distributed as dist


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment; True when distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


@contextmanager
def printing_on_rank_0_only() -> Iterator[None]:
    """Every rank's standard output but rank 0's discarded, so that a run prints its report once; errors and progress
    bars (standard error) stay on every rank."""
    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as discarded, redirect_stdout(discarded):
        yield


def shutdown() -> None:
    """Leave the process group (every rank must call it at the end)."""
    if is_distributed():
        dist.destroy_process_group()


def summed_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Each of ``values`` added up over every rank (each rank gets the totals), so that figures counted on one shard
    describe the whole epoch; ``values`` as they are outside a distributed run. ``device``: where the process group
    reduces (the GPU for ``nccl``)."""
    if not is_distributed():
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def share(count: int) -> range:
    """This rank's contiguous share of ``count`` items (all of them outside a distributed run); the shares of ranks
    0, 1, ... follow each other, so :func:`gathered_rows` puts the items back in order."""
    return range(rank() * count // world_size(), (rank() + 1) * count // world_size())


def gathered_rows(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's ``rows`` one after the other, rank 0's first, on every rank (on the CPU); ``rows`` as they are
    outside a distributed run. ``device``: where the process group exchanges them (the GPU for ``nccl``)."""
    if not is_distributed():
        return rows
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([len(rows)], device=device))
    longest = max(int(count) for count in counts)
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=device)  # all_gather needs one shape
    padded[:len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(count)] for part, count in zip(parts, counts)]).cpu()
