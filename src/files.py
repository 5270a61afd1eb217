"""Writing files safely: atomic replacement, output paths checked before any work, the bounded cache folder.

Every file the package writes (checkpoints, exports, metrics, caches) goes through
:func:`atomic_write`, so an interruption never leaves half a file; outputs are checked with
:func:`check_outputs` before a long run starts, so a typo cannot destroy a model after an hour.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

CACHE_ENV_VAR = "LANDMARK_CACHE"
CACHE_LIMIT_ENV_VAR = "LANDMARK_CACHE_GB"
DEFAULT_CACHE_GB = 10.0
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


# folder -> its mtime when this process last listed or wrote to it, and the stale temporaries it held then, by name
_LISTED: dict[Path, tuple[int, dict[str, list[Path]]]] = {}


def remove_stale_temporaries(path: Path) -> None:
    """Delete ``.<name>.<pid>.tmp`` files beside ``path`` left by killed writers (their process is gone).

    The folder is listed again only when its mtime says that something else changed it since this process last
    listed or wrote to it: listed for every file, writing N files into one folder (``tag --geotag``) took time in N²."""
    folder = path.parent
    mtime = folder.stat().st_mtime_ns
    listed = _LISTED.get(folder)
    if listed is None or listed[0] != mtime:
        stale: dict[str, list[Path]] = {}
        for candidate in folder.glob(".*.tmp"):
            match = _TMP_NAME.match(candidate.name)
            if match and not _pid_alive(int(match["pid"])):
                stale.setdefault(match["name"], []).append(candidate)
        _LISTED[folder] = listed = (mtime, stale)
    for candidate in listed[1].pop(path.name, []):
        candidate.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` then rename it to ``path``: readers never see half a file, and an
    interruption or a full disk leaves the previous file intact (an OSError naming ``path``; a killed
    writer's temporary is removed by a later write of the same file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
        _LISTED[path.parent] = (path.parent.stat().st_mtime_ns, _LISTED[path.parent][1])  # the change was this write
    except OSError as error:  # name the file: a full disk's error names none
        if error.errno is None:
            raise OSError(f"{path}: {error}") from error
        raise OSError(error.errno, f"{path}: {error.strerror or error}") from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_model_name(path: Path, what: str) -> None:
    """Refuse a model path not ending in .pt: its JSON goes beside it with the suffix swapped, so ``DIR/name``
    or ``DIR/name.json`` would replace another model's JSON. A folder is left to :func:`check_outputs` to name."""
    if path.suffix != ".pt" and not path.is_dir():
        raise ValueError(f"{path}: the {what} is a TorchScript file (its JSON goes beside it as .json); name it .pt")


def check_outputs(**outputs: Path | None) -> None:
    """Refuse, before any work, outputs that collide with each other or cannot be written.

    ``outputs`` maps a name for the message (``export``, ``checkpoint``, ...) to a path; None is
    skipped. A probe file is written in each output's folder, or in the nearest folder above it that
    exists (permissions alone do not tell: root ignores them, a read-only file system does not);
    missing folders are made when the output is written, so a refused run leaves none behind.
    Raises ``ValueError`` naming both sides of a collision, or the path that cannot be written.
    """
    seen: dict[Path, str] = {}
    for name, path in outputs.items():
        if path is None:
            continue
        resolved = Path(path).expanduser().resolve()
        if resolved in seen:
            raise ValueError(f"{path}: the {name} and the {seen[resolved]} would be the same file; give them different paths")
        seen[resolved] = name
        if resolved.is_dir():
            raise ValueError(f"{path}: the {name} path is a folder; give a file name")
        existing = next(folder for folder in resolved.parents if folder.exists())
        try:
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is a file, not a folder")
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            raise ValueError(f"{path}: cannot write the {name} there ({error.strerror or error})") from None


def cache_dir() -> Path | None:
    """Where per-dataset caches live: ``$LANDMARK_CACHE`` or ``~/.cache/landmark-classifier``; None if unwritable."""
    path = Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "landmark-classifier")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"{path}: cannot create the cache folder ({error}); set {CACHE_ENV_VAR} to a writable one", stacklevel=2)
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        warnings.warn(f"{path}: cache folder is not writable; working without a cache (set {CACHE_ENV_VAR})", stacklevel=2)
        return None
    return path


def cache_limit_bytes() -> int:
    """The cache folder's size bound: ``$LANDMARK_CACHE_GB`` gigabytes (default 10). Runs that cache call it
    before any work, so a bad value is refused at once rather than after decoding every photo."""
    value = os.environ.get(CACHE_LIMIT_ENV_VAR, "")
    try:
        gigabytes = float(value) if value else DEFAULT_CACHE_GB
    except ValueError:
        gigabytes = math.nan
    if not math.isfinite(gigabytes) or gigabytes < 0:
        raise ValueError(f"${CACHE_LIMIT_ENV_VAR}={value!r} is not a number of gigabytes (0 or more, e.g. 10)")
    return int(gigabytes * 1e9)


def write_cache_file(path: Path, write: Callable[[Path], object]) -> bool:
    """Write one cache file atomically, then evict the least recently used ones beyond the size bound.

    A cache is an optimisation: a failed write (full disk, read-only folder) is a warning, not an error.
    Returns whether the file was written.
    """
    try:
        atomic_write(path, write)
    except OSError as error:
        warnings.warn(f"{path}: could not write the cache file ({error}); continuing without it", stacklevel=2)
        return False
    evict_cache(path.parent, cache_limit_bytes(), protect=path)
    return True


def evict_cache(folder: Path, limit: int, protect: Path | None = None) -> None:
    """Delete the least recently used cache files until ``folder`` holds at most ``limit`` bytes."""
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.stat().st_atime_ns)
    total = sum(p.stat().st_size for p in files)
    for path in files:
        if total <= limit:
            break
        if path == protect:
            continue
        total -= path.stat().st_size
        path.unlink(missing_ok=True)


def touch_cache_file(path: Path) -> None:
    """Mark a cache file as used now, so eviction keeps it (atime is often not updated by reads)."""
    try:
        os.utime(path)
    except OSError:
        pass
