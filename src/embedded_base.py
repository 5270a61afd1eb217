"""What a model with added landmarks (:mod:`src.new_landmarks`) carries of the export it was built on, and nothing more.

Such a model runs its base's network (``features_and_logits``, ``logits_from_features``) and, to add landmarks
again, reads the base's names, sizes, places, negatives folders and ``memory_as_added``. It never runs the base's
unknown detector (its own is calibrated again) and keeps the base's memory rows itself, with their ImageNet
features beside them (its first rows). So :func:`embedded_base` keeps the network and those attributes, frozen,
and drops the base's detector banks and memory: it keeps 11.5 MB of the shipped transfer model's 29.5 MB.
:func:`frozen` also folds batch norm into the convolutions of the ImageNet network beside it, which then takes about
a third less time on a CPU (docs/adding-landmarks.md).
"""

from __future__ import annotations

import io
import json
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .export import EXPORTED_ATTRIBUTES, ExportView, export_view, torchscript_on_purpose

# the base's own answers: a model with added landmarks answers with its own detector and memory
_ANSWERS = ("classify", "known_score", "known_score_from_features")


def frozen(module: nn.Module, keep: list[str]) -> torch.jit.ScriptModule:
    """``module`` scripted and frozen, keeping the attributes and methods ``keep`` (and ``forward``): its
    weights become constants, batch norm folded into the convolutions, and what no kept method uses is dropped. It is
    read back from its bytes (:func:`frozen_file`): TorchScript scripts a frozen module into another module only then."""
    with torchscript_on_purpose():
        return torch.jit.load(io.BytesIO(frozen_file(module, keep)))


def frozen_file(module: nn.Module, keep: list[str]) -> bytes:
    """The file of :func:`frozen`'s module, as bytes: what a process keeps to load copies of it quickly."""
    buffer = io.BytesIO()
    with torchscript_on_purpose():
        torch.jit.save(torch.jit.freeze(torch.jit.script(module.eval()), preserved_attrs=keep), buffer)
    return buffer.getvalue()


class EmbeddedBase(nn.Module):
    """An export's network and the attributes adding landmarks reads, with empty ``memory_features``,
    ``general_memory`` and ``memory_targets`` that keep their widths (the model with added landmarks holds
    those rows). It has no ``classify``: without a detector it gives probabilities, not verdicts."""

    def __init__(self, base: ExportView) -> None:
        super().__init__()
        module = base.module
        self.network = module
        self.format_version: int = base.format_version
        self.class_names: List[str] = list(base.class_names)
        self.image_size: int = base.image_size
        self.resize_size: int = base.resize_size
        self.register_buffer("mean", module.mean.clone())
        self.register_buffer("std", module.std.clone())
        self.unknown_threshold: float = base.unknown_threshold
        self.places_json: str = json.dumps({name: place.to_dict() for name, place in base.places.items()}, sort_keys=True)
        self.register_buffer("memory_features", base.memory_features[:0].clone())
        self.register_buffer("memory_targets", base.memory_targets[:0].clone())
        self.register_buffer("general_memory", base.general_memory[:0].clone())
        self.register_buffer("memory_as_added", base.memory_as_added.clone())
        self.general_backbone: str = str(module.general_backbone)
        self.general_size: int = int(module.general_size)
        self.general_trunk_stages: int = base.general_trunk_stages
        self.negative_sources_json: str = json.dumps(list(base.negative_sources))

    @torch.jit.export
    def features_and_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.network.features_and_logits(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities, as every export's ``forward`` (the app explains an original landmark with them)."""
        return F.softmax(self.network.features_and_logits(x)[1], dim=1)

    @torch.jit.export
    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.logits_from_features(features)


class EmbeddedTrunkBase(EmbeddedBase):
    """:class:`EmbeddedBase` of a :class:`~src.shared_trunk.SharedTrunkPredictor`: also the two halves of its network,
    which :class:`~src.shared_trunk.SharedTrunkFeatures` runs apart."""

    @torch.jit.export
    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.trunk_features(x)

    @torch.jit.export
    def features_from_trunk(self, trunk: torch.Tensor) -> torch.Tensor:
        return self.network.features_from_trunk(trunk)


def embedded_base(base: nn.Module | ExportView) -> torch.jit.ScriptModule:
    """The part of the export ``base`` that a model with added landmarks carries (module docstring), frozen."""
    view = export_view(base)
    keep = [name for name in EXPORTED_ATTRIBUTES if name not in _ANSWERS]
    if view.general_trunk_stages > 0:
        return frozen(EmbeddedTrunkBase(view), keep + ["trunk_features", "features_from_trunk"])
    return frozen(EmbeddedBase(view), keep)
