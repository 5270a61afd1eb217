"""Datasets and data loaders for any ImageFolder dataset with ``train/`` and ``test/``.

``get_data_loaders`` splits ``train/`` into a seeded train/validation split (the same split
every run), keeps ``test/`` untouched for the final measurement, and skips unreadable photos
with a warning that names them. Folders of *negative* photos (no known landmark) can join the
training split with the target :data:`UNKNOWN_TARGET`, for outlier exposure; a stable part of
them is held out (:func:`~src.location.split_negatives`) to measure unknown detection on. Photos are decoded
once per dataset and size (``src.cache``); augmentation runs on uint8 tensors.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets

from .cache import decoded_images
from .decoding import keep_parent_objects
from .defaults import SEED, VALID_SIZE, worker_count
from .distributed import is_distributed
from .images import is_image_file, load_rgb
from .location import get_data_location, list_images, split_negatives
from .places import display_name
from .preprocessing import PreprocessConfig, classic_config
from .presets import ClassificationPresetEval, ClassificationPresetTrain
from .statistics import compute_mean_and_std

UNKNOWN_TARGET = -1  # the target of a negative photo (pytorch-ood's convention: targets < 0 are unknown)


class PhotoFolder(datasets.ImageFolder):
    """An ImageFolder that reads photos with :func:`load_rgb` and reports the files it rejects.

    Files that are not images (wrong extension or unreadable header: README.txt, .DS_Store,
    empty files) are left out when the folder is scanned and listed in one warning.
    """

    def __init__(self, root: str | Path) -> None:
        rejected: list[str] = []

        def accept(path: str) -> bool:
            if is_image_file(path):
                return True
            rejected.append(path)
            return False

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset split folder not found")
        list_images(root)  # names the sub-folders that cannot be read (ImageFolder skips them silently)
        try:
            super().__init__(str(root), loader=load_rgb, is_valid_file=accept)
        except FileNotFoundError as error:  # torchvision names the empty class folders, not where they are
            left_out = f" ({len(rejected)} file(s) of it are not readable images, such as {rejected[0]})" if rejected else ""
            raise FileNotFoundError(f"{root}: {str(error).strip()} A split holds one folder of photos per class, each with "
                                    f"at least one photo{left_out}.") from error
        if rejected:
            shown = ", ".join(rejected[:10]) + (f" and {len(rejected) - 10} more" if len(rejected) > 10 else "")
            warnings.warn(f"{root}: skipped {len(rejected)} file(s) that are not readable images: {shown}", stacklevel=2)
        self.class_names = [display_name(c) for c in self.classes]

    @property
    def paths(self) -> list[Path]:
        """Every photo's path, in the order of ``samples`` and ``targets``."""
        return [Path(path) for path, _ in self.samples]


class LandmarkDataset(Dataset):
    """A subset of a :class:`PhotoFolder` with its own transform (train and valid share a folder).

    The photos are decoded once into a uint8 tensor by :func:`~src.cache.decoded_images`
    (``config.resize`` squares, cached on disk), so each item only costs its transform; photos
    that cannot be decoded are left out with a warning naming them. Items are
    ``(image, class_index)``, followed by the ``negatives`` (decoded the same way) as
    ``(image, UNKNOWN_TARGET)``; ``paths`` and ``targets`` list the landmark photos only.
    """

    def __init__(self, folder: PhotoFolder, indices: Sequence[int], transform: Callable | None,
                 config: PreprocessConfig, num_workers: int = -1, negatives: Sequence[Path] = ()) -> None:
        self.folder = folder
        candidates = list(indices)
        images, readable = decoded_images([Path(folder.samples[i][0]) for i in candidates], folder.root,
                                          config.resize, num_workers)
        keep = readable.nonzero().flatten()
        self.indices = [candidates[i] for i in keep.tolist()]
        self.images = images if len(keep) == len(candidates) else images[keep]
        self.negatives, self.negative_paths = _decoded_negatives(negatives, config.resize, num_workers)
        self.transform = transform
        self.config = config  # what evaluation, the checkpoint and the export use

    @property
    def root(self) -> Path:
        return Path(self.folder.root)

    @property
    def class_names(self) -> list[str]:
        return self.folder.class_names

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @property
    def paths(self) -> list[Path]:
        return [Path(self.folder.samples[i][0]) for i in self.indices]

    @property
    def targets(self) -> list[int]:
        return [self.folder.samples[i][1] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices) + len(self.negatives)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < len(self.indices):
            image, target = self.images[index], self.folder.samples[self.indices[index]][1]
        else:
            image, target = self.negatives[index - len(self.indices)], UNKNOWN_TARGET
        return (self.transform(image) if self.transform else image), target


