"""The exported model: one TorchScript file that answers from raw photos, and the one reader of such files.

An export is built complete by its constructor: the network, the preprocessing (resize, centre crop,
normalisation), the class names and their places, the unknown detector and its threshold, and the
feature memory that adding landmarks needs (:class:`FeatureMemory`). It carries :data:`FORMAT_VERSION`.
Consumers need only ``torch`` to load it; inside this project every file (:func:`open_export`), its bytes
(:func:`export_from_bytes`) or loaded module (:func:`export_view`) is checked once into an :class:`ExportView`.

Two kinds share the interface of :class:`ExportedModel` (``classify``, ``known_score``, ``forward``,
``features_and_logits``, ``logits_from_features``):

- :class:`Predictor`: a trained network (``finish_run``, ``export``); a :class:`~src.shared_trunk.SharedTrunkPredictor`
  also exposes its ImageNet first stages' output;
- :class:`AddedLandmarksPredictor`: an export with landmarks added from a few photos each (:mod:`src.new_landmarks`):
  the original export's network, untouched, plus one linear row per added landmark on its own and plain ImageNet features.

TorchScript is the format on purpose (a file that runs with torch alone, any photo size); :mod:`src.onnx_export`
makes an ONNX file of an export for onnxruntime, which :func:`open_export` reads too.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .files import atomic_write
from .model_files import is_torchscript_file, loading_error
from .openset import MaxSoftmax
from .places import Place
from .preprocessing import PreprocessConfig, classic_config, resize_and_crop

# 2: every file this project writes; 1: the same attributes without ``format_version`` (read as 2); 0: the classic
# project's scripted ``Predictor`` (``forward`` only), read with its top probability as known score, cut at 0.5.
FORMAT_VERSION = 2
CLASSIC_THRESHOLD = 0.5


class FeatureMemory(NamedTuple):
    """What an export keeps of the photos it was calibrated on (:func:`src.memory.feature_memory`)."""

    features: torch.Tensor  # (M, D) fp16: the model's own features
    general: torch.Tensor  # (M, G) fp16: the ImageNet features of the same photos
    as_added: torch.Tensor  # (V, D) fp16: the model's own features of the V validation rows as a model with added landmarks reads them
    targets: torch.Tensor  # (M,) class indices; -1 - k for a photo of no known landmark from ``negative_sources[k]``
    rows: list[int]  # the validation indices of the first rows
    general_backbone: str  # the ImageNet network of ``general`` and its input size
    general_size: int
    general_trunk_stages: int = 0  # >0: ``general`` continues the model's own first stages (src/shared_trunk.py)
    negative_sources: tuple[str, ...] = ()  # the negatives folders' names (none: every negative is -1, its folder unknown)


NO_MEMORY = FeatureMemory(*(torch.zeros(0, 0, dtype=torch.float16),) * 3, torch.zeros(0, dtype=torch.long), [], "", 0)


@contextlib.contextmanager
def torchscript_on_purpose() -> Iterator[None]:
    """TorchScript is the exported file's format by choice (it loads with torch alone): PyTorch's warning that it is
    deprecated in favour of ``torch.export`` is not the user's to act on, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
        yield


