"""Decode-once image cache: the photos of a split as one uint8 tensor ``(N, 3, S, S)``.

Decoding JPEGs costs more CPU than a small CNN's training step, so it is done once per dataset
and size rather than once per epoch: every photo is decoded into its ``S``x``S`` centre square
(:func:`~src.decoding.square_batches`: what evaluation does anyway), and the result is saved
under :func:`~src.files.cache_dir` (least recently used files are evicted beyond
``$LANDMARK_CACHE_GB``, default 10 GB). The file is named by the photos' fingerprint (names,
sizes, modification times) and ``S``, so adding, removing or editing a photo makes a new cache
instead of silently reusing a stale one. Augmentation then runs on these tensors.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .decoding import square_batches
from .defaults import worker_count
from .files import cache_dir, cache_limit_bytes, touch_cache_file, write_cache_file
from .location import dataset_fingerprint
from .progress import tqdm

CACHE_FORMAT = "decoded-images/2"  # 2: JPEGs draft-decoded to twice the size (src.images.DRAFT_MARGIN)


def _decode_all(paths: list[Path], size: int, num_workers: int) -> tuple[torch.Tensor, dict[int, str]]:
    images = torch.zeros(len(paths), 3, size, size, dtype=torch.uint8)
    errors: dict[int, str] = {}
    with tqdm(total=len(paths), desc=f"Decoding photos once ({size} px)", leave=False) as progress:
        for indices, squares, batch_errors in square_batches(paths, size, num_workers=num_workers):
            if squares is not None:
                images[indices] = squares
            errors.update(batch_errors)
            progress.update(len(indices) + len(batch_errors))
    return images, errors


def decoded_images(paths: list[Path], root: str | Path, size: int, num_workers: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, readable)`` for ``paths`` (all below ``root``): a ``(N, 3, size, size)`` uint8 tensor
    and a boolean mask of the photos that could be decoded (the others are black and warned about).

    Loaded from the cache when the same photos were decoded at the same size before.
    """
    if size < 1:
        raise ValueError(f"cache image size must be positive, got {size}")
    cache_limit_bytes()  # a bad bound is refused before decoding, not after
    folder = cache_dir()
    key = dataset_fingerprint(root, paths)
    cache_file = folder / f"decoded-{key}-{size}px-{len(paths)}.pt" if folder else None
    record = None
    if cache_file is not None and cache_file.is_file():
        try:
            record = torch.load(cache_file, mmap=True, weights_only=True)
            if record.get("format") != CACHE_FORMAT:
                record = None  # decoded by an earlier version of the decoding: decode again
            elif tuple(record["images"].shape) != (len(paths), 3, size, size):
                raise ValueError("unexpected content")
        except Exception as error:  # noqa: BLE001 - any damage means: decode again
            warnings.warn(f"{cache_file}: damaged image cache ({error}); decoding again", stacklevel=2)
            record = None
    if record is None:
        images, errors = _decode_all(paths, size, worker_count(num_workers, at_most=8))
        record = {"format": CACHE_FORMAT, "root": str(root), "images": images, "errors": errors}
        if cache_file is not None:
            write_cache_file(cache_file, lambda tmp: torch.save(record, tmp))
    elif cache_file is not None:
        touch_cache_file(cache_file)
    errors: dict[int, str] = record["errors"]
    readable = torch.ones(len(paths), dtype=torch.bool)
    if errors:
        messages = list(errors.values())
        shown = "; ".join(messages[:5]) + (f"; and {len(messages) - 5} more" if len(messages) > 5 else "")
        warnings.warn(f"Skipping {len(errors)} unreadable photo(s): {shown}", stacklevel=2)
        readable[list(errors)] = False
    return record["images"], readable
