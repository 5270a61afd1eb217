"""How long and how deep stage 2 trains on a small dataset, chosen on landmarks the recipe may look at.

    python bench/recipe_steps.py [--photos ../shared/data/new_landmarks] [--tuned 10]

The first ``--tuned`` classes of ``--photos`` (the ones ``bench/sizes.py`` calls tuned; the others stay out
of this choice) are split 75/25 per class and written as 256 px thumbnails, as ``bench/sizes.py`` does.
The transfer recipe is trained on them with ``python -m src train --model MODEL --data D`` and each
candidate's flags, and the candidates are compared by their best validation loss (the validation split
is carved from the training photos; test photos are reported, never compared). Losses within
``TOLERANCE`` of the lowest count as equal, and of those the candidate that trains fastest is chosen;
the default trained again with another seed shows how far a loss moves by chance. Prints each run and
writes ``bench/results/recipe_steps.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from utils import write_result
from sizes import argument_parser, class_folders, split_folder, train

CANDIDATES: dict[str, list[str]] = {
    "12 epochs (the landmarks10 count), last 12 stages": ["--min-steps", "0"],
    "at least 240 steps (the default), last 12 stages": [],
    "at least 480 steps, last 12 stages": ["--min-steps", "480"],
    "at least 240 steps, every stage": ["--unfreeze", "-1"],
}
SEED_REPEAT = ("the default, another seed", ["--seed", "1"])
TOLERANCE = 0.01  # validation losses closer than this to the lowest count as equal


def choose(rows: list[dict], tolerance: float = TOLERANCE) -> dict:
    """The candidate that trains fastest among those whose best validation loss is within ``tolerance`` of the lowest."""
    candidates = [row for row in rows if row["candidate"] in CANDIDATES]
    lowest = min(row["best_valid_loss"] for row in candidates)
    return min((row for row in candidates if row["best_valid_loss"] <= lowest + tolerance), key=lambda row: row["train_minutes"])


def main() -> None:
    args = argument_parser(__doc__).parse_args()
    folders = class_folders(args.photos)
    tuned = folders[:args.tuned]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "tuned_thumbnails"
        counts = split_folder(tuned, data, thumbnails=True)
        for candidate, flags in [*CANDIDATES.items(), SEED_REPEAT]:
            row = {"candidate": candidate, "split": counts, **train(data, args.model, Path(tmp), flags)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    chosen = choose(rows)
    write_result("recipe_steps", {"photos": str(args.photos), "model": args.model, "tuned": [f.name for f in tuned],
                                  "tolerance": TOLERANCE, "chosen": chosen["candidate"], "rows": rows}, args.results)


if __name__ == "__main__":
    main()
