"""Training under torchrun: the entry point with two CPU processes (gloo) on tiny data, and one epoch's figures over
two shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from conftest import REPO
from src.checkpoint import load_checkpoint
from src.data import get_data_loaders
from src.data_config import resolve_data_config
from src.factory import create_model
from src.finetune import cached_view_features
from src.train import EpochMetrics, _validate, _validation_share, train_epoch

# Two shards of as many batches (as DistributedSampler makes them) and unequal difficulty: 3 classes of 4x4 photos,
# the first shard labelled with the still model's own answers, the second at random.
PHOTOS = torch.randn(20, 3, 4, 4, generator=torch.Generator().manual_seed(0))
SHARDS = (range(0, 10), range(10, 20))
VALID = range(7, 14)


def _still_model() -> nn.Module:
    """The same weights in every process; trained at learning rate 0, so each shard meets the same model."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _labels() -> torch.Tensor:
    with torch.no_grad():
        answers = _still_model()(PHOTOS).argmax(1)
    return torch.cat([answers[:10], torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(1))])


def _epoch(model: nn.Module, photos: range) -> EpochMetrics:
    loader = DataLoader(TensorDataset(PHOTOS[photos.start:photos.stop], _labels()[photos.start:photos.stop]), batch_size=5)
    return train_epoch(loader, model, torch.optim.SGD(model.parameters(), lr=0.0), nn.CrossEntropyLoss())


def _validation(model: nn.Module) -> EpochMetrics:
    """7 validation photos, as ``optimize`` validates them: shares of 3 and 4 under two processes, the first share
    all answered right."""
    photos = TensorDataset(PHOTOS[VALID.start:VALID.stop], _labels()[VALID.start:VALID.stop])
    return _validate(_validation_share(DataLoader(photos, batch_size=5)), model, nn.CrossEntropyLoss())


def _train_and_validate_one_shard(rank: int, init_method: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        metrics = {"train": _epoch(DistributedDataParallel(_still_model()), SHARDS[rank]), "valid": _validation(_still_model())}
        Path(out, f"{rank}.json").write_text(json.dumps({name: m._asdict() for name, m in metrics.items()}))
    finally:
        dist.destroy_process_group()


def _cached_features(data: Path) -> tuple[torch.Tensor, ...]:
    """Stage 1's features of the centre view and of the validation photos, with their targets."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 3, pretrained=False)
    config = resolve_data_config(model.data_defaults, data, eval_crop=32)
    (train, train_targets), (valid, valid_targets) = cached_view_features(
        model, get_data_loaders(batch_size=4, data_dir=data, num_workers=0, config=config), views=0)
    return train, train_targets, valid, valid_targets


def _cache_features_on_one_rank(rank: int, init_method: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        torch.save(_cached_features(Path(data)), Path(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_each_process_encodes_a_share_of_the_cached_features_and_gets_them_all(tiny_data: Path, tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_cache_features_on_one_rank, nprocs=2,
                                args=(f"file://{tmp_path / 'rendezvous'}", str(tiny_data), str(tmp_path)))
    alone = _cached_features(tiny_data)
    for rank in range(2):
        together = torch.load(tmp_path / f"{rank}.pt")
        assert [t.shape for t in together] == [t.shape for t in alone]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(together, alone))


def test_every_process_reports_the_training_and_validation_figures_of_all_shards(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_train_and_validate_one_shard, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path)),
                                nprocs=2)
    whole = {"train": _epoch(_still_model(), range(0, 20)), "valid": _validation(_still_model())}
    for rank in range(2):
        reported = json.loads((tmp_path / f"{rank}.json").read_text())
        for split, metrics in whole.items():
            assert reported[split]["loss"] == pytest.approx(metrics.loss, rel=1e-5), split
            assert reported[split]["accuracy"] == pytest.approx(metrics.accuracy), split
    assert _epoch(_still_model(), SHARDS[0]).accuracy == 1.0 > whole["train"].accuracy  # one shard's figures would fail
    assert whole["valid"].accuracy < 1.0  # and so would the validation share of rank 0 (all answered right)


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
    assert result.stdout.count("Dataset:") == result.stdout.count("Epoch 2/2") == 1  # and prints its report
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