def _decoded_negatives(folders: Sequence[Path], size: int, num_workers: int) -> tuple[torch.Tensor, list[Path]]:
    """The training part (:func:`split_negatives`) of every negatives folder, decoded like the landmark photos."""
    parts, paths = [torch.zeros(0, 3, size, size, dtype=torch.uint8)], []
    for folder in folders:
        train, _ = split_negatives(folder)
        if not train:
            raise ValueError(f"{folder}: no negative photos to train on")
        images, readable = decoded_images(train, folder, size, num_workers)
        parts.append(images[readable])
        paths += [path for path, ok in zip(train, readable.tolist()) if ok]
    return torch.cat(parts), paths


def _check_apart(negatives: Sequence[str | Path], root: Path) -> None:
    """Refuse a negatives folder that holds, or lies in, the dataset's photos: trained as no landmark, they would
    teach the model to doubt the very landmarks it learns."""
    splits = [(root / split).resolve() for split in ("train", "test")]
    for folder in negatives:
        negative = Path(folder).resolve()
        for split in splits:
            if negative == split or split in negative.parents or negative in split.parents:
                raise ValueError(f"{folder}: a negatives folder overlapping the dataset's {split}; negatives are photos "
                                 "of no landmark it learns: choose a folder outside its train/ and test/")


def _seeded_permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def split_indices(n_train: int, n_test: int, valid_size: float = VALID_SIZE, seed: int = SEED, limit: int | None = None
                  ) -> tuple[list[int], list[int], list[int]]:
    """``(train, valid, test)`` photo indices: a seeded split of ``train/`` (the same every run).

    ``limit`` keeps a seeded sample of that many training photos and a proportional number of
    test photos (None or -1: all).
    """
    limit = None if limit == -1 else limit
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of photos (or -1 for all), got {limit}")
    order = _seeded_permutation(n_train, seed)
    test_order = list(range(n_test))
    if limit is not None:
        test_order = sorted(_seeded_permutation(n_test, seed)[: max(1, round(limit * n_test / len(order)))])
        order = order[:limit]
    n_valid = int(round(valid_size * len(order)))
    return sorted(order[n_valid:]), sorted(order[:n_valid]), test_order


