"""Loss and optimizer factories."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .defaults import OUTLIER_WEIGHT

OPTIMIZERS = ("SGD", "Adam", "AdamW")


class OutlierExposureLoss(nn.CrossEntropyLoss):
    """Cross-entropy on photos of known landmarks, plus outlier exposure on negative photos.

    Targets below 0 mark negatives (photos of no known landmark; pytorch-ood's convention). Their
    term is the cross-entropy to the uniform distribution (Hendrycks et al., "Deep Anomaly
    Detection with Outlier Exposure", 2019): the network learns to spread its probability on what
    it does not know, so a low top probability means "unknown". A batch without negatives gets the
    plain (label-smoothed) cross-entropy, so it is a drop-in ``nn.CrossEntropyLoss``.
    """

    def __init__(self, label_smoothing: float = 0.0, outlier_weight: float = OUTLIER_WEIGHT) -> None:
        super().__init__(label_smoothing=label_smoothing)
        self.outlier_weight = outlier_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = target >= 0
        loss = logits.new_zeros(())
        if known.any():
            loss = F.cross_entropy(logits[known], target[known], label_smoothing=self.label_smoothing) * known.float().mean()
        if not known.all():
            uniform = -F.log_softmax(logits[~known], dim=1).mean(dim=1)
            loss = loss + self.outlier_weight * uniform.sum() / len(target)
        return loss


def get_loss(label_smoothing: float = 0.0, outlier_weight: float | None = None) -> nn.CrossEntropyLoss:
    """Cross-entropy on logits, as the classic project's ``get_loss()``.

    ``label_smoothing`` keeps a small model from over-confident guesses. ``outlier_weight`` opts in
    to :class:`OutlierExposureLoss` (the recipes do), which training on negative photos (targets
    below 0, :data:`~src.data.UNKNOWN_TARGET`) needs; the plain loss refuses such targets.
    """
    if outlier_weight is None:
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return OutlierExposureLoss(label_smoothing, outlier_weight)


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
