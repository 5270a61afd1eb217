"""The C allocator keeps freed memory (src/allocator.py): a large block comes from the heap, not fresh pages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, without_allocator_settings
from src.allocator import keep_freed_memory, runs_on_glibc

pytestmark = pytest.mark.skipif(not runs_on_glibc(), reason="the setting is glibc's")

# Prints "<what the setup returned> <MB of a fresh 64 MB tensor that glibc mapped from the system>".
MEASURE = """
import ctypes, sys, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
result = {setup}
before = mallinfo2().hblkhd
block = torch.empty(64 << 20, dtype=torch.uint8)
print(result, (mallinfo2().hblkhd - before) >> 20)
"""


def mapped_after(setup: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    """What ``setup`` returned in a fresh interpreter, and the MB glibc then maps for a 64 MB tensor."""
    out = subprocess.run([sys.executable, "-c", MEASURE.format(setup=setup)], cwd=REPO, capture_output=True, text=True,
                         env={**without_allocator_settings(), **(env or {})},
                         check=True).stdout.split()
    return out[-2], int(out[-1])


def test_a_process_left_as_it_comes_maps_a_large_block_afresh() -> None:
    assert mapped_after("None") == ("None", 64)


def test_kept_freed_memory_takes_a_large_block_from_the_heap() -> None:
    assert mapped_after("__import__('src.allocator').allocator.keep_freed_memory()") == ("True", 0)


def test_the_users_own_allocator_settings_win() -> None:
    assert mapped_after("__import__('src.allocator').allocator.keep_freed_memory()", {"MALLOC_MMAP_MAX_": "65536"}) == ("False", 64)


def test_a_preloaded_allocator_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert keep_freed_memory() is False


@pytest.mark.parametrize("entry", ["__import__('src.cli').cli.main(['models'])",
                                   "__import__('src.helpers').helpers.setup_env({data!r}, checkpoints_dir={checkpoints!r}).device.type"])
def test_the_command_line_and_training_runs_keep_freed_memory(entry: str, tiny_data: Path, tmp_path: Path) -> None:
    _, mapped = mapped_after(entry.format(data=str(tiny_data), checkpoints=str(tmp_path / "checkpoints")))
    assert mapped == 0
