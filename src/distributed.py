"""Distributed data-parallel training under ``torchrun``, for users who outgrow one machine.

``torchrun --nproc_per_node N -m src train ...`` starts N processes; each joins the process group
(``nccl`` on GPUs, one GPU per process; ``gloo`` on CPUs), trains on its own shard of every
epoch (``DistributedSampler``) and averages gradients with the others (``DistributedDataParallel``).
Only rank 0 prints, saves checkpoints and exports. A plain ``python -m src train`` is unchanged.
"""

from __future__ import annotations

import os

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


def shutdown() -> None:
    """Leave the process group (every rank must call it at the end)."""
    if is_distributed():
        dist.destroy_process_group()
