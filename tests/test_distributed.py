"""The training entry point under torchrun: two CPU processes (gloo) on tiny data."""

from __future__ import annotations

import json
import os
import socket
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


def test_two_machines_meet_through_the_c10d_rendezvous(tiny_data: Path, tmp_path: Path) -> None:
    """The multi-node path of the README: two torchrun agents (one process each, as two machines would run
    them) find each other through `--rdzv-backend c10d` on one endpoint, not `--standalone`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    agents = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "landmarks-test",
                   "-m", "src", "train", "--data", str(tiny_data), "--model", "scratch", "--epochs", "1",
                   "--eval-crop", "32", "--batch-size", "4", "--workers", "0",
                   "--checkpoint", str(tmp_path / f"node{node}.pt"), "--export", str(tmp_path / f"node{node}_exported.pt")]
        agents.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [agent.communicate(timeout=600) for agent in agents]
    for agent, (_, stderr) in zip(agents, outputs):
        assert agent.returncode == 0, stderr[-3000:]
    printed = "".join(stdout for stdout, _ in outputs)
    assert "rank 0 of 2" in printed and "rank 1 of 2" in printed and printed.count("Summary") == 1
    exported = [path for path in tmp_path.glob("node*_exported.json")]
    assert len(exported) == 1 and json.loads(exported[0].read_text())["epochs"] == 1
