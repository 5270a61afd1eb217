"""The shipped exported models: load with torch alone in a fresh process, small, and right on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_without_src

SHIPPED = ["original_exported.pt", "transfer_exported.pt"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_predicts_in_a_fresh_process(name: str, tmp_path: Path) -> None:
    path = REPO / "checkpoints" / name
    assert path.is_file(), f"{path} is not in the repository"
    assert path.stat().st_size <= 30e6
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["test"]["photos"] == 2000 and len(metrics["test"]["per_class_top1"]) == 10
    result = run_without_src(f"""
        import torch
        model = torch.jit.load({str(path)!r}, map_location="cpu")
        assert len(model.class_names) == 10
        probabilities = model(torch.randint(0, 256, (2, 3, 600, 800), dtype=torch.uint8))
        assert probabilities.shape == (2, 10) and torch.allclose(probabilities.sum(1), torch.ones(2))
        print("ok")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_names_real_landmarks(name: str, landmarks10: Path, tmp_path: Path) -> None:
    """With torch, Pillow and NumPy alone, the first test photo of every landmark (10 photos) is mostly right."""
    photos = sorted(landmarks10.glob("test/*/*.jpg"))[::200]
    assert len(photos) == 10
    result = run_without_src(f"""
        import numpy as np
        import torch
        from PIL import Image
        model = torch.jit.load({str(REPO / "checkpoints" / name)!r}, map_location="cpu")
        correct = 0
        for path in {[str(p) for p in photos]!r}:
            image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
            best = int(model(image)[0].argmax())
            correct += model.class_names[best].replace(" ", "_") in path
        print(correct)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 8  # ~95 % or better on the test split
