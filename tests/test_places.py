"""Landmark places: the shipped CSV, lookups by folder or display name, user overrides and bad CSVs."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from src.places import PLACES_CSV, Place, PlacesError, default_places, display_names, place_key, places_for, read_places_csv

WORKING = ["Berlin Cathedral", "Colosseum", "Gaudi Casa Batllo Barcelona", "Hagia Sophia", "Hofburg Imperial Palace",
           "Museu Nacional Dart De Catalunya", "Pantheon", "Petronas Towers", "Rialto Bridge",
           "St Stephen Cathedral Vienna"]
CANONICAL = ["Haleakala National Park", "Mount Rainier National Park", "Ljubljana Castle", "Dead Sea",
             "Wroclaws Dwarves", "London Olympic Stadium", "Niagara Falls", "Stonehenge", "Grand Canyon",
             "Golden Gate Bridge", "Edinburgh Castle", "Mount Rushmore National Memorial", "Kantanagar Temple",
             "Yellowstone National Park", "Terminal Tower", "Central Park", "Eiffel Tower", "Changdeokgung",
             "Delicate Arch", "Vienna City Hall", "Matterhorn", "Taj Mahal", "Moscow Raceway", "Externsteine",
             "Soreq Cave", "Banff National Park", "Pont du Gard", "Seattle Japanese Garden", "Sydney Harbour Bridge",
             "Petronas Towers", "Brooklyn Bridge", "Washington Monument", "Hanging Temple", "Sydney Opera House",
             "Great Barrier Reef", "Monumento a la Revolucion", "Badlands National Park", "Atomium", "Forth Bridge",
             "Gateway of India", "Stockholm City Hall", "Machu Picchu", "Death Valley National Park",
             "Gullfoss Falls", "Trevi Fountain", "Temple of Heaven", "Great Wall of China",
             "Prague Astronomical Clock", "Whitby Abbey", "Temple of Olympian Zeus"]
ALL_NAMES = list(dict.fromkeys(WORKING + CANONICAL))
HEADER = "landmark,latitude,longitude,country,city,wikidata\n"


def write(tmp_path: Path, text: str, name: str = "places.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_csv_has_every_landmark_once_in_order() -> None:
    assert len(CANONICAL) == 50 and len(ALL_NAMES) == 59
    with PLACES_CSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["landmark"] for row in rows] == ALL_NAMES
    assert list(rows[0]) == ["landmark", "latitude", "longitude", "country", "city", "wikidata", "display_name"]
    assert len(default_places()) == 59
    assert set(places_for(ALL_NAMES)) == set(ALL_NAMES)


def test_landmarks_are_shown_with_their_display_names() -> None:
    """Folder names lose accents and apostrophes; the places data gives the name people write."""
    names = display_names(["Museu Nacional Dart De Catalunya", "02.Gaudi_Casa_Batllo_Barcelona", "Colosseum", "My Gate"], {})
    assert names == {"Museu Nacional Dart De Catalunya": "Museu Nacional d'Art de Catalunya",
                     "02.Gaudi_Casa_Batllo_Barcelona": "Casa Batlló", "Colosseum": "Colosseum", "My Gate": "My Gate"}
    own = {"Colosseum": Place(41.89, 12.49, "Italy", "Rome", display_name="Colosseo")}  # a model's own places come first
    assert display_names(["Colosseum"], own) == {"Colosseum": "Colosseo"}
    assert "display_name" not in Place(1.0, 2.0).to_dict() and Place.from_dict(own["Colosseum"].to_dict()) == own["Colosseum"]


def test_shipped_places_are_plausible() -> None:
    places = default_places()
    for place in places.values():
        assert -90 <= place.latitude <= 90 and -180 <= place.longitude <= 180
        assert place.country and place.city
    with PLACES_CSV.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):  # at least 4 decimals, as written in the file
            assert len(row["latitude"].split(".")[1]) >= 4 and len(row["longitude"].split(".")[1]) >= 4, row
    ids = [place.wikidata for place in places.values() if place.wikidata]
    assert len(ids) == len(set(ids))


def test_some_facts() -> None:
    places = places_for(["Colosseum", "Sydney Opera House", "Golden Gate Bridge", "Machu Picchu", "Eiffel Tower"])
    colosseum = places["Colosseum"]
    assert 41.88 <= colosseum.latitude <= 41.90 and 12.48 <= colosseum.longitude <= 12.50
    assert (colosseum.country, colosseum.city, colosseum.wikidata) == ("Italy", "Rome", "Q10285")
    assert places["Sydney Opera House"].latitude < 0 and places["Sydney Opera House"].country == "Australia"
    assert places["Golden Gate Bridge"].longitude < 0
    assert places["Machu Picchu"].latitude < 0 and places["Machu Picchu"].longitude < 0
    assert places["Eiffel Tower"].wikidata == "Q243"


def test_place_key_matches_folders_and_display_names() -> None:
    assert place_key("01.Colosseum") == place_key("colosseum") == place_key(" Colosseum ") == "colosseum"
    assert place_key("02.Gaudi_Casa_Batllo_Barcelona") == place_key("Gaudí Casa Batlló Barcelona")
    assert place_key("Monumento a la Revolución") == place_key("Monumento_a_la_Revolucion")
    assert place_key("Pont du Gard") != place_key("Pont du Gard 2")


def test_places_for_folder_names_and_unknown_classes() -> None:
    names = ["01.Colosseum", "09.St_Stephen_Cathedral_Vienna", "99.Atlantis"]
    places = places_for(names)
    assert list(places) == ["01.Colosseum", "09.St_Stephen_Cathedral_Vienna"]
    assert places["09.St_Stephen_Cathedral_Vienna"].city == "Vienna"
    assert places_for([]) == {}


def test_user_csv_overrides_and_adds(tmp_path: Path) -> None:
    extra = write(tmp_path, "\ufeff" + HEADER + "\n  Colosseum , 1.5 , 2.5 ,Nowhere,,\n"
                  "Red Fort,28.6562,77.2410,India,Delhi,Q190300\n")
    places = places_for(["01.Colosseum", "Red_Fort", "Eiffel Tower"], extra_csv=extra)
    assert places["01.Colosseum"] == Place(1.5, 2.5, "Nowhere")
    assert places["Red_Fort"] == Place(28.6562, 77.2410, "India", "Delhi", "Q190300")
    assert places["Eiffel Tower"].city == "Paris"
    assert places_for(["Colosseum"])["Colosseum"].city == "Rome"  # the shipped file is untouched


def test_optional_columns_may_be_left_out(tmp_path: Path) -> None:
    path = write(tmp_path, "longitude,landmark,latitude\r\n-0.1246,Big Ben,51.5007\r\n")
    assert read_places_csv(path) == {"bigben": Place(51.5007, -0.1246)}


@pytest.mark.parametrize("body, line, value", [
    ("Colosseum,north,12.49,Italy,Rome,Q10285\n", 2, "north"),
    ("Colosseum,nan,12.49,Italy,Rome,Q10285\n", 2, "nan"),
    ("Colosseum,91,12.49,Italy,Rome,Q10285\n", 2, "91"),
    ("Eiffel Tower,48.85,2.29,France,Paris,Q243\nColosseum,41.89,181.5,Italy,Rome,\n", 3, "181.5"),
    ("Colosseum,41.89,12.49,Italy,Rome,Q010285\n", 2, "Q010285"),
    ("Colosseum,41.89,12.49,Italy,Rome,colosseum\n", 2, "colosseum"),
    ("01.Colosseum,41.89,12.49,,,\n\ncolosseum,41.89,12.49,,,\n", 4, "colosseum"),
    (" ,41.89,12.49,,,\n", 2, ""),
    ("Colosseum,41.89,12.49\n", 2, "Colosseum"),
])
def test_bad_rows_name_file_line_and_value(tmp_path: Path, body: str, line: int, value: str) -> None:
    path = write(tmp_path, HEADER + body, "bad places.csv")
    with pytest.raises(PlacesError) as err:
        read_places_csv(path)
    assert f"bad places.csv:{line}:" in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize("header", ["landmark,latitude,country\n", "name,latitude,longitude\n",
                                    "landmark,latitude,longitude,height\n", "landmark,latitude,longitude,city,city\n", ""])
def test_bad_headers_are_refused(tmp_path: Path, header: str) -> None:
    path = write(tmp_path, header + "Colosseum,41.89,12.49\n")
    with pytest.raises(PlacesError, match=r"places\.csv:1:"):
        read_places_csv(path)


def test_non_utf8_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "Eiffel Tower,48.85,2.29,France,Paris,\nGaudi Casa Batlló,41.39,2.16,,,\n").encode("latin-1"))
    with pytest.raises(PlacesError, match=r"latin1\.csv:3: .*xf3"):
        read_places_csv(path)
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        places_for(["Colosseum"], extra_csv=tmp_path / "nothere.csv")


def test_place_round_trip_and_map_link() -> None:
    place = default_places()["eiffeltower"]
    assert Place.from_dict(place.to_dict()) == place
    assert place.to_dict() == {"latitude": place.latitude, "longitude": place.longitude, "country": "France",
                               "city": "Paris", "wikidata": "Q243"}
    assert Place.from_dict({"latitude": "1.5", "longitude": -2}) == Place(1.5, -2.0)
    assert place.osm_url() == (f"https://www.openstreetmap.org/?mlat={place.latitude}&mlon={place.longitude}"
                               f"#map=16/{place.latitude}/{place.longitude}")


@pytest.mark.parametrize("value", ["1_0", "４１.８９"])
def test_coordinates_are_plain_decimals(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, HEADER + f"Colosseum,{value},12.49,Italy,Rome,\n")
    with pytest.raises(PlacesError, match=rf"places\.csv:2: latitude .*{value!r}"):
        read_places_csv(path)


def test_a_row_that_matches_no_landmark_is_named_in_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "Colosseum,41.89,12.49,,,\nColoseum,41.89,12.49,,,\n")
    with pytest.warns(UserWarning, match=r"places\.csv:3: 'Coloseum' is none of the landmarks"):
        places = places_for(["01.Colosseum", "Red Fort"], extra_csv=path)
    assert list(places) == ["01.Colosseum"]


def test_a_places_file_that_is_not_a_csv_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / "folder.csv").mkdir()
    os.mkfifo(tmp_path / "fifo.csv")  # reading it would wait forever
    (tmp_path / "blob.csv").write_bytes(HEADER.encode() + b'"' + b"A" * 200_000)  # one unterminated 200 KB cell
    (tmp_path / "photo.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    for name in ("folder.csv", "fifo.csv"):
        with pytest.raises(PlacesError, match=rf"{name}: not a file"):
            read_places_csv(tmp_path / name)
    with pytest.raises(PlacesError, match=r"blob\.csv:2: not CSV text"):
        read_places_csv(tmp_path / "blob.csv")
    with pytest.raises(PlacesError, match=r"photo\.csv:1: not UTF-8 text"):
        read_places_csv(tmp_path / "photo.csv")
