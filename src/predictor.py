"""The deployable model: a TorchScript ``Predictor`` that takes raw images and returns probabilities.

The exported file carries its own preprocessing (resize, centre crop, normalisation), the class
names and the network, so the app and any other consumer need only ``torch`` and
``torch.jit.load`` — no ``src``, no torchvision.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import List, NamedTuple, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .decoding import square_batches
from .images import read_image
from .checkpoint import checkpoint_config, model_from_checkpoint
from .files import atomic_write
from .openset import MaxSoftmax
from .places import Place
from .preprocessing import PreprocessConfig, classic_config, resize_and_crop, square_uint8


class ExportedModel(nn.Module):
    """What every exported model answers from its ``features_and_logits`` (and its ``detector``):
    ``classify`` (probabilities and known score from one pass), ``known_score`` and ``forward``.
    :class:`Predictor` and :class:`~src.new_landmarks.AddedLandmarksPredictor` share it."""

    def features_and_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.jit.export
    def classify(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features, logits = self.features_and_logits(x)
        return F.softmax(logits, dim=1), self.detector(features, logits)

    @torch.jit.export
    def known_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)[1]

    @torch.jit.export
    def known_score_from_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.detector(features, self.logits_from_features(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(x)[0]


def _preprocess_config(config: PreprocessConfig | Sequence[float] | None, mean: Sequence[float] | None,
                       std: Sequence[float] | None) -> PreprocessConfig:
    """A :class:`Predictor`'s config: the one given, or the classic project's from its ``mean`` and ``std``."""
    if isinstance(config, PreprocessConfig) and mean is None and std is None:
        return config
    if mean is None and not isinstance(config, PreprocessConfig):
        mean, config = config, None  # the classic positional call: Predictor(model, class_names, mean, std)
    if config is not None or mean is None or std is None:
        raise TypeError("Predictor takes a PreprocessConfig, or the classic project's mean and std (not both)")
    return classic_config(mean, std)


class Predictor(ExportedModel):
    """Raw image batch -> class probabilities and a known-landmark score, scriptable with ``torch.jit.script``.

    Every method takes ``(B, 3, H, W)`` or ``(3, H, W)`` RGB images of any size, ``uint8``
    (0-255) or float (0-1), resizes and crops them with :func:`~src.preprocessing.resize_and_crop`
    (short side to ``resize_size``, centre ``image_size`` square, as in training's evaluation)
    and normalises them with ``mean``/``std``:

    - ``forward``: softmax probabilities ``(B, num_classes)`` (what the classic app reads);
    - ``known_score``: ``(B,)``, higher means "one of my landmarks"; a photo scoring below
      ``unknown_threshold`` shows none of them (:mod:`src.openset`);
    - ``classify``: both from one pass through the network (batch tagging and testing use it);
    - ``features_and_logits``: the network's feature vectors ``(B, D)`` and logits (benchmarks
      of other unknown-detection scores, adding landmarks); ``logits_from_features``: the head alone.

    ``places_json`` holds ``{class name: {"latitude", "longitude", "country", "city", "wikidata"}}``
    for the classes with a known place. ``memory_features`` (fp16, ``(M, D)``) and ``memory_targets``
    (``(M,)``, -1 for photos of no known landmark) are features of validation and negative photos,
    kept so that landmarks can be added later without the training data (:mod:`src.new_landmarks`);
    ``general_memory`` (fp16, ``(M, G)``) holds the same photos' plain ImageNet features, of backbone
    ``general_backbone`` at ``general_size`` px (:mod:`src.imagenet_features`); ``memory_as_added`` (fp16,
    ``(V, D)``) the model's features of the first V rows (validation photos) read as a model with added
    landmarks reads them, to calibrate its threshold on.
    These attribute names are the exported file's interface; ``image_size``/``resize_size`` hold
    ``config.eval_crop`` and ``config.resize``.
    """

    def __init__(self, model: nn.Module, class_names: List[str], config: PreprocessConfig | Sequence[float] | None = None,
                 std: Sequence[float] | None = None, unknown_threshold: float = 0.0,
                 places: Mapping[str, Place] | None = None, *, mean: Sequence[float] | None = None) -> None:
        """``config`` is the run's preprocessing; the classic call ``Predictor(model, class_names, mean, std)``
        (positional or keywords) gives the classic 256 -> 224 inputs with that normalisation."""
        super().__init__()
        config = _preprocess_config(config, mean, std)
        self.model = model.eval()
        self.class_names: List[str] = [str(c) for c in class_names]
        self.image_size: int = config.eval_crop
        self.resize_size: int = config.resize
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.detector: nn.Module = MaxSoftmax()  # calibrated_predictor puts the measured choice here (src/openset.py)
        self.unknown_threshold: float = float(unknown_threshold)
        self.places_json: str = json.dumps({name: place.to_dict() for name, place in (places or {}).items()
                                            if name in self.class_names}, sort_keys=True)
        self.register_buffer("memory_features", torch.zeros(0, 0, dtype=torch.float16))
        self.register_buffer("memory_targets", torch.zeros(0, dtype=torch.long))
        self.register_buffer("general_memory", torch.zeros(0, 0, dtype=torch.float16))
        self.register_buffer("memory_as_added", torch.zeros(0, 0, dtype=torch.float16))
        self.general_backbone: str = ""
        self.general_size: int = 0

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError("Predictor expects RGB images shaped (B, 3, H, W) or (3, H, W)")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (resize_and_crop(x, self.resize_size, self.image_size) - self.mean) / self.std

    @torch.jit.export
    def features_and_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            features = self.model.forward_features(self._normalised(x))
            return features, self.model.head(features)

    @torch.jit.export
    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.head(features)


EXPORTED_ATTRIBUTES = ["class_names", "image_size", "resize_size", "mean", "std", "unknown_threshold", "places_json",
                       "memory_features", "memory_targets", "general_memory", "memory_as_added", "general_backbone",
                       "general_size", "features_and_logits", "logits_from_features", "classify",
                       "known_score", "known_score_from_features"]


@contextlib.contextmanager
def torchscript_on_purpose() -> Iterator[None]:
    """TorchScript is the exported file's format by choice (it loads with torch alone): PyTorch's warning that it is
    deprecated in favour of ``torch.export`` is not the user's to act on, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        yield


