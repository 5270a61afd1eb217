from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from src.cli import main

TINY_TRAIN = ["--model", "scratch", "--epochs", "2", "--eval-crop", "32", "--batch-size", "8", "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cli")
    checkpoint, export = out / "scratch.pt", out / "scratch_exported.pt"
    code = main(["train", "--data", str(tiny_data), *TINY_TRAIN, "--checkpoint", str(checkpoint), "--export", str(export)])
    assert code == 0
    return {"checkpoint": checkpoint, "export": export, "data": tiny_data, "out": out}


def test_train_writes_checkpoint_export_and_metrics(trained: dict[str, Path]) -> None:
    assert trained["checkpoint"].is_file() and trained["export"].is_file()
    metrics = json.loads(trained["export"].with_suffix(".json").read_text())
    assert metrics["model"] == "scratch" and metrics["epochs"] == 2
    assert metrics["test"]["photos"] == 12 and 0 <= metrics["test"]["top1"] <= 1
    assert set(metrics["test"]["per_class_top1"]) == {"Red Fort", "Green Gate", "Blue Tower"}
    assert metrics["command"].startswith("python -m src train")


def test_evaluate_export_and_checkpoint_agree(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    reports = []
    for model in (trained["export"], trained["checkpoint"]):
        assert main(["evaluate", str(model), "--data", str(trained["data"]), "--workers", "0", "--json", str(tmp_path / "r.json")]) == 0
        reports.append(json.loads((tmp_path / "r.json").read_text()))
    assert reports[0]["top1"] == reports[1]["top1"]
    assert "top-1" in capsys.readouterr().out


def test_export_and_predict(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    exported = tmp_path / "again.pt"
    assert main(["export", str(trained["checkpoint"]), "--out", str(exported)]) == 0
    photo = next((trained["data"] / "test" / "00.Red_Fort").iterdir())
    (tmp_path / "bad.jpg").write_text("not a photo")
    capsys.readouterr()
    assert main(["predict", str(photo), str(tmp_path / "bad.jpg"), "--model", str(exported), "--topk", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == str(photo) and len(lines) == 3 and lines[1].strip().endswith(("Red Fort", "Green Gate", "Blue Tower"))
    assert "bad.jpg: not an image" in captured.err


def test_clear_errors_for_bad_input(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "nowhere"), *TINY_TRAIN]) == 2
    assert "is not a dataset folder" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.pt"), "--data", str(trained["data"])]) == 2
    assert "missing.pt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["export", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "junk.pt: not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_evaluate_refuses_a_model_of_another_dataset(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    for split in ("train", "test"):
        for name in ("00.A", "01.B"):
            (other / split / name).mkdir(parents=True)
            (other / split / name / "x.jpg").write_bytes((next((trained["data"] / "test" / "00.Red_Fort").iterdir())).read_bytes())
    assert main(["evaluate", str(trained["export"]), "--data", str(other), "--workers", "0"]) == 2
    assert "3 classes do not match the 2 classes" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "src", "models"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["scratch", "mobilenet_v2"]
    result = subprocess.run([sys.executable, "-m", "src", "train", "--model", "scratch"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
                                            "LANDMARK_DATA": str(tmp_path / "absent")})
    assert result.returncode == 2 and "absent" in result.stderr and "Traceback" not in result.stderr
