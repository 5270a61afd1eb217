"""A smaller second network: the shipped model with added landmarks when EfficientNet-Lite0 reads photos at fewer pixels.

    python bench/general_size.py [--model checkpoints/transfer_exported.pt] [--sizes 224 192 160] [--shots 10]

A model with added landmarks read below its backbone's native size runs EfficientNet-Lite0 at 224 px beside its base
(:mod:`src.imagenet_features`), and that network takes most of its time. For each size, a copy of ``--model`` (a
TorchScript export) gets the ImageNet features of the photos it remembers read at that size
(``export_copies.py``); the copy at the export's own size is the export itself, whose features the rebuild must reproduce.
Then ``bench/add_landmarks.py`` measures each (written to ``bench/results/add_landmarks_lite0_SIZE.json``): the new
landmarks' photos named right and accepted, every negatives source, and the photos per second of a model with added
landmarks against its base. Writes the rows side by side to ``bench/results/general_size.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from utils import REPO, RESULTS, write_result
from export_copies import rebuilt_memory, save_copy
from src.export import ExportView, open_export
from src.imagenet_features import ImageNetFeatures


def copy_at(model: Path, view: ExportView, metrics: dict, size: int, out: Path) -> Path:
    """A copy of the export ``model`` whose second network reads photos at ``size`` px (its metrics JSON beside it)."""
    memory = rebuilt_memory(view, metrics, ImageNetFeatures(str(view.module.general_backbone), size).eval())
    if not torch.equal(memory.targets, view.memory_targets):
        raise SystemExit("the export's memory holds other photos than its run's dataset and negatives give")
    return save_copy(model, metrics, out, general_memory=memory.general, memory_as_added=memory.as_added, general_size=size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 192, 160])
    parser.add_argument("--shots", type=int, default=10)
    args = parser.parse_args()
    view = open_export(args.model)
    if view.base is not None or view.general_trunk_stages > 0:
        raise SystemExit(f"{args.model}: needs an export with a second network (not one with added landmarks or a shared trunk)")
    metrics = json.loads(args.model.with_suffix(".json").read_text())
    native = int(view.module.general_size)
    shipped = rebuilt_memory(view, metrics).general
    if not torch.allclose(shipped.float(), view.general_memory.float(), atol=1e-2):
        raise SystemExit(f"{args.model}: its remembered photos read again do not give its ImageNet features")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            model = args.model if size == native else copy_at(args.model, view, metrics, size, Path(tmp, f"lite0_{size}.pt"))
            name = f"add_landmarks_lite0_{size}"
            subprocess.run([sys.executable, "bench/add_landmarks.py", "--model", str(model), "--name", name,
                            "--shots", str(args.shots)], cwd=REPO, check=True)
            result = json.loads((RESULTS / f"{name}.json").read_text())
            rows[str(size)] = {"rows": [row for row in result["rows"] if row["setting"] != "all at once"],
                               **{key: result[key] for key in ("photos_per_second", "photos_per_second_one_at_a_time",
                                                               "other_landmarks_before", "unseen_landmarks_before",
                                                               "everyday_before")}}
    write_result("general_size", {"model": str(args.model), "backbone": str(view.module.general_backbone),
                                  "shots": args.shots, "sizes": rows})


if __name__ == "__main__":
    main()
