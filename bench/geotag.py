"""What ``tag --geotag`` costs: photos/s of ``tag`` with and without geotagged copies, in the same run.

    python bench/geotag.py [--model checkpoints/transfer_exported.pt] [--full-size 100] [--rounds 2]

Two photo sets, both photos the model recognises (a copy is written only for a photo with a place):

- every ``landmarks10`` training and test photo (128 px) linked into one folder, so their copies go into one
  folder too, as a phone's export would;
- ``--full-size`` 12 MP JPEGs (4000×3000, quality 90) made from ``landmarks10`` test photos scaled up
  (``bench/tag.py``'s full-size photos show a landmark the shipped models do not know: none would get a copy).

Each set is tagged with the local engine without and with ``--geotag`` into a fresh output, alternately
``--rounds`` times (this machine's speed drifts); the best round of each counts. Last, one copy's milliseconds
(``write_geotagged_copy``, 20 of the 12 MP photos, best of 3) as ``tag`` writes it, trusting its own decode, and as a
caller that has not decoded the photo gets it, checked whole at 1/8 scale. Writes ``bench/results/geotag.json``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from utils import REPO, write_result
from tag import SHARED, full_size_photos, rate
from src.data import PhotoFolder
from src.export import load_exported
from src.geotag import write_geotagged_copy
from src.tagging import tag_photos


def linked_into_one_folder(folder: Path, sources: list[Path]) -> Path:
    folder.mkdir()
    for index, source in enumerate(sources):
        (folder / f"{index:05d}{source.suffix}").symlink_to(source.resolve())
    return folder


def with_and_without_copies(model_path: Path, photos: Path, work: Path, rounds: int) -> dict:
    model = load_exported(model_path)
    best, copies = {"tag": 0.0, "tag_geotag": 0.0}, 0
    for _ in range(rounds):
        for key in best:
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            summary = tag_photos(model, photos, out / "tags.csv", model_path=model_path,
                                 geotag_dir=out / "geotagged" if key == "tag_geotag" else None)
            best[key] = max(best[key], rate(summary.tagged, summary.seconds))
            copies = max(copies, summary.geotagged)
            print(f"{photos.name}: {key} {rate(summary.tagged, summary.seconds)} photos/s", flush=True)
    return {"photos": summary.tagged, "copies": copies, "tag_photos_per_s": best["tag"],
            "tag_geotag_photos_per_s": best["tag_geotag"], "ratio": round(best["tag_geotag"] / best["tag"], 2)}


def copy_ms(photos: list[Path], work: Path, decoded: bool, rounds: int = 3) -> float:
    """Milliseconds a geotagged copy of one of ``photos`` takes, best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for photo in photos:
            write_geotagged_copy(photo, work / "copies" / photo.name, 48.858370, 2.294481, decoded=decoded)
        best = min(best, (time.perf_counter() - start) / len(photos))
    return round(best * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--full-size", type=int, default=100, help="how many 12 MP JPEGs to make and tag")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = SHARED / "landmarks10"
    test = PhotoFolder(data / "test").paths
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = linked_into_one_folder(work / "landmarks10_one_folder", PhotoFolder(data / "train").paths + test)
        big = work / "full_size_12mp"
        big.mkdir()
        full_size_photos(big, args.full_size, test[:: max(1, len(test) // args.full_size)])
        results = {"landmarks10_one_folder": with_and_without_copies(args.model, small, work, args.rounds),
                   "full_size_12mp": with_and_without_copies(args.model, big, work, args.rounds)}
        sample = sorted(big.iterdir())[:20]
        results["full_size_12mp"].update(copy_ms_decoded=copy_ms(sample, work, decoded=True),
                                         copy_ms_checked=copy_ms(sample, work, decoded=False))
    write_result("geotag", {"model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
                            **results})


if __name__ == "__main__":
    main()
