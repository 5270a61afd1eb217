"""Read any photo as an upright 8-bit RGB image, or fail with an error that names the file.

Photo collections are messy: grayscale scans, palette GIF-like PNGs, RGBA screenshots, CMYK
prints, 16-bit PNGs, phone photos stored sideways with an EXIF orientation tag, truncated
downloads and files that are not images at all. Every reader in the package goes through
:func:`load_rgb` so they all behave the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions PIL decodes that we accept as photos when scanning folders.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message starts with the file's path."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit and float grayscale: stretch the full range to 0..255 instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open ``path`` as an upright RGB image.

    ``draft_size`` lets the JPEG decoder skip detail that a later resize would throw away
    (a large speed-up for full-size photos); the result is still at least that big.
    Raises :class:`ImageReadError` naming the file for anything that is not a readable image,
    including decompression bombs and truncated files.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", draft_size)
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright).copy()
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(f"{path}: image too large to decode safely ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{path}: not an image file (or an unsupported format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"{path}: corrupt or truncated image ({error})") from error


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
