"""Geotagged copies: GPS written and readable, JPEG data never re-encoded, pixels and other metadata kept."""

from __future__ import annotations

import io
import math
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image, ImageCms, ImageFile

from conftest import BAD_PHOTO_KINDS, CANONICAL_SAMPLE, PHONE_HEIC, REPO
from src import heif_exif
from src.geotag import GPS_IFD, GeotagError, read_gps, write_geotagged_copy

REAL_JPEGS = CANONICAL_SAMPLE / "train" / "00.Haleakala_National_Park"
EIFFEL = (48.858370, 2.294481)


def noise(height: int = 48, width: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored sideways
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS 5D"
    exif.get_ifd(0x8769)[0x9003] = "2021:06:01 12:00:00"  # DateTimeOriginal
    return exif


def srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_jpeg(path: Path, **options) -> Path:
    """A JPEG as a camera writes it: EXIF, an ICC profile, a comment."""
    Image.fromarray(noise()).save(path, "JPEG", quality=90, icc_profile=srgb(), comment=b"shot", **options)
    return path


def split_jpeg(data: bytes) -> tuple[list[bytes], bytes]:
    """The header segments before the first scan, and everything from its SOS marker on."""
    segments, position = [], 2
    while data[position:position + 2] != b"\xff\xda":
        assert data[position:position + 1] == b"\xff", f"no JPEG segment at byte {position}"
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        segments.append(data[position:end])
        position = end
    return segments, data[position:]


def is_exif(segment: bytes) -> bool:
    return segment[:2] == b"\xff\xe1" and segment[4:10] == b"Exif\x00\x00"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def only_target_in(folder: Path, target: Path) -> None:
    assert [p.name for p in folder.iterdir()] == [target.name], "a temporary file was left behind"


@pytest.mark.parametrize("latitude, longitude", [(48.858370, 2.294481), (-33.856784, 151.215297),
                                                 (40.689247, -74.044502), (-22.951916, -43.210487)])
def test_gps_reads_back_in_every_hemisphere(tmp_path: Path, latitude: float, longitude: float) -> None:
    source = camera_jpeg(tmp_path / "photo.jpg")
    target = tmp_path / "out" / "photo.jpg"
    assert write_geotagged_copy(source, target, latitude, longitude) == "geotagged"
    lat, lon = read_gps(target)
    assert lat == pytest.approx(latitude, abs=1e-5) and lon == pytest.approx(longitude, abs=1e-5)
    with Image.open(target) as copy:
        gps = copy.getexif().get_ifd(GPS_IFD)
    assert gps[1] == ("N" if latitude > 0 else "S") and gps[3] == ("E" if longitude > 0 else "W")
    assert gps[0] == b"\x02\x03\x00\x00" and gps[18] == "WGS-84"


def test_jpeg_copy_changes_only_the_exif_segment(tmp_path: Path) -> None:
    source = camera_jpeg(tmp_path / "photo.jpg", exif=camera_exif())
    before, mtime = source.read_bytes(), source.stat().st_mtime_ns
    target = tmp_path / "out" / "nested" / "photo.jpg"
    assert read_gps(source) is None
    write_geotagged_copy(source, target, *EIFFEL)

    assert source.read_bytes() == before and source.stat().st_mtime_ns == mtime
    (old_segments, old_scan), (new_segments, new_scan) = split_jpeg(before), split_jpeg(target.read_bytes())
    assert new_scan == old_scan and np.array_equal(pixels(target), pixels(source))
    assert [s for s in new_segments if not is_exif(s)] == [s for s in old_segments if not is_exif(s)]
    assert [is_exif(s) for s in new_segments] == [is_exif(s) for s in old_segments]  # replaced in place, not added
    with Image.open(target) as copy:
        exif = copy.getexif()
        assert (exif[0x0112], exif[0x010F], exif[0x0110]) == (6, "Canon", "EOS 5D")
        assert exif.get_ifd(0x8769)[0x9003] == "2021:06:01 12:00:00"
        assert copy.info["comment"] == b"shot" and copy.info["icc_profile"]
    only_target_in(target.parent, target)


def test_exif_goes_after_the_jfif_segment_of_a_jpeg_without_exif(tmp_path: Path) -> None:
    source = tmp_path / "plain.jpg"
    Image.fromarray(noise()).save(source, quality=80)
    target = tmp_path / "copy.jpg"
    write_geotagged_copy(source, target, *EIFFEL)
    (old_segments, old_scan), (new_segments, new_scan) = split_jpeg(source.read_bytes()), split_jpeg(target.read_bytes())
    assert old_segments[0][4:9] == b"JFIF\x00" and new_segments[0] == old_segments[0]
    assert is_exif(new_segments[1]) and new_segments[2:] == old_segments[1:] and new_scan == old_scan
    assert read_gps(target) == pytest.approx(EIFFEL, abs=1e-5)


def test_a_jpeg_with_a_second_image_keeps_it(tmp_path: Path) -> None:
    source = tmp_path / "camera.jpg"  # cameras append a preview; Pillow calls such files MPO
    Image.fromarray(noise()).save(source, "MPO", save_all=True, append_images=[Image.fromarray(noise(seed=1))],
                                  exif=camera_exif())
    target = tmp_path / "copy.jpg"
    assert write_geotagged_copy(source, target, *EIFFEL) == "geotagged"
    assert read_gps(target) == pytest.approx(EIFFEL, abs=1e-5)
    assert split_jpeg(target.read_bytes())[1] == split_jpeg(source.read_bytes())[1]
    with Image.open(source) as original, Image.open(target) as copy:
        assert copy.format == "MPO" and copy.n_frames == 2
        original.seek(1)
        copy.seek(1)
        assert np.array_equal(np.asarray(copy), np.asarray(original))


def test_a_photo_with_gps_is_copied_unchanged_unless_asked(tmp_path: Path) -> None:
    tagged = tmp_path / "tagged.jpg"
    write_geotagged_copy(camera_jpeg(tmp_path / "photo.jpg"), tagged, 19.72, -156.15)
    target = tmp_path / "out" / "copy.jpg"
    assert write_geotagged_copy(tagged, target, *EIFFEL) == "kept"
    assert target.read_bytes() == tagged.read_bytes()
    assert write_geotagged_copy(tagged, target, *EIFFEL, overwrite_gps=True) == "geotagged"
    assert read_gps(target) == pytest.approx(EIFFEL, abs=1e-5)
    assert split_jpeg(target.read_bytes())[1] == split_jpeg(tagged.read_bytes())[1]
    only_target_in(target.parent, target)


def png_with_palette(path: Path) -> None:
    image = Image.fromarray(noise()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.save(path, "PNG", transparency=3, icc_profile=srgb(), dpi=(300, 300), exif=camera_exif())


def webp_with_alpha(path: Path) -> None:
    rgba = np.dstack([noise(), noise(channels=1, seed=1)])
    rgba[:8, :, 3] = 0  # transparent rows whose colours must survive too
    Image.fromarray(rgba).save(path, "WEBP", lossless=True, exact=True, icc_profile=srgb(), exif=camera_exif())


def lossy_webp(path: Path) -> None:
    Image.fromarray(noise()).save(path, "WEBP", quality=60, exif=camera_exif())


def ycbcr_jpeg_tiff(path: Path) -> None:
    """Decoded to RGB by Pillow: the copy must not claim YCbCr pixels."""
    Image.fromarray(noise()).convert("YCbCr").save(path, "TIFF", compression="jpeg",
                                                   exif={0x010F: "Canon", 0x0110: "EOS 5D"})


@pytest.mark.parametrize("make", [png_with_palette, webp_with_alpha, lossy_webp, ycbcr_jpeg_tiff])
def test_png_webp_and_tiff_copies_decode_to_the_same_pixels(tmp_path: Path, make) -> None:
    source = tmp_path / "photo.img"  # formats are told by content, not by extension
    make(source)
    before, mtime = source.read_bytes(), source.stat().st_mtime_ns
    target = tmp_path / "out" / "photo.img"
    assert write_geotagged_copy(source, target, -22.951916, -43.210487) == "geotagged"
    assert read_gps(target) == pytest.approx((-22.951916, -43.210487), abs=1e-5)
    assert source.read_bytes() == before and source.stat().st_mtime_ns == mtime
    with Image.open(source) as original, Image.open(target) as copy:
        assert copy.format == original.format and copy.mode == original.mode
        assert np.array_equal(np.asarray(copy), np.asarray(original))
        assert copy.getpalette() == original.getpalette()
        assert copy.info.get("icc_profile") == original.info.get("icc_profile")
        assert [copy.info.get(key) for key in ("transparency", "dpi")] == [original.info.get(key) for key in ("transparency", "dpi")]
        assert (copy.getexif()[0x010F], copy.getexif()[0x0110]) == ("Canon", "EOS 5D")
    only_target_in(target.parent, target)


def animated_png(path: Path) -> None:
    frames = [Image.fromarray(noise(seed=seed)) for seed in range(2)]
    frames[0].save(path, "PNG", save_all=True, append_images=frames[1:])


def png_with_16bit_colour(path: Path) -> None:
    """Pillow decodes 16-bit RGB as 8-bit RGB; it cannot write such a PNG, so it is made by hand."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = b"".join(b"\x00" + bytes(range(24)) for _ in range(3))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("make, reason", [
    (lambda path: Image.fromarray(noise()).convert("P").save(path, "GIF"), "GIF image cannot carry EXIF GPS"),
    (lambda path: Image.fromarray(noise()).save(path, "BMP"), "BMP image cannot carry EXIF GPS"),
    (lambda path: Image.fromarray(noise()).save(path, "AVIF", save_all=True, append_images=[Image.fromarray(noise())]),
     "an image sequence"),
    (lambda path: path.write_bytes(b"not a photo at all"), "unreadable image"),
    (lambda path: path.write_bytes(camera_jpeg(path).read_bytes()[:2000]), "unreadable image"),
    (animated_png, "has 2 frames"),
    (png_with_16bit_colour, "lose precision"),
])
def test_photos_that_cannot_be_geotagged_are_refused_by_name(tmp_path: Path, make, reason: str) -> None:
    source = tmp_path / "photo.jpg"
    make(source)
    out = tmp_path / "out"
    with pytest.raises(GeotagError, match=reason) as caught:
        write_geotagged_copy(source, out / "photo.jpg", *EIFFEL)
    assert str(source) in str(caught.value)
    assert not out.exists()


def with_iloc_version_1(data: bytes) -> bytes:
    """``data`` (a HEIF with a version 0 ``iloc`` box, a 4-byte base offset and offsets, no index) with the same box in
    version 1, as many writers make it: each entry gets a 2-byte construction method (0), so ``meta`` grows and the
    offsets of the bytes after it move."""
    start = data.index(b"iloc") - 4
    size, version, sizes = struct.unpack_from(">I4xB3x2s", data, start)
    assert version == 0 and sizes == b"\x44\x40"  # 4-byte offsets, lengths and base offsets
    meta_at = data.index(b"meta") - 4
    meta_end = meta_at + struct.unpack_from(">I", data, meta_at)[0]
    (count,) = struct.unpack_from(">H", data, start + 14)
    entries, position = b"", start + 16
    for _ in range(count):
        item, reference, base, extents = struct.unpack_from(">HHIH", data, position)
        entries += struct.pack(">HHHIH", item, 0, reference, base, extents)
        position += 10
        for _ in range(extents):
            offset, length = struct.unpack_from(">II", data, position)
            entries += struct.pack(">II", offset + 2 * count if base + offset >= meta_end else offset, length)
            position += 8
    box = struct.pack(">I4sI2sH", 16 + len(entries), b"iloc", 1 << 24, sizes, count) + entries
    copy = bytearray(data[:start] + box + data[start + size:])
    struct.pack_into(">I", copy, meta_at, meta_end - meta_at + 2 * count)
    return bytes(copy)


def avif_with_exif(path: Path) -> None:
    Image.fromarray(noise()).save(path, "AVIF", exif=camera_exif(), quality=95)


@pytest.mark.parametrize("make", [lambda path: path.write_bytes(PHONE_HEIC.read_bytes()),
                                  lambda path: path.write_bytes(with_iloc_version_1(PHONE_HEIC.read_bytes())),
                                  avif_with_exif], ids=["heic", "heic-iloc-version-1", "avif"])
def test_heic_and_avif_copies_keep_every_byte_but_where_their_exif_lies(tmp_path: Path, make) -> None:
    """A phone's HEIC gets its GPS without its pixels being encoded again: the new EXIF block is appended and the
    item locations point at it; the old block is zeroed, and every other tag and the pictures' bytes stay."""
    source, target = tmp_path / "photo.heic", tmp_path / "out" / "photo.heic"
    make(source)
    original = source.read_bytes()
    old = heif_exif.exif_item(original)
    assert write_geotagged_copy(source, target, *EIFFEL) == "geotagged"
    copy = target.read_bytes()
    assert copy[old.start:old.start + old.length] == bytes(old.length)  # the old block, unreferenced, is zeroed
    changed = [index for index, (before, after) in enumerate(zip(original, copy))
               if before != after and not old.start <= index < old.start + old.length]
    assert len(copy) > len(original) and 0 < len(changed) <= 8  # the EXIF item's two 4-byte iloc fields
    assert copy[len(original) + 4:len(original) + 8] == b"mdat"
    assert read_gps(target) == pytest.approx(EIFFEL, abs=1e-6)
    exif, kept = piexif.load(heif_exif.read_exif(copy)), piexif.load(heif_exif.read_exif(original))
    for tags in (exif["0th"], kept["0th"]):  # where the other IFDs lie moves
        for pointer in (piexif.ImageIFD.ExifTag, piexif.ImageIFD.GPSTag):
            tags.pop(pointer, None)
    assert [exif["0th"], exif["Exif"]] == [kept["0th"], kept["Exif"]] and exif["0th"]  # the camera's tags, all kept
    assert exif["GPS"][piexif.GPSIFD.GPSMapDatum] == b"WGS-84"
    with Image.open(source) as before, Image.open(target) as after:
        assert after.size == before.size
        assert np.array_equal(np.asarray(after.convert("RGB")), np.asarray(before.convert("RGB")))
    assert write_geotagged_copy(target, tmp_path / "again.heic", 0.0, 0.0) == "kept"  # it has a position now
    assert write_geotagged_copy(target, tmp_path / "moved.heic", 0.0, 0.0, overwrite_gps=True) == "geotagged"
    assert read_gps(tmp_path / "moved.heic") == pytest.approx((0.0, 0.0))


def every_cut_is_refused_or_gets_its_exif(data: bytes) -> None:
    """``data`` cut anywhere: ``with_exif`` raises ValueError (nothing else) or writes EXIF that reads back."""
    exif = piexif.dump({"0th": {piexif.ImageIFD.Make: "Canon"}})
    for cut in range(len(data)):
        try:
            assert heif_exif.read_exif(heif_exif.with_exif(data[:cut], exif)) == exif[len(heif_exif.EXIF_HEADER):]
        except ValueError:
            pass


def heic_without_exif(path: Path) -> None:
    """The phone photo with its ``Exif`` item's type renamed: no reader takes it for EXIF any more."""
    data = PHONE_HEIC.read_bytes()
    at = data.index(b"Exif")
    path.write_bytes(data[:at] + b"xxxx" + data[at + 4:])


@pytest.mark.parametrize("make", [heic_without_exif,
                                  lambda path: heic_without_exif(path) or path.write_bytes(with_iloc_version_1(
                                      path.read_bytes())),
                                  lambda path: Image.fromarray(noise()).save(path, "AVIF")],
                         ids=["heic", "heic-iloc-version-1", "avif"])
def test_heic_and_avif_photos_without_exif_get_an_exif_item_and_keep_their_pictures_bytes(tmp_path: Path, make) -> None:
    """An encoder that wrote no EXIF: an ``Exif`` item is added to the item lists, so the ``meta`` box grows by a few
    bytes, and the pictures' bytes after it are copied unchanged with their locations moved by as much."""
    source, target = tmp_path / "photo.heic", tmp_path / "out" / "photo.heic"
    make(source)
    original = source.read_bytes()
    assert heif_exif.exif_item(original) is None and heif_exif.read_exif(original) == b""
    assert write_geotagged_copy(source, target, *EIFFEL) == "geotagged"
    copy = target.read_bytes()
    pictures, moved = original.index(b"mdat") - 4, copy.index(b"mdat") - 4
    assert 0 < moved - pictures <= 80  # an infe entry, an iloc entry and a cdsc reference (or a new iref box)
    assert copy[:original.index(b"meta") - 4] == original[:original.index(b"meta") - 4]  # ftyp
    assert copy[moved:moved + len(original) - pictures] == original[pictures:]
    assert read_gps(target) == pytest.approx(EIFFEL, abs=1e-6)
    with Image.open(source) as before, Image.open(target) as after:
        assert after.size == before.size
        assert np.array_equal(np.asarray(after.convert("RGB")), np.asarray(before.convert("RGB")))
    assert write_geotagged_copy(target, tmp_path / "again.heic", 0.0, 0.0) == "kept"
    assert write_geotagged_copy(target, tmp_path / "moved.heic", 0.0, 0.0, overwrite_gps=True) == "geotagged"
    assert read_gps(tmp_path / "moved.heic") == pytest.approx((0.0, 0.0))
    every_cut_is_refused_or_gets_its_exif(original)


def test_a_heif_file_whose_exif_cannot_be_replaced_in_place_says_why() -> None:
    data = PHONE_HEIC.read_bytes()
    exif = piexif.dump({"0th": {piexif.ImageIFD.Make: "Canon"}})
    item = heif_exif.exif_item(data)
    base_at = item.offset_field[0] - 2 - 4  # this file's iloc: 4-byte base offset, then the extent count
    assert int.from_bytes(data[base_at:base_at + 4], "big") == item.base_offset == item.start
    moved = data[:base_at] + (2**32 - 1).to_bytes(4, "big") + data[base_at + 4:]
    with pytest.raises(ValueError, match="lies beyond the end of the file"):
        heif_exif.read_exif(moved)
    with pytest.raises(ValueError, match="cannot point at an EXIF block at byte 785"):
        heif_exif.with_exif(moved, exif)
    with pytest.raises(ValueError, match="3 bytes after its last box"):
        heif_exif.with_exif(data + b"\0\0\0", exif)
    count_at = data.index(b"iloc") + 4 + 6  # version 0 or 1: a 2-byte item count after version, flags and sizes
    with pytest.raises(ValueError, match="its iloc box ends before its last entry"):  # not 65,535 entries read
        heif_exif.with_exif(data[:count_at] + b"\xff\xff" + data[count_at + 2:], exif)
    every_cut_is_refused_or_gets_its_exif(data)


def test_an_old_exif_block_that_shares_bytes_with_another_item_is_left_as_it_is() -> None:
    data = PHONE_HEIC.read_bytes()
    item = heif_exif.exif_item(data)
    assert not item.shared
    base_at = item.offset_field[0] - 2 - 4  # this file's iloc: 4-byte base offset, then the extent count
    overlapping = data[:base_at] + (item.start - 20).to_bytes(4, "big") + data[base_at + 4:]  # 20 bytes of the picture
    assert heif_exif.exif_item(overlapping).shared
    copy = heif_exif.with_exif(overlapping, piexif.dump({"0th": {piexif.ImageIFD.Make: "Canon"}}))
    assert copy[item.start - 20:len(data)] == overlapping[item.start - 20:]


def test_a_jpeg_is_decoded_at_an_eighth_to_check_it_and_not_again_when_decoded(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG copy keeps the compressed data, so checking the photo is whole needs no full-size pixels, and ``tag``,
    which has just decoded the photo, needs no check: a 12 MP photo costs tag --geotag a 1/8 decode or none."""
    source = camera_jpeg(tmp_path / "photo.jpg")
    decoded_sizes = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded_sizes.append(image.size) or load(image))
    assert write_geotagged_copy(source, tmp_path / "checked.jpg", *EIFFEL) == "geotagged"
    assert decoded_sizes == [(64 // 8, 48 // 8)]
    assert write_geotagged_copy(source, tmp_path / "trusted.jpg", *EIFFEL, decoded=True) == "geotagged"
    assert decoded_sizes == [(64 // 8, 48 // 8)]
    assert (tmp_path / "checked.jpg").read_bytes() == (tmp_path / "trusted.jpg").read_bytes()
    assert read_gps(tmp_path / "trusted.jpg") == pytest.approx(EIFFEL, abs=1e-6)


def test_exif_that_piexif_cannot_parse_is_refused_rather_than_dropped(tmp_path: Path) -> None:
    ifd0 = struct.pack(">H", 1) + struct.pack(">HHII", 0x8769, 4, 1, 0x00FFFFFF) + b"\x00" * 4  # Exif IFD off the end
    payload = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + ifd0
    plain = io.BytesIO()
    Image.fromarray(noise()).save(plain, "JPEG")
    source = tmp_path / "odd.jpg"
    source.write_bytes(b"\xff\xd8\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + plain.getvalue()[2:])
    with pytest.raises(GeotagError, match="EXIF cannot be parsed") as caught:
        write_geotagged_copy(source, tmp_path / "out" / "odd.jpg", *EIFFEL)
    assert str(source) in str(caught.value) and not (tmp_path / "out").exists()


def test_tags_piexif_cannot_write_are_dropped_alone_with_a_warning(tmp_path: Path) -> None:
    exif = camera_exif()
    exif.get_ifd(0x8769)[41729] = 1  # SceneType stored as a number (piexif expects bytes)
    source = camera_jpeg(tmp_path / "photo.jpg", exif=exif)
    assert 41729 in piexif.load(str(source))["Exif"]
    target = tmp_path / "copy.jpg"
    with pytest.warns(UserWarning, match=r"photo\.jpg.*41729 \(SceneType\)"):
        assert write_geotagged_copy(source, target, *EIFFEL) == "geotagged"
    copied = piexif.load(str(target))
    assert 41729 not in copied["Exif"] and copied["Exif"][piexif.ExifIFD.DateTimeOriginal] == b"2021:06:01 12:00:00"
    assert copied["0th"][piexif.ImageIFD.Make] == b"Canon" and read_gps(target) == pytest.approx(EIFFEL, abs=1e-5)


def padded_thumbnail(size: int) -> bytes:
    """A small JPEG padded with a comment segment to ``size`` bytes."""
    thumbnail = io.BytesIO()
    Image.fromarray(noise(16, 16)).save(thumbnail, "JPEG")
    body = thumbnail.getvalue()
    padding = size - len(body) - 4
    return body[:2] + b"\xff\xfe" + struct.pack(">H", padding + 2) + b"x" * padding + body[2:]


def exif_with_thumbnail(source_jpeg: bytes, broken: bool) -> bytes:
    """``source_jpeg`` with an EXIF segment filled to the brim by its thumbnail (or holding a thumbnail that is not a JPEG)."""
    exif = {"0th": {piexif.ImageIFD.Make: b"Canon", piexif.ImageIFD.ImageDescription: b"d" * 2000},
            "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2021:06:01 12:00:00"}, "1st": {},
            "thumbnail": padded_thumbnail(1000)}
    room = 0xFFFF - 2 - 10 - len(piexif.dump(exif))  # 10 bytes spare: too few for the GPS IFD
    exif["thumbnail"] = padded_thumbnail(1000 + room)
    payload = piexif.dump(exif)
    if broken:
        start = payload.rindex(b"\xff\xd8")
        payload = payload[:start] + b"\x00\x00" + payload[start + 2:]
    return source_jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + source_jpeg[2:]


@pytest.mark.parametrize("broken", [False, True], ids=["overflowing-64KB", "not-a-jpeg"])
def test_a_thumbnail_that_cannot_be_kept_is_dropped_and_the_rest_kept(tmp_path: Path, broken: bool) -> None:
    plain = io.BytesIO()
    Image.fromarray(noise()).save(plain, "JPEG")
    source = tmp_path / "thumb.jpg"
    source.write_bytes(exif_with_thumbnail(plain.getvalue(), broken))
    assert piexif.load(str(source))["thumbnail"]
    target = tmp_path / "copy.jpg"
    assert write_geotagged_copy(source, target, *EIFFEL) == "geotagged"
    copied = piexif.load(str(target))
    assert copied["thumbnail"] is None and copied["0th"][piexif.ImageIFD.ImageDescription] == b"d" * 2000
    assert copied["Exif"][piexif.ExifIFD.DateTimeOriginal] == b"2021:06:01 12:00:00"
    assert read_gps(target) == pytest.approx(EIFFEL, abs=1e-5)
    assert split_jpeg(target.read_bytes())[1] == split_jpeg(source.read_bytes())[1]


@pytest.mark.parametrize("latitude, longitude, message", [
    (90.5, 0.0, "latitude 90.5"), (-91.0, 0.0, "latitude -91.0"), (math.nan, 0.0, "latitude nan"),
    (0.0, 180.01, "longitude 180.01"), (0.0, -200.0, "longitude -200.0"), (0.0, math.inf, "longitude inf"),
])
def test_coordinates_off_the_globe_are_refused(tmp_path: Path, latitude: float, longitude: float, message: str) -> None:
    source = camera_jpeg(tmp_path / "photo.jpg")
    with pytest.raises(ValueError, match=message):
        write_geotagged_copy(source, tmp_path / "out" / "photo.jpg", latitude, longitude)
    assert not (tmp_path / "out").exists()


def test_the_source_is_never_the_target_and_a_failed_write_leaves_no_temporary(tmp_path: Path) -> None:
    source = camera_jpeg(tmp_path / "photo.jpg")
    before = source.read_bytes()
    with pytest.raises(GeotagError, match="replace the photo itself"):
        write_geotagged_copy(source, tmp_path / "sub" / ".." / "photo.jpg", *EIFFEL, overwrite_gps=True)
    assert source.read_bytes() == before
    out = tmp_path / "out"
    (out / "photo.jpg").mkdir(parents=True)  # the final rename fails
    with pytest.raises(OSError):
        write_geotagged_copy(source, out / "photo.jpg", *EIFFEL)
    assert [p.name for p in out.iterdir()] == ["photo.jpg"] and (out / "photo.jpg").is_dir()


@pytest.mark.skipif(not REAL_JPEGS.is_dir(), reason="the sample photos in ../shared/data are not here")
def test_a_real_photo_keeps_its_compressed_data(tmp_path: Path) -> None:
    source = sorted(REAL_JPEGS.glob("*.jpg"))[0]
    before, mtime = source.read_bytes(), source.stat().st_mtime_ns
    target = tmp_path / "geotagged" / source.name
    assert write_geotagged_copy(source, target, 20.7097, -156.2533) == "geotagged"  # Haleakala
    assert source.read_bytes() == before and source.stat().st_mtime_ns == mtime
    assert split_jpeg(target.read_bytes())[1] == split_jpeg(before)[1]
    assert np.array_equal(pixels(target), pixels(source))
    assert read_gps(target) == pytest.approx((20.7097, -156.2533), abs=1e-5)
    only_target_in(target.parent, target)


@pytest.mark.parametrize("kind", BAD_PHOTO_KINDS)
def test_every_bad_kind_of_file_is_refused_by_name_saying_what_it_is(tmp_path: Path, make_bad_photo, kind: str) -> None:
    source = make_bad_photo(kind, tmp_path)
    content = ("bomb", "truncated", "empty", "random_bytes", "text", "corrupt_dds")
    reason = "unreadable image" if kind in content else BAD_PHOTO_KINDS[kind]
    for geotag in (lambda: write_geotagged_copy(source, tmp_path / "out" / "photo.jpg", *EIFFEL), lambda: read_gps(source)):
        with pytest.raises(GeotagError, match=f"^{re.escape(str(source))}: .*{re.escape(reason)}"):
            geotag()
    assert not (tmp_path / "out").exists()


def exif_claiming(values: int) -> bytes:
    """A small JPEG whose EXIF has one SHORT tag claiming ``values`` values (the whole file is under 2 KB)."""
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHII", 0x0102, 3, values, 26) + bytes(20)
    payload = b"Exif\x00\x00" + tiff
    plain = io.BytesIO()
    Image.fromarray(noise()).save(plain, "JPEG")
    return b"\xff\xd8\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + plain.getvalue()[2:]


# The process's own peak (VmHWM, kB): ru_maxrss would start at the resident size of the test process it forked from.
PEAK_KB = "int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1])"
GEOTAG_PEAK = f"""
import resource, sys
from src.geotag import GeotagError, write_geotagged_copy
mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30),) * 2)  # a regression fails here instead of taking the machine
before = {PEAK_KB}
try:
    write_geotagged_copy(sys.argv[1], sys.argv[2], 48.85, 2.29)
