"""New landmarks from a handful of photos each, added to an exported model without retraining it.

Every export keeps a *feature memory* (:func:`feature_memory`) of up to :data:`MEMORY_PER_CLASS`
validation photos per class and :data:`MEMORY_NEGATIVES` photos of no known landmark: the network's
own features of them, and plain ImageNet features (``general_memory``, :mod:`src.imagenet_features`),
which tell apart landmarks the network never trained on. ``add_landmarks`` needs only that export and
the new photos:

1. read each new landmark's photos (bad ones skipped with a warning) and take :data:`VIEWS` views of
   each (the photo, mirrored, two corner crops, a mirrored centre crop);
2. compute their :class:`CombinedFeatures`: the export's own (frozen) features, then the ImageNet ones;
3. fit one new linear row per new landmark on those features, beside the export's unchanged head
   (:func:`fit_added_rows`): class-balanced cross-entropy over old + new classes on the memory and
   the new views, and outlier exposure on the memory's negatives so that photos of no landmark
   stay unknown. The old classes' logits are the export's own, so what it knew is kept;
4. calibrate the unknown detector again (:class:`~src.openset.AddedLandmarksDetector`), on both kinds
   of features (each normalised apart): photos called an original landmark on the memory's validation
   photos as the new model reads them (``memory_as_added``: a small photo read at the ImageNet size and
   scaled down scores lower than read at the base's own size, so calibrating on the latter accepted 95.0 %
   of new photos of the original landmarks instead of 96.8 %), now compared with the new views too
   (:func:`~src.openset.nearest_detector`); photos called
   an added landmark on its support photos held out of the fit (:func:`held_out`), as an
   added landmark's new photos will be, by their top probability and how much nearer they are to the
   landmark's photos than to the memory's photos of no landmark (:func:`~src.openset.own_class_margin`).
   One threshold keeps the same share of both
   (:func:`~src.openset.unknown_threshold`, the rule of training). A photo called an added landmark must
   also be close to its photos, not just closer than to the negatives: as close in ImageNet features as
   the original landmarks' photos are to the nearest of as many of their own
   (:func:`~src.openset.similarity_floor`);
5. script an :class:`AddedLandmarksPredictor` (the original export and the ImageNet extractor + the
   new rows + the memory with the new views), which has the interface of every export and loads with
   ``torch.jit.load`` alone. Carrying a second network makes it slower than its base (docs/adding-landmarks.md).

Adding again to such a model refits all added rows from its memory, so models never nest.
Measured by ``bench/add_landmarks.py`` (docs/adding-landmarks.md).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import List, NamedTuple, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import display_name, split_negatives
from .decoding import square_batches
from .files import atomic_write
from .imagenet_features import ImageNetFeatures
from .location import list_images
from .openset import (ACCEPT_KNOWN, AddedLandmarksDetector, nearest_detector, open_set_report, own_class_margin,
                      percentile, similarity_floor, unit_features, unknown_threshold)
from .places import Place, place_key, places_for
from .predictor import ExportedModel, load_exported, save_scripted, torchscript_on_purpose

MEMORY_PER_CLASS = 100  # validation photos per class whose features an export keeps
MEMORY_NEGATIVES = 500  # negative photos whose features an export keeps
VIEWS = 5  # views per new photo: the photo, mirrored, two corner crops, a mirrored centre crop
FEATURE_BATCH = 16  # images a network sees at once: its activations take ~22 MB per 224 px image, the batch's peak memory
OUTLIER_WEIGHT = 0.5  # as the training recipes (src/recipes.py)
FIT_STEPS = 300  # full-batch AdamW steps: under a second for a few thousand features
FIT_LR = 1e-2
FIT_WEIGHT_DECAY = 1e-4
HELD_OUT_FOLDS = 5  # support photos are held out of the fit in this many folds to calibrate the added landmarks' scores
MIN_HELD_OUT = 5  # fewer held-out support photos than this: added landmarks are scored like the original ones
MAX_NEGATIVES_ADDED = 0.02  # at most this share of held-out negatives may pass as an added landmark


class CombinedFeatures(nn.Module):
    """Raw photos -> the features a model with added landmarks classifies: its ``base`` export's own
    (the first ``base_size`` columns), then plain ImageNet ones (``general``)."""

    def __init__(self, base: torch.jit.ScriptModule, general: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.general = general
        self.base_size: int = int(base.memory_features.shape[1])
        self.resize_size: int = max(int(base.resize_size), int(general.resize_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.base.features_and_logits(x)[0], self.general(x)], dim=1)


class AddedLandmarksPredictor(ExportedModel):
    """An exported predictor with landmarks added: the original export, untouched, and one linear row
    per added landmark on :class:`CombinedFeatures`. Same interface as :class:`~src.predictor.Predictor`;
    ``resize_size`` is the larger of the two networks' (the base sees its own size and crop of it)."""

    def __init__(self, combined: CombinedFeatures, added: nn.Linear, class_names: List[str], detector: nn.Module,
                 unknown_threshold: float, places_json: str, memory_features: torch.Tensor, memory_targets: torch.Tensor
                 ) -> None:
        super().__init__()
        base = combined.base
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
        with torch.no_grad():
            features = self.combined(x)
            return features, self.logits_from_features(features)


