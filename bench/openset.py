"""Unknown detection of exported models: how well each score tells known landmarks from other photos.

    python bench/openset.py [checkpoints/transfer_exported.pt checkpoints/original_exported.pt]

Known photos: the test split of the dataset the model was trained on (its metrics JSON says which).
Unknown photos, none of them trained or tuned on (the export's metrics JSON lists the negatives
folders it trained on; ``src.data.split_negatives`` says which half of each was held out):

- ``scenes``: the held-out half of ``../shared/data/non_landmarks`` (everyday scenes);
- ``other landmarks (held-out photos)``: the held-out half of the ``new_landmarks`` folders trained on;
- ``other landmarks (never trained on)``: the ``new_landmarks`` folders not trained on at all;
- ``everyday (held-out photos)``: the held-out half of the ``everyday`` categories trained on;
- ``everyday (categories never trained on)``: every photo of the ``everyday`` categories kept out of
  training, fitting and calibration (all of them for a model that trained on none: the left-out source);
- ``Haleakala (full-size)``: ``../shared/data/landmark_images_sample`` (a class of the canonical dataset).

Scores compared, all from one pass (``features_and_logits``): ``msp_nearest`` (the exported
``known_score``: mean percentile of the top probability, of the similarity to the nearest photo of
the export's memory and of the similarity to the nearest of its training photos;
``src.openset.SoftmaxAndNearest``), ``msp_nearest_memory`` (the same without the training photos, as
exported before), ``msp`` (the top probability), ``max_logit``,
``energy`` (logsumexp of the logits), ``knn`` (cosine similarity to the nearest of all training photos;
Sun et al., 2022) and ``rel_mahalanobis`` (relative Mahalanobis distance to the training features' class
Gaussians; Ren et al., 2021). Each score's threshold is chosen like the shipped one: the score 96 % of the
validation photos reach (``src.openset.ACCEPT_KNOWN``); the shipped score's is the export's own, and
``msp_nearest_memory``'s is chosen as the export chose it (each remembered validation photo left out of
its own nearest-photo search). Also timed: the exported
``predictor_test`` pass with and without ``known_score`` (``classify`` vs ``forward``).
Writes ``bench/results/openset.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils import REPO, RESULTS, write_result
from src.data import PhotoFolder, split_indices
from src.location import split_negatives
from src.decoding import square_batches
from src.location import list_images
from src.memory import MEMORY_PER_CLASS, rows_per_class
from src.openset import SoftmaxAndNearest, nearest_detector, open_set_report, unknown_threshold
from src.predictor import predict_photos
from src.export import load_exported

SHARED = REPO.parent / "shared" / "data"
SCORES = ("msp_nearest", "msp_nearest_memory", "msp", "max_logit", "energy", "knn", "rel_mahalanobis")
SHIPPED = "msp_nearest"


def features_and_logits(model: torch.jit.ScriptModule, paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    features, logits = [], []
    with torch.inference_mode():
        for _, images, _ in square_batches(paths, int(model.resize_size), 100):
            if images is not None:
                f, l = model.features_and_logits(images)
                features.append(f)
                logits.append(l)
    return torch.cat(features), torch.cat(logits)


class Gaussians:
    """Class-conditional Gaussians with one shared covariance on training features, and one Gaussian of
    all of them (the background) for the relative Mahalanobis distance (Ren et al., 2021)."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        features = features.double()
        self.means = torch.stack([features[targets == c].mean(0) for c in range(int(targets.max()) + 1)])
        self.background = features.mean(0)
        centred = features - self.means[targets]
        covariance = centred.T @ centred / len(features)
        self.precision = torch.linalg.pinv(covariance + 1e-3 * covariance.diagonal().mean() * torch.eye(len(covariance),
                                                                                                      dtype=torch.float64))

    def relative_mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        """Higher: closer to some class than to the background (the sign of a known-score)."""
        features = features.double()
        to_classes = features[:, None, :] - self.means[None]
        per_class = torch.einsum("bcd,de,bce->bc", to_classes, self.precision, to_classes)
        to_background = features - self.background
        background = torch.einsum("bd,de,be->b", to_background, self.precision, to_background)
        return -(per_class - background[:, None]).min(dim=1).values.float()


