"""The output file of ``python -m src tag``: CSV or JSON lines, appended batch by batch and resumable.

Beside the output, ``<out>.settings.json`` records what its tags depend on (a rerun with other settings is
refused rather than mixing tags) and ``<out>.lock`` is held for a whole run (a second run on the same output
is refused). A rerun skips every photo already in the file (:func:`done_paths`); a half-written last line
left by an interruption is cut first. An existing file that is not a tag output is refused untouched.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from .images import is_uri
from .places import Place

FORMATS = (".csv", ".jsonl")
PLACE_FIELDS = ["latitude", "longitude", "country", "city"]
CSV_FIELDS = ["path", "landmark", "probability", "known_score", *PLACE_FIELDS, "top_k", "geotag", "error"]
CSV_HEADER = ",".join(CSV_FIELDS) + "\r\n"  # as csv.DictWriter writes it
JSONL_START = '{"path": '  # how json.dumps writes every record (path is its first key)
SETTINGS_FORMAT = "landmark-tags/2"


def _open_text(path: Path, mode: str) -> IO[str]:
    """Open an output as UTF-8 that keeps non-UTF-8 file names (surrogates) round-tripping instead of failing.

    Lines end only at ``\\n`` (no translation either way), as :func:`_repair_last_line` cuts them.
    """
    return path.open(mode, newline="\n", encoding="utf-8", errors="surrogateescape")


def _settings_file(out: Path) -> Path:
    return out.with_name(out.name + ".settings.json")


def _lock_file(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _file_sha256(path: str | Path) -> str:
    """The model file's hash, read in 1 MB chunks so a large export is never held in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _repair_last_line(path: Path, chunk: int = 1 << 16) -> None:
    """Cut a half-written last line (the run was killed mid-write) so appending starts clean.

    Truncates in place after the last newline, found by reading the tail backwards: rewriting a
    large output would lose all of it if this run were killed in turn.
    """
    with path.open("rb") as handle:
        size = position = handle.seek(0, os.SEEK_END)
        keep = 0
        while position > 0:
            start = max(0, position - chunk)
            handle.seek(start)
            newline = handle.read(position - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
    if keep < size:
        os.truncate(path, keep)


def _not_ours(out: Path, why: str) -> ValueError:
    return ValueError(f"{out} is not a tag output of this tool ({why}); it was left untouched: choose another --out")


def _csv_paths(lines: Iterator[str], out: Path) -> Iterator[str]:
    """The paths of a CSV output; its header, as our writer wrote it, tells it from a foreign CSV."""
    header = next(lines)
    if not CSV_HEADER.startswith(header):  # a complete first line must be our header, a cut one a part of it
        raise _not_ours(out, f"its first line is not the header {CSV_HEADER.strip()}")
    for row in csv.reader(line for line in lines if line.endswith("\n")):  # a cut last row is rewritten
        if row:
            yield row[0]


def _jsonl_paths(lines: Iterator[str], out: Path) -> Iterator[str]:
    """The paths of a JSON-lines output, where every record is a JSON object with a path."""
    for number, line in enumerate(lines, 1):
        if not line.endswith("\n"):  # cut mid-write: rewritten, but it must have begun like our records
            if not (line.startswith(JSONL_START) or JSONL_START.startswith(line)):
                raise _not_ours(out, f"line {number} is not a JSON record with a path")
        elif line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or "path" not in record:
                raise _not_ours(out, f"line {number} is not a JSON record with a path")
            yield record["path"]


def done_paths(out: Path) -> set[str]:
    """The :func:`photo_key` of every photo already in an output file of a previous run (tagged or unreadable).

    Only reads, and raises ValueError for a file that is not our output, so a wrong ``--out`` is never damaged.
    """
    if not out.is_file() or out.stat().st_size == 0:
        return set()
    with _open_text(out, "r") as handle:
        read = _csv_paths if out.suffix == ".csv" else _jsonl_paths
        return {photo_key(p) for p in read(iter(handle), out)}


def photo_key(path: str | Path) -> str:
    """What identifies a photo across runs: its absolute path (the same photo however the folder was named), or its URI.

    ``os.path.realpath``, not ``Path.resolve``: a symlink loop is that photo's error row, not the run's.
    """
    return path if is_uri(path) else os.path.realpath(path)


def tag_settings(model: torch.jit.ScriptModule, k: int, threshold: float, model_path: str | Path | None,
              places: dict[str, Place], geotag_dir: Path | None, overwrite_gps: bool) -> dict[str, Any]:
    """What the tags of an output depend on; without the model file, its class names stand for it."""
    names = [str(name) for name in model.class_names]
    model_sha256 = _file_sha256(model_path) if model_path is not None else hashlib.sha256(json.dumps(names).encode()).hexdigest()
    return {"format": SETTINGS_FORMAT, "model_sha256": model_sha256, "topk": k, "threshold": threshold, "class_names": names,
            "places": {name: {key: value for key, value in place.to_dict().items() if key != "display_name"}  # not in tags
                       for name, place in sorted(places.items())},
            "geotag_dir": str(geotag_dir) if geotag_dir is not None else None, "overwrite_gps": overwrite_gps}


def start_or_resume(out: Path, settings: dict[str, Any]) -> None:
    """Record the settings of a new output, or resume one (cutting its half-written last line) only with the
    settings it was started with: other ones would silently mix two models' or thresholds' tags."""
    sidecar = _settings_file(out)
    if not out.is_file() or out.stat().st_size == 0:
        sidecar.write_text(json.dumps(settings, indent=2) + "\n")  # before the output's first byte
        return
    try:
        old = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        differences = f"its settings file {sidecar} is missing or unreadable"
    else:
        differences = ", ".join(f"{key} {old.get(key)!r} then, {value!r} now" for key, value in settings.items()
                                if old.get(key) != value)
    if differences:
        raise ValueError(f"{out} was started with other settings ({differences}): "
                         f"use another --out or delete the old output ({out} and {sidecar})")
    _repair_last_line(out)


@contextmanager
def exclusive_run(out: Path) -> Iterator[None]:
    """Hold ``<out>.lock`` for the whole run: two runs appending to one output would tag every photo twice."""
    with _lock_file(out).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another tag run is writing {out}: wait for it to finish or use another --out") from None
        yield


class TagWriter:
    """Appends records to ``out`` (CSV with a header, or JSON lines) and flushes after each batch."""

    def __init__(self, out: Path) -> None:
        new = not out.is_file() or out.stat().st_size == 0
        self.handle = _open_text(out, "a")
        self.csv = csv.DictWriter(self.handle, CSV_FIELDS) if out.suffix == ".csv" else None
        if self.csv is not None and new:
            self.csv.writeheader()

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            if self.csv is not None:
                top = ";".join(f"{name}={p:.4f}" for name, p in record["top_k"])
                numbers = {key: f"{record[key]:.4f}" for key in ("probability", "known_score") if record[key] is not None}
                self.csv.writerow({**record, "top_k": top, "probability": "", "known_score": "", **numbers})
            else:
                self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()
