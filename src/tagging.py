"""Batch tagging of a photo collection with an exported predictor (``python -m src tag``).

Every photo below a folder gets its top-k landmarks with probabilities, its ``known_score``, and
a ``landmark`` that is ``"unknown"`` when that score is below the model's ``unknown_threshold``
(or ``--threshold``); a recognised landmark comes with its place (latitude, longitude, country,
city). With ``geotag_dir``, each photo of a landmark with a place is also copied there (same
relative path) with EXIF GPS set (:mod:`src.geotag`; the original is never touched).

Results are appended to a CSV or JSON-lines file after every batch (after that batch's geotagged
copies), so an interrupted run loses at most one batch and a rerun with the same output file
skips every photo already there (tagged or found unreadable). Beside the output,
``<out>.settings.json`` records the model, top-k, threshold, places and geotag settings it was
started with (a rerun with others is refused rather than mixing tags), and ``<out>.lock`` is held
for the whole run (a second run on the same output is refused rather than tagging every photo
twice). An existing file that is not a tag output of this tool is refused untouched.
Photos are decoded in parallel worker processes (JPEG draft mode for large files).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .decoding import square_batches
from .geotag import GeotagError, write_geotagged_copy
from .images import URI_SCHEMES, file_uri_path, is_uri, photo_sizes
from .location import list_images
from .places import Place, place_key, read_places_csv
from .predictor import model_threshold, scored
from .ray_tagging import ray_scored_batches

UNKNOWN = "unknown"
GEOTAGGED = ("geotagged", "kept")  # what write_geotagged_copy reports for a copy written
FORMATS = (".csv", ".jsonl")
PLACE_FIELDS = ["latitude", "longitude", "country", "city"]
CSV_FIELDS = ["path", "landmark", "probability", "known_score", *PLACE_FIELDS, "top_k", "geotag", "error"]
CSV_HEADER = ",".join(CSV_FIELDS) + "\r\n"  # as csv.DictWriter writes it
JSONL_START = '{"path": '  # how json.dumps writes every record (path is its first key)
SETTINGS_FORMAT = "landmark-tags/2"
ENGINES = ("local", "ray")
LARGE_PHOTO_PIXELS = 2_000_000  # above this (median of a sample), decoding costs several times the model
ScoredBatch = tuple[list[int], torch.Tensor, torch.Tensor, dict[int, str]]  # indices, probabilities, known scores, errors


@dataclass
class TagSummary:
    """What one ``tag_photos`` call did."""

    tagged: int
    unknown: int
    unreadable: list[str]
    skipped_done: int
    seconds: float
    geotagged: int = 0  # copies written with GPS (or kept with their own)

    @property
    def photos_per_second(self) -> float:
        return (self.tagged + len(self.unreadable)) / self.seconds if self.seconds > 0 else 0.0


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


def _settings(model: torch.jit.ScriptModule, k: int, threshold: float, model_path: str | Path | None,
              places: dict[str, Place], geotag_dir: Path | None, overwrite_gps: bool) -> dict[str, Any]:
    """What the tags of an output depend on; without the model file, its class names stand for it."""
    names = [str(name) for name in model.class_names]
    model_sha256 = _file_sha256(model_path) if model_path is not None else hashlib.sha256(json.dumps(names).encode()).hexdigest()
    return {"format": SETTINGS_FORMAT, "model_sha256": model_sha256, "topk": k, "threshold": threshold, "class_names": names,
            "places": {name: place.to_dict() for name, place in sorted(places.items())},
            "geotag_dir": str(geotag_dir) if geotag_dir is not None else None, "overwrite_gps": overwrite_gps}


def model_places(model: torch.jit.ScriptModule, places_csv: str | Path | None = None) -> dict[str, Place]:
    """The places the exported model carries, with a user CSV's rows added or taking precedence."""
    places = {name: Place.from_dict(d) for name, d in json.loads(getattr(model, "places_json", "{}")).items()}
    if places_csv is not None:
        extra = read_places_csv(places_csv, list(model.class_names))
        places.update({name: extra[place_key(name)] for name in model.class_names if place_key(name) in extra})
    return places


def _start_or_resume(out: Path, settings: dict[str, Any]) -> None:
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
def _exclusive_run(out: Path) -> Iterator[None]:
    """Hold ``<out>.lock`` for the whole run: two runs appending to one output would tag every photo twice."""
    with _lock_file(out).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"another tag run is writing {out}: wait for it to finish or use another --out") from None
        yield


class _Writer:
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


def _tag_records(probabilities: torch.Tensor, known_scores: torch.Tensor, paths: list[Path | str], names: list[str], k: int,
                 threshold: float, places: dict[str, Place]) -> list[dict[str, Any]]:
    """One record per photo: its top-k, its landmark (``unknown`` below ``threshold``) and that landmark's place."""
    values, classes = probabilities.topk(min(k, len(names)), dim=1)
    records = []
    for path, top_values, top_classes, score in zip(paths, values.tolist(), classes.tolist(), known_scores.tolist()):
        landmark = names[top_classes[0]] if score >= threshold else UNKNOWN
        place = places.get(landmark)
        records.append({"path": str(path), "landmark": landmark, "probability": top_values[0], "known_score": score,
                        **{key: getattr(place, key) if place else None for key in PLACE_FIELDS},
                        "top_k": [[names[c], p] for c, p in zip(top_classes, top_values)], "geotag": None, "error": None})
    return records


