"""Which features tell new landmarks apart: the shipped export's against plain ImageNet backbones.

    python bench/new_landmark_features.py [--shots 10] [--draws 5]

Adding landmarks (``src/new_landmarks.py``) fits new rows on features; this measures which
features tell new landmarks apart: the export's own, or a general-purpose ImageNet extractor's (it
chose ``src.imagenet_features.GENERAL_BACKBONE``, which every model with added landmarks carries).
New landmarks: the folders of ``../shared/data/new_landmarks`` the shipped transfer model never
trained against (its metrics JSON lists the negatives). For each extractor, each photo's features
(centre square at the extractor's input size); ``shots`` random photos per landmark give each
landmark's mean feature (nearest class mean, cosine, no training), and the other photos are
named by the nearest mean among the new landmarks only. Mean top-1 over ``draws`` draws.

It also times, at the export's input size, the MobileNetV2 stages the transfer recipe keeps frozen
(pure ImageNet in the export too) against the rest: the share of the work a general extractor that
started from the export's own frozen stages would not repeat. Its features are the
"mobilenet_v2 ImageNet" row at that size. Writes ``bench/results/new_landmark_features.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils import REPO, write_result
from src.decoding import square_batches
from src.factory import create_model, data_defaults
from src.location import list_images
from src.memory import photo_features
from src.export import load_exported
from src.recipes import recipe_for

SHARED = REPO.parent / "shared" / "data"
EXTRACTORS = [("mobilenet_v2", 128), ("mobilenet_v2", 160), ("mobilenet_v2", 224), ("efficientnet_lite0", 128), ("efficientnet_lite0", 160),
              ("efficientnet_lite0", 192), ("efficientnet_lite0", 224), ("efficientnet_lite2", 260)]


def never_seen_landmarks(model: Path) -> tuple[list[Path], list[Path], torch.Tensor]:
    """The ``new_landmarks`` folders the export ``model`` never trained against (its metrics JSON lists its negatives
    folders), their photos and each photo's label (its folder's index)."""
    trained = {Path(folder).resolve() for folder in json.loads(model.with_suffix(".json").read_text())["negatives"]}
    folders = [f for f in sorted((SHARED / "new_landmarks").iterdir()) if f.is_dir() and f.resolve() not in trained]
    paths, labels = [], []
    for label, folder in enumerate(folders):
        photos = list_images(folder)
        paths += photos
        labels += [label] * len(photos)
    return folders, paths, torch.tensor(labels)


def per_photo(network: Callable[[torch.Tensor], torch.Tensor], name: str, size: int, paths: list[Path],
              with_mirrored: bool = False) -> torch.Tensor:
    """``network``'s output for each photo's centre square at ``size`` px, normalised as the ImageNet network ``name``
    expects; with ``with_mirrored``, then for each square mirrored left to right (each photo decoded once)."""
    defaults = data_defaults(name)
    mean, std = torch.tensor(defaults.mean).view(1, 3, 1, 1), torch.tensor(defaults.std).view(1, 3, 1, 1)
    outputs, mirrored = [], []
    with torch.inference_mode():
        for _, images, errors in square_batches(paths, size, 64):
            assert not errors, errors  # a photo left out would shift every row after it
            squares = (images.float() / 255 - mean) / std
            outputs.append(network(squares))
            if with_mirrored:
                mirrored.append(network(squares.flip(3)))
    return torch.cat(outputs + mirrored)


def imagenet_features(name: str, size: int, paths: list[Path], with_mirrored: bool = False) -> torch.Tensor:
    """The ImageNet network ``name``'s pooled features of each photo (:func:`per_photo`)."""
    return per_photo(create_model(name, 2, pretrained=True).eval().forward_features, name, size, paths, with_mirrored)


def frozen_and_trained_stages() -> tuple[nn.Sequential, nn.Sequential]:
    """MobileNetV2's ImageNet stages that the transfer recipe keeps frozen, and the later ones it trains."""
    stages = create_model("mobilenet_v2", 2, pretrained=True).backbone.features.eval()
    first = len(stages) - recipe_for("mobilenet_v2").unfreeze
    return stages[:first], stages[first:]


def nearest_mean_top1(features: torch.Tensor, labels: torch.Tensor, shots: int, draws: int) -> float:
    features = F.normalize(features.float(), dim=1)
    scores = []
    for seed in range(draws):
        generator = torch.Generator().manual_seed(seed)
        means, query, truth = [], [], []
        for label in labels.unique():
            rows = (labels == label).nonzero().flatten()
            rows = rows[torch.randperm(len(rows), generator=generator)]
            means.append(F.normalize(features[rows[:shots]].mean(0), dim=0))
            query.append(rows[shots:])
            truth += [int(label)] * (len(rows) - shots)
        predicted = (features[torch.cat(query)] @ torch.stack(means).T).argmax(1)
        scores.append(float((predicted == torch.tensor(truth)).float().mean()))
    return float(np.mean(scores))


def frozen_stage_share(size: int, batch: int = 64, repeats: int = 5) -> dict[str, float]:
    """Seconds a photo of MobileNetV2 at ``size`` px in the stages the transfer recipe keeps frozen and in the
    rest (channels-last, as the extractors run), and the frozen stages' share of the whole."""
    trunk, rest = (part.to(memory_format=torch.channels_last) for part in frozen_and_trained_stages())
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        rest(trunk(x))  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            middle = trunk(x)
        split = time.perf_counter()
        for _ in range(repeats):
            rest(middle)
        end = time.perf_counter()
    frozen_seconds, rest_seconds = (split - start) / repeats / batch, (end - split) / repeats / batch
    return {"size": size, "frozen_stages": len(trunk), "stages": len(trunk) + len(rest), "frozen_ms_per_photo": round(frozen_seconds * 1000, 3),
            "rest_ms_per_photo": round(rest_seconds * 1000, 3), "frozen_share": round(frozen_seconds / (frozen_seconds + rest_seconds), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    folders, paths, labels = never_seen_landmarks(args.model)
    rows = []
    for name, size in [("export", None), *EXTRACTORS]:
        start = time.perf_counter()
        if name == "export":
            features, _, errors = photo_features(load_exported(args.model), paths)
            assert not errors, errors  # a photo left out would shift the labels
        else:
            features = imagenet_features(name, size, paths)
        seconds = time.perf_counter() - start
        top1 = nearest_mean_top1(features, labels, args.shots, args.draws)
        label = f"{args.model.name} (its own features)" if name == "export" else f"{name} ImageNet, {size} px"
        rows.append({"features": label, "dim": features.shape[1], "top1": round(top1, 4),
                     "seconds_per_photo": round(seconds / len(paths), 4)})
        print(f"{label:45s} nearest-mean top-1 {top1:.1%} ({seconds / len(paths) * 1000:.1f} ms a photo)", flush=True)
    share = frozen_stage_share(int(load_exported(args.model).image_size))
    print(f"MobileNetV2 at {share['size']} px: its {share['frozen_stages']} frozen stages take {share['frozen_share']:.0%} "
          f"of its time ({share['frozen_ms_per_photo']} + {share['rest_ms_per_photo']} ms a photo)")
    write_result("new_landmark_features", {"new_landmarks": [f.name for f in folders], "photos": len(paths),
                                           "shots": args.shots, "draws": args.draws, "rows": rows, "frozen_stages": share})


if __name__ == "__main__":
    main()
