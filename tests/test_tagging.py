"""Batch tagging: formats, unknown threshold, unreadable files, and resuming without re-tagging."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from conftest import BAD_PHOTO_KINDS, PHONE_HEIC, tiny_config
import src.defaults as defaults
import src.tag_output as tag_output
import src.tagging as tagging
from src.cli import main
from src.factory import create_model
from src.predictor import Predictor
from src.export import export_predictor, load_exported
from src.geotag import read_gps
from src.places import Place
from src.tag_output import CSV_FIELDS, done_paths
from src.tagging import UNKNOWN, tag_photos

NAMES = ["Red Fort", "Green Gate", "Blue Tower"]


RED_FORT = Place(28.6562, 77.241, "India", "Delhi", "")


def _export(path: Path, names: list[str] = NAMES, threshold: float = 0.0, places: dict | None = None) -> Path:
    predictor = Predictor(create_model("scratch", 3, widths=(8, 16)), names, tiny_config(32), unknown_threshold=threshold,
                          places=places)
    return export_predictor(predictor, path)


def _places_csv(folder: Path, rows: str = "Green Gate,10.5,-20.25,Nowhere,Greenville,\n") -> Path:
    path = folder / "places.csv"
    path.write_text("landmark,latitude,longitude,country,city,wikidata\n" + rows)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("tag") / "m.pt")


@pytest.fixture
def photos(tiny_data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "collection"
    shutil.copytree(tiny_data / "test", folder / "holiday")
    (folder / "holiday" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


def test_tags_every_photo_as_jsonl_and_lists_unreadable(exported: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    summary = tag_photos(load_exported(exported), photos, out, k=2, threshold=0.0, num_workers=0)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.tagged == 12 and len(summary.unreadable) == 1 and "broken.jpg" in summary.unreadable[0]
    assert len(records) == 13
    good = [r for r in records if r["error"] is None]
    assert all(r["landmark"] in NAMES and len(r["top_k"]) == 2 and r["top_k"][0][1] == r["probability"] for r in good)
    assert all(r["top_k"][0][1] >= r["top_k"][1][1] for r in good)


def test_a_phone_s_heic_photo_is_tagged_and_geotagged_like_the_others(photos: Path, tmp_path: Path) -> None:
    model = load_exported(_export(tmp_path / "m.pt", places={name: Place(1.0, 2.0) for name in NAMES}))
    shutil.copy(PHONE_HEIC, photos / "holiday" / "IMG_0001.HEIC")
    out, gps = tmp_path / "tags.jsonl", tmp_path / "geotagged"
    assert tag_photos(model, photos, out, k=2, num_workers=0, geotag_dir=gps).tagged == 13
    (row,) = [json.loads(line) for line in out.read_text().splitlines() if "IMG_0001.HEIC" in line]
    assert row["error"] is None and row["landmark"] in NAMES and row["geotag"] == "geotagged"
    assert read_gps(gps / "holiday" / "IMG_0001.HEIC") == pytest.approx((1.0, 2.0))


def test_csv_and_the_unknown_threshold(exported: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tags.csv"
    summary = tag_photos(load_exported(exported), photos, out, threshold=1.0, num_workers=0)
    rows = list(csv.DictReader(out.open()))
    assert summary.unknown == 12 and len(rows) == 13
    assert {r["landmark"] for r in rows if not r["error"]} == {UNKNOWN}
    assert all(len(r["top_k"].split(";")) == 3 for r in rows if not r["error"])
    for threshold in (2.0, -0.1, float("nan")):  # known scores lie from 0 to 1: nothing is written for another value
        with pytest.raises(ValueError, match=f"threshold must be a known score from 0 to 1, got {threshold}"):
            tag_photos(load_exported(exported), photos, tmp_path / "other.csv", threshold=threshold, num_workers=0)
    assert not (tmp_path / "other.csv").exists()


def test_rerun_resumes_without_retagging(exported: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tags.csv"
    model = load_exported(exported)
    later = photos / "holiday" / "02.Blue_Tower"  # photos added to the collection after the first run
    shutil.move(str(later), str(tmp_path / "aside"))
    first = tag_photos(model, photos, out, num_workers=0)
    shutil.move(str(tmp_path / "aside"), str(later))
    with out.open("a") as handle:
        handle.write("/half/written/line.jpg,Red")  # the first run was killed mid-write
    second = tag_photos(model, photos, out, num_workers=0)
    assert second.skipped_done == first.tagged + len(first.unreadable) and second.tagged == 4
    paths = [r["path"] for r in csv.DictReader(out.open())]
    assert len(paths) == len(set(paths)) == 13 and "/half/written/line.jpg" not in paths
    assert done_paths(out) == {str(Path(p).resolve()) for p in paths}


def test_repair_truncates_in_place_reading_only_the_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def whole_file(*args, **kwargs):
        raise AssertionError("the whole output was read or rewritten")

    monkeypatch.setattr(Path, "read_bytes", whole_file)
    monkeypatch.setattr(Path, "write_bytes", whole_file)
    out = tmp_path / "tags.jsonl"
    for content, kept in [(b"a\nbb\n" + b"x" * 50, b"a\nbb\n"), (b"a\nbb\n", b"a\nbb\n"), (b"x" * 50, b"")]:
        for chunk in (1 << 16, 3):  # a half-written line longer than the chunks read backwards
            with out.open("wb") as handle:
                handle.write(content)
            tag_output._repair_last_line(out, chunk=chunk)
            with out.open("rb") as handle:
                assert handle.read() == kept


@pytest.mark.parametrize("name, content", [
    ("notes.csv", b"name,age\nann,3\nbob,4"),  # used to lose its last line, then fail with KeyError
    ("one.csv", b"hello"),
    ("one.jsonl", b"hello"),  # used to be emptied, with exit 0
    ("header.csv", b"path,landmark\n/a.jpg,Red Fort\n"),
    ("objects.jsonl", b'{"path": "/a.jpg"}\n{"name": "b"}\n'),
    ("binary.jsonl", b"\x89PNG\r\n\x1a\n\xff\x00"),
])
def test_foreign_out_is_refused_untouched(exported: Path, photos: Path, tmp_path: Path, name: str, content: bytes) -> None:
    out = tmp_path / name
    out.write_bytes(content)
    with pytest.raises(ValueError, match=f"{name}.*not a tag output"):
        tag_photos(load_exported(exported), photos, out, num_workers=0)
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--workers", "0"]) == 2
    assert out.read_bytes() == content and not out.with_name(name + ".settings.json").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_file_name_is_tagged_and_resumed(exported: Path, photos: Path, tmp_path: Path, suffix: str) -> None:
    odd = photos / "holiday" / os.fsdecode(b"caf\xff.jpg")  # Python sees 'caf\udcff.jpg'
    try:
        shutil.copy(next(p for p in photos.rglob("*.jpg") if p.name != "broken.jpg"), odd)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    out = tmp_path / f"tags{suffix}"
    model = load_exported(exported)
    first = tag_photos(model, photos, out, num_workers=0)
    assert first.tagged == 13 and len(first.unreadable) == 1
    assert str(odd.resolve()) in done_paths(out)
    second = tag_photos(model, photos, out, num_workers=0)
    assert second.tagged == 0 and second.unreadable == [] and second.skipped_done == 14


def test_resume_with_other_settings_is_refused(exported: Path, photos: Path, tmp_path: Path) -> None:
    other = _export(tmp_path / "other.pt", ["A", "B", "C"])
    out = tmp_path / "tags.csv"
    tag_photos(load_exported(exported), photos, out, k=2, threshold=0.3, num_workers=0, model_path=exported)
    settings = json.loads((tmp_path / "tags.csv.settings.json").read_text())
    assert settings == {"format": "landmark-tags/2", "model_sha256": tag_output._file_sha256(exported), "topk": 2,
                        "threshold": 0.3, "class_names": NAMES, "places": {}, "geotag_dir": None, "overwrite_gps": False}
    content = out.read_bytes()
    for changed, message in [({"k": 3}, "topk"), ({"threshold": 0.5}, "threshold"), ({"model_path": other}, "model_sha256"),
                             ({"geotag_dir": tmp_path / "gps"}, "geotag_dir"), ({"places_csv": _places_csv(tmp_path)}, "places")]:
        arguments = {"k": 2, "threshold": 0.3, "model_path": exported, **changed}
        model = load_exported(arguments["model_path"])
        with pytest.raises(ValueError, match=f"tags.csv.*{message}.*another --out or delete the old output"):
            tag_photos(model, photos, out, num_workers=0, **arguments)
    with pytest.raises(ValueError, match="class_names"):
        tag_photos(load_exported(other), photos, out, k=2, threshold=0.3, num_workers=0, model_path=exported)
    (tmp_path / "tags.csv.settings.json").unlink()
    with pytest.raises(ValueError, match="tags.csv.*another --out or delete the old output"):
        tag_photos(load_exported(exported), photos, out, k=2, threshold=0.3, num_workers=0, model_path=exported)
    assert out.read_bytes() == content


def test_concurrent_run_on_one_output_is_refused(exported: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tags.jsonl"
    with (tmp_path / "tags.jsonl.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a first run holds it
        with pytest.raises(ValueError, match="another tag run is writing .*tags.jsonl"):
            tag_photos(load_exported(exported), photos, out, num_workers=0)
    assert not out.exists()
    assert tag_photos(load_exported(exported), photos, out, num_workers=0).tagged == 12


def test_bad_topk_and_batch_size(exported: Path, photos: Path, tmp_path: Path) -> None:
    model = load_exported(exported)
    with pytest.raises(ValueError, match="k .*-1"):
        tag_photos(model, photos, tmp_path / "tags.csv", k=-1)
    with pytest.raises(ValueError, match="batch_size .*0"):
        tag_photos(model, photos, tmp_path / "tags.csv", batch_size=0)
    assert not (tmp_path / "tags.csv").exists()


def test_bad_arguments(exported: Path, photos: Path, tmp_path: Path) -> None:
    model = load_exported(exported)
    with pytest.raises(ValueError, match="csv or .jsonl"):
        tag_photos(model, photos, tmp_path / "tags.txt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tag_photos(model, tmp_path / "nowhere", tmp_path / "tags.csv")


def test_tag_command(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tags.jsonl"
    for name in ("IMG_0002.MOV", "IMG_0003.MOV", "IMG_0002.AAE", "README", ".DS_Store", "DSC_0004.NEF"):  # a phone's, a camera's
        (photos / "holiday" / name).write_bytes(b"x")
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "Tagged 12 photos" in captured.out and "broken.jpg" in captured.err
    assert ("Not looked at: 5 file(s) without a photo extension (2 .mov, 1 (no extension), 1 .aae, 1 .nef); "
            "camera RAW files are not read: export them as JPEG (or HEIC) first") in captured.out
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "t.txt")]) == 2


def test_unknown_below_the_models_threshold_and_places_of_known_landmarks(tmp_path: Path, photos: Path) -> None:
    model = load_exported(_export(tmp_path / "m.pt", threshold=0.0, places={"Red Fort": RED_FORT}))
    out = tmp_path / "tags.csv"
    tag_photos(model, photos, out, num_workers=0, places_csv=_places_csv(tmp_path))
    rows = [r for r in csv.DictReader(out.open()) if not r["error"]]
    assert list(rows[0]) == CSV_FIELDS and len(rows) == 12
    for row in rows:
        assert 0 <= float(row["known_score"]) <= 1 and row["landmark"] in NAMES  # threshold 0: every photo is known
        place = {"Red Fort": RED_FORT, "Green Gate": Place(10.5, -20.25, "Nowhere", "Greenville")}.get(row["landmark"])
        expected = [str(place.latitude), str(place.longitude), place.country, place.city] if place else ["", "", "", ""]
        assert [row["latitude"], row["longitude"], row["country"], row["city"]] == expected
    strict = load_exported(_export(tmp_path / "strict.pt", threshold=1.01, places={"Red Fort": RED_FORT}))
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()] if tag_photos(
        strict, photos, tmp_path / "t.jsonl", num_workers=0).tagged else []
    good = [r for r in records if r["error"] is None]
    assert len(good) == 12 and all(r["landmark"] == UNKNOWN and r["latitude"] is None and r["city"] is None for r in good)
    assert all(r["top_k"] and r["known_score"] < 1.01 for r in good)  # the closest guesses are still there


def test_bad_places_csv_is_refused_naming_file_and_row(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    bad = _places_csv(tmp_path, "Green Gate,10.5,-20.25,,,\nRed Fort,95.0,77.2,,,\n")
    out = tmp_path / "tags.csv"
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--places", str(bad)]) == 2
    error = capsys.readouterr().err
    assert "places.csv:3: latitude" in error and "95" in error
    assert not out.exists()


def _scan_data(path: Path) -> bytes:
    data = path.read_bytes()
    return data[data.index(b"\xff\xda"):]


def test_geotag_writes_gps_copies_keeping_pixels_and_originals_and_resumes(tmp_path: Path, photos: Path) -> None:
    from PIL import Image

    places = {name: Place(10.0 + i, -20.0 - i, "Somewhere", "Town") for i, name in enumerate(NAMES)}
    model_path = _export(tmp_path / "m.pt", threshold=0.0, places=places)
    model = load_exported(model_path)
    originals = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()}
    later = photos / "holiday" / "02.Blue_Tower"
    shutil.move(str(later), str(tmp_path / "aside"))
    out, gps = tmp_path / "tags.jsonl", tmp_path / "geotagged"
    first = tag_photos(model, photos, out, num_workers=0, geotag_dir=gps, model_path=model_path)
    shutil.move(str(tmp_path / "aside"), str(later))
    second = tag_photos(model, photos, out, num_workers=0, geotag_dir=gps, model_path=model_path)
    assert first.geotagged == 8 and second.geotagged == 4 and second.skipped_done == 9
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len({r["path"] for r in records}) == 13
    for record in (r for r in records if r["error"] is None):
        source = Path(record["path"])
        copy = gps / source.relative_to(photos)
        assert record["geotag"] == "geotagged"
        place = places[record["landmark"]]
        assert read_gps(copy) == pytest.approx((place.latitude, place.longitude), abs=1e-5)
        with Image.open(source) as a, Image.open(copy) as b:
            assert a.format == b.format and (np.asarray(a) == np.asarray(b)).all()
        if source.suffix == ".jpg":
            assert _scan_data(copy) == _scan_data(source)  # the compressed image data is untouched
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in photos.rglob("*") if p.is_file()} == originals
    assert not (gps / "holiday" / "broken.jpg").exists()


def test_photos_with_gps_keep_it_unless_overwrite_and_overlapping_folders_are_refused(tmp_path: Path, photos: Path) -> None:
    from src.geotag import write_geotagged_copy

    places = {name: Place(1.0, 2.0) for name in NAMES}
    model = load_exported(_export(tmp_path / "m.pt", threshold=0.0, places=places))
    photo = next((photos / "holiday" / "00.Red_Fort").glob("*.jpg"))
    write_geotagged_copy(photo, tmp_path / "with_gps.jpg", -33.8568, 151.2153)
    shutil.copy(tmp_path / "with_gps.jpg", photo)  # a photo whose camera recorded GPS
    kept = tag_photos(model, photos, tmp_path / "a.csv", num_workers=0, geotag_dir=tmp_path / "a")
    assert read_gps(tmp_path / "a" / photo.relative_to(photos)) == pytest.approx((-33.8568, 151.2153), abs=1e-5)
    assert kept.geotagged == 12 and "kept" in (tmp_path / "a.csv").read_text()
    tag_photos(model, photos, tmp_path / "b.csv", num_workers=0, geotag_dir=tmp_path / "b", overwrite_gps=True)
    assert read_gps(tmp_path / "b" / photo.relative_to(photos)) == pytest.approx((1.0, 2.0), abs=1e-5)
    for inside in (photos / "gps", photos, photos.parent):
        with pytest.raises(ValueError, match="overlap"):
            tag_photos(model, photos, tmp_path / "c.csv", num_workers=0, geotag_dir=inside)


def test_a_photo_that_cannot_carry_gps_is_reported_in_its_geotag_column_and_counted(tmp_path: Path, photos: Path,
                                                                                    capsys) -> None:
    from PIL import Image

    model = _export(tmp_path / "m.pt", threshold=0.0, places={name: Place(1.0, 2.0) for name in NAMES})
    gif_path = photos / "holiday" / "animated.gif"
    Image.open(next((photos / "holiday" / "00.Red_Fort").glob("*.jpg"))).save(gif_path)
    out = tmp_path / "tags.jsonl"
    assert main(["tag", str(photos), "--model", str(model), "--out", str(out), "--geotag", str(tmp_path / "gps"),
                 "--workers", "0"]) == 0
    gif = next(json.loads(line) for line in out.read_text().splitlines() if line.startswith('{"path": "' + str(gif_path)))
    assert gif["landmark"] in NAMES and gif["geotag"].startswith("failed:") and "GIF" in gif["geotag"]
    assert not (tmp_path / "gps" / "holiday" / "animated.gif").exists()
    printed = capsys.readouterr()
    assert "12 geotagged copies in" in printed.out
    assert "(1 photo(s) with a place got none: the geotag column says why)" in printed.out
    assert f"no geotagged copy: {gif_path}: a GIF image cannot carry EXIF GPS" in printed.err


def test_a_folder_or_list_without_photos_is_warned_about(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no photo here")
    assert main(["tag", str(notes), "--model", str(exported), "--out", str(tmp_path / "n.csv"), "--workers", "0"]) == 0
    printed = capsys.readouterr()
    assert "Tagged 0 photos" in printed.out and "(1 .txt)" in printed.out
    assert f"warning: {notes} holds no photos (files named .jpg, .png, .heic, … in it or its subfolders)" in printed.err
    (tmp_path / "list.txt").write_text("# nothing yet\n")
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "l.csv"), "--workers", "0",
                 "--from-list", str(tmp_path / "list.txt")]) == 0
    assert f"warning: {tmp_path / 'list.txt'} lists no photos" in capsys.readouterr().err
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "p.csv"), "--workers", "0"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_from_list_tags_the_listed_photos_once_each_and_resumes(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    listed = sorted((photos / "holiday").rglob("*.jpg"))[:4]
    list_file = tmp_path / "photos.txt"
    list_file.write_text("# four photos, one twice, one missing, one absolute\n\n"
                         + "\n".join(str(p.relative_to(photos)) for p in listed[:3])
                         + f"\n{listed[3]}\n{listed[0].relative_to(photos)}\nholiday/gone.jpg\n")
    out = tmp_path / "tags.csv"
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--from-list", str(list_file),
                 "--workers", "0"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert sorted(Path(r["path"]).relative_to(photos.resolve()) for r in rows) == \
        sorted([p.relative_to(photos) for p in listed] + [Path("holiday/gone.jpg")])  # each once, the missing one too
    assert [r for r in rows if r["error"]][0]["error"].endswith("file not found")
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--from-list", str(list_file),
                 "--workers", "0"]) == 0
    assert len(list(csv.DictReader(out.open()))) == 5 and "5 already done" in capsys.readouterr().out
    list_file.write_text(f"{tmp_path / 'elsewhere.jpg'}\n")
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "other.csv"),
                 "--from-list", str(list_file)]) == 2
    assert f"{list_file}:1:" in capsys.readouterr().err
    for given, said in ((tmp_path / "none.txt", "not found"), (tmp_path, "a folder")):
        assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "other.csv"),
                     "--from-list", str(given)]) == 2
        assert f"{given}: {said}; --from-list takes a text file naming one photo per line" in capsys.readouterr().err


def test_the_model_leaves_the_cores_to_decoding_only_for_large_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 4 cores this process may use
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(defaults, "CPU_QUOTA_FILES", ())  # whatever quota the machine running the tests has
    small, large = tmp_path / "small.jpg", tmp_path / "large.jpg"
    Image.new("RGB", (640, 480)).save(small)
    Image.new("RGB", (2000, 1500)).save(large)  # 3 MP
    threads = tagging.torch.get_num_threads()
    assert tagging.model_threads([small] * 5, num_workers=-1) == threads  # the model is the bound
    assert tagging.model_threads([large] * 5, num_workers=-1) == 1  # 4 decode workers on 4 cores: one thread left
    assert tagging.model_threads([large] * 5, num_workers=2) == 2
    assert tagging.model_threads([large] * 5, num_workers=0) == threads  # no workers: this process decodes too


def test_from_list_with_a_relative_photo_folder_geotags_below_it(tmp_path: Path, photos: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    places = {name: Place(10.0, -20.0, "Somewhere", "Town") for name in NAMES}
    model_path = _export(tmp_path / "m.pt", threshold=0.0, places=places)
    monkeypatch.chdir(photos.parent)
    listed = sorted((photos / "holiday").rglob("*.jpg"))[:3]
    list_file = tmp_path / "photos.txt"
    list_file.write_text("\n".join([str(listed[0])] + [str(p.relative_to(photos)) for p in listed[1:]]))
    summary = tag_photos(load_exported(model_path), Path(photos.name), tmp_path / "tags.csv", num_workers=0,
                         geotag_dir=tmp_path / "gps", model_path=model_path, from_list=list_file)
    assert summary.geotagged == 3
    assert all((tmp_path / "gps" / p.relative_to(photos)).is_file() for p in listed)


def test_from_list_reads_uris_like_paths_and_refuses_what_it_cannot_read(exported: Path, photos: Path, tmp_path: Path,
                                                                         capsys) -> None:
    pytest.importorskip("pyarrow", reason="URIs are read with pyarrow: pip install -r requirements-scale.txt")
    listed = sorted((photos / "holiday").rglob("*.jpg"))[:3]
    uris = [p.resolve().as_uri() for p in listed] + [(photos / "holiday" / "gone.jpg").resolve().as_uri()]
    list_file = tmp_path / "photos.txt"
    list_file.write_text("\n".join(uris + [str(listed[0].relative_to(photos))]) + "\n")
    by_uri, by_path = tmp_path / "uris.jsonl", tmp_path / "paths.jsonl"
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(by_uri), "--from-list", str(list_file),
                 "--workers", "0"]) == 0
    rows = {row["path"]: row for row in map(json.loads, by_uri.read_text().splitlines())}
    assert len(rows) == 5 and set(uris) <= set(rows)  # a URI and the path of the same photo are two entries
    assert rows[uris[-1]]["error"] == f"{uris[-1]}: file not found"
    tag_photos(load_exported(exported), photos, by_path, num_workers=0, model_path=exported)
    same = {row["path"]: row for row in map(json.loads, by_path.read_text().splitlines())}
    for uri, path in zip(uris, listed):
        assert rows[uri]["landmark"] == same[str(path)]["landmark"]
        assert rows[uri]["known_score"] == pytest.approx(same[str(path)]["known_score"], abs=1e-6)
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(by_uri), "--from-list", str(list_file),
                 "--workers", "0"]) == 0
    assert "5 already done" in capsys.readouterr().out and len(by_uri.read_text().splitlines()) == 5
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "gps.csv"), "--from-list",
                 str(list_file), "--geotag", str(tmp_path / "gps")]) == 2
    assert "URI" in capsys.readouterr().err and not list(tmp_path.glob("gps.csv*"))  # refused before writing anything
    list_file.write_text("# from the web\nhttps://example.org/photo.jpg\n")
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "web.csv"),
                 "--from-list", str(list_file)]) == 2
    error = capsys.readouterr().err
    assert f"{list_file}:2:" in error and "https:// is not a storage" in error


@pytest.fixture
def three_photos(tiny_data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "three"
    folder.mkdir()
    for path in sorted((tiny_data / "test").rglob("*.jpg"))[:3]:
        shutil.copy(path, folder / f"{path.parent.name}_{path.name}")
    return folder


@pytest.mark.parametrize("kind", BAD_PHOTO_KINDS)
def test_every_bad_kind_of_file_gets_its_error_row_and_the_run_goes_on(exported: Path, three_photos: Path, tmp_path: Path,
                                                                      make_bad_photo, kind: str) -> None:
    bad = make_bad_photo(kind, three_photos)
    out = tmp_path / "tags.jsonl"
    summary = tag_photos(load_exported(exported), three_photos, out, num_workers=0)
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert summary.tagged == 3 and len(rows) == 4
    assert re.match(f"{re.escape(str(bad))}: .*{re.escape(BAD_PHOTO_KINDS[kind])}", rows[str(bad)]["error"])
    assert all(row["landmark"] in NAMES for path, row in rows.items() if path != str(bad))


def test_from_list_ignores_a_bom(exported: Path, photos: Path, tmp_path: Path) -> None:
    photo = sorted((photos / "holiday").rglob("*.jpg"))[0].relative_to(photos)
    list_file = tmp_path / "photos.txt"
    list_file.write_text(f"\ufeff{photo}\n", encoding="utf-8")
    out = tmp_path / "tags.jsonl"
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--from-list", str(list_file),
                 "--workers", "0"]) == 0
    [row] = map(json.loads, out.read_text().splitlines())
    assert row["path"] == str(photos / photo) and row["error"] is None


def test_from_list_names_the_line_of_a_nul_byte(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    list_file = tmp_path / "photos.txt"
    list_file.write_text("holiday/a.jpg\nholiday/x\x00.jpg\n")
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "nul.csv"), "--from-list",
                 str(list_file)]) == 2
    assert f"{list_file}:2: the line holds a NUL byte" in capsys.readouterr().err


def test_from_list_file_uris_must_lie_inside_the_photo_folder(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    list_file = tmp_path / "photos.txt"
    for outside in ("file:///etc/passwd", (photos / ".." / "elsewhere.jpg").as_uri(), "file://otherhost/photos/x.jpg"):
        list_file.write_text(f"# outside\n{outside}\n")
        assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "tags.csv"), "--from-list",
                     str(list_file)]) == 2
        assert f"{list_file}:2: " in capsys.readouterr().err and not (tmp_path / "tags.csv").exists()


def test_from_list_entries_that_are_no_files_get_error_rows(exported: Path, photos: Path, tmp_path: Path) -> None:
    (photos / "loop.jpg").symlink_to("loop.jpg")
    os.mkfifo(photos / "pipe.jpg")
    good = sorted((photos / "holiday").rglob("*.jpg"))[0]
    list_file = tmp_path / "photos.txt"
    list_file.write_text(f"loop.jpg\npipe.jpg\n{(photos / 'pipe.jpg').as_uri()}\n{good.relative_to(photos)}\n")
    out = tmp_path / "tags.jsonl"
    summary = tag_photos(load_exported(exported), photos, out, num_workers=0, from_list=list_file)
    errors = [row["error"] for row in map(json.loads, out.read_text().splitlines()) if row["error"]]
    assert summary.tagged == 1 and len(errors) == 3
    assert "symlink loop" in errors[0] and all("not a regular file (FIFO)" in error for error in errors[1:])


def test_a_link_to_the_geotag_folder_inside_the_photos_is_never_scanned(tmp_path: Path, photos: Path) -> None:
    model = load_exported(_export(tmp_path / "m.pt", threshold=0.0, places={name: Place(1.0, 2.0) for name in NAMES}))
    geo = tmp_path / "gps"
    geo.mkdir()
    (photos / "link").symlink_to(geo)
    for run in range(2):
        summary = tag_photos(model, photos, tmp_path / "tags.csv", num_workers=0, geotag_dir=geo)
        assert summary.geotagged == (12 if run == 0 else 0) and summary.skipped_done == (0 if run == 0 else 13)
    assert not (geo / "link").exists()


def _exif_claiming_billions(path: Path) -> None:
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHII", 0x0102, 3, 2**31 - 1, 26) + bytes(20)
    Image.new("RGB", (40, 32), (200, 40, 40)).save(path, exif=b"Exif\x00\x00" + tiff)


@pytest.mark.filterwarnings("ignore:Tag data larger than file")  # Pillow's own reading of that EXIF
def test_a_photo_that_fails_to_geotag_keeps_its_row_and_the_run_goes_on(tmp_path: Path, photos: Path) -> None:
    model = load_exported(_export(tmp_path / "m.pt", threshold=0.0, places={name: Place(1.0, 2.0) for name in NAMES}))
    _exif_claiming_billions(photos / "holiday" / "claims.jpg")
    out = tmp_path / "tags.jsonl"
    summary = tag_photos(model, photos, out, num_workers=0, batch_size=4, geotag_dir=tmp_path / "gps")
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    claims = rows[str(photos / "holiday" / "claims.jpg")]
    assert len(rows) == 14 and summary.geotagged == 12
    assert claims["landmark"] in NAMES and "claims 2,147,483,647 values" in claims["geotag"]
