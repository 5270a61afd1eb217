"""How fast the ImageNet network of a model with added landmarks runs, by photos per pass, on a CPU.

    python bench/imagenet_passes.py [--photos 50] [--passes 1 2 4 8 16 50] [--seconds 3] [--rounds 2]

A model with added landmarks from a second network (``src/imagenet_features.py``) runs EfficientNet-Lite0 at
224 px, frozen, ``PHOTOS_PER_PASS`` photos at a time on a CPU. Each pass size is timed on the same batch of
``--photos`` random 224 px squares (the network's speed does not depend on what a photo shows), in one child process
per allocator setting, the settings alternating ``--rounds`` times (best round kept):

- ``glibc``: the C allocator as every Python process gets it, which maps each block over its threshold (at most
  32 MB) afresh from the system and hands it back when freed;
- ``glibc, no fresh maps``: the same told to keep every block in its heap (``MALLOC_MMAP_MAX_=0``,
  ``MALLOC_TRIM_THRESHOLD_``), so no pass pays page faults for new memory.

Where the second setting runs every pass size at one speed and the first does not, what costs a large pass is the
allocator, not the arithmetic. Writes ``bench/results/imagenet_passes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from utils import REPO, write_result
from src.embedded_base import frozen
from src.imagenet_features import GENERAL_BACKBONE, GENERAL_SIZE, PHOTOS_PER_PASS, ImageNetFeatures

ALLOCATORS = {"glibc": {}, "glibc, no fresh maps": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}}


def ms_per_photo(photos: int, passes: list[int], seconds: float) -> dict[int, float]:
    """Milliseconds a photo for each pass size: the frozen network as a model with added landmarks holds it, on the
    same random squares, each size run for ``seconds`` after one untimed call."""
    network = frozen(ImageNetFeatures(GENERAL_BACKBONE, GENERAL_SIZE), ["photos_per_pass"])
    squares = torch.randint(0, 256, (photos, 3, GENERAL_SIZE, GENERAL_SIZE), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    timings = {}
    with torch.inference_mode():
        for size in passes:
            network.photos_per_pass = size
            network(squares)
            calls, start = 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - start < seconds:
                network(squares)
                calls += 1
            timings[size] = round(1000 * (time.perf_counter() - start) / (calls * photos), 2)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=50, help="photos in the batch (tag's and predict's batch size)")
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 50], help="photos per pass to time")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds each pass size runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(ms_per_photo(args.photos, args.passes, args.seconds)))
        return
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, variables in ALLOCATORS.items():
            child = subprocess.run([sys.executable, __file__, "--child", "--photos", str(args.photos), "--passes",
                                    *map(str, args.passes), "--seconds", str(args.seconds)],
                                   env={**os.environ, **variables}, cwd=REPO, capture_output=True, text=True, check=True)
            timings = json.loads(child.stdout.strip().splitlines()[-1])
            best[name] = {size: min(ms, best.get(name, {}).get(size, ms)) for size, ms in timings.items()}
            print(f"{name}: " + ", ".join(f"{size} a pass {ms:.2f} ms" for size, ms in best[name].items()), flush=True)
    write_result("imagenet_passes", {"network": f"{GENERAL_BACKBONE} at {GENERAL_SIZE} px, frozen, channels-last",
                                     "photos": args.photos, "photos_per_pass_shipped": PHOTOS_PER_PASS,
                                     "allocator_environment": ALLOCATORS, "ms_per_photo": best},
                 **({"results": args.results} if args.results else {}))


if __name__ == "__main__":
    main()
