"""Read any photo as an upright 8-bit RGB image, or fail with an error that names the file.

Photo collections are messy: phone photos in HEIC, grayscale scans, palette GIF-like PNGs, RGBA
screenshots, CMYK prints, 16-bit PNGs, phone photos stored sideways with an EXIF orientation tag,
truncated downloads, strips a few pixels high and files that are not images at all. Every reader in the
package goes through :func:`load_rgb` (or :func:`read_image`, its tensor form) so they all behave
the same way, and any failure of one file is an :class:`ImageReadError` naming it; files are
opened with :func:`open_photo`, which opens nothing but regular files (a FIFO would block forever)
and says what a folder, a FIFO, a broken or looping link or an unreadable file is.
:func:`photo_sizes` reads sizes from the headers alone. A photo may also be a URI
(``s3://bucket/key.jpg``, ``gs://…``, ``hdfs://…``, ``file:///…``), read through pyarrow's
filesystems as Ray Data reads them (:func:`read_uri`), each within :data:`URI_TIMEOUT_S`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import urllib.parse
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .heif_reader import register_heif_reader

# Phones store photos as HEIC: Pillow reads them through pi-heif (libheif's decoder only, no encoder), which applies
# the file's own rotation and sets its EXIF orientation to upright so that nothing turns it twice. AVIF is Pillow's own.
register_heif_reader()

# Extensions PIL decodes that we accept as photos when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".heif",
                                     ".avif")

# Cameras' RAW formats: sensor data that needs a RAW developer (Pillow reads none, or only a DNG's small preview), refused
# by name and named in `tag`'s count of files it did not look at, so that a photographer knows to export JPEGs first.
RAW_EXTENSIONS: tuple[str, ...] = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2",
                                   ".raf", ".pef", ".srw", ".3fr", ".iiq", ".erf", ".mrw", ".x3f", ".raw")
RAW_HINT = "camera RAW files are not read: export them as JPEG (or HEIC) first"

# Longer side over shorter side beyond which a file is refused from its header: stitched panoramas
# reach about 20:1, while a few-hundred-byte 100000x1 PNG would need gigabytes once a model scales
# its short side up to the input size (the pixel-count guard alone lets such strips through).
MAX_ASPECT_RATIO = 50
# A JPEG is draft-decoded (scaled down inside the decoder) to no less than this many times the size it will be
# resized to: the last step down is then always the same antialiased resize, so a photo gives the model (within
# about half a grey level) the pixels of a full decode, as the app's; a draft straight to the target size left
# the decoder's sharper scaling as the whole step down for photos 2-4 times as large.
DRAFT_MARGIN = 2

# A photo at least this many times DRAFT_MARGIN x its target size on each side is first box-averaged by a whole
# factor (keeping at least DRAFT_MARGIN x the target): the float resize after it never holds such a photo (an 88 MP
# PNG is 1 GB in float32 per decode worker). Smaller photos are resized from every decoded pixel.
REDUCE_FROM = 4

_ORIENTATION = 0x0112  # the EXIF tag of how a photo is stored relative to upright
# Deep grey images are scaled to 8 bits this many pixels at a time, so the temporaries stay small.
_BAND_PIXELS = 1 << 20


# URI schemes pyarrow.fs.FileSystem.from_uri reads (credentials and endpoints from the usual environment
# variables, e.g. AWS_ENDPOINT_URL); http(s) is not one of them.
URI_SCHEMES: tuple[str, ...] = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
# Seconds one photo given by URI may take to read.
URI_TIMEOUT_S = 60.0
# Azure's environment credentials: a client id and tenant with one of these.
_AZURE_SECRETS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message starts with the file's path."""


# What a path that is no regular file is, by its stat type bits: none of them can be a photo.
_FILE_TYPES = ((stat.S_ISDIR, "is a directory"), (stat.S_ISFIFO, "not a regular file (FIFO)"),
               (stat.S_ISSOCK, "not a regular file (socket)"), (stat.S_ISCHR, "not a regular file (character device)"),
               (stat.S_ISBLK, "not a regular file (block device)"))
# Why a path cannot be opened, by errno, in words (not "corrupt image" for a permission problem).
_OPEN_ERRORS = {errno.ELOOP: "symlink loop", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENOTDIR: "file not found (a part of its path is no folder)",
                errno.ENAMETOOLONG: "its name is too long"}


def _cannot_open(path: str | Path, error: OSError) -> str:
    if error.errno == errno.ENOENT:
        return "broken symlink (what it points to does not exist)" if os.path.islink(path) else "file not found"
    return _OPEN_ERRORS.get(error.errno, f"cannot open it ({error.strerror or error})")


def open_photo(path: str | Path, name: str | None = None) -> BinaryIO:
    """``path`` opened for reading, or :class:`ImageReadError` naming it (or ``name``) and saying what it is.

    Only a regular file is ever opened: its type is checked first, and it is opened non-blocking, since
    opening a FIFO waits for a writer that may never come.
    """
    name = str(path) if name is None else name
    try:
        mode = os.stat(path).st_mode
        kind = next((what for is_kind, what in _FILE_TYPES if is_kind(mode)), None)
        if kind is None:
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ImageReadError(f"{name}: {_cannot_open(path, error)}") from error
    except ValueError as error:  # a NUL byte in the name
        raise ImageReadError(f"{name!r}: not a valid file name ({error})") from error
    if kind is not None:
        raise ImageReadError(f"{name}: {kind}")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://…`` strings (a :class:`~pathlib.Path` would fold the ``//`` away, so URIs stay strings)."""
    return isinstance(path, str) and "://" in path


