"""The reference project's transfer recipe and ours, side by side on this machine, in one run.

    python bench/reference.py [--ours checkpoints/transfer_exported.pt]

Reference recipe (the classic project's): frozen ImageNet MobileNetV2, photos decoded from
JPEG, resized to 256 and centre-cropped to 224, one linear layer trained with Adam (lr 1e-3)
for 15 epochs on the features, then a TorchScript predictor (resize 256 -> crop 224 ->
MobileNetV2 -> linear). It is trained on the same training split as ours (validation photos
left out) and measured with the same code as ours: feature-pass throughput, training time,
test accuracy, ``predictor_test`` seconds over the test photos and one-photo latency.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from predict import SAMPLE, measure
from utils import RESULTS, peak_memory_mb, write_result
from src.data import PhotoFolder, split_indices
from src.finetune import extract_features
from src.location import get_data_location, list_images
from src.predictor import Predictor
from src.export import export_predictor, load_exported
from src.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from src.presets import ClassificationPresetEval
from src.transfer import get_model_transfer_learning


# The reference recipe's fixed preprocessing: resize 256, crop 224, ImageNet statistics.
REFERENCE_CONFIG = PreprocessConfig(eval_crop=224, resize=256, train_crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)


class _DecodedEveryTime(torch.utils.data.Dataset):
    """The reference pipeline: every photo decoded from JPEG, resized and cropped on each pass."""

    def __init__(self, folder: PhotoFolder, indices: list[int]) -> None:
        self.folder, self.indices = folder, indices
        self.transform = ClassificationPresetEval(REFERENCE_CONFIG)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, target = self.folder[self.indices[index]]
        return self.transform(image), target


def train_reference(data_dir: Path, workers: int) -> tuple[Predictor, dict]:
    train_folder = PhotoFolder(data_dir / "train")
    train_indices, _, _ = split_indices(len(train_folder), 0)  # the same training photos as ours
    model = get_model_transfer_learning("mobilenet_v2", n_classes=len(train_folder.class_names), dropout=0.0)
    loader = DataLoader(_DecodedEveryTime(train_folder, train_indices), batch_size=50, num_workers=workers)
    start = time.perf_counter()
    features, targets = extract_features(model.backbone, loader, "Reference feature pass")
    feature_seconds = time.perf_counter() - start
    head = model.head
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    loss = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(15):
        order = torch.randperm(len(features), generator=generator)
        for batch in order.split(64):
            optimizer.zero_grad()
            loss(head(features[batch]), targets[batch]).backward()
            optimizer.step()
    head_seconds = time.perf_counter() - start
    predictor = Predictor(model, train_folder.class_names, REFERENCE_CONFIG)
    return predictor, {
        "feature_pass_photos_per_second": round(len(features) / feature_seconds, 1),
        "train_minutes": round((feature_seconds + head_seconds) / 60, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, default=Path("checkpoints/transfer_exported.pt"))
    parser.add_argument("--data", help="dataset (default: $LANDMARK_DATA, ...)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    args = parser.parse_args()
    data_dir = get_data_location(args.data)
    test = PhotoFolder(data_dir / "test")
    photos = list_images(SAMPLE)[:50]

    predictor, reference = train_reference(data_dir, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        exported = load_exported(export_predictor(predictor, Path(tmp) / "reference.pt"))
        reference.update(measure(exported, test, photos))
    ours = measure(load_exported(args.ours), test, photos)
    ratios = {
        "top1_error_ratio_reference_over_ours": round((1 - reference["test_top1"]) / max(1e-9, 1 - ours["test_top1"]), 2),
        "predictor_test_speedup": round(reference["predictor_test_seconds"] / ours["predictor_test_seconds"], 1),
        "single_photo_speedup": round(reference["single_photo_top5_median_ms"] / ours["single_photo_top5_median_ms"], 1)
        if photos else None,
    }
    write_result("reference_vs_ours", {
        **{f"reference_{k}": v for k, v in reference.items() if k != "per_class_top1"},
        **{f"ours_{k}": v for k, v in ours.items() if k != "per_class_top1"},
        **ratios, "peak_memory_mb": round(peak_memory_mb()),
    }, args.results)


if __name__ == "__main__":
    main()
