"""Figures the notebooks show: what the data looks like, and where a trained model goes wrong.

Every function returns its matplotlib figure (the notebook displays it; tests only check it is
drawn), so a notebook cell is one call and no plotting code is copied into the notebooks.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .data import LandmarkDataset, PhotoFolder, show_normalized
from .images import ImageReadError, load_rgb, photo_sizes  # noqa: F401  the notebooks call analysis.photo_sizes


def class_counts(folder: PhotoFolder) -> dict[str, int]:
    """Photos per class, in class order (classes without photos count 0)."""
    counts = Counter(folder.targets)
    return {name: counts.get(index, 0) for index, name in enumerate(folder.class_names)}


def plot_class_counts(train: PhotoFolder, test: PhotoFolder):
    """Horizontal bars of photos per class in train/ and test/: is the dataset balanced?"""
    import matplotlib.pyplot as plt

    names = train.class_names
    train_counts, test_counts = class_counts(train), class_counts(test)
    rows = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.32 * len(names) + 1.2)))
    ax.barh(rows - 0.2, [train_counts[n] for n in names], height=0.4, label=f"train/ ({len(train)} photos)")
    ax.barh(rows + 0.2, [test_counts.get(n, 0) for n in names], height=0.4, label=f"test/ ({len(test)} photos)")
    ax.set_yticks(rows, names, fontsize=8 if len(names) > 20 else 10)
    ax.invert_yaxis()
    ax.set_xlabel("photos")
    ax.set_title(f"Photos per landmark ({len(names)} classes)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_photo_sizes(sizes: np.ndarray, model_size: int | None = None):
    """Scatter of width vs height (with the short-side histogram): how much do photos get resized?"""
    import matplotlib.pyplot as plt

    fig, (scatter, histogram) = plt.subplots(1, 2, figsize=(11, 4))
    scatter.scatter(sizes[:, 0], sizes[:, 1], s=6, alpha=0.3)
    scatter.set_xlabel("width (px)")
    scatter.set_ylabel("height (px)")
    scatter.set_title(f"Stored size of {len(sizes)} photos")
    short = sizes.min(axis=1) if len(sizes) else np.zeros(0)
    histogram.hist(short, bins=30)
    histogram.set_xlabel("short side (px)")
    histogram.set_ylabel("photos")
    histogram.set_title("Short side")
    if model_size:
        histogram.axvline(model_size, color="red", linestyle="--", label=f"resized to {model_size} px")
        histogram.legend()
    for ax in (scatter, histogram):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_augmentations(dataset: LandmarkDataset, index: int = 0, n: int = 7):
    """One photo as decoded, then ``n`` draws of the training transform: what augmentation does."""
    import matplotlib.pyplot as plt

    stored = dataset.images[index]
    fig, axes = plt.subplots(1, n + 1, figsize=(2.2 * (n + 1), 2.6))
    axes[0].imshow(stored.permute(1, 2, 0).numpy())
    axes[0].set_title(f"decoded {tuple(stored.shape[-2:])}", fontsize=9)
    axes[0].axis("off")
    for i, ax in enumerate(axes[1:], 1):
        image, _ = dataset[index]
        show_normalized(ax, image, dataset.config.mean, dataset.config.std)
        ax.set_title(f"draw {i} {tuple(image.shape[-2:])}", fontsize=9)
    fig.suptitle(f"{dataset.class_names[dataset.targets[index]]}: the training transform applied {n} times")
    fig.tight_layout()
    return fig


def plot_per_class_accuracy(per_class: dict[str, float], title: str = "Test accuracy per landmark"):
    """Horizontal bars, worst class on top, with the value printed on each bar."""
    import matplotlib.pyplot as plt

    ranked = sorted(per_class.items(), key=lambda item: item[1])
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.32 * len(ranked) + 1.2)))
    bars = ax.barh(range(len(ranked)), [v for _, v in ranked], color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.1%}" for _, v in ranked], padding=3, fontsize=8)
    ax.set_yticks(range(len(ranked)), [name for name, _ in ranked], fontsize=8 if len(ranked) > 20 else 10)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("top-1 accuracy")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def worst_mistakes(truth: np.ndarray, probabilities: np.ndarray, n: int = 8) -> np.ndarray:
    """Indices of the ``n`` wrong predictions made with the highest confidence, most confident first."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != truth)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:n]


