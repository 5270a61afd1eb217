from __future__ import annotations

import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src.images as images
from conftest import BAD_PHOTO_KINDS, PHONE_HEIC, REPO, TINY_CLASSES, bomb_png_header
from src.images import MAX_ASPECT_RATIO, ImageReadError, is_image_file, load_rgb, photo_sizes, read_image
from src.location import list_images
from src.data_config import resolve_data_config, typical_short_side
from src.preprocessing import DataDefaults, square_uint8


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


def _sideways() -> tuple[Image.Image, Image.Exif]:
    """Stored 60 wide x 20 high with a red left edge; orientation 6 means "rotate 90 degrees clockwise to view"."""
    stored = np.zeros((20, 60, 3), dtype=np.uint8)
    stored[:, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return Image.fromarray(stored), exif


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    picture, exif = _sideways()
    picture.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = np.asarray(load_rgb(tmp_path / "phone.jpg"))
    assert upright.shape == (60, 20, 3)
    assert upright[:10, :, 0].mean() > 200  # the red edge is now at the top
    assert upright[-10:, :, 0].mean() < 50


def _phone_photo(folder: Path, suffix: str) -> Path:
    """The :func:`_sideways` picture in a phone's format: the HEIC file turns it with its HEIF transform and also says
    EXIF orientation 6, as iPhones write both; the AVIF one by EXIF alone."""
    path = folder / f"phone{suffix}"
    if suffix.lower() in (".heic", ".heif"):
        path.write_bytes(PHONE_HEIC.read_bytes())
    else:
        picture, exif = _sideways()
        picture.save(path, "AVIF", exif=exif, quality=95)
    return path


@pytest.mark.parametrize("suffix", [".heic", ".HEIF", ".avif"])
def test_phone_formats_are_found_and_read_upright(tmp_path: Path, suffix: str) -> None:
    path = _phone_photo(tmp_path, suffix)
    assert list_images(tmp_path) == [path] and is_image_file(path)
    upright = np.asarray(load_rgb(path))
    assert upright.shape == (60, 20, 3)
    assert upright[:10, :, 0].mean() > 200 and upright[-10:, :, 0].mean() < 50  # turned once, not twice
    assert read_image(path, draft=16).shape == (3, 60, 20)


def test_a_cut_heic_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.heic"
    path.write_bytes(PHONE_HEIC.read_bytes()[:400])
    with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: "):
        load_rgb(path)


def test_draft_decoding_keeps_at_least_twice_the_requested_size(tmp_path: Path) -> None:
    Image.new("RGB", (1600, 1200), (10, 20, 30)).save(tmp_path / "big.jpg")
    image = load_rgb(tmp_path / "big.jpg", draft_size=(256, 256))
    assert min(image.size) >= 2 * 256 and image.size[0] < 1600


@pytest.mark.parametrize("orientation, upright", [(1, (1600, 1200)), (6, (1200, 1600))])
def test_a_draft_decoded_photo_keeps_its_own_upright_size(tmp_path: Path, orientation: int, upright: tuple[int, int]) -> None:
    """What a person is told of a photo read for a model: its size, upright, not the size it was decoded at."""
    photo = Image.new("RGB", (1600, 1200), (10, 20, 30))
    exif = photo.getexif()
    exif[0x0112] = orientation
    photo.save(tmp_path / "big.jpg", exif=exif.tobytes())
    image = load_rgb(tmp_path / "big.jpg", draft_size=(128, 128))
    assert image.info["photo_size"] == upright and image.size != upright
    assert (image.width > image.height) == (upright[0] > upright[1])


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


@pytest.mark.parametrize("name", ["IMG_0001.DNG", "DSC_0002.nef", "IMG_0003.CR3"])
def test_camera_raw_files_are_refused_with_what_to_do(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    Image.new("RGB", (64, 48)).save(path, format="TIFF")  # a DNG is a TIFF: Pillow would read its preview as the photo
    with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: camera RAW files are not read: export them as JPEG"):
        load_rgb(path)
    with pytest.raises(ImageReadError, match=f"^{name}: camera RAW files are not read"):  # an upload in the app or service
        images.decode_photo(name, path.read_bytes())


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


@pytest.mark.parametrize("kind", BAD_PHOTO_KINDS)
def test_every_bad_kind_of_file_is_an_error_naming_the_file_and_what_it_is(tmp_path: Path, make_bad_photo, kind: str) -> None:
    path = make_bad_photo(kind, tmp_path)
    for read in (load_rgb, read_image):
        with pytest.raises(ImageReadError, match=f"^{re.escape(str(path))}: .*{re.escape(BAD_PHOTO_KINDS[kind])}"):
            read(path)
    assert not is_image_file(path) or kind == "truncated"  # a cut photo may keep a readable header
    assert photo_sizes([path]).shape == (0, 2)


def _header(width: int, height: int, kind: str) -> bytes:
    """The first bytes of a ``kind`` image claiming ``width`` x ``height`` pixels, without its image data."""
    if kind == "png":
        return bomb_png_header(width, height)
    if kind == "gif":
        return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    if kind == "bmp":
        return b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    if kind == "jpeg":
        return b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    if kind == "webp":
        return (b"RIFF" + struct.pack("<I", 22) + b"WEBPVP8X" + struct.pack("<I", 10) + bytes(4)
                + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))
    entries = ((256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 200), (279, 4, 100))
    return (b"II*\x00" + struct.pack("<IH", 8, len(entries))
            + b"".join(struct.pack("<HHII" if kind == 4 else "<HHIHH", tag, kind, 1, value, *(() if kind == 4 else (0,)))
                       for tag, kind, value in entries) + bytes(4))


@pytest.mark.parametrize("content", [
    *[_header(40_000, 40_000, kind) for kind in ("png", "tiff", "gif", "bmp", "jpeg", "webp")],
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x03IHDR\x00\x00\x01\x00\x00\x00\x00",  # Pillow: ValueError "Truncated IHDR chunk"
    b"P6\n99999999999999999999 7\n255\n", b"P6 3 3 25x\n",  # broken PPM headers
    b"#define x_width 0\n#define x_height 0\n",  # XBM
    b"\x01\xda\x00\x01\x00\x03" + struct.pack(">HHH", 40_000, 40_000, 3) + bytes(500),  # SGI
], ids=["png", "tiff", "gif", "bmp", "jpeg", "webp", "truncated_ihdr", "ppm_long", "ppm_garbage", "xbm", "sgi"])
def test_header_probes_skip_every_bad_header(tmp_path: Path, content: bytes) -> None:
    Image.new("RGB", (30, 20)).save(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(content)
    assert photo_sizes([tmp_path / "good.png", tmp_path / "bad.jpg", tmp_path / "good.png"]).tolist() == [[30, 20]] * 2
    with pytest.raises(ImageReadError, match=f"^{re.escape(str(tmp_path / 'bad.jpg'))}: "):
        load_rgb(tmp_path / "bad.jpg")


def test_picking_training_sizes_skips_header_only_files(tiny_data_copy: Path) -> None:
    folder = tiny_data_copy / "train" / TINY_CLASSES[0]
    (folder / "bomb.png").write_bytes(bomb_png_header())
    (folder / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x03IHDR\x00\x00\x01\x00\x00\x00\x00")
    config = resolve_data_config(DataDefaults(native_size=64, mean=(0.5,) * 3, std=(0.25,) * 3), tiny_data_copy)
    assert (config.eval_crop, config.resize) == (42, 42)  # the median of their 40 and 44 px short sides, read whole


@pytest.mark.parametrize("native, pretrained, upscaled", [
    (48, True, True),  # ~40 px photos are >= 3/4 of 48: read whole at the pretrained size
    (48, False, False),  # no pretrained size to match: used whole at their own size
    (64, True, False),  # < 3/4 of 64: not blown up
])
def test_photos_a_little_smaller_than_a_pretrained_size_are_read_at_it(tiny_data_copy: Path, native: int, pretrained: bool,
                                                                      upscaled: bool) -> None:
    own = typical_short_side(list_images(tiny_data_copy / "train"))
    assert 36 <= own < 48
    config = resolve_data_config(DataDefaults(native, (0.5,) * 3, (0.25,) * 3, pretrained=pretrained), tiny_data_copy)
    assert (config.eval_crop, config.resize) == ((native, native) if upscaled else (own, own))
    given = [resolve_data_config(DataDefaults(native, (0.5,) * 3, (0.25,) * 3, pretrained=flag), tiny_data_copy, eval_crop=36)
             for flag in (True, False)]
    assert given[0] == given[1] and (given[0].eval_crop, given[0].resize) == (36, 36)  # kept, whatever the model; read whole
    resized = resolve_data_config(DataDefaults(native, (0.5,) * 3, (0.25,) * 3, pretrained=pretrained), tiny_data_copy, resize=80)
    assert (resized.eval_crop, resized.resize) == (native, 80)  # a larger resize given: its centre at the native size


def test_file_uris_are_read_as_local_files_with_the_same_checks(tmp_path: Path, make_bad_photo) -> None:
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "a photo.png")
    assert load_rgb((tmp_path / "a photo.png").as_uri()).size == (30, 20)
    fifo = make_bad_photo("fifo", tmp_path)
    with pytest.raises(ImageReadError, match=re.escape(f"{fifo.as_uri()}: not a regular file (FIFO)")):
        load_rgb(fifo.as_uri())


@pytest.mark.parametrize("uri, missing", [("abfs://photos@account.dfs.core.windows.net/x.jpg", "no Azure credentials"),
                                          ("gs://bucket/x.jpg", "no Google Cloud credentials")])
def test_storage_without_credentials_is_refused_before_pyarrow_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        uri: str, missing: str) -> None:
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # importing it would fail: it must not be reached
    with pytest.raises(ImageReadError, match=f"^{re.escape(uri)}: {missing}"):
        load_rgb(uri)


def test_storage_that_never_answers_costs_one_photo_not_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyarrow.fs", reason="URIs are read with pyarrow: pip install -r requirements-scale.txt")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{silent.getsockname()[1]}", "AWS_ACCESS_KEY_ID": "x",
                            "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(images, "URI_TIMEOUT_S", 1.0)
        started = time.perf_counter()
        with pytest.raises(ImageReadError, match=r"^s3://photos/x.jpg: no answer within 1 s"):
            load_rgb("s3://photos/x.jpg")
        assert time.perf_counter() - started < 5


def test_a_photo_far_larger_than_its_target_is_reduced_to_close_pixels_and_an_ordinary_one_is_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for side, reduced in ((2048, True), (800, False)):
        smooth = np.kron(rng.integers(0, 256, (side // 16, side // 16, 3)), np.ones((16, 16, 1)))
        Image.fromarray(np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)).save(tmp_path / "p.png")
        full = square_uint8(read_image(tmp_path / "p.png"), 128).float()
        drafted = square_uint8(read_image(tmp_path / "p.png", 128), 128).float()
        assert min(load_rgb(tmp_path / "p.png", draft_size=(128, 128)).size) == (256 if reduced else side)
        assert (drafted - full).abs().mean() < (1.0 if reduced else 1e-9)  # the JPEG draft rule's closeness


# The process's own peak (VmHWM, kB): ru_maxrss would start at the resident size of the test process it forked from.
PEAK_KB = "int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1])"
SQUARE_PEAK = f"""
import sys
from src.decoding import SquarePhotos
before = {PEAK_KB}
SquarePhotos([sys.argv[1]], 128)[0]
print(({PEAK_KB} - before) * 1024 / int(sys.argv[2]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_a_large_png_costs_its_decoded_pixels_not_a_float_copy_to_square(tmp_path: Path) -> None:
    # Resized whole, an 88-megapixel PNG took 1.3 GB (the image in float32) in every decode worker.
    width, height = 6000, 4000
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    Image.fromarray(np.broadcast_to(ramp[None, :, None], (height, width, 3))).save(tmp_path / "large.png", compress_level=1)
    result = subprocess.run([sys.executable, "-c", SQUARE_PEAK, str(tmp_path / "large.png"), str(width * height)], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert float(result.stdout) < 6, f"{float(result.stdout):.1f} bytes per pixel"  # PIL's RGB buffer is 4
