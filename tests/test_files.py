"""Safe writes: atomic files, stale temporaries, output checks, the bounded cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from src import files


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out" / "model.pt"
    files.atomic_write(target, lambda tmp: tmp.write_text("old"))

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.pt.{int(dead.stdout)}.tmp"  # a writer killed mid-write left this
    stale.write_text("half")
    alive = tmp_path / f".model.pt.{os.getpid()}9.tmp"
    other = tmp_path / f".other.pt.{int(dead.stdout)}.tmp"
    for path in (alive, other):
        path.write_text("not ours to remove")
    with mock.patch.object(files, "_pid_alive", lambda pid: pid != int(dead.stdout)):
        files.atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert not stale.exists() and alive.exists() and other.exists() and target.read_text() == "new"


def test_a_folder_is_listed_again_only_when_something_else_changed_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the folder at every write made tag --geotag's copies into one folder take time in N²."""
    listed = []
    glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda folder, pattern: listed.append(folder) or glob(folder, pattern))
    for index in range(50):
        files.atomic_write(tmp_path / f"{index}.jpg", lambda tmp: tmp.write_text("copy"))
    assert listed == [tmp_path]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    time.sleep(0.05)  # past the clock tick of the last write: a folder's mtime may be that coarse
    stale = tmp_path / f".50.jpg.{int(dead.stdout)}.tmp"  # a writer killed since left this
    stale.write_text("half")
    with mock.patch.object(files, "_pid_alive", lambda pid: pid != int(dead.stdout)):
        files.atomic_write(tmp_path / "50.jpg", lambda tmp: tmp.write_text("copy"))
    assert listed == [tmp_path, tmp_path] and not stale.exists()


def test_outputs_that_collide_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the metrics and the export would be the same file"):
        files.check_outputs(export=tmp_path / "m.json", metrics=tmp_path / "sub" / ".." / "m.json")
    with pytest.raises(ValueError, match="is a folder"):
        files.check_outputs(report=tmp_path)
    files.check_outputs(export=tmp_path / "new" / "deeper" / "m.pt", checkpoint=None)  # writes nothing, makes no folder
    assert list(tmp_path.iterdir()) == []  # a refused run leaves no empty folder behind


def test_outputs_that_cannot_be_written_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cannot write the export there"):
        files.check_outputs(export=tmp_path / "file" / "m.pt")  # a file where a folder should be
    if Path("/proc/self").is_dir():  # unwritable even for root (CI runs as root: permissions alone would not do)
        with pytest.raises(ValueError, match="cannot write the checkpoint there"):
            files.check_outputs(checkpoint=Path("/proc/self/m.pt"))


def test_cache_files_are_evicted_least_recently_used_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for age, name in enumerate(("newest", "middle", "oldest")):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1_000_000 - age * 1000, 1_000_000))
    monkeypatch.setenv("LANDMARK_CACHE_GB", str(2000 / 1e9))
    assert files.write_cache_file(tmp_path / "fresh.pt", lambda tmp: tmp.write_bytes(b"y" * 500))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.pt", "newest.pt"]
    monkeypatch.setenv("LANDMARK_CACHE_GB", "lots")
    with pytest.raises(ValueError, match="LANDMARK_CACHE_GB"):
        files.cache_limit_bytes()


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match="could not write the cache file"):
        assert not files.write_cache_file(tmp_path / "file" / "x.pt", lambda tmp: tmp.write_text("x"))


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e400"])
def test_a_cache_bound_that_is_no_size_is_refused_naming_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDMARK_CACHE_GB", value)
    with pytest.raises(ValueError, match=rf"\$LANDMARK_CACHE_GB={value!r}"):
        files.cache_limit_bytes()