def read_uri(uri: str) -> bytes:
    """The bytes of a photo on object storage or HDFS, or :class:`ImageReadError` naming the URI.

    ``file://`` URIs are local files (:func:`open_photo`). Storage whose credentials are missing is refused
    before pyarrow is asked (for ``abfs://`` pyarrow aborts the whole process), and a read that takes longer
    than :data:`URI_TIMEOUT_S` is given up, so a storage that never answers costs one row, not the run.
    """
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        try:
            path = file_uri_path(uri)
        except ValueError as error:
            raise ImageReadError(str(error)) from error
        with open_photo(path, name=uri) as handle:
            return handle.read()
    missing = _missing_credentials(scheme, uri)
    if missing is not None:
        raise ImageReadError(f"{uri}: {missing}")
    try:
        from pyarrow import fs
    except ImportError as error:
        raise ImageReadError(f"{uri}: reading URIs needs pyarrow: pip install -r requirements-scale.txt") from error
    return _within_timeout(uri, lambda: _read_with_pyarrow(fs, uri))


def file_uri_path(uri: str) -> Path:
    """The local path a ``file://`` URI names (``file:///a/b.jpg``, ``file://localhost/a/b.jpg``); ValueError for
    a URI naming another machine."""
    parts = urllib.parse.urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{uri}: a file:// URI names a file of this machine, not of {parts.netloc}")
    return Path(os.fsdecode(urllib.parse.unquote_to_bytes(parts.path)))


def _missing_credentials(scheme: str, uri: str) -> str | None:
    """What is missing to authenticate to ``abfs://`` or ``gs://`` storage, in words; None when something is set."""
    env = os.environ
    if scheme in ("abfs", "abfss"):
        if urllib.parse.urlsplit(uri).password or (env.get("AZURE_CLIENT_ID") and env.get("AZURE_TENANT_ID")
                                                   and any(env.get(name) for name in _AZURE_SECRETS)):
            return None
        return ("no Azure credentials: put the account key in the URI (abfs://CONTAINER:KEY@ACCOUNT.dfs.core.windows.net/...) "
                f"or set AZURE_CLIENT_ID, AZURE_TENANT_ID and one of {', '.join(_AZURE_SECRETS)}")
    if scheme in ("gs", "gcs"):
        gcloud = Path(env.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud")
        if env.get("GOOGLE_APPLICATION_CREDENTIALS") or (gcloud / "application_default_credentials.json").is_file():
            return None
        return ("no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS to a key file or run "
                "`gcloud auth application-default login`")
    return None


def _within_timeout(uri: str, read: Callable[[], bytes]) -> bytes:
    """``read()`` in a daemon thread, given up after :data:`URI_TIMEOUT_S` (the thread is left to end on its own)."""
    result: Future[bytes] = Future()

    def run() -> None:
        try:
            result.set_result(read())
        except BaseException as error:
            result.set_exception(error)

    threading.Thread(target=run, name=f"read {uri}", daemon=True).start()
    try:
        return result.result(timeout=URI_TIMEOUT_S)
    except FutureTimeoutError:
        raise ImageReadError(f"{uri}: no answer within {URI_TIMEOUT_S:g} s (is the storage reachable?)") from None


def _read_with_pyarrow(fs: Any, uri: str) -> bytes:
    try:
        filesystem, location = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(location) as stream:
            return stream.read()
    except FileNotFoundError as error:
        raise ImageReadError(f"{uri}: file not found") from error
    except Exception as error:  # no access, no such bucket, unknown scheme (pyarrow's ArrowInvalid) ...
        raise ImageReadError(f"{uri}: cannot read it ({error})") from error


def _deep_grey_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit or float grey stretched to 8 bits (not clipped: 16-bit 65535 -> 255), rounded.

    Works band by band, 16-bit in integers and 32-bit in float32: the whole image in float64 would
    take 27 bytes a pixel (2.4 GB for a 200 kB 16-bit PNG of 88 megapixels).
    """
    width, height = image.size
    sixteen = image.mode.startswith("I;16")
    full_scale = 65535 if sixteen else max(float(image.getextrema()[1]), 1.0)
    grey = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BAND_PIXELS // width)
    for top in range(0, height, rows):
        band = np.asarray(image.crop((0, top, width, min(top + rows, height))))
        if sixteen:
            grey[top:top + rows] = (band.astype(np.uint32) * 255 + full_scale // 2) // full_scale
        else:
            grey[top:top + rows] = np.clip(band.astype(np.float32) * np.float32(255 / full_scale) + 0.5, 0, 255)
    return Image.fromarray(grey)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _deep_grey_to_l(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _check_aspect_ratio(path: str | Path, size: tuple[int, int]) -> None:
    """Refuse a strip from its header, before decoding: see :data:`MAX_ASPECT_RATIO`."""
    width, height = size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageReadError(f"{path}: {width}x{height} is no photo: its aspect ratio is over "
                             f"{MAX_ASPECT_RATIO}:1 (resizing it would need too much memory)")


def load_rgb(path: str | Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open ``path`` (a file, or a URI: :func:`read_uri`) as an upright RGB image.

    ``draft_size`` is the size the photo will be resized to: the JPEG decoder may skip detail down to
    :data:`DRAFT_MARGIN` times that (a large speed-up for full-size photos), and a photo :data:`REDUCE_FROM`
    times larger still is box-averaged down to it, so the result is still at least that big and the later
    resize does the rest as it would after a full decode.
    Raises :class:`ImageReadError` naming the file for anything that is not a readable image, whatever
    failed: decompression bombs, strips (:data:`MAX_ASPECT_RATIO`), truncated or corrupt files, folders,
    FIFOs, unreadable files, broken links.
    """
    _refuse_raw(path)  # before reading: a RAW file given by URI is not downloaded for nothing
    with io.BytesIO(read_uri(path)) if is_uri(path) else open_photo(path) as source:
        return _read(path, source, draft_size)


def decode_photo(name: str, data: bytes, draft: int | None = None) -> Image.Image:
    """A photo's bytes (an upload) as an upright RGB image, read exactly as :func:`load_rgb` reads a file (errors
    name ``name``); ``draft``: the size it will be resized to (:func:`read_image`)."""
    _refuse_raw(name)
    return _read(name, io.BytesIO(data), None if draft is None else (draft, draft))


def _refuse_raw(path: str | Path) -> None:
    """Refuse a camera RAW file by its name: Pillow would read a DNG's small preview as the photo, or fail."""
    if Path(str(path)).suffix.lower() in RAW_EXTENSIONS:
        raise ImageReadError(f"{path}: {RAW_HINT}")


def _read(path: str | Path, source: BinaryIO, draft_size: tuple[int, int] | None) -> Image.Image:
    """Decode ``source`` with every failure turned into an :class:`ImageReadError` naming ``path``."""
    if source.seek(0, io.SEEK_END) == 0:
        raise ImageReadError(f"{path}: not an image file (it is empty)")
    source.seek(0)
    try:
        return _decode(path, source, draft_size)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"{path}: image too large to decode safely ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path}: not an image file (or an unsupported format)") from error
    except MemoryError as error:
        raise ImageReadError(f"{path}: not enough memory to decode it") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: corrupt or truncated image ({error})") from error
    except Exception as error:  # a decoder plugin's own failure (DDS: NotImplementedError, AVIF: RuntimeError)
        raise ImageReadError(f"{path}: corrupt or unsupported image ({type(error).__name__}: {error})") from error