def combined_features(model: torch.jit.ScriptModule) -> CombinedFeatures:
    """The :class:`CombinedFeatures` of the models that adding landmarks to ``model`` makes (its own, when it
    has added landmarks already): they do not depend on which landmarks are added."""
    if hasattr(model, "combined"):
        return model.combined
    if any(getattr(model, name, torch.zeros(0)).numel() == 0 for name in ("memory_features", "general_memory")):
        raise ValueError("this export keeps no feature memory with ImageNet features (it predates adding landmarks as done "
                         "now): export it again from its checkpoint with `python -m src export CHECKPOINT --out FILE --data DATASET`")
    return CombinedFeatures(model, ImageNetFeatures(str(model.general_backbone), int(model.general_size)))


def photo_features(model: nn.Module, paths: Sequence[Path], num_workers: int = -1, batch_size: int = 64
                   ) -> tuple[torch.Tensor, list[int], dict[int, str]]:
    """The features of photos on disk (an export's ``features_and_logits``, or ``model(images)`` for a feature
    extractor such as :class:`CombinedFeatures`), the indices of the readable ones, and ``{index: error}`` for
    the others."""
    features, kept, errors = [], [], {}
    extract = (lambda images: model.features_and_logits(images)[0]) if hasattr(model, "features_and_logits") else model
    for indices, images, batch_errors in square_batches(list(paths), int(model.resize_size), batch_size, num_workers):
        errors.update(batch_errors)
        if images is not None:
            features.append(_in_batches(extract, images))
            kept += indices
    return (torch.cat(features) if features else torch.zeros(0, 0)), kept, errors


