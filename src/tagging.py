"""Batch tagging of a photo collection with an exported predictor (``python -m src tag``).

Every photo below a folder gets its top-k landmarks with probabilities, its ``known_score``, and
a ``landmark`` that is ``"unknown"`` when that score is below the model's ``unknown_threshold``
(or ``--threshold``); a recognised landmark comes with its place (latitude, longitude, country,
city). With ``geotag_dir``, each photo of a landmark with a place is also copied there (same
relative path) with EXIF GPS set (:mod:`src.geotag`; the original is never touched).

Results are appended to a CSV or JSON-lines file after every batch (after that batch's geotagged
copies), so an interrupted run loses at most one batch and a rerun with the same output file
skips every photo already there, tagged or found unreadable (:mod:`src.tag_output`).
Photos are decoded in parallel worker processes (JPEG draft mode for large files).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .decoding import square_batches
from .defaults import BATCH_SIZE, cpu_cores, worker_count
from .export import export_view
from .geotag import GeotagError, write_geotagged_copy
from .images import URI_SCHEMES, file_uri_path, is_uri, photo_sizes
from .location import list_images
from .places import Place, place_key, read_places_csv
from .progress import tqdm
from .ray_tagging import ray_scored_batches
from .tag_output import FORMATS, PLACE_FIELDS, TagWriter, done_paths, exclusive_run, photo_key, start_or_resume, tag_settings

UNKNOWN = "unknown"
GEOTAGGED = ("geotagged", "kept")  # what write_geotagged_copy reports for a copy written
FAILED = "failed: "  # the geotag column of a photo with a place that got no copy, before the reason
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
    not_geotagged: list[str] = field(default_factory=list)  # why each photo with a place got no copy
    other_files: dict[str, int] = field(default_factory=dict)  # files below the folder left out, by extension

    @property
    def photos_per_second(self) -> float:
        return (self.tagged + len(self.unreadable)) / self.seconds if self.seconds > 0 else 0.0


def model_places(model: torch.jit.ScriptModule, places_csv: str | Path | None = None) -> dict[str, Place]:
    """The places the exported model carries, with a user CSV's rows added or taking precedence."""
    places = dict(export_view(model).places)
    if places_csv is not None:
        extra = read_places_csv(places_csv, list(model.class_names))
        places.update({name: extra[place_key(name)] for name in model.class_names if place_key(name) in extra})
    return places


def tag_records(probabilities: torch.Tensor, known_scores: torch.Tensor, paths: list[Path | str], names: list[str], k: int,
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


def error_record(path: Path | str, message: str) -> dict[str, Any]:
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
                                                    record["latitude"], record["longitude"], overwrite_gps=overwrite_gps,
                                                    decoded=True)  # decoded just now, to classify it
        except GeotagError as error:  # this photo cannot carry GPS; a disk error stops the run (resume retries)
            record["geotag"] = f"{FAILED}{error}"


def _check_geotag_dir(geotag_dir: Path, photos_dir: Path) -> Path:
    """Copies must land outside the photo folder (a rerun would tag them as new photos) and vice versa."""
    geotag_dir, photos = geotag_dir.resolve(), photos_dir.resolve()
    if geotag_dir == photos or photos in geotag_dir.parents or geotag_dir in photos.parents:
        raise ValueError(f"--geotag {geotag_dir} and the photo folder {photos} overlap: choose a folder outside it")
    return geotag_dir


