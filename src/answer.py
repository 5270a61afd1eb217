"""One photo's answer, the same in the app, on the command line and from Python: a photo (file, upload bytes
or image) -> upright RGB (:mod:`src.images`) -> the square the model reads -> its top-k, whether it shows a
known landmark, and the verdict in words with the landmark's place.

It imports only torch, Pillow, NumPy and the package's light modules, so the app starts without the
training stack (torchvision, the data loaders).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch import nn

from .export import ExportView, export_view
from .images import decode_photo, image_tensor, load_rgb
from .places import Place
from .preprocessing import square_uint8


class PhotoPrediction(NamedTuple):
    """One photo's top-k ``(name, probability)`` (best first), known score, and whether it reaches the threshold."""

    ranking: list[tuple[str, float]]
    known_score: float
    known: bool

    def verdict(self, places: Mapping[str, Place]) -> str:
        """One line a person reads: the landmark and where it is, or "unknown" with the closest guess."""
        best, probability = self.ranking[0]
        if not self.known:
            return f"unknown: none of the landmarks I know (closest: {best} {probability:.0%}, known score {self.known_score:.3f})"
        place = places.get(best)
        where = ", ".join(part for part in (place.city, place.country) if part) if place else ""
        return f"{best} ({probability:.0%})" + (f": {where} ({place.latitude:.4f}, {place.longitude:.4f})" if place else "")


def model_square(model: nn.Module | ExportView, image: Image.Image | torch.Tensor) -> torch.Tensor:
    """The ``(3, S, S)`` uint8 square the model reads of a photo: short side resized to its ``resize_size``, centre
    kept (:func:`~src.preprocessing.square_uint8`); the model then crops its own ``image_size`` centre."""
    pixels = image_tensor(image) if isinstance(image, Image.Image) else image
    return square_uint8(pixels, export_view(model).resize_size)


def answer(model: nn.Module | ExportView, image: Image.Image | torch.Tensor, k: int = 5) -> PhotoPrediction:
    """The ``k`` most likely landmarks for one photo (an RGB image or a ``(3, H, W)`` uint8 tensor) and whether
    it shows one of them at all."""
    if k < 1:
        raise ValueError(f"k (top-k) must be at least 1, got {k}")
    view = export_view(model)
    with torch.inference_mode():
        probabilities, scores = view.classify(model_square(view, image).unsqueeze(0))
    values, indices = probabilities[0].topk(min(k, probabilities.shape[1]))
    score = float(scores[0])
    return PhotoPrediction([(view.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())],
                           score, score >= view.unknown_threshold)


def read_for(model: nn.Module | ExportView, photo: str | Path | bytes, name: str = "photo") -> Image.Image:
    """A photo file or upload (``bytes``, errors naming ``name``) decoded for ``model``: large JPEGs are draft-decoded
    to twice its resize size (several times faster, the same pixels to half a grey level after resizing)."""
    size = export_view(model).resize_size
    return decode_photo(name, photo, size) if isinstance(photo, bytes) else load_rgb(photo, (size, size))
