"""Training checkpoints: weights plus everything needed to rebuild, evaluate and export the model.

A checkpoint is a dict saved with ``torch.save``: the model's ``arch`` (factory name, class
count, keyword arguments), ``class_names``, the ``preprocess`` config (sizes and normalisation)
the model was trained with, the ``state_dict``, and the training history. Files are written to a temporary
name and renamed, so an interruption never leaves a half-written checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .export import Predictor
from .factory import create_model
from .files import atomic_write
from .model_files import is_torch_file, is_torchscript_file, loading_error
from .preprocessing import PreprocessConfig, classic_resize

FORMAT = "landmark-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, not ours, or does not fit the model."""


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict[str, Any], **extra: Any) -> None:
    """Save ``model``'s weights with ``metadata`` (class names, normalisation, sizes) and ``extra`` fields."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = {"format": FORMAT, "arch": getattr(model, "arch", None), "state_dict": state, **metadata, **extra}
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if is_torchscript_file(path):
        raise CheckpointError(f"{path}: an exported model (TorchScript), not a training checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        reason = loading_error(error) if is_torch_file(path) else \
            "neither a zip archive nor a pickle: damaged, cut short or another kind of file"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a PyTorch file, but not a training checkpoint of this project (`train` writes them)")
    return checkpoint


def load_weights(model: nn.Module, checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Load a checkpoint's weights into ``model``, explaining a class-count or architecture mismatch."""
    expected = getattr(model, "num_classes", None)
    found = len(checkpoint.get("class_names", [])) or None
    if expected is not None and found is not None and expected != found:
        raise CheckpointError(
            f"{source}: has {found} classes but the model has {expected}; build the model with "
            f"num_classes={found} or train a new checkpoint for this dataset"
        )
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        arch = (checkpoint.get("arch") or {}).get("name", "unknown")
        raise CheckpointError(f"{source}: weights do not fit this model (checkpoint architecture: {arch}; "
                              f"{_mismatch(model.state_dict(), checkpoint['state_dict'], error)})") from error
    return model


def _mismatch(own: dict[str, torch.Tensor], given: dict[str, torch.Tensor], error: RuntimeError) -> str:
    """What differs between a model's tensors and a checkpoint's, in counts and one example each (torch's own error
    lists every key, hundreds of lines for another architecture)."""
    missing = [key for key in own if key not in given]
    unexpected = [key for key in given if key not in own]
    reshaped = [key for key in own if key in given and own[key].shape != given[key].shape]
    said = [f"{len(keys)} {what}, such as {keys[0]!r}" for keys, what in
            ((missing, f"of the model's {len(own)} tensors missing"), (unexpected, "not the model's"),
             (reshaped, "of another shape")) if keys]
    return "; ".join(said) or str(error).strip().splitlines()[0]


def checkpoint_config(checkpoint: dict[str, Any], source: str | Path = "checkpoint") -> PreprocessConfig:
    """The preprocessing a checkpoint's model was trained with (also from checkpoints of version 0.1)."""
    try:
        if "preprocess" in checkpoint:
            return PreprocessConfig.from_dict(checkpoint["preprocess"])
        crop = int(checkpoint.get("image_size") or 224)  # 0.1 stored the sizes and statistics at the top level
        resize = int(checkpoint.get("resize_size") or classic_resize(crop))
        return PreprocessConfig(crop, resize, crop, tuple(checkpoint["mean"]), tuple(checkpoint["std"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: its preprocessing record is damaged ({error})") from error


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (no pretrained download needed)."""
    checkpoint = load_checkpoint(path)
    arch = checkpoint.get("arch")
    if not arch:
        raise CheckpointError(f"{path}: does not record its architecture; load it into a model with load_weights()")
    model = create_model(arch["name"], arch["num_classes"], pretrained=False, **arch["kwargs"])
    return load_weights(model, checkpoint, path).eval(), checkpoint


def predictor_from_checkpoint(checkpoint_path: str | Path) -> Predictor:
    """A training checkpoint's model as a :class:`~src.export.Predictor` with the preprocessing it was trained with
    (uncalibrated: its known score is the top probability; the ``export`` command calibrates)."""
    model, checkpoint = model_from_checkpoint(checkpoint_path)
    return Predictor(model, checkpoint["class_names"], checkpoint_config(checkpoint, checkpoint_path))