def model_threads(paths: list[Path], num_workers: int) -> int:
    """Threads for the model while worker processes decode: all of torch's for small photos (the model is
    the bound), the cores the decode workers leave free (at least one) for large ones (decoding is the
    bound; ``bench/tag.py`` measures both kinds, docs/command-line.md)."""
    cores, workers = cpu_cores(), worker_count(num_workers)
    sizes = photo_sizes(paths[:: max(1, len(paths) // 20)][:20])
    if workers == 0 or len(sizes) == 0 or np.median(sizes.prod(axis=1)) < LARGE_PHOTO_PIXELS:
        return torch.get_num_threads()
    return max(1, cores - workers)


def local_scored_batches(model: torch.jit.ScriptModule, paths: list[Path], batch_size: int, num_workers: int
                         ) -> Iterator[ScoredBatch]:
    """``(indices, probabilities, known scores, {index: error})`` per batch of ``paths``: decoded in worker
    processes of this machine, scored here with :func:`model_threads` threads."""
    view = export_view(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(paths, num_workers))
    try:
        for indices, images, errors in square_batches(paths, view.resize_size, batch_size, num_workers):
            if images is None:
                yield [], torch.zeros(0), torch.zeros(0), errors
                continue
            with torch.inference_mode():
                probabilities, known_scores = view.classify(images)
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
    if not list_file.is_file():
        raise ValueError(f"{list_file}: {'a folder' if list_file.is_dir() else 'not found'}; --from-list takes a text "
                         "file naming one photo per line")
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
               threshold: float | None = None, batch_size: int = BATCH_SIZE, num_workers: int = -1, *,
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
    if photos_dir.is_file():
        raise NotADirectoryError(f"{photos_dir}: a file, not a folder of photos (`predict {photos_dir}` answers one photo)")
    if not photos_dir.is_dir():
        raise FileNotFoundError(f"{photos_dir}: photo folder not found")
    if threshold is not None and not 0 <= threshold <= 1:  # known scores lie there: 2 would make every photo unknown
        raise ValueError(f"threshold must be a known score from 0 to 1, got {threshold}")
    threshold = export_view(model).unknown_threshold if threshold is None else threshold
    if not math.isfinite(threshold):
        raise ValueError(f"the model's unknown_threshold must be a finite number, got {threshold}")
    if k < 1:
        raise ValueError(f"k (top-k landmarks per photo) must be at least 1, got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    geotag_dir = _check_geotag_dir(Path(geotag_dir), photos_dir) if geotag_dir is not None else None
    places = model_places(model, places_csv)
    settings = tag_settings(model, k, threshold, model_path, places, geotag_dir, overwrite_gps)
    names = settings["class_names"]
    others: Counter[str] = Counter()
    photos = (photos_from_list(from_list, photos_dir) if from_list is not None
              else list_images(photos_dir, keep_unreadable=True, exclude=[geotag_dir] if geotag_dir is not None else [],
                               others=others))
    if geotag_dir is not None and any(is_uri(photo) for photo in photos):
        raise ValueError(f"{from_list}: --geotag writes copies below the photo folder; photos given by URI have no "
                         "place there (tag them without --geotag)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_run(out):
        done = done_paths(out)  # refuses a foreign file before anything is written
        start_or_resume(out, settings)
        todo = [path for path in photos if photo_key(path) not in done]
        other_files = dict(sorted(others.items(), key=lambda item: (-item[1], item[0])))  # most first, then by name
        summary = TagSummary(0, 0, [], len(photos) - len(todo), 0.0, other_files=other_files)
        writer = TagWriter(out)
        start = time.perf_counter()
        batches = (ray_scored_batches(model_path, todo, int(model.resize_size), batch_size, address) if engine == "ray"
                   else local_scored_batches(model, todo, batch_size, num_workers))
        try:
            with tqdm(total=len(todo), desc="Tagging", unit="photo") as progress:
                for indices, probabilities, known_scores, errors in batches:
                    records = [error_record(todo[i], message) for i, message in errors.items()]
                    if indices:
                        records += tag_records(probabilities, known_scores, [todo[i] for i in indices], names, k,
                                               threshold, places)
                    if geotag_dir is not None:
                        _geotag(records, photos_dir, geotag_dir, overwrite_gps)
                    summary.unreadable += list(errors.values())
                    summary.tagged += len(indices)
                    summary.unknown += sum(record["landmark"] == UNKNOWN for record in records)
                    summary.geotagged += sum(record["geotag"] in GEOTAGGED for record in records)
                    summary.not_geotagged += [record["geotag"].removeprefix(FAILED) for record in records
                                              if (record["geotag"] or "").startswith(FAILED)]
                    writer.write(records)
                    progress.update(len(indices) + len(errors))
        finally:
            batches.close()  # the decode workers stop here, before the caller reports an interruption
            writer.close()
            summary.seconds = time.perf_counter() - start
    return summary
