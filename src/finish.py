"""Finishing a training run, the same way from the command line and both notebooks.

``finish_run`` steps:
1. wrap the trained model in a :class:`~src.predictor.Predictor` with the run's preprocessing
   config and export it with TorchScript (atomically);
2. reload the exported file, as the app will;
3. predict every test photo once with it (from the files on disk, not the training tensors);
4. compute top-1 / top-k / per-class accuracy and print them;
5. write the metrics JSON beside the export, with the command that reproduces the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import LandmarkDataset
from .evaluation import classification_report, training_metrics, write_metrics
from .predictor import Predictor, export_predictor, load_exported, predict_photos


@dataclass
class RunResult:
    """What :func:`finish_run` produced: the reloaded export, its test predictions, report and metrics."""

    exported: torch.jit.ScriptModule
    truth: np.ndarray
    probabilities: np.ndarray
    report: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def pred(self) -> np.ndarray:
        return self.probabilities.argmax(1)


def finish_run(model: nn.Module, test_set: LandmarkDataset, export: str | Path, *, command: str, model_name: str,
               data_dir: str | Path, device: Any, history: list[dict[str, float]], train_seconds: float,
               num_workers: int = -1, **extra: Any) -> RunResult:
    """Export, reload, test, report and record a trained ``model`` (the steps of the module docstring).

    ``extra`` fields go into the metrics JSON (stage-1 figures, the checkpoint path, ...).
    """
    export = Path(export)
    export_predictor(Predictor(model.cpu().eval(), test_set.class_names, test_set.config), export)
    exported = load_exported(export)
    truth, probabilities = predict_photos(exported, test_set.paths, test_set.targets, num_workers=num_workers)
    report = classification_report(truth, probabilities, exported.class_names)
    k = report["k"]
    print(f"Exported model {export}: test top-1 {report['top1']:.2%}, top-{k} {report[f'top{k}']:.2%} "
          f"on {report['photos']} photos")
    metrics = training_metrics(command, model_name, data_dir, device, history, train_seconds, report, export,
                               preprocess=test_set.config.to_dict(), **extra)
    print(f"Metrics in {write_metrics(export, metrics)}")
    return RunResult(exported, truth, probabilities, report, metrics)
