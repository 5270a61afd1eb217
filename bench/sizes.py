"""The size rule on photos other than landmarks10: the CLI's defaults against the 128 px sizes.

    python bench/sizes.py [--photos ../shared/data/new_landmarks]

``--photos`` is a folder of class folders without a train/test split (``new_landmarks``: 19
landmarks, web photos with the short side up to 256 px). A seeded 75/25 split per class is made
of symbolic links in a temporary folder (the photos are not copied), then the transfer recipe is
trained twice with ``python -m src train``: with the sizes the rule resolves, and forced to
``landmarks10``'s 128 px. Prints and writes ``bench/results/sizes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from utils import REPO, RESULTS, write_result
from src.location import list_images

RUNS = {"rule (defaults)": [], "forced 128 px": ["--eval-crop", "128", "--resize", "128", "--train-crop", "112"]}


def split_folder(photos: Path, destination: Path, test_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """``destination/{train,test}/<class>/`` as links to a seeded split of each class of ``photos``."""
    rng = random.Random(seed)
    counts = {"train": 0, "test": 0}
    for folder in sorted(p for p in photos.iterdir() if p.is_dir()):
        files = list_images(folder)
        rng.shuffle(files)
        n_test = int(len(files) * test_fraction)
        for split, part in (("test", files[:n_test]), ("train", files[n_test:])):
            (destination / split / folder.name).mkdir(parents=True, exist_ok=True)
            for path in part:
                (destination / split / folder.name / path.name).symlink_to(path.resolve())
            counts[split] += len(part)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "new_landmarks")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        counts = split_folder(args.photos, data)
        for name, sizes in RUNS.items():
            export = Path(tmp) / f"{len(rows)}_exported.pt"
            command = [sys.executable, "-m", "src", "train", "--data", str(data), "--model", args.model, "--workers", "1",
                       "--checkpoint", str(Path(tmp) / f"{len(rows)}.pt"), "--export", str(export), *sizes]
            start = time.perf_counter()
            subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
            metrics = json.loads(export.with_suffix(".json").read_text())
            rows.append({"run": name, "preprocess": metrics["preprocess"], "valid_accuracy": round(metrics["valid_accuracy"], 4),
                         "test_top1": round(metrics["test"]["top1"], 4), "train_minutes": round(metrics["train_seconds"] / 60, 1),
                         "wall_minutes": round((time.perf_counter() - start) / 60, 1)})
            print(f"{name}: {rows[-1]}", flush=True)
    write_result("sizes", {"photos": str(args.photos), "split": counts, "model": args.model, "rows": rows}, args.results)


if __name__ == "__main__":
    main()