def scores(model: torch.jit.ScriptModule, features: torch.Tensor, logits: torch.Tensor, bank: torch.Tensor,
           gaussians: Gaussians, memory_only: SoftmaxAndNearest) -> dict[str, np.ndarray]:
    knn = (F.normalize(features, dim=1) @ bank.T).max(dim=1).values
    return {"msp_nearest": model.known_score_from_features(features).numpy(),
            "msp_nearest_memory": memory_only(features, logits).numpy(), "msp": F.softmax(logits, 1).max(1).values.numpy(),
            "max_logit": logits.max(1).values.numpy(), "energy": torch.logsumexp(logits, 1).numpy(), "knn": knn.numpy(),
            "rel_mahalanobis": gaussians.relative_mahalanobis(features).numpy()}


def unknown_sets(negatives: list[str]) -> dict[str, list[Path]]:
    trained = {Path(folder).resolve() for folder in negatives}
    landmarks = sorted(p for p in (SHARED / "new_landmarks").iterdir() if p.is_dir()) if (SHARED / "new_landmarks").is_dir() else []
    everyday = sorted(p for p in (SHARED / "everyday").iterdir() if p.is_dir()) if (SHARED / "everyday").is_dir() else []
    sets = {
        "scenes (held-out photos)": split_negatives(SHARED / "non_landmarks")[1] if (SHARED / "non_landmarks").is_dir() else [],
        "other landmarks (held-out photos)": [p for f in landmarks if f.resolve() in trained for p in split_negatives(f)[1]],
        "other landmarks (never trained on)": [p for f in landmarks if f.resolve() not in trained for p in list_images(f)],
        "everyday (held-out photos)": [p for f in everyday if f.resolve() in trained for p in split_negatives(f)[1]],
        "everyday (categories never trained on)": [p for f in everyday if f.resolve() not in trained for p in list_images(f)],
        "Haleakala (full-size)": list_images(SHARED / "landmark_images_sample") if (SHARED / "landmark_images_sample").is_dir() else [],
    }
    return {name: paths for name, paths in sets.items() if paths}


def timed_pass(model: torch.jit.ScriptModule, paths: list[Path], targets: list[int], with_score: bool) -> float:
    """Seconds of the ``predictor_test`` pass: ``classify`` (probabilities + known score) or ``forward`` alone."""
    class ForwardOnly(torch.nn.Module):  # an export as it was before known_score: forward only
        def __init__(self) -> None:
            super().__init__()
            self.resize_size, self.class_names = model.resize_size, model.class_names

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return model(images)

    start = time.perf_counter()
    predict_photos(model if with_score else ForwardOnly(), paths, targets)
    return time.perf_counter() - start


def detector_seconds(model: torch.jit.ScriptModule, features: torch.Tensor, batch_size: int = 50) -> float:
    """Seconds ``known_score`` adds to a pass over ``features``: the detector alone, batch by batch (best of 3)."""
    with torch.inference_mode():
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            for batch in features.split(batch_size):
                model.known_score_from_features(batch)
            runs.append(time.perf_counter() - start)
            start = time.perf_counter()
            for batch in features.split(batch_size):
                model.logits_from_features(batch)
            runs[-1] -= time.perf_counter() - start  # the head, which forward computes anyway
    return max(0.0, min(runs))


