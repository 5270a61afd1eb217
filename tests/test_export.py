"""The exported model's format: built complete, versioned, and read through one reader that converts or refuses."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, tiny_config
from src.export import (CLASSIC_THRESHOLD, EXPORTED_ATTRIBUTES, FORMAT_VERSION, NO_MEMORY, FeatureMemory, Predictor,
                        export_predictor, export_view, exported_files, open_export)
from src.factory import create_model
from src.openset import MaxSoftmax
from src.places import Place

IMAGES = torch.randint(0, 256, (3, 3, 50, 60), dtype=torch.uint8)


def _predictor(**kwargs) -> Predictor:
    torch.manual_seed(0)
    return Predictor(create_model("scratch", 2, widths=(8, 16)), ["Red Fort", "Green Gate"], tiny_config(32), **kwargs)


def test_an_export_is_built_complete_and_carries_its_format_version(tmp_path: Path) -> None:
    memory = FeatureMemory(torch.randn(4, 16).half(), torch.randn(4, 8).half(), torch.randn(2, 16).half(),
                           torch.tensor([0, 1, -1, -1]), [0, 1], "efficientnet_lite0", 224)
    detector = MaxSoftmax()
    places = {"Red Fort": Place(28.6562, 77.2410, "India", "Delhi")}
    view = open_export(export_predictor(_predictor(unknown_threshold=0.3, places=places, detector=detector, memory=memory),
                                        tmp_path / "m.pt"))
    assert view.format_version == FORMAT_VERSION == int(view.module.format_version)
    assert view.class_names == ["Red Fort", "Green Gate"] and view.unknown_threshold == pytest.approx(0.3)
    assert view.places == places and view.base is None
    assert torch.equal(view.memory_features, memory.features) and torch.equal(view.memory_targets, memory.targets)
    assert torch.equal(view.general_memory, memory.general) and torch.equal(view.memory_as_added, memory.as_added)
    assert (view.resize_size, view.image_size) == (tiny_config(32).resize, 32)
    assert all(hasattr(view.module, name) for name in EXPORTED_ATTRIBUTES)


def test_an_export_without_memory_keeps_empty_banks(tmp_path: Path) -> None:
    view = open_export(export_predictor(_predictor(), tmp_path / "m.pt"))
    assert view.memory_features.shape == NO_MEMORY.features.shape and len(view.memory_targets) == 0


@pytest.mark.parametrize("name", ["original_exported.pt", "transfer_exported.pt"])
def test_the_shipped_models_carry_the_current_format(name: str) -> None:
    view = open_export(REPO / "checkpoints" / name)
    assert view.format_version == FORMAT_VERSION and len(view.memory_features) > 0 and view.places


class _VersionOne(nn.Module):
    """An export written before files carried ``format_version``: the same attributes otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.class_names: List[str] = ["a", "b"]
        self.resize_size: int = 40
        self.image_size: int = 36
        self.unknown_threshold: float = 0.7
        self.places_json: str = '{"a": {"latitude": 1.0, "longitude": 2.0, "country": "X", "city": "Y"}}'

    @torch.jit.export
    def classify(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = x.float().mean(dim=(2, 3))[:, :2]
        return F.softmax(logits, dim=1), logits[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)[0]


class _Classic(nn.Module):
    """The classic project's scripted predictor: class names, a size and ``forward`` only."""

    def __init__(self, format_version: int | None = None) -> None:
        super().__init__()
        self.class_names: List[str] = ["a", "b", "c"]
        self.resize_size: int = 40
        if format_version is not None:
            self.format_version: int = format_version

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x.float().mean(dim=(2, 3)), dim=1)


def test_a_file_without_format_version_is_read_as_the_current_format(tmp_path: Path) -> None:
    torch.jit.script(_VersionOne()).save(str(tmp_path / "v1.pt"))
    view = open_export(tmp_path / "v1.pt")
    assert view.format_version == 1 and view.unknown_threshold == pytest.approx(0.7) and view.places["a"].city == "Y"
    probabilities, scores = view.classify(IMAGES)
    assert probabilities.shape == (3, 2) and torch.allclose(scores, IMAGES.float().mean(dim=(2, 3))[:, 0])
    assert view.memory_features.numel() == 0  # no memory: adding landmarks says to export it again


def test_a_classic_file_is_read_with_its_top_probability_as_known_score(tmp_path: Path) -> None:
    torch.jit.script(_Classic()).save(str(tmp_path / "classic.pt"))
    view = open_export(tmp_path / "classic.pt")
    probabilities, scores = view.classify(IMAGES)
    assert view.format_version == 0 and view.unknown_threshold == CLASSIC_THRESHOLD
    assert torch.equal(scores, probabilities.max(dim=1).values)
    with pytest.raises(ValueError, match="no features_and_logits.*export it again"):
        view.features_and_logits(IMAGES)


def test_a_file_of_a_newer_format_is_refused_with_what_to_do(tmp_path: Path) -> None:
    torch.jit.script(_Classic(format_version=FORMAT_VERSION + 1)).save(str(tmp_path / "future.pt"))
    with pytest.raises(ValueError, match=rf"future\.pt: export format {FORMAT_VERSION + 1} is newer .*update the project"):
        open_export(tmp_path / "future.pt")


def test_a_module_already_loaded_gets_the_same_view_as_its_file(tmp_path: Path) -> None:
    path = export_predictor(_predictor(unknown_threshold=0.25), tmp_path / "m.pt")
    from_file = open_export(path)
    from_module = export_view(torch.jit.load(str(path)))
    assert (from_module.class_names, from_module.unknown_threshold, from_module.format_version) == \
           (from_file.class_names, from_file.unknown_threshold, from_file.format_version)
    assert export_view(from_file) is from_file


def test_a_folder_of_models_lists_the_exports_only(tmp_path: Path) -> None:
    export_predictor(_predictor(), tmp_path / "b.pt")
    torch.save({"state_dict": {}}, tmp_path / "a_checkpoint.pt")
    (tmp_path / "broken.pt").write_bytes(b"junk")
    assert [path.name for path in exported_files(tmp_path)] == ["b.pt"]


def test_no_module_but_the_export_module_probes_an_exported_model() -> None:
    """Readers go through export_view: nothing else asks an export whether it has an attribute of the format."""
    names = set(EXPORTED_ATTRIBUTES) | {"combined", "format_version"}
    offenders = []
    for path in sorted((REPO / "src").glob("*.py")):
        if path.name == "export.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr") \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in names:
                offenders.append(f"{path.name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not offenders, offenders
