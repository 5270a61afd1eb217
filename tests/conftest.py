"""Shared fixtures: a tiny generated dataset, the real photos in ../shared/data, isolated caches."""

from __future__ import annotations

import builtins
import errno
import io
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.allocator import USER_SETTINGS, keep_freed_memory
from src.preprocessing import PreprocessConfig

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("LANDMARK_NEGATIVES", None)  # the Makefile exports it; module-scoped fixtures run before the autouse one
keep_freed_memory()  # the suite runs in a process set up as the entry points set theirs (src/allocator.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LANDMARKS10 = SHARED_DATA / "landmarks10"
CANONICAL_SAMPLE = SHARED_DATA / "landmark_images_sample"
PHONE_HEIC = REPO / "tests" / "data" / "phone.heic"  # a sideways picture as an iPhone stores it (made with pillow-heif)



def without_allocator_settings() -> dict[str, str]:
    """This environment less any setting of the C allocator (``src/allocator.py``), for a child process whose
    allocator a test names."""
    return {name: value for name, value in os.environ.items() if name not in USER_SETTINGS and name != "LD_PRELOAD"}


def tiny_config(crop: int = 32, resize: int | None = None, train_crop: int | None = None) -> PreprocessConfig:
    """A fixed preprocessing config for the tiny data (no statistics to compute)."""
    return PreprocessConfig(eval_crop=crop, resize=resize or round(crop * 256 / 224), train_crop=train_crop or crop,
                            mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25))


def run_without_src(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh Python where ``src`` cannot be imported (as the app and other consumers run)."""
    probe = textwrap.dedent("""
        try:
            import src
            raise SystemExit("src must not be importable here")
        except ImportError:
            pass
    """)
    return subprocess.run([sys.executable, "-c", probe + textwrap.dedent(script)], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})


# Three classes whose photos differ by colour and stripe direction, so a tiny model can learn them.
TINY_CLASSES = ("00.Red_Fort", "01.Green_Gate", "02.Blue_Tower")
COLOURS = ((200, 40, 40), (40, 180, 60), (40, 70, 210))


def noise_photos(folder: Path, n: int = 8) -> Path:
    """A negatives folder of grey noise photos: no landmark at all."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(90, 160, (40, 48, 3), dtype=np.uint8)).save(folder / f"noise{i}.jpg")
    return folder


def make_photo(class_index: int, rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Image.Image:
    width, height = size
    base = np.array(COLOURS[class_index], dtype=np.float64)
    noise = rng.normal(0, 25, (height, width, 3))
    stripes = np.zeros((height, width, 1))
    if class_index == 0:
        stripes[::6] = 60
    elif class_index == 1:
        stripes[:, ::6] = 60
    return Image.fromarray(np.clip(base + noise + stripes, 0, 255).astype(np.uint8))


def write_dataset(root: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        for index, name in enumerate(TINY_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = (48 + 8 * (i % 3), 40 + 4 * (i % 2))  # photos of several sizes
                suffix = ".png" if i % 4 == 3 else ".jpg"
                make_photo(index, rng, size).save(folder / f"{i:03d}{suffix}", quality=95)
    return root


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's caches, data variable or torch hub folder."""
    monkeypatch.setenv("LANDMARK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch_home"))
    monkeypatch.delenv("LANDMARK_DATA", raising=False)
    monkeypatch.delenv("LANDMARK_NEGATIVES", raising=False)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention tiny dataset (3 classes, 12 train + 4 test photos each)."""
    return write_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_data_copy(tmp_path: Path) -> Path:
    """A fresh tiny dataset a test may damage."""
    return write_dataset(tmp_path / "data")


def shared_folder(folder: Path) -> Path:
    """A folder of ``../shared/data``: tests that need it are skipped where it is absent, but CI always has
    it beside the clone, so there a missing folder fails instead of silently skipping the test."""
    if not folder.is_dir():
        message = f"real photos not available: {folder} is absent (see ../shared/data/README.md)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def landmarks10() -> Path:
    return shared_folder(LANDMARKS10 / "train").parent


@pytest.fixture(scope="session")
def canonical_sample() -> Path:
    return shared_folder(CANONICAL_SAMPLE / "train").parent


# Files named like photos that no reader may choke on, and words their error must contain.
BAD_PHOTO_KINDS = {
    "bomb": "too large", "truncated": "truncated", "empty": "empty", "random_bytes": "not an image",
    "text": "not an image", "corrupt_dds": "corrupt or unsupported", "directory": "is a directory",
    "fifo": "not a regular file (FIFO)", "no_permission": "permission denied", "broken_symlink": "broken symlink",
    "symlink_loop": "symlink loop", "damaged_heic": "HEIF decoder cannot read",
}


def bomb_png_header(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG signature and header claiming ``width`` x ``height`` pixels, with no image data: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


def _unblock_later(fifo: Path, seconds: float = 10) -> None:
    """Open the FIFO for writing after ``seconds``: a reader that wrongly opened it gets EOF instead of hanging the suite."""
    timer = threading.Timer(seconds, lambda: fifo.open("wb").close())
    timer.daemon = True
    timer.start()


@pytest.fixture
def make_bad_photo(monkeypatch: pytest.MonkeyPatch):
    """``make_bad_photo(kind, folder) -> Path``: a file ``<kind>.jpg`` of one of :data:`BAD_PHOTO_KINDS` in ``folder``.

    Tests run as root in CI, where no file is unreadable: ``no_permission`` is then simulated by
    refusing to open that one path (``os.open`` and ``open``) with the error a user would get.
    """
    def make(kind: str, folder: Path) -> Path:
        path = folder / f"{kind}.jpg"
        if kind == "bomb":
            path.write_bytes(bomb_png_header())
        elif kind in ("truncated", "no_permission"):
            Image.new("RGB", (200, 200), (100, 150, 200)).save(path, quality=95)
            if kind == "truncated":
                path.write_bytes(path.read_bytes()[:400])
            else:
                _refuse_to_open(path, monkeypatch)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "random_bytes":
            path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
        elif kind == "text":
            path.write_text("hello, I am a text file\n")
        elif kind == "damaged_heic":  # an item type with a byte over 127, which crashes pi-heif's libheif
            data = PHONE_HEIC.read_bytes()
            at = data.index(b"Exif")
            path.write_bytes(data[:at] + b"Exi\x80" + data[at + 4:])
        elif kind == "corrupt_dds":  # Pillow raises NotImplementedError for its pixel format
            path.write_bytes(b"DDS " + struct.pack("<I", 124) + bytes(120) + bytes(range(50)))
        elif kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
            _unblock_later(path)
        elif kind == "broken_symlink":
            path.symlink_to(folder / "gone.jpg")
        elif kind == "symlink_loop":
            path.symlink_to(path.name)
        else:
            raise ValueError(f"unknown bad photo kind {kind!r}")
        return path

    return make


def _refuse_to_open(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.chmod(0)
    if os.geteuid() != 0:
        return
    target = os.path.abspath(path)
    for module, name in ((os, "open"), (builtins, "open"), (io, "open")):
        real = getattr(module, name)

        def refuse(file, *args, _real=real, **kwargs):
            if isinstance(file, (str, os.PathLike)) and os.path.abspath(file) == target:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))
            return _real(file, *args, **kwargs)

        monkeypatch.setattr(module, name, refuse)
