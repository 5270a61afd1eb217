"""The training loop: one epoch of training, validation and test, and ``optimize`` around them.

``train_epoch`` and ``evaluate`` return an epoch's loss and accuracy (:class:`EpochMetrics`);
the classic project's ``train_one_epoch``, ``valid_one_epoch`` and ``one_epoch_test`` keep its
call shape and return the mean loss alone, as a float.

``optimize`` steps:
1. move the model to the device (CUDA when available) and build the learning-rate schedule
   (linear warm-up then cosine decay per step, or reduce-on-plateau per epoch);
2. optionally resume model, optimizer, schedule and history from ``<save_path>.last.pt``;
3. each epoch: train, validate (under ``torchrun``, each process a share of the photos), save the
   weights to ``save_path`` when the validation loss improves, save the full state to
   ``<save_path>.last.pt`` (so an interruption loses at most the epoch in progress), and update the
   live plot when ``interactive_tracking``;
4. return the history (one dict per epoch).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .distributed import is_distributed, is_main_process, share, summed_over_ranks
from .helpers import get_device
from .places import listed
from .progress import tqdm


class EpochMetrics(NamedTuple):
    """Mean loss and top-1 accuracy (on the photos of known landmarks) of one pass over a loader."""

    loss: float
    accuracy: float


def _autocast(device: torch.device):
    """bfloat16 mixed precision on CUDA (faster, no loss scaling needed); plain float32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _device_of(model: nn.Module) -> torch.device:
    """Move ``model`` to the best device, channels-last (about 1.4x faster convolutions on a CPU).

    A model already wrapped for distributed training stays where it is.
    """
    if isinstance(model, DistributedDataParallel):
        return next(model.parameters()).device
    device = get_device()
    model.to(device, memory_format=torch.channels_last)
    return device


