from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.images import ImageReadError, is_image_file, load_rgb


def _odd_mode_images(folder: Path) -> dict[str, Path]:
    rgb = Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8)[None, :, None], (30, 1, 3)))
    files = {
        "L": rgb.convert("L"),
        "1": rgb.convert("1"),
        "P": rgb.convert("P"),
        "RGBA": rgb.convert("RGBA"),
        "LA": rgb.convert("LA"),
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.fromarray((np.arange(50, dtype=np.uint16)[None, :] * 1300).repeat(30, 0)),
        "F": Image.fromarray(np.linspace(0, 1, 50, dtype=np.float32)[None, :].repeat(30, 0)),
    }
    paths = {}
    for mode, image in files.items():
        suffix = {"CMYK": ".jpg", "F": ".tiff"}.get(mode, ".png")
        path = folder / f"{mode.replace(';', '_')}{suffix}"
        image.save(path)
        paths[mode] = path
    return paths


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "F"])
def test_any_mode_becomes_8bit_rgb(tmp_path: Path, mode: str) -> None:
    path = _odd_mode_images(tmp_path)[mode]
    assert Image.open(path).mode != "RGB"
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (50, 30)
    array = np.asarray(image)
    assert array.dtype == np.uint8
    # a left-to-right gradient in every mode: the right side must be brighter than the left
    assert array[:, -5:].mean() > array[:, :5].mean() + 50


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.save(tmp_path / "a.png")
    array = np.asarray(load_rgb(tmp_path / "a.png"))
    assert tuple(array[0, 0]) == (255, 0, 0)
    assert tuple(array[5, 5]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 60 wide x 20 high with a red left edge; orientation 6 means "rotate 90 degrees clockwise to view".
    stored = np.zeros((20, 60, 3), dtype=np.uint8)
    stored[:, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = np.asarray(load_rgb(tmp_path / "phone.jpg"))
    assert upright.shape == (60, 20, 3)
    assert upright[:10, :, 0].mean() > 200  # the red edge is now at the top
    assert upright[-10:, :, 0].mean() < 50


def test_draft_decoding_keeps_at_least_the_requested_size(tmp_path: Path) -> None:
    Image.new("RGB", (1600, 1200), (10, 20, 30)).save(tmp_path / "big.jpg")
    image = load_rgb(tmp_path / "big.jpg", draft_size=(256, 256))
    assert min(image.size) >= 256 and image.size[0] < 1600


@pytest.mark.parametrize(
    "content, expected",
    [(b"", "not an image"), (b"hello, I am a text file", "not an image"), ("truncated", "corrupt or truncated")],
)
def test_bad_files_raise_an_error_naming_the_file(tmp_path: Path, content, expected: str) -> None:
    path = tmp_path / "photo.jpg"
    if content == "truncated":
        Image.new("RGB", (200, 200), (100, 150, 200)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:400])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=expected) as error:
        load_rgb(path)
    assert str(path) in str(error.value)
    assert not is_image_file(path) or content == "truncated"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        load_rgb(tmp_path / "nope.jpg")


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (400, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageReadError, match="too large"):
        load_rgb(tmp_path / "bomb.png")


def test_is_image_file_checks_extension_and_header(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "fake.png").write_text("x")
    assert is_image_file(tmp_path / "ok.png")
    assert not is_image_file(tmp_path / "notes.txt")
    assert not is_image_file(tmp_path / "fake.png")
