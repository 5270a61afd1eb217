"""Fitting added landmarks and calibrating their unknown detector (steps 3-4 of :mod:`src.new_landmarks`).

The features are a memory of :class:`~src.imagenet_features.CombinedFeatures`: the base export's own, then ImageNet ones;
targets below 0 mark photos of no known landmark (-1 - k: of the export's negatives folder k). Each support photo is
remembered as :data:`VIEWS` consecutive rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .defaults import OUTLIER_WEIGHT
from .export import ExportView, export_view
from .openset import (
    ACCEPT_KNOWN,
    AddedLandmarksDetector,
    RememberedPhotos,
    nearest_detector,
    own_class_margin,
    percentile,
    similarity_floor,
    unit_features,
    unknown_threshold,
)
from .places import place_key
from .progress import tqdm

VIEWS = 5  # views per new photo: the photo, mirrored, two corner crops, a mirrored centre crop
FIT_STEPS = 300  # full-batch AdamW steps: under a second for a few thousand features
FIT_LR = 1e-2
FIT_WEIGHT_DECAY = 1e-4
HELD_OUT_FOLDS = 5  # support photos are held out of the fit in this many folds to calibrate the added landmarks' scores
MIN_HELD_OUT = 5  # fewer held-out support photos than this: added landmarks are scored like the original ones
MAX_NEGATIVES_ADDED = 0.02  # at most this share of held-out negatives may pass as an added landmark
ALIKE_FOLDER_SHARE = 0.75  # this share of a new landmark's photos nearest to one negatives folder's: the user is told


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
    steps = range(FIT_STEPS) if progress is None else tqdm(range(FIT_STEPS), desc=progress, unit="step", ncols=80)
    for _ in steps:  # a bar only when asked, on tqdm's defaults: its environment settings (TQDM_DISABLE=1) apply
        logits = torch.cat([base_logits, added(features)], dim=1)
        loss = F.cross_entropy(logits[known], targets[known], weight=weights)
        if (~known).any():
            loss = loss - OUTLIER_WEIGHT * F.log_softmax(logits[~known], dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return added.eval().requires_grad_(False)


def fit_rows(base: torch.nn.Module | ExportView, memory_features: torch.Tensor, memory_targets: torch.Tensor, num_added: int,
              lookalike: torch.Tensor, progress: str | None = None) -> nn.Linear:
    """The added rows fitted on a memory of :class:`~src.imagenet_features.CombinedFeatures`, its ``lookalike`` negatives left out
    (:func:`lookalike_negatives`)."""
    base = export_view(base)
    split = int(base.memory_features.shape[1])
    features, targets = memory_features[~lookalike], memory_targets[~lookalike]
    return fit_added_rows(base.module.logits_from_features(features[:, :split]), features, targets, num_added, progress=progress)


class HeldOut(NamedTuple):
    """Photos held out of fitting the added rows (:func:`held_out`), as a model with added landmarks will
    score them: top probability and :func:`~src.openset.own_class_margin` to the predicted landmark, of
    those predicted as an added landmark."""

    support_top: torch.Tensor  # support photos of the added landmarks
    support_margin: torch.Tensor
    negative_top: torch.Tensor  # the memory's photos of no landmark
    negative_margin: torch.Tensor
    negatives: int  # negatives held out and scored in all (predicted as an original landmark too)


def held_out(base: torch.nn.Module | ExportView, memory_features: torch.Tensor, memory_targets: torch.Tensor, num_added: int,
             lookalike: torch.Tensor) -> HeldOut:
    """:data:`HELD_OUT_FOLDS`-fold cross-fitting of the added rows: every support photo of a landmark with 2
    or more is held out once, with all its views, and scored whole; every remembered negative is held out
    once too (the ``lookalike`` ones, :func:`lookalike_negatives` of the whole memory, are not scored: they
    may show an added landmark)."""
    base = export_view(base)
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
        kept_lookalike = (lookalike[~held] if base.negative_sources  # by folder: the same rows
                          else lookalike_negatives(kept_features, kept_targets, num_original, split))
        added = fit_rows(base, kept_features, kept_targets, num_added, kept_lookalike)
        photos, targets = memory_features[held & scored], memory_targets[held & scored]
        negatives += int((targets < 0).sum())
        with torch.inference_mode():
            logits = torch.cat([base.module.logits_from_features(photos[:, :split]), added(photos)], dim=1)
            top, predicted = F.softmax(logits, dim=1).max(dim=1)
            bank = kept_targets >= 0
            scored_unit, negatives_kept = unit[held & scored], kept_unit[~bank & ~kept_lookalike]
            nearest_negative = ((scored_unit @ negatives_kept.T).max(dim=1).values if len(negatives_kept)
                                else torch.zeros(len(scored_unit)))
            margin = own_class_margin(scored_unit @ kept_unit[bank].T, kept_targets[bank], predicted, nearest_negative)
        for kind, rows in (("support", (predicted >= num_original) & (targets >= 0)), ("negative", (predicted >= num_original) & (targets < 0))):
            parts[f"{kind}_top"].append(top[rows])
            parts[f"{kind}_margin"].append(margin[rows])
    joined = {name: torch.cat(values) if values else torch.zeros(0) for name, values in parts.items()}
    return HeldOut(**joined, negatives=negatives)


def added_detector(base: torch.nn.Module | ExportView, added: nn.Linear, memory_features: torch.Tensor, memory_targets: torch.Tensor,
                   lookalike: torch.Tensor, remembered: RememberedPhotos | None = None) -> tuple[AddedLandmarksDetector, float]:
    """The unknown detector of a model with added landmarks and its threshold (module docstring, step 4).
    Photos called an original landmark are calibrated on the memory's first rows, the validation photos,
    with the base's own features as this model reads them (``base.memory_as_added``; for a file that keeps
    none, as the base alone reads them). The remembered negatives but the ``lookalike`` ones are what
    a photo called an added landmark must be nearer to it than to. ``remembered``: the memory as the new model keeps
    it (:class:`~src.openset.RememberedPhotos`; by default, ``memory_features`` in fp16 and the base's ``memory_as_added``)."""
    base = export_view(base)
    num_original, split = len(base.class_names), int(base.memory_features.shape[1])
    as_read = memory_features.clone()
    validation_as_added = base.memory_as_added
    if len(validation_as_added):
        as_read[:len(validation_as_added), :split] = validation_as_added.float()
    known = memory_targets >= 0
    in_validation = known & (memory_targets < num_original)  # the remembered validation photos (base rows are fixed)
    validation = as_read[in_validation]
    bank_rows = torch.full((int(known.sum()),), -1, dtype=torch.long)
    bank_rows[in_validation[known]] = torch.arange(len(validation))
    with torch.inference_mode():
        logits = torch.cat([base.module.logits_from_features(validation[:, :split]), added(validation)], dim=1)
        original, original_scores = nearest_detector(as_read[known], bank_rows, validation, logits, split)
    original_scores = torch.as_tensor(original_scores).float()
    references = (original.softmax_reference, original.nearest_reference)
    remembered = remembered or RememberedPhotos(memory_features.half(), split, validation_as_added)
    no_landmark = (memory_targets < 0) & ~lookalike
    floors = similarity_floors(memory_features[in_validation, split:], memory_targets, num_original)
    out = held_out(base, memory_features, memory_targets, added.out_features, lookalike)
    if len(out.support_top) < MIN_HELD_OUT:  # too few to calibrate on: added landmarks are scored like original ones (no margin)
        detector = AddedLandmarksDetector(remembered, memory_targets, torch.zeros_like(no_landmark), num_original, references,
                                          original_scores, torch.zeros(0), torch.zeros(0), torch.zeros(0), 0.0, floors)
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
    detector = AddedLandmarksDetector(remembered, memory_targets, no_landmark, num_original, references, original_scores,
                                      out.support_top, out.support_margin, support, offset, floors)
    ranks = torch.cat([percentile(detector.original_scores, original_scores), percentile(detector.added_scores, support)])
    return detector, unknown_threshold(ranks.numpy())


def similarity_floors(validation_general: torch.Tensor, memory_targets: torch.Tensor, num_original: int) -> torch.Tensor:
    """Each class's similarity floor (:func:`~src.openset.similarity_floor`): for an added landmark, the
    original landmarks' standard for as many remembered photos as it has (its rows over :data:`VIEWS`),
    measured on the remembered validation photos' ImageNet features; -2 (none) for the original ones."""
    validation_targets = memory_targets[(memory_targets >= 0) & (memory_targets < num_original)]
    floors = torch.full((int(memory_targets.max()) + 1,), -2.0)
    for target in range(num_original, len(floors)):
        photos = max(1, int((memory_targets == target).sum()) // VIEWS)
        floors[target] = similarity_floor(validation_general, validation_targets, photos)
    return floors


def lookalike_negatives(features: torch.Tensor, targets: torch.Tensor, base_classes: int, split: int,
                        sources: Sequence[str] = (), added_names: Sequence[str] = ()) -> torch.Tensor:
    """Which rows are negatives that may show an added landmark (a negatives folder may hold the very landmark
    being added), left out of the fit and of the photos of no landmark it is compared with. A memory that names
    its negatives' folders (``sources``) leaves out those of a folder named as an added landmark (``added_names``,
    compared as :func:`~src.places.place_key`): a photo of another landmark that looks like an added one stays a
    negative. A memory that does not, those whose nearest labelled photo (cosine) is of an added landmark."""
    negative = targets < 0
    lookalike = torch.zeros_like(negative)
    if sources:
        added = {place_key(name) for name in added_names}
        shown = torch.tensor([place_key(source) in added for source in sources], dtype=torch.bool)
        lookalike[negative] = shown[-1 - targets[negative]]
    elif negative.any():
        normalised = unit_features(features, split)
        labelled = (~negative).nonzero().flatten()
        nearest = targets[labelled[(normalised[negative] @ normalised[labelled].T).argmax(dim=1)]]
        lookalike[negative.nonzero().flatten()[nearest >= base_classes]] = True
    return lookalike


def folders_alike(features: torch.Tensor, targets: torch.Tensor, split: int, sources: Sequence[str],
                  new: Mapping[str, int]) -> dict[str, tuple[str, int, int]]:
    """``{new landmark: (negatives folder, photos like it, photos)}`` for each landmark of ``new`` (``{name: target}``) at least
    :data:`ALIKE_FOLDER_SHARE` of whose photos are nearest (cosine, among every other remembered photo) to a photo of
    one negatives folder of ``sources`` named otherwise: they may well show that folder's landmark, which is learned
    well only under the folder's name (:func:`lookalike_negatives` leaves its negatives out then; under another name
    they are fitted against it)."""
    if not sources:
        return {}
    unit = unit_features(features, split)
    alike: dict[str, tuple[str, int, int]] = {}
    for name, target in new.items():
        own = targets == target
        photos, others = own.nonzero().flatten()[::VIEWS], (~own).nonzero().flatten()
        if len(photos) == 0:
            continue
        nearest = targets[others[(unit[photos] @ unit[others].T).argmax(dim=1)]]
        folders = torch.bincount(-1 - nearest[nearest < 0], minlength=len(sources))
        folder = int(folders.argmax())
        if folders[folder] >= ALIKE_FOLDER_SHARE * len(photos) and place_key(sources[folder]) != place_key(name):
            alike[name] = (sources[folder], int(folders[folder]), len(photos))
    return alike
