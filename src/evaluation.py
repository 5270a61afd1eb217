"""Accuracy figures from predicted probabilities: top-1, top-k and per class."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_report(truth: np.ndarray, probabilities: np.ndarray, class_names: list[str], k: int = 5) -> dict[str, Any]:
    """Top-1 and top-``k`` accuracy overall, and top-1 accuracy for every class that has photos."""
    truth = np.asarray(truth, dtype=np.int64)
    if len(truth) == 0:
        raise ValueError("No photos were evaluated")
    ranked = np.argsort(-probabilities, axis=1)
    k = min(k, probabilities.shape[1])
    hits = ranked[:, 0] == truth
    per_class = {
        name: float(hits[truth == index].mean()) for index, name in enumerate(class_names) if (truth == index).any()
    }
    return {
        "photos": int(len(truth)),
        "top1": float(hits.mean()),
        f"top{k}": float((ranked[:, :k] == truth[:, None]).any(axis=1).mean()),
        "per_class_top1": per_class,
    }
