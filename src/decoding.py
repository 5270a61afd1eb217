"""Photos decoded in parallel worker processes into same-size centre squares, batch by batch.

The decode cache, batch prediction and ``tag`` all read photo folders this way: each photo goes
through :func:`~src.images.read_image` (JPEGs draft-decoded, and far larger photos box-averaged, to
no less than twice the target size) and :func:`~src.preprocessing.square_uint8`, so photos of any
size batch together, and an unreadable file comes back as its error message instead of stopping a worker.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from .defaults import worker_count
from .images import ImageReadError, read_image
from .preprocessing import square_uint8


def keep_parent_objects(worker_id: int) -> None:
    """``worker_init_fn``: the forked worker's garbage collector leaves what it inherited alone.

    Otherwise a worker may collect a copy of another loader's live iterator and run its clean-up,
    which only the parent may do ("AssertionError: can only test a child process" on stderr).
    """
    gc.freeze()


def _start_worker(worker_id: int) -> None:
    """``worker_init_fn``: Ctrl-C is the parent's to handle (it stops the pool); a worker that took it too would
    print its own traceback after the parent's message. The rest as :func:`keep_parent_objects`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_parent_objects(worker_id)


class SquarePhotos(Dataset):
    """Photos decoded and cut to ``size`` x ``size`` centre squares (:func:`~src.preprocessing.square_uint8`),
    so photos of any size batch together.

    Items are ``(index, uint8 image)``, or ``(index, error message)`` for an unreadable photo,
    so a bad file is reported by name instead of stopping a worker process.
    """

    def __init__(self, paths: list[Path | str], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        try:
            return index, square_uint8(read_image(self.paths[index], self.size), self.size)
        except ImageReadError as error:
            return index, str(error)


def square_batches(paths: list[Path | str], size: int, batch_size: int = 64, num_workers: int = -1
                   ) -> Iterator[tuple[list[int], torch.Tensor | None, dict[int, str]]]:
    """Decode ``paths`` as :class:`SquarePhotos` in parallel worker processes, in order.

    Yields per batch the indices (into ``paths``) of the readable photos, their squares stacked
    as ``(B, 3, size, size)`` uint8 (None when none was readable), and ``{index: error}`` for the others.
    The loader has its own random generator: decoding leaves torch's global random state alone.
    """
    workers = worker_count(num_workers)
    yield from DataLoader(SquarePhotos(paths, size), batch_size=batch_size, num_workers=workers,
                          collate_fn=_stack_readable, worker_init_fn=_start_worker, generator=torch.Generator().manual_seed(0))


def _stack_readable(batch: list[tuple[int, torch.Tensor | str]]) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """``collate_fn``, run in the worker: one stacked tensor crosses to the parent process per batch.

    Sent one by one, every photo's tensor costs its own shared-memory file handed across, which for
    small photos costs more than decoding them (2,500 photos of 128 px: about 2.5x slower).
    """
    readable = [(index, item) for index, item in batch if not isinstance(item, str)]
    errors = {index: item for index, item in batch if isinstance(item, str)}
    images = torch.stack([image for _, image in readable]) if readable else None
    return [index for index, _ in readable], images, errors