def export_predictor(predictor: Predictor, path: str | Path) -> Path:
    """Script ``predictor`` with TorchScript, freeze it and save it (atomically) to ``path``, on the CPU.

    Freezing folds batch norm into the convolutions (about 10 % faster on a CPU) and keeps
    the attributes consumers read (:data:`EXPORTED_ATTRIBUTES`).
    """
    with torchscript_on_purpose():
        scripted = torch.jit.freeze(torch.jit.script(predictor.cpu().eval()), preserved_attrs=EXPORTED_ATTRIBUTES)
    return save_scripted(scripted, path)


def save_scripted(module: torch.jit.ScriptModule, path: str | Path) -> Path:
    """Save a TorchScript module atomically. It is serialised in memory, then written with Python's file API:
    TorchScript's own file writer aborts the whole process on a full disk, Python's raises an OSError."""
    buffer = io.BytesIO()
    with torchscript_on_purpose():
        torch.jit.save(module, buffer)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def predictor_from_checkpoint(checkpoint_path: str | Path) -> Predictor:
    """Wrap a training checkpoint's model in a :class:`Predictor` with the preprocessing it was trained with."""
    model, checkpoint = model_from_checkpoint(checkpoint_path)
    return Predictor(model, checkpoint["class_names"], checkpoint_config(checkpoint, checkpoint_path))


