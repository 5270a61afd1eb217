"""The run's environment: seeds, device, the dataset folder and the worker-process hook.

``setup_env()`` is what the notebooks call first, so it keeps the classic project's name and
call shape; everything else is keyword arguments with safe defaults. The classic project's
notebooks also import ``compute_mean_and_std`` and ``plot_confusion_matrix`` from here: both
resolve to their modules (``statistics``, ``analysis``) on first use, since those import this one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .allocator import keep_freed_memory
from .defaults import SEED, threads_within_cores
from .location import get_data_location

# Names the classic project's notebooks import from this module, and the module that defines each.
_CLASSIC_NAMES = {"compute_mean_and_std": "statistics", "plot_confusion_matrix": "analysis"}


def __getattr__(name: str):
    """``from src.helpers import compute_mean_and_std`` (and ``plot_confusion_matrix``) as the classic notebooks do."""
    if name in _CLASSIC_NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_CLASSIC_NAMES[name]}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Environment:
    """What `setup_env` prepared: the device to train on and the dataset folder."""

    device: torch.device
    data_dir: Path
    checkpoints_dir: Path


def get_device() -> torch.device:
    """CUDA when available, CPU otherwise; nothing else in the package needs to choose."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = SEED) -> None:
    """Seed Python, NumPy and torch (all devices) so that runs are repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_env(data_dir: str | Path | None = None, seed: int = SEED, checkpoints_dir: str | Path = "checkpoints") -> Environment:
    """Seed everything, keep freed memory for the next step (:mod:`src.allocator`), keep torch's threads within the
    cores this process may use, pick the device, find (or download) the data and create `checkpoints/`."""
    keep_freed_memory()
    threads_within_cores()
    seed_everything(seed)
    device = get_device()
    location = get_data_location(data_dir)
    checkpoints = Path(checkpoints_dir)
    checkpoints.mkdir(parents=True, exist_ok=True)
    print(f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"Dataset: {location}")
    return Environment(device=device, data_dir=location, checkpoints_dir=checkpoints)