class ExportedModel(nn.Module):
    """What every export answers from its ``features_and_logits`` and ``detector``: ``classify`` (probabilities, known score)."""

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

    Every method takes ``(B, 3, H, W)`` or ``(3, H, W)`` RGB images of any size, ``uint8`` (0-255) or float (0-1),
    resizes and crops them with :func:`~src.preprocessing.resize_and_crop` (short side to ``resize_size``, centre
    ``image_size`` square, as in training's evaluation) and normalises them with ``mean``/``std``:

    - ``forward``: softmax probabilities ``(B, num_classes)`` (what the classic app reads);
    - ``known_score``: ``(B,)``, higher means "one of my landmarks"; a photo scoring below ``unknown_threshold``
      shows none of them (:mod:`src.openset`);
    - ``classify``: both from one pass through the network (batch tagging and testing use it);
    - ``features_and_logits``: the network's feature vectors ``(B, D)`` and logits (benchmarks of other
      unknown-detection scores, adding landmarks); ``logits_from_features``: the head alone.

    ``places_json`` holds ``{class name: {"latitude", "longitude", "country", "city", "wikidata"}}``
    for the classes with a known place. The ``memory`` (:class:`FeatureMemory`) is kept as ``memory_features``,
    ``memory_targets``, ``general_memory`` (of backbone ``general_backbone`` at ``general_size`` px) and
    ``memory_as_added``; ``general_trunk_stages`` > 0 says the ImageNet features continue the network's own first
    stages (:mod:`src.shared_trunk`); ``negative_sources_json`` names the negatives folders. These attribute names
    are the exported file's interface (:data:`EXPORTED_ATTRIBUTES`).
    """

    ADDED_METHODS: tuple[str, ...] = ()  # methods a subclass adds to the file's interface

    def __init__(self, model: nn.Module, class_names: List[str], config: PreprocessConfig | Sequence[float] | None = None,
                 std: Sequence[float] | None = None, unknown_threshold: float = 0.0,
                 places: Mapping[str, Place] | None = None, *, mean: Sequence[float] | None = None,
                 detector: nn.Module | None = None, memory: FeatureMemory = NO_MEMORY) -> None:
        """``config`` is the run's preprocessing; the classic call ``Predictor(model, class_names, mean, std)``
        (positional or keywords) gives the classic 256 -> 224 inputs with that normalisation. Without a
        ``detector`` the known score is the top probability (:class:`~src.openset.MaxSoftmax`)."""
        super().__init__()
        config = _preprocess_config(config, mean, std)
        self.format_version: int = FORMAT_VERSION
        self.model = model.eval()
        self.class_names: List[str] = [str(c) for c in class_names]
        self.image_size: int = config.eval_crop
        self.resize_size: int = config.resize
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1))
        self.detector: nn.Module = detector if detector is not None else MaxSoftmax()
        self.unknown_threshold: float = float(unknown_threshold)
        self.places_json: str = json.dumps({name: place.to_dict() for name, place in (places or {}).items()
                                            if name in self.class_names}, sort_keys=True)
        self.register_buffer("memory_features", memory.features.half())
        self.register_buffer("memory_targets", memory.targets.long())
        self.register_buffer("general_memory", memory.general.half())
        self.register_buffer("memory_as_added", memory.as_added.half())
        self.general_backbone: str = memory.general_backbone
        self.general_size: int = int(memory.general_size)
        self.general_trunk_stages: int = int(memory.general_trunk_stages)
        self.negative_sources_json: str = json.dumps([str(name) for name in memory.negative_sources])

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


class AddedLandmarksPredictor(ExportedModel):
    """An export with landmarks added: the original export's network (:mod:`src.embedded_base`), untouched, and one
    linear row per added landmark on ``combined`` (its own and plain ImageNet features, with ``base``, ``base_size`` and
    ``resize_size``: a second network, :class:`~src.imagenet_features.CombinedFeatures`, or the export's trunk continued,
    :class:`~src.shared_trunk.SharedTrunkFeatures`). Same interface as :class:`Predictor`; ``resize_size`` is
    ``combined``'s; ``memory_features`` are combined features."""

    def __init__(self, combined: nn.Module, added: nn.Linear, class_names: List[str], detector: nn.Module,
                 unknown_threshold: float, places_json: str, memory_features: torch.Tensor, memory_targets: torch.Tensor
                 ) -> None:
        super().__init__()
        base = combined.base
        self.format_version: int = FORMAT_VERSION
        self.combined = combined
        self.added = added
        self.class_names: List[str] = list(class_names)
        self.resize_size: int = combined.resize_size
        self.image_size: int = round(combined.resize_size * int(base.image_size) / int(base.resize_size))
        self.register_buffer("mean", base.mean.clone())
        self.register_buffer("std", base.std.clone())
        self.unknown_threshold: float = float(unknown_threshold)
        self.places_json: str = places_json
        self.register_buffer("memory_features", memory_features.half())
        self.register_buffer("memory_targets", memory_targets.long())
        self.detector = detector

    @torch.jit.export
    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            base_logits = self.combined.base.logits_from_features(features[:, :self.combined.base_size])
            return torch.cat([base_logits, self.added(features)], dim=1)

    @torch.jit.export
    def features_and_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.combined(x)  # frozen networks run side by side: a no_grad scope around them would end on another thread
        return features, self.logits_from_features(features)


