"""Train a shipped model with its documented recipe and measure the run.

    python bench/train.py scratch     # -> checkpoints/original_exported.pt (+ .json)
    python bench/train.py transfer    # -> checkpoints/transfer_exported.pt (+ .json)

Runs the exact ``python -m src train`` command of the recipe (printed first), then reports the
training time, peak memory of the training process, and test top-1/top-5/per-class accuracy
from the metrics file the command writes. Set LANDMARK_DATA to the dataset and LANDMARK_NEGATIVES to
the folders of photos of no known landmark (outlier exposure); the Makefile does both from ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from utils import RESULTS, REPO, peak_memory_mb, write_result

# The shipped models: the recipes of src/recipes.py at the sizes src/preprocessing.py resolves for the data
# (128 px for landmarks10), one augmentation process so the other core trains. Only the outputs are named here.
RECIPES: dict[str, list[str]] = {
    "scratch": ["--model", "scratch", "--workers", "1",
                "--checkpoint", "checkpoints/original.pt", "--export", "checkpoints/original_exported.pt"],
    "transfer": ["--model", "mobilenet_v2", "--workers", "1",
                 "--checkpoint", "checkpoints/transfer.pt", "--export", "checkpoints/transfer_exported.pt"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=RECIPES)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more `train` options (e.g. --data DIR)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    args = parser.parse_args()
    command = [sys.executable, "-m", "src", "train", *RECIPES[args.recipe], *args.extra]
    print("$", shlex.join(["python", *command[1:]]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall = time.perf_counter() - start
    export = REPO / command[len(command) - 1 - command[::-1].index("--export") + 1]  # the last --export wins
    metrics = json.loads(export.with_suffix(".json").read_text())
    write_result(f"train_{args.recipe}", {
        "recipe": args.recipe,
        "train_command": metrics["command"],
        "train_minutes": round(metrics["train_seconds"] / 60, 1),
        "wall_minutes_with_test_and_export": round(wall / 60, 1),
        "peak_memory_mb": round(peak_memory_mb(children=True)),
        "valid_accuracy": round(metrics["valid_accuracy"], 4),
        "test_top1": round(metrics["test"]["top1"], 4),
        "test_top5": round(metrics["test"]["top5"], 4),
        "test_photos": metrics["test"]["photos"],
        "export_megabytes": metrics["export_megabytes"],
        "per_class_top1": metrics["test"]["per_class_top1"],
    }, args.results)


if __name__ == "__main__":
    main()