def plot_worst_mistakes(paths: Sequence[str | Path], truth: np.ndarray, probabilities: np.ndarray,
                        class_names: Sequence[str], n: int = 8, columns: int = 4):
    """A gallery of the most confident mistakes: each photo with its true and predicted landmark."""
    import matplotlib.pyplot as plt

    chosen = worst_mistakes(truth, probabilities, n)
    rows = max(1, -(-len(chosen) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.7 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, chosen):
        predicted = int(probabilities[index].argmax())
        try:
            ax.imshow(load_rgb(paths[index]))
        except ImageReadError:
            pass
        ax.set_title(f"true: {class_names[truth[index]]}\npredicted: {class_names[predicted]} "
                     f"({probabilities[index, predicted]:.0%})", fontsize=8)
    wrong = int((probabilities.argmax(axis=1) != truth).sum())
    fig.suptitle(f"The {len(chosen)} most confident of {wrong} mistakes on {len(truth)} photos")
    return fig


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """The backbone comparison (``bench/compare_backbones.py`` rows) as a Markdown table."""
    lines = ["| backbone | frozen validation | minutes | fine-tuned validation | minutes | predictor_test s | one photo ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['frozen_valid_accuracy']:.1%} | {r['frozen_minutes']} | "
                     f"{r['fine_tuned_valid_accuracy']:.1%} | {r['fine_tuned_minutes']} | "
                     f"{r['predictor_test_seconds']} | {r['single_photo_top5_median_ms']} |")
    return "\n".join(lines)


def plot_backbone_comparison(rows: list[dict[str, Any]], chosen: str | None = None):
    """Validation accuracy against training time for each backbone, frozen and fine-tuned."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        xs = [r["frozen_minutes"], r["fine_tuned_minutes"]]
        ys = [r["frozen_valid_accuracy"], r["fine_tuned_valid_accuracy"]]
        line, = ax.plot(xs, ys, "o-", label=r["backbone"] + (" (chosen)" if r["backbone"] == chosen else ""),
                        linewidth=3 if r["backbone"] == chosen else 1.5)
        ax.annotate("frozen", (xs[0], ys[0]), textcoords="offset points", xytext=(5, 5), fontsize=8, color=line.get_color())
        ax.annotate("fine-tuned", (xs[1], ys[1]), textcoords="offset points", xytext=(5, -12), fontsize=8,
                    color=line.get_color())
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Backbones: validation accuracy vs training time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrix(pred: ArrayLike, truth: ArrayLike, class_names: list[str] | None = None, normalize: bool = True):
    """Plot the confusion matrix of predicted vs true class indices; returns the matplotlib figure.

    Rows are true classes. With ``normalize`` each row shows the fraction of that class's photos,
    so classes of different sizes compare fairly; cell values are printed for up to 20 classes.
    """
    import matplotlib.pyplot as plt

    pred, truth = np.asarray(pred, dtype=int), np.asarray(truth, dtype=int)
    n = int(max(pred.max(initial=0), truth.max(initial=0)) + 1) if class_names is None else len(class_names)
    matrix = np.zeros((n, n), dtype=np.float64)
    np.add.at(matrix, (truth, pred), 1)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = class_names or [str(i) for i in range(n)]
    side = max(7.5, 0.28 * n + 3)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "photos")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8 if n > 20 else 10)
    ax.set_yticks(range(n), names, fontsize=8 if n > 20 else 10)
    ax.set_xlabel("Predicted landmark")
    ax.set_ylabel("True landmark")
    accuracy = float((pred == truth).mean()) if len(pred) else 0.0
    ax.set_title(f"Confusion matrix ({len(pred)} photos, accuracy {accuracy:.1%})")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j] > 0:
                    ax.text(j, i, f"{matrix[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}", ha="center", va="center",
                            fontsize=7, color="white" if matrix[i, j] > 0.5 * matrix.max() else "black")
    fig.tight_layout()
    return fig


def roc_curve(known_scores: ArrayLike, unknown_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``(unknown accepted, known accepted)`` at every threshold, from the strictest to none."""
    known, unknown = np.sort(np.asarray(known_scores))[::-1], np.asarray(unknown_scores)
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([known, unknown]))[::-1]])
    return ((unknown[None, :] >= thresholds[:, None]).mean(1) if len(unknown) else np.zeros(len(thresholds)),
            (known[None, :] >= thresholds[:, None]).mean(1))


