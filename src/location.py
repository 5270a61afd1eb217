"""Where the dataset is: found from an argument, ``$LANDMARK_DATA`` or ``./landmark_images``, or downloaded.

Also lists a folder's photos (following linked folders, naming the ones it cannot read) and
fingerprints them, so caches built from the photos know when any file changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .images import IMAGE_EXTENSIONS
from .progress import tqdm

NEGATIVES_HOLDOUT = 0.5  # the share of each negatives folder never trained on, kept to measure on

DATASET_URL = "https://udacity-dlnfd.s3-us-west-1.amazonaws.com/datasets/landmark_images.zip"
DEFAULT_DATA_DIR = Path("landmark_images")
DATA_ENV_VAR = "LANDMARK_DATA"
NEGATIVES_ENV_VAR = "LANDMARK_NEGATIVES"


class DataNotFoundError(FileNotFoundError):
    """No usable dataset: the message says where we looked and how to point at one."""


def _check_dataset_dir(path: Path, origin: str) -> Path:
    missing = [split for split in ("train", "test") if not (path / split).is_dir()]
    if missing:
        raise DataNotFoundError(
            f"{path} (from {origin}) is not a dataset folder: it has no {' or '.join(f'{m}/' for m in missing)} "
            "subfolder. A dataset is an ImageFolder layout: train/<class>/<photo> and test/<class>/<photo>."
        )
    return path.resolve()


def negatives_from_env() -> list[Path]:
    """The negatives folders (photos of no known landmark, for outlier exposure) listed in
    ``$LANDMARK_NEGATIVES``, separated like PATH; none when it is unset."""
    folders = [Path(part).expanduser() for part in os.environ.get(NEGATIVES_ENV_VAR, "").split(os.pathsep) if part]
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise DataNotFoundError(f"${NEGATIVES_ENV_VAR} names folders that do not exist: {', '.join(missing)}")
    return folders


def get_data_location(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Return the dataset folder, looking in this order.

    1. ``data_dir`` when given; 2. the ``LANDMARK_DATA`` environment variable;
    3. ``./landmark_images``; 4. otherwise the canonical 50-class dataset is downloaded there
    (when ``download`` is true).
    """
    if data_dir is not None:
        return _check_dataset_dir(Path(data_dir).expanduser(), "the data_dir argument")
    if os.environ.get(DATA_ENV_VAR):
        return _check_dataset_dir(Path(os.environ[DATA_ENV_VAR]).expanduser(), f"${DATA_ENV_VAR}")
    if DEFAULT_DATA_DIR.is_dir():
        return _check_dataset_dir(DEFAULT_DATA_DIR, f"./{DEFAULT_DATA_DIR}")
    if not download:
        raise DataNotFoundError(
            f"No dataset found: pass a folder, set {DATA_ENV_VAR}=/path/to/dataset, or place it in ./{DEFAULT_DATA_DIR}."
        )
    return _check_dataset_dir(download_and_extract(), "the download")


def download_and_extract(url: str = DATASET_URL, destination: str | Path = DEFAULT_DATA_DIR) -> Path:
    """Download a zip of an ImageFolder dataset and extract it to ``destination``.

    Everything happens in a temporary folder beside ``destination`` and is moved into place
    only when complete, so an interrupted download never leaves half a dataset behind.
    """
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; remove it or point {DATA_ENV_VAR} at it.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{destination.name}-", dir=destination.parent) as tmp:
        archive = Path(tmp) / "dataset.zip"
        _download(url, archive)
        extracted = Path(tmp) / "extracted"
        try:
            with zipfile.ZipFile(archive) as zf:
                damaged = zf.testzip()  # every member's CRC: a corrupted download is caught here
                if damaged is not None:
                    raise zipfile.BadZipFile(f"member {damaged} fails its checksum")
                zf.extractall(extracted)
        except zipfile.BadZipFile as error:
            raise DataNotFoundError(f"{url} did not give a valid zip archive ({error}); download it again.") from error
        roots = [p.parent for p in extracted.rglob("train") if p.is_dir() and (p.parent / "test").is_dir()]
        if not roots:
            raise DataNotFoundError(f"The archive from {url} has no folder with train/ and test/ inside.")
        shutil.move(str(min(roots, key=lambda p: len(p.parts))), destination)
    print(f"Dataset extracted to {destination}")
    return destination


