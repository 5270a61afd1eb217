"""The EXIF of a HEIF or AVIF photo (HEIC is HEIF), read and replaced without touching the pictures' bytes.

Both are ISOBMFF files: boxes, a ``meta`` box whose ``iinf`` lists the items (the image, its tiles, its ``Exif``
block), whose ``iloc`` says where in the file each item's bytes are and whose ``iref`` says which image an ``Exif``
item describes (``cdsc``). The new EXIF block is always appended in an ``mdat`` box of its own at the end of the file.
- A file with an ``Exif`` item: that item's ``iloc`` entry is pointed at the new block, the same fields rewritten in
  place, so no other box moves and every other byte stays as it was. The old block, which no reader looks at any more,
  is zeroed (unless another item's bytes overlap it), so that a position it held does not stay in the file.
- A file without one (an encoder that wrote no EXIF): an ``Exif`` item is added to ``iinf``, ``iloc`` and ``iref``,
  described as the primary image's. The ``meta`` box grows by those few bytes, so every item whose bytes lie after it
  has its ``iloc`` offset moved by as much; the pictures' bytes themselves are copied unchanged.
A file whose EXIF cannot be written that way (an item in several pieces or inside the ``meta`` box, fields too narrow
for the new place, an image sequence without one, whose track tables hold file offsets too) raises ``ValueError`` saying why.
Pillow and libheif write these files only by encoding the pixels again, and exiv2 only reads them (exiftool, a Perl
program, can edit them).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .heif_reader import boxes, child, item_infos, malformed_meta, meta_children, uint

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


@dataclass(frozen=True)
class _Extent:
    offset: int
    length: int
    offset_at: int  # where its offset field is in the file


@dataclass(frozen=True)
class _Location:
    """One ``iloc`` entry: ``in_file`` when its bytes are ranges of the file itself (not of ``idat`` or another item)."""

    item_id: int
    in_file: bool
    base_offset: int
    base_at: int
    extents: tuple[_Extent, ...]


@dataclass(frozen=True)
class _Iloc:
    """The ``iloc`` box's contents (``start``-``end``): its version, the widths of its fields and its entries (which
    end at ``entries_end``)."""

    start: int
    end: int
    entries_end: int
    version: int
    offset_size: int
    length_size: int
    base_offset_size: int
    index_size: int
    locations: tuple[_Location, ...]

    @property
    def id_width(self) -> int:
        return 2 if self.version < 2 else 4


def _iloc(data: bytes, start: int, end: int) -> _Iloc:
    """The ``iloc`` box whose contents are ``start``-``end``, read no further than its end."""
    version = data[start]
    if version > 2:
        raise ValueError(f"an iloc box of version {version}")
    offset_size, length_size = data[start + 4] >> 4, data[start + 4] & 15
    base_offset_size, index_size = data[start + 5] >> 4, (data[start + 5] & 15 if version in (1, 2) else 0)
    id_width = 2 if version < 2 else 4
    count, position = uint(data, start + 6, id_width), start + 6 + id_width
    locations = []
    for _ in range(count):
        if position + id_width > end:  # every entry lies in the box: a count that says more is malformed
            raise ValueError("its iloc box ends before its last entry")
        item_id, position = uint(data, position, id_width), position + id_width
        method = 0
        if version in (1, 2):
            method, position = uint(data, position, 2) & 15, position + 2
        reference, base_at = uint(data, position, 2), position + 2
        count_at = base_at + base_offset_size
        extents, position = [], count_at + 2
        for _ in range(uint(data, count_at, 2)):
            offset_at = position + index_size
            if offset_at + offset_size + length_size > end:
                raise ValueError("its iloc box ends before its last entry")
            extents.append(_Extent(uint(data, offset_at, offset_size), uint(data, offset_at + offset_size, length_size),
                                   offset_at))
            position = offset_at + offset_size + length_size
        locations.append(_Location(item_id, method == 0 and reference == 0, uint(data, base_at, base_offset_size),
                                   base_at, tuple(extents)))
    return _Iloc(start, end, position, version, offset_size, length_size, base_offset_size, index_size, tuple(locations))


def _file_iloc(data: bytes) -> _Iloc:
    """The file's ``iloc`` box."""
    return _iloc(data, *child(data, *meta_children(data), b"iloc"))


def exif_item(data: bytes) -> ExifItem | None:
    """Where the ``Exif`` item of the HEIF or AVIF file ``data`` lies, None when it has none; ValueError when it
    cannot be replaced."""
    with malformed_meta():
        return _exif_item(data, _file_iloc(data))


