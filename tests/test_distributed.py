"""The training entry point under torchrun: two CPU processes (gloo) on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from src.checkpoint import load_checkpoint



def test_torchrun_with_two_cpu_processes_trains_and_exports_once(tiny_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "src", "train", "--data", str(tiny_data), "--model", "scratch", "--epochs", "2",
               "--eval-crop", "32", "--batch-size", "4", "--workers", "0",
               "--checkpoint", str(tmp_path / "ddp.pt"), "--export", str(tmp_path / "ddp_exported.pt")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 of 2" in result.stdout and "rank 1 of 2" in result.stdout
    assert result.stdout.count("Summary") == 1  # only rank 0 tests and exports
    metrics = json.loads((tmp_path / "ddp_exported.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test"]["photos"] == 12
    assert len(load_checkpoint(tmp_path / "ddp.last.pt")["history"]) == 2
