"""Telling model files apart without loading them, and saying briefly why torch could not load one.

An export is a TorchScript archive and a training checkpoint a ``torch.save`` zip: both are ``.pt`` zip files, told
apart by their zip directory alone (TorchScript keeps its code beside the weights). torch's own loading errors go on
to advise torch's users (``weights_only``, miniz internals), which misleads someone holding a damaged or foreign file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO


def is_torchscript_file(file: str | Path | IO[bytes]) -> bool:
    """Whether ``file`` (a path or an open binary file) is a TorchScript archive (a zip with ``<archive>/code/``);
    nothing is loaded."""
    try:
        with zipfile.ZipFile(file) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def is_torch_file(path: str | Path) -> bool:
    """Whether ``path`` begins as ``torch.save`` writes: a zip archive, or a pickle (its legacy format)."""
    try:
        with open(path, "rb") as file:
            if zipfile.is_zipfile(file):
                return True
            file.seek(0)
            return file.read(1) == b"\x80"  # the pickle protocol's first byte
    except OSError:
        return False


def loading_error(error: Exception) -> str:
    """A loading error of torch's, its type and first sentence."""
    first_line = (str(error).strip() or "no message").splitlines()[0]
    return f"{type(error).__name__}: {first_line.split('. ')[0]}"
