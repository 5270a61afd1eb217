"""The settings several parts of the project share, each defined once here (the command line, the notebooks,
the data loaders and adding landmarks read them from this module)."""

import os

SEED = 42  # seeds the train/validation split, the initial weights and the augmentation
VALID_SIZE = 0.2  # share of train/ held out as the validation split (model choice, calibration)
BATCH_SIZE = 50  # photos an exported model classifies at once when predicting, evaluating and tagging
OUTLIER_WEIGHT = 0.5  # weight of outlier exposure on photos of no known landmark, in training and adding landmarks


def cpu_cores() -> int:
    """The CPU cores this process may run on, for its decoding workers and threads: those of its affinity (set by
    ``taskset``, a container's cpuset or a batch scheduler such as Slurm), which ``os.cpu_count()`` ignores, shared
    among the processes ``torchrun`` starts on the machine (``LOCAL_WORLD_SIZE``); at least one."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        cores = os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
