"""Shared fixtures: a tiny generated dataset, the real photos in ../shared/data, isolated caches."""

from __future__ import annotations

import os
from pathlib import Path

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from src.preprocessing import PreprocessConfig

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("LANDMARK_NEGATIVES", None)  # the Makefile exports it; module-scoped fixtures run before the autouse one

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LANDMARKS10 = SHARED_DATA / "landmarks10"
CANONICAL_SAMPLE = SHARED_DATA / "landmark_images_sample"



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
