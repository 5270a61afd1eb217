"""Compare every offline backbone, frozen and fine-tuned, and pick one by validation accuracy.

    python bench/compare_backbones.py [--train-args "--limit 3000 --epochs 1"]

Each backbone is trained with the transfer recipe of ``bench/train.py`` (same command, other
``--model``), exported to ``checkpoints/compare/``, and measured:
- **frozen**: stage 1 alone (head on cached features): its best validation accuracy and time;
- **fine-tuned**: after stage 2 (last stages unfrozen): best validation accuracy, total time;
- the exported predictor's ``predictor_test`` speed and one-photo latency (``bench/predict.py``).
The choice uses validation accuracy only, among the backbones whose predictor meets the speed
target; test accuracy is recorded for the README but never used to choose.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from predict import SAMPLE, measure
from train import RECIPES
from utils import REPO, RESULTS, write_result
from src.data import PhotoFolder
from src.location import get_data_location, list_images
from src.export import load_exported
from src.transfer import OFFLINE_BACKBONES

PREDICTOR_TEST_TARGET_SECONDS = 15.0


def _recipe_for(name: str, out: Path, overrides: list[str]) -> list[str]:
    recipe = list(RECIPES["transfer"])
    recipe[recipe.index("--model") + 1] = name
    recipe[recipe.index("--checkpoint") + 1] = str(out / f"{name}.pt")
    recipe[recipe.index("--export") + 1] = str(out / f"{name}_exported.pt")
    return recipe + overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(OFFLINE_BACKBONES))
    parser.add_argument("--out", type=Path, default=REPO / "checkpoints" / "compare")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    parser.add_argument("--train-args", default="", help='more `train` options for every backbone, e.g. "--limit 3000 --epochs 1"')
    args = parser.parse_args()
    test = PhotoFolder(get_data_location(None) / "test")
    photos = list_images(SAMPLE)[:20]
    rows = []
    for name in args.backbones:
        command = [sys.executable, "-m", "src", "train", *_recipe_for(name, args.out, shlex.split(args.train_args))]
        print("$", " ".join(["python", *command[1:]]), flush=True)
        subprocess.run(command, cwd=REPO, check=True)
        export = args.out / f"{name}_exported.pt"
        metrics = json.loads(export.with_suffix(".json").read_text())
        speed = measure(load_exported(export), test, photos, repeats=1)
        rows.append({
            "backbone": name,
            "frozen_valid_accuracy": min(metrics["stage1_head_history"], key=lambda h: h["valid_loss"])["valid_accuracy"],
            "frozen_minutes": round(metrics["stage1_seconds"] / 60, 1),
            "fine_tuned_valid_accuracy": metrics["valid_accuracy"],
            "fine_tuned_minutes": round(metrics["train_seconds"] / 60, 1),
            "test_top1": metrics["test"]["top1"],
            "predictor_test_seconds": speed["predictor_test_seconds"],
            "single_photo_top5_median_ms": speed["single_photo_top5_median_ms"],
            "export_megabytes": metrics["export_megabytes"],
            "command": metrics["command"],
        })
        print(json.dumps(rows[-1], indent=2), flush=True)
    fast = [r for r in rows if r["predictor_test_seconds"] <= PREDICTOR_TEST_TARGET_SECONDS] or rows
    best = max(fast, key=lambda r: r["fine_tuned_valid_accuracy"])
    print(f"\n{'backbone':<20}{'frozen val':>11}{'min':>6}{'tuned val':>11}{'min':>6}{'pred. s':>9}{'1 photo ms':>11}")
    for r in rows:
        print(f"{r['backbone']:<20}{r['frozen_valid_accuracy']:>11.2%}{r['frozen_minutes']:>6}"
              f"{r['fine_tuned_valid_accuracy']:>11.2%}{r['fine_tuned_minutes']:>6}{r['predictor_test_seconds']:>9}"
              f"{r['single_photo_top5_median_ms']:>11}")
    write_result("compare_backbones", {"chosen": best["backbone"], "rule": "best fine-tuned validation accuracy among "
                 f"predictors with predictor_test <= {PREDICTOR_TEST_TARGET_SECONDS:.0f} s", "rows": rows}, args.results)


if __name__ == "__main__":
    main()