def get_data_loaders(
    batch_size: int = 32,
    valid_size: float = VALID_SIZE,
    num_workers: int = -1,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    config: PreprocessConfig | None = None,
    seed: int = SEED,
    train_preset: Callable | None = None,
    negatives: Sequence[str | Path] = (),
) -> dict[str, DataLoader]:
    """Return ``{"train", "valid", "test"}`` loaders.

    ``valid_size`` is the fraction of ``train/`` held out for validation (seeded by ``seed``);
    ``limit`` keeps a seeded random sample of that many training photos (and a proportional
    number of test photos), for quick runs. ``num_workers=-1`` uses every CPU core.
    ``config`` (sizes and normalisation) defaults to the classic project's 256 -> 224
    (:func:`~src.preprocessing.classic_config`); the recipes, the CLI and the notebooks pass the
    model's own, resolved from the photos (:func:`~src.data_config.resolve_data_config`).
    Photos are decoded once into ``config.resize`` squares (cached); evaluation centre-crops
    ``config.eval_crop``, training takes random crops of ``config.train_crop``.
    ``negatives`` are folders of photos of no known landmark; their training part joins the
    training split as :data:`UNKNOWN_TARGET` (outlier exposure, :mod:`src.optimization`).
    """
    if not 0 <= valid_size < 1:
        raise ValueError(f"valid_size must be in [0, 1), got {valid_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    root = get_data_location(data_dir)
    _check_apart(negatives, root)
    train_folder, test_folder = PhotoFolder(root / "train"), PhotoFolder(root / "test")
    if test_folder.classes != train_folder.classes:
        train_names, test_names = set(train_folder.classes), set(test_folder.classes)
        differences = [f"only in {split}: {', '.join(sorted(names))}" for split, names in
                       (("train/", train_names - test_names), ("test/", test_names - train_names)) if names]
        raise ValueError(f"{root}: train/ and test/ have different class folders ({'; '.join(differences)})")
    if len(train_folder.classes) < 2:
        raise ValueError(f"{root}/train: {len(train_folder.classes)} class folder(s); a classifier needs at least 2 "
                         "(any one-class model is trivially '100 %' right)")
    train_indices, valid_indices, test_order = split_indices(len(train_folder), len(test_folder), valid_size, seed, limit)
    if not train_indices or (valid_size > 0 and not valid_indices):
        photos = len(train_indices) + len(valid_indices)
        kept = " kept by the limit" if limit not in (None, -1) else ""
        short_of = "training" if not train_indices else "validation"
        least = next(n for n in range(1, 1000) if all(split_indices(n, 0, valid_size)[:2])) if valid_size > 0 else 1
        raise ValueError(f"{root}/train: {photos} training photo(s){kept} leave none for {short_of} ({valid_size:.0%} "
                         f"are held out to choose the best weights); it needs at least {least}")
    config = config or classic_config(*compute_mean_and_std(root))
    train_transform = train_preset or ClassificationPresetTrain(config)
    eval_transform = ClassificationPresetEval(config)
    splits = {
        "train": LandmarkDataset(train_folder, train_indices, train_transform, config, num_workers,
                                 [Path(folder) for folder in negatives]),
        "valid": LandmarkDataset(train_folder, valid_indices, eval_transform, config, num_workers),
        "test": LandmarkDataset(test_folder, test_order, eval_transform, config, num_workers),
    }
    workers = worker_count(num_workers)
    # Under torchrun each process trains on its own shard of the training split.
    train_sampler = DistributedSampler(splits["train"], shuffle=True, seed=seed, drop_last=True) if is_distributed() else None
    return {
        name: DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=name == "train" and train_sampler is None,
            sampler=train_sampler if name == "train" else None,
            drop_last=name == "train" and len(dataset) > batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=keep_parent_objects,
            pin_memory=torch.cuda.is_available(),
            # every loader its own generator: iterating one never moves torch's global random state
            generator=torch.Generator().manual_seed(seed),
        )
        for name, dataset in splits.items()
    }


def show_normalized(ax, image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
    """Draw a normalised ``(3, H, W)`` float tensor as the photo it came from (normalisation undone)."""
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    ax.imshow((image * s + m).clamp(0, 1).permute(1, 2, 0).numpy())
    ax.axis("off")


def visualize_one_batch(data_loaders: dict[str, DataLoader], max_n: int = 5, split: str = "train"):
    """Show ``max_n`` photos of one batch as the model sees them (augmented), titled with their class."""
    import matplotlib.pyplot as plt

    dataset: LandmarkDataset = data_loaders[split].dataset
    # A loader of its own: no worker processes left running, and the split's loader order is untouched.
    sample = DataLoader(dataset, batch_size=max_n, shuffle=True, generator=torch.Generator().manual_seed(0))
    images, labels = next(iter(sample))
    n = min(max_n, len(images))
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.4), squeeze=False)
    for ax, image, label in zip(axes[0], images[:n], labels[:n]):
        show_normalized(ax, image, dataset.config.mean, dataset.config.std)
        ax.set_title(dataset.class_names[int(label)], fontsize=9, wrap=True)
    fig.suptitle(f"One {split} batch ({images.shape[-1]}×{images.shape[-2]} px, after augmentation)")
    fig.tight_layout()
    return fig
