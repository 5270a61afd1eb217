"""Transfer-learning recipe: a pretrained backbone adapted in two stages.

1. **Head on cached features.** The frozen backbone encodes every training photo once per view
   (the centre view plus ``feature_views`` augmented ones) and every validation photo once (under
   ``torchrun``, each process a share); the new head then trains on these vectors. Many passes over
   the features cost seconds, where one pass through the backbone costs minutes on a CPU.
2. **Staged unfreezing.** The last ``unfreeze`` backbone stages train together with the head on
   freshly augmented photos, the backbone with its own, lower learning rate
   (``backbone_lr``) so the pretrained filters move less than the new head. ``unfreeze=0``
   keeps training only the head, on augmented photos.
   Unless ``epochs`` is given, a small dataset gets more epochs than the default, so that it gets
   at least ``min_steps`` updates (:meth:`~src.recipes.TransferRecipe.stage2_epochs`).
3. **Selection.** The epoch with the best validation loss is kept (``optimize``).

Stage 1 gives stage 2 a good head to start from, so the pretrained features are not wrecked
by the large gradients of a random head.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .checkpoint import save_checkpoint
from .decoding import keep_parent_objects
from .defaults import SEED
from .distributed import gathered_rows, is_distributed, share
from .helpers import get_device
from .optimization import get_loss
from .presets import ClassificationPresetEval
from .progress import tqdm
from .recipes import EPOCHS, TransferRecipe
from .train import checkpoint_metadata, last_state_path, optimize
from .transfer import TransferModel


def extract_features(backbone: nn.Module, loader: DataLoader, desc: str = "Features") -> tuple[torch.Tensor, torch.Tensor]:
    """``(features, targets)`` of every photo the loader yields, through the backbone in eval mode."""
    device = get_device()
    backbone.eval().to(device, memory_format=torch.channels_last)  # outside inference mode: weights stay trainable
    features, targets = [], []
    with torch.inference_mode():
        for images, labels in tqdm(loader, desc=desc, leave=False, ncols=80):
            features.append(backbone(images.to(device, memory_format=torch.channels_last)).float().cpu())
            targets.append(labels)
    return torch.cat(features), torch.cat(targets)


def _every_photo_encoded(backbone: nn.Module, loader: DataLoader, desc: str,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extract_features` of every photo of ``loader``'s dataset, in order (the training loader shuffles and
    drops a last partial batch); under ``torchrun`` each process encodes its share and gets them all. ``generator``:
    where each pass draws its workers' seed (None: torch's global random state)."""
    photos = loader.dataset
    in_order = DataLoader(Subset(photos, share(len(photos))) if is_distributed() else photos, batch_size=loader.batch_size,
                          num_workers=loader.num_workers, worker_init_fn=keep_parent_objects, pin_memory=loader.pin_memory,
                          generator=generator)
    features, targets = extract_features(backbone, in_order, desc)
    return gathered_rows(features, get_device()), gathered_rows(targets, get_device())


