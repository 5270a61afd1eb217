"""Read any photo as an upright 8-bit RGB image, or fail with an error that names the file.

Photo collections are messy: grayscale scans, palette GIF-like PNGs, RGBA screenshots, CMYK
prints, 16-bit PNGs, phone photos stored sideways with an EXIF orientation tag, truncated
downloads, strips a few pixels high and files that are not images at all. Every reader in the
package goes through :func:`load_rgb` (or :func:`read_image`, its tensor form) so they all behave
the same way; :func:`photo_sizes` reads sizes from the headers alone. A photo may also be a URI
(``s3://bucket/key.jpg``, ``gs://…``, ``hdfs://…``, ``file:///…``), read through pyarrow's
filesystems as Ray Data reads them (:func:`read_uri`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions PIL decodes that we accept as photos when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# Longer side over shorter side beyond which a file is refused from its header: stitched panoramas
# reach about 20:1, while a few-hundred-byte 100000x1 PNG would need gigabytes once a model scales
# its short side up to the input size (the pixel-count guard alone lets such strips through).
MAX_ASPECT_RATIO = 50
# A JPEG is draft-decoded (scaled down inside the decoder) to no less than this many times the size it will be
# resized to: the last step down is then always the same antialiased resize, so a photo gives the model (within
# about half a grey level) the pixels of a full decode, as the app's; a draft straight to the target size left
# the decoder's sharper scaling as the whole step down for photos 2-4 times as large.
DRAFT_MARGIN = 2

# Deep grey images are scaled to 8 bits this many pixels at a time, so the temporaries stay small.
_BAND_PIXELS = 1 << 20


# URI schemes pyarrow.fs.FileSystem.from_uri reads (credentials and endpoints from the usual environment
# variables, e.g. AWS_ENDPOINT_URL); http(s) is not one of them.
URI_SCHEMES: tuple[str, ...] = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message starts with the file's path."""


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://…`` strings (a :class:`~pathlib.Path` would fold the ``//`` away, so URIs stay strings)."""
    return isinstance(path, str) and "://" in path


def read_uri(uri: str) -> bytes:
    """The bytes of a photo on object storage or HDFS, or :class:`ImageReadError` naming the URI."""
    try:
        from pyarrow import fs
    except ImportError as error:
        raise ImageReadError(f"{uri}: reading URIs needs pyarrow: pip install -r requirements-scale.txt") from error
    try:
        filesystem, location = fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(location) as stream:
            return stream.read()
    except FileNotFoundError as error:
        raise ImageReadError(f"{uri}: file not found") from error
    except (OSError, ValueError) as error:  # no access, no such bucket, unknown scheme (pyarrow's ArrowInvalid)
        raise ImageReadError(f"{uri}: cannot read it ({error})") from error


def _deep_grey_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit or float grey stretched to 8 bits (not clipped: 16-bit 65535 -> 255), rounded.

    Works band by band, 16-bit in integers and 32-bit in float32: the whole image in float64
    cost 27 bytes a pixel (2.4 GB for a 200 kB 16-bit PNG of 88 megapixels; now 0.6 GB).
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
    :data:`DRAFT_MARGIN` times that (a large speed-up for full-size photos), so the result is still at
    least that big and the later resize does the rest as it would after a full decode.
    Raises :class:`ImageReadError` naming the file for anything that is not a readable image,
    including decompression bombs, strips (:data:`MAX_ASPECT_RATIO`) and truncated files.
    """
    source = io.BytesIO(read_uri(path)) if is_uri(path) else Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                _check_aspect_ratio(path, image.size)
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", (DRAFT_MARGIN * draft_size[0], DRAFT_MARGIN * draft_size[1]))
                image.load()
                ImageOps.exif_transpose(image, in_place=True)
                rgb = _to_rgb(image)
                return rgb.copy() if rgb is image else rgb  # closing the file frees the image it opened
    except ImageReadError:
        raise
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"{path}: image too large to decode safely ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path}: not an image file (or an unsupported format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: corrupt or truncated image ({error})") from error


def read_image(path: str | Path, draft: int | None = None) -> torch.Tensor:
    """An upright RGB photo as a ``(3, H, W)`` uint8 tensor; a JPEG to be resized to ``draft`` px is draft-decoded
    (:func:`load_rgb`)."""
    image = load_rgb(path, draft_size=None if draft is None else (draft, draft))
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def is_image_file(path: str | Path) -> bool:
    """True when the name has a photo extension and PIL recognises the header (cheap check)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
        return False
    try:
        with Image.open(path):
            return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def photo_sizes(paths: Sequence[str | Path]) -> np.ndarray:
    """``(N, 2)`` width and height of each photo, read from the file headers (no decoding).

    EXIF rotation is not applied: this is the stored size. Unreadable files are left out.
    """
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, UnidentifiedImageError):
            continue
    return np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
