"""Speed and accuracy of an exported predictor, the way the app and `tag` use it.

    python bench/predict.py checkpoints/transfer_exported.pt
    python bench/predict.py checkpoints/original_exported.pt

Measures, in a process that loads only the TorchScript file (plus `src` for reading photos):
- ``predictor_test`` over the whole test split (decode + predict, batches of 50): seconds,
  photos/s, top-1/top-5 and per-class accuracy;
- one full-size photo -> top-5, decode included, median and 90th percentile over repeated runs
  on the canonical sample's 800x600 JPEGs (``landmark_images_sample``);
- peak memory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from utils import RESULTS, REPO, peak_memory_mb, write_result
from src.data import PhotoFolder
from src.evaluation import classification_report
from src.location import get_data_location, list_images
from src.predictor import predict_photos, top_k
from src.export import load_exported

SAMPLE = REPO.parent / "shared" / "data" / "landmark_images_sample"


def measure(model: torch.jit.ScriptModule, test: PhotoFolder, photos: list[Path], repeats: int = 3) -> dict:
    """``predictor_test`` time and accuracy over ``test``, and one-photo top-5 latency over ``photos``."""
    paths, targets = test.paths, test.targets
    predict_photos(model, paths[:50], targets[:50])  # warm-up: TorchScript optimises on the first calls
    start = time.perf_counter()
    truth, probabilities, _ = predict_photos(model, paths, targets, batch_size=50)
    seconds = time.perf_counter() - start
    report = classification_report(truth, probabilities, list(model.class_names))
    latency_ms: list[float] = []
    if photos:
        top_k(model, photos[0])
        for _ in range(repeats):
            for photo in photos:
                start = time.perf_counter()
                top_k(model, photo, 5)
                latency_ms.append((time.perf_counter() - start) * 1000)
    return {
        "predictor_test_seconds": round(seconds, 2),
        "predictor_test_photos_per_second": round(len(truth) / seconds, 1),
        "test_photos": report["photos"],
        "test_top1": round(report["top1"], 4),
        "test_top5": round(report["top5"], 4) if "top5" in report else None,  # None: fewer than 5 classes
        "single_photo_top5_median_ms": round(statistics.median(latency_ms), 2) if latency_ms else None,
        "single_photo_top5_p90_ms": round(statistics.quantiles(latency_ms, n=10)[-1], 2) if len(latency_ms) > 10 else None,
        "latency_photos": len(photos),
        "latency_photo_sizes_example": [f"{w}x{h}" for w, h in sorted({Image.open(p).size for p in photos})[:3]],
        "per_class_top1": report["per_class_top1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", help="dataset with test/ (default: $LANDMARK_DATA, ...)")
    parser.add_argument("--photos", type=Path, default=SAMPLE, help="folder of full-size photos for the latency figure")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the latency photos")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    args = parser.parse_args()
    model = load_exported(args.model)
    figures = measure(model, PhotoFolder(get_data_location(args.data) / "test"), list_images(args.photos)[:50], args.repeats)
    write_result(f"predict_{args.model.stem}", {
        "model": str(args.model), "model_megabytes": round(args.model.stat().st_size / 1e6, 2),
        **figures, "peak_memory_mb": round(peak_memory_mb()),
    }, args.results)


if __name__ == "__main__":
    main()
