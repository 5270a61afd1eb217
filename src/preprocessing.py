"""One preprocessing config per run, and the one resize-and-crop every path uses.

A :class:`PreprocessConfig` says how a photo becomes the model's input: its short side is
resized to ``resize``, the centre ``eval_crop`` square is kept (evaluation, export, prediction),
training takes random crops of ``train_crop``, and pixels are normalised with ``mean``/``std``.
:func:`resolve_data_config` builds it once from the model's defaults, the photos and the
caller's overrides (as timm's ``resolve_data_config`` merges flags over a model's
``default_cfg``); the data loaders, the checkpoint and the exported predictor all receive it.

**The size rule** (when not given): ``resize = min(median short side of the training photos,
native x 256/224)`` and ``eval_crop = min(native, resize)``, where ``native`` is the model's
native input size (224 for MobileNetV2, 240/260 for EfficientNet-Lite1/2, 160 for the scratch
CNN). Full-size photos thus get the classic 256 -> 224 resize and crop; photos much smaller than
that (``landmarks10``'s 128 px) are used whole at their own size instead of being blown up.
A network pretrained at its native size (``DataDefaults.pretrained``) reads photos of at least
:data:`UPSCALE_FROM` of that size (web thumbnails of 170-220 px) at the native size, as full-size
ones: its filters were trained on objects at that scale (docs/data.md).
``train_crop`` is ``eval_crop x train_crop_ratio`` (a recipe setting, rounded down to a
multiple of 16): training on slightly smaller crops is faster and tests better (FixRes).

:func:`resize_and_crop` is TorchScript-compatible: the decode cache, the batch predictor and the
exported model run the same code, so ``predict``, ``tag`` and ``evaluate`` see the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .images import photo_sizes
from .location import get_data_location, list_images
from .statistics import compute_mean_and_std

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
PHOTOS_SAMPLED = 256  # headers read to find the typical photo size (a fraction of a second)
MIN_SIZE = 16
UPSCALE_FROM = 0.75  # photos with a short side of at least this share of a pretrained model's native size are read at it


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


def typical_short_side(paths: Sequence[Path]) -> int | None:
    """The median short side of (an even sample of) the photos, from their headers; None if none is readable."""
    step = max(1, len(paths) // PHOTOS_SAMPLED)
    sizes = photo_sizes(list(paths)[::step])
    return int(np.median(sizes.min(axis=1))) if len(sizes) else None


def resolve_data_config(defaults: DataDefaults, data_dir: str | Path | None = None, *, eval_crop: int | None = None,
                        resize: int | None = None, train_crop: int | None = None,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        train_crop_ratio: float = 0.875) -> PreprocessConfig:
    """The config of one run: the caller's values where given, else the rule of the module docstring.

    ``defaults`` come from the model (``model.data_defaults`` or ``factory.data_defaults(name)``);
    the photos of ``data_dir/train`` are only read when a size or the statistics must be found.
    """
    if resize is None or eval_crop is None:
        root = get_data_location(data_dir)
        photos = typical_short_side(list_images(root / "train"))
        if resize is None:
            limit = classic_resize(defaults.native_size if eval_crop is None else eval_crop)
            near_native = defaults.pretrained and eval_crop is None and (photos or 0) >= UPSCALE_FROM * defaults.native_size
            resize = limit if near_native else max(min(photos or limit, limit), eval_crop or MIN_SIZE)
        if eval_crop is None:
            eval_crop = min(defaults.native_size, resize)
    if mean is None or std is None:
        mean, std = (defaults.mean, defaults.std) if defaults.mean is not None else compute_mean_and_std(data_dir)
    return PreprocessConfig(eval_crop=eval_crop, resize=resize,
                            train_crop=train_crop or train_crop_for(eval_crop, train_crop_ratio),
                            mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


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