EXPORTED_ATTRIBUTES = ["format_version", "class_names", "image_size", "resize_size", "mean", "std", "unknown_threshold",
                       "places_json", "memory_features", "memory_targets", "general_memory", "memory_as_added",
                       "general_backbone", "general_size", "general_trunk_stages", "negative_sources_json",
                       "features_and_logits", "logits_from_features", "classify", "known_score", "known_score_from_features"]


def export_predictor(predictor: Predictor, path: str | Path) -> Path:
    """Script ``predictor`` with TorchScript, freeze it and save it (atomically) to ``path``, on the CPU. Freezing folds
    batch norm into the convolutions (about 10 % faster on a CPU) and keeps the attributes consumers read
    (:data:`EXPORTED_ATTRIBUTES`, and the methods a subclass adds: ``ADDED_METHODS``)."""
    with torchscript_on_purpose():
        scripted = torch.jit.freeze(torch.jit.script(predictor.cpu().eval()),
                                    preserved_attrs=EXPORTED_ATTRIBUTES + list(predictor.ADDED_METHODS))
    return save_scripted(scripted, path)


def save_scripted(module: torch.jit.ScriptModule, path: str | Path) -> Path:
    """Save a TorchScript module atomically. It is serialised in memory, then written with Python's file API:
    TorchScript's own file writer aborts the whole process on a full disk, Python's raises an OSError."""
    buffer = io.BytesIO()
    with torchscript_on_purpose():
        torch.jit.save(module, buffer)
    return atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


_EMPTY, _NO_TARGETS = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class ExportView:
    """An export as this project reads it, checked once (:func:`export_view`): its module and what it carries.

    ``module`` is TorchScript, or an ONNX file's :class:`~src.onnx_runtime.OnnxExport`. ``classify`` answers for every format;
    ``memory`` is what adding landmarks starts from (empty for a file that keeps none); ``base`` is the export a model with
    added landmarks was built on (None for a trained one)."""

    module: nn.Module
    format_version: int
    class_names: list[str]
    resize_size: int
    image_size: int
    unknown_threshold: float
    places: dict[str, Place]
    base: torch.jit.ScriptModule | None
    memory_features: torch.Tensor
    memory_targets: torch.Tensor
    general_memory: torch.Tensor
    memory_as_added: torch.Tensor
    general_trunk_stages: int = 0  # >0: its ImageNet features continue its own first stages (src/shared_trunk.py)
    negative_sources: tuple[str, ...] = ()  # names of the negatives folders: memory target -1 - k is of folder k

    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probabilities (B, C), known scores (B,))`` from one pass."""
        if self.format_version == 0:
            probabilities = self.module(images)
            return probabilities, probabilities.max(dim=1).values
        return self.module.classify(images)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.format_version == 0:
            raise ValueError("this export has no features_and_logits (the classic project's format): export it again "
                             "with `python -m src export CHECKPOINT --out FILE`")
        return self.module.features_and_logits(images)


def features_of(model: nn.Module | ExportView) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images -> features: an export's (or :class:`Predictor`'s) own network features, or a feature extractor's output."""
    if isinstance(model, ExportView) or hasattr(model, "features_and_logits"):
        return lambda images: model.features_and_logits(images)[0]
    return model


