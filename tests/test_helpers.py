from __future__ import annotations

import json
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src import helpers
from src.helpers import (
    DataNotFoundError,
    compute_mean_and_std,
    dataset_fingerprint,
    download_and_extract,
    get_data_location,
    plot_confusion_matrix,
    setup_env,
)


def test_explicit_argument_wins_over_environment(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    monkeypatch.setenv("LANDMARK_DATA", str(other))
    assert get_data_location(tiny_data) == tiny_data.resolve()
    assert get_data_location() == other.resolve()


def test_local_landmark_images_folder_is_used(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_data, tmp_path / "landmark_images")
    assert get_data_location() == (tmp_path / "landmark_images").resolve()


def test_download_is_the_last_resort(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(helpers, "download_and_extract", lambda: calls.append(1) or tiny_data)
    assert get_data_location() == tiny_data.resolve()
    assert calls == [1]
    with pytest.raises(DataNotFoundError, match="LANDMARK_DATA"):
        get_data_location(download=False)


def test_folder_without_splits_is_rejected_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataNotFoundError, match=r"no test/ subfolder"):
        get_data_location(tmp_path)


def _zip_dataset(source: Path, archive: Path) -> str:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in source.rglob("*"):
            zf.write(path, Path("landmark_images") / path.relative_to(source))
    return archive.resolve().as_uri()


def test_download_and_extract_from_a_url(tiny_data: Path, tmp_path: Path) -> None:
    url = _zip_dataset(tiny_data, tmp_path / "landmark_images.zip")
    destination = tmp_path / "out" / "landmark_images"
    assert download_and_extract(url, destination) == destination
    assert sorted(p.name for p in (destination / "train").iterdir()) == sorted(p.name for p in (tiny_data / "train").iterdir())
    assert [p.name for p in destination.parent.iterdir()] == ["landmark_images"]  # no temporary leftovers
    with pytest.raises(FileExistsError):
        download_and_extract(url, destination)


def test_failed_download_leaves_nothing_and_explains_how_to_work_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(helpers.urllib.request, "urlopen", offline)
    with pytest.raises(DataNotFoundError, match="LANDMARK_DATA") as error:
        download_and_extract(destination=tmp_path / "landmark_images")
    assert "Name or service not known" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_archive_without_dataset_is_rejected(tmp_path: Path) -> None:
    archive = tmp_path / "junk.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(DataNotFoundError, match="no folder with train/ and test/"):
        download_and_extract(archive.as_uri(), tmp_path / "landmark_images")
    assert not (tmp_path / "landmark_images").exists()


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
    cache_files = sorted(helpers.cache_dir().glob("mean_std-*.json"))
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
    with pytest.warns(UserWarning, match="damaged cache file"):
        mean, _ = compute_mean_and_std(data, num_workers=0)
    assert torch.allclose(mean, torch.full((3,), 0.5), atol=1e-4)


def test_setup_env_prepares_device_data_and_checkpoints(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = setup_env(tiny_data)
    assert env.device.type in ("cpu", "cuda")
    assert env.data_dir == tiny_data.resolve()
    assert (tmp_path / "checkpoints").is_dir()
    first = torch.rand(3)
    setup_env(tiny_data)
    assert torch.equal(first, torch.rand(3))  # seeded


def test_plot_confusion_matrix() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    fig = plot_confusion_matrix(pred, truth, class_names=["Red Fort", "Green Gate", "Blue Tower"])
    ax = fig.axes[0]
    assert "accuracy 66.7%" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Red Fort", "Green Gate", "Blue Tower"]
    matrix = ax.images[0].get_array()
    assert np.allclose(matrix.sum(axis=1), 1.0) and matrix[0, 1] == pytest.approx(0.5)
    assert plot_confusion_matrix(pred, truth).axes[0].images[0].get_array().shape == (3, 3)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.pt"
    helpers.atomic_write(target, lambda tmp: tmp.write_text("old"))

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        helpers.atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["model.pt"]
