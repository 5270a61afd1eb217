"""One training run, written once: ``python -m src train`` runs it whole (:func:`run_training`), the notebooks
run its steps one cell at a time (:class:`TrainingRun`).

Steps:
1. ``env``: seed, device, the dataset found (:func:`~src.helpers.setup_env`);
2. ``config``: sizes and normalisation (:func:`~src.data_config.resolve_data_config`);
3. ``loaders``: the seeded train/validation split, the test split, the negatives for outlier exposure;
4. ``model``: :func:`~src.factory.create_model` with the recipe's dropout;
5. ``train``: the scratch recipe's :func:`~src.train.optimize`, or the transfer recipe's two stages
   (:func:`~src.finetune.fine_tune`); the best-validation weights are kept in the checkpoint;
6. ``finish``: the best weights loaded, calibrated, exported, tested and recorded (:func:`~src.finish.finish_run`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import get_data_loaders
from .data_config import resolve_data_config
from .defaults import SEED, VALID_SIZE
from .evaluation import RunRecord
from .factory import create_model, data_defaults
from .files import check_model_name, check_outputs
from .finetune import fine_tune
from .finish import RunResult, finish_run
from .helpers import Environment, setup_env
from .location import negatives_from_env
from .optimization import get_loss, get_optimizer
from .preprocessing import PreprocessConfig
from .recipes import Recipe, ScratchRecipe
from .train import last_state_path, load_best, optimize


@dataclass(frozen=True)
class RunData:
    """The photos a run learns from and is measured on, and how they are read."""

    data_dir: str | Path | None = None  # None: $LANDMARK_DATA, ./landmark_images, or the canonical download
    valid_size: float = VALID_SIZE
    limit: int = -1  # training photos used (-1: all), for quick runs
    negatives: Sequence[str | Path] | None = None  # folders of photos of no known landmark (None: $LANDMARK_NEGATIVES)
    places_csv: str | Path | None = None  # places to add or correct
    num_workers: int = -1  # decoding processes (-1: one per CPU core)
    seed: int = SEED
    sizes: dict[str, int] = field(default_factory=dict)  # eval_crop, resize, train_crop given (others: the size rule)

    @property
    def negative_folders(self) -> list[Path]:
        return [Path(folder) for folder in self.negatives] if self.negatives is not None else negatives_from_env()


@dataclass(frozen=True)
class RunOutputs:
    """Where a run writes: the best weights (and ``<checkpoint>.last.pt`` to resume from) and the export (with its
    metrics JSON beside it)."""

    checkpoint: Path
    export: Path

    @staticmethod
    def checkpoint_for(model_name: str, checkpoint: str | Path | None = None) -> Path:
        """The checkpoint a run of ``model_name`` writes: ``checkpoint``, else ``checkpoints/<model>.pt``."""
        return Path(checkpoint or f"checkpoints/{model_name}.pt")

    @classmethod
    def for_model(cls, model_name: str, checkpoint: str | Path | None = None, export: str | Path | None = None
                  ) -> "RunOutputs":
        """``checkpoints/<model>.pt`` and ``checkpoints/<model>_exported.pt`` unless given; refused before any work
        when they collide or cannot be written."""
        outputs = cls(cls.checkpoint_for(model_name, checkpoint), Path(export or f"checkpoints/{model_name}_exported.pt"))
        check_model_name(outputs.export, "export")
        check_outputs(checkpoint=outputs.checkpoint, **{"resumable state": last_state_path(outputs.checkpoint)},
                      export=outputs.export, **{"metrics JSON": outputs.export.with_suffix(".json")})
        return outputs


class TrainingRun:
    """The steps of the module docstring for ``model_name`` trained with ``recipe``; each property is computed once,
    when first read. ``command`` (how to run it again) goes into the metrics JSON."""

    def __init__(self, model_name: str, recipe: Recipe, data: RunData, outputs: RunOutputs, command: str) -> None:
        self.model_name, self.recipe, self.data, self.outputs, self.command = model_name, recipe, data, outputs, command
        self.history: list[dict[str, float]] = []
        self.stage1: dict[str, Any] = {}
        self.train_seconds = 0.0

    @cached_property
    def env(self) -> Environment:
        return setup_env(self.data.data_dir, seed=self.data.seed)

    @cached_property
    def config(self) -> PreprocessConfig:
        return resolve_data_config(data_defaults(self.model_name), self.env.data_dir, train_crop_ratio=self.recipe.train_crop_ratio,
                                   **self.data.sizes)

    @cached_property
    def loaders(self) -> dict[str, Any]:
        data = self.data
        return get_data_loaders(batch_size=self.recipe.batch_size, valid_size=data.valid_size, num_workers=data.num_workers,
                                limit=data.limit, data_dir=self.env.data_dir, config=self.config, seed=data.seed,
                                negatives=data.negative_folders)

    @cached_property
    def model(self) -> nn.Module:
        return create_model(self.model_name, len(self.loaders["train"].dataset.class_names), dropout=self.recipe.dropout)

    @cached_property
    def loss(self) -> nn.Module:
        """The recipe's loss: label smoothing, and outlier exposure on the negatives (:func:`~src.optimization.get_loss`)."""
        return get_loss(self.recipe.label_smoothing, self.recipe.outlier_weight)

    @cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """The scratch recipe's optimizer (the transfer recipe makes one per stage, :mod:`src.finetune`)."""
        recipe = self.recipe
        if not isinstance(recipe, ScratchRecipe):
            raise ValueError("a transfer recipe makes its optimizers per stage (src/finetune.py)")
        return get_optimizer(self.model, recipe.optimizer, learning_rate=recipe.lr, momentum=recipe.momentum,
                             weight_decay=recipe.weight_decay)

    def describe(self) -> str:
        """The model, the photos of each split, the preprocessing and the recipe, in a few lines."""
        train = self.loaders["train"].dataset
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return (f"Model {self.model_name}: {trainable:,} trainable parameters; {len(train.paths)} train "
                f"(+{len(train.negatives)} negatives) / {len(self.loaders['valid'].dataset)} valid / "
                f"{len(self.loaders['test'].dataset)} test photos; {self.config}\n{self.recipe}")

    def train(self, interactive_tracking: bool = False, resume: bool = False) -> list[dict[str, float]]:
        """Step 5: train, keeping the best-validation weights in the checkpoint; returns the epochs' history
        (the fine-tuning stage's for a transfer recipe, stage 1's being in ``stage1``)."""
        recipe, start = self.recipe, time.perf_counter()
        if isinstance(recipe, ScratchRecipe):
            self.history = optimize(self.loaders, self.model, self.optimizer, self.loss, recipe.epochs, self.outputs.checkpoint,
                                    interactive_tracking=interactive_tracking, scheduler=recipe.scheduler, resume=resume)
        else:
            stages = fine_tune(self.loaders, self.model, self.outputs.checkpoint, recipe, interactive_tracking=interactive_tracking,
                               resume=resume, seed=self.data.seed)
            self.stage1 = {"stage1_seconds": round(stages["head_seconds"], 1), "stage1_head_history": stages["head"]}
            self.history = stages["fine_tune"] or stages["head"]  # a frozen backbone (epochs 0) has stage 1 only
        self.train_seconds = time.perf_counter() - start
        return self.history

    def finish(self) -> RunResult:
        """Step 6: the best weights loaded, then :func:`~src.finish.finish_run`."""
        load_best(self.model, self.outputs.checkpoint)
        record = RunRecord(self.command, self.model_name, self.env.data_dir, self.env.device, self.history, self.train_seconds,
                           {**self.stage1, "checkpoint": str(self.outputs.checkpoint)})
        datasets = {split: loader.dataset for split, loader in self.loaders.items()}
        return finish_run(self.model, datasets, self.outputs.export, record, negatives=self.data.negative_folders,
                          places_csv=self.data.places_csv, num_workers=self.data.num_workers)

    def summary(self, result: RunResult) -> str:
        """What the run produced, for a person: model, training time, validation and test figures, files."""
        metrics, report = result.metrics, result.report
        k, model = report["k"], self.model
        kind = ("from scratch" if isinstance(self.recipe, ScratchRecipe) else "frozen backbone" if model.backbone_frozen
                else f"last {model.trainable_stages} backbone stages fine-tuned")
        return "\n".join([
            "Summary",
            f"  model            {self.model_name} ({kind})",
            f"  training         {len(self.history)} epochs in {self.train_seconds / 60:.1f} min on {self.env.device}",
            f"  validation       best accuracy {metrics['valid_accuracy']:.2%} (epoch {metrics['best_epoch']})",
            f"  test             top-1 {report['top1']:.2%}, top-{k} {report[f'top{k}']:.2%} on {report['photos']} photos",
            f"  checkpoint       {self.outputs.checkpoint}",
            f"  exported model   {self.outputs.export} ({metrics['export_megabytes']} MB), metrics in "
            f"{self.outputs.export.with_suffix('.json')}"])


def run_training(model_name: str, recipe: Recipe, data: RunData, outputs: RunOutputs, command: str, *,
                 resume: bool = False, main_process: bool = True) -> RunResult | None:
    """Every step of the module docstring, printing what is trained and a summary at the end. Only the
    ``main_process`` of a distributed run tests and exports (the others return None after training)."""
    run = TrainingRun(model_name, recipe, data, outputs, command)
    print(run.describe())
    run.train(resume=resume)
    if not main_process:
        return None
    result = run.finish()
    print("\n" + run.summary(result))
    return result
