"""One draw of adding landmarks from a few photos each, measured: what ``bench/add_landmarks.py`` and the
transfer notebook's few-shot section average over draws (``from bench.few_shot import few_shot_draw`` from the
repository's root)."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from src.new_landmarks import add_landmarks
from src.openset import open_set_report


# Landmarks that stand in one complex (the shared data's README: Qutub Minar, Alai Minar, Alai Darwaza and the Iron
# Pillar, Delhi): a photo of one named as another gets the right place
SITES = {"Qutub Minar": "Qutub complex", "Alai Minar": "Qutub complex", "Alai Darwaza": "Qutub complex",
         "Iron Pillar Delhi": "Qutub complex"}


def site(landmark: str) -> str:
    """Where ``landmark`` stands, for telling a wrong place from a neighbour: its complex (:data:`SITES`), else its name."""
    return SITES.get(landmark, landmark)


def accepted_elsewhere(named: Sequence[str], landmarks: Sequence[str], accepted: np.ndarray) -> np.ndarray:
    """Which photos of ``landmarks``, each ``named`` as a landmark by a model, are ``accepted`` at another
    :func:`site`: a wrong place, where a landmark of the same complex gives the right one."""
    return accepted & np.array([site(a) != site(b) for a, b in zip(named, landmarks)], dtype=bool)


def draw(photos: Mapping[str, Sequence[Path]], shots: int, seed: int, features: Mapping[Path, torch.Tensor],
         first_target: int) -> tuple[dict[str, list[Path]], list[Path], list[int]]:
    """``shots`` random photos of each landmark of ``photos`` (the *support*, ``{landmark: paths}``), and the others that
    have ``features`` (the *query*) with their targets: ``first_target`` for the first landmark, then one more each."""
    rng = random.Random(seed)
    support: dict[str, list[Path]] = {}
    query: list[Path] = []
    query_targets: list[int] = []
    for index, (name, paths) in enumerate(photos.items()):
        support[name] = rng.sample(list(paths), min(shots, len(paths) - 1))
        given = set(support[name])
        rest = [p for p in paths if p not in given and p in features]
        query += rest
        query_targets += [first_target + index] * len(rest)
    return support, query, query_targets


def few_shot_draw(base: torch.jit.ScriptModule, photos: Mapping[str, Sequence[Path]], shots: int, seed: int,
                  features: Mapping[Path, torch.Tensor], known: tuple[torch.Tensor, np.ndarray], unknown: torch.Tensor,
                  other_landmarks: Mapping[str, tuple[torch.Tensor, Sequence[str]]] | None = None,
                  other_unknown: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """One measurement of adding landmarks: ``shots`` random photos of each landmark of ``photos`` are added
    to ``base``; the others (their ``features``, computed once: :func:`~src.memory.photo_features` of
    :func:`~src.new_landmarks.combined_features`) measure it.

    ``known`` is ``(features, targets)`` of the base's test photos, ``unknown`` the features of photos of
    no landmark (combined features too), ``other_landmarks`` optionally ``{source: (features, landmark names)}``
    of photos of landmarks neither known nor added, ``other_unknown`` optionally ``{source: features}`` of more
    photos of no landmark.
    Returns new-landmark top-1 among all classes, share accepted as known and share both accepted and named
    right, the same for the original test photos, unknown detection against ``unknown``
    (:func:`~src.openset.open_set_report`), the share of each ``other_landmarks`` and ``other_unknown`` source
    accepted (``{source}_accepted``), the share of each ``other_landmarks`` source accepted as a landmark of
    another :func:`site` (``{source}_elsewhere``: a wrong place, where a neighbour in the same complex gives the
    right one), and the seconds ``add_landmarks`` took.
    """
    support, query, query_targets = draw(photos, shots, seed, features, len(base.class_names))
    start = time.perf_counter()
    model, _ = add_landmarks(base, support)
    seconds = time.perf_counter() - start

    def predicted(features_: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return model.logits_from_features(features_).argmax(1).numpy(), model.known_score_from_features(features_).numpy()

    threshold = float(model.unknown_threshold)
    query_pred, query_score = predicted(torch.stack([features[p] for p in query]))
    test_pred, test_score = predicted(known[0])
    after = open_set_report(test_score, predicted(unknown)[1], threshold)
    others: dict[str, float] = {}
    for source, (landmark_features, names) in (other_landmarks or {}).items():
        classes, scores = predicted(landmark_features)
        others[f"{source}_accepted"] = float((scores >= threshold).mean())
        others[f"{source}_elsewhere"] = float(accepted_elsewhere([model.class_names[c] for c in classes], names,
                                                                 scores >= threshold).mean())
    others.update({f"{source}_accepted": float((predicted(photos)[1] >= threshold).mean())
                   for source, photos in (other_unknown or {}).items()})
    named = query_pred == np.asarray(query_targets)
    return {"new_top1": float(named.mean()), "new_accepted": float((query_score >= threshold).mean()),
            "new_named_and_accepted": float((named & (query_score >= threshold)).mean()),
            "original_top1": float((test_pred == known[1]).mean()), "original_accepted": after["known_accepted"],
            "original_named_and_accepted": float(((test_pred == known[1]) & (test_score >= threshold)).mean()),
            "unknown_auroc": after["auroc"], "unknown_fpr95": after["fpr95"], "unknown_accepted": after["unknown_accepted"],
            **others, "unknown_threshold": threshold, "seconds": seconds, "query_photos": len(query)}