def train_epoch(
    train_dataloader: DataLoader,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> EpochMetrics:
    """One pass of training over ``train_dataloader``; ``scheduler`` (if given) steps every batch. Under ``torchrun``
    every process returns the loss and accuracy of all the processes' shards together."""
    device = _device_of(model)
    model.train()
    total_loss, correct, seen, known = 0.0, 0, 0, 0
    for data, target in tqdm(train_dataloader, desc="Training", leave=False, ncols=80):
        data = data.to(device, non_blocking=True, memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device):
            output = model(data)
            loss_value = loss(output.float(), target)
        if not torch.isfinite(loss_value):
            raise FloatingPointError(f"Training loss became {loss_value.item()}; lower the learning rate")
        loss_value.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss_value.item() * len(target)
        correct += (output.argmax(1) == target).sum().item()  # negatives (target < 0) never count as correct
        seen += len(target)
        known += (target >= 0).sum().item()
    total_loss, correct, seen, known = summed_over_ranks([total_loss, correct, seen, known], device)
    if seen == 0:
        raise ValueError("The training loader gave no photos")
    return EpochMetrics(total_loss / seen, correct / max(known, 1))


@torch.no_grad()
def evaluate(dataloader: DataLoader, model: nn.Module, loss: nn.Module, desc: str = "Evaluating") -> EpochMetrics:
    """Loss and accuracy over ``dataloader``, without gradients or augmentation."""
    device = _device_of(model)
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for data, target in tqdm(dataloader, desc=desc, leave=False, ncols=80):
        data = data.to(device, non_blocking=True, memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with _autocast(device):
            output = model(data).float()
        total_loss += loss(output, target).item() * len(target)
        correct += (output.argmax(1) == target).sum().item()
        seen += len(target)
    if seen == 0:
        raise ValueError(f"{desc}: the loader gave no photos")
    return EpochMetrics(total_loss / seen, correct / seen)


def _validation_share(valid_dataloader: DataLoader) -> DataLoader:
    """The validation loader, or under ``torchrun`` one over this process's share of its photos (:func:`_validate`
    adds the shares up)."""
    if not is_distributed():
        return valid_dataloader
    photos = Subset(valid_dataloader.dataset, share(len(valid_dataloader.dataset)))
    return DataLoader(photos, batch_size=valid_dataloader.batch_size, num_workers=valid_dataloader.num_workers,
                      persistent_workers=valid_dataloader.persistent_workers, worker_init_fn=valid_dataloader.worker_init_fn,
                      pin_memory=valid_dataloader.pin_memory, generator=valid_dataloader.generator)


def _validate(share_loader: DataLoader, model: nn.Module, loss: nn.Module) -> EpochMetrics:
    """:func:`evaluate` on the validation photos of :func:`_validation_share`; under ``torchrun`` every process gets
    the figures of all the shares together."""
    if not is_distributed():
        return evaluate(share_loader, model, loss, "Validating")
    seen = len(share_loader.dataset)
    part = evaluate(share_loader, model, loss, "Validating") if seen else EpochMetrics(0.0, 0.0)
    loss_sum, correct, seen = summed_over_ranks([part.loss * seen, part.accuracy * seen, seen], _device_of(model))
    return EpochMetrics(loss_sum / seen, correct / seen)


def train_one_epoch(train_dataloader: DataLoader, model: nn.Module, optimizer: torch.optim.Optimizer,
                    loss: nn.Module) -> float:
    """One pass of training; the mean training loss (:func:`train_epoch` also gives the accuracy)."""
    return train_epoch(train_dataloader, model, optimizer, loss).loss


def valid_one_epoch(valid_dataloader: DataLoader, model: nn.Module, loss: nn.Module) -> float:
    """The mean loss on the validation split (:func:`evaluate` also gives the accuracy)."""
    return evaluate(valid_dataloader, model, loss, "Validating").loss


def one_epoch_test(test_dataloader: DataLoader, model: nn.Module, loss: nn.Module) -> float:
    """The mean loss on the test split; prints it with the test accuracy."""
    metrics = evaluate(test_dataloader, model, loss, "Testing")
    print(f"Test loss: {metrics.loss:.4f}   Test accuracy: {metrics.accuracy:.2%}")
    return metrics.loss


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the optimizer's learning rate, then cosine decay to zero, stepped per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def last_state_path(save_path: str | Path) -> Path:
    """Where ``optimize`` keeps the resumable state of the latest epoch, beside ``save_path``."""
    save_path = Path(save_path)
    return save_path.with_name(f"{save_path.stem}.last{save_path.suffix or '.pt'}")


def checkpoint_metadata(data_loaders: dict[str, DataLoader]) -> dict[str, Any]:
    """What a checkpoint must know about the data: class names and the preprocessing config."""
    dataset = data_loaders["valid"].dataset
    return {"class_names": list(dataset.class_names), "preprocess": dataset.config.to_dict()}


def check_same_run(state: dict[str, Any], metadata: dict[str, Any], path: Path) -> None:
    """Refuse to resume a run made on other classes or other photo sizes: its weights would go on training, and be
    exported, under this dataset's names."""
    hint = "resuming continues a run on the same data and settings; give another checkpoint path to start a new one"
    if list(state.get("class_names", metadata["class_names"])) != metadata["class_names"]:
        raise CheckpointError(f"{path}: a run on other classes ({listed(state['class_names'])}) than this dataset's "
                              f"({listed(metadata['class_names'])}); {hint}")
    before, now = state.get("preprocess", metadata["preprocess"]), metadata["preprocess"]
    changed = [f"{key} {before.get(key)} (now {value})" for key, value in now.items()
               if not torch.allclose(torch.tensor(before.get(key, math.nan), dtype=torch.float64),
                                     torch.tensor(value, dtype=torch.float64), rtol=1e-4)]  # statistics measured again
    if changed:
        raise CheckpointError(f"{path}: a run with other photo sizes or normalisation ({', '.join(changed)}); {hint}")


class LivePlot:
    """Loss and accuracy curves redrawn in the notebook after every epoch."""

    def __init__(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import DisplayHandle

        self.fig, self.axes = plt.subplots(1, 2, figsize=(11, 4))
        plt.close(self.fig)  # shown through the display handle only, not again at the end of the cell
        self.handle = DisplayHandle()
        self.handle.display(self.fig)

    def update(self, history: list[dict[str, float]]) -> None:
        epochs = [h["epoch"] for h in history]
        for ax, key, label in ((self.axes[0], "loss", "Loss"), (self.axes[1], "accuracy", "Accuracy")):
            ax.clear()
            ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="train")
            ax.plot(epochs, [h[f"valid_{key}"] for h in history], "o-", label="validation")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_title(f"{label} per epoch")
            ax.grid(alpha=0.3)
            ax.legend()
        self.fig.tight_layout()
        self.handle.update(self.fig)


def optimize(
    data_loaders: dict[str, DataLoader],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: nn.Module,
    n_epochs: int,
    save_path: str | Path,
    interactive_tracking: bool = False,
    scheduler: str = "cosine",
    warmup_epochs: float = 1.0,
    resume: bool = False,
) -> list[dict[str, float]]:
    """Train for ``n_epochs``, keep the best-validation weights in ``save_path``, return the history.

    ``scheduler``: ``"cosine"`` (per-step warm-up + cosine) or ``"plateau"`` (divide the
    learning rate by 10 when the validation loss stalls). ``resume=True`` continues from
    ``<save_path>.last.pt`` when it exists.
    """
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be at least 1, got {n_epochs}")
    if len(data_loaders["valid"].dataset) == 0:
        raise ValueError("The validation split is empty: use valid_size > 0 (it selects the best weights)")
    _device_of(model)
    training_model = DistributedDataParallel(model) if is_distributed() else model
    main_process = is_main_process()
    steps_per_epoch = len(data_loaders["train"])
    if scheduler == "cosine":
        lr_scheduler: Any = warmup_cosine(optimizer, n_epochs * steps_per_epoch, max(1, int(warmup_epochs * steps_per_epoch)))
    elif scheduler == "plateau":
        lr_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
    else:
        raise ValueError(f"scheduler must be 'cosine' or 'plateau', got {scheduler!r}")

    metadata = checkpoint_metadata(data_loaders)
    history: list[dict[str, float]] = []
    best_loss = math.inf
    last_path = last_state_path(save_path)
    if resume and last_path.is_file():
        state = load_checkpoint(last_path)
        check_same_run(state, metadata, last_path)
        load_weights(model, state, last_path)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["scheduler"])
        history, best_loss = state["history"], state["best_valid_loss"]
        print(f"Resumed from {last_path} after epoch {len(history)}")

    valid_share = _validation_share(data_loaders["valid"])
    plot = LivePlot() if interactive_tracking else None
    if plot is not None and history:
        plot.update(history)  # a resumed run shows the epochs it continues from
    try:
        for epoch in range(len(history) + 1, n_epochs + 1):
            start = time.perf_counter()
            sampler = data_loaders["train"].sampler
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)  # a different shuffle every epoch, the same on every rank
            train = train_epoch(data_loaders["train"], training_model, optimizer, loss,
                                lr_scheduler if scheduler == "cosine" else None)
            valid = _validate(valid_share, model, loss)
            if scheduler == "plateau":
                lr_scheduler.step(valid.loss)
            history.append({
                "epoch": epoch, "train_loss": train.loss, "train_accuracy": train.accuracy,
                "valid_loss": valid.loss, "valid_accuracy": valid.accuracy,
                "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
            })
            improved = valid.loss < best_loss
            if improved:
                best_loss = valid.loss
            if not main_process:  # every rank has the same validation figures; rank 0 saves and reports
                continue
            if improved:
                save_checkpoint(save_path, model, metadata, epoch=epoch, valid_loss=valid.loss, valid_accuracy=valid.accuracy,
                                history=history)
            save_checkpoint(last_path, model, metadata, optimizer=optimizer.state_dict(), scheduler=lr_scheduler.state_dict(),
                            history=history, best_valid_loss=best_loss)
            print(f"Epoch {epoch}/{n_epochs}: train loss {train.loss:.4f} acc {train.accuracy:.1%} | "
                  f"valid loss {valid.loss:.4f} acc {valid.accuracy:.1%} | {history[-1]['seconds']:.0f}s"
                  + ("  (saved best)" if improved else ""))
            if plot is not None:
                plot.update(history)
    except KeyboardInterrupt:
        print(f"Interrupted after {len(history)} finished epoch(s): best weights are in {save_path}; "
              f"call optimize(..., resume=True) to continue from {last_path}")
        raise
    return history


def load_best(model: nn.Module, save_path: str | Path) -> nn.Module:
    """Load the best-validation weights that ``optimize`` saved into ``model``."""
    return load_weights(model, load_checkpoint(save_path), save_path)

