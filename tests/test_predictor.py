from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from conftest import run_without_src, tiny_config
from src.data import get_data_loaders
from src.factory import create_model, list_models
from src.predictor import Predictor, predictor_test, top_k
from src.export import export_predictor, load_exported

NAMES = ["Red Fort", "Green Gate", "Blue Tower"]


def _predictor(name: str = "scratch", image_size: int = 32) -> Predictor:
    torch.manual_seed(0)
    kwargs = {"widths": (8, 16)} if name == "scratch" else {}
    model = create_model(name, 3, pretrained=False, **kwargs)
    return Predictor(model, NAMES, tiny_config(image_size))


def test_predictor_returns_probabilities_for_any_input_size() -> None:
    predictor = _predictor()
    for shape in ((2, 3, 40, 60), (1, 3, 100, 30), (3, 20, 20)):
        probabilities = predictor(torch.randint(0, 256, shape, dtype=torch.uint8))
        assert probabilities.shape == (shape[0] if len(shape) == 4 else 1, 3)
        assert torch.allclose(probabilities.sum(1), torch.ones(len(probabilities)))
    image = torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8)
    assert torch.allclose(predictor(image), predictor(image.float() / 255), atol=1e-6)  # uint8 or float input
    with pytest.raises(ValueError, match="RGB images"):
        predictor(torch.zeros(1, 1, 10, 10))


def test_predictor_crops_the_centre_like_the_eval_transform() -> None:
    predictor = _predictor(image_size=32)
    image = torch.zeros(1, 3, 37, 60)
    image[:, :, 2:-3, 14:-14] = 1.0  # the centre 32x32 after no resize (37 == resize_size of 32)
    seen = {}
    predictor.model.features.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    predictor(image)
    normalised_one = (1 - predictor.mean) / predictor.std
    assert seen["x"].shape == (1, 3, 32, 32) and torch.allclose(seen["x"], normalised_one.expand(1, 3, 32, 32))


@pytest.mark.parametrize("name", list_models())
def test_export_round_trip_in_a_fresh_process_without_src(name: str, tmp_path: Path) -> None:
    predictor = _predictor(name, image_size=64)
    path = export_predictor(predictor, tmp_path / f"{name}.pt")
    images = torch.randint(0, 256, (2, 3, 90, 120), dtype=torch.uint8)
    torch.save({"images": images, "expected": predictor(images)}, tmp_path / "io.pt")
    script = f"""
        import torch
        model = torch.jit.load({str(path)!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        assert list(model.class_names) == {NAMES!r}, model.class_names
        assert torch.allclose(model(io["images"]), io["expected"], atol=1e-5)
        print("ok", model.image_size, model.resize_size)
    """
    result = run_without_src(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "64", "73"]


def test_load_exported_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.pt: not a TorchScript export"):
        load_exported(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_exported(tmp_path / "missing.pt")


def test_predictor_test_batches_match_single_photo_prediction(tiny_data: Path, tmp_path: Path, capsys) -> None:
    loaders = get_data_loaders(data_dir=tiny_data, batch_size=4, num_workers=0, config=tiny_config())
    exported = load_exported(export_predictor(_predictor(), tmp_path / "p.pt"))
    truth, pred = predictor_test(loaders["test"], exported, batch_size=5, num_workers=0)
    assert len(truth) == len(pred) == 12
    assert np.array_equal(truth, loaders["test"].dataset.targets)
    assert "Accuracy:" in capsys.readouterr().out
    for path, expected in zip(loaders["test"].dataset.paths, pred):
        ranking = top_k(exported, path, k=5)
        assert len(ranking) == 3 and NAMES.index(ranking[0][0]) == expected
        assert ranking[0][1] >= ranking[1][1] >= ranking[2][1]


class _Foreign(torch.nn.Module):
    """A TorchScript module with class names, but not a whole export."""

    def __init__(self, resize_size: int | None) -> None:
        super().__init__()
        self.class_names: List[str] = ["a", "b"]
        if resize_size is not None:
            self.resize_size: int = resize_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("resize_size, message", [(None, "has no resize_size"), (0, "resize_size 0 is not a size")])
def test_load_exported_refuses_an_export_without_a_usable_size(tmp_path: Path, resize_size: int | None, message: str) -> None:
    torch.jit.script(_Foreign(resize_size)).save(str(tmp_path / "foreign.pt"))
    with pytest.raises(ValueError, match=rf"foreign\.pt: {message}"):
        load_exported(tmp_path / "foreign.pt")


def test_a_full_disk_while_exporting_is_a_clear_error_and_keeps_the_old_model(tmp_path: Path, monkeypatch) -> None:
    path = export_predictor(_predictor(), tmp_path / "m.pt")
    before = path.read_bytes()

    def full_disk(file: Path, data: bytes) -> int:
        with open(file, "wb") as handle:
            handle.write(bytes(data[:1000]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match=rf"{path}: No space left on device") as error:
        export_predictor(_predictor(), path)
    assert error.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_exporting_and_loading_show_no_torchscript_deprecation_warning(tmp_path: Path) -> None:
    """TorchScript is the export format on purpose: PyTorch's FutureWarning about it is not shown to users."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_exported(export_predictor(_predictor(), tmp_path / "m.pt"))
    assert not [w for w in caught if "torch.jit" in str(w.message)], [str(w.message) for w in caught]
