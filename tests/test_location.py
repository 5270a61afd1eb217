"""Finding, downloading and listing the dataset."""

from __future__ import annotations

import io
import os
import shutil
import urllib.error
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from src import location
from src.location import DataNotFoundError, download_and_extract, get_data_location, list_images

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


def test_list_images_follows_linked_folders_and_names_unreadable_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "linked.jpg")
    root = tmp_path / "photos"
    (root / "locked").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "a.jpg")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    (root / "loop").symlink_to(root)  # followed once, not forever
    scandir = os.scandir

    def refuse_locked(path):  # root reads any folder, so a permission error is simulated
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    with pytest.warns(UserWarning, match=r"skipped 1 folder\(s\) that cannot be read: .*locked \(Permission denied\)"):
        found = list_images(root)
    assert [p.relative_to(root).as_posix() for p in found] == ["a.jpg", "link/linked.jpg"]


def test_download_that_stops_early_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Truncated(io.BytesIO):
        headers = {"Content-Length": "1000"}

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    monkeypatch.setattr(location.urllib.request, "urlopen", lambda url, timeout: Truncated(b"x" * 600))
    with pytest.raises(DataNotFoundError, match="stopped after 600 of 1,000 bytes"):
        download_and_extract("https://example.invalid/landmark_images.zip", tmp_path / "landmark_images")
    assert list(tmp_path.iterdir()) == []


def test_archive_with_a_damaged_member_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    archive = tmp_path / "landmark_images.zip"
    _zip_dataset(tiny_data, archive)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        member = next(info for info in zf.infolist() if info.file_size > 100)
    start = member.header_offset + 30 + len(member.filename) + len(member.extra) + 50
    data[start] ^= 0xFF  # one flipped byte inside a stored photo
    archive.write_bytes(bytes(data))
    with pytest.raises(DataNotFoundError, match="fails its checksum"):
        download_and_extract(archive.as_uri(), tmp_path / "landmark_images")
    assert not (tmp_path / "landmark_images").exists()


def test_entries_named_like_photos_that_are_no_files_are_named_or_kept(tmp_path: Path, make_bad_photo) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    odd = [make_bad_photo(kind, tmp_path) for kind in ("directory", "fifo", "broken_symlink", "symlink_loop")]
    with pytest.warns(UserWarning, match=r"left out 4 entries named like photos that are no regular files") as warned:
        assert list_images(tmp_path) == [tmp_path / "a.jpg"]
    assert all(str(path) in str(warned[0].message) for path in odd)
    assert list_images(tmp_path, keep_unreadable=True) == sorted([tmp_path / "a.jpg", *odd])
    assert list_images(tmp_path, keep_unreadable=True, exclude=[tmp_path]) == []
