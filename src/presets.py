"""Train and evaluation transforms, as small classes in the style of torchvision's references.

Both take a uint8 image tensor (as :mod:`src.cache` stores them) or a PIL image and return a
normalised float tensor. Augmentation runs on uint8 tensors (torchvision transforms v2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def default_resize_size(image_size: int) -> int:
    """The classic 256 -> 224 ratio: resize the short side a little larger, then centre-crop."""
    return round(image_size * 256 / 224)


class ClassificationPresetTrain:
    """Random resized crop, flip and TrivialAugment, then optional random erasing."""

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip_prob: float = 0.5,
        auto_augment: bool = True,
        random_erase_prob: float = 0.0,
    ) -> None:
        steps: list[torch.nn.Module] = [
            v2.ToImage(),
            v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
        ]
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if auto_augment:
            steps.append(v2.TrivialAugmentWide())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
        if random_erase_prob > 0:
            steps.append(v2.RandomErasing(random_erase_prob))
        self.transforms = v2.Compose(steps)

    def __call__(self, image) -> torch.Tensor:
        return self.transforms(image)


class ClassificationPresetEval:
    """Resize the short side to ``resize_size``, centre-crop ``image_size``, normalise."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], resize_size: int | None = None) -> None:
        self.transforms = v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(resize_size or default_resize_size(image_size), antialias=True),
                v2.CenterCrop(image_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(mean), std=list(std)),
            ]
        )

    def __call__(self, image) -> torch.Tensor:
        return self.transforms(image)
