"""Loss and optimizer factories."""

from __future__ import annotations

import torch
from torch import nn

OPTIMIZERS = ("SGD", "Adam", "AdamW")


def get_loss(label_smoothing: float = 0.0) -> nn.CrossEntropyLoss:
    """Cross-entropy on logits; ``label_smoothing`` keeps a small model from over-confident guesses."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def get_optimizer(
    model: nn.Module,
    optimizer: str = "SGD",
    learning_rate: float = 0.01,
    momentum: float = 0.5,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """Build ``optimizer`` (``"SGD"``, ``"Adam"`` or ``"AdamW"``, any case) over the trainable parameters.

    Frozen parameters (``requires_grad=False``, e.g. a frozen pretrained backbone) are left out,
    so they cost no optimizer memory. Unknown names raise ``ValueError``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters (is everything frozen?)")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    name = optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    raise ValueError(f"Optimizer {optimizer!r} is not supported; choose one of {', '.join(OPTIMIZERS)}")
