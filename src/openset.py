"""Unknown detection: the score that says whether a photo shows one of the landmarks a model knows.

Most photos a tagger meets show no landmark it knows. A classifier's softmax still spreads all
of its probability over the known classes, so a confident-looking answer means little. Two
pieces fix that:

1. **Training** (:class:`~src.optimization.OutlierExposureLoss`): photos of no known landmark
   (``--negatives``) are trained towards the uniform distribution (outlier exposure), so the
   network learns to keep its top probability low on what it does not know.
2. **The exported predictor** carries a *detector* — a TorchScript module that turns the
   network's features and logits into a ``known_score`` (higher: one of my landmarks) — and a
   threshold chosen on validation photos of the known landmarks (never on test ones):
   :func:`unknown_threshold`, the score :data:`ACCEPT_KNOWN` of them reach.

The detector is :class:`SoftmaxAndNearest`, chosen by measurement (``bench/openset.py``,
docs/unknown-photos.md): the top probability (after outlier exposure, better than energy,
the max-logit or the relative Mahalanobis distance), the similarity to the nearest remembered
validation photo (the export's feature memory, :mod:`src.new_landmarks`) and the similarity to the
nearest of up to :data:`TRAINING_BANK_PHOTOS` training photos each rank a photo among the validation
photos; their mean ranks unknown photos lower than any one alone. Exports made
before it (and a bare :class:`~src.predictor.Predictor`) score with :class:`MaxSoftmax`.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACCEPT_KNOWN = 0.96  # share of validation photos of known landmarks the threshold accepts (target: 95 % on new ones)
FLOOR_SHARE = 0.05  # share of the original landmarks' photos that the similarity floor of added landmarks would turn away
FLOOR_DRAWS = 10  # random draws of k remembered photos per original landmark that the floor is measured on
TRAINING_BANK_PHOTOS = 3000  # training photos (evenly over the classes) the detector compares with: 7.7 MB in fp16 at 1,280 wide


class MaxSoftmax(nn.Module):
    """Known score = the top class probability (Hendrycks & Gimpel, 2017): the baseline, nothing to fit."""

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(logits, dim=1).max(dim=1).values


class SoftmaxAndNearest(nn.Module):
    """Known score = the mean of percentiles among validation photos of the known landmarks: of the top
    probability, of the cosine similarity to the nearest photo of ``bank`` (features of remembered
    validation photos of the known landmarks) and, when given, of the similarity to the nearest photo of
    ``training_bank`` (features of training photos). In [0, 1]; 0.5 is a typical known photo.

    Why: a photo of another landmark can fool the classifier's top probability (a white dome is
    "Hofburg"), or sit near some known photo in feature space, but less often both. Percentiles put
    the scores on one scale with nothing to tune (Sun et al., 2022 for the nearest-neighbour score): a
    photo that ranks low in one needs a high rank in the others to pass. The two banks see a photo
    differently: the network was trained on the training photos (their features are drawn tighter
    around its classes), not on the validation ones; each ranked on its own, they add up
    (``bench/openset.py``, docs/unknown-photos.md).
    ``softmax_reference``, ``nearest_reference`` and ``training_reference`` are the sorted validation values.
    ``split > 0``: features are two vectors end to end (a model with added landmarks: its base's, then
    ImageNet ones), each normalised on its own so that both count equally (:func:`unit_features`).
    """

    def __init__(self, bank: torch.Tensor, softmax_reference: torch.Tensor, nearest_reference: torch.Tensor,
                 split: int = 0, training_bank: torch.Tensor | None = None, training_reference: torch.Tensor | None = None
                 ) -> None:
        super().__init__()
        self.split: int = int(split)
        self.register_buffer("bank", unit_features(bank, self.split).half())
        self.register_buffer("softmax_reference", softmax_reference.float().sort().values)
        self.register_buffer("nearest_reference", nearest_reference.float().sort().values)
        self.register_buffer("training_bank", torch.zeros(0, bank.shape[1], dtype=torch.float16) if training_bank is None
                             else unit_features(training_bank, self.split).half())
        self.register_buffer("training_reference", torch.zeros(0) if training_reference is None
                             else training_reference.float().sort().values)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        top = F.softmax(logits.float(), dim=1).max(dim=1).values
        unit = unit_features(features, self.split)
        ranks = percentile(self.softmax_reference, top) + percentile(self.nearest_reference, _nearest_in(unit, self.bank))
        if self.training_bank.numel() == 0:
            return ranks / 2
        return (ranks + percentile(self.training_reference, _nearest_in(unit, self.training_bank))) / 3


def _nearest_in(unit: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """The highest cosine similarity of each unit-length row to an fp16 ``bank``, computed in ``unit``'s dtype.
    Converted here, per call, not once: freezing would fold a conversion of the bank alone into an fp32
    constant, twice its size in the file (the shipped transfer export would outgrow 30 MB)."""
    return (unit @ bank.to(unit.dtype).T).max(dim=1).values


class RememberedPhotos(nn.Module):
    """The photos a model with added landmarks remembers, for cosine similarities: its memory's own fp16 features (the
    base's, then ImageNet ones: :func:`unit_features` halves), the base half of the first rows read from ``as_added``
    (the validation photos as this model reads them, ``memory_as_added``), and each row's inverse half lengths.

    Why: the memory (what adding again fits on) and the detector's banks hold the same photos. Holding the model's own
    tensors, not unit-length copies, stores them once in the file: a tensor two modules hold is saved once."""

    def __init__(self, memory: torch.Tensor, split: int, as_added: torch.Tensor | None = None) -> None:
        super().__init__()
        self.split: int = int(split)
        self.register_buffer("memory", memory)  # the same tensor, not a copy
        self.register_buffer("as_added", memory[:0, :split] if as_added is None or as_added.numel() == 0 else as_added)
        own = torch.cat([self.as_added.float(), memory[len(self.as_added):, :split].float()])
        lengths = torch.stack([own.norm(dim=1), memory[:, split:].float().norm(dim=1)], dim=1)
        self.register_buffer("inverse_lengths", 1 / (lengths.clamp_min(1e-12) * math.sqrt(2.0)))

    def forward(self, unit: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The similarities of :func:`unit_features` rows to every remembered photo (as ``unit_features`` rows would
        give: both halves count half) and of their ImageNet halves alone (plain cosines), each ``(B, rows)``."""
        own, general, rows = unit[:, :self.split], unit[:, self.split:], self.as_added.shape[0]
        own_similarity = torch.cat([own @ self.as_added.to(unit.dtype).T,
                                    own @ self.memory[rows:, :self.split].to(unit.dtype).T], dim=1)
        general_similarity = (general @ self.memory[:, self.split:].to(unit.dtype).T) * self.inverse_lengths[:, 1]
        return own_similarity * self.inverse_lengths[:, 0] + general_similarity, general_similarity * 2.0


