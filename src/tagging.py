"""Batch tagging of a photo collection with an exported predictor (``python -m src tag``).

Every photo below a folder gets its top-k landmarks with probabilities, and a ``landmark`` that
is ``"unknown"`` when the best probability is below a threshold. Results are appended to a CSV
or JSON-lines file after every batch, so an interrupted run loses at most one batch and a rerun
with the same output file skips every photo already there (tagged or found unreadable).
Photos are decoded in parallel worker processes (JPEG draft mode for large files).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .cache import square_batches
from .helpers import list_images

UNKNOWN = "unknown"
FORMATS = (".csv", ".jsonl")
CSV_FIELDS = ["path", "landmark", "probability", "top_k", "error"]


@dataclass
class TagSummary:
    """What one ``tag_photos`` call did."""

    tagged: int
    unknown: int
    unreadable: list[str]
    skipped_done: int
    seconds: float

    @property
    def photos_per_second(self) -> float:
        return (self.tagged + len(self.unreadable)) / self.seconds if self.seconds > 0 else 0.0


def _repair_last_line(path: Path) -> None:
    """Cut a half-written last line (the run was killed mid-write) so appending starts clean."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def done_paths(out: Path) -> set[str]:
    """Absolute paths of the photos already in an output file of a previous run (tagged or unreadable)."""
    if not out.is_file():
        return set()
    _repair_last_line(out)
    with out.open(newline="") as handle:
        if out.suffix == ".csv":
            paths = [row["path"] for row in csv.DictReader(handle)]
        else:
            paths = [json.loads(line)["path"] for line in handle if line.strip()]
    return {str(Path(p).resolve()) for p in paths}  # the same photo however the folder was named


class _Writer:
    """Appends records to ``out`` (CSV with a header, or JSON lines) and flushes after each batch."""

    def __init__(self, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.is_file() or out.stat().st_size == 0
        self.handle = out.open("a", newline="")
        self.csv = csv.DictWriter(self.handle, CSV_FIELDS) if out.suffix == ".csv" else None
        if self.csv is not None and new:
            self.csv.writeheader()

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            if self.csv is not None:
                top = ";".join(f"{name}={p:.4f}" for name, p in record["top_k"])
                self.csv.writerow({**record, "top_k": top, "probability": f"{record['probability']:.4f}"
                                   if record["probability"] is not None else ""})
            else:
                self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def tag_photos(model: torch.jit.ScriptModule, photos_dir: str | Path, out: str | Path, k: int = 5,
               threshold: float = 0.5, batch_size: int = 50, num_workers: int = -1) -> TagSummary:
    """Tag every photo below ``photos_dir`` into ``out`` (``.csv`` or ``.jsonl``), resuming a previous run.

    A photo whose best probability is below ``threshold`` is tagged ``"unknown"`` (its top-k
    are still written). Unreadable files are written with their error and listed in the summary.
    """
    photos_dir, out = Path(photos_dir), Path(out)
    if out.suffix not in FORMATS:
        raise ValueError(f"{out}: the output must end in .csv or .jsonl")
    if not photos_dir.is_dir():
        raise FileNotFoundError(f"{photos_dir}: photo folder not found")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    done = done_paths(out)
    photos = list_images(photos_dir)
    todo = [path for path in photos if str(path.resolve()) not in done]
    names = list(model.class_names)
    summary = TagSummary(0, 0, [], len(photos) - len(todo), 0.0)
    writer = _Writer(out)
    start = time.perf_counter()
    try:
        with torch.inference_mode(), tqdm(total=len(todo), desc="Tagging", unit="photo") as progress:
            for indices, images, errors in square_batches(todo, int(model.resize_size), batch_size, num_workers):
                records = [{"path": str(todo[i]), "landmark": None, "probability": None, "top_k": [], "error": message}
                           for i, message in errors.items()]
                summary.unreadable += list(errors.values())
                if images is not None:
                    values, classes = model(images).topk(min(k, len(names)), dim=1)
                    for i, top_values, top_classes in zip(indices, values.tolist(), classes.tolist()):
                        landmark = names[top_classes[0]] if top_values[0] >= threshold else UNKNOWN
                        summary.unknown += landmark == UNKNOWN
                        records.append({"path": str(todo[i]), "landmark": landmark, "probability": top_values[0],
                                        "top_k": [[names[c], p] for c, p in zip(top_classes, top_values)], "error": None})
                    summary.tagged += len(indices)
                writer.write(records)
                progress.update(len(indices) + len(errors))
    finally:
        writer.close()
        summary.seconds = time.perf_counter() - start
    return summary
