"""Unknown detection: the score that says whether a photo shows one of the landmarks a model knows.

Most photos a tagger meets show no landmark it knows. A classifier's softmax still spreads all
of its probability over the known classes, so a confident-looking answer means little. Two
pieces fix that:

1. **Training** (:class:`~src.optimization.OutlierExposureLoss`): photos of no known landmark
   (``--negatives``) are trained towards the uniform distribution (outlier exposure), so the
   network learns to keep its top probability low on what it does not know.
2. **The exported predictor** carries a *detector* — a TorchScript module that turns the
   network's features and logits into a ``known_score`` (higher: one of my landmarks) — and a
   threshold chosen on validation photos of the known landmarks (never on test ones):
   :func:`unknown_threshold`, the score :data:`ACCEPT_KNOWN` of them reach.

The detector is :class:`MaxSoftmax`, chosen by measurement (``bench/openset.py``, README
"Unknown photos and places"): after outlier exposure the top probability separates known from
unknown photos better than energy or the max-logit; the similarity to the nearest training photo
does a little better on some photo sets (and combining the two a little better still) but would
put a 30 MB feature bank in every export for gains too small to change a verdict often.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_ood.metrics import OODMetrics
from torch import nn

ACCEPT_KNOWN = 0.96  # share of validation photos of known landmarks the threshold accepts (target: 95 % on new ones)


class MaxSoftmax(nn.Module):
    """Known score = the top class probability (Hendrycks & Gimpel, 2017): the baseline, nothing to fit."""

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=1).max(dim=1).values


def unknown_threshold(known_scores: np.ndarray, accept: float = ACCEPT_KNOWN) -> float:
    """The score that ``accept`` of ``known_scores`` (validation photos of known landmarks) reach.

    Chosen on validation photos only: choosing on test photos would make the test figures a lie.
    """
    known_scores = np.asarray(known_scores, dtype=np.float64)
    if len(known_scores) == 0:
        raise ValueError("no validation photos to choose the unknown threshold on")
    if not 0 < accept <= 1:
        raise ValueError(f"accept must be in (0, 1], got {accept}")
    return float(np.quantile(known_scores, 1 - accept, method="lower"))


def open_set_report(known_scores: np.ndarray, unknown_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """How well scores tell photos of known landmarks from other photos.

    ``auroc`` (1 = perfect ranking), ``fpr95`` (share of unknown photos accepted at the threshold
    that accepts 95 % of the known ones; pytorch-ood's FPR95TPR), and at ``threshold`` the shares
    of known and unknown photos accepted.
    """
    known = torch.as_tensor(np.asarray(known_scores, dtype=np.float32))
    unknown = torch.as_tensor(np.asarray(unknown_scores, dtype=np.float32))
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError(f"need known and unknown photos, got {len(known)} and {len(unknown)}")
    metrics = OODMetrics()  # outlier scores (higher: more unknown), unknown photos labelled below 0
    metrics.update(-torch.cat([known, unknown]), torch.cat([torch.zeros(len(known)), -torch.ones(len(unknown))]).long())
    figures = metrics.compute()
    return {"auroc": round(float(figures["AUROC"]), 4), "fpr95": round(float(figures["FPR95TPR"]), 4),
            "known_accepted": round(float((known >= threshold).float().mean()), 4),
            "unknown_accepted": round(float((unknown >= threshold).float().mean()), 4),
            "known_photos": len(known), "unknown_photos": len(unknown)}