def _error_record(path: Path | str, message: str) -> dict[str, Any]:
    return {"path": str(path), "landmark": None, "probability": None, "known_score": None,
            **dict.fromkeys(PLACE_FIELDS), "top_k": [], "geotag": None, "error": message}


def _geotag(records: list[dict[str, Any]], photos_dir: Path, geotag_dir: Path, overwrite_gps: bool) -> None:
    """Write the geotagged copy of every record with a place; its ``geotag`` field says what happened."""
    for record in records:
        if record["latitude"] is None:
            continue
        source = Path(record["path"])
        try:
            record["geotag"] = write_geotagged_copy(source, geotag_dir / source.relative_to(photos_dir),
                                                    record["latitude"], record["longitude"], overwrite_gps=overwrite_gps)
        except GeotagError as error:  # this photo cannot carry GPS; a disk error stops the run (resume retries)
            record["geotag"] = f"failed: {error}"


def _check_geotag_dir(geotag_dir: Path, photos_dir: Path) -> Path:
    """Copies must land outside the photo folder (a rerun would tag them as new photos) and vice versa."""
    geotag_dir, photos = geotag_dir.resolve(), photos_dir.resolve()
    if geotag_dir == photos or photos in geotag_dir.parents or geotag_dir in photos.parents:
        raise ValueError(f"--geotag {geotag_dir} and the photo folder {photos} overlap: choose a folder outside it")
    return geotag_dir


