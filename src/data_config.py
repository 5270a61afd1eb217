"""The preprocessing config of one run, resolved from the model's defaults, the photos and the caller's overrides
(as timm's ``resolve_data_config`` merges flags over a model's ``default_cfg``).

**The size rule** (when not given): ``eval_crop = min(native, median short side of the training
photos)``, where ``native`` is the model's native input size (224 for MobileNetV2, 240/260 for
EfficientNet-Lite1/2, 160 for the scratch CNN), and ``resize = eval_crop``: the whole centre square
is read, at most at the native size. Full-size photos are thus read at 224 px whole (no 256 -> 224
crop, which leaves out an eighth of the width and height); photos much smaller than that (``landmarks10``'s 128 px)
are used whole at their own size instead of being blown up.
A network pretrained at its native size (``DataDefaults.pretrained``) reads photos of at least
:data:`UPSCALE_FROM` of that size (web thumbnails of 170-220 px) at the native size, as full-size
ones: its filters were trained on objects at that scale (docs/data.md).
``train_crop`` is ``eval_crop x train_crop_ratio`` (a recipe setting, rounded down to a
multiple of 16): training on slightly smaller crops is faster and tests better (FixRes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .images import photo_sizes
from .location import get_data_location, list_images
from .preprocessing import MIN_SIZE, DataDefaults, PreprocessConfig, train_crop_for
from .statistics import compute_mean_and_std

PHOTOS_SAMPLED = 256  # headers read to find the typical photo size (a fraction of a second)
UPSCALE_FROM = 0.75  # photos with a short side of at least this share of a pretrained model's native size are read at it


def typical_short_side(paths: Sequence[Path]) -> int | None:
    """The median short side of (an even sample of) the photos, from their headers; None if none is readable."""
    step = max(1, len(paths) // PHOTOS_SAMPLED)
    sizes = photo_sizes(list(paths)[::step])
    return int(np.median(sizes.min(axis=1))) if len(sizes) else None


def resolve_data_config(defaults: DataDefaults, data_dir: str | Path | None = None, *, eval_crop: int | None = None,
                        resize: int | None = None, train_crop: int | None = None,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        train_crop_ratio: float = 0.875) -> PreprocessConfig:
    """The config of one run: the caller's values where given, else the size rule of the module docstring.

    ``defaults`` come from the model (``model.data_defaults`` or ``factory.data_defaults(name)``);
    the photos of ``data_dir/train`` are only read when a size or the statistics must be found.
    """
    if eval_crop is None and resize is not None:
        eval_crop = min(defaults.native_size, resize)
    elif eval_crop is None:
        photos = typical_short_side(list_images(get_data_location(data_dir) / "train"))
        near_native = defaults.pretrained and (photos or 0) >= UPSCALE_FROM * defaults.native_size
        eval_crop = defaults.native_size if near_native or photos is None else max(min(defaults.native_size, photos), MIN_SIZE)
    if resize is None:
        resize = eval_crop
    if mean is None or std is None:
        mean, std = (defaults.mean, defaults.std) if defaults.mean is not None else compute_mean_and_std(data_dir)
    return PreprocessConfig(eval_crop=eval_crop, resize=resize,
                            train_crop=train_crop or train_crop_for(eval_crop, train_crop_ratio),
                            mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))
