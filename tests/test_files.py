"""Safe writes: atomic files, stale temporaries, output checks, the bounded cache."""

from __future__ import annotations

from pathlib import Path

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
