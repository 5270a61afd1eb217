"""The feature memory an export keeps: features of photos it was calibrated on, to add landmarks later.

Every export keeps (:func:`feature_memory`) up to :data:`MEMORY_PER_CLASS` validation photos per class and
:data:`MEMORY_NEGATIVES` photos of no known landmark: the network's own features of them, and plain ImageNet
features (:mod:`src.imagenet_features`), which tell apart landmarks the network never trained on. Adding
landmarks (:mod:`src.new_landmarks`) needs only that memory and the new photos, not the training data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from .decoding import square_batches
from .export import FeatureMemory, features_of
from .imagenet_features import CombinedFeatures, ImageNetFeatures
from .location import split_negatives
from .places import display_name
from .shared_trunk import SharedTrunkFeatures, SharedTrunkPredictor, general_tail

MEMORY_PER_CLASS = 100  # validation photos per class whose features an export keeps
MEMORY_NEGATIVES = 500  # negative photos whose features an export keeps
FEATURE_BATCH = 16  # images a network sees at once: its activations take ~22 MB per 224 px image, the batch's peak memory


def photo_features(model: nn.Module, paths: Sequence[Path], num_workers: int = -1, batch_size: int = 64
                   ) -> tuple[torch.Tensor, list[int], dict[int, str]]:
    """The features of photos on disk (an export's ``features_and_logits``, or ``model(images)`` for a feature
    extractor such as :class:`~src.imagenet_features.CombinedFeatures`), the indices of the readable ones, and
    ``{index: error}`` for the others."""
    features, kept, errors = [], [], {}
    extract = features_of(model)
    for indices, images, batch_errors in square_batches(list(paths), int(model.resize_size), batch_size, num_workers):
        errors.update(batch_errors)
        if images is not None:
            features.append(in_batches(extract, images))
            kept += indices
    return (torch.cat(features) if features else torch.zeros(0, 0)), kept, errors


def in_batches(extract: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """``extract(images)``, :data:`FEATURE_BATCH` images at a time: memory stays bounded however many photos are read."""
    with torch.inference_mode():
        return torch.cat([extract(batch) for batch in images.split(FEATURE_BATCH)])


def _evenly(items: Sequence, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[math.floor(i * len(items) / n)] for i in range(n)]


def rows_per_class(targets: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` indices of ``targets`` per class, spread evenly over each class's photos, class by class."""
    return [row for target in sorted(set(targets)) for row in _evenly([i for i, t in enumerate(targets) if t == target], n)]


def feature_memory(model: nn.Module, valid_features: torch.Tensor, valid_paths: Sequence[Path], valid_targets: Sequence[int],
                   negatives: Sequence[str | Path] = (), num_workers: int = -1, imagenet: ImageNetFeatures | None = None,
                   max_negatives: int = MEMORY_NEGATIVES) -> FeatureMemory:
    """What an export keeps to add landmarks later (and to detect unknown photos with): up to
    :data:`MEMORY_PER_CLASS` validation photos per class (their features computed once by the caller, who
    calibrates on them) and ``max_negatives`` training photos of the negatives folders (after them, target
    -1 - k for folder k, named in ``negative_sources``: adding a landmark a folder shows leaves its photos out); of
    each, the model's features and plain ImageNet ones: from the model's own trunk continued for a
    :class:`~src.shared_trunk.SharedTrunkPredictor` (:class:`~src.shared_trunk.SharedTrunkFeatures`), else from
    :class:`~src.imagenet_features.ImageNetFeatures`. Of the validation photos also the model's features as a model
    with added landmarks computes them (read at the larger of the two sizes), which that model's threshold is
    calibrated on. ``imagenet``: the second network that reads them (default: :class:`~src.imagenet_features.
    ImageNetFeatures` at its native size, as every export's)."""
    rows = rows_per_class(valid_targets, MEMORY_PER_CLASS)
    sourced = _evenly([(k, path) for k, folder in enumerate(negatives) for path in split_negatives(folder)[0]], max_negatives)
    trained_negatives = [path for _, path in sourced]
    size = valid_features.shape[1]
    if isinstance(model, SharedTrunkPredictor):
        network = model.model
        combined = SharedTrunkFeatures(model, general_tail(network.backbone_name, network.trunk_stages))
        # one pass gives a negative photo's own and ImageNet features, both read at the model's own size
        both, kept, _ = photo_features(combined, trained_negatives, num_workers)
        negative_features, negatives_general, negative_errors = both[:, :size], both[:, size:], {}
        described = (network.backbone_name, model.image_size, network.trunk_stages)
    else:
        imagenet = imagenet or ImageNetFeatures()
        combined = CombinedFeatures(model, imagenet)
        negative_features, kept, _ = photo_features(model, trained_negatives, num_workers)
        negatives_general, _, negative_errors = photo_features(imagenet, [trained_negatives[i] for i in kept], num_workers)
        described = (imagenet.backbone_name, imagenet.resize_size, 0)
    # one read of each validation photo gives both of its features as a model with added landmarks computes them
    # (the memory is not kept yet, so the split is the caller's feature size, not the extractor's base_size)
    as_read, readable, errors = photo_features(combined, [valid_paths[i] for i in rows], num_workers)
    if len(readable) != len(rows) or negative_errors:
        raise RuntimeError(f"photos became unreadable while exporting: {'; '.join({**errors, **negative_errors}.values())}")
    features = torch.cat([valid_features[rows], negative_features.reshape(-1, size)])
    general_features = torch.cat([as_read[:, size:], negatives_general.reshape(-1, as_read.shape[1] - size)])
    targets = [valid_targets[i] for i in rows] + [-1 - sourced[i][0] for i in kept]
    return FeatureMemory(features.half(), general_features.half(), as_read[:, :size].half(),
                         torch.tensor(targets, dtype=torch.long), rows, *described,
                         negative_sources=tuple(display_name(Path(folder).name) for folder in negatives))