def cached_view_features(model: TransferModel, data_loaders: dict[str, DataLoader], views: int
                         ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Training features for the centre view plus ``views`` augmented views, and validation features."""
    train_set = data_loaders["train"].dataset
    augmented = train_set.transform
    train_set.transform = ClassificationPresetEval(train_set.config)
    try:
        parts = [_every_photo_encoded(model.backbone, data_loaders["train"], "Features (centre view)")]
    finally:
        train_set.transform = augmented
    parts += [_every_photo_encoded(model.backbone, data_loaders["train"], f"Features (view {v + 1}/{views})")
              for v in range(views)]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    valid = data_loaders["valid"]  # the validation loader's own generator, as iterating that loader itself would draw
    return train, _every_photo_encoded(model.backbone, valid, "Features (validation)", valid.generator)


def train_head(head: nn.Module, train: tuple[torch.Tensor, torch.Tensor], valid: tuple[torch.Tensor, torch.Tensor],
               recipe: TransferRecipe, seed: int = SEED) -> list[dict[str, float]]:
    """Stage 1: AdamW + one-cycle on cached features; keeps the head of the best validation loss."""
    features, targets = train
    generator = torch.Generator().manual_seed(seed)
    loss = get_loss(recipe.label_smoothing, recipe.outlier_weight)
    optimizer = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = max(1, len(features) // recipe.head_batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=recipe.head_epochs * steps)
    head.cpu()
    history: list[dict[str, float]] = []
    best_loss, best_state = float("inf"), None
    for epoch in range(1, recipe.head_epochs + 1):
        head.train()
        order = torch.randperm(len(features), generator=generator)
        for step in range(steps):
            batch = order[step * recipe.head_batch_size:(step + 1) * recipe.head_batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss(head(features[batch]), targets[batch]).backward()
            optimizer.step()
            schedule.step()
        head.eval()
        with torch.no_grad():
            logits = head(valid[0])
            valid_loss = loss(logits, valid[1]).item()
            valid_accuracy = (logits.argmax(1) == valid[1]).float().mean().item()
        history.append({"epoch": epoch, "valid_loss": valid_loss, "valid_accuracy": valid_accuracy})
        if valid_loss < best_loss:
            best_loss, best_state = valid_loss, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return history


def parameter_groups(model: TransferModel, head_lr: float, backbone_lr: float) -> list[dict]:
    """Optimizer groups: the head at ``head_lr``, the unfrozen backbone stages at ``backbone_lr``."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": head_lr}]
    if backbone:
        groups.append({"params": backbone, "lr": backbone_lr})
    return groups


def fine_tune(data_loaders: dict[str, DataLoader], model: TransferModel, save_path: str | Path,
              recipe: TransferRecipe | None = None, interactive_tracking: bool = False,
              resume: bool = False, seed: int = SEED) -> dict[str, Any]:
    """Run the recipe of this module's docstring; returns the history of both stages and stage 1's seconds.

    The best weights (by validation loss in stage 2) end up in ``save_path``, as with
    :func:`~src.train.optimize`. With ``resume`` and a stage-2 state beside ``save_path``,
    stage 1 is skipped (its result is in that state). ``recipe.epochs=0`` stops after stage 1.
    """
    recipe = recipe or TransferRecipe()
    head_history: list[dict[str, float]] = []
    start = time.perf_counter()
    if recipe.head_epochs > 0 and not (resume and last_state_path(save_path).is_file()):
        model.unfreeze_last(0)
        train, valid = cached_view_features(model, data_loaders, recipe.feature_views)
        head_history = train_head(model.head, train, valid, recipe, seed)
        best = min(head_history, key=lambda h: h["valid_loss"])
        print(f"Stage 1 (head on cached features, {len(train[0])} vectors): "
              f"valid accuracy {best['valid_accuracy']:.2%} at epoch {best['epoch']}")
    head_seconds = time.perf_counter() - start
    if recipe.epochs == 0:  # frozen backbone, head from stage 1 only
        save_checkpoint(save_path, model, checkpoint_metadata(data_loaders), history=head_history)
        return {"head": head_history, "head_seconds": head_seconds, "fine_tune": []}
    steps = len(data_loaders["train"])
    epochs = recipe.stage2_epochs(steps)
    if recipe.epochs is None:
        print(f"Stage 2: {epochs} epochs of {steps} steps (at least {EPOCHS}, and at least {recipe.min_steps} steps)")
    model.unfreeze_last(recipe.unfreeze)
    optimizer = torch.optim.AdamW(parameter_groups(model, recipe.lr, recipe.backbone_lr), weight_decay=recipe.weight_decay)
    history = optimize(data_loaders, model, optimizer, get_loss(recipe.label_smoothing, recipe.outlier_weight), epochs, save_path,
                       interactive_tracking=interactive_tracking, warmup_epochs=recipe.warmup_epochs, resume=resume)
    return {"head": head_history, "head_seconds": head_seconds, "fine_tune": history}
