"""How long a ``python -m src`` command takes as a new process, against the imports every command pays.

    python bench/cli_start.py [--model checkpoints/transfer_exported.pt] [--runs 7]

Each row is a new process, timed from start to exit; the rows take turns, ``--runs`` rounds, so the machine's
drift falls on all of them alike:

- ``predict``: ``python -m src predict PHOTO --model MODEL``, one of the app's example photos answered;
- ``models``: ``python -m src models``, a training-side command (it loads torchvision and the data stack);
- ``import torch``: the floor under every command;
- ``import torch, torchvision.models``: that floor with what the export-side commands leave out.

Prints the median and range of each and writes ``bench/results/cli_start.json``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from utils import REPO, RESULTS, write_result

PHOTO = REPO / "static_images" / "examples" / "colosseum.jpg"


def commands(model: Path) -> dict[str, list[str]]:
    return {"predict": [sys.executable, "-m", "src", "predict", str(PHOTO), "--model", str(model)],
            "models": [sys.executable, "-m", "src", "models"],
            "import torch": [sys.executable, "-c", "import torch"],
            "import torch, torchvision.models": [sys.executable, "-c", "import torch, torchvision.models"]}


def seconds(command: list[str]) -> float:
    """Wall seconds of one run of ``command`` in a new process (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("checkpoints/transfer_exported.pt"))
    parser.add_argument("--runs", type=int, default=7, help="rounds; each round runs every row once")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = commands(args.model.resolve())
    for command in rows.values():
        seconds(command)  # a first round unrecorded: the files in the page cache, the byte code written
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.runs):
        for name, command in rows.items():
            times[name].append(seconds(command))
    results = [{"row": name, "median_s": round(statistics.median(values), 2), "min_s": round(min(values), 2),
                "max_s": round(max(values), 2)} for name, values in times.items()]
    for row in results:
        print(f"{row['row']:<34} {row['median_s']:.2f} s ({row['min_s']:.2f}-{row['max_s']:.2f})")
    write_result("cli_start", {"model": str(args.model), "photo": str(PHOTO.relative_to(REPO)), "runs": args.runs,
                               "rows": results})


if __name__ == "__main__":
    main()
