"""Train and evaluation transforms, as small classes in the style of torchvision's references.

Both take a uint8 image tensor (as :mod:`src.cache` stores them) or a PIL image and return a
normalised float tensor; their sizes and normalisation come from one
:class:`~src.preprocessing.PreprocessConfig`. Augmentation runs on uint8 tensors (transforms v2).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from .preprocessing import PreprocessConfig, resize_and_crop


class ClassificationPresetTrain:
    """Random resized crop of ``config.train_crop``, flip and TrivialAugment, then optional random erasing."""

    def __init__(
        self,
        config: PreprocessConfig,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        hflip_prob: float = 0.5,
        auto_augment: bool = True,
        random_erase_prob: float = 0.0,
    ) -> None:
        steps: list[torch.nn.Module] = [
            v2.ToImage(),
            v2.RandomResizedCrop(config.train_crop, scale=crop_scale, antialias=True),
        ]
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if auto_augment:
            steps.append(v2.TrivialAugmentWide())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(config.mean), std=list(config.std))]
        if random_erase_prob > 0:
            steps.append(v2.RandomErasing(random_erase_prob))
        self.transforms = v2.Compose(steps)

    def __call__(self, image) -> torch.Tensor:
        return self.transforms(image)


class ClassificationPresetEval:
    """Resize the short side to ``config.resize``, centre-crop ``config.eval_crop``, normalise.

    The resize and crop are :func:`~src.preprocessing.resize_and_crop`, the exported model's own.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self.to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        self.normalize = v2.Normalize(mean=list(config.mean), std=list(config.std))

    def __call__(self, image) -> torch.Tensor:
        pixels = self.to_float(image)
        return self.normalize(resize_and_crop(pixels.unsqueeze(0), self.config.resize, self.config.eval_crop)[0])
