"""Geotagged copies of photos: the recognised landmark's coordinates written into the copy's EXIF GPS.

A copy must not cost the photo anything. JPEG copies get a new EXIF segment in front of the
untouched compressed data (re-encoding would lose quality), and HEIC/HEIF and AVIF copies a new EXIF
block that their item locations point at, the old one zeroed and every other byte kept (or, for a file
without one, a new EXIF item, the pictures' bytes copied unchanged: :mod:`src.heif_exif`); PNG, WebP and TIFF
copies are re-written losslessly by Pillow, so they decode to the same pixels. Every other EXIF tag is kept, the
source is only ever read, and the copy appears under its final name only once complete.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import piexif
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from .files import atomic_write
from .heif_exif import read_exif, with_exif
from .images import ImageReadError, open_photo

GPS_IFD = 0x8825
JPEG_FORMATS = ("JPEG", "MPO")  # Pillow calls JPEGs holding a second (preview) image "MPO"
HEIF_FORMATS = ("HEIF", "AVIF")  # Pillow's names for HEIC/HEIF (the pi-heif plugin) and AVIF files
REENCODED_FORMATS = ("PNG", "WEBP", "TIFF")

# An APP1 segment's length field counts itself: 65535 - 2 bytes are left for the EXIF.
_MAX_EXIF_SEGMENT = 0xFFFF - 2
_PIEXIF_IFDS = ("0th", "Exif", "GPS", "Interop", "1st")
# Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE, UNDEFINED, SSHORT, SLONG,
# SRATIONAL, FLOAT, DOUBLE), and the tags pointing at the Exif, GPS and Interop IFDs.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_IFD_POINTERS = (0x8769, 0x8825, 0xA005)
# Pillow modes that hold more than 8 bits per channel (Pillow has no 16-bit colour modes).
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# TIFF tags that describe how the source stored its pixels; Pillow writes its own for the copy.
_TIFF_LAYOUT_TAGS = frozenset({254, 256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320,
                               322, 323, 324, 325, 330, 338, 339, 347, 530, 531, 532})


class GeotagError(ValueError):
    """A photo that cannot be geotagged; the message starts with the file's path and says why."""


def read_gps(path: str | Path) -> tuple[float, float] | None:
    """The photo's (latitude, longitude) in decimal degrees, or None when its EXIF has no usable GPS position.

    Lets the tagger leave photos alone that already know where they were taken. Raises
    :class:`GeotagError` when the file cannot be opened as an image.
    """
    path = Path(path)
    with _reading(path), open_photo(path) as handle, Image.open(handle) as image:
        return _coordinates(image.getexif())


