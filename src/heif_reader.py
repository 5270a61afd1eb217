"""HEIF (HEIC) and AVIF files read: their ISOBMFF boxes and item list (which :mod:`src.heif_exif` edits), and HEIC
photos opened by Pillow through pi-heif's plugin (libheif's decoder only, no encoder), with the damaged files that
crash its libheif refused before it reads them.

A crash there is no exception: the process ends with a segmentation fault, and with it every other photo of a ``tag``
run or of a service's requests, so the one known cause is checked from the file's item list first. libheif 1.23.0
(pi-heif 1.4.0) crashes on an item whose type holds a byte over 127 (every such file tried, and the only crashes
among randomly damaged copies of a phone photo).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pi_heif
from PIL import Image


def boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """Each box between ``start`` and ``end``: its type, where it starts, where its contents start and where it ends."""
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, position + 8)[0], 16
        elif size == 0:  # the last box runs to the end
            size = end - position
        if size < header or position + size > end:
            raise ValueError(f"a malformed {kind!r} box at byte {position}")
        yield kind, position, position + header, position + size
        position += size


def child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    """The contents (start, end) of the first ``kind`` box between ``start`` and ``end``."""
    for found, _, contents, box_end in boxes(data, start, end):
        if found == kind:
            return contents, box_end
    raise ValueError(f"no {kind.decode()} box")


def uint(data: bytes, position: int, width: int) -> int:
    """The big-endian unsigned number of ``width`` bytes at ``position``."""
    return int.from_bytes(data[position:position + width], "big")


def meta_children(data: bytes) -> tuple[int, int]:
    """The ``meta`` box's children (start, end): after its version and flags."""
    start, end = child(data, 0, len(data), b"meta")
    return start + 4, end


def item_infos(data: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Each item's ID and type (empty before version 2 entries) in the ``iinf`` box's contents (``start``-``end``)."""
    position = start + 4 + (2 if data[start] == 0 else 4)  # version and flags, then the entry count
    for kind, _, contents, _ in boxes(data, position, end):
        if kind == b"infe":
            width = 4 if data[contents] == 3 else 2
            kind_at = contents + 4 + width + 2  # after the ID and the protection index
            yield uint(data, contents + 4, width), data[kind_at:kind_at + 4] if data[contents] >= 2 else b""


@contextmanager
def malformed_meta() -> Iterator[None]:
    """A box or field cut short (``IndexError``, ``struct.error``) raised as the ``ValueError`` saying so that every
    reader of these boxes raises."""
    try:
        yield
    except (IndexError, struct.error) as error:
        raise ValueError(f"a malformed meta box ({error})") from error


def item_types(data: bytes) -> list[bytes]:
    """The type of every item the file's ``iinf`` box names (``hvc1``, ``grid``, ``Exif``, ...); ValueError when the
    boxes up to it cannot be read."""
    with malformed_meta():
        meta_start, meta_end = meta_children(data)
        return [kind for _, kind in item_infos(data, *child(data, meta_start, meta_end, b"iinf")) if kind]


class CheckedHeifImageFile(pi_heif.HeifImageFile):
    """pi-heif's Pillow plugin, refusing with ``ValueError`` a file with an item type its libheif crashes on."""

    def _open(self) -> None:
        data = self.fp.read()
        self.fp.seek(0)
        try:
            unreadable = [kind for kind in item_types(data) if max(kind) > 127]
        except ValueError:  # no item list to read: libheif says what is wrong
            unreadable = []
        if unreadable:
            raise ValueError(f"an item of type {unreadable[0]!r}, which its HEIF decoder cannot read")
        super()._open()


def register_heif_reader() -> None:
    """Let Pillow open HEIC/HEIF files with :class:`CheckedHeifImageFile` (pi-heif's own registration, its plugin
    replaced)."""
    pi_heif.register_heif_opener()
    Image.register_open(CheckedHeifImageFile.format, CheckedHeifImageFile, Image.OPEN[CheckedHeifImageFile.format][1])
