"""Per-channel mean and std of a dataset's training photos, computed once and cached per dataset.

The scratch CNN is normalised with its own data's statistics (pretrained backbones bring
ImageNet's). The cache file is named by the photos' fingerprint, so statistics of one dataset
(or an older version of it) are never reused for another.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from .decoding import keep_parent_objects
from .defaults import cpu_cores
from .files import cache_dir, touch_cache_file, write_cache_file
from .images import ImageReadError, load_rgb
from .location import DataNotFoundError, dataset_fingerprint, get_data_location, list_images
from .progress import tqdm


class _StatsImages(torch.utils.data.Dataset):
    """Photos as small float tensors (or None when unreadable) for computing channel statistics."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        try:
            image = load_rgb(self.paths[index], draft_size=(self.size, self.size)).resize((self.size, self.size))
        except ImageReadError as error:
            warnings.warn(f"Skipping unreadable image: {error}", stacklevel=2)
            return None
        return torch.from_numpy(np.asarray(image, dtype=np.float64) / 255.0).reshape(-1, 3)


def _channel_sums(batch: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``collate_fn``, run in the worker: a batch's per-channel sums and squared sums and its pixel count, the
    unreadable photos left out, so a few numbers cross to the parent process instead of every photo's pixels."""
    readable = [pixels for pixels in batch if pixels is not None]
    if not readable:
        return torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    pixels = torch.cat(readable)
    return pixels.sum(0), (pixels**2).sum(0), pixels.shape[0]


def _read_cached(cache_file: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached statistics, or None (with a warning) when the file is damaged or implausible."""
    try:
        cached = json.loads(cache_file.read_text())
        mean, std = [float(v) for v in cached["mean"]], [float(v) for v in cached["std"]]
        if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
            raise ValueError("expected three finite means and three positive stds")
    except (OSError, ValueError, KeyError, TypeError) as error:
        warnings.warn(f"{cache_file}: damaged statistics cache ({error}); recomputing", stacklevel=3)
        return None
    touch_cache_file(cache_file)
    return torch.tensor(mean), torch.tensor(std)


def compute_mean_and_std(
    data_dir: str | Path | None = None, size: int = 64, num_workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the training photos, cached per dataset.

    Photos are reduced to ``size``x``size`` first: channel statistics barely depend on scale.
    The loader has its own random generator, so a cold or warm cache leaves torch's global
    random state (and with it the model's initialisation) the same.
    """
    train_dir = get_data_location(data_dir) / "train"
    paths = list_images(train_dir)
    folder = cache_dir()
    cache_file = folder / f"mean_std-{dataset_fingerprint(train_dir, paths)}.json" if folder else None
    if cache_file is not None and cache_file.is_file():
        cached = _read_cached(cache_file)
        if cached is not None:
            return cached
    if not paths:
        raise DataNotFoundError(f"{train_dir} holds no photos to compute statistics from.")
    workers = min(cpu_cores(), 4) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _StatsImages(paths, size), batch_size=64, num_workers=workers, collate_fn=_channel_sums,
        worker_init_fn=keep_parent_objects, generator=torch.Generator().manual_seed(0),
    )
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for batch_sum, batch_sum_sq, batch_count in tqdm(loader, desc="Computing mean and std", leave=False):
        total += batch_sum
        total_sq += batch_sum_sq
        count += batch_count
    if count == 0:
        raise DataNotFoundError(f"None of the photos in {train_dir} could be read.")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    if cache_file is not None:
        record = {"dataset": str(train_dir), "mean": mean.tolist(), "std": std.tolist(), "images": len(paths)}
        write_cache_file(cache_file, lambda tmp: tmp.write_text(json.dumps(record)))
    return mean.float(), std.float()
