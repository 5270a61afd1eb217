"""The run's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.helpers import setup_env

def test_setup_env_prepares_device_data_and_checkpoints(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = setup_env(tiny_data)
    assert env.device.type in ("cpu", "cuda")
    assert env.data_dir == tiny_data.resolve()
    assert (tmp_path / "checkpoints").is_dir()
    first = torch.rand(3)
    setup_env(tiny_data)
    assert torch.equal(first, torch.rand(3))  # seeded
