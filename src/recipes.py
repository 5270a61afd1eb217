"""The training recipes, defined once: their defaults are the shipped models' (README "Results").

The command line's training flags, ``bench/train.py``, the notebooks' parameters and the
Makefile all derive from these two classes, so a recipe cannot disagree with itself.
``ScratchRecipe`` trains :class:`~src.model.MyModel`; ``TransferRecipe`` runs the two-stage
fine-tuning of :mod:`src.finetune`. Values are checked when a recipe is made, so a mistyped
flag fails before any photo is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .defaults import OUTLIER_WEIGHT
from .optimization import OPTIMIZERS

SCHEDULERS = ("cosine", "plateau")
EPOCHS = 12  # the transfer recipe's stage-2 epochs on a dataset with enough photos for its min_steps


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not ok:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True)
class ScratchRecipe:
    """The CNN from scratch: AdamW, warm-up + cosine, label smoothing, small training crops."""

    epochs: int = _setting(42, "epochs on augmented photos")
    batch_size: int = _setting(64, "photos per step")
    lr: float = _setting(3e-3, "learning rate")
    weight_decay: float = _setting(5e-2, "weight decay")
    dropout: float = _setting(0.3, "dropout before the classifier")
    label_smoothing: float = _setting(0.1, "label smoothing of the loss")
    outlier_weight: float = _setting(OUTLIER_WEIGHT, "weight of outlier exposure on --negatives photos")
    optimizer: str = _setting("AdamW", f"one of {', '.join(OPTIMIZERS)}")
    momentum: float = _setting(0.9, "SGD momentum")
    scheduler: str = _setting("cosine", f"one of {', '.join(SCHEDULERS)}")
    train_crop_ratio: float = _setting(0.75, "training crop as a fraction of the evaluation crop")

    def __post_init__(self) -> None:
        _check_common(self)
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        _check_range("lr", self.lr, 0, 10, low_open=True)
        _check_range("momentum", self.momentum, 0, 1)


@dataclass(frozen=True)
class TransferRecipe:
    """Pretrained backbone: 1. head on cached features, 2. last stages unfrozen with their own rate."""

    head_epochs: int = _setting(30, "stage 1: head epochs on cached backbone features (0 skips stage 1)")
    feature_views: int = _setting(1, "stage 1: augmented views per photo (plus the centre view)")
    unfreeze: int = _setting(12, "stage 2: backbone stages trained with the head (0: none, -1: all)")
    epochs: int | None = _setting(None, f"stage 2: epochs on augmented photos (0: stop after stage 1; auto: {EPOCHS}, "
                                        "more when a small dataset would get fewer than min_steps steps)")
    min_steps: int = _setting(240, "stage 2: steps that the automatic epoch count reaches at least")
    batch_size: int = _setting(64, "photos per step")
    lr: float = _setting(1e-3, "learning rate of the head (both stages)")
    backbone_lr: float = _setting(5e-4, "stage 2: learning rate of the unfrozen backbone stages")
    weight_decay: float = _setting(1e-4, "weight decay")
    dropout: float = _setting(0.2, "dropout before the classifier")
    label_smoothing: float = _setting(0.1, "label smoothing of the loss")
    outlier_weight: float = _setting(OUTLIER_WEIGHT, "weight of outlier exposure on --negatives photos")
    warmup_epochs: float = _setting(0.3, "stage 2: learning-rate warm-up (it starts from a trained head)")
    head_batch_size: int = _setting(256, "stage 1: feature vectors per step")
    train_crop_ratio: float = _setting(0.875, "training crop as a fraction of the evaluation crop")

    def __post_init__(self) -> None:
        _check_common(self)
        for name in ("head_epochs", "feature_views", "epochs", "min_steps"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.head_epochs == 0 and self.epochs == 0:
            raise ValueError("head_epochs and epochs are both 0: nothing would be trained")
        if self.unfreeze < -1:
            raise ValueError(f"unfreeze must be -1 (all stages) or more, got {self.unfreeze}")
        if self.head_batch_size < 1:
            raise ValueError(f"head_batch_size must be at least 1, got {self.head_batch_size}")
        _check_range("lr", self.lr, 0, 10, low_open=True)
        _check_range("backbone_lr", self.backbone_lr, 0, 10, low_open=True)
        _check_range("warmup_epochs", self.warmup_epochs, 0, max(EPOCHS if self.epochs is None else self.epochs, 1))

    def stage2_epochs(self, steps_per_epoch: int) -> int:
        """Stage 2's epochs: ``epochs`` when given; else :data:`EPOCHS`, or more when an epoch of a small dataset
        has so few steps that they would not reach ``min_steps`` (an epoch count suited to thousands of photos
        gives a few hundred a tenth of the updates)."""
        if self.epochs is not None:
            return self.epochs
        return max(EPOCHS, math.ceil(self.min_steps / max(1, steps_per_epoch)))


def _check_common(recipe: ScratchRecipe | TransferRecipe) -> None:
    if recipe.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {recipe.batch_size}")
    _check_range("weight_decay", recipe.weight_decay, 0, 1)
    _check_range("dropout", recipe.dropout, 0, 0.99)
    _check_range("label_smoothing", recipe.label_smoothing, 0, 0.99)
    _check_range("outlier_weight", recipe.outlier_weight, 0, 10)
    _check_range("train_crop_ratio", recipe.train_crop_ratio, 0, 1, low_open=True)


Recipe = ScratchRecipe | TransferRecipe
RECIPE_CLASSES: tuple[type, ...] = (ScratchRecipe, TransferRecipe)


def recipe_class(model_name: str) -> type:
    """The recipe that trains ``model_name``: the scratch CNN's, or the transfer one for any backbone."""
    from .factory import SCRATCH

    return ScratchRecipe if model_name == SCRATCH else TransferRecipe


def recipe_for(model_name: str, **overrides: Any) -> Recipe:
    """``model_name``'s recipe with ``overrides`` (None values ignored); a setting of the other recipe is an error."""
    cls = recipe_class(model_name)
    given = {key: value for key, value in overrides.items() if value is not None}
    names = {f.name for f in fields(cls)}
    foreign = sorted(set(given) - names)
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: not a setting of the {cls.__name__} that trains {model_name!r}")
    return replace(cls(), **given)


def recipe_settings() -> dict[str, tuple[type, str, list[str]]]:
    """Every recipe setting as ``name -> (type, help, ["scratch 42", "transfer auto"])``, for command-line flags."""
    settings: dict[str, tuple[type, str, list[str]]] = {}
    for cls in RECIPE_CLASSES:
        label = cls.__name__.removesuffix("Recipe").lower()
        for f in fields(cls):
            shown = "auto" if f.default is None else f.default
            settings.setdefault(f.name, (type(f.default), f.metadata["help"], []))[2].append(f"{label} {shown}")
    return settings
