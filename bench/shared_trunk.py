"""Adding landmarks with a shared trunk against a second network: one trained model, both designs, one run.

    python bench/shared_trunk.py --checkpoint CKPT [--shots 10] [--draws 3]

``CKPT`` is a transfer model's training checkpoint read at its backbone's native size, with the metrics JSON of its
run beside its export (``<checkpoint stem>_exported.json``: the dataset and the negatives folders it trained with).
It is exported twice with ``python -m src export`` (same dataset, validation split and negatives):

- ``shared trunk``: as every export of such a model is made (:mod:`src.shared_trunk`): a model with added landmarks
  continues the export's own ImageNet first stages with ImageNet's later ones;
- ``second network``: the same checkpoint exported with ``--second-network``, as a model read below its native size
  is: a model with added landmarks carries EfficientNet-Lite0 at 224 px beside its base.

Then ``bench/add_landmarks.py`` measures each export (``--shots``/``--draws``; written to
``bench/results/add_landmarks_shared_trunk.json`` and ``add_landmarks_second_network.json``): the new landmarks'
photos named right and accepted, the original test photos, every negatives source, the photos per second of a
model with added landmarks against its base, the file sizes and the whole ``add-landmarks`` command.
Writes both rows side by side to ``bench/results/shared_trunk.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from utils import REPO, RESULTS, write_result
from src.cli import main as cli

DESIGNS = {"shared trunk": "add_landmarks_shared_trunk", "second network": "add_landmarks_second_network"}


def export(checkpoint: Path, out: Path, metrics: dict, design: str) -> Path:
    """``checkpoint`` exported to ``out`` with the dataset and negatives of its run, in ``design``; its run's metrics
    JSON copied beside it (bench/add_landmarks.py reads the dataset and negatives there)."""
    cli(["export", str(checkpoint), "--out", str(out), "--data", metrics["data"], "--workers", "1",
         *(["--second-network"] if design == "second network" else []),
         *[argument for folder in metrics.get("negatives", []) for argument in ("--negatives", folder)]])
    out.with_suffix(".json").write_text(json.dumps(metrics))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--shots", type=int, nargs="+", default=[10])
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    metrics = json.loads(args.checkpoint.with_name(f"{args.checkpoint.stem}_exported.json").read_text())
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for design, name in DESIGNS.items():
            model = export(args.checkpoint, Path(tmp, f"{name}.pt"), metrics, design)
            subprocess.run([sys.executable, "bench/add_landmarks.py", "--model", str(model), "--name", name,
                            "--shots", *map(str, args.shots), "--draws", str(args.draws)], cwd=REPO, check=True)
            result = json.loads((RESULTS / f"{name}.json").read_text())
            never = next(row for row in result["rows"] if row["setting"] == "never trained against")
            rows[design] = {"base_megabytes": round(model.stat().st_size / 1e6, 1), "file_size_ratio": result["file_size_ratio"],
                            "photos_per_second": result["photos_per_second"],
                            "speed_ratio": round(result["photos_per_second"]["with_added_landmarks"]
                                                 / result["photos_per_second"]["base"], 3),
                            "command_seconds_10_photos": result["command_seconds_10_photos"],
                            "never_trained_against": never, "everyday_before": result["everyday_before"],
                            "other_landmarks_before": result["other_landmarks_before"]}
    write_result("shared_trunk", {"checkpoint": str(args.checkpoint), "preprocess": metrics.get("preprocess"),
                                  "valid_accuracy": metrics.get("valid_accuracy"), "designs": rows})


if __name__ == "__main__":
    main()
