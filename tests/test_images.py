from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from src.images import MAX_ASPECT_RATIO, ImageReadError, is_image_file, load_rgb, read_image
from src.preprocessing import square_uint8


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


def test_draft_decoding_keeps_at_least_twice_the_requested_size(tmp_path: Path) -> None:
    Image.new("RGB", (1600, 1200), (10, 20, 30)).save(tmp_path / "big.jpg")
    image = load_rgb(tmp_path / "big.jpg", draft_size=(256, 256))
    assert min(image.size) >= 2 * 256 and image.size[0] < 1600


@pytest.mark.parametrize("side", [256, 1024])
def test_draft_decoded_photos_give_the_model_the_pixels_of_a_full_decode(tmp_path: Path, side: int) -> None:
    """The app decodes uploads in full; ``tag`` and the cache draft-decode: both must give the model the same square."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (side // 8, side // 8, 3)), np.ones((8, 8, 1)))  # detail a draft would drop
    photo = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    full = square_uint8(read_image(tmp_path / "photo.jpg"), 128).float()
    drafted = square_uint8(read_image(tmp_path / "photo.jpg", 128), 128).float()
    assert (drafted - full).abs().mean() < 1.0  # 256 px: no draft at all; 1024 px: a draft to 256, then the same resize


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


@pytest.mark.parametrize("size", [(100_000, 1), (1, 100_000), (20_000, 2)])
def test_a_strip_is_refused_from_its_header(tmp_path: Path, size: tuple[int, int]) -> None:
    # A few hundred bytes that would cost gigabytes once a model resizes the short side up.
    # The file is cut after its header: the error is about its shape, so nothing was decoded.
    path = tmp_path / "strip.png"
    Image.new("RGB", size).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ImageReadError, match="aspect ratio") as error:
        load_rgb(path)
    assert str(path) in str(error.value)
    assert f"{size[0]}x{size[1]}" in str(error.value) and f"{MAX_ASPECT_RATIO}:1" in str(error.value)


@pytest.mark.parametrize("size", [(2000, 100), (100, MAX_ASPECT_RATIO * 100)])
def test_panoramas_are_still_accepted(tmp_path: Path, size: tuple[int, int]) -> None:
    Image.new("RGB", size, (10, 20, 30)).save(tmp_path / "panorama.jpg")
    assert load_rgb(tmp_path / "panorama.jpg").size == size


def test_16_bit_grey_is_scaled_with_rounding_over_its_whole_range(tmp_path: Path) -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    Image.fromarray(values).save(tmp_path / "deep.png")
    array = np.asarray(load_rgb(tmp_path / "deep.png"))
    expected = np.floor(values / 65535 * 255 + 0.5).astype(np.uint8)  # what float64 arithmetic gave
    assert (array == expected[:, :, None]).all()
    assert array[0, 0, 0] == 0 and array[-1, -1, 0] == 255


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_grey_is_stretched_to_its_maximum(tmp_path: Path, mode: str) -> None:
    values = np.linspace(-10, 3_000_000, 64 * 64).reshape(64, 64).astype(np.int32 if mode == "I" else np.float32)
    Image.fromarray(values).save(tmp_path / "deep.tiff")
    assert Image.open(tmp_path / "deep.tiff").mode == mode
    array = np.asarray(load_rgb(tmp_path / "deep.tiff"))[:, :, 0].astype(int)
    expected = np.clip(values / float(values.max()) * 255 + 0.5, 0, 255).astype(int)
    assert np.abs(array - expected).max() <= 1 and array.max() == 255 and array.min() == 0


PEAK_MEMORY = """
import resource, sys
from src.images import load_rgb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = load_rgb(sys.argv[1])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / (image.width * image.height))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux only")
def test_a_16_bit_image_costs_a_few_bytes_per_pixel_to_read(tmp_path: Path) -> None:
    # Through float64 an 88-megapixel 16-bit PNG cost 2.4 GB (24 to 27 bytes a pixel). Now:
    # PIL's 16-bit buffer (2), the 8-bit grey (1) and the RGB result (4, PIL keeps RGB in 32 bits).
    ramp = (np.arange(4000, dtype=np.uint32) * 16).astype(np.uint16)
    Image.fromarray(np.tile(ramp, (4000, 1))).save(tmp_path / "deep.png")
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(tmp_path / "deep.png")], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert float(result.stdout) < 10, f"{float(result.stdout):.1f} bytes per pixel"


def test_is_image_file_checks_extension_and_header(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "fake.png").write_text("x")
    assert is_image_file(tmp_path / "ok.png")
    assert not is_image_file(tmp_path / "notes.txt")
    assert not is_image_file(tmp_path / "fake.png")
