"""The notebooks' figures and the metrics file: right numbers in, a drawn figure out."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from conftest import tiny_config
from src import analysis
from src.data import PhotoFolder, get_data_loaders
from src.evaluation import RunRecord, training_metrics, write_metrics

matplotlib.use("Agg")
FAST = {"batch_size": 8, "num_workers": 0, "config": tiny_config()}
ROWS = [
    {"backbone": "a", "frozen_valid_accuracy": 0.8, "frozen_minutes": 1.0, "fine_tuned_valid_accuracy": 0.9,
     "fine_tuned_minutes": 2.0, "predictor_test_seconds": 9.0, "single_photo_top5_median_ms": 7.0},
    {"backbone": "b", "frozen_valid_accuracy": 0.85, "frozen_minutes": 1.5, "fine_tuned_valid_accuracy": 0.88,
     "fine_tuned_minutes": 3.0, "predictor_test_seconds": 16.0, "single_photo_top5_median_ms": 13.0},
]


def titles(fig) -> str:
    return " ".join([fig._suptitle.get_text() if fig._suptitle else ""] + [ax.get_title() for ax in fig.axes])


def test_class_counts_and_their_plot(tiny_data: Path) -> None:
    train, test = PhotoFolder(tiny_data / "train"), PhotoFolder(tiny_data / "test")
    assert analysis.class_counts(train) == {"Red Fort": 12, "Green Gate": 12, "Blue Tower": 12}
    fig = analysis.plot_class_counts(train, test)
    assert "3 classes" in titles(fig)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == train.class_names


def test_photo_sizes_read_headers_and_skip_unreadable_files(tiny_data: Path, tmp_path: Path) -> None:
    paths = sorted((tiny_data / "train" / "00.Red_Fort").iterdir())[:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    sizes = analysis.photo_sizes([*paths, broken])
    assert sizes.tolist() == [[48, 40], [56, 44], [64, 40]]
    assert "3 photos" in titles(analysis.plot_photo_sizes(sizes, model_size=32))


def test_augmentations_show_the_decoded_photo_and_n_draws(tiny_data: Path) -> None:
    dataset = get_data_loaders(data_dir=tiny_data, **FAST)["train"].dataset
    fig = analysis.plot_augmentations(dataset, index=0, n=3)
    assert len(fig.axes) == 4 and dataset.class_names[dataset.targets[0]] in titles(fig)


def test_worst_mistakes_are_the_most_confident_wrong_answers() -> None:
    truth = np.array([0, 1, 2, 0])
    probabilities = np.array([[0.9, 0.1, 0.0],   # right
                              [0.6, 0.3, 0.1],   # wrong, 0.6
                              [0.1, 0.8, 0.1],   # wrong, 0.8
                              [0.2, 0.7, 0.1]])  # wrong, 0.7
    assert analysis.worst_mistakes(truth, probabilities, n=2).tolist() == [2, 3]
    assert analysis.worst_mistakes(truth[:1], probabilities[:1]).tolist() == []


def test_mistake_gallery_and_per_class_plot(tiny_data: Path) -> None:
    paths = sorted((tiny_data / "test").glob("*/*"))[:3]
    truth = np.array([0, 1, 2])
    probabilities = np.array([[0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.5, 0.0, 0.5]])
    fig = analysis.plot_worst_mistakes(paths, truth, probabilities, ["A", "B", "C"], n=4, columns=2)
    assert "2 most confident of 2 mistakes on 3 photos" in titles(fig)
    assert "true: A\npredicted: B (80%)" in titles(fig)
    fig = analysis.plot_per_class_accuracy({"A": 0.5, "B": 1.0})
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["A", "B"]  # worst first


def test_backbone_comparison_table_and_plot() -> None:
    table = analysis.comparison_table(ROWS)
    assert table.splitlines()[2] == "| a | 80.0% | 1.0 | 90.0% | 2.0 | 9.0 | 7.0 |"
    fig = analysis.plot_backbone_comparison(ROWS, chosen="a")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a (chosen)", "b"]


def test_training_metrics_are_written_beside_the_export(tmp_path: Path) -> None:
    export = tmp_path / "m_exported.pt"
    export.write_bytes(b"x" * 2_000_000)
    history = [{"epoch": 1, "valid_loss": 0.5, "valid_accuracy": 0.7}, {"epoch": 2, "valid_loss": 0.4, "valid_accuracy": 0.8}]
    metrics = training_metrics(RunRecord("cmd", "scratch", tmp_path, "cpu", history, 12.34, {"extra": 1}), {"top1": 0.9}, export)
    path = write_metrics(export, metrics)
    assert path == tmp_path / "m_exported.json"
    saved = json.loads(path.read_text())
    assert (saved["best_epoch"], saved["valid_accuracy"], saved["train_seconds"], saved["export_megabytes"]) == (2, 0.8, 12.3, 2.0)
    assert saved["extra"] == 1 and saved["epochs"] == 2


def test_training_metrics_need_a_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        training_metrics(RunRecord("cmd", "scratch", tmp_path, "cpu", [], 1.0), {}, tmp_path / "none.pt")


def test_plot_confusion_matrix() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    fig = analysis.plot_confusion_matrix(pred, truth, class_names=["Red Fort", "Green Gate", "Blue Tower"])
    ax = fig.axes[0]
    assert "accuracy 66.7%" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Red Fort", "Green Gate", "Blue Tower"]
    matrix = ax.images[0].get_array()
    assert np.allclose(matrix.sum(axis=1), 1.0) and matrix[0, 1] == pytest.approx(0.5)
    assert analysis.plot_confusion_matrix(pred, truth).axes[0].images[0].get_array().shape == (3, 3)
