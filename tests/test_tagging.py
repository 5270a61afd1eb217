"""Batch tagging: formats, unknown threshold, unreadable files, and resuming without re-tagging."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import src.tagging as tagging
from src.cli import main
from src.factory import create_model
from src.predictor import Predictor, export_predictor, load_exported
from src.tagging import UNKNOWN, done_paths, tag_photos

NAMES = ["Red Fort", "Green Gate", "Blue Tower"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model("scratch", 3, widths=(8, 16))
    path = tmp_path_factory.mktemp("tag") / "m.pt"
    return export_predictor(Predictor(model, NAMES, [0.5] * 3, [0.25] * 3, image_size=32), path)


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


def test_csv_and_the_unknown_threshold(exported: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tags.csv"
    summary = tag_photos(load_exported(exported), photos, out, threshold=1.0, num_workers=0)
    rows = list(csv.DictReader(out.open()))
    assert summary.unknown == 12 and len(rows) == 13
    assert {r["landmark"] for r in rows if not r["error"]} == {UNKNOWN}
    assert all(len(r["top_k"].split(";")) == 3 for r in rows if not r["error"])


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


def test_bad_arguments(exported: Path, photos: Path, tmp_path: Path) -> None:
    model = load_exported(exported)
    with pytest.raises(ValueError, match="csv or .jsonl"):
        tag_photos(model, photos, tmp_path / "tags.txt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tag_photos(model, tmp_path / "nowhere", tmp_path / "tags.csv")


def test_tag_command(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tags.jsonl"
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "Tagged 12 photos" in captured.out and "broken.jpg" in captured.err
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "t.txt")]) == 2
