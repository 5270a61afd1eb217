"""How fast networks run on a CPU by photos per pass, and train, under two settings of the C allocator.

    python bench/passes.py [--exports checkpoints/transfer_exported.pt checkpoints/original_exported.pt]
                           [--photos 50] [--passes 1 2 4 8 16 50] [--train scratch:128 mobilenet_v2:128 mobilenet_v2:224]
                           [--seconds 3] [--rounds 2]

Timed, each on the same random squares (a network's speed does not depend on what a photo shows):

- the ImageNet network of a model with added landmarks from a second network (``src/imagenet_features.py``:
  EfficientNet-Lite0 at 224 px, frozen, as the model holds it; it takes ``PHOTOS_PER_PASS`` photos a pass), on a
  batch of ``--photos`` split into passes of each size;
- ``classify`` of each export in ``--exports``, at its ``resize_size``, the batch split by the caller (an export
  takes the batch it is given in one pass);
- one training step (forward, backward, SGD update, channels-last as ``src/train.py`` runs it) of each
  ``--train`` network at its size, on a batch of the recipes' ``batch_size``.

Each allocator setting runs in its own child process, the settings alternating ``--rounds`` times (best round
kept), and the child's peak memory is recorded:

- ``glibc as it comes``: the C allocator as every process gets it (``BENCH_ALLOCATOR=glibc`` tells
  ``bench/utils.py`` not to set it up), mapping each block over its threshold (at most 32 MB) afresh from the
  system and handing it back when freed;
- ``freed memory kept``: :func:`~src.allocator.keep_freed_memory`, as the command line, the notebooks' training
  runs, the app and every other benchmark set the process up, so that no pass pays page faults for new memory.

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

from utils import FREED_MEMORY_KEPT, REPO, peak_memory_mb, write_result
from src.embedded_base import frozen
from src.export import open_export
from src.factory import create_model
from src.imagenet_features import GENERAL_BACKBONE, GENERAL_SIZE, PHOTOS_PER_PASS, ImageNetFeatures
from src.recipes import ScratchRecipe, TransferRecipe

# each child's environment: bench/utils.py leaves the first child's allocator as glibc comes
ALLOCATORS = {"glibc as it comes": {"BENCH_ALLOCATOR": "glibc"}, "freed memory kept": {}}
TRAIN_BATCH = max(ScratchRecipe().batch_size, TransferRecipe().batch_size)
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


def training_step_ms(model_name: str, size: int, seconds: float) -> float:
    """Milliseconds a photo of one training step of a new ``model_name`` network on :data:`TRAIN_BATCH` random
    ``size`` px photos, run for ``seconds`` after one untimed step."""
    generator = torch.Generator().manual_seed(0)
    model = create_model(model_name, 10, pretrained=False).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(TRAIN_BATCH, 3, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (TRAIN_BATCH,), generator=generator)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()

    step()
    steps, start = 0, time.perf_counter()
    while steps == 0 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return round(1000 * (time.perf_counter() - start) / (steps * TRAIN_BATCH), 2)


def child(exports: list[Path], photos: int, passes: list[int], train: list[str], seconds: float) -> dict[str, object]:
    """Every network's timings in this process (its allocator is the one its environment set), and its peak memory."""
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
    training = {}
    for spec in train:
        name, size = spec.split(":")
        training[f"{name} at {size} px, {TRAIN_BATCH} photos a step"] = training_step_ms(name, int(size), seconds)
    return {"ms_per_photo": timings, "training_ms_per_photo": training, "peak_memory_mb": round(peak_memory_mb()),
            "freed_memory_kept": FREED_MEMORY_KEPT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=Path, nargs="*",
                        default=[REPO / "checkpoints" / "transfer_exported.pt", REPO / "checkpoints" / "original_exported.pt"])
    parser.add_argument("--photos", type=int, default=50, help="photos in the batch (tag's and predict's batch size)")
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 50], help="photos per pass to time")
    parser.add_argument("--train", nargs="*", default=["scratch:128", "mobilenet_v2:128", "mobilenet_v2:224"],
                        help="networks whose training step to time, as NAME:SIZE")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds each pass size and training step runs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--results", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.exports, args.photos, args.passes, args.train, args.seconds)))
        return
    best: dict[str, dict[str, dict[str, float]]] = {}
    training: dict[str, dict[str, float]] = {}
    peaks: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, variables in ALLOCATORS.items():
            done = subprocess.run([sys.executable, __file__, "--child", "--exports", *map(str, args.exports), "--photos",
                                   str(args.photos), "--passes", *map(str, args.passes), "--train", *args.train,
                                   "--seconds", str(args.seconds)],
                                  env={**os.environ, **variables}, cwd=REPO, capture_output=True, text=True, check=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            if figures["freed_memory_kept"] != (variables.get("BENCH_ALLOCATOR") != "glibc"):  # bench/utils.py's rule
                raise SystemExit(f"{name}: the child's allocator was not as named; unset MALLOC_*, GLIBC_TUNABLES and an "
                                 "allocator in LD_PRELOAD to compare")
            for network, timings in figures["ms_per_photo"].items():
                kept = best.setdefault(network, {}).setdefault(name, {})
                kept.update({size: min(ms, kept.get(size, ms)) for size, ms in timings.items()})
                print(f"{network}, {name}: " + ", ".join(f"{size} a pass {ms:.2f} ms" for size, ms in kept.items()),
                      flush=True)
            for network, ms in figures["training_ms_per_photo"].items():
                kept_step = training.setdefault(network, {})
                kept_step[name] = min(ms, kept_step.get(name, ms))
                print(f"training {network}, {name}: {kept_step[name]:.2f} ms a photo", flush=True)
            peaks[name] = max(figures["peak_memory_mb"], peaks.get(name, 0))
    write_result("passes", {"photos": args.photos, "imagenet_photos_per_pass": PHOTOS_PER_PASS,
                            "allocator_environment": ALLOCATORS, "ms_per_photo": best, "training_batch": TRAIN_BATCH,
                            "training_ms_per_photo": training, "peak_memory_mb": peaks},
                 **({"results": args.results} if args.results else {}))


if __name__ == "__main__":
    main()
