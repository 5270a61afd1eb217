"""MobileNetV2's later stages taught EfficientNet-Lite0's features, measured on landmarks none of it learnt from.

    python bench/distilled_tail.py [--model checkpoints/transfer_exported.pt] [--runs 12:1e-3 3:1e-4]

A model with added landmarks needs plain ImageNet features beside its base's own, and its second network
(EfficientNet-Lite0 at 224 px) is most of its cost (docs/adding-landmarks.md). The shipped base's first MobileNetV2
stages keep their ImageNet weights, so ImageNet's later stages run on their output would give such features for about
a quarter of that work, but at the base's 128 px they name new landmarks less often than Lite0 does. This asks whether
those later stages can be taught Lite0's features:

1. Photos to learn from, each as it is and mirrored: the model's dataset's training (and ``unlabeled``) photos and the
   training halves (:func:`~src.location.split_negatives`) of the negatives folders it trained against.
2. Their outputs of MobileNetV2's ImageNet stages that the transfer recipe keeps frozen, at the model's size, and
   Lite0's features of the same photos at 224 px (the targets).
3. For each ``EPOCHS:PEAK_RATE`` of ``--runs``: a copy of ImageNet's later stages, started from their weights, trained
   so that their pooled features point the way the targets do (cosine loss, AdamW, one-cycle schedule, batches of 128).
   Also a linear map from ImageNet's later-stage features onto the targets (ridge regression).
4. Measured on the ``new_landmarks`` folders the model never trained against, none of whose photos is learnt from:
   each named by the nearest mean of ``--shots`` of its photos (``new_landmark_features.py``), and the mean cosine
   similarity of their features to Lite0's.

Writes ``bench/results/distilled_tail.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from new_landmark_features import (frozen_and_trained_stages, imagenet_features, nearest_mean_top1, never_seen_landmarks,
                                   per_photo)
from utils import REPO, write_result
from src.allocator import keep_freed_memory
from src.export import load_exported
from src.imagenet_features import GENERAL_BACKBONE, GENERAL_SIZE
from src.location import list_images, split_negatives
from src.shared_trunk import PooledStages

BATCH = 128
RIDGE = 0.1  # the ridge map's penalty, on unit-length features


def learning_photos(metrics: dict) -> list[Path]:
    """Step 1: the photos of the model's run that it may learn from (see the module docstring)."""
    data = Path(metrics["data"])
    paths = list_images(data / "train") + (list_images(data / "unlabeled") if (data / "unlabeled").is_dir() else [])
    return paths + [path for folder in metrics.get("negatives", []) for path in split_negatives(folder)[0]]


def trunk_outputs(trunk: nn.Module, paths: list[Path], size: int, with_mirrored: bool = False) -> torch.Tensor:
    """``trunk``'s output (fp16) for each photo at ``size`` px, in the order of
    :func:`~new_landmark_features.imagenet_features` (:func:`~new_landmark_features.per_photo`)."""
    return per_photo(lambda squares: trunk(squares.contiguous(memory_format=torch.channels_last)).half(), "mobilenet_v2",
                     size, paths, with_mirrored)


def pooled(stages: nn.Module, maps: torch.Tensor) -> torch.Tensor:
    """The features ``stages`` give for trunk outputs ``maps``, in evaluation mode."""
    stages.eval()
    with torch.inference_mode():
        return torch.cat([stages(part.float().contiguous(memory_format=torch.channels_last)) for part in maps.split(256)])