except GeotagError as error:
    print(error)
print(({PEAK_KB} - before) // 1024)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_exif_claiming_billions_of_values_is_refused_without_allocating_them(tmp_path: Path) -> None:
    # piexif builds a format string of one character per claimed value: 2**31 - 1 values took 5 GB.
    source = tmp_path / "claims.jpg"
    source.write_bytes(exif_claiming(2**31 - 1))
    result = subprocess.run([sys.executable, "-c", GEOTAG_PEAK, str(source), str(tmp_path / "out.jpg")], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    message, peak_megabytes = result.stdout.strip().splitlines()
    assert message.startswith(f"{source}: its EXIF tag 258 claims 2,147,483,647 values"), result.stderr
    assert int(peak_megabytes) < 50 and not (tmp_path / "out.jpg").exists()


def test_a_tiff_whose_second_page_is_broken_is_refused_by_name(tmp_path: Path) -> None:
    pages = [Image.fromarray(noise(seed=seed)) for seed in (1, 2)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    data = bytearray((tmp_path / "pages.tif").read_bytes())
    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * struct.unpack_from("<H", data, first)[0])[0]
    for entry in range(struct.unpack_from("<H", data, second)[0]):  # the second page loses its width and height
        if struct.unpack_from("<H", data, second + 2 + 12 * entry)[0] in (256, 257):
            struct.pack_into("<H", data, second + 2 + 12 * entry, 999)
    (tmp_path / "pages.tif").write_bytes(bytes(data))
    with pytest.raises(GeotagError, match="pages.tif: unreadable image .*Missing dimensions"):
        write_geotagged_copy(tmp_path / "pages.tif", tmp_path / "out" / "pages.tif", *EIFFEL)
