"""One pass through a transfer model's ImageNet first stages for its own and plain ImageNet features (src/shared_trunk.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_CLASSES, noise_photos
from src.checkpoint import save_checkpoint
from src.cli import main
from src.export import Predictor, export_predictor, load_exported, save_scripted
from src.factory import create_model
from src.imagenet_features import GENERAL_BACKBONE, CombinedFeatures, ImageNetFeatures
from src.location import split_negatives
from src.memory import feature_memory, photo_features
from src.new_landmarks import add_landmarks, combined_features
from src.onnx_export import export_onnx
from src.onnx_runtime import OnnxExport
from src.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from src.shared_trunk import SharedTrunkFeatures, SharedTrunkPredictor, general_tail, shared_trunk_model, untouched_stages
from src.transfer import OFFLINE_BACKBONES

TRAINED = 12  # the transfer recipe's unfreeze


def _trained(name: str, stages: int = 3) -> torch.nn.Module:
    """A transfer model whose last ``stages`` stages moved away from ImageNet's weights, as training moves them."""
    torch.manual_seed(0)
    model = create_model(name, 2, pretrained=True).eval()
    model.unfreeze_last(stages)
    with torch.no_grad():
        for stage in model.stages()[-stages:]:
            for parameter in stage.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("name", list(OFFLINE_BACKBONES))
def test_the_trunk_is_the_first_stages_that_kept_their_imagenet_weights(name: str) -> None:
    model = _trained(name)
    assert untouched_stages(model) == len(model.stages()) - 3
    size = model.data_defaults.native_size
    shared = shared_trunk_model(model, size)
    photos = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(shared.forward_features(photos), model.forward_features(photos), atol=1e-5)
        assert torch.allclose(torch.jit.script(shared)(photos), model(photos), atol=1e-5)
        general = general_tail(name, shared.trunk_stages)(shared.trunk(photos))
        assert torch.allclose(general, create_model(name, 2, pretrained=True).eval().forward_features(photos), atol=1e-4)


def test_a_model_without_an_imagenet_trunk_or_read_below_its_native_size_shares_none() -> None:
    assert shared_trunk_model(create_model("scratch", 2, widths=(8, 16)), 224) is None
    assert shared_trunk_model(_trained("mobilenet_v2"), 128) is None  # ImageNet features name new landmarks less often there
    untrained = create_model("mobilenet_v2", 2, pretrained=True)
    assert shared_trunk_model(untrained, 224) is None  # its own features are the ImageNet ones already
    whole = _trained("mobilenet_v2", len(untrained.stages()))
    assert untouched_stages(whole) == 0 and shared_trunk_model(whole, 224) is None
    assert untouched_stages(_trained("mobilenet_v2", TRAINED)) == len(untrained.stages()) - TRAINED  # found, whatever flags say


