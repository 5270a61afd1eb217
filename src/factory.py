"""One factory for every model the package can train: ``create_model(name, num_classes)``.

``"scratch"`` is :class:`~src.model.MyModel`; any other name is a pretrained backbone from
:mod:`src.transfer`. The name and keyword arguments are recorded on the model
(``model.arch``) so that checkpoints can rebuild it without the caller repeating them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .model import SCRATCH_DATA_DEFAULTS, MyModel
from .preprocessing import DataDefaults
from .transfer import OFFLINE_BACKBONES, get_backbone_spec, get_model_transfer_learning, list_backbones

SCRATCH = "scratch"


def list_models(offline_only: bool = True) -> list[str]:
    """Names ``create_model`` accepts: the scratch CNN and the backbones (offline ones by default)."""
    return [SCRATCH] + (list(OFFLINE_BACKBONES) if offline_only else list_backbones())


def data_defaults(name: str) -> DataDefaults:
    """Model ``name``'s native input size and normalisation, without building it."""
    return SCRATCH_DATA_DEFAULTS if name == SCRATCH else get_backbone_spec(name).data


def create_model(name: str, num_classes: int, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """Build model ``name`` with a ``num_classes`` head.

    ``kwargs`` go to :class:`MyModel` (``dropout``, ``widths``, ...) or to
    :func:`get_model_transfer_learning` (``freeze``, ``dropout``). ``pretrained=False`` skips
    loading ImageNet weights, for models whose weights come from a checkpoint anyway.
    """
    if name == SCRATCH:
        model: nn.Module = MyModel(num_classes=num_classes, **kwargs)
    else:
        model = get_model_transfer_learning(name, n_classes=num_classes, pretrained=pretrained, **kwargs)
    model.arch = {"name": name, "num_classes": num_classes, "kwargs": kwargs}
    return model
