"""Per-dataset channel statistics and their cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from src.files import cache_dir
from src.location import dataset_fingerprint
from src.statistics import compute_mean_and_std

def _solid_dataset(root: Path, colours: list[tuple[int, int, int]]) -> Path:
    for split in ("train", "test"):
        folder = root / split / "00.Only"
        folder.mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (30, 20), colour).save(folder / f"{i}.png")
    return root


def test_mean_and_std_are_exact_and_cached_per_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cache"))
    first = _solid_dataset(tmp_path / "a", [(0, 0, 0), (255, 255, 255)])
    second = _solid_dataset(tmp_path / "b", [(255, 0, 0), (255, 0, 0)])
    mean, std = compute_mean_and_std(first, num_workers=0)
    assert torch.allclose(mean, torch.full((3,), 0.5), atol=1e-4) and torch.allclose(std, torch.full((3,), 0.5), atol=1e-4)
    mean2, std2 = compute_mean_and_std(second, num_workers=0)
    assert torch.allclose(mean2, torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)  # not the first dataset's cache
    cache_files = sorted(cache_dir().glob("mean_std-*.json"))
    assert len(cache_files) == 2
    assert {json.loads(f.read_text())["dataset"] for f in cache_files} == {str((first / "train").resolve()), str((second / "train").resolve())}
    # a changed photo changes the fingerprint, so the statistics are recomputed
    before = dataset_fingerprint(first / "train")
    Image.new("RGB", (30, 20), (255, 255, 255)).save(first / "train" / "00.Only" / "0.png")
    assert dataset_fingerprint(first / "train") != before
    mean3, _ = compute_mean_and_std(first, num_workers=0)
    assert torch.allclose(mean3, torch.ones(3), atol=1e-4)


def test_statistics_survive_an_unwritable_or_damaged_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _solid_dataset(tmp_path / "a", [(0, 0, 0), (255, 255, 255)])
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.warns(UserWarning, match="cannot create the cache folder"):
        mean, _ = compute_mean_and_std(data, num_workers=0)
    assert torch.allclose(mean, torch.full((3,), 0.5), atol=1e-4)
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cache"))
    compute_mean_and_std(data, num_workers=0)
    (cache_file,) = (tmp_path / "cache").glob("mean_std-*.json")
    cache_file.write_text("{truncated")
    with pytest.warns(UserWarning, match="damaged statistics cache"):
        mean, _ = compute_mean_and_std(data, num_workers=0)
    assert torch.allclose(mean, torch.full((3,), 0.5), atol=1e-4)


@pytest.mark.parametrize("content", ['{"mean": [0.5], "std": [0.5]}', '{"mean": [0.5, 0.5, "x"], "std": [1, 1, 1]}',
                                     '{"mean": [0.5, 0.5, 0.5], "std": [0, 1, 1]}', '[1, 2, 3]', '{"mean": NaN}'])
def test_implausible_statistics_in_the_cache_are_recomputed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str) -> None:
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path / "cache"))
    data = _solid_dataset(tmp_path / "a", [(0, 0, 0), (255, 255, 255)])
    compute_mean_and_std(data, num_workers=0)
    (cache_file,) = (tmp_path / "cache").glob("mean_std-*.json")
    cache_file.write_text(content)
    with pytest.warns(UserWarning, match="damaged statistics cache"):
        mean, std = compute_mean_and_std(data, num_workers=0)
    assert torch.allclose(mean, torch.full((3,), 0.5), atol=1e-4) and torch.allclose(std, torch.full((3,), 0.5), atol=1e-4)
