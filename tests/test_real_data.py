"""Tests on the real photos in ../shared/data (skipped, with the reason, where that folder is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.data import get_data_loaders
from src.factory import create_model
from src.data_config import resolve_data_config
from src.statistics import compute_mean_and_std
from src.images import load_rgb
from src.optimization import get_loss, get_optimizer
from src.predictor import Predictor, predictor_test, top_k
from src.export import export_predictor, load_exported
from src.recipes import recipe_for
from src.train import optimize

LANDMARKS10_CLASSES = [
    "Berlin Cathedral", "Colosseum", "Gaudi Casa Batllo Barcelona", "Hagia Sophia", "Hofburg Imperial Palace",
    "Museu Nacional Dart De Catalunya", "Pantheon", "Petronas Towers", "Rialto Bridge", "St Stephen Cathedral Vienna",
]


def test_landmarks10_loaders(landmarks10: Path) -> None:
    loaders = get_data_loaders(data_dir=landmarks10, batch_size=16, num_workers=2, config=_scratch_config(landmarks10, 64))
    train, valid, test = (loaders[k].dataset for k in ("train", "valid", "test"))
    assert train.class_names == LANDMARKS10_CLASSES
    assert (len(train), len(valid), len(test)) == (6000, 1500, 2000)
    mean, std = compute_mean_and_std(landmarks10)
    assert torch.all((mean > 0.3) & (mean < 0.7)) and torch.all((std > 0.15) & (std < 0.4))
    images, labels = next(iter(loaders["train"]))
    crop = loaders["train"].dataset.config.train_crop
    assert images.shape == (16, 3, crop, crop) and labels.max() < 10


def test_short_scratch_training_on_real_photos_lowers_the_loss(landmarks10: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    loaders = get_data_loaders(data_dir=landmarks10, batch_size=32, num_workers=2, config=_scratch_config(landmarks10, 64), limit=640)
    model = create_model("scratch", 10, widths=(16, 32, 64, 128), dropout=0.2)
    history = optimize(loaders, model, get_optimizer(model, "AdamW", learning_rate=3e-3), get_loss(),
                       n_epochs=5, save_path=tmp_path / "scratch.pt")
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.05


def test_frozen_mobilenet_v2_learns_real_landmarks(landmarks10: Path, tmp_path: Path) -> None:
    """ImageNet features must make 10 landmarks separable after a few hundred photos (chance: 10%)."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 10)
    config = resolve_data_config(model.data_defaults, landmarks10, eval_crop=96)
    loaders = get_data_loaders(data_dir=landmarks10, batch_size=32, num_workers=2, config=config, limit=600)
    history = optimize(loaders, model, get_optimizer(model, "AdamW", learning_rate=3e-3), get_loss(),
                       n_epochs=3, save_path=tmp_path / "mnv2.pt", warmup_epochs=0.3)
    assert max(h["valid_accuracy"] for h in history) > 0.5
    dataset = loaders["test"].dataset
    exported = load_exported(export_predictor(
        Predictor(model.cpu(), dataset.class_names, dataset.config), tmp_path / "e.pt"))
    truth, pred = predictor_test(loaders["test"], exported, num_workers=2)
    assert len(truth) == len(dataset) and (truth == pred).mean() > 0.5


def _scratch_config(root: Path, crop: int):
    return resolve_data_config(create_model("scratch", 2).data_defaults, root, eval_crop=crop)


def test_landmarks10_resolves_the_shipped_sizes(landmarks10: Path) -> None:
    """128 px photos are used whole at 128 px: the sizes the shipped models were trained at."""
    for name, train_crop in (("scratch", 96), ("mobilenet_v2", 112)):
        config = resolve_data_config(create_model(name, 10, pretrained=False).data_defaults, landmarks10,
                                     train_crop_ratio=recipe_for(name).train_crop_ratio)
        assert (config.eval_crop, config.resize, config.train_crop) == (128, 128, train_crop)


def test_canonical_layout_with_full_size_photos(canonical_sample: Path, tmp_path: Path) -> None:
    """Full-size photos resolve to MobileNetV2's native 224 px, the whole centre square read at that size."""
    model = create_model("mobilenet_v2", 2, pretrained=False)
    config = resolve_data_config(model.data_defaults, canonical_sample)
    assert (config.eval_crop, config.resize, config.train_crop) == (224, 224, 192)
    with pytest.raises(ValueError, match="at least 2"):  # one class: any model would be "100 %" right
        get_data_loaders(data_dir=canonical_sample, batch_size=8, num_workers=0, config=config)
    two_classes = tmp_path / "two"
    for split in ("train", "test"):
        (two_classes / split).mkdir(parents=True)
        (two_classes / split / "00.Haleakala_National_Park").symlink_to(canonical_sample / split / "00.Haleakala_National_Park")
        (two_classes / split / "01.Elsewhere").symlink_to(canonical_sample / split / "00.Haleakala_National_Park")
    loaders = get_data_loaders(data_dir=two_classes, batch_size=8, num_workers=0, config=config)
    assert loaders["train"].dataset.class_names == ["Haleakala National Park", "Elsewhere"]
    assert len(loaders["train"].dataset) + len(loaders["valid"].dataset) == 200 and len(loaders["test"].dataset) == 50
    images, labels = next(iter(loaders["valid"]))
    assert images.shape == (8, 3, 224, 224)
    photo = loaders["test"].dataset.paths[0]
    assert min(load_rgb(photo).size) > 300  # really full size
    model = create_model("scratch", 2, widths=(8, 16))
    exported = load_exported(export_predictor(Predictor(model, loaders["train"].dataset.class_names, config), tmp_path / "p.pt"))
    ranking = top_k(exported, photo)
    assert sorted(name for name, _ in ranking) == ["Elsewhere", "Haleakala National Park"]
    assert sum(p for _, p in ranking) == pytest.approx(1.0) and 0 < ranking[1][1] <= ranking[0][1] < 1