def _export(kind: type[Predictor], network: torch.nn.Module, tiny_data: Path, path: Path, negatives: Path) -> Path:
    """A two-landmark export at 224 px with its feature memory, as finish_run writes it."""
    config = PreprocessConfig(eval_crop=224, resize=224, train_crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    paths = [p for c in TINY_CLASSES[:2] for p in sorted((tiny_data / "train" / c).iterdir())]
    targets = [i for i, c in enumerate(TINY_CLASSES[:2]) for _ in sorted((tiny_data / "train" / c).iterdir())]
    plain = kind(network, ["Red Fort", "Green Gate"], config, unknown_threshold=0.5)
    features, kept, _ = photo_features(plain, paths, num_workers=0)
    memory = feature_memory(plain, features, paths, targets, [negatives], num_workers=0)
    return export_predictor(kind(network, ["Red Fort", "Green Gate"], config, unknown_threshold=0.5, memory=memory), path)


@pytest.fixture(scope="module")
def exports(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    network, folder = _trained("mobilenet_v2", TRAINED), tmp_path_factory.mktemp("shared")
    negatives = noise_photos(folder / "negatives")
    return {"plain": _export(Predictor, network, tiny_data, folder / "plain.pt", negatives),
            "shared": _export(SharedTrunkPredictor, shared_trunk_model(network, 224), tiny_data, folder / "shared.pt", negatives),
            "negatives": negatives}


def test_an_export_with_a_shared_trunk_answers_as_before_and_keeps_imagenet_features(exports: dict[str, Path],
                                                                                      tiny_data: Path) -> None:
    plain, shared = load_exported(exports["plain"]), load_exported(exports["shared"])
    photos = torch.randint(0, 256, (3, 3, 60, 50), dtype=torch.uint8)
    for ours, before in zip(shared.classify(photos), plain.classify(photos)):
        assert torch.allclose(ours, before, atol=1e-5)
    assert (shared.general_backbone, shared.general_size, shared.general_trunk_stages) == ("mobilenet_v2", 224, 19 - TRAINED)
    assert plain.general_trunk_stages == 0 and not hasattr(plain, "trunk_features")
    assert all(hasattr(shared, name) for name in SharedTrunkPredictor.ADDED_METHODS)
    memory_photos = [p for c in TINY_CLASSES[:2] for p in sorted((tiny_data / "train" / c).iterdir())]
    remembered = memory_photos + split_negatives(exports["negatives"])[0]  # validation photos, then negatives
    assert (shared.memory_targets == -1).sum() == len(remembered) - len(memory_photos) > 0
    imagenet, _, _ = photo_features(ImageNetFeatures("mobilenet_v2", 224), remembered, num_workers=0)
    assert torch.allclose(shared.general_memory.float(), imagenet, atol=2e-2)
    assert torch.allclose(shared.memory_features.float(), plain.memory_features.float(), atol=1e-2)  # the same network
    assert torch.equal(shared.memory_as_added, shared.memory_features[:len(memory_photos)])  # read at its own size
    assert exports["shared"].stat().st_size < 1.01 * exports["plain"].stat().st_size  # the trunk's weights are stored once


@pytest.mark.filterwarnings("ignore::src.new_landmarks.AlikeFolderWarning")  # a tiny base: its noise negatives are nearest
def test_landmarks_added_to_it_continue_its_trunk_instead_of_a_second_network(exports: dict[str, Path], tiny_data: Path,
                                                                              tmp_path: Path) -> None:
    base = load_exported(exports["shared"])
    extractor = combined_features(base)
    assert isinstance(extractor, SharedTrunkFeatures)
    photos = sorted((tiny_data / "train" / TINY_CLASSES[2]).iterdir())
    added, _ = add_landmarks(base, {"Blue Tower": photos[:6]}, num_workers=0)
    tail = sum(p.numel() * p.element_size() for p in general_tail("mobilenet_v2", 19 - TRAINED).parameters())
    general = save_scripted(added.combined.general, tmp_path / "general.pt").stat().st_size
    assert 0.9 * tail < general < 1.1 * tail  # the ImageNet copy of the trained stages alone (batch norm folded in)
    path = save_scripted(added, tmp_path / "added.pt")
    assert path.stat().st_size < exports["shared"].stat().st_size + 1.1 * tail  # nor the base's detector or memory again
    reloaded = load_exported(path)
    squares = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8)
    features, logits = reloaded.features_and_logits(squares)
    expected = torch.cat([base.features_and_logits(squares)[0], ImageNetFeatures("mobilenet_v2", 224)(squares)], dim=1)
    assert torch.allclose(features, expected, atol=1e-3)
    assert list(reloaded.class_names) == ["Red Fort", "Green Gate", "Blue Tower"] and logits.shape == (4, 3)
    again, _ = add_landmarks(reloaded, {"Sky Gate": photos[6:10]}, num_workers=0)  # refits from its memory
    assert list(again.class_names)[-2:] == ["Blue Tower", "Sky Gate"]
    onnx = OnnxExport(export_onnx(reloaded, tmp_path / "added.onnx", "").read_bytes(), "added.onnx")
    for ours, theirs in zip(onnx.classify(squares), reloaded.classify(squares)):
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_export_shares_the_trunk_of_a_checkpoint_read_at_its_native_size_unless_told_not_to(tiny_data: Path,
                                                                                             tmp_path: Path) -> None:
    config = PreprocessConfig(eval_crop=224, resize=256, train_crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    model = _trained("mobilenet_v2", TRAINED)
    model.head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, 3))
    model.arch["num_classes"] = model.num_classes = 3
    save_checkpoint(tmp_path / "model.pt", model, {"class_names": [c[3:].replace("_", " ") for c in TINY_CLASSES],
                                                   "preprocess": config.to_dict()})
    (tmp_path / "no_negatives").mkdir()  # not the real folders of $LANDMARK_NEGATIVES
    common = ["--data", str(tiny_data), "--workers", "0", "--negatives", str(tmp_path / "no_negatives")]
    assert main(["export", str(tmp_path / "model.pt"), "--out", str(tmp_path / "shared.pt"), *common]) == 0
    assert main(["export", str(tmp_path / "model.pt"), "--out", str(tmp_path / "second.pt"), "--second-network", *common]) == 0
    shared, second = load_exported(tmp_path / "shared.pt"), load_exported(tmp_path / "second.pt")
    assert (shared.general_trunk_stages, shared.general_backbone) == (19 - TRAINED, "mobilenet_v2")
    assert (second.general_trunk_stages, second.general_backbone) == (0, GENERAL_BACKBONE)
    assert isinstance(combined_features(shared), SharedTrunkFeatures) and isinstance(combined_features(second), CombinedFeatures)
    photos = torch.randint(0, 256, (2, 3, 90, 70), dtype=torch.uint8)
    assert torch.allclose(shared.classify(photos)[0], second.classify(photos)[0], atol=1e-5)  # the same network either way
    new = tmp_path / "new" / "Sky_Gate"
    new.mkdir(parents=True)
    for photo in sorted((tiny_data / "train" / TINY_CLASSES[2]).iterdir())[:4]:
        (new / photo.name).symlink_to(photo)
    for design, said in (("shared", "shared trunk: the export's own first 7 stages"), ("second", "second network: ImageNet")):
        assert main(["add-landmarks", str(tmp_path / f"{design}.pt"), str(new.parent), "--out", str(tmp_path / f"{design}+1.pt"),
                     "--workers", "0"]) == 0
        assert json.loads((tmp_path / f"{design}+1.json").read_text())["imagenet_features"].startswith(said)
