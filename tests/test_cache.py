"""The decode-once image cache: content, reuse, invalidation, damage and unreadable photos."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import src.cache as cache
from src.cache import decoded_images
from src.images import read_image
from src.location import list_images
from src.preprocessing import square_uint8


def test_center_square_resizes_the_short_side_and_crops_the_centre() -> None:
    wide = torch.zeros(3, 40, 80, dtype=torch.uint8)
    wide[:, :, 20:60] = 255  # the central 40x40 is white
    square = square_uint8(wide, 20)
    assert square.shape == (3, 20, 20) and square.dtype == torch.uint8
    assert square[:, :, 1:-1].min() == 255 and square.min() > 128  # antialiasing softens only the edge pixels
    tall = torch.arange(3 * 60 * 30, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 60, 30)
    assert square_uint8(tall, 30).equal(tall[:, 15:45])  # no resize needed: an exact crop


def test_decoded_images_match_the_photos(tiny_data: Path) -> None:
    paths = list_images(tiny_data / "train")
    images, readable = decoded_images(paths, tiny_data / "train", 32, num_workers=0)
    assert images.shape == (len(paths), 3, 32, 32) and images.dtype == torch.uint8
    assert readable.all()
    for index in (0, len(paths) - 1):
        assert images[index].equal(square_uint8(read_image(paths[index]), 32))


def test_cache_is_reused_and_invalidated_when_a_photo_changes(tiny_data_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tiny_data_copy / "train"
    paths = list_images(root)
    first, _ = decoded_images(paths, root, 24, num_workers=0)
    decode = cache._decode_all
    calls: list[int] = []
    monkeypatch.setattr(cache, "_decode_all", lambda *a: calls.append(1) or decode(*a))
    again, _ = decoded_images(paths, root, 24, num_workers=0)
    assert calls == [] and again.equal(first)  # loaded from the cache file
    Image.new("RGB", (30, 30), (255, 255, 255)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    changed, _ = decoded_images(paths, root, 24, num_workers=0)
    assert calls == [1] and changed[0].min() == 255 and changed[1:].equal(first[1:])


def test_damaged_cache_is_decoded_again(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path))
    paths = list_images(tiny_data / "test")
    expected, _ = decoded_images(paths, tiny_data / "test", 16, num_workers=0)
    (cache_file,) = tmp_path.glob("decoded-*.pt")
    cache_file.write_bytes(b"not a cache")
    with pytest.warns(UserWarning, match="damaged image cache"):
        images, _ = decoded_images(paths, tiny_data / "test", 16, num_workers=0)
    assert images.equal(expected)


def test_cache_of_an_earlier_decoding_is_decoded_again_quietly(tiny_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path))
    paths = list_images(tiny_data / "test")
    expected, _ = decoded_images(paths, tiny_data / "test", 16, num_workers=0)
    (cache_file,) = tmp_path.glob("decoded-*.pt")
    record = torch.load(cache_file, weights_only=True)
    torch.save({**record, "format": "decoded-images/1", "images": torch.zeros_like(record["images"])}, cache_file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not reported as damage: the file is simply out of date
        images, _ = decoded_images(paths, tiny_data / "test", 16, num_workers=0)
    assert images.equal(expected) and torch.load(cache_file, weights_only=True)["format"] == cache.CACHE_FORMAT


def test_unreadable_photos_are_masked_and_named(tiny_data_copy: Path) -> None:
    root = tiny_data_copy / "train"
    paths = list_images(root)
    paths[2].write_bytes(paths[2].read_bytes()[:200])  # truncated JPEG
    with pytest.warns(UserWarning, match=paths[2].name):
        _, readable = decoded_images(paths, root, 16, num_workers=0)
    assert readable.tolist() == [i != 2 for i in range(len(paths))]


def test_unwritable_cache_still_decodes(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("LANDMARK_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="cannot create the cache folder"):
        images, readable = decoded_images(list_images(tiny_data / "test"), tiny_data / "test", 16, num_workers=0)
    assert readable.all() and images.shape[0] == 12


def test_a_bad_cache_bound_is_refused_before_decoding(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARK_CACHE_GB", "nan")
    monkeypatch.setattr(cache, "square_batches", lambda *args, **kwargs: pytest.fail("decoded before checking the bound"))
    with pytest.raises(ValueError, match="LANDMARK_CACHE_GB='nan'"):
        decoded_images(list_images(tiny_data / "test"), tiny_data / "test", 17, num_workers=0)
