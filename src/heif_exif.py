"""The EXIF of a HEIF or AVIF photo (HEIC is HEIF), read and replaced without touching anything else in the file.

Both are ISOBMFF files: boxes, a ``meta`` box whose ``iinf`` lists the items (the image, its tiles, its ``Exif``
block) and whose ``iloc`` says where in the file each item's bytes are. So the EXIF is replaced by appending the new
block in a box of its own at the end of the file and pointing the ``Exif`` item's ``iloc`` entry at it: the same
fields rewritten in place, so no other box moves and every other byte, the compressed pixels included, stays as it
was. The old block, which no reader looks at any more, is zeroed (unless another item's bytes overlap it), so that
a position it held does not stay in the file. A file whose EXIF cannot be replaced that way (no ``Exif`` item, an
item in several pieces or inside the ``meta`` box, fields too narrow for the new place) raises ``ValueError`` saying
why.
Pillow and libheif write these files only by encoding the pixels again, and exiv2 only reads them (exiftool, a Perl
program, can edit them).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

EXIF_HEADER = b"Exif\x00\x00"  # what Pillow and piexif put before the TIFF structure


@dataclass(frozen=True)
class ExifItem:
    """Where the ``Exif`` item's bytes are (``start``, ``length``), where its ``iloc`` fields say so, and whether any
    other item's bytes overlap them (``shared``)."""

    start: int
    length: int
    base_offset: int
    offset_field: tuple[int, int]  # (position in the file, width in bytes)
    length_field: tuple[int, int]
    shared: bool = False


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
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


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int]:
    """The contents (start, end) of the first ``kind`` box between ``start`` and ``end``."""
    for found, _, contents, box_end in _boxes(data, start, end):
        if found == kind:
            return contents, box_end
    raise ValueError(f"no {kind.decode()} box")


def _uint(data: bytes, position: int, width: int) -> int:
    return int.from_bytes(data[position:position + width], "big")


def _exif_item_id(data: bytes, start: int, end: int) -> int:
    """The ID of the ``Exif`` item in the ``iinf`` box's contents (``start``-``end``)."""
    version = data[start]
    position = start + 4 + (2 if version == 0 else 4)  # version and flags, then the entry count
    for kind, _, contents, _ in _boxes(data, position, end):
        if kind == b"infe" and data[contents] >= 2:  # version 2 and 3 entries name their item's type
            width = 2 if data[contents] == 2 else 4
            item_id = _uint(data, contents + 4, width)
            if data[contents + 4 + width + 2:contents + 4 + width + 6] == b"Exif":
                return item_id
    raise ValueError("no EXIF block to add GPS to")


def exif_item(data: bytes) -> ExifItem:
    """Where the ``Exif`` item of the HEIF or AVIF file ``data`` lies; ValueError when it cannot be replaced."""
    try:
        return _exif_item(data)
    except (IndexError, struct.error) as error:  # a box or field cut short
        raise ValueError(f"a malformed meta box ({error})") from error


def _exif_item(data: bytes) -> ExifItem:
    meta_start, meta_end = _child(data, 0, len(data), b"meta")
    meta_start += 4  # a full box: version and flags
    wanted = _exif_item_id(data, *_child(data, meta_start, meta_end, b"iinf"))
    start, end = _child(data, meta_start, meta_end, b"iloc")
    version = data[start]
    offset_size, length_size = data[start + 4] >> 4, data[start + 4] & 15
    base_offset_size, index_size = data[start + 5] >> 4, (data[start + 5] & 15 if version in (1, 2) else 0)
    id_width = 2 if version < 2 else 4
    count, position = _uint(data, start + 6, id_width), start + 6 + id_width
    found, others = None, []  # others: the file ranges other items' bytes lie in
    for _ in range(count):
        if position + id_width > end:  # every entry lies in the box: a count that says more is malformed
            raise ValueError("its iloc box ends before its last entry")
        item_id, position = _uint(data, position, id_width), position + id_width
        method = 0
        if version in (1, 2):
            method, position = _uint(data, position, 2) & 15, position + 2
        reference, base_offset = _uint(data, position, 2), _uint(data, position + 2, base_offset_size)
        extents, position = _uint(data, position + 2 + base_offset_size, 2), position + 4 + base_offset_size
        offset_at = position + index_size
        length_at = offset_at + offset_size
        position += extents * (index_size + offset_size + length_size)
        if position > end:
            raise ValueError("its iloc box ends before its last entry")
        for extent in range(extents if method == 0 and reference == 0 else 0):
            at = offset_at + extent * (index_size + offset_size + length_size)
            offset, length = _uint(data, at, offset_size), _uint(data, at + offset_size, length_size)
            others.append((base_offset + offset, base_offset + offset + length if length else len(data)))
        if item_id != wanted:
            continue
        if method != 0 or reference != 0 or extents != 1 or offset_size == 0 or length_size == 0:
            raise ValueError("its EXIF block is not one piece of the file itself")
        others.pop()
        found = ExifItem(base_offset + _uint(data, offset_at, offset_size), _uint(data, length_at, length_size),
                         base_offset, (offset_at, offset_size), (length_at, length_size))
    if found is None:
        raise ValueError("its EXIF block has no location")
    return replace(found, shared=any(begin < found.start + found.length and found.start < stop for begin, stop in others))


def read_exif(data: bytes) -> bytes:
    """The TIFF structure of the file's EXIF (``II``/``MM`` first), as the ``Exif`` item holds it after its offset."""
    item = exif_item(data)
    block = data[item.start:item.start + item.length]
    if len(block) < 4 or item.start + item.length > len(data):
        raise ValueError("its EXIF block lies beyond the end of the file")
    return block[4 + struct.unpack_from(">I", block)[0]:]


def with_exif(data: bytes, exif: bytes) -> bytes:
    """``data`` with ``exif`` (:data:`EXIF_HEADER` and the TIFF structure) as its EXIF, appended in an ``mdat`` box
    of its own; only the ``Exif`` item's two ``iloc`` fields change (and the size of a last box that ran to the end),
    and the old EXIF block is zeroed, unless another item's bytes overlap it: no reader looks there any more, but a
    camera's GPS position left there would still be in the file."""
    item = exif_item(data)
    block = struct.pack(">I", len(EXIF_HEADER)) + exif
    copy = bytearray(data)
    if not item.shared and item.start + item.length <= len(data):
        copy[item.start:item.start + item.length] = bytes(item.length)
    *_, (kind, last, _, end) = _boxes(data, 0, len(data))
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after its last box")
    if struct.unpack_from(">I", data, last)[0] == 0:  # its size said "to the end": the end moves
        if len(data) - last >= 2**32:
            raise ValueError(f"its last {kind!r} box is too large to be given a size")
        struct.pack_into(">I", copy, last, len(data) - last)
    offset = len(data) + 8 - item.base_offset
    for (position, width), value in ((item.offset_field, offset), (item.length_field, len(block))):
        if not 0 <= value < 2 ** (8 * width):
            raise ValueError(f"its iloc entry ({width}-byte fields) cannot point at an EXIF block at byte {len(data)}")
        copy[position:position + width] = value.to_bytes(width, "big")
    return bytes(copy) + struct.pack(">I4s", 8 + len(block), b"mdat") + block
