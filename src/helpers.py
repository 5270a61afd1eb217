"""Environment, dataset location and download, normalisation statistics, and the confusion matrix.

These are the helpers the notebooks call first (`setup_env()`), so they keep the classic
project's names and call shapes; everything else is keyword arguments with safe defaults.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
import torch
from tqdm.auto import tqdm

from .images import IMAGE_EXTENSIONS, ImageReadError, load_rgb

DATASET_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
DEFAULT_DATA_DIR = Path("landmark_images")
DATA_ENV_VAR = "LANDMARK_DATA"
CACHE_ENV_VAR = "LANDMARK_CACHE"


class DataNotFoundError(FileNotFoundError):
    """No usable dataset: the message says where we looked and how to point at one."""


@dataclass(frozen=True)
class Environment:
    """What `setup_env` prepared: the device to train on and the dataset folder."""

    device: torch.device
    data_dir: Path
    checkpoints_dir: Path


def keep_parent_objects(worker_id: int) -> None:
    """``worker_init_fn``: the forked worker's garbage collector leaves what it inherited alone.

    Otherwise a worker may collect a copy of another loader's live iterator and run its clean-up,
    which only the parent may do ("AssertionError: can only test a child process" on stderr).
    """
    gc.freeze()


def get_device() -> torch.device:
    """CUDA when available, CPU otherwise; nothing else in the package needs to choose."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 42) -> None:
    """Seed Python, NumPy and torch (all devices) so that runs are repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_env(data_dir: str | Path | None = None, seed: int = 42, checkpoints_dir: str | Path = "checkpoints") -> Environment:
    """Seed everything, pick the device, find (or download) the data and create `checkpoints/`."""
    seed_everything(seed)
    device = get_device()
    location = get_data_location(data_dir)
    checkpoints = Path(checkpoints_dir)
    checkpoints.mkdir(parents=True, exist_ok=True)
    print(f"Device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"Dataset: {location}")
    return Environment(device=device, data_dir=location, checkpoints_dir=checkpoints)


def _check_dataset_dir(path: Path, origin: str) -> Path:
    missing = [split for split in ("train", "test") if not (path / split).is_dir()]
    if missing:
        raise DataNotFoundError(
            f"{path} (from {origin}) is not a dataset folder: it has no {' or '.join(f'{m}/' for m in missing)} "
            "subfolder. A dataset is an ImageFolder layout: train/<class>/<photo> and test/<class>/<photo>."
        )
    return path.resolve()


def get_data_location(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Return the dataset folder, looking in this order.

    1. ``data_dir`` when given; 2. the ``LANDMARK_DATA`` environment variable;
    3. ``./landmark_images``; 4. otherwise the canonical 50-class dataset is downloaded there
    (when ``download`` is true).
    """
    if data_dir is not None:
        return _check_dataset_dir(Path(data_dir).expanduser(), "the data_dir argument")
    if os.environ.get(DATA_ENV_VAR):
        return _check_dataset_dir(Path(os.environ[DATA_ENV_VAR]).expanduser(), f"${DATA_ENV_VAR}")
    if DEFAULT_DATA_DIR.is_dir():
        return _check_dataset_dir(DEFAULT_DATA_DIR, f"./{DEFAULT_DATA_DIR}")
    if not download:
        raise DataNotFoundError(
            f"No dataset found: pass a folder, set {DATA_ENV_VAR}=/path/to/dataset, or place it in ./{DEFAULT_DATA_DIR}."
        )
    return _check_dataset_dir(download_and_extract(), "the download")


