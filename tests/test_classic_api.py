"""The classic project's API, called its way: what its notebooks import and what its own tests pin.

These mirror the classic project's tests (``src/data.py`` … ``src/transfer.py``), run on the default
data location (``$LANDMARK_DATA``, here the tiny dataset) with no sizes or recipe passed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from src.data import get_data_loaders, visualize_one_batch
from src.model import MyModel
from src.optimization import OutlierExposureLoss, get_loss, get_optimizer
from src.predictor import Predictor
from src.train import one_epoch_test, optimize, train_one_epoch, valid_one_epoch
from src.transfer import get_model_transfer_learning


@pytest.fixture(scope="module")
def classic_data(tiny_data: Path):
    """The default dataset is the tiny one for these tests (the classic tests read the default location)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LANDMARK_DATA", str(tiny_data))
        yield tiny_data


@pytest.fixture(autouse=True)
def default_data(classic_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARK_DATA", str(classic_data))  # each test's own environment starts without it


@pytest.fixture(scope="module")
def data_loaders(classic_data: Path):
    return get_data_loaders(batch_size=2)


@pytest.fixture(scope="module")
def small_loaders(classic_data: Path):
    return get_data_loaders(batch_size=50, limit=200, valid_size=0.5, num_workers=0)


def test_classic_imports_from_helpers() -> None:
    from src.helpers import compute_mean_and_std, plot_confusion_matrix
    from src.statistics import compute_mean_and_std as statistics_mean_and_std
    from src.analysis import plot_confusion_matrix as analysis_plot

    assert compute_mean_and_std is statistics_mean_and_std and plot_confusion_matrix is analysis_plot
    with pytest.raises(ImportError):
        from src.helpers import no_such_name  # noqa: F401


def test_data_loaders_keys(data_loaders) -> None:
    assert set(data_loaders.keys()) == {"train", "valid", "test"}


def test_data_loaders_give_224_px_tensors_in_batches_as_asked(data_loaders) -> None:
    for split in ("train", "valid", "test"):
        images, labels = next(iter(data_loaders[split]))
        assert isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
        assert images.shape == (2, 3, 224, 224) and len(labels) == 2


def test_visualize_one_batch(data_loaders) -> None:
    visualize_one_batch(data_loaders, max_n=2)


def test_model_construction(data_loaders) -> None:
    model = MyModel(num_classes=23, dropout=0.3)
    images, _ = next(iter(data_loaders["train"]))
    out = model(images)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 23)


def test_get_model_transfer_learning(data_loaders) -> None:
    model = get_model_transfer_learning(n_classes=23)
    images, _ = next(iter(data_loaders["train"]))
    out = model(images)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 23)


def test_get_loss_is_plain_cross_entropy() -> None:
    loss = get_loss()
    assert isinstance(loss, nn.CrossEntropyLoss) and not isinstance(loss, OutlierExposureLoss)
    assert isinstance(get_loss(0.1, outlier_weight=0.5), OutlierExposureLoss)  # the recipes opt in


@pytest.fixture(scope="module")
def linear() -> nn.Module:
    return nn.Linear(16, 256)


def test_get_optimizer(linear: nn.Module) -> None:
    sgd = get_optimizer(linear)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["params"][0].shape == (256, 16)
    adam = get_optimizer(linear, optimizer="adam")
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["params"][0].shape == (256, 16)
    assert get_optimizer(linear, optimizer="adam", learning_rate=0.123).param_groups[0]["lr"] == 0.123
    assert get_optimizer(linear, optimizer="SGD", momentum=0.123).param_groups[0]["momentum"] == 0.123
    assert get_optimizer(linear, optimizer="SGD", weight_decay=0.123).param_groups[0]["weight_decay"] == 0.123


@pytest.fixture(scope="module")
def optim_objects():
    torch.manual_seed(0)
    model = MyModel(50)
    return model, get_loss(), get_optimizer(model)


def test_epoch_functions_return_one_float_loss(small_loaders, optim_objects) -> None:
    model, loss, optimizer = optim_objects
    for _ in range(2):
        train_loss = train_one_epoch(small_loaders["train"], model, optimizer, loss)
        valid_loss = valid_one_epoch(small_loaders["valid"], model, loss)
        assert type(train_loss) is float and type(valid_loss) is float
        assert not np.isnan(train_loss) and not np.isnan(valid_loss)  # a plain bool: `not` needs one
    test_loss = one_epoch_test(small_loaders["test"], model, loss)
    assert type(test_loss) is float and not np.isnan(test_loss)


def test_optimize(small_loaders, optim_objects) -> None:
    model, loss, optimizer = optim_objects
    with tempfile.TemporaryDirectory() as temp_dir:
        optimize(small_loaders, model, optimizer, loss, 2, f"{temp_dir}/hey.pt")
        assert Path(temp_dir, "hey.pt").is_file()


def test_predictor_from_mean_and_std(data_loaders) -> None:
    from src.helpers import compute_mean_and_std

    mean, std = compute_mean_and_std()
    model = MyModel(num_classes=3, dropout=0.3)
    images, _ = next(iter(data_loaders["train"]))
    for predictor in (Predictor(model, class_names=["a", "b", "c"], mean=mean, std=std),
                      Predictor(model, ["a", "b", "c"], mean, std)):  # the classic notebooks' positional call
        out = predictor(images)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
        assert torch.allclose(out.sum(dim=1), torch.ones(2))
        assert (predictor.resize_size, predictor.image_size) == (256, 224)
    scripted = torch.jit.script(predictor)
    assert torch.allclose(scripted(images), predictor(images), atol=1e-6)
    with pytest.raises(TypeError, match="mean and std"):
        Predictor(model, ["a", "b", "c"], mean)