def export_view(module: nn.Module, source: str | Path = "the model") -> ExportView:
    """The :class:`ExportView` of a loaded export (or of a :class:`Predictor` not yet scripted); ``source`` names it
    in errors. A file of an older format is read as the current one (:data:`FORMAT_VERSION`); a newer one, or a
    TorchScript file this project did not write, is refused with a message that says what to do."""
    if isinstance(module, ExportView):
        return module
    if not hasattr(module, "class_names"):
        raise ValueError(f"{source}: TorchScript file without class_names; it was not exported by this project")
    if not hasattr(module, "resize_size"):
        raise ValueError(f"{source}: has no resize_size (the size photos are resized to); it was not exported by this project")
    if not isinstance(module.resize_size, int) or module.resize_size < 1:
        raise ValueError(f"{source}: resize_size {module.resize_size!r} is not a size in pixels; the export is damaged")
    version = int(getattr(module, "format_version", 1 if hasattr(module, "classify") else 0))
    if version > FORMAT_VERSION:
        raise ValueError(f"{source}: export format {version} is newer than this project reads ({FORMAT_VERSION}): "
                         "update the project (git pull) to use it")
    combined = getattr(module, "combined", None)
    return ExportView(
        module=module, format_version=version, class_names=list(module.class_names), resize_size=int(module.resize_size),
        image_size=int(getattr(module, "image_size", module.resize_size)),
        unknown_threshold=float(getattr(module, "unknown_threshold", CLASSIC_THRESHOLD)),
        places={name: Place.from_dict(d) for name, d in json.loads(str(getattr(module, "places_json", "{}"))).items()},
        base=combined.base if combined is not None else None,
        memory_features=getattr(module, "memory_features", _EMPTY), memory_targets=getattr(module, "memory_targets", _NO_TARGETS),
        general_memory=getattr(module, "general_memory", _EMPTY), memory_as_added=getattr(module, "memory_as_added", _EMPTY),
        general_trunk_stages=int(getattr(module, "general_trunk_stages", 0)),
        negative_sources=tuple(json.loads(str(getattr(module, "negative_sources_json", "[]")))))


def open_export(path: str | Path) -> ExportView:
    """Load an exported model on the CPU and check it (:func:`export_view`), with a clear error for other files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {'a folder, not a model file' if path.is_dir() else 'exported model not found'}")
    return export_from_bytes(path.read_bytes(), source=str(path))


def export_from_bytes(data: bytes, device: torch.device | str = "cpu", source: str = "the model") -> ExportView:
    """:func:`open_export` of a file's bytes (also a model sent to Ray workers), on ``device``; ``source`` names it in
    errors, and a name ending in ``.onnx`` is an ONNX file (:class:`~src.onnx_runtime.OnnxExport`, CPU)."""
    if str(source).endswith(".onnx"):  # onnxruntime loads only for ONNX files
        from .onnx_runtime import OnnxExport
        return export_view(OnnxExport(data, str(source)), source)
    try:
        with torchscript_on_purpose():
            module = torch.jit.load(io.BytesIO(data), map_location=device)
    except Exception as error:  # TorchScript raises RuntimeError or ValueError for foreign files
        raise ValueError(f"{source}: not a TorchScript export ({loading_error(error)}); training checkpoints go through "
                         "`export` first") from error
    return export_view(module.eval(), source)


def load_exported(path: str | Path) -> torch.jit.ScriptModule:
    """The module of :func:`open_export` (what ``torch.jit.load`` gives, checked)."""
    return open_export(path).module


def exported_files(folder: str | Path) -> list[Path]:
    """The TorchScript files of ``folder`` (training checkpoints beside them are left out), from their zip directory
    alone: listing a folder of models loads none of them."""
    return [path for path in sorted(Path(folder).glob("*.pt")) if is_torchscript_file(path)]