def download_and_extract(url: str = DATASET_URL, destination: str | Path = DEFAULT_DATA_DIR) -> Path:
    """Download a zip of an ImageFolder dataset and extract it to ``destination``.

    Everything happens in a temporary folder beside ``destination`` and is moved into place
    only when complete, so an interrupted download never leaves half a dataset behind.
    """
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; remove it or point {DATA_ENV_VAR} at it.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{destination.name}-", dir=destination.parent) as tmp:
        archive = Path(tmp) / "dataset.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {url.rsplit('/', 1)[-1]}") as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as error:
            raise DataNotFoundError(
                f"Could not download the dataset from {url} ({getattr(error, 'reason', error)}). "
                f"Without internet, point at a local copy: set {DATA_ENV_VAR}=/path/to/dataset "
                "(a folder with train/ and test/), pass --data /path/to/dataset on the command line, "
                f"or place the dataset in ./{DEFAULT_DATA_DIR}."
            ) from error
        extracted = Path(tmp) / "extracted"
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(extracted)
        except zipfile.BadZipFile as error:
            raise DataNotFoundError(f"{url} did not give a valid zip archive ({error}).") from error
        roots = [p.parent for p in extracted.rglob("train") if p.is_dir() and (p.parent / "test").is_dir()]
        if not roots:
            raise DataNotFoundError(f"The archive from {url} has no folder with train/ and test/ inside.")
        shutil.move(str(min(roots, key=lambda p: len(p.parts))), destination)
    print(f"Dataset extracted to {destination}")
    return destination


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` then rename it to ``path``: readers never see half a file,
    and an interruption leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def list_images(folder: str | Path) -> list[Path]:
    """All files with a photo extension below ``folder``, sorted for reproducibility."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def dataset_fingerprint(folder: str | Path, paths: list[Path] | None = None) -> str:
    """A hash of the folder's path and every photo's name, size and mtime: changes when any file does.

    ``paths`` is the folder's :func:`list_images`, when the caller already has it.
    """
    folder = Path(folder).resolve()
    digest = hashlib.sha256(str(folder).encode())
    for path in list_images(folder) if paths is None else paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cache_dir() -> Path | None:
    """Where per-dataset caches live: ``$LANDMARK_CACHE`` or ``~/.cache/landmark-classifier``; None if unwritable."""
    path = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "landmark-classifier")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"{path}: cannot create the cache folder ({error}); set {CACHE_ENV_VAR} to a writable one", stacklevel=2)
        return None
    return path


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


def _drop_unreadable(batch: list[torch.Tensor | None]) -> list[torch.Tensor]:
    return [item for item in batch if item is not None]


def compute_mean_and_std(
    data_dir: str | Path | None = None, size: int = 64, num_workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the training photos, cached per dataset.

    The cache file is named by :func:`dataset_fingerprint`, so statistics computed for one
    dataset (or an older version of the same one) are never reused for another.
    Photos are reduced to ``size``x``size`` first: channel statistics barely depend on scale.
    """
    train_dir = get_data_location(data_dir) / "train"
    paths = list_images(train_dir)
    folder = cache_dir()
    cache_file = folder / f"mean_std-{dataset_fingerprint(train_dir, paths)}.json" if folder else None
    if cache_file is not None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text())
            return torch.tensor(cached["mean"]), torch.tensor(cached["std"])
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"{cache_file}: damaged cache file, recomputing", stacklevel=2)
    if not paths:
        raise DataNotFoundError(f"{train_dir} holds no photos to compute statistics from.")
    workers = min(os.cpu_count() or 1, 4) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _StatsImages(paths, size), batch_size=64, num_workers=workers, collate_fn=_drop_unreadable,
        worker_init_fn=keep_parent_objects,
    )
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for batch in tqdm(loader, desc="Computing mean and std", leave=False):
        for pixels in batch:
            total += pixels.sum(0)
            total_sq += (pixels**2).sum(0)
            count += pixels.shape[0]
    if count == 0:
        raise DataNotFoundError(f"None of the photos in {train_dir} could be read.")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    if cache_file is not None:
        record = {"dataset": str(train_dir), "mean": mean.tolist(), "std": std.tolist(), "images": len(paths)}
        atomic_write(cache_file, lambda tmp: tmp.write_text(json.dumps(record)))
    return mean.float(), std.float()


def plot_confusion_matrix(pred: ArrayLike, truth: ArrayLike, class_names: list[str] | None = None, normalize: bool = True):
    """Plot the confusion matrix of predicted vs true class indices; returns the matplotlib figure.

    Rows are true classes. With ``normalize`` each row shows the fraction of that class's photos,
    so classes of different sizes compare fairly; cell values are printed for up to 20 classes.
    """
    import matplotlib.pyplot as plt

    pred, truth = np.asarray(pred, dtype=int), np.asarray(truth, dtype=int)
    n = int(max(pred.max(initial=0), truth.max(initial=0)) + 1) if class_names is None else len(class_names)
    matrix = np.zeros((n, n), dtype=np.float64)
    np.add.at(matrix, (truth, pred), 1)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = class_names or [str(i) for i in range(n)]
    side = max(7.5, 0.28 * n + 3)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "photos")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8 if n > 20 else 10)
    ax.set_yticks(range(n), names, fontsize=8 if n > 20 else 10)
    ax.set_xlabel("Predicted landmark")
    ax.set_ylabel("True landmark")
    accuracy = float((pred == truth).mean()) if len(pred) else 0.0
    ax.set_title(f"Confusion matrix ({len(pred)} photos, accuracy {accuracy:.1%})")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j] > 0:
                    ax.text(j, i, f"{matrix[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}", ha="center", va="center",
                            fontsize=7, color="white" if matrix[i, j] > 0.5 * matrix.max() else "black")
    fig.tight_layout()
    return fig
