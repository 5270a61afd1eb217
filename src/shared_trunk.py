"""A transfer model whose first stages never left their ImageNet weights: those stages run once for two features.

The transfer recipe trains only a backbone's last stages (:class:`~src.recipes.TransferRecipe` ``unfreeze``): the
stages before them keep their ImageNet weights, and they take most of the network's time (about 80 % for MobileNetV2 at
128 px, ``bench/new_landmark_features.py``). Adding landmarks needs plain ImageNet features beside the model's own
(:mod:`src.imagenet_features`). When the model reads photos at its backbone's native size or more, those plain
features are the backbone's own ImageNet ones: the *trunk* (the untouched first stages) runs once, the trained
stages after it give the model's features, and an ImageNet copy of the same stages (:func:`general_tail`) gives the
plain ones. A model with added landmarks then carries a copy of those later stages instead of a second network
(docs/adding-landmarks.md measures both designs). Below the native size ImageNet features name new landmarks less
often (MobileNetV2 at 128 px: 82.1 % against 88.0 % at 224, same bench), so such a model keeps the second network.

The trunk is found, not assumed: it is the longest run of first stages whose every tensor equals the ImageNet
weights (:func:`untouched_stages`), whatever the recipe or checkpoint says.
"""

from __future__ import annotations

import torch
from torch import nn

from .export import Predictor
from .transfer import OFFLINE_BACKBONES, TransferModel, get_backbone_spec


def _layers(stages: list[nn.Module]) -> list[nn.Module]:
    """Stages as callable layers in order (a timm stem or head stage is a list of a convolution and its norm)."""
    return [layer for stage in stages for layer in (stage if isinstance(stage, nn.ModuleList) else [stage])]


def _same_weights(trained: nn.Module, pretrained: nn.Module) -> bool:
    ours, theirs = trained.state_dict(), pretrained.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k].detach().cpu(), theirs[k]) for k in ours)


class PooledStages(nn.Module):
    """Feature maps from the trunk -> ``stages`` -> mean over the image: a feature vector per photo."""

    def __init__(self, stages: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.Sequential(*_layers(stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x).mean(dim=(2, 3))


class SharedTrunkModel(nn.Module):
    """A :class:`~src.transfer.TransferModel` as ``trunk`` (its first stages, ImageNet weights) -> ``tuned`` (the
    trained stages, pooled) -> ``head``: the same features and logits, with the trunk's output reachable."""

    def __init__(self, model: TransferModel, trunk_stages: int) -> None:
        super().__init__()
        stages = model.stages()
        self.trunk = nn.Sequential(*_layers(stages[:trunk_stages]))
        self.tuned = PooledStages(stages[trunk_stages:])
        self.head = model.head
        self.backbone_name: str = model.backbone_name
        self.trunk_stages: int = trunk_stages

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tuned(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def untouched_stages(model: nn.Module) -> int:
    """How many first stages of ``model`` (a :class:`~src.transfer.TransferModel` on an offline backbone) still hold
    their ImageNet weights (0 for any other model)."""
    if not isinstance(model, TransferModel) or model.backbone_name not in OFFLINE_BACKBONES:
        return 0
    pretrained, _ = get_backbone_spec(model.backbone_name).build(True)
    count = 0
    for trained, original in zip(model.stages(), model._stages_of(pretrained)):
        if not _same_weights(trained, original):
            break
        count += 1
    return count


def shared_trunk_model(model: nn.Module, eval_crop: int) -> SharedTrunkModel | None:
    """``model`` as a :class:`SharedTrunkModel` when it reads ``eval_crop`` px squares, at least its backbone's native
    size, and its first stages are ImageNet's while later ones were trained; None otherwise (a model from scratch, a
    smaller input, a backbone trained whole or not at all)."""
    count = untouched_stages(model)
    if count == 0 or count == len(model.stages()) or eval_crop < model.data_defaults.native_size:
        return None
    return SharedTrunkModel(model, count).eval()


def general_tail(backbone: str, trunk_stages: int) -> PooledStages:
    """The ImageNet copy of ``backbone``'s stages after its first ``trunk_stages``, pooled: from a shared trunk's
    output to plain ImageNet features (what :class:`SharedTrunkFeatures` computes)."""
    spec = get_backbone_spec(backbone)
    pretrained, _ = spec.build(True)
    return PooledStages(spec.stages(pretrained)[trunk_stages:]).eval().requires_grad_(False)


class SharedTrunkPredictor(Predictor):
    """A :class:`~src.export.Predictor` of a :class:`SharedTrunkModel`: also ``trunk_features`` (photos -> the output
    of its ImageNet first stages) and ``features_from_trunk`` (-> its features), so that a model with added landmarks
    computes its plain ImageNet features from the same pass (:class:`SharedTrunkFeatures`)."""

    ADDED_METHODS = ("trunk_features", "features_from_trunk")

    @torch.jit.export
    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.trunk(self._normalised(x))

    @torch.jit.export
    def features_from_trunk(self, trunk: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.tuned(trunk)


class SharedTrunkFeatures(nn.Module):
    """Raw photos -> the features a model with added landmarks classifies, from one pass through its ``base``'s trunk
    (a :class:`SharedTrunkPredictor`): the base's own (the first ``base_size`` columns), then plain ImageNet ones from
    ``general`` (:func:`general_tail`, the ImageNet copy of the base's trained stages)."""

    def __init__(self, base: torch.jit.ScriptModule | SharedTrunkPredictor, general: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.general = general
        self.base_size: int = int(base.memory_features.shape[1])
        self.resize_size: int = int(base.resize_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            trunk = self.base.trunk_features(x)
            return torch.cat([self.base.features_from_trunk(trunk), self.general(trunk)], dim=1)