class AddedLandmarksDetector(nn.Module):
    """Known score of a model with landmarks added from a few photos, over its :class:`RememberedPhotos` (``targets``:
    their classes, below 0 for photos of no landmark). A photo the model calls one of its original landmarks is scored
    as :class:`SoftmaxAndNearest` scores (top probability and similarity to the nearest remembered photo of a landmark,
    ranked among validation photos: ``original_references``); one it calls an added landmark, by its top probability
    and its :func:`own_class_margin` (how much nearer it is to a remembered photo *of that landmark* than to any
    remembered photo of no landmark in ``compared_negatives``), each ranked among support photos held out of the fit
    (``softmax_reference``, ``margin_reference``: :func:`src.added_fit.held_out`). Either score is then ranked among the
    scores of its own held-out photos (``original_scores``: validation photos, ``added_scores``: support ones),
    so one threshold keeps the same share of both kinds; an added landmark's score is first lowered by
    ``added_offset`` when that share would let through too many held-out photos of no landmark.

    Why: with 5-20 photos an added landmark is less sure and less densely remembered than an original one
    with 100; judged by the original photos' standard most of its photos were called unknown. Photos held
    out of the fit are the only honest sample of how its new photos score. But a user's few photos are
    often alike (one visit, one angle): held out, they score higher than the landmark's other photos
    will, so a photo called an added landmark also keeps the score an original landmark's photo would
    get (the higher of the two counts). ``added_scores`` empty (too few support photos to hold any
    out): added landmarks are scored like original ones.

    Both scores are relative: a photo far from everything remembered (an animal, an object, when the
    remembered negatives hold none like it) can still be nearer to an added landmark than to any
    negative. So a photo called an added landmark must also be *close* to it: the ImageNet-feature
    similarity to the nearest remembered photo of that landmark must reach its ``added_floors`` entry
    (:func:`similarity_floor`; -2 for the original landmarks, and no floor when ``added_floors`` is empty),
    or the photo scores 0, unknown.
    """

    def __init__(self, remembered: RememberedPhotos, targets: torch.Tensor, compared_negatives: torch.Tensor,
                 num_original: int, original_references: Tuple[torch.Tensor, torch.Tensor], original_scores: torch.Tensor,
                 softmax_reference: torch.Tensor, margin_reference: torch.Tensor, added_scores: torch.Tensor,
                 added_offset: float, added_floors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.remembered = remembered
        self.split: int = remembered.split
        self.num_original: int = int(num_original)
        self.register_buffer("bank_rows", (targets >= 0).nonzero().flatten())
        self.register_buffer("bank_targets", targets[self.bank_rows].long())
        self.register_buffer("negative_rows", (compared_negatives & (targets < 0)).nonzero().flatten())
        self.register_buffer("original_softmax_reference", original_references[0].float().sort().values)
        self.register_buffer("original_nearest_reference", original_references[1].float().sort().values)
        self.register_buffer("original_scores", original_scores.float().sort().values)
        self.register_buffer("softmax_reference", softmax_reference.float().sort().values)
        self.register_buffer("margin_reference", margin_reference.float().sort().values)
        self.register_buffer("added_scores", added_scores.float().sort().values)
        self.added_offset: float = float(added_offset)
        self.register_buffer("added_floors", torch.zeros(0) if added_floors is None else added_floors.float())

    def _added_score(self, top: torch.Tensor, predicted: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
        nearest_negative = (similarity.index_select(1, self.negative_rows).max(dim=1).values if self.negative_rows.numel() > 0
                            else torch.zeros_like(top))  # a branch on a buffer: frozen, it folds away (ONNX)
        margin = own_class_margin(similarity.index_select(1, self.bank_rows), self.bank_targets, predicted, nearest_negative)
        return (percentile(self.softmax_reference, top) + percentile(self.margin_reference, margin)) / 2

    @torch.jit.export
    def added_score(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The score of a photo as one of the added landmarks: the class it is predicted as is taken to be one."""
        top, predicted = F.softmax(logits.float(), dim=1).max(dim=1)
        return self._added_score(top, predicted, self.remembered(unit_features(features, self.split))[0])

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        top, predicted = F.softmax(logits.float(), dim=1).max(dim=1)
        similarity, general = self.remembered(unit_features(features, self.split))
        nearest = similarity.index_select(1, self.bank_rows).max(dim=1).values
        original = (percentile(self.original_softmax_reference, top) + percentile(self.original_nearest_reference, nearest)) / 2
        score = percentile(self.original_scores, original)
        called_added = predicted >= self.num_original
        if self.added_scores.numel() > 0:
            added = percentile(self.added_scores, self._added_score(top, predicted, similarity) - self.added_offset)
            score = torch.where(called_added, torch.maximum(added, score), score)
        if self.added_floors.numel() == 0:
            return score
        own = nearest_of_class(general.index_select(1, self.bank_rows), self.bank_targets, predicted)
        return torch.where(called_added & (own < self.added_floors[predicted]), torch.zeros_like(score), score)


def own_class_margin(to_bank: torch.Tensor, bank_targets: torch.Tensor, classes: torch.Tensor, nearest_negative: torch.Tensor
                     ) -> torch.Tensor:
    """How much nearer each photo is to its class in ``classes`` than to any photo of no landmark, from its cosine
    similarities: to the nearest photo of that class among ``to_bank``'s (B, M; bank photos of ``bank_targets``), less
    ``nearest_negative`` (B,), that to the nearest photo of no landmark (0 when none is compared with).

    Why: a photo of no landmark that happens to lie near an added landmark's few photos mostly lies nearer
    still to some remembered street or building; a photo of the landmark does not. It costs a landmark whose
    photos the negatives hold (docs/adding-landmarks.md measures both)."""
    return nearest_of_class(to_bank, bank_targets, classes) - nearest_negative


def similarity_floor(general: torch.Tensor, targets: torch.Tensor, k: int, share: float = FLOOR_SHARE,
                     draws: int = FLOOR_DRAWS, seed: int = 0) -> float:
    """How close a photo must be to the nearest of ``k`` remembered photos of a landmark added from ``k``:
    the cosine similarity that all but ``share`` of the original landmarks' photos reach when ``k`` of
    their class are drawn at random as the remembered ones (``draws`` times per class). ``general``
    holds ImageNet features (never trained on any landmark, so the original landmarks' standard holds
    for new ones) of photos of the classes ``targets``; -2, no floor, when no class has more than one."""
    generator = torch.Generator().manual_seed(seed)
    unit = F.normalize(general.float(), dim=1)
    nearest = []
    for target in targets.unique().tolist():
        rows = (targets == target).nonzero().flatten()
        remembered = min(k, len(rows) - 1)
        for _ in range(draws if remembered > 0 else 0):
            order = rows[torch.randperm(len(rows), generator=generator)]
            nearest.append((unit[order[remembered:]] @ unit[order[:remembered]].T).max(dim=1).values)
    if not nearest:
        return -2.0
    ordered = torch.cat(nearest).sort().values
    return float(ordered[math.floor(share * len(ordered))])


def nearest_of_class(similarity: torch.Tensor, bank_targets: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Each photo's highest ``similarity`` (B, M) to a bank photo of its class in ``classes`` (B,); -2 when none."""
    return similarity.masked_fill(bank_targets.unsqueeze(0) != classes.unsqueeze(1), -2.0).max(dim=1).values


def unit_features(features: torch.Tensor, split: int = 0) -> torch.Tensor:
    """Features scaled to length 1 for cosine similarity; ``split > 0``: columns before and after it
    normalised apart (then together scaled to length 1), so neither part outweighs the other."""
    features = features.float()
    if split <= 0:
        return F.normalize(features, dim=1)
    return torch.cat([F.normalize(features[:, :split], dim=1), F.normalize(features[:, split:], dim=1)], dim=1) / math.sqrt(2.0)


def percentile(reference: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The share of the sorted ``reference`` below each of ``values``, counting ties as half (mid-ranks),
    interpolated between neighbours so that close values keep their order; 0 below it, 1 above it."""
    n = reference.numel()
    left = torch.searchsorted(reference, values)
    right = torch.searchsorted(reference, values, right=True)
    below, above = reference[(left - 1).clamp(0, n - 1)], reference[left.clamp(0, n - 1)]
    fraction = ((values - below) / (above - below).clamp_min(1e-12)).clamp(0, 1)
    position = torch.where(left == 0, torch.zeros_like(values), left - 0.5 + fraction)
    position = torch.where(left == n, torch.full_like(values, float(n)), position)
    return torch.where(right > left, (left + right).float() / 2, position) / n


def nearest_detector(bank: torch.Tensor, bank_rows: torch.Tensor, valid_features: torch.Tensor,
                     valid_logits: torch.Tensor, split: int = 0, training_bank: torch.Tensor | None = None
                     ) -> tuple[SoftmaxAndNearest, np.ndarray]:
    """A :class:`SoftmaxAndNearest` calibrated on validation photos, and their known scores (to choose the
    threshold on). ``bank_rows[i]`` is the validation photo bank row ``i`` holds (-1: none): a photo is never
    its own nearest neighbour, or the validation scores would be too high and the threshold too strict.
    ``training_bank``: features of training photos (never validation ones), or None (or empty): none.
    ``split``: see :class:`SoftmaxAndNearest`."""
    if len(bank) == 0 or len(valid_features) < 2:
        raise ValueError(f"need remembered and validation photos of known landmarks, got {len(bank)} and "
                         f"{len(valid_features)}: train with a larger validation split (--valid-size)")
    unit = unit_features(valid_features, split)
    similarity = unit @ unit_features(bank, split).half().float().T  # the detector keeps its banks in fp16
    own = bank_rows >= 0
    similarity[bank_rows[own], own.nonzero().flatten()] = -2.0  # leave one out
    top, nearest = F.softmax(valid_logits.float(), dim=1).max(dim=1).values, similarity.max(dim=1).values
    if training_bank is not None and len(training_bank) == 0:
        training_bank = None
    nearest_training = None if training_bank is None else _nearest_in(unit, unit_features(training_bank, split).half())
    detector = SoftmaxAndNearest(bank, top, nearest, split, training_bank, nearest_training)
    ranks = [percentile(detector.softmax_reference, top), percentile(detector.nearest_reference, nearest)]
    if nearest_training is not None:
        ranks.append(percentile(detector.training_reference, nearest_training))
    return detector, (sum(ranks) / len(ranks)).numpy()


def unknown_threshold(known_scores: np.ndarray, accept: float = ACCEPT_KNOWN) -> float:
    """The score that ``accept`` of ``known_scores`` (validation photos of known landmarks) reach.

    Chosen on validation photos only: choosing on test photos would make the test figures a lie.
    """
    known_scores = np.asarray(known_scores, dtype=np.float64)
    if len(known_scores) == 0:
        raise ValueError("no validation photos to choose the unknown threshold on")
    if not 0 < accept <= 1:
        raise ValueError(f"accept must be in (0, 1], got {accept}")
    return float(np.quantile(known_scores, 1 - accept, method="lower"))


def open_set_report(known_scores: np.ndarray, unknown_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """How well scores tell photos of known landmarks from other photos.

    ``auroc`` (1 = perfect ranking), ``fpr95`` (share of unknown photos accepted at the threshold
    that accepts 95 % of the known ones; pytorch-ood's FPR95TPR), and at ``threshold`` the shares
    of known and unknown photos accepted.
    """
    known = torch.as_tensor(np.asarray(known_scores, dtype=np.float32))
    unknown = torch.as_tensor(np.asarray(unknown_scores, dtype=np.float32))
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError(f"need known and unknown photos, got {len(known)} and {len(unknown)}")
    from pytorch_ood.metrics import OODMetrics  # here: exports load without it (it imports torchvision)

    metrics = OODMetrics()  # outlier scores (higher: more unknown), unknown photos labelled below 0
    metrics.update(-torch.cat([known, unknown]), torch.cat([torch.zeros(len(known)), -torch.ones(len(unknown))]).long())
    figures = metrics.compute()
    return {"auroc": round(float(figures["AUROC"]), 4), "fpr95": round(float(figures["FPR95TPR"]), 4),
            "known_accepted": round(float((known >= threshold).float().mean()), 4),
            "unknown_accepted": round(float((unknown >= threshold).float().mean()), 4),
            "known_photos": len(known), "unknown_photos": len(unknown)}
