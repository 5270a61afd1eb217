"""The default transfer recipe on landmarks it was not tuned on, as full-size and as thumbnail photos.

    python bench/sizes.py [--photos ../shared/data/new_landmarks] [--tuned 10]

``--photos`` is a folder of class folders without a train/test split (``new_landmarks``: 19
landmarks, web photos with the short side up to 256 px). Its first ``--tuned`` classes are the ones
recipe choices may look at (the size rule's ``UPSCALE_FROM`` and whole square were chosen on them); the others are held
out of every choice and only reported. Each group gets a seeded 75/25 split per class as symbolic
links in a temporary folder, and a second copy as *thumbnails* (long side at most 256 px, JPEG
quality 90, as photos saved from the web often are), written there too. Then the transfer recipe is
trained with ``python -m src train --model MODEL --data D`` and no other flag on each of the four,
and once more on the held-out thumbnails at their own size (``--eval-crop``/``--resize`` = their
median short side, what the size rule gives a network with no pretrained size). Prints each run and
writes ``bench/results/sizes.json``.

One seed is one draw of the validation split, the initial head and the augmentation, on about 250 test photos (one
photo: 0.4 points). ``--seeds 0 1`` trains the four plain commands again with ``--seed 0``, then ``--seed 1`` (same
splits and thumbnails), and writes ``bench/results/sizes_seeds.json`` instead: how far one seed's figure is from
another's.
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

from PIL import Image

from utils import REPO, RESULTS, write_result
from src.location import list_images
from src.data_config import typical_short_side

THUMBNAIL = 256  # long side of a thumbnail copy, in pixels


def split_folder(folders: list[Path], destination: Path, thumbnails: bool, test_fraction: float = 0.25,
                 seed: int = 0) -> dict[str, int]:
    """``destination/{train,test}/<class>/``: a seeded split of each folder's photos, as links or as thumbnails."""
    rng = random.Random(seed)
    counts = {"train": 0, "test": 0}
    for folder in folders:
        files = list_images(folder)
        rng.shuffle(files)
        n_test = int(len(files) * test_fraction)
        for split, part in (("test", files[:n_test]), ("train", files[n_test:])):
            (destination / split / folder.name).mkdir(parents=True, exist_ok=True)
            for path in part:
                if thumbnails:
                    with Image.open(path) as photo:
                        photo = photo.convert("RGB")
                        photo.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BICUBIC)
                        photo.save(destination / split / folder.name / f"{path.stem}.jpg", quality=90)
                else:
                    (destination / split / folder.name / path.name).symlink_to(path.resolve())
            counts[split] += len(part)
    return counts


def train(data: Path, model: str, work: Path, flags: list[str]) -> dict:
    """Train with ``python -m src train`` on ``data``; the run's figures."""
    run = Path(tempfile.mkdtemp(prefix="run", dir=work))  # each run its own folder
    export = run / "model_exported.pt"
    command = [sys.executable, "-m", "src", "train", "--data", str(data), "--model", model, "--workers", "1",
               "--checkpoint", str(run / "model.pt"), "--export", str(export), *flags]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "TQDM_DISABLE": "1"})
    metrics = json.loads(export.with_suffix(".json").read_text())
    return {"flags": " ".join(flags) or "(none)", "preprocess": metrics["preprocess"], "epochs": metrics["epochs"],
            "best_valid_loss": round(min(epoch["valid_loss"] for epoch in metrics["stage1_head_history"] + metrics["history"]), 4),
            "valid_accuracy": round(metrics["valid_accuracy"], 4), "test_top1": round(metrics["test"]["top1"], 4),
            "per_class_top1": {name: round(share, 4) for name, share in metrics["test"]["per_class_top1"].items()},
            "train_minutes": round(metrics["train_seconds"] / 60, 1), "wall_minutes": round((time.perf_counter() - start) / 60, 1)}


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """The options this bench and ``bench/recipe_steps.py`` share; each adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "new_landmarks")
    parser.add_argument("--tuned", type=int, default=10, help="the first this many classes may be tuned on; the rest are held out")
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser


def class_folders(photos: Path) -> list[Path]:
    """The class folders of ``photos``, in order: ``--tuned`` counts from the first."""
    return sorted(p for p in photos.iterdir() if p.is_dir())


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[],
                        help="train the plain commands at these seeds instead (writes sizes_seeds.json)")
    args = parser.parse_args()
    folders = class_folders(args.photos)
    groups = {"tuned": folders[:args.tuned], "held out": folders[args.tuned:]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for group, members in groups.items():
            for photos in ("as is", "thumbnails"):
                data = Path(tmp) / f"{group.replace(' ', '_')}_{photos.replace(' ', '_')}"
                counts = split_folder(members, data, thumbnails=photos == "thumbnails")
                short_side = typical_short_side(list_images(data / "train"))
                runs = [["--seed", str(seed)] for seed in args.seeds] or [[]]
                if group == "held out" and photos == "thumbnails" and not args.seeds:
                    runs.append(["--eval-crop", str(short_side), "--resize", str(short_side)])
                for flags in runs:
                    row = {"classes": group, "photos": photos, "short_side": short_side, "split": counts,
                           **train(data, args.model, Path(tmp), flags)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    write_result("sizes_seeds" if args.seeds else "sizes", {
        "photos": str(args.photos), "model": args.model, "tuned": [f.name for f in groups["tuned"]],
        "held_out": [f.name for f in groups["held out"]], "rows": rows}, args.results)


if __name__ == "__main__":
    main()
