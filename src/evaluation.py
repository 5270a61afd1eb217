"""Accuracy figures from predicted probabilities (top-1, top-k, per class) and a run's metrics file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write


def classification_report(truth: np.ndarray, probabilities: np.ndarray, class_names: list[str], k: int = 5) -> dict[str, Any]:
    """Top-1 and top-``k`` accuracy overall (``report[f"top{report['k']}"]``), and top-1 for every class with photos."""
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
        "k": k,  # top-k is top-5, or fewer with fewer than 5 classes
        f"top{k}": float((ranked[:, :k] == truth[:, None]).any(axis=1).mean()),
        "per_class_top1": per_class,
    }


@dataclass(frozen=True)
class RunRecord:
    """How a model was trained, for its metrics JSON: the command that reproduces the run and what it used."""

    command: str
    model_name: str
    data_dir: str | Path
    device: Any
    history: list[dict[str, float]]
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # more fields: stage-1 figures, the checkpoint path, ...


def training_metrics(record: RunRecord, report: dict[str, Any], export: str | Path, **extra: Any) -> dict[str, Any]:
    """What a training run measured, with the command that reproduces it (the CLI and notebooks write the same)."""
    best = min(record.history, key=lambda h: h["valid_loss"])
    return {
        "command": record.command, "model": record.model_name, "data": str(record.data_dir), "device": str(record.device),
        "epochs": len(record.history), "train_seconds": round(record.train_seconds, 1),
        "best_epoch": best["epoch"], "valid_accuracy": best["valid_accuracy"], "test": report, **record.extra, **extra,
        "export": str(export), "export_megabytes": round(Path(export).stat().st_size / 1e6, 2), "history": record.history,
    }


def write_metrics(export: str | Path, metrics: dict[str, Any]) -> Path:
    """Save ``metrics`` as JSON beside the exported model (``x_exported.pt`` -> ``x_exported.json``)."""
    return atomic_write(Path(export).with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
