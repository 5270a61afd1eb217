"""Copies of an export whose feature memory is made again another way, for the benches that ask what another memory
would change (``general_size.py``, ``memory_negatives.py``).

An export's memory (:func:`src.memory.feature_memory`) comes from its run's validation photos and negatives folders,
which its metrics JSON names. The network it was made with is the export's own (:func:`src.embedded_base.embedded_base`),
so the memory can be made again without the training checkpoint, and an export's unknown detector, whose bank holds
only the remembered photos of its own landmarks, answers as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from src.data import PhotoFolder, split_indices
from src.embedded_base import embedded_base
from src.export import ExportView
from src.imagenet_features import ImageNetFeatures
from src.memory import MEMORY_NEGATIVES, FeatureMemory, feature_memory, photo_features


def rebuilt_memory(view: ExportView, metrics: dict, imagenet: ImageNetFeatures | None = None,
                   max_negatives: int = MEMORY_NEGATIVES) -> FeatureMemory:
    """The memory of the export ``view`` made again from its validation photos (the seeded split of its run's dataset)
    and up to ``max_negatives`` of its negatives, with its own network and ``imagenet`` (default: the ImageNet network
    and size the export names)."""
    data = Path(metrics["data"])
    train = PhotoFolder(data / "train")
    valid = split_indices(len(train), len(PhotoFolder(data / "test")))[1]
    paths, targets = [train.paths[i] for i in valid], [train.targets[i] for i in valid]
    base = embedded_base(view)
    features, kept, _ = photo_features(base, paths)
    imagenet = imagenet or ImageNetFeatures(str(view.module.general_backbone), int(view.module.general_size))
    memory = feature_memory(base, features, [paths[i] for i in kept], [targets[i] for i in kept], metrics.get("negatives", []),
                            imagenet=imagenet, max_negatives=max_negatives)
    known = view.memory_targets[view.memory_targets >= 0]
    if not torch.equal(memory.targets[:len(known)], known):
        raise SystemExit("the export's memory holds other photos than its run's dataset gives")
    return memory


def save_copy(model: Path, metrics: dict, out: Path, **attributes: object) -> Path:
    """A copy of the export ``model`` with ``attributes`` replaced (its metrics JSON beside it)."""
    module = torch.jit.load(str(model))
    for name, value in attributes.items():
        setattr(module, name, value)
    torch.jit.save(module, str(out))
    out.with_suffix(".json").write_text(json.dumps(metrics))
    return out