def _in_batches(extract: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """``extract(images)``, :data:`FEATURE_BATCH` images at a time: memory stays bounded however many photos are read."""
    with torch.inference_mode():
        return torch.cat([extract(batch) for batch in images.split(FEATURE_BATCH)])


def _evenly(items: Sequence, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[math.floor(i * len(items) / n)] for i in range(n)]


def rows_per_class(targets: Sequence[int], n: int) -> list[int]:
    """Up to ``n`` indices of ``targets`` per class, spread evenly over each class's photos, class by class."""
    return [row for target in sorted(set(targets)) for row in _evenly([i for i, t in enumerate(targets) if t == target], n)]


class FeatureMemory(NamedTuple):
    """What an export keeps of photos it was calibrated on (:func:`feature_memory`, :func:`keep_memory`)."""

    features: torch.Tensor  # (M, D) fp16: the model's own features
    general: torch.Tensor  # (M, G) fp16: the ImageNet features of the same photos
    as_added: torch.Tensor  # (V, D) fp16: the model's own features of the V validation rows as a model with added landmarks reads them
    targets: torch.Tensor  # (M,) class indices, -1 for photos of no known landmark
    rows: list[int]  # the validation indices of the first rows
    general_backbone: str  # the ImageNet network of ``general`` and its input size
    general_size: int


def feature_memory(model: nn.Module, valid_features: torch.Tensor, valid_paths: Sequence[Path], valid_targets: Sequence[int],
                   negatives: Sequence[str | Path] = (), num_workers: int = -1) -> FeatureMemory:
    """What an export keeps to add landmarks later (and to detect unknown photos with): up to
    :data:`MEMORY_PER_CLASS` validation photos per class (their features computed once by the caller, who
    calibrates on them) and :data:`MEMORY_NEGATIVES` training photos of the negatives folders (target -1,
    after them); of each, the model's features and :class:`~src.imagenet_features.ImageNetFeatures`'. Of the
    validation photos also the model's features as a model with added landmarks computes them (read at the
    larger of the two sizes, :class:`CombinedFeatures`), which that model's threshold is calibrated on."""
    general = ImageNetFeatures()
    rows = rows_per_class(valid_targets, MEMORY_PER_CLASS)
    trained_negatives = _evenly([path for folder in negatives for path in split_negatives(folder)[0]], MEMORY_NEGATIVES)
    negative_features, kept, _ = photo_features(model, trained_negatives, num_workers)
    # one read of each validation photo gives both of its features as a model with added landmarks computes them
    # (the memory is not kept yet, so the split is the caller's feature size, not the extractor's base_size)
    as_read, readable, errors = photo_features(CombinedFeatures(model, general), [valid_paths[i] for i in rows], num_workers)
    negatives_general, readable_negatives, negative_errors = photo_features(general, [trained_negatives[i] for i in kept],
                                                                            num_workers)
    if len(readable) != len(rows) or len(readable_negatives) != len(kept):
        raise RuntimeError(f"photos became unreadable while exporting: {'; '.join({**errors, **negative_errors}.values())}")
    size = valid_features.shape[1]
    features = torch.cat([valid_features[rows], negative_features.reshape(-1, size)])
    general_features = torch.cat([as_read[:, size:], negatives_general.reshape(-1, as_read.shape[1] - size)])
    targets = [valid_targets[i] for i in rows] + [-1] * len(kept)
    return FeatureMemory(features.half(), general_features.half(), as_read[:, :size].half(),
                         torch.tensor(targets, dtype=torch.long), rows, general.backbone_name, general.resize_size)


def keep_memory(predictor: ExportedModel, memory: FeatureMemory) -> None:
    """Put ``memory`` in the attributes an export carries it in (:class:`~src.predictor.Predictor`)."""
    predictor.memory_features, predictor.memory_targets = memory.features, memory.targets
    predictor.general_memory, predictor.memory_as_added = memory.general, memory.as_added
    predictor.general_backbone, predictor.general_size = memory.general_backbone, memory.general_size


def read_new_landmarks(photos_dir: str | Path) -> dict[str, list[Path]]:
    """``{landmark name: photos}`` of a folder with one sub-folder per landmark (``NN.Name/`` or ``Name/``)."""
    photos_dir = Path(photos_dir)
    if not photos_dir.is_dir():
        raise FileNotFoundError(f"{photos_dir}: folder of new landmarks not found")
    landmarks: dict[str, list[Path]] = {}
    for folder in sorted(p for p in photos_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            folder.name.encode("utf-8")
        except UnicodeEncodeError:  # a model keeps its landmark names as UTF-8 text
            raise ValueError(f"{str(folder)!r}: the folder name is not UTF-8 text, as a landmark name must be; "
                             "rename the folder") from None
        name = display_name(folder.name)
        if name in landmarks:
            raise ValueError(f"{folder}: two folders of {photos_dir} are both named {name!r}")
        landmarks[name] = list_images(folder)
        if not landmarks[name]:
            raise ValueError(f"{folder}: no photos in this landmark folder")
    if not landmarks:
        raise ValueError(f"{photos_dir}: no landmark folders in it (one sub-folder of photos per new landmark)")
    return landmarks


def _check_new_names(names: Sequence[str], trained: int, new: Iterable[str], replace: bool) -> None:
    """Refuse new landmark names that are blank, or that :func:`~src.places.place_key` (case, accents, punctuation)
    cannot tell from a landmark of the model (its first ``trained`` ones trained on, the others added) or from each
    other: such a name would get that landmark's place, and its answers could not be told apart."""
    known = {place_key(name): name for name in names}
    seen: dict[str, str] = {}
    for name in new:
        key = place_key(name)
        if not key:
            raise ValueError(f"{name!r} is no landmark name: give one with letters or digits")
        if key in seen:
            raise ValueError(f"{name!r} and {seen[key]!r} are one landmark (names are compared ignoring case, accents "
                             "and punctuation): give one of them")
        seen[key] = name
        same = known.get(key)
        if same is None:
            continue
        trained_on = names.index(same) < trained
        if same != name:
            raise ValueError(f"{name!r} is the model's landmark {same!r} (names are compared ignoring case, accents and "
                             "punctuation): give the new landmark another name"
                             + ("" if trained_on else ", or its exact name with --replace to learn it again"))
        if trained_on:
            raise ValueError(f"{name!r} is one of the landmarks the model was trained on; a few photos cannot replace "
                             "it (train again with them, or give the new landmark another name)")
        if not replace:
            raise ValueError(f"{name!r} is already a landmark of this model; pass --replace to learn it again from these photos")


def _views(squares: torch.Tensor, size: int) -> torch.Tensor:
    """:data:`VIEWS` views of ``(B, 3, S, S)`` uint8 squares (S > size), each ``(size, size)``, grouped by photo
    (rows ``i * VIEWS`` to ``i * VIEWS + VIEWS - 1`` are photo ``i``'s, the whole photo first: the memory keeps
    this order, so :func:`held_out` can hold a photo out with all its views)."""
    full = F.interpolate(squares.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    full = full.round().clamp(0, 255).to(torch.uint8)
    margin = (squares.shape[-1] - size) // 2
    return torch.stack([full, full.flip(-1), squares[..., :size, :size], squares[..., -size:, -size:],
                        squares[..., margin:margin + size, margin:margin + size].flip(-1)], dim=1).flatten(0, 1)


def support_features(combined: CombinedFeatures, photos: Mapping[str, Sequence[Path]], num_workers: int = -1
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``{name: (photos * VIEWS, D) features}`` of each new landmark's readable photos, and the warnings of the
    unreadable ones. A landmark with no readable photo is refused, naming its photos."""
    size = int(combined.resize_size)
    big = round(size * 9 / 8)  # the corner crops keep 8/9 of the photo's sides
    features: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, paths in tqdm(photos.items(), desc="Features of the new photos", unit="landmark", ncols=80):
        views = []
        for indices, squares, errors in square_batches(list(paths), big, 32, num_workers):
            skipped += [f"skipped unreadable photo of {name!r}: {message}" for message in errors.values()]
            if squares is not None:
                views.append(_in_batches(combined, _views(squares, size)))
        if not views:
            where = Path(paths[0]).parent if paths else "its folder"
            raise ValueError(f"{where}: no readable photo of {name!r} ({len(paths)} file(s) tried)")
        features[name] = torch.cat(views)
    return features, skipped


def fit_added_rows(base_logits: torch.Tensor, features: torch.Tensor, targets: torch.Tensor, num_added: int,
                   seed: int = 0, progress: str | None = None) -> nn.Linear:
    """New class rows ``W f + b`` beside fixed ``base_logits`` (class-balanced cross-entropy over all classes;
    rows with target -1 are pulled to the uniform distribution: outlier exposure). ``progress``: the
    label of a progress bar over the steps (none without it)."""
    torch.manual_seed(seed)
    num_classes = base_logits.shape[1] + num_added
    added = nn.Linear(features.shape[1], num_added)
    nn.init.zeros_(added.weight)
    nn.init.constant_(added.bias, -5.0)  # new classes start improbable, so the old ones are not disturbed
    known = targets >= 0
    counts = torch.bincount(targets[known], minlength=num_classes).float()
    weights = torch.where(counts > 0, known.sum() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))
    optimizer = torch.optim.AdamW(added.parameters(), lr=FIT_LR, weight_decay=FIT_WEIGHT_DECAY)
    for _ in tqdm(range(FIT_STEPS), desc=progress, unit="step", ncols=80, disable=progress is None):
        logits = torch.cat([base_logits, added(features)], dim=1)
        loss = F.cross_entropy(logits[known], targets[known], weight=weights)
        if (~known).any():
            loss = loss - OUTLIER_WEIGHT * F.log_softmax(logits[~known], dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return added.eval().requires_grad_(False)


def _fit_rows(base: torch.jit.ScriptModule, memory_features: torch.Tensor, memory_targets: torch.Tensor, num_added: int,
              lookalike: torch.Tensor, progress: str | None = None) -> nn.Linear:
    """The added rows fitted on a memory of :class:`CombinedFeatures`, its ``lookalike`` negatives left out
    (:func:`_lookalike_negatives`)."""
    split = int(base.memory_features.shape[1])
    features, targets = memory_features[~lookalike], memory_targets[~lookalike]
    return fit_added_rows(base.logits_from_features(features[:, :split]), features, targets, num_added, progress=progress)


class HeldOut(NamedTuple):
    """Photos held out of fitting the added rows (:func:`held_out`), as a model with added landmarks will
    score them: top probability and :func:`~src.openset.own_class_margin` to the predicted landmark, of
    those predicted as an added landmark."""

    support_top: torch.Tensor  # support photos of the added landmarks
    support_margin: torch.Tensor
    negative_top: torch.Tensor  # the memory's photos of no landmark
    negative_margin: torch.Tensor
    negatives: int  # negatives held out and scored in all (predicted as an original landmark too)


def held_out(base: torch.jit.ScriptModule, memory_features: torch.Tensor, memory_targets: torch.Tensor, num_added: int,
             lookalike: torch.Tensor) -> HeldOut:
    """:data:`HELD_OUT_FOLDS`-fold cross-fitting of the added rows: every support photo of a landmark with 2
    or more is held out once, with all its views, and scored whole; every remembered negative is held out
    once too (the ``lookalike`` ones, :func:`_lookalike_negatives` of the whole memory, are not scored: they
    may show an added landmark)."""
    num_original, split = len(base.class_names), int(base.memory_features.shape[1])
    unit = unit_features(memory_features, split)
    fold = torch.full_like(memory_targets, -1)
    negative = memory_targets < 0
    fold[negative] = torch.arange(int(negative.sum())) % HELD_OUT_FOLDS
    # the rows scored when held out: each support photo's whole view, and the negatives unlike the added landmarks
    scored = negative & ~lookalike
    for target in range(num_original, num_original + num_added):
        rows = (memory_targets == target).nonzero().flatten()
        photo = torch.arange(len(rows)) // VIEWS
        scored[rows[::VIEWS]] = True
        if len(rows) and int(photo.max()) >= 1:
            fold[rows] = photo % min(HELD_OUT_FOLDS, int(photo.max()) + 1)
    parts: dict[str, list[torch.Tensor]] = {"support_top": [], "support_margin": [], "negative_top": [], "negative_margin": []}
    negatives = 0
    for k in tqdm(range(HELD_OUT_FOLDS), desc="Calibrating on held-out photos", unit="fold", ncols=80):
        held = fold == k
        if not (held & (memory_targets >= 0)).any():
            continue
        kept_features, kept_targets, kept_unit = memory_features[~held], memory_targets[~held], unit[~held]
        lookalike = _lookalike_negatives(kept_features, kept_targets, num_original, split)
        added = _fit_rows(base, kept_features, kept_targets, num_added, lookalike)
        photos, targets = memory_features[held & scored], memory_targets[held & scored]
        negatives += int((targets < 0).sum())
        with torch.inference_mode():
            logits = torch.cat([base.logits_from_features(photos[:, :split]), added(photos)], dim=1)
            top, predicted = F.softmax(logits, dim=1).max(dim=1)
            bank = kept_targets >= 0
            margin = own_class_margin(unit[held & scored], kept_unit[bank], kept_targets[bank], predicted,
                                      kept_unit[~bank & ~lookalike])
        for kind, rows in (("support", (predicted >= num_original) & (targets >= 0)), ("negative", (predicted >= num_original) & (targets < 0))):
            parts[f"{kind}_top"].append(top[rows])
            parts[f"{kind}_margin"].append(margin[rows])
    joined = {name: torch.cat(values) if values else torch.zeros(0) for name, values in parts.items()}
    return HeldOut(**joined, negatives=negatives)


def _detector(base: torch.jit.ScriptModule, added: nn.Linear, memory_features: torch.Tensor, memory_targets: torch.Tensor,
              lookalike: torch.Tensor) -> tuple[AddedLandmarksDetector, float]:
    """The unknown detector of a model with added landmarks and its threshold (module docstring, step 4).
    Photos called an original landmark are calibrated on the memory's first rows, the validation photos,
    with the base's own features as this model reads them (``base.memory_as_added``; exports made before
    it was kept: as the base alone reads them). The remembered negatives but the ``lookalike`` ones are what
    a photo called an added landmark must be nearer to it than to."""
    num_original, split = len(base.class_names), int(base.memory_features.shape[1])
    as_read = memory_features.clone()
    validation_as_added = getattr(base, "memory_as_added", torch.zeros(0, 0))
    if len(validation_as_added):
        as_read[:len(validation_as_added), :split] = validation_as_added.float()
    known = memory_targets >= 0
    in_validation = known & (memory_targets < num_original)  # the remembered validation photos (base rows are fixed)
    validation = as_read[in_validation]
    bank_rows = torch.full((int(known.sum()),), -1, dtype=torch.long)
    bank_rows[in_validation[known]] = torch.arange(len(validation))
    with torch.inference_mode():
        logits = torch.cat([base.logits_from_features(validation[:, :split]), added(validation)], dim=1)
        original, original_scores = nearest_detector(as_read[known], bank_rows, validation, logits, split)
    original_scores = torch.as_tensor(original_scores).float()
    no_landmark = memory_features[(memory_targets < 0) & ~lookalike]
    floors = _similarity_floors(memory_features[in_validation, split:], memory_targets, num_original)
    out = held_out(base, memory_features, memory_targets, added.out_features, lookalike)
    if len(out.support_top) < MIN_HELD_OUT:  # too few to calibrate on: added landmarks are scored like original ones (no margin)
        detector = AddedLandmarksDetector(original, original_scores, memory_targets[known], no_landmark[:0], num_original,
                                          torch.zeros(0), torch.zeros(0), torch.zeros(0), 0.0, floors)
        return detector, unknown_threshold(percentile(detector.original_scores, original_scores).numpy())
    top_reference, margin_reference = out.support_top.sort().values, out.support_margin.sort().values
    support = (percentile(top_reference, out.support_top) + percentile(margin_reference, out.support_margin)) / 2
    negative = (percentile(top_reference, out.negative_top) + percentile(margin_reference, out.negative_margin)) / 2
    # the score ACCEPT_KNOWN of the held-out support photos reach, raised when it lets too many held-out negatives through
    accepting = float(np.quantile(support.numpy(), 1 - ACCEPT_KNOWN, method="lower"))
    allowed = math.floor(MAX_NEGATIVES_ADDED * out.negatives)
    needed = accepting
    if len(negative) > allowed:
        needed = max(needed, float(negative.sort(descending=True).values[allowed]) + 1e-6)
    offset = needed - accepting
    detector = AddedLandmarksDetector(original, original_scores, memory_targets[known], no_landmark, num_original,
                                      out.support_top, out.support_margin, support, offset, floors)
    ranks = torch.cat([percentile(detector.original_scores, original_scores), percentile(detector.added_scores, support)])
    return detector, unknown_threshold(ranks.numpy())


def _similarity_floors(validation_general: torch.Tensor, memory_targets: torch.Tensor, num_original: int) -> torch.Tensor:
    """Each class's similarity floor (:func:`~src.openset.similarity_floor`): for an added landmark, the
    original landmarks' standard for as many remembered photos as it has (its rows over :data:`VIEWS`),
    measured on the remembered validation photos' ImageNet features; -2 (none) for the original ones."""
    validation_targets = memory_targets[(memory_targets >= 0) & (memory_targets < num_original)]
    floors = torch.full((int(memory_targets.max()) + 1,), -2.0)
    for target in range(num_original, len(floors)):
        photos = max(1, int((memory_targets == target).sum()) // VIEWS)
        floors[target] = similarity_floor(validation_general, validation_targets, photos)
    return floors


def _lookalike_negatives(features: torch.Tensor, targets: torch.Tensor, base_classes: int, split: int) -> torch.Tensor:
    """Which rows are negatives whose nearest labelled photo (cosine) is one of an added landmark: a
    negatives folder may well hold photos of the very landmark being added, so they are left out."""
    negative = targets < 0
    lookalike = torch.zeros_like(negative)
    if negative.any():
        normalised = unit_features(features, split)
        labelled = (~negative).nonzero().flatten()
        nearest = targets[labelled[(normalised[negative] @ normalised[labelled].T).argmax(dim=1)]]
        lookalike[negative.nonzero().flatten()[nearest >= base_classes]] = True
    return lookalike


def add_landmarks(model: torch.jit.ScriptModule, photos: Mapping[str, Sequence[Path]],
                  places: Mapping[str, Place] | None = None, replace: bool = False, num_workers: int = -1
                  ) -> tuple[torch.jit.ScriptModule, list[str]]:
    """``model`` with the landmarks of ``photos`` (``{name: photo paths}``) added (the steps of the module
    docstring), and the warnings about skipped photos. ``places`` gives places of new (or any) classes."""
    combined = combined_features(model)  # adding to an added-landmarks model refits its rows
    base = combined.base
    memory_features = model.memory_features.float()
    if not hasattr(model, "combined"):
        memory_features = torch.cat([memory_features, model.general_memory.float()], dim=1)
    memory_targets = model.memory_targets.clone()
    names = list(model.class_names)
    base_names = list(base.class_names)
    _check_new_names(names, len(base_names), photos, replace)
    for name in [n for n in names[len(base_names):] if n in photos]:  # replaced: its memory rows go
        index = names.index(name)
        keep = memory_targets != index
        memory_features, memory_targets = memory_features[keep], memory_targets[keep]
        memory_targets[memory_targets > index] -= 1
        names.remove(name)
    new_features, skipped = support_features(combined, photos, num_workers)
    for name, features in new_features.items():
        memory_features = torch.cat([memory_features, features])
        memory_targets = torch.cat([memory_targets, torch.full((len(features),), len(names), dtype=torch.long)])
        names.append(name)
    lookalike = _lookalike_negatives(memory_features, memory_targets, len(base_names), int(base.memory_features.shape[1]))
    added = _fit_rows(base, memory_features, memory_targets, len(names) - len(base_names), lookalike,
                      progress="Fitting the new landmarks")
    detector, threshold = _detector(base, added, memory_features, memory_targets, lookalike)
    known_places = {name: Place.from_dict(d) for name, d in json.loads(str(model.places_json)).items()}
    known_places.update({name: place for name, place in (places or {}).items() if name in names})
    places_json = json.dumps({name: known_places[name].to_dict() for name in names if name in known_places}, sort_keys=True)
    with torchscript_on_purpose():
        scripted = torch.jit.script(AddedLandmarksPredictor(combined, added, names, detector, threshold, places_json,
                                                            memory_features, memory_targets))
    return scripted, skipped


def few_shot_draw(base: torch.jit.ScriptModule, photos: Mapping[str, Sequence[Path]], shots: int, seed: int,
                  features: Mapping[Path, torch.Tensor], known: tuple[torch.Tensor, np.ndarray], unknown: torch.Tensor,
                  other_landmarks: torch.Tensor | None = None, other_unknown: Mapping[str, torch.Tensor] | None = None
                  ) -> dict[str, float]:
    """One measurement of adding landmarks: ``shots`` random photos of each landmark of ``photos`` are added
    to ``base``; the others (their ``features``, computed once: :func:`photo_features` of
    :func:`combined_features`) measure it.

    ``known`` is ``(features, targets)`` of the base's test photos, ``unknown`` the features of photos of
    no landmark (combined features too), ``other_landmarks`` optionally those of photos of landmarks neither
    known nor added, ``other_unknown`` optionally ``{source: features}`` of more photos of no landmark.
    Returns new-landmark top-1 among all classes, share accepted as known and share both accepted and named
    right, the same for the original test photos, unknown detection against ``unknown``
    (:func:`~src.openset.open_set_report`), the share of ``other_landmarks`` and of each ``other_unknown``
    source accepted (``{source}_accepted``), and the seconds ``add_landmarks`` took.
    """
    rng = random.Random(seed)
    support: dict[str, list[Path]] = {}
    query: list[Path] = []
    query_targets: list[int] = []
    for index, (name, paths) in enumerate(photos.items()):
        support[name] = rng.sample(list(paths), min(shots, len(paths) - 1))
        given = set(support[name])
        rest = [p for p in paths if p not in given and p in features]
        query += rest
        query_targets += [len(base.class_names) + index] * len(rest)
    start = time.perf_counter()
    model, _ = add_landmarks(base, support)
    seconds = time.perf_counter() - start

    def predicted(features_: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return model.logits_from_features(features_).argmax(1).numpy(), model.known_score_from_features(features_).numpy()

    threshold = float(model.unknown_threshold)
    query_pred, query_score = predicted(torch.stack([features[p] for p in query]))
    test_pred, test_score = predicted(known[0])
    after = open_set_report(test_score, predicted(unknown)[1], threshold)
    others = {} if other_landmarks is None else {"other_landmarks_accepted": float((predicted(other_landmarks)[1] >= threshold).mean())}
    others.update({f"{source}_accepted": float((predicted(photos)[1] >= threshold).mean())
                   for source, photos in (other_unknown or {}).items()})
    named = query_pred == np.asarray(query_targets)
    return {"new_top1": float(named.mean()), "new_accepted": float((query_score >= threshold).mean()),
            "new_named_and_accepted": float((named & (query_score >= threshold)).mean()),
            "original_top1": float((test_pred == known[1]).mean()), "original_accepted": after["known_accepted"],
            "original_named_and_accepted": float(((test_pred == known[1]) & (test_score >= threshold)).mean()),
            "unknown_auroc": after["auroc"], "unknown_fpr95": after["fpr95"], "unknown_accepted": after["unknown_accepted"],
            **others, "unknown_threshold": threshold, "seconds": seconds, "query_photos": len(query)}


def save_added(model: torch.jit.ScriptModule, path: str | Path, record: dict) -> Path:
    """Save an added-landmarks model atomically, with ``record`` (what was added, how long it took) as JSON beside it."""
    path = save_scripted(model, path)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return path


def add_landmarks_command(base_path: Path, photos_dir: Path, out: Path, places_csv: Path | None, replace: bool,
                          num_workers: int = -1) -> dict:
    """The ``add-landmarks`` command: read, add, save, and return the record written beside the new model
    (``skipped`` lists the photos that could not be read)."""
    start = time.perf_counter()
    model = load_exported(base_path)
    photos = read_new_landmarks(photos_dir)
    new_model, skipped = add_landmarks(model, photos, places_for(list(photos), places_csv), replace, num_workers)
    seconds = time.perf_counter() - start
    record = {"base": str(base_path), "photos_dir": str(photos_dir), "added": {name: len(paths) for name, paths in photos.items()},
              "skipped": skipped, "class_names": list(new_model.class_names),
              "unknown_threshold": float(new_model.unknown_threshold), "seconds": round(seconds, 1)}
    save_added(new_model, out, record)
    return record
