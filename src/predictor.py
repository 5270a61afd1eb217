"""Answers of an exported model (:mod:`src.export`) for photos on disk: one photo's top-k and verdict, or
many photos in batches (testing, benchmarks). ``Predictor`` is importable here, as in the classic project.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .answer import PhotoPrediction, answer, read_for
from .decoding import square_batches
from .defaults import BATCH_SIZE
from .export import ExportView, Predictor, export_view
from .progress import tqdm

__all__ = ["Predictor", "PhotoPrediction", "Predictions", "predict_photo", "top_k", "predict_photos", "predictor_test"]


def predict_photo(model: nn.Module | ExportView, path: str | Path, k: int = 5) -> PhotoPrediction:
    """The ``k`` most likely landmarks for one photo on disk, and whether it shows one of them at all
    (:func:`~src.answer.answer`, as the app answers an upload)."""
    view = export_view(model)
    return answer(view, read_for(view, path), k)


def top_k(model: nn.Module, path: str | Path, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely landmarks for one photo as ``(name, probability)``, best first."""
    return predict_photo(model, path, k).ranking


class Predictions(NamedTuple):
    """An exported predictor's output over photos on disk (unreadable photos left out of all three)."""

    truth: np.ndarray  # (N,) the targets given for the photos
    probabilities: np.ndarray  # (N, num_classes)
    known_scores: np.ndarray  # (N,) higher: one of the known landmarks (compare with ``unknown_threshold``)


def predict_photos(model_reloaded: nn.Module | ExportView, paths: list[Path], targets: list[int],
                   batch_size: int = BATCH_SIZE, num_workers: int = -1) -> Predictions:
    """An exported predictor's :class:`Predictions` over photos on disk, in batches.

    Photos are cut to the predictor's resize size as squares (:class:`~src.decoding.SquarePhotos`):
    the predictor then crops the same centre it would crop from the full photo, so batched
    results match one-photo-at-a-time prediction. Unreadable photos are skipped with a warning.
    """
    view = export_view(model_reloaded)
    truth: list[int] = []
    probabilities: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    batches = square_batches(paths, view.resize_size, batch_size, num_workers)
    with torch.inference_mode():
        for indices, images, errors in tqdm(batches, desc="Predicting", total=math.ceil(len(paths) / batch_size),
                                            leave=False, ncols=80):
            for message in errors.values():
                warnings.warn(f"Skipping unreadable image: {message}", stacklevel=2)
            if images is not None:
                batch_probabilities, batch_scores = view.classify(images)
                probabilities.append(batch_probabilities)
                scores.append(batch_scores)
                truth += [targets[index] for index in indices]
    if not truth:
        return Predictions(np.zeros(0, dtype=np.int64), np.zeros((0, len(view.class_names)), dtype=np.float32),
                           np.zeros(0, dtype=np.float32))
    return Predictions(np.asarray(truth, dtype=np.int64), torch.cat(probabilities).numpy(), torch.cat(scores).numpy())


def predictor_test(test_dataloader: DataLoader, model_reloaded: nn.Module, batch_size: int = BATCH_SIZE,
                   num_workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported predictor over the test photos of ``test_dataloader``, in batches.

    Returns ``(truth, pred)`` class-index arrays and prints the accuracy. Photos are decoded
    from disk (the loader's own transforms are not used: the predictor brings its own).
    """
    dataset = test_dataloader.dataset
    truth, probabilities, _ = predict_photos(model_reloaded, dataset.paths, dataset.targets, batch_size, num_workers)
    pred = probabilities.argmax(1)
    print(f"Accuracy: {(truth == pred).mean() if len(truth) else 0.0:.2%} ({len(truth)} photos)")
    return truth, pred