def write_geotagged_copy(source: str | Path, target: str | Path, latitude: float, longitude: float,
                         *, overwrite_gps: bool = False, decoded: bool = False) -> str:
    """Write ``target``, a copy of ``source`` whose EXIF GPS says (``latitude``, ``longitude``).

    Returns ``"geotagged"``, or ``"kept"`` when the source already has a GPS position and
    ``overwrite_gps`` is False (the copy is then byte-identical: a camera's own fix beats a landmark's).
    The whole GPS IFD is replaced, so no altitude or heading of another place survives. An existing
    ``target`` is replaced. Raises ``ValueError`` for coordinates off the globe and
    :class:`GeotagError` for a photo that is unreadable, in a format without EXIF (GIF, BMP, ...), a HEIF or AVIF
    file whose EXIF block cannot be written (one in several pieces, an image sequence without one), or one whose
    EXIF cannot be parsed (rewriting it would lose the camera's metadata).

    A JPEG, HEIF or AVIF copy keeps the source's compressed data as it is, so its pixels are decoded only to check
    that the photo is whole (a JPEG at 1/8 scale: every byte is still read, at about a third of the time), and not at
    all when ``decoded`` says the caller has just decoded it (``tag`` classified it and refuses truncated photos).
    """
    source, target = Path(source), Path(target)
    _check_coordinates(latitude, longitude)
    if os.path.realpath(target) == os.path.realpath(source):  # realpath: a symlink loop is the reader's error
        raise GeotagError(f"{source}: the geotagged copy would replace the photo itself; give another target")
    with _reading(source):
        with open_photo(source) as handle:
            data = handle.read()
        image = Image.open(io.BytesIO(data))
    if image.format not in JPEG_FORMATS + HEIF_FORMATS + REENCODED_FORMATS:
        raise GeotagError(f"{source}: a {image.format} image cannot carry EXIF GPS (only JPEG, HEIC/HEIF, AVIF, PNG, "
                          "WebP and TIFF can)")
    with _reading(source):
        if image.format in JPEG_FORMATS and not decoded:  # checked whole at 1/8 scale: the copy keeps its data
            image.draft(image.mode, (image.width // 8, image.height // 8))
        if image.format in REENCODED_FORMATS or not decoded:
            image.load()  # a truncated photo fails here rather than being copied
        has_gps = _coordinates(image.getexif()) is not None
        frames = getattr(image, "n_frames", 1)  # reads every page's header: a broken second page fails here
    if has_gps and not overwrite_gps:
        atomic_write(target, lambda tmp: tmp.write_bytes(data))
        return "kept"
    gps = _gps_ifd(latitude, longitude)
    if image.format in JPEG_FORMATS:
        with _encoding(source):
            exif = _exif_with_gps(source, image.info.get("exif", b"")[6:], gps, _MAX_EXIF_SEGMENT)
            copy = _replace_exif_segment(source, data, _app1_segment(source, exif))
        atomic_write(target, lambda tmp: tmp.write_bytes(copy))
    elif image.format in HEIF_FORMATS:
        with _encoding(source):
            copy = with_exif(data, _exif_with_gps(source, read_exif(data), gps))
            with Image.open(io.BytesIO(copy)) as written:  # read back as every reader will: the new block counts
                if _coordinates(written.getexif()) is None:
                    raise GeotagError(f"{source}: its copy does not read back with the GPS position written")
        atomic_write(target, lambda tmp: tmp.write_bytes(copy))
    else:
        if frames > 1:
            raise GeotagError(f"{source}: has {frames} frames; only single images are geotagged")
        bits = _bits_per_channel(image, data)
        if bits > 8 and image.mode not in _DEEP_MODES:
            raise GeotagError(f"{source}: Pillow decodes its {bits}-bit channels as 8-bit {image.mode}; "
                              "a re-encoded copy would lose precision")
        with _encoding(source):
            atomic_write(target, lambda tmp: _save_lossless(image, tmp, gps))
    return "geotagged"


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn every way a photo can fail to open or decode into a :class:`GeotagError` naming it."""
    try:
        yield
    except ImageReadError as error:  # not a regular file, no permission, ...: already says so
        raise GeotagError(str(error)) from error
    except Exception as error:  # Pillow's plugins fail in their own ways (TIFF pages: TypeError)
        raise GeotagError(f"{path}: unreadable image ({str(error) or type(error).__name__})") from error


@contextmanager
def _encoding(path: Path) -> Iterator[None]:
    """A copy Pillow cannot encode is this photo's :class:`GeotagError`; an error of the file system
    (an ``errno``: disk full, no permission) is the run's and is raised as it is."""
    try:
        yield
    except GeotagError:
        raise
    except OSError as error:
        if error.errno is not None:
            raise
        raise GeotagError(f"{path}: cannot write its copy ({error})") from error
    except Exception as error:
        raise GeotagError(f"{path}: cannot write its copy ({str(error) or type(error).__name__})") from error


def _check_coordinates(latitude: float, longitude: float) -> None:
    for name, value, limit in (("latitude", latitude, 90), ("longitude", longitude, 180)):
        if not math.isfinite(value) or abs(value) > limit:
            raise ValueError(f"{name} {value!r} is not within [-{limit}, {limit}] degrees")


def _coordinates(exif: Image.Exif) -> tuple[float, float] | None:
    """Decimal degrees from an EXIF GPS IFD; None when missing, malformed or off the globe."""
    gps = exif.get_ifd(GPS_IFD)
    try:
        latitude = _degrees(gps[2], gps[1], "S")
        longitude = _degrees(gps[4], gps[3], "W")
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    if not (math.isfinite(latitude) and math.isfinite(longitude)) or abs(latitude) > 90 or abs(longitude) > 180:
        return None
    return latitude, longitude


def _degrees(dms: Any, ref: Any, negative_ref: str) -> float:
    value = sum(float(part) / 60**i for i, part in enumerate(dms))
    return -value if str(ref).strip("\x00 ").upper() == negative_ref else value


def _dms(value: float) -> tuple[tuple[int, int], ...]:
    """Degrees, minutes and seconds (to 1/10000 s, about 3 mm) as EXIF rationals of ``abs(value)``."""
    steps = round(abs(value) * 3600 * 10000)  # rounded once, so 59.99996 s carries into the minutes
    degrees, steps = divmod(steps, 3600 * 10000)
    minutes, steps = divmod(steps, 60 * 10000)
    return (degrees, 1), (minutes, 1), (steps, 10000)


def _gps_ifd(latitude: float, longitude: float) -> dict[int, Any]:
    """The GPS IFD in piexif's form (rationals as ``(numerator, denominator)``)."""
    return {
        piexif.GPSIFD.GPSVersionID: (2, 3, 0, 0),
        piexif.GPSIFD.GPSLatitudeRef: "N" if latitude >= 0 else "S",
        piexif.GPSIFD.GPSLatitude: _dms(latitude),
        piexif.GPSIFD.GPSLongitudeRef: "E" if longitude >= 0 else "W",
        piexif.GPSIFD.GPSLongitude: _dms(longitude),
        piexif.GPSIFD.GPSMapDatum: "WGS-84",
    }


def _exif_with_gps(path: Path, tiff: bytes, gps: dict[int, Any], max_bytes: int | None = None) -> bytes:
    """The photo's EXIF ``tiff`` (its TIFF structure; empty when it has none) with ``gps`` as its GPS IFD, as piexif
    writes EXIF (``Exif\\0\\0`` and the TIFF structure), the thumbnail dropped when piexif cannot write it or the
    whole would be over ``max_bytes``."""
    if tiff[:2] not in (b"II", b"MM", b""):  # piexif would take other bytes for a file name
        raise GeotagError(f"{path}: its EXIF holds no TIFF structure; not rewriting it")
    _check_value_counts(path, tiff)
    try:
        exif = piexif.load(tiff) if tiff else {ifd: {} for ifd in _PIEXIF_IFDS} | {"thumbnail": None}
    except Exception as error:  # any malformed EXIF (ValueError, KeyError, IndexError, struct.error ...)
        raise GeotagError(f"{path}: its EXIF cannot be parsed ({error!r}); not rewriting it") from error
    exif["GPS"] = gps
    _drop_unwritable_tags(path, exif)
    try:
        payload = piexif.dump(exif)
    except ValueError:  # piexif refuses thumbnails over 64000 bytes or not in JPEG
        payload = b""
    if not payload or (max_bytes is not None and len(payload) > max_bytes):
        exif["1st"], exif["thumbnail"] = {}, None
        payload = piexif.dump(exif)
    return payload


def _app1_segment(path: Path, payload: bytes) -> bytes:
    """A JPEG's EXIF ``payload`` as its APP1 segment, which holds at most 64 KB."""
    if len(payload) > _MAX_EXIF_SEGMENT:
        raise GeotagError(f"{path}: its EXIF with GPS is {len(payload)} bytes even without the thumbnail; "
                          f"a JPEG segment holds {_MAX_EXIF_SEGMENT}")
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _check_value_counts(path: Path, tiff: bytes) -> None:
    """Refuse EXIF whose tags claim more values than it holds, before piexif reads it.

    piexif builds a struct format of one character per claimed value: a 7 KB JPEG claiming 2 billion
    values took gigabytes. Only the IFDs piexif reads are walked (0th, 1st, Exif, GPS, Interop), so
    this costs at most a few thousand entries whatever the file claims.
    """
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return  # not TIFF-structured: piexif refuses it
    endian = "<" if tiff[:2] == b"II" else ">"
    first = struct.unpack_from(endian + "I", tiff, 4)[0]
    todo, seen = [first], set()
    while todo and len(seen) < len(_PIEXIF_IFDS):
        offset = todo.pop()
        if offset == 0 or offset in seen or offset + 2 > len(tiff):  # 0: no such IFD
            continue
        seen.add(offset)
        entries = struct.unpack_from(endian + "H", tiff, offset)[0]
        for start in range(offset + 2, min(offset + 2 + 12 * entries, len(tiff) - 11), 12):
            tag, kind, count, value = struct.unpack_from(endian + "HHII", tiff, start)
            if count * _TYPE_SIZES.get(kind, 1) > len(tiff):
                raise GeotagError(f"{path}: its EXIF tag {tag} claims {count:,} values, more than its "
                                  f"{len(tiff):,} bytes of EXIF hold; not rewriting it")
            if tag in _IFD_POINTERS:
                todo.append(value)
        if offset == first and offset + 6 + 12 * entries <= len(tiff):
            todo.append(struct.unpack_from(endian + "I", tiff, offset + 2 + 12 * entries)[0])  # the 1st IFD


def _drop_unwritable_tags(path: Path, exif: dict[str, Any]) -> None:
    """Remove, with a warning, the tags piexif.dump cannot write (e.g. SceneType stored as a number).

    piexif.dump stops at the first such tag without always naming it, so each tag is tried alone.
    """
    dropped = []
    for ifd in _PIEXIF_IFDS:
        for tag, value in list(exif[ifd].items()):
            probe = {"0th": {}, "Exif": {}, "0th" if ifd == "1st" else ifd: {tag: value}}
            try:
                piexif.dump(probe)
            except Exception:  # ValueError, TypeError, struct.error, OverflowError ... for one odd value
                del exif[ifd][tag]
                dropped.append(f"{ifd} {tag} ({piexif.TAGS[ifd][tag]['name']})")
    if dropped:
        warnings.warn(f"{path}: EXIF tags piexif cannot write are left out of the copy: {', '.join(dropped)}",
                      stacklevel=4)


def _replace_exif_segment(path: Path, data: bytes, segment: bytes) -> bytes:
    """``data`` with its first EXIF segment replaced by ``segment`` (inserted after SOI and JFIF if it has none).

    Every other byte is kept: not ``piexif.insert``, which drops a JFIF segment and adds a second
    EXIF segment when the first is not among the first two.
    """
    insert_at = position = 2
    while data[position:position + 2] != b"\xff\xda":  # start of scan: compressed data follows
        if position + 4 > len(data) or data[position] != 0xFF:
            raise GeotagError(f"{path}: malformed JPEG segments before the image data")
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        if data[position + 1] == 0xE1 and data[position + 4:position + 10] == b"Exif\x00\x00":
            return data[:position] + segment + data[end:]
        if data[position + 1] == 0xE0 and insert_at == position:
            insert_at = end
        position = end
    return data[:insert_at] + segment + data[insert_at:]


def _bits_per_channel(image: Image.Image, data: bytes) -> int:
    """Bits per channel as stored in the file (PNG: IHDR's bit depth; TIFF: BitsPerSample)."""
    if image.format == "PNG":
        return data[24]
    if image.format == "TIFF":
        bits = image.getexif().get(258, 1)
        return max(bits) if isinstance(bits, tuple) else bits
    return 8


def _save_lossless(image: Image.Image, path: Path, gps: dict[int, Any]) -> None:
    """Re-write ``image`` in its own format with ``gps`` added to its EXIF, decoding to the same pixels."""
    exif = image.getexif()
    gps_ifd = exif.get_ifd(GPS_IFD)
    gps_ifd.clear()
    gps_ifd.update({tag: _pillow_value(value) for tag, value in gps.items()})
    exif[GPS_IFD] = gps_ifd  # marks the IFD for writing when the source had none
    if image.format == "TIFF":  # its tags are its EXIF, resolution and ICC profile included
        for tag in _TIFF_LAYOUT_TAGS & set(exif):
            del exif[tag]
        options: dict[str, Any] = {"compression": "raw"}  # Pillow's libtiff writer (any compression) fails on EXIF sub-IFDs
    else:
        options = {key: image.info[key] for key in ("icc_profile", "dpi") if key in image.info}  # not kept by default
    if image.format == "WEBP":
        options.update(lossless=True, exact=True)  # exact: keep the colour under transparent pixels
    image.save(path, format=image.format, exif=exif, **options)


def _pillow_value(value: Any) -> Any:
    """A piexif tag value as Pillow writes it: IFDRationals for rationals, bytes for BYTE arrays."""
    if isinstance(value, tuple) and isinstance(value[0], tuple):
        return tuple(IFDRational(*rational) for rational in value)
    return bytes(value) if isinstance(value, tuple) else value