def load_exported(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` an exported predictor on the CPU, with a clear error for other files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: exported model not found")
    try:
        with torchscript_on_purpose():
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # TorchScript raises RuntimeError or ValueError for foreign files
        raise ValueError(f"{path}: not a TorchScript export ({error}); training checkpoints go through `export` first") from error
    if not hasattr(model, "class_names"):
        raise ValueError(f"{path}: TorchScript file without class_names; it was not exported by this project")
    if not hasattr(model, "resize_size"):
        raise ValueError(f"{path}: has no resize_size (the size photos are resized to); it was not exported by this project")
    if not isinstance(model.resize_size, int) or model.resize_size < 1:
        raise ValueError(f"{path}: resize_size {model.resize_size!r} is not a size in pixels; the export is damaged")
    return model.eval()


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


def predict_photo(model: nn.Module, path: str | Path, k: int = 5) -> PhotoPrediction:
    """The ``k`` most likely landmarks for one photo, and whether it shows one of them at all.

    Large JPEGs are draft-decoded to twice the predictor's resize size (several times faster), and
    the photo is cut to its resize square first (bounded memory, the pixels the model would keep).
    """
    if k < 1:
        raise ValueError(f"k (top-k) must be at least 1, got {k}")
    size = int(model.resize_size)
    probabilities, scores = scored(model, square_uint8(read_image(path, size), size).unsqueeze(0))
    values, indices = probabilities[0].topk(min(k, probabilities.shape[1]))
    score = float(scores[0])
    return PhotoPrediction([(model.class_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())],
                           score, score >= model_threshold(model))


def top_k(model: nn.Module, path: str | Path, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most likely landmarks for one photo as ``(name, probability)``, best first."""
    return predict_photo(model, path, k).ranking


class Predictions(NamedTuple):
    """An exported predictor's output over photos on disk (unreadable photos left out of all three)."""

    truth: np.ndarray  # (N,) the targets given for the photos
    probabilities: np.ndarray  # (N, num_classes)
    known_scores: np.ndarray  # (N,) higher: one of the known landmarks (compare with ``unknown_threshold``)


def model_threshold(model: nn.Module) -> float:
    """The export's unknown threshold; an export older than ``known_score`` scores its top probability, cut at 0.5."""
    return float(getattr(model, "unknown_threshold", 0.5))


def scored(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities, known_scores)`` from one pass; an export older than ``known_score`` scores its top probability."""
    if hasattr(model, "classify"):
        return model.classify(images)
    probabilities = model(images)
    return probabilities, probabilities.max(dim=1).values


def predict_photos(model_reloaded: nn.Module, paths: list[Path], targets: list[int], batch_size: int = 50,
                   num_workers: int = -1) -> Predictions:
    """An exported predictor's :class:`Predictions` over photos on disk, in batches.

    Photos are cut to the predictor's resize size as squares (:class:`~src.decoding.SquarePhotos`):
    the predictor then crops the same centre it would crop from the full photo, so batched
    results match one-photo-at-a-time prediction. Unreadable photos are skipped with a warning.
    """
    truth: list[int] = []
    probabilities: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    batches = square_batches(paths, int(model_reloaded.resize_size), batch_size, num_workers)
    with torch.inference_mode():
        for indices, images, errors in tqdm(batches, desc="Predicting", total=math.ceil(len(paths) / batch_size),
                                            leave=False, ncols=80):
            for message in errors.values():
                warnings.warn(f"Skipping unreadable image: {message}", stacklevel=2)
            if images is not None:
                batch_probabilities, batch_scores = scored(model_reloaded, images)
                probabilities.append(batch_probabilities)
                scores.append(batch_scores)
                truth += [targets[index] for index in indices]
    if not truth:
        return Predictions(np.zeros(0, dtype=np.int64), np.zeros((0, len(model_reloaded.class_names)), dtype=np.float32),
                           np.zeros(0, dtype=np.float32))
    return Predictions(np.asarray(truth, dtype=np.int64), torch.cat(probabilities).numpy(), torch.cat(scores).numpy())


def predictor_test(test_dataloader: DataLoader, model_reloaded: nn.Module, batch_size: int = 50,
                   num_workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported predictor over the test photos of ``test_dataloader``, in batches.

    Returns ``(truth, pred)`` class-index arrays and prints the accuracy. Photos are decoded
    from disk (the loader's own transforms are not used: the predictor brings its own).
    """
    dataset = test_dataloader.dataset
    truth, probabilities, _ = predict_photos(model_reloaded, dataset.paths, dataset.targets, batch_size, num_workers)
    pred = probabilities.argmax(1)
    print(f"Accuracy: {(truth == pred).mean() if len(truth) else 0.0:.2%} ({len(truth)} photos)")
    return truth, pred
