"""One preprocessing config per run, and the one resize-and-crop every path uses.

A :class:`PreprocessConfig` says how a photo becomes the model's input: its short side is
resized to ``resize``, the centre ``eval_crop`` square is kept (evaluation, export, prediction),
training takes random crops of ``train_crop``, and pixels are normalised with ``mean``/``std``.
:func:`~src.data_config.resolve_data_config` builds it once from the model's :class:`DataDefaults`,
the photos and the caller's overrides; the data loaders, the checkpoint and the exported predictor
all receive it.

:func:`resize_and_crop` is TorchScript-compatible: the decode cache, the batch predictor and the
exported model run the same code, so ``predict``, ``tag`` and ``evaluate`` see the same pixels.
This module needs only torch and NumPy: the exported model and the app's photo reading use it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MIN_SIZE = 16


@dataclass(frozen=True)
class DataDefaults:
    """What a model itself says about its input: native size, normalisation (None: the data's own), and
    whether it was ``pretrained`` at that size (then slightly smaller photos are scaled up to it)."""

    native_size: int
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pretrained: bool = False


@dataclass(frozen=True)
class PreprocessConfig:
    """Sizes in pixels and normalisation of one model's inputs (see the module docstring)."""

    eval_crop: int
    resize: int
    train_crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        for name in ("eval_crop", "resize", "train_crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < MIN_SIZE:
                raise ValueError(f"{name} must be a whole number of pixels, at least {MIN_SIZE}; got {value!r}")
        if self.resize < self.eval_crop:
            raise ValueError(f"resize ({self.resize} px) must be at least eval_crop ({self.eval_crop} px): "
                             "the crop is taken from the resized photo")
        object.__setattr__(self, "mean", _three("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _three("std", self.std, positive=True))

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "PreprocessConfig":
        return cls(int(record["eval_crop"]), int(record["resize"]), int(record["train_crop"]),
                   tuple(record["mean"]), tuple(record["std"]))


def _three(name: str, values: Sequence[float], positive: bool) -> tuple[float, float, float]:
    numbers = tuple(float(v) for v in values)
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers) or (positive and min(numbers) <= 0):
        raise ValueError(f"{name} must be three finite numbers{' above 0' if positive else ''} (R, G, B); got {values!r}")
    return numbers  # type: ignore[return-value]


def classic_resize(crop: int) -> int:
    """The classic 256 -> 224 ratio: resize the short side a little larger than the crop."""
    return round(crop * 256 / 224)


def classic_config(mean: Sequence[float], std: Sequence[float]) -> PreprocessConfig:
    """The classic project's inputs, whatever the photos' size: short side resized to 256, 224 crops
    (random ones for training), normalised with ``mean`` and ``std``."""
    return PreprocessConfig(eval_crop=224, resize=classic_resize(224), train_crop=224,
                            mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def train_crop_for(eval_crop: int, ratio: float) -> int:
    """``eval_crop x ratio`` rounded down to a multiple of 16 (at least 16)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"train_crop_ratio must be in (0, 1], got {ratio}")
    return max(MIN_SIZE, int(eval_crop * ratio) // 16 * 16)


def _round(value: float) -> int:
    return int(math.floor(value + 0.5))


def resize_and_crop(images: torch.Tensor, resize: int, crop: int, max_aspect: int = 16) -> torch.Tensor:
    """``(B, C, H, W)`` float images -> ``(B, C, crop, crop)``: short side resized to ``resize``
    (antialiased bilinear), centre square of ``crop`` kept.

    Memory stays bounded whatever the aspect ratio: beyond ``max_aspect`` (a strip, not a
    photo) the long side is trimmed around the centre *before* resizing, to that ratio.
    Up to it every pixel is computed exactly as a plain resize would (what the app's PIL view
    matches); beyond it the kept centre can shift by a fraction of a pixel.
    """
    height, width = images.shape[-2], images.shape[-1]
    short = min(height, width)
    long_side = max(height, width)
    needed = max_aspect * short
    if long_side > needed:
        needed += (long_side - needed) % 2  # cut the same amount on both sides: the centre stays put
        cut = (long_side - needed) // 2
        if height > width:
            images = images[:, :, cut:cut + needed, :]
        else:
            images = images[:, :, :, cut:cut + needed]
        height, width = images.shape[-2], images.shape[-1]
    if height <= width:
        size = [resize, max(resize, _round(resize * width / height))]
    else:
        size = [max(resize, _round(resize * height / width)), resize]
    if size[0] != height or size[1] != width:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    top = (size[0] - crop) // 2
    left = (size[1] - crop) // 2
    return images[:, :, top:top + crop, left:left + crop]


def square_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """A ``(3, H, W)`` uint8 photo as its ``(3, size, size)`` uint8 centre square (what the cache stores)."""
    square = resize_and_crop(image.unsqueeze(0).float(), size, size)[0]
    return square.round().clamp(0, 255).to(torch.uint8).contiguous()