def _decode(path: str | Path, source: BinaryIO, draft_size: tuple[int, int] | None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            _check_aspect_ratio(path, image.size)
            stored = image.size
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (DRAFT_MARGIN * draft_size[0], DRAFT_MARGIN * draft_size[1]))
            image.load()
            sideways = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _reduced(_to_rgb(image), draft_size)
            rgb = rgb.copy() if rgb is image else rgb  # closing the file frees the image it opened
            rgb.info["photo_size"] = stored[::-1] if sideways else stored  # upright, before any draft or reduction
            return rgb


def _reduced(image: Image.Image, draft_size: tuple[int, int] | None) -> Image.Image:
    """``image`` box-averaged by a whole factor when it is :data:`REDUCE_FROM` times larger than it needs to be."""
    if draft_size is None:
        return image
    factor = min(image.width // (DRAFT_MARGIN * draft_size[0]), image.height // (DRAFT_MARGIN * draft_size[1]))
    return image.reduce(factor) if factor >= REDUCE_FROM else image


def read_image(path: str | Path, draft: int | None = None) -> torch.Tensor:
    """An upright RGB photo as a ``(3, H, W)`` uint8 tensor; a JPEG to be resized to ``draft`` px is draft-decoded
    (:func:`load_rgb`)."""
    return image_tensor(load_rgb(path, draft_size=None if draft is None else (draft, draft)))


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a ``(3, H, W)`` uint8 tensor, what an exported model takes."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def is_image_file(path: str | Path) -> bool:
    """True when the name has a photo extension and PIL recognises the header (cheap check)."""
    if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    return _header_size(path) is not None


def _header_size(path: str | Path) -> tuple[int, int] | None:
    """The stored size a photo's header claims, or None for any file whose header cannot be read."""
    try:
        with open_photo(path) as source, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                return image.size
    except Exception:  # every plugin fails in its own way (ValueError, DecompressionBombError, struct.error ...)
        return None


def photo_sizes(paths: Sequence[str | Path]) -> np.ndarray:
    """``(N, 2)`` width and height of each photo, read from the file headers (no decoding).

    EXIF rotation is not applied: this is the stored size. Files whose header cannot be read are left out.
    """
    sizes = [size for size in map(_header_size, paths) if size is not None]
    return np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
