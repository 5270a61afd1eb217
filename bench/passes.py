"""How fast networks run on a CPU by photos per pass, under two settings of the C allocator.

    python bench/passes.py [--exports checkpoints/transfer_exported.pt checkpoints/original_exported.pt]
                           [--photos 50] [--passes 1 2 4 8 16 50] [--seconds 3] [--rounds 2]

Timed, each on the same batch of ``--photos`` random squares (a network's speed does not depend on what a
photo shows), split into passes of each size:

- the ImageNet network of a model with added landmarks from a second network (``src/imagenet_features.py``:
  EfficientNet-Lite0 at 224 px, frozen, as the model holds it; it takes ``PHOTOS_PER_PASS`` photos a pass);
- ``classify`` of each export in ``--exports``, at its ``resize_size``, the batch split by the caller (an export
  takes the batch it is given in one pass).

Each allocator setting runs in its own child process, the settings alternating ``--rounds`` times (best round
kept):

- ``glibc``: the C allocator as every Python process gets it, which maps each block over its threshold (at most
  32 MB) afresh from the system and hands it back when freed;
- ``glibc, no fresh maps``: the same told to keep every block in its heap (``MALLOC_MMAP_MAX_=0``,
  ``MALLOC_TRIM_THRESHOLD_``), so no pass pays page faults for new memory.

Where the second setting runs every pass size at one speed and the first does not, what costs a large pass is the
allocator, not the arithmetic. Writes ``bench/results/passes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from utils import REPO, write_result
from src.embedded_base import frozen
from src.export import open_export
from src.imagenet_features import GENERAL_BACKBONE, GENERAL_SIZE, PHOTOS_PER_PASS, ImageNetFeatures

ALLOCATORS = {"glibc": {}, "glibc, no fresh maps": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}}
IMAGENET = f"ImageNet network ({GENERAL_BACKBONE}, {GENERAL_SIZE} px)"


def ms_per_photo(run: Callable[[torch.Tensor, int], object], size: int, photos: int, passes: list[int],
                 seconds: float) -> dict[int, float]:
    """Milliseconds a photo of ``run(squares, photos_per_pass)`` for each pass size, on the same random squares of
    ``size`` px, each size run for ``seconds`` after one untimed call."""
    squares = torch.randint(0, 256, (photos, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    timings = {}
    with torch.inference_mode():
        for per_pass in passes:
            run(squares, per_pass)
            calls, start = 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - start < seconds:
                run(squares, per_pass)
                calls += 1
            timings[per_pass] = round(1000 * (time.perf_counter() - start) / (calls * photos), 2)
    return timings


def child(exports: list[Path], photos: int, passes: list[int], seconds: float) -> dict[str, dict[int, float]]:
    """Every network's timings in this process (its allocator is the one its environment set)."""
    network = frozen(ImageNetFeatures(GENERAL_BACKBONE, GENERAL_SIZE), ["photos_per_pass"])

    def imagenet(squares: torch.Tensor, per_pass: int) -> None:
        network.photos_per_pass = per_pass
        network(squares)

    timings = {IMAGENET: ms_per_photo(imagenet, GENERAL_SIZE, photos, passes, seconds)}
    for path in exports:
        view = open_export(path)
        name = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        timings[f"{name} classify ({view.resize_size} px squares)"] = ms_per_photo(
            lambda squares, per_pass: [view.classify(part) for part in squares.split(per_pass)], view.resize_size, photos,
            passes, seconds)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=Path, nargs="*",
                        default=[REPO / "checkpoints" / "transfer_exported.pt", REPO / "checkpoints" / "original_exported.pt"])
    parser.add_argument("--photos", type=int, default=50, help="photos in the batch (tag's and predict's batch size)")
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 50], help="photos per pass to time")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds each pass size runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.exports, args.photos, args.passes, args.seconds)))
        return
    best: dict[str, dict[str, dict[str, float]]] = {}
    for _ in range(args.rounds):
        for name, variables in ALLOCATORS.items():
            done = subprocess.run([sys.executable, __file__, "--child", "--exports", *map(str, args.exports), "--photos",
                                   str(args.photos), "--passes", *map(str, args.passes), "--seconds", str(args.seconds)],
                                  env={**os.environ, **variables}, cwd=REPO, capture_output=True, text=True, check=True)
            for network, timings in json.loads(done.stdout.strip().splitlines()[-1]).items():
                kept = best.setdefault(network, {}).setdefault(name, {})
                kept.update({size: min(ms, kept.get(size, ms)) for size, ms in timings.items()})
                print(f"{network}, {name}: " + ", ".join(f"{size} a pass {ms:.2f} ms" for size, ms in kept.items()),
                      flush=True)
    write_result("passes", {"photos": args.photos, "imagenet_photos_per_pass": PHOTOS_PER_PASS,
                            "allocator_environment": ALLOCATORS, "ms_per_photo": best},
                 **({"results": args.results} if args.results else {}))


if __name__ == "__main__":
    main()
