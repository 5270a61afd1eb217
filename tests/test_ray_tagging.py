"""`tag --engine ray`: the same tags, resume and bad files as the local engine, on a local Ray (`tag --address`
joining a cluster: ``tests/test_ray_cluster.py``)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.cli import main

if os.environ.get("CI"):
    import ray  # noqa: F401  CI installs requirements-scale.txt: a missing Ray there is a broken setup
else:
    pytest.importorskip("ray", reason="Ray is not installed: pip install -r requirements-scale.txt")

from test_tagging import exported, photos  # noqa: E402,F401  the same tiny model and photo collection (one broken file)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """The local Ray the engine starts serves every test here, and is stopped after them."""
    yield
    import ray

    ray.shutdown()


def _rows(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {row["path"]: row for row in rows}
    assert len(by_path) == len(rows), "a photo was written twice"
    return by_path


def test_ray_gives_the_tags_of_the_local_engine_each_photo_once(exported: Path, photos: Path, tmp_path: Path) -> None:
    for engine in ("local", "ray"):
        assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / f"{engine}.jsonl"),
                     "--engine", engine, "--batch-size", "5", "--workers", "0"]) == 0
    local, ray = _rows(tmp_path / "local.jsonl"), _rows(tmp_path / "ray.jsonl")
    assert set(local) == set(ray) and len(ray) == 13
    for path, row in local.items():
        assert ray[path]["landmark"] == row["landmark"] and ray[path]["error"] == row["error"], path
        if row["error"] is None:
            assert ray[path]["probability"] == pytest.approx(row["probability"], abs=1e-5)
            assert ray[path]["known_score"] == pytest.approx(row["known_score"], abs=1e-5)
    assert sum(row["error"] is not None for row in ray.values()) == 1


def test_ray_resumes_a_killed_run_without_duplicates(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tags.csv"
    listed = tmp_path / "first.txt"
    listed.write_text("\n".join(str(p.relative_to(photos)) for p in sorted(photos.rglob("*.jpg"))[:5]))
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--engine", "ray", "--from-list", str(listed)]) == 0
    with out.open("a") as handle:
        handle.write("/half/written,Red")  # what a kill in the middle of a write leaves
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(out), "--engine", "ray", "--batch-size", "4"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len({row["path"] for row in rows}) == 13 and "/half/written" not in {row["path"] for row in rows}
    assert "5 already done" in capsys.readouterr().out


def test_address_needs_the_ray_engine(exported: Path, photos: Path, tmp_path: Path, capsys) -> None:
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "t.csv"), "--address", "ray://x:1"]) == 2
    assert "--address only applies with --engine ray" in capsys.readouterr().err


def test_ray_reads_photos_given_by_uri(exported: Path, photos: Path, tmp_path: Path) -> None:
    listed = sorted((photos / "holiday").rglob("*.jpg"))
    list_file = tmp_path / "uris.txt"
    missing = (photos.resolve() / "holiday" / "no_such_photo.jpg").as_uri()  # inside the photo folder, as --from-list asks
    list_file.write_text("\n".join(p.resolve().as_uri() for p in listed) + f"\n{missing}\n")
    for engine in ("local", "ray"):
        assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / f"{engine}.jsonl"),
                     "--engine", engine, "--from-list", str(list_file), "--workers", "0"]) == 0
    local, ray = _rows(tmp_path / "local.jsonl"), _rows(tmp_path / "ray.jsonl")
    assert set(ray) == set(local) and len(ray) == len(listed) + 1 and all(path.startswith("file:///") for path in ray)
    for path, row in local.items():
        assert (ray[path]["landmark"], ray[path]["error"]) == (row["landmark"], row["error"]), path
    assert ray[missing]["error"] == f"{missing}: file not found"