def measure(export: Path) -> dict:
    metrics = json.loads(export.with_suffix(".json").read_text())
    model = load_exported(export)
    data, negatives = Path(metrics["data"]), metrics.get("negatives", [])
    train_folder, test_folder = PhotoFolder(data / "train"), PhotoFolder(data / "test")
    train_indices, valid_indices, _ = split_indices(len(train_folder), len(test_folder))
    train_paths = [train_folder.paths[i] for i in train_indices]
    valid_paths = [train_folder.paths[i] for i in valid_indices]
    print(f"{export}: features of {len(train_paths)} training, {len(valid_paths)} validation and {len(test_folder)} test photos")
    train_features = features_and_logits(model, train_paths)[0]
    bank = F.normalize(train_features, dim=1)
    gaussians = Gaussians(train_features, torch.tensor([train_folder.targets[i] for i in train_indices]))
    valid_features, valid_logits = features_and_logits(model, valid_paths)
    memory_rows = rows_per_class([train_folder.targets[i] for i in valid_indices], MEMORY_PER_CLASS)  # as the export chose them
    memory_only, memory_scores = nearest_detector(valid_features[memory_rows], torch.tensor(memory_rows), valid_features,
                                                  valid_logits)
    valid = scores(model, valid_features, valid_logits, bank, gaussians, memory_only)
    test_features, test_logits = features_and_logits(model, test_folder.paths)
    known = scores(model, test_features, test_logits, bank, gaussians, memory_only)
    top1 = float((test_logits.argmax(1).numpy() == np.asarray(test_folder.targets)).mean())
    thresholds = {name: unknown_threshold(valid[name]) for name in SCORES if name not in (SHIPPED, "msp_nearest_memory")}
    thresholds[SHIPPED] = float(model.unknown_threshold)  # the export's own choice
    thresholds["msp_nearest_memory"] = unknown_threshold(memory_scores)  # leave-one-out on the memory, as exported
    rows = []
    for set_name, paths in unknown_sets(negatives).items():
        unknown = scores(model, *features_and_logits(model, paths), bank, gaussians, memory_only)
        for name in SCORES:
            rows.append({"unknown": set_name, "score": name, "shipped": name == SHIPPED,
                         **open_set_report(known[name], unknown[name], thresholds[name])})
            print(f"  {set_name:36s} {name:15s} AUROC {rows[-1]['auroc']:.4f}  FPR95 {rows[-1]['fpr95']:6.1%}  "
                  f"known accepted {rows[-1]['known_accepted']:6.1%}  unknown accepted {rows[-1]['unknown_accepted']:6.1%}")
    paths, targets = test_folder.paths, test_folder.targets
    timed_pass(model, paths[:100], targets[:100], True)  # warm-up: TorchScript optimises on the first calls
    seconds = {True: [], False: []}
    for _ in range(2):  # alternate, so drift of the machine hits both alike
        for with_score in (False, True):
            seconds[with_score].append(timed_pass(model, paths, targets, with_score))
    without, with_score = min(seconds[False]), min(seconds[True])
    detector = detector_seconds(model, test_features)
    print(f"  predictor_test: {without:.2f} s forward only, {with_score:.2f} s with known_score "
          f"({with_score / without - 1:+.1%}); the detector alone: {detector:.3f} s for the {len(test_features)} photos")
    return {"export": str(export.relative_to(REPO) if export.is_relative_to(REPO) else export), "trained_negatives": negatives, "test_top1": round(top1, 4),
            "unknown_threshold": float(model.unknown_threshold), "thresholds": thresholds,
            "predictor_test_seconds_forward_only": round(without, 2), "predictor_test_seconds_with_known_score": round(with_score, 2),
            "known_score_overhead": round(with_score / without - 1, 3), "detector_seconds": round(detector, 4), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="*", type=Path,
                        default=[Path("checkpoints/transfer_exported.pt"), Path("checkpoints/original_exported.pt")])
    parser.add_argument("--name", default="openset", help="results file name (bench/results/<name>.json)")
    args = parser.parse_args()
    measured = [measure(export) for export in args.exports]
    previous = RESULTS / f"{args.name}.json"  # models measured by an earlier run are kept, as they were
    kept = [m for m in json.loads(previous.read_text())["models"] if m["export"] not in {r["export"] for r in measured}] \
        if previous.is_file() else []
    write_result(args.name, {"models": measured + kept})


if __name__ == "__main__":
    main()