def _exif_item(data: bytes, iloc: _Iloc) -> ExifItem | None:
    """:func:`exif_item`, given the file's ``iloc`` box."""
    meta_start, meta_end = meta_children(data)
    wanted = [item for item, kind in item_infos(data, *child(data, meta_start, meta_end, b"iinf")) if kind == b"Exif"]
    if not wanted:
        return None
    found = [location for location in iloc.locations if location.item_id == wanted[0]]
    if not found:
        raise ValueError("its EXIF block has no location")
    location = found[-1]
    if not location.in_file or len(location.extents) != 1 or iloc.offset_size == 0 or iloc.length_size == 0:
        raise ValueError("its EXIF block is not one piece of the file itself")
    (extent,) = location.extents
    start = location.base_offset + extent.offset
    others = [(begin, begin + other.length if other.length else len(data))
              for other_location in iloc.locations if other_location.in_file and other_location is not location
              for other in other_location.extents for begin in [other_location.base_offset + other.offset]]
    return ExifItem(start, extent.length, location.base_offset, (extent.offset_at, iloc.offset_size),
                    (extent.offset_at + iloc.offset_size, iloc.length_size),
                    shared=any(begin < start + extent.length and start < stop for begin, stop in others))


def read_exif(data: bytes) -> bytes:
    """The TIFF structure of the file's EXIF (``II``/``MM`` first), as the ``Exif`` item holds it after its offset;
    empty when the file has no ``Exif`` item."""
    item = exif_item(data)
    if item is None:
        return b""
    block = data[item.start:item.start + item.length]
    if len(block) < 4 or item.start + item.length > len(data):
        raise ValueError("its EXIF block lies beyond the end of the file")
    return block[4 + struct.unpack_from(">I", block)[0]:]


def with_exif(data: bytes, exif: bytes) -> bytes:
    """``data`` with ``exif`` (:data:`EXIF_HEADER` and the TIFF structure) as its EXIF, appended in an ``mdat`` box
    of its own.

    With an ``Exif`` item, only its two ``iloc`` fields change (and the size of a last box that ran to the end), and
    the old EXIF block is zeroed, unless another item's bytes overlap it: no reader looks there any more, but a camera's
    GPS position left there would still be in the file. Without one, one is added (:func:`_with_new_exif_item`)."""
    block = struct.pack(">I", len(EXIF_HEADER)) + exif
    with malformed_meta():
        iloc = _file_iloc(data)
        item = _exif_item(data, iloc)
        to_end = [location.item_id for location in iloc.locations
                  if location.in_file and any(not extent.length for extent in location.extents)]
        if to_end:  # the block appended would join their bytes
            raise ValueError(f"item {to_end[0]}'s bytes run to the end of the file")
        if item is None:
            return _with_new_exif_item(data, iloc, block)
    copy = bytearray(data)
    if not item.shared and item.start + item.length <= len(data):
        copy[item.start:item.start + item.length] = bytes(item.length)
    _end_at_last_box(data, copy)
    offset = len(data) + 8 - item.base_offset
    _write_field(copy, item.offset_field, offset, f"an EXIF block at byte {len(data)}")
    _write_field(copy, item.length_field, len(block), f"an EXIF block at byte {len(data)}")
    return bytes(copy) + struct.pack(">I4s", 8 + len(block), b"mdat") + block


def _end_at_last_box(data: bytes, copy: bytearray) -> None:
    """Make sure a box appended to ``data`` follows its last box: nothing may come after it, and a last box whose size
    said "to the end" is given its size in ``copy`` (where ``data``'s bytes are at the same places)."""
    *_, (kind, last, _, end) = boxes(data, 0, len(data))
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after its last box")
    if struct.unpack_from(">I", data, last)[0] == 0:  # its size said "to the end": the end moves
        if len(data) - last >= 2**32:
            raise ValueError(f"its last {kind!r} box is too large to be given a size")
        struct.pack_into(">I", copy, last, len(data) - last)


def _write_field(copy: bytearray, field: tuple[int, int], value: int, what: str) -> None:
    """Write ``value`` into the big-endian ``field`` (position, width) of ``copy``, if it fits."""
    position, width = field
    if not 0 <= value < 2 ** (8 * width):
        raise ValueError(f"its {width}-byte iloc fields cannot point at {what}")
    copy[position:position + width] = value.to_bytes(width, "big")


