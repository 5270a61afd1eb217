"""Staged transfer learning: backbone stages, unfreezing, per-group learning rates, both stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.data_config import resolve_data_config
from src.checkpoint import load_checkpoint
from src.data import get_data_loaders
from src.factory import create_model, list_models
from src.finetune import cached_view_features, fine_tune, parameter_groups
from src.recipes import EPOCHS, TransferRecipe

BACKBONES = list_models()[1:]


@pytest.mark.parametrize("name", BACKBONES)
def test_stages_cover_the_whole_backbone_in_order(name: str) -> None:
    model = create_model(name, 4, pretrained=False)
    stages = model.stages()
    in_stages = [id(p) for stage in stages for p in stage.parameters()]
    assert sorted(in_stages) == sorted(id(p) for p in model.backbone.parameters())


def _layers(stage: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that own parameters (convolutions, batch norms), not the containers around them."""
    return [m for m in stage.modules() if any(True for _ in m.parameters(recurse=False))]


@pytest.mark.parametrize("name", BACKBONES)
def test_unfreeze_last_trains_only_the_last_stages(name: str) -> None:
    model = create_model(name, 4, pretrained=False)
    stages = model.stages()
    model.unfreeze_last(2)
    model.train()
    for stage in stages[:-2]:
        assert not any(p.requires_grad for p in stage.parameters())
        assert not any(m.training for m in _layers(stage))  # frozen batch norm keeps ImageNet statistics
    for stage in stages[-2:]:
        assert all(p.requires_grad for p in stage.parameters())
        assert all(m.training for m in _layers(stage))
    model.unfreeze_last(-1)
    assert all(p.requires_grad for p in model.parameters())
    model.unfreeze_last(0)
    assert model.backbone_frozen and not any(p.requires_grad for p in model.backbone.parameters())


def test_parameter_groups_give_the_backbone_its_own_rate() -> None:
    model = create_model("mobilenet_v2", 4, pretrained=False)
    model.unfreeze_last(1)
    groups = parameter_groups(model, head_lr=1e-3, backbone_lr=1e-5)
    assert [g["lr"] for g in groups] == [1e-3, 1e-5]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.unfreeze_last(0)
    assert len(parameter_groups(model, 1e-3, 1e-5)) == 1


def _loaders(tiny_data: Path, model) -> dict:
    return get_data_loaders(batch_size=8, data_dir=tiny_data, num_workers=0, config=resolve_data_config(model.data_defaults, tiny_data, eval_crop=32))


def test_cached_features_hold_every_view(tiny_data: Path) -> None:
    model = create_model("efficientnet_lite0", 3, pretrained=False)
    loaders = _loaders(tiny_data, model)
    (features, targets), (valid_features, _) = cached_view_features(model, loaders, views=2)
    n = len(loaders["train"].dataset)
    assert features.shape == (3 * n, model.num_features) and targets[:n].tolist() == loaders["train"].dataset.targets
    assert valid_features.shape[0] == len(loaders["valid"].dataset)
    assert not features[:n].equal(features[n:2 * n])  # augmented views differ from the centre view


def test_fine_tune_runs_both_stages_and_saves_the_best(tiny_data: Path, tmp_path: Path) -> None:
    model = create_model("mobilenet_v2", 3)
    before = [p.clone() for p in model.backbone.features[0].parameters()]
    last_stage = [p.clone() for p in model.backbone.features[-1].parameters()]
    recipe = TransferRecipe(head_epochs=20, unfreeze=1, epochs=2, lr=1e-2, backbone_lr=1e-3)
    history = fine_tune(_loaders(tiny_data, model), model, tmp_path / "best.pt", recipe)
    assert len(history["head"]) == 20 and len(history["fine_tune"]) == 2
    assert max(h["valid_accuracy"] for h in history["head"]) > 0.5  # colours are easy with ImageNet features
    # compared on the CPU: training moved the model to CUDA where there is one
    assert all(a.equal(b.cpu()) for a, b in zip(before, model.backbone.features[0].parameters()))  # frozen stage untouched
    assert not all(a.equal(b.cpu()) for a, b in zip(last_stage, model.backbone.features[-1].parameters()))
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] in (1, 2)


def test_head_only_recipe_stops_after_stage_one(tiny_data: Path, tmp_path: Path) -> None:
    model = create_model("mobilenet_v2", 3)
    history = fine_tune(_loaders(tiny_data, model), model, tmp_path / "head.pt", TransferRecipe(head_epochs=3, epochs=0))
    assert history["fine_tune"] == [] and len(history["head"]) == 3
    assert load_checkpoint(tmp_path / "head.pt")["class_names"] == ["Red Fort", "Green Gate", "Blue Tower"]


@pytest.mark.parametrize("epochs, steps_per_epoch, expected", [
    (None, 93, EPOCHS),  # landmarks10's 6,000 training photos: the default count already gives over min_steps
    (None, 10, 24),  # a few hundred photos: enough epochs for 240 steps
    (None, 1000, EPOCHS),
    (2, 10, 2),  # epochs given: exactly those
    (0, 10, 0),
])
def test_a_small_dataset_gets_enough_steps_unless_epochs_are_given(epochs: int | None, steps_per_epoch: int, expected: int) -> None:
    assert TransferRecipe(epochs=epochs, min_steps=240).stage2_epochs(steps_per_epoch) == expected


def test_automatic_epochs_are_printed_and_run(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("mobilenet_v2", 3)
    loaders = _loaders(tiny_data, model)
    steps = len(loaders["train"])
    recipe = TransferRecipe(head_epochs=1, unfreeze=1, min_steps=EPOCHS * steps + 1)  # one step short with EPOCHS epochs
    history = fine_tune(loaders, model, tmp_path / "auto.pt", recipe)
    assert len(history["fine_tune"]) == EPOCHS + 1
    assert f"Stage 2: {EPOCHS + 1} epochs of {steps} steps" in capsys.readouterr().out