def plot_known_scores(known_scores: ArrayLike, unknown: dict[str, ArrayLike], threshold: float):
    """Histograms of the known score for photos of known landmarks and each set of unknown photos,
    with the threshold; and their ROC curves (how many unknown photos pass for each share of known ones)."""
    import matplotlib.pyplot as plt

    fig, (hist, roc) = plt.subplots(1, 2, figsize=(13, 4.2))
    bins = np.linspace(min(np.min(known_scores), *(np.min(s) for s in unknown.values())), 1.0, 41)
    hist.hist(known_scores, bins=bins, density=True, alpha=0.55, label=f"known landmarks ({len(known_scores)})")
    for name, scores in unknown.items():
        hist.hist(scores, bins=bins, density=True, histtype="step", linewidth=2, label=f"{name} ({len(scores)})")
        unknown_accepted, known_accepted = roc_curve(known_scores, scores)
        roc.plot(unknown_accepted, known_accepted, label=name)
    hist.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    hist.set(xlabel="known score", ylabel="density", title="Known score: known vs unknown photos")
    hist.legend(fontsize=8)
    roc.axhline(0.95, color="grey", linestyle=":", label="95 % of known photos accepted")
    roc.set(xlabel="unknown photos accepted", ylabel="known photos accepted", title="ROC", xlim=(0, 0.3), ylim=(0.7, 1.0))
    roc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_tagged_photos(paths: Sequence[str | Path], verdicts: Sequence[str], n_columns: int = 4):
    """Photos with the verdict a tagger gives them (landmark and place, or unknown)."""
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(paths) // n_columns))
    fig, axes = plt.subplots(rows, n_columns, figsize=(3.4 * n_columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, verdict in zip(axes.flat, paths, verdicts):
        try:
            ax.imshow(load_rgb(path))
        except ImageReadError:
            pass
        ax.set_title(verdict, fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


def plot_few_shot(rows: Sequence[dict[str, Any]]):
    """Accuracy after adding landmarks against the photos given per new landmark (``few_shot_draw`` rows,
    with a ``photos`` key): mean and spread over draws of new-landmark top-1 and share accepted as
    known, and of the original landmarks' top-1."""
    import matplotlib.pyplot as plt

    shots = sorted({row["photos"] for row in rows})
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key, label in (("new_top1", "new landmarks: top-1"), ("new_accepted", "new landmarks: accepted as known"),
                       ("original_top1", "original landmarks: top-1")):
        values = [[row[key] for row in rows if row["photos"] == n] for n in shots]
        mean = np.array([np.mean(v) for v in values])
        ax.errorbar(shots, mean, yerr=[mean - [min(v) for v in values], [max(v) for v in values] - mean],
                    marker="o", capsize=3, label=label)
    ax.set(xscale="log", xticks=shots, xticklabels=[str(n) for n in shots], ylim=(0, 1.02),
           xlabel="photos per new landmark", ylabel="share of photos",
           title="Adding landmarks without retraining (mean, min-max over draws)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
