"""The benchmark scripts run end to end on tiny data and write their JSON (figures not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, without_allocator_settings
from src.allocator import runs_on_glibc
from src.cli import main



@pytest.fixture(scope="module")
def tiny_export(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert main(["train", "--data", str(tiny_data), "--model", "scratch", "--epochs", "1", "--eval-crop", "32",
                 "--batch-size", "8", "--workers", "0", "--checkpoint", str(out / "s.pt"), "--export", str(out / "s_exported.pt")]) == 0
    return out / "s_exported.pt"


def test_predict_benchmark_writes_its_figures(tiny_data: Path, tiny_export: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "bench/predict.py", str(tiny_export), "--data", str(tiny_data),
                             "--photos", str(tiny_data / "test"), "--repeats", "1", "--results", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "predict_s_exported.json").read_text())
    assert figures["test_photos"] == 12 and figures["latency_photos"] == 12
    assert figures["predictor_test_seconds"] > 0 and figures["single_photo_top5_median_ms"] > 0
    assert "predictor_test_seconds" in result.stdout


def test_app_benchmark_times_the_notebook_code(tiny_data: Path, tiny_export: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "bench/app.py", "--model", str(tiny_export), "--photos", str(tiny_data / "test"),
                             "--starts", "1", "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "app.json").read_text())
    assert figures["photos"] == 12 and figures["upload_to_top5"]["median_ms"] > 0 and figures["why_map"]["median_ms"] > 0
    assert 0 < figures["page_seconds"] and 0 < figures["start_seconds"]
    if "taught_from" in figures:  # the shared photos of a landmark to teach are beside the repository
        assert set(figures["teach_seconds"]) == {"5 photos", "20 photos"} and min(figures["teach_seconds"].values()) > 0
        assert not [path.name for path in tiny_export.parent.glob("*+*")]  # every taught model was removed


@pytest.mark.skipif(not Path(os.environ.get("CHROMIUM", "/usr/bin/chromium")).is_file() and not os.environ.get("CI"),
                    reason="chromium not installed")
def test_app_start_benchmark_opens_the_served_app_in_a_browser(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "bench/app_start.py", "--servings", "shipped", "--visits", "1", "--settle", "4",
                             "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "app_start.json").read_text())["rows"]
    assert row["serving"] == "shipped" and row["visits"] == 1 and len(row["kernels_waiting_mb"]) == 1
    assert 0 < row["upload_button"]["median_s"] <= row["ready"]["median_s"]


def test_serve_benchmark_loads_the_service_and_compares_it_with_prediction_in_process(tiny_data: Path, tiny_export: Path,
                                                                                       tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "bench/serve.py", "--model", str(tiny_export), "--photos", str(tiny_data / "test"),
                             "--requests", "8", "--soak", "40", "--results", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "serve.json").read_text())
    assert all(row["runtime"] == "torchscript" for row in figures["rows"])
    assert [(row["photos"], row["concurrency"]) for row in figures["rows"]] == [
        (photos, clients) for photos in ("800x600", "12 MP") for clients in (1, 4, 16, 64)]
    assert all(row["failed"] == 0 and row["photos_per_second"] > 0 for row in figures["rows"])
    assert figures["soak"]["requests"] == 40 and figures["soak"]["rss_after_mb"] > 0
    assert [row["concurrency"] for row in figures["onnx_rows"]] == [1, 16]
    assert all(row["failed"] == 0 and row["runtime"] in ("onnxruntime", "torchscript") for row in figures["onnx_rows"])


@pytest.mark.skipif(not runs_on_glibc(), reason="compares settings of glibc's allocator")
def test_passes_benchmark_times_each_pass_size_under_each_allocator(tiny_export: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "bench/passes.py", "--exports", str(tiny_export), "--photos", "3", "--passes", "1",
                             "3", "--train", "scratch:32", "--seconds", "0", "--rounds", "1", "--results", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=without_allocator_settings())
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((tmp_path / "passes.json").read_text())
    timings = figures["ms_per_photo"]
    assert len(timings) == 2 and any(network.endswith("s_exported.pt classify (32 px squares)") for network in timings)
    settings_named = ["glibc as it comes", "freed memory kept"]
    for settings in timings.values():
        assert list(settings) == settings_named and all(list(t) == ["1", "3"] for t in settings.values())
        assert all(ms > 0 for t in settings.values() for ms in t.values())
    (training,) = figures["training_ms_per_photo"].values()
    assert list(training) == settings_named and all(ms > 0 for ms in training.values())
    assert list(figures["peak_memory_mb"]) == settings_named and all(mb > 100 for mb in figures["peak_memory_mb"].values())


def test_runtimes_benchmark_compares_torchscript_and_onnxruntime(tiny_data: Path, tiny_export: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "bench/runtimes.py", "--models", str(tiny_export), "--add", "0", "--photos",
                             str(tiny_data / "test"), "--every", "1", "--rounds", "1", "--results", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads((tmp_path / "runtimes.json").read_text())["rows"]
    assert row["answers"]["test"]["photos"] == 12 and row["answers"]["test"]["verdict_differs"] == 0
    assert row["torchscript_batch1_ms"] > 0 and row["onnxruntime_batch32_ms"] > 0 and row["onnx_megabytes"] > 0


def test_run_notebooks_drops_progress_widgets_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat

    monkeypatch.syspath_prepend(str(REPO / "bench"))
    from run_notebooks import WIDGET_VIEW, drop_progress_widgets

    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={WIDGET_VIEW: {"model_id": "1"}, "text/plain": "HBox()"}),
                    nbformat.v4.new_output("stream", name="stdout", text="Epoch 1/1\n"),
                    nbformat.v4.new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"})]
    notebook = nbformat.v4.new_notebook(cells=[cell], metadata={"widgets": {"state": {}}})
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    drop_progress_widgets(path)
    saved = nbformat.read(path, as_version=4)
    assert [o.output_type for o in saved.cells[0].outputs] == ["stream", "display_data"]
    assert "widgets" not in saved.metadata


def test_nearest_mean_names_well_separated_landmarks_and_not_shuffled_ones() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from new_landmark_features import nearest_mean_top1

    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(20)
    centres = torch.eye(3, 8) * 10
    features = centres[labels] + torch.randn(60, 8)
    assert nearest_mean_top1(features, labels, shots=5, draws=3) == 1.0
    assert nearest_mean_top1(features, labels[torch.randperm(60)], shots=5, draws=3) < 0.7  # labels unrelated to features


def test_a_photo_named_as_a_landmark_of_its_own_complex_is_not_counted_at_a_wrong_place() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from few_shot import accepted_elsewhere

    named = ["Iron Pillar Delhi", "Colosseum", "Alai Minar", "Thanjavur Temple", "Colosseum"]
    landmarks = ["Qutub Minar", "Qutub Minar", "Alai Darwaza", "Sun Temple Konark", "Lotus Temple"]
    accepted = np.array([True, True, True, True, False])
    assert accepted_elsewhere(named, landmarks, accepted).tolist() == [False, True, False, True, False]


def test_recipe_steps_chooses_the_fastest_candidate_within_the_tolerance_of_the_lowest_loss() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from recipe_steps import CANDIDATES, SEED_REPEAT, choose

    short, default, long, deep = CANDIDATES
    rows = [{"candidate": short, "best_valid_loss": 0.62, "train_minutes": 1.4},
            {"candidate": default, "best_valid_loss": 0.588, "train_minutes": 2.6},
            {"candidate": long, "best_valid_loss": 0.581, "train_minutes": 4.8},
            {"candidate": deep, "best_valid_loss": 0.59, "train_minutes": 4.1},
            {"candidate": SEED_REPEAT[0], "best_valid_loss": 0.5, "train_minutes": 2.6}]  # a repeat, never a candidate
    assert choose(rows, tolerance=0.01)["candidate"] == default
    assert choose(rows, tolerance=0.001)["candidate"] == long
    assert choose(rows, tolerance=0.05)["candidate"] == short


def test_the_feature_gate_scores_a_given_photo_against_the_others_of_its_landmark_only() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from feature_gate import at_most, gate_scores, held_out_scores

    given = [torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0]]), torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]])]
    remembered = torch.tensor([[0.0, 1.0, 0.0]])
    assert held_out_scores(given, remembered, "nearest").tolist() == pytest.approx([0.8, 0.8, 0.8, 0.8])  # never itself
    assert held_out_scores(given, remembered, "margin").tolist() == pytest.approx([0.8, 0.2, 0.8, 0.2])
    photos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert gate_scores(photos, given, remembered, "nearest").tolist() == pytest.approx([1.0, 0.6])
    assert gate_scores(photos, given, remembered, "margin").tolist() == pytest.approx([1.0, -0.4])
    speed = {"base": 100.0, "with_added_landmarks": 25.0}  # 10 ms against 40 ms a photo, 30 of them the ImageNet network
    assert at_most(speed, 30.0, runs=1.0) == 0.25 and at_most(speed, 30.0, runs=0.0) == 1.0


def test_distillation_fits_stages_and_a_ridge_map_towards_their_targets_and_learns_only_from_allowed_photos(
        tiny_data: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from distilled_tail import distilled, learning_photos, pooled, ridge_map
    from new_landmark_features import frozen_and_trained_stages
    from src.location import list_images, split_negatives

    torch.manual_seed(0)
    features = torch.randn(200, 6)
    rotation = torch.linalg.qr(torch.randn(6, 6))[0]
    assert torch.allclose(F.normalize(features, dim=1) @ ridge_map(features, features @ rotation, penalty=1e-6),
                          F.normalize(features, dim=1) @ rotation, atol=1e-3)  # unit-length features of a rotation

    stages = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    weights = stages[0].weight.detach().clone()
    maps = torch.randn(256, 4, 3, 3).half()
    targets = maps.float().mean(dim=(2, 3)) @ torch.randn(4, 8)  # features a 1x1 convolution can give
    before = float(F.cosine_similarity(pooled(stages, maps), targets).mean())
    student, loss = distilled(stages, maps, targets, epochs=20, peak_rate=0.05)
    after = float(F.cosine_similarity(pooled(student, maps), targets).mean())
    assert before < 0.5 < 0.8 < after and loss == pytest.approx(1 - after, abs=0.05)
    assert torch.equal(stages[0].weight, weights)  # a copy learns; the stages given stay as they were

    trunk, later = frozen_and_trained_stages()
    assert (len(trunk), len(later)) == (7, 12)  # the transfer recipe trains MobileNetV2's last 12 of 19 stages
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    photo = list_images(tiny_data / "test")[0].read_bytes()
    for i in range(20):
        (negatives / f"n{i}.jpg").write_bytes(photo)
    learnt, held_out = split_negatives(negatives)
    assert learnt and held_out
    photos = learning_photos({"data": str(tiny_data), "negatives": [str(negatives)]})
    assert sorted(photos) == sorted(list_images(tiny_data / "train") + learnt)  # no test photo, no held-out negative


def test_an_export_s_memory_made_again_from_its_run_is_its_own_and_a_copy_keeps_everything_else(tiny_export: Path,
                                                                                                 tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from export_copies import rebuilt_memory, save_copy
    from src.export import load_exported, open_export

    view = open_export(tiny_export)
    metrics = json.loads(tiny_export.with_suffix(".json").read_text())
    memory = rebuilt_memory(view, metrics)
    assert torch.equal(memory.targets, view.memory_targets)
    assert torch.allclose(memory.general.float(), view.general_memory.float(), atol=1e-2)
    assert torch.allclose(memory.as_added.float(), view.memory_as_added.float(), atol=1e-2)
    copy = load_exported(save_copy(tiny_export, metrics, tmp_path / "copy.pt", general_memory=memory.general[:2]))
    assert copy.general_memory.shape[0] == 2 and copy.class_names == view.class_names
    assert json.loads((tmp_path / "copy.json").read_text()) == metrics