def _with_new_exif_item(data: bytes, iloc: _Iloc, block: bytes) -> bytes:
    """``data`` with a new ``Exif`` item, whose bytes are ``block``, appended in an ``mdat`` box and described as the
    primary image's.

    1. Its entries are made: an ``infe`` for ``iinf``, an ``iloc`` entry of one extent and a ``cdsc`` reference to
       the primary image for ``iref`` (or an ``iref`` box holding it, when the file has none).
    2. The ``meta`` box grows by those bytes, so every ``iloc`` extent in the file after it is moved by as much.
    3. The boxes' sizes and entry counts grow, and the entries are inserted at the ends of their boxes.
    4. The new block goes in an ``mdat`` box at the end, where the new ``iloc`` entry points.
    """
    top = list(boxes(data, 0, len(data)))
    if any(kind == b"moov" for kind, *_ in top):
        raise ValueError("an image sequence, whose moov box holds file offsets too: only still images get a new EXIF block")
    meta_at, meta_contents, meta_end = next((at, contents, end) for kind, at, contents, end in top if kind == b"meta")
    children = {}
    for kind, at, contents, end in boxes(data, meta_contents + 4, meta_end):
        children.setdefault(kind, (at, contents, end))
    for kind in (b"pitm", b"iinf", b"iloc"):
        if kind not in children:
            raise ValueError(f"no {kind.decode()} box")
    grown_boxes = {b"meta": (meta_at, meta_contents, meta_end)} | {kind: children[kind] for kind in (b"iinf", b"iloc", b"iref")
                                                                  if kind in children}
    for kind, (at, contents, _) in grown_boxes.items():  # their 32-bit sizes are rewritten
        if contents - at != 8:
            raise ValueError(f"its {kind.decode()} box has a 64-bit size")
    pitm = children[b"pitm"][1]
    primary = uint(data, pitm + 4, 2 if data[pitm] == 0 else 4)
    iinf_at, iinf, iinf_end = children[b"iinf"]
    new_id = 1 + max([location.item_id for location in iloc.locations]
                     + [item for item, _ in item_infos(data, iinf, iinf_end)] + [primary])
    if new_id >= 2 ** (8 * iloc.id_width):
        raise ValueError(f"its iloc box has no room for item {new_id}")

    # 1. (the Exif item is hidden, as libheif writes it: flags 1)
    infe = (struct.pack(">I4sI", 21, b"infe", 2 << 24 | 1) + struct.pack(">HH4sB", new_id, 0, b"Exif", 0)
            if new_id < 2**16 else
            struct.pack(">I4sI", 23, b"infe", 3 << 24 | 1) + struct.pack(">IH4sB", new_id, 0, b"Exif", 0))
    iref = children.get(b"iref")
    wide = iref is not None and data[iref[1]] == 1  # version 1: 4-byte item IDs
    if not wide and max(new_id, primary) >= 2**16:
        if iref is not None:
            raise ValueError(f"its iref box has no room for item {new_id}")
        wide = True
    reference = struct.pack(">I4s", 14 + 4 * wide, b"cdsc") + (
        struct.pack(">IHI", new_id, 1, primary) if wide else struct.pack(">HHH", new_id, 1, primary))
    if iref is None:
        reference = struct.pack(">I4sI", 12 + len(reference), b"iref", wide << 24) + reference
    entry_length = (iloc.id_width + 2 * (iloc.version in (1, 2)) + 2 + iloc.base_offset_size + 2 + iloc.index_size
                    + iloc.offset_size + iloc.length_size)
    grown = len(infe) + entry_length + len(reference)

    copy = bytearray(data)
    for location in iloc.locations:  # 2.
        for extent in location.extents if location.in_file else ():
            begin = location.base_offset + extent.offset
            if meta_at <= begin < meta_end:
                raise ValueError(f"item {location.item_id}'s bytes lie in its meta box")
            if begin >= meta_end:
                if iloc.offset_size:
                    _write_field(copy, (extent.offset_at, iloc.offset_size), extent.offset + grown,
                                 f"item {location.item_id}'s bytes moved by {grown}")
                else:  # no offset fields: the base offset says where
                    _write_field(copy, (location.base_at, iloc.base_offset_size), location.base_offset + grown,
                                 f"item {location.item_id}'s bytes moved by {grown}")
    _end_at_last_box(data, copy)
    exif_at = len(data) + grown + 8
    if iloc.offset_size == 0 or exif_at >= 2 ** (8 * iloc.offset_size) or len(block) >= 2 ** (8 * iloc.length_size):
        raise ValueError(f"its {iloc.offset_size}-byte iloc fields cannot point at an EXIF block at byte {exif_at}")
    entry = (new_id.to_bytes(iloc.id_width, "big") + bytes(2 * (iloc.version in (1, 2)) + 2 + iloc.base_offset_size)
             + (1).to_bytes(2, "big") + bytes(iloc.index_size) + exif_at.to_bytes(iloc.offset_size, "big")
             + len(block).to_bytes(iloc.length_size, "big"))

    # 3. (each box's header comes before every insertion, and the last insertion is made first)
    count_width = 2 if data[iinf] == 0 else 4
    items = uint(data, iinf + 4, count_width) + 1
    locations = len(iloc.locations) + 1
    if items >= 2 ** (8 * count_width) or locations >= 2 ** (8 * iloc.id_width):
        raise ValueError("its item list is full")
    copy[iinf + 4:iinf + 4 + count_width] = items.to_bytes(count_width, "big")
    copy[iloc.start + 6:iloc.start + 6 + iloc.id_width] = locations.to_bytes(iloc.id_width, "big")
    for at, end, more in [(meta_at, meta_end, grown), (iinf_at, iinf_end, len(infe)),
                          (children[b"iloc"][0], iloc.end, len(entry))] + (
                         [(iref[0], iref[2], len(reference))] if iref is not None else []):
        if end - at + more >= 2**32:
            raise ValueError("its meta box would be too large")
        struct.pack_into(">I", copy, at, end - at + more)
    insertions = sorted([(iinf_end, infe), (iloc.entries_end, entry), (iref[2] if iref is not None else meta_end, reference)],
                        key=lambda insertion: insertion[0], reverse=True)
    for at, inserted in insertions:
        copy[at:at] = inserted
    return bytes(copy) + struct.pack(">I4s", 8 + len(block), b"mdat") + block  # 4.
