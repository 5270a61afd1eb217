"""Finding, downloading and listing the dataset."""

from __future__ import annotations

import shutil
import urllib.error
import zipfile
from pathlib import Path

import pytest

from src import location
from src.location import DataNotFoundError, download_and_extract, get_data_location

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
    monkeypatch.setattr(location, "download_and_extract", lambda: calls.append(1) or tiny_data)
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

    monkeypatch.setattr(location.urllib.request, "urlopen", offline)
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
