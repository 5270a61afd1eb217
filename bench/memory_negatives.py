"""How many negatives an export remembers: the shipped model with added landmarks when its memory keeps more photos of
no landmark.

    python bench/memory_negatives.py [--model checkpoints/transfer_exported.pt] [--negatives 500 1000 all] [--shots 10]
                                     [--max-negatives-added SHARE]

An added landmark is accepted by how much nearer a photo is to its given photos than to the nearest remembered photo of
no landmark, and its rows are fitted against those photos (docs/adding-landmarks.md). An export remembers
:data:`src.memory.MEMORY_NEGATIVES` training photos of its negatives folders, spread evenly over them. For each count
(``all``: every training photo of the negatives folders), a copy of ``--model`` (a TorchScript export) gets its memory
made again with that many (``export_copies.py``; the export's own answers do not change: its unknown detector
remembers only photos of its own landmarks). Then ``bench/add_landmarks.py`` measures each (written to
``bench/results/add_landmarks_negatives_COUNT.json``): the new landmarks' photos named right and accepted, every
negatives source, the seconds of the command, the file size and the photos per second of a model with added landmarks
against its base. Writes the rows side by side to ``bench/results/memory_negatives.json``. With
``--max-negatives-added`` (the share of held-out negatives an added landmark may let through, ``add_landmarks.py``'s
flag) other than the shipped one, the files end in ``_cap_SHARE`` and the command's seconds and the added model's file
size, which the share does not change, are not measured again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from utils import REPO, RESULTS, write_result
from export_copies import rebuilt_memory, save_copy
from src import added_fit
from src.export import open_export
from src.location import split_negatives


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--negatives", nargs="+", default=["500", "1000", "all"], help="counts of negatives, or all")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--max-negatives-added", type=float, default=added_fit.MAX_NEGATIVES_ADDED, metavar="SHARE")
    args = parser.parse_args()
    cap = "" if args.max_negatives_added == added_fit.MAX_NEGATIVES_ADDED else f"_cap_{args.max_negatives_added:g}"
    view = open_export(args.model)
    if view.base is not None:
        raise SystemExit(f"{args.model}: needs an export, not a model with added landmarks")
    metrics = json.loads(args.model.with_suffix(".json").read_text())
    available = sum(len(split_negatives(folder)[0]) for folder in metrics.get("negatives", []))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.negatives:
            memory = rebuilt_memory(view, metrics, max_negatives=available if count == "all" else int(count))
            model = save_copy(args.model, metrics, Path(tmp, f"negatives_{count}.pt"), memory_features=memory.features,
                              general_memory=memory.general, memory_targets=memory.targets, memory_as_added=memory.as_added)
            name = f"add_landmarks_negatives_{count}{cap}"
            subprocess.run([sys.executable, "bench/add_landmarks.py", "--model", str(model), "--name", name,
                            "--shots", str(args.shots), "--max-negatives-added", str(args.max_negatives_added)],
                           cwd=REPO, check=True)
            result = json.loads((RESULTS / f"{name}.json").read_text())
            rows[count] = {"remembered_negatives": int((memory.targets < 0).sum()),
                           "file_megabytes": round(model.stat().st_size / 1e6, 1),
                           "rows": [row for row in result["rows"] if row["setting"] != "all at once"],
                           **{key: result[key] for key in ("photos_per_second", "photos_per_second_one_at_a_time",
                                                           "command_seconds_10_photos", "file_size_ratio",
                                                           "other_landmarks_before", "unseen_landmarks_before")
                              if key in result}}
    write_result(f"memory_negatives{cap}", {"model": str(args.model), "negatives_available": available, "shots": args.shots,
                                            "max_negatives_added": args.max_negatives_added, "counts": rows})


if __name__ == "__main__":
    main()