def _download(url: str, archive: Path) -> None:
    """Stream ``url`` to ``archive``; a transfer that ends before the announced size is an error, not a dataset."""
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"Downloading {url.rsplit('/', 1)[-1]}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as error:
        raise DataNotFoundError(
            f"Could not download the dataset from {url} ({getattr(error, 'reason', error)}). "
            f"Without internet, point at a local copy: set {DATA_ENV_VAR}=/path/to/dataset "
            "(a folder with train/ and test/), pass --data /path/to/dataset on the command line, "
            f"or place the dataset in ./{DEFAULT_DATA_DIR}."
        ) from error
    if total is not None and received != total:
        raise DataNotFoundError(f"The download of {url} stopped after {received:,} of {total:,} bytes; try again.")


def list_images(folder: str | Path, *, keep_unreadable: bool = False, exclude: Sequence[str | Path] = (),
                others: Counter[str] | None = None) -> list[Path]:
    """All files with a photo extension below ``folder``, sorted for reproducibility.

    Linked folders are followed (once each: no loops); folders that cannot be read are named in
    one warning instead of being skipped silently. Entries named like photos that are no regular
    file (a folder ``x.jpg``, a FIFO, a broken or looping link) are returned too with
    ``keep_unreadable``, so that a tagger gives each its error row; otherwise one warning names
    them. Folders in ``exclude`` (an output folder) are never scanned, not even through a link.
    ``others`` counts, by lower-case extension, the files left out for their name (a phone's ``.mov`` and ``.aae``
    beside its photos), hidden ones (``.DS_Store``) aside, so that a tagger can say what it did not look at.
    """
    unreadable: list[str] = []
    seen: set[str] = set()
    excluded = [os.path.realpath(path) for path in exclude]
    found: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=True, onerror=lambda error: unreadable.append(f"{error.filename} ({error.strerror})")):
        real = os.path.realpath(root)
        if real in seen or any(real == out or real.startswith(out.rstrip(os.sep) + os.sep) for out in excluded):
            dirs.clear()
            continue
        seen.add(real)
        found += [Path(root, name) for name in dirs if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
        for name in files:
            suffix = Path(name).suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                found.append(Path(root, name))
            elif others is not None and not name.startswith("."):
                others[suffix or "(no extension)"] += 1
    if unreadable:
        warnings.warn(f"{folder}: skipped {len(unreadable)} folder(s) that cannot be read: {', '.join(unreadable[:10])}",
                      stacklevel=2)
    not_files = sorted(path for path in found if not path.is_file())
    if not_files and not keep_unreadable:
        warnings.warn(f"{folder}: left out {len(not_files)} entries named like photos that are no regular files "
                      f"(folders, FIFOs, broken or looping links): {', '.join(map(str, not_files[:10]))}", stacklevel=2)
    return sorted(found if keep_unreadable else set(found) - set(not_files))


def dataset_fingerprint(folder: str | Path, paths: list[Path] | None = None) -> str:
    """A hash of the folder's path and every photo's name, size and mtime: changes when any file does.

    ``paths`` is the folder's :func:`list_images`, when the caller already has it.
    """
    folder = Path(folder).resolve()
    digest = hashlib.sha256(str(folder).encode())
    for path in list_images(folder) if paths is None else paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def split_negatives(folder: str | Path, holdout: float = NEGATIVES_HOLDOUT) -> tuple[list[Path], list[Path]]:
    """``(train, held_out)`` photos of a negatives folder, split by a hash of each photo's path below it.

    The split is the same on every machine and run and does not move when photos are added, so the
    held-out photos can measure unknown detection on photos the model never trained on.
    """
    if not 0 <= holdout <= 1:
        raise ValueError(f"holdout must be in [0, 1], got {holdout}")
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"{folder}: negatives folder not found")
    folder = Path(folder).resolve()  # as the decode cache names photos: a linked folder gives the same paths
    train: list[Path] = []
    held_out: list[Path] = []
    for path in list_images(folder):
        bucket = zlib.crc32(path.relative_to(folder).as_posix().encode("utf-8", "surrogateescape")) % 1000
        (held_out if bucket < holdout * 1000 else train).append(path)
    return train, held_out


def held_out_negatives(folders: Sequence[str | Path]) -> list[Path]:
    """The held-out photos (:func:`split_negatives`) of every negatives folder: unknown photos never trained on."""
    return [path for folder in folders for path in split_negatives(folder)[1]]
