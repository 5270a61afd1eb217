"""The settings several parts of the project share, each defined once here (the command line, the notebooks,
the data loaders and adding landmarks read them from this module)."""

import os
from pathlib import Path

SEED = 42  # seeds the train/validation split, the initial weights and the augmentation
VALID_SIZE = 0.2  # share of train/ held out as the validation split (model choice, calibration)
BATCH_SIZE = 50  # photos an exported model classifies at once when predicting, evaluating and tagging
OUTLIER_WEIGHT = 0.5  # weight of outlier exposure on photos of no known landmark, in training and adding landmarks


# Where Linux states a CPU quota (cgroup v2, then v1): "QUOTA PERIOD" or "max PERIOD" in one file, or two files.
CPU_QUOTA_FILES: tuple[tuple[str, ...], ...] = (("/sys/fs/cgroup/cpu.max",),
                                                ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cpu_cores() -> int:
    """The CPU cores this process may run on, for its decoding workers and threads: those of its affinity (set by
    ``taskset``, a container's cpuset or a batch scheduler such as Slurm), which ``os.cpu_count()`` ignores, or
    fewer under a CPU quota (``docker --cpus``, a Kubernetes CPU limit), shared among the processes ``torchrun``
    starts on the machine (``LOCAL_WORLD_SIZE``); at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        cores = os.cpu_count() or 1
    quota = _cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def worker_count(num_workers: int, at_most: int | None = None) -> int:
    """``num_workers`` as the command line's ``--workers`` gives it: -1 (or any negative) for one worker process per
    core this process may use (:func:`cpu_cores`, no more than ``at_most``), 0 for none."""
    if num_workers >= 0:
        return num_workers
    return cpu_cores() if at_most is None else min(cpu_cores(), at_most)


def threads_within_cores() -> int:
    """Cap torch's threads at :func:`cpu_cores` and return them: torch counts the cores of its affinity, so under a
    CPU quota its threads would outnumber the cores the process is given and be throttled in turn. (torch is
    imported here, not above: this module stays light for whoever reads only its settings.)"""
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), cpu_cores()))
    return torch.get_num_threads()


def _cpu_quota() -> int | None:
    """The cgroup CPU quota in whole cores (rounded up), or None where none is set or readable."""
    for files in CPU_QUOTA_FILES:
        try:
            quota, period = " ".join(Path(name).read_text() for name in files).split()
        except (OSError, ValueError):  # no such files, or not two fields
            continue
        if quota.isdigit() and period.isdigit() and int(period) > 0:
            return -(-int(quota) // int(period))
        return None  # "max" (v2) or -1 (v1): no quota
    return None
