"""Where each landmark class is: coordinates, country, city and Wikidata id.

A predicted class is only a name; a place turns it into a map pin or a photo tag. The package ships
``places.csv`` for the classes of the working and the canonical datasets, and a user CSV in the same
format adds places for other classes or corrects ours. Lookups go through :func:`place_key`, so a
dataset folder ("01.Colosseum") and a display name ("Colosseum") find the same row.

A wrong place is a wrong tag, so every CSV is checked on reading and a bad row is refused with the
file, the line (header = line 1) and the offending value rather than silently skipped.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PLACES_CSV = Path(__file__).with_name("places.csv")
REQUIRED_COLUMNS = ("landmark", "latitude", "longitude")
OPTIONAL_COLUMNS = ("country", "city", "wikidata", "display_name")
_NUMBER_PREFIX = re.compile(r"^\s*\d+\.")
_WIKIDATA_ID = re.compile(r"Q[1-9][0-9]*")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class PlacesError(ValueError):
    """A places CSV that cannot be trusted; the message names the file, the line and the bad value."""


@dataclass(frozen=True)
class Place:
    """One landmark's location (WGS84 decimal degrees) and identity."""

    latitude: float
    longitude: float
    country: str = ""
    city: str = ""
    wikidata: str = ""
    display_name: str = ""  # the landmark's name as people write it, where the dataset's folder name is not

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, e.g. for tag outputs or model metadata (``display_name`` only when set)."""
        return {key: value for key, value in asdict(self).items() if key != "display_name" or value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Place:
        """The inverse of :meth:`to_dict`; missing optional fields stay empty."""
        return cls(float(d["latitude"]), float(d["longitude"]), str(d.get("country", "")),
                   str(d.get("city", "")), str(d.get("wikidata", "")), str(d.get("display_name", "")))

    def osm_url(self) -> str:
        """A link that shows the place on OpenStreetMap, for a human to check it."""
        lat, lon = self.latitude, self.longitude
        return f"https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=16/{lat}/{lon}"


def place_key(name: str) -> str:
    """The lookup key of a landmark name: no "NN." prefix, no accents, casefolded letters and digits only.

    Dataset folders, display names and user CSVs spell the same landmark differently
    ("02.Gaudi_Casa_Batllo_Barcelona", "Gaudi Casa Batlló Barcelona"); all of them give one key.
    """
    name = unicodedata.normalize("NFKD", _NUMBER_PREFIX.sub("", name, count=1)).casefold()
    return "".join(ch for ch in name if ch.isalnum())


def read_places_csv(path: str | Path, class_names: Sequence[str] | None = None) -> dict[str, Place]:
    """The places of a CSV (``landmark,latitude,longitude[,country][,city][,wikidata]``), keyed by place_key.

    Blank lines are skipped, cells are stripped and a UTF-8 BOM is accepted; anything else that is
    off raises :class:`PlacesError`. A missing file raises FileNotFoundError. Given the
    ``class_names`` the places are for, a row naming none of them (a misspelling) is warned about.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: places CSV not found")
    if not path.is_file():  # a FIFO would be waited on forever
        raise PlacesError(f"{path}: not a file (a folder, FIFO or device); give a places CSV file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PlacesError(f"{path}: cannot read the places CSV ({error.strerror or error})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise PlacesError(f"{path}:{line}: not UTF-8 text: {data[err.start:err.end]!r}") from None

    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        places = _read_rows(path, reader)
    except csv.Error as error:  # a cell over csv.field_size_limit(): a binary file
        raise PlacesError(f"{path}:{reader.line_num}: not CSV text ({error})") from None
    if class_names is not None:
        _warn_unmatched(path, places, class_names)
    return {key: place for key, (place, _, _) in places.items()}


def _read_rows(path: Path, reader: Iterator[list[str]]) -> dict[str, tuple[Place, int, str]]:
    """``{place_key: (place, line, landmark as written)}`` of the rows of a places CSV, each checked."""
    header = [cell.strip() for cell in next(reader, [])]
    _check_header(path, header)
    places: dict[str, tuple[Place, int, str]] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise PlacesError(f"{path}:{line}: expected {len(header)} cells, got {len(row)}: {row!r}")
        cells = {column: cell.strip() for column, cell in zip(header, row)}
        key = place_key(cells["landmark"])
        if not key:
            raise PlacesError(f"{path}:{line}: empty landmark name: {cells['landmark']!r}")
        if key in places:
            raise PlacesError(f"{path}:{line}: landmark {cells['landmark']!r} repeats line {places[key][1]}")
        wikidata = cells.get("wikidata", "")
        if wikidata and not _WIKIDATA_ID.fullmatch(wikidata):
            raise PlacesError(f"{path}:{line}: wikidata id is not like Q42: {wikidata!r}")
        place = Place(_degrees(path, line, "latitude", cells["latitude"], 90.0),
                      _degrees(path, line, "longitude", cells["longitude"], 180.0),
                      cells.get("country", ""), cells.get("city", ""), wikidata, cells.get("display_name", ""))
        places[key] = (place, line, cells["landmark"])
    return places


def _warn_unmatched(path: Path, places: Mapping[str, tuple[Place, int, str]], class_names: Sequence[str]) -> None:
    """Warn about each row naming none of ``class_names``: a misspelled landmark would be silently ignored."""
    keys = {place_key(name) for name in class_names}
    for key, (_, line, name) in places.items():
        if key not in keys:
            warnings.warn(f"{path}:{line}: {name!r} is none of the landmarks placed here ({len(keys)}); row ignored "
                          "(misspelled?)", stacklevel=3)


def _check_header(path: Path, header: list[str]) -> None:
    """Refuse a header without the required columns, or with columns this format does not know."""
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise PlacesError(f"{path}:1: missing column(s) {', '.join(missing)}: {header!r}")
    unknown = [column for column in header if column not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown or len(set(header)) != len(header):
        raise PlacesError(f"{path}:1: unknown or repeated column(s): {header!r}")


def _degrees(path: Path, line: int, column: str, value: str, limit: float) -> float:
    """A finite decimal coordinate within ±limit degrees; degree-minute text, NaN, 123° latitude and what only
    Python reads as a number (``1_0``, other scripts' digits) are refused."""
    degrees = float(value) if _DECIMAL.fullmatch(value) else math.nan
    if not math.isfinite(degrees) or abs(degrees) > limit:
        raise PlacesError(f"{path}:{line}: {column} is not a number in [-{limit:g}, {limit:g}]: {value!r}")
    return degrees


def default_places() -> dict[str, Place]:
    """The places shipped with the package (src/places.csv), keyed by place_key."""
    return read_places_csv(PLACES_CSV)


def places_for(class_names: Sequence[str], extra_csv: str | Path | None = None) -> dict[str, Place]:
    """The known places of these classes, keyed by the class name as given.

    Rows of ``extra_csv`` add places or replace the shipped ones; a class without a known place is
    simply absent, so callers can tag what they can.
    """
    known = default_places()
    if extra_csv is not None:
        known.update(read_places_csv(extra_csv, class_names))
    return {name: known[key] for name in class_names if (key := place_key(name)) in known}


def display_name(folder_name: str) -> str:
    """``"09.St_Stephen_Cathedral_Vienna"`` -> ``"St Stephen Cathedral Vienna"``."""
    return re.sub(r"^\d+\.", "", folder_name).replace("_", " ").strip() or folder_name


def listed(names: Sequence[str], shown: int = 3) -> str:
    """The first ``shown`` names for a message, and how many there are when some are left out."""
    return ", ".join(names[:shown]) + (f", … ({len(names)} in all)" if len(names) > shown else "")


def display_names(class_names: Sequence[str], places: Mapping[str, Place]) -> dict[str, str]:
    """Each class's name for people: its place's ``display_name`` (``places``, then the package's places CSV for
    models exported before they carried one), else the class name itself."""
    shipped = default_places()
    names = {}
    for name in class_names:
        own, package = places.get(name), shipped.get(place_key(name))
        names[name] = (own.display_name if own else "") or (package.display_name if package else "") or name
    return names