def distilled(stages: nn.Module, maps: torch.Tensor, targets: torch.Tensor, epochs: int, peak_rate: float,
              seed: int = 0) -> tuple[nn.Module, float]:
    """Step 3: a copy of ``stages`` trained so that its features of ``maps`` point the way ``targets`` do, and its
    mean loss (1 - cosine similarity) over the last epoch."""
    student = copy.deepcopy(stages).requires_grad_(True).to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(maps) // BATCH)
    optimizer = torch.optim.AdamW(student.parameters(), lr=peak_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_rate, total_steps=epochs * steps_per_epoch,
                                                   pct_start=0.1)
    generator, unit_targets, loss_sum = torch.Generator().manual_seed(seed), F.normalize(targets.float(), dim=1), 0.0
    for epoch in range(epochs):
        student.train()
        order, loss_sum = torch.randperm(len(maps), generator=generator), 0.0
        for step in range(steps_per_epoch):
            rows = order[step * BATCH:(step + 1) * BATCH]
            features = student(maps[rows].float().contiguous(memory_format=torch.channels_last))
            loss = (1 - (F.normalize(features, dim=1) * unit_targets[rows]).sum(1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / steps_per_epoch:.4f}", flush=True)
    return student.eval(), loss_sum / steps_per_epoch


def ridge_map(features: torch.Tensor, targets: torch.Tensor, penalty: float = RIDGE) -> torch.Tensor:
    """The linear map ``W`` that takes unit-length ``features`` nearest to unit-length ``targets`` (ridge regression)."""
    x, y = F.normalize(features.float(), dim=1), F.normalize(targets.float(), dim=1)
    return torch.linalg.solve(x.T @ x + penalty * torch.eye(x.shape[1]), x.T @ y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--runs", nargs="+", default=["12:1e-3", "3:1e-4"], help="EPOCHS:PEAK_RATE of each training")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()
    metrics = json.loads(args.model.with_suffix(".json").read_text())
    size = int(load_exported(args.model).image_size)
    folders, eval_paths, labels = never_seen_landmarks(args.model)
    paths = learning_photos(metrics)
    print(f"learning from {len(paths)} photos (and their mirror images) at {size} px; measuring on {len(eval_paths)} "
          f"photos of {len(folders)} landmarks", flush=True)
    trunk, later = frozen_and_trained_stages()
    stages = PooledStages(list(later))
    start = time.perf_counter()
    maps = trunk_outputs(trunk, paths, size, with_mirrored=True)
    targets = imagenet_features(GENERAL_BACKBONE, GENERAL_SIZE, paths, with_mirrored=True)
    eval_maps = trunk_outputs(trunk, eval_paths, size)
    eval_targets = imagenet_features(GENERAL_BACKBONE, GENERAL_SIZE, eval_paths)
    print(f"features in {time.perf_counter() - start:.0f} s", flush=True)

    def row(name: str, features: torch.Tensor, **more: object) -> dict:
        top1 = nearest_mean_top1(features, labels, args.shots, args.draws)
        similarity = float(F.cosine_similarity(features.float(), eval_targets.float()).mean())
        print(f"{name}: nearest-mean top-1 {top1:.1%}, cosine to {GENERAL_BACKBONE}'s {similarity:.3f}", flush=True)
        return {"features": name, "top1": round(top1, 4), "cosine_to_targets": round(similarity, 3), **more}

    plain = pooled(stages, eval_maps)
    rows = [row(f"{GENERAL_BACKBONE} ImageNet, {GENERAL_SIZE} px (the targets)", eval_targets),
            row(f"mobilenet_v2 ImageNet later stages, {size} px", plain),
            row(f"mobilenet_v2 ImageNet later stages, {size} px, ridge map onto the targets",
                F.normalize(plain, dim=1) @ ridge_map(pooled(stages, maps), targets))]
    for run in args.runs:
        epochs, peak_rate = int(run.split(":")[0]), float(run.split(":")[1])
        start = time.perf_counter()
        student, loss = distilled(stages, maps, targets, epochs, peak_rate)
        rows.append(row(f"mobilenet_v2 later stages, {size} px, distilled {epochs} epochs at {peak_rate:g}",
                        pooled(student, eval_maps), epochs=epochs, peak_rate=peak_rate, last_epoch_loss=round(loss, 4),
                        train_seconds=round(time.perf_counter() - start)))
    write_result("distilled_tail", {"model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
                                    "learning_photos": len(paths), "mirrored": True, "never_seen": [f.name for f in folders],
                                    "never_seen_photos": len(eval_paths), "shots": args.shots, "draws": args.draws,
                                    "batch": BATCH, "ridge_penalty": RIDGE, "rows": rows})


if __name__ == "__main__":
    main()
