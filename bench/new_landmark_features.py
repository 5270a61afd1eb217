"""Which features tell new landmarks apart: the shipped export's against plain ImageNet backbones.

    python bench/new_landmark_features.py [--shots 10] [--draws 5]

Adding landmarks (``src/new_landmarks.py``) fits new rows on features; this measures which
features tell new landmarks apart: the export's own, or a general-purpose ImageNet extractor's (it
chose ``src.imagenet_features.GENERAL_BACKBONE``, which every model with added landmarks now carries).
New landmarks: the folders of ``../shared/data/new_landmarks`` the shipped transfer model never
trained against (its metrics JSON lists the negatives). For each extractor, each photo's features
(centre square at the extractor's input size); ``shots`` random photos per landmark give each
landmark's mean feature (nearest class mean, cosine, no training), and the other photos are
named by the nearest mean among the new landmarks only. Mean top-1 over ``draws`` draws.
Writes ``bench/results/new_landmark_features.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils import REPO, write_result
from src.decoding import square_batches
from src.factory import create_model, data_defaults
from src.location import list_images
from src.new_landmarks import photo_features
from src.predictor import load_exported

SHARED = REPO.parent / "shared" / "data"
EXTRACTORS = [("mobilenet_v2", 128), ("mobilenet_v2", 224), ("efficientnet_lite0", 224), ("efficientnet_lite2", 260)]


def imagenet_features(name: str, size: int, paths: list[Path]) -> torch.Tensor:
    model = create_model(name, 2, pretrained=True).eval()
    defaults = data_defaults(name)
    mean, std = torch.tensor(defaults.mean).view(1, 3, 1, 1), torch.tensor(defaults.std).view(1, 3, 1, 1)
    features = []
    with torch.inference_mode():
        for _, images, errors in square_batches(paths, size, 64):
            assert not errors, errors
            features.append(model.forward_features((images.float() / 255 - mean) / std))
    return torch.cat(features)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    trained = {Path(folder).resolve() for folder in json.loads(args.model.with_suffix(".json").read_text())["negatives"]}
    folders = [f for f in sorted((SHARED / "new_landmarks").iterdir()) if f.is_dir() and f.resolve() not in trained]
    paths, labels = [], []
    for label, folder in enumerate(folders):
        photos = list_images(folder)
        paths += photos
        labels += [label] * len(photos)
    labels = torch.tensor(labels)
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
    write_result("new_landmark_features", {"new_landmarks": [f.name for f in folders], "photos": len(paths),
                                           "shots": args.shots, "draws": args.draws, "rows": rows})


if __name__ == "__main__":
    main()