def model_threads(paths: list[Path], num_workers: int) -> int:
    """Threads for the model while worker processes decode: all of torch's for small photos (the model is
    the bound), the cores the decode workers leave free (at least one) for large ones (decoding is the
    bound). On 2 cores: 128 px photos 405 vs 290 photos/s with 2 threads vs 1; 12 MP JPEGs 89 vs 105."""
    cores = os.cpu_count() or 1
    workers = cores if num_workers < 0 else num_workers
    sizes = photo_sizes(paths[:: max(1, len(paths) // 20)][:20])
    if workers == 0 or len(sizes) == 0 or np.median(sizes.prod(axis=1)) < LARGE_PHOTO_PIXELS:
        return torch.get_num_threads()
    return max(1, cores - workers)


def local_scored_batches(model: torch.jit.ScriptModule, paths: list[Path], batch_size: int, num_workers: int
                         ) -> Iterator[ScoredBatch]:
    """``(indices, probabilities, known scores, {index: error})`` per batch of ``paths``: decoded in worker
    processes of this machine, scored here with :func:`model_threads` threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(paths, num_workers))
    try:
        for indices, images, errors in square_batches(paths, int(model.resize_size), batch_size, num_workers):
            if images is None:
                yield [], torch.zeros(0), torch.zeros(0), errors
                continue
            with torch.inference_mode():
                probabilities, known_scores = scored(model, images)
            yield indices, probabilities, known_scores, errors
    finally:
        torch.set_num_threads(threads)


def photos_from_list(list_file: str | Path, photos_dir: str | Path) -> list[Path | str]:
    """The photos a text file names, one per line (blank lines and ``#`` comments skipped, a UTF-8 BOM ignored):
    relative paths are below ``photos_dir``, absolute ones and ``file://`` URIs must lie inside it, and other URIs
    (``s3://bucket/key.jpg``; :data:`~src.images.URI_SCHEMES`) are read from where they are, so that a library on
    shared storage need not be walked from one machine. Paths come back below ``photos_dir`` as given, like
    :func:`~src.location.list_images` (geotagged copies keep the path below it); URIs as strings.
    Duplicates are dropped; a listed photo that does not exist gets an error row when tagged."""
    list_file, root = Path(list_file), Path(photos_dir).resolve()
    photos: dict[Path | str, None] = {}
    with list_file.open(encoding="utf-8-sig", errors="surrogateescape") as lines:
        for number, line in enumerate(lines, 1):
            entry, where = line.strip(), f"{list_file}:{number}"
            if not entry or entry.startswith("#"):
                continue
            if "\x00" in entry:
                raise ValueError(f"{where}: the line holds a NUL byte, which no file name can (is {list_file} a text file?)")
            if is_uri(entry):
                scheme = entry.split("://", 1)[0].lower()
                if scheme not in URI_SCHEMES:
                    raise ValueError(f"{where}: {entry!r}: {scheme}:// is not a storage this reads "
                                     f"(one of {', '.join(s + '://' for s in URI_SCHEMES)})")
                if scheme == "file":  # a local file: the same rule as a path
                    try:
                        local = file_uri_path(entry)
                    except ValueError as error:
                        raise ValueError(f"{where}: {error}") from None
                    _inside(where, entry, local, root, photos_dir)
                photos[entry] = None
                continue
            photos[Path(photos_dir) / _inside(where, entry, root / entry, root, photos_dir).relative_to(root)] = None
    if any(is_uri(photo) and not photo.lower().startswith("file://") for photo in photos) \
            and importlib.util.find_spec("pyarrow") is None:
        raise ValueError(f"{list_file} names URIs; reading them needs pyarrow: pip install -r requirements-scale.txt")
    return list(photos)


def _inside(where: str, entry: str, path: Path, root: Path, photos_dir: str | Path) -> Path:
    """``path`` normalised (``..`` folded, an absolute one kept), or ValueError when it lies outside ``root``."""
    path = Path(os.path.normpath(path))
    if path != root and root not in path.parents:
        raise ValueError(f"{where}: {entry!r} is not inside the photo folder {photos_dir}")
    return path


def tag_photos(model: torch.jit.ScriptModule, photos_dir: str | Path, out: str | Path, k: int = 5,
               threshold: float | None = None, batch_size: int = 50, num_workers: int = -1, *,
               model_path: str | Path | None = None, places_csv: str | Path | None = None,
               geotag_dir: str | Path | None = None, overwrite_gps: bool = False,
               from_list: str | Path | None = None, engine: str = "local", address: str | None = None) -> TagSummary:
    """Tag every photo below ``photos_dir`` into ``out`` (``.csv`` or ``.jsonl``), resuming a previous run.

    A photo whose known score is below ``threshold`` (default: the model's ``unknown_threshold``)
    is tagged ``"unknown"`` (its top-k are still written); other photos get their landmark's place
    from the model or ``places_csv``. ``geotag_dir`` receives a GPS-tagged copy of each photo with a
    place (photos that already have GPS keep it unless ``overwrite_gps``). Unreadable files are
    written with their error and listed in the summary. ``model_path`` (the exported file ``model``
    was loaded from) is hashed into ``<out>.settings.json``, so resuming with another model is
    refused; without it the class names stand for the model. ``from_list`` names the photos in a
    text file (:func:`photos_from_list`) instead of walking ``photos_dir``. ``engine="ray"`` decodes and
    scores on Ray Data (:mod:`src.ray_tagging`; ``address`` joins an existing cluster): same records,
    same output and resume, in the order batches complete.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray" and model_path is None:
        raise ValueError("the Ray engine loads the model from its file in every worker: give model_path")
    photos_dir, out = Path(photos_dir), Path(out)
    if out.suffix not in FORMATS:
        raise ValueError(f"{out}: the output must end in .csv or .jsonl")
    if not photos_dir.is_dir():
        raise FileNotFoundError(f"{photos_dir}: photo folder not found")
    threshold = model_threshold(model) if threshold is None else threshold
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    if k < 1:
        raise ValueError(f"k (top-k landmarks per photo) must be at least 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    geotag_dir = _check_geotag_dir(Path(geotag_dir), photos_dir) if geotag_dir is not None else None
    places = model_places(model, places_csv)
    settings = _settings(model, k, threshold, model_path, places, geotag_dir, overwrite_gps)
    names = settings["class_names"]
    photos = (photos_from_list(from_list, photos_dir) if from_list is not None
              else list_images(photos_dir, keep_unreadable=True, exclude=[geotag_dir] if geotag_dir is not None else []))
    if geotag_dir is not None and any(is_uri(photo) for photo in photos):
        raise ValueError(f"{from_list}: --geotag writes copies below the photo folder; photos given by URI have no "
                         "place there (tag them without --geotag)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_run(out):
        done = done_paths(out)  # refuses a foreign file before anything is written
        _start_or_resume(out, settings)
        todo = [path for path in photos if photo_key(path) not in done]
        summary = TagSummary(0, 0, [], len(photos) - len(todo), 0.0)
        writer = _Writer(out)
        start = time.perf_counter()
        batches = (ray_scored_batches(model_path, todo, int(model.resize_size), batch_size, address) if engine == "ray"
                   else local_scored_batches(model, todo, batch_size, num_workers))
        try:
            with tqdm(total=len(todo), desc="Tagging", unit="photo") as progress:
                for indices, probabilities, known_scores, errors in batches:
                    records = [_error_record(todo[i], message) for i, message in errors.items()]
                    if indices:
                        records += _tag_records(probabilities, known_scores, [todo[i] for i in indices], names, k,
                                                threshold, places)
                    if geotag_dir is not None:
                        _geotag(records, photos_dir, geotag_dir, overwrite_gps)
                    summary.unreadable += list(errors.values())
                    summary.tagged += len(indices)
                    summary.unknown += sum(record["landmark"] == UNKNOWN for record in records)
                    summary.geotagged += sum(record["geotag"] in GEOTAGGED for record in records)
                    writer.write(records)
                    progress.update(len(indices) + len(errors))
        finally:
            batches.close()  # the decode workers stop here, before the caller reports an interruption
            writer.close()
            summary.seconds = time.perf_counter() - start
    return summary
