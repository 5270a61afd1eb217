"""Finishing a training run, the same way from the command line and both notebooks.

``finish_run`` steps:
1. wrap the trained model in a :class:`~src.predictor.Predictor` with the run's preprocessing
   config and the places of its classes (:mod:`src.places`);
2. keep the features that adding landmarks later needs (:mod:`src.memory`), calibrate the
   unknown detector on them, on training photos and on the validation photos, and choose its threshold
   there (:func:`~src.openset.nearest_detector`, :func:`~src.openset.unknown_threshold`);
3. export it with TorchScript (atomically) and reload the file, as the app will;
4. predict every test photo once with it (from the files on disk, not the training tensors);
5. compute top-1 / top-k / per-class accuracy, the share of test photos accepted as known and,
   given negatives folders, unknown detection on their held-out photos; print them;
6. write the metrics JSON beside the export, with the command that reproduces the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import LandmarkDataset
from .evaluation import RunRecord, classification_report, training_metrics, write_metrics
from .export import Predictor, export_predictor, open_export
from .location import held_out_negatives
from .memory import feature_memory, photo_features, rows_per_class
from .openset import TRAINING_BANK_PHOTOS, nearest_detector, open_set_report, unknown_threshold
from .places import places_for
from .predictor import predict_photos
from .shared_trunk import SharedTrunkPredictor, shared_trunk_model


@dataclass
class RunResult:
    """What :func:`finish_run` produced: the reloaded export, its test predictions, report and metrics."""

    exported: torch.jit.ScriptModule
    truth: np.ndarray
    probabilities: np.ndarray
    known_scores: np.ndarray
    report: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def pred(self) -> np.ndarray:
        return self.probabilities.argmax(1)


def training_bank(predictor: Predictor, train_set: LandmarkDataset, batch_size: int = 64) -> torch.Tensor:
    """The features of up to :data:`~src.openset.TRAINING_BANK_PHOTOS` training photos, evenly over the
    classes: the unknown detector's ``training_bank``. Taken from the photos ``train_set`` decoded for
    training (its ``config.resize`` squares, what the export cuts from a photo itself), not decoded again."""
    rows = torch.tensor(rows_per_class(train_set.targets, max(1, TRAINING_BANK_PHOTOS // len(train_set.class_names))))
    with torch.inference_mode():
        return torch.cat([predictor.features_and_logits(train_set.images[batch])[0] for batch in rows.split(batch_size)])


def calibrated_predictor(model: nn.Module, valid_set: LandmarkDataset, places_csv: str | Path | None = None,
                         num_workers: int = -1, negatives: Sequence[str | Path] = (),
                         train_set: LandmarkDataset | None = None, share_trunk: bool = True) -> Predictor:
    """Steps 1-2: ``model`` as a :class:`~src.export.Predictor` (a :class:`~src.shared_trunk.SharedTrunkPredictor` when its
    first stages are ImageNet's and it reads photos at its backbone's native size, :mod:`src.shared_trunk`; not with
    ``share_trunk=False``) with its places, the feature memory that
    adding landmarks needs (validation photos and the training half of ``negatives``;
    :func:`~src.memory.feature_memory`, with their plain ImageNet features), an unknown detector that
    compares photos with that memory and with ``train_set``'s photos (:func:`training_bank`; None: the memory
    alone), and its threshold chosen on ``valid_set``. What ``finish_run`` and the ``export`` command export."""
    names, places = valid_set.class_names, places_for(valid_set.class_names, places_csv)
    shared = shared_trunk_model(model.cpu().eval(), valid_set.config.eval_crop) if share_trunk else None
    kind, model = (Predictor, model) if shared is None else (SharedTrunkPredictor, shared)
    plain = kind(model, names, valid_set.config, places=places)  # the network's features, to calibrate on
    features, kept, _ = photo_features(plain, valid_set.paths, num_workers)  # one pass: threshold and memory
    memory = feature_memory(plain, features, [valid_set.paths[i] for i in kept], [valid_set.targets[i] for i in kept],
                            negatives, num_workers)
    training = training_bank(plain, train_set) if train_set is not None else None
    with torch.inference_mode():
        detector, known_scores = nearest_detector(memory.features[memory.targets >= 0], torch.tensor(memory.rows),
                                                  features, plain.logits_from_features(features), training_bank=training)
    return kind(model, names, valid_set.config, places=places, detector=detector,
                unknown_threshold=unknown_threshold(known_scores), memory=memory)


def finish_run(model: nn.Module, datasets: Mapping[str, LandmarkDataset], export: str | Path, record: RunRecord, *,
               negatives: Sequence[str | Path] = (), places_csv: str | Path | None = None, num_workers: int = -1) -> RunResult:
    """Export, reload, test, report and record a trained ``model`` (the steps of the module docstring).

    ``datasets``: the ``"valid"`` photos (calibration), the ``"test"`` photos, and optionally the ``"train"``
    photos, which the unknown detector compares photos with (without them: the remembered validation photos
    alone). ``negatives`` are the folders trained on with outlier exposure: their held-out photos measure unknown
    detection. ``places_csv`` adds or corrects places. ``record`` says how the model was trained (metrics JSON).
    """
    valid_set, test_set, train_set = datasets["valid"], datasets["test"], datasets.get("train")
    export = Path(export)
    export_predictor(calibrated_predictor(model, valid_set, places_csv, num_workers, negatives, train_set), export)
    view = open_export(export)
    exported = view.module
    truth, probabilities, known_scores = predict_photos(view, test_set.paths, test_set.targets, num_workers=num_workers)
    report = classification_report(truth, probabilities, view.class_names)
    threshold = view.unknown_threshold
    report["unknown_threshold"] = threshold
    report["known_accepted"] = round(float((known_scores >= threshold).mean()), 4)
    held_out = held_out_negatives(negatives)
    if held_out:
        unknown_scores = predict_photos(view, held_out, [-1] * len(held_out), num_workers=num_workers).known_scores
        report["held_out_negatives"] = open_set_report(known_scores, unknown_scores, threshold)
    k = report["k"]
    print(f"Exported model {export}: test top-1 {report['top1']:.2%}, top-{k} {report[f'top{k}']:.2%} "
          f"on {report['photos']} photos; {report['known_accepted']:.1%} accepted as known "
          f"(threshold {threshold:.3f}, chosen on {len(valid_set.paths)} validation photos)")
    if held_out:
        figures = report["held_out_negatives"]
        print(f"Unknown detection on {figures['unknown_photos']} held-out negative photos: AUROC {figures['auroc']:.4f}, "
              f"FPR@95TPR {figures['fpr95']:.1%}, {figures['unknown_accepted']:.1%} accepted at the threshold")
    metrics = training_metrics(record, report, export, preprocess=test_set.config.to_dict(),
                               negatives=[str(folder) for folder in negatives])
    print(f"Metrics in {write_metrics(export, metrics)}")
    return RunResult(exported, truth, probabilities, known_scores, report, metrics)
