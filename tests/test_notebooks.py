"""The two training notebooks, top to bottom, on a small subset of the real photos (papermill parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from conftest import LANDMARKS10, REPO

pytestmark = pytest.mark.skipif(not (LANDMARKS10 / "train").is_dir(), reason=f"real photos not found in {LANDMARKS10}")

QUICK = {
    "cnn_from_scratch.ipynb": {"LIMIT": 300, "RECIPE": {"epochs": 2}},
    "transfer_learning.ipynb": {"LIMIT": 200, "RECIPE": {"head_epochs": 2, "epochs": 1, "unfreeze": 2},
                                "COMPARISON_BACKBONES": "mobilenet_v2",
                                "COMPARISON_ARGS": "--limit 100 --epochs 1 --head-epochs 1",
                                # section 9: outlier exposure on one scene folder, another one never trained on
                                "NEGATIVES": [str(LANDMARKS10.parent / "non_landmarks" / "forest")],
                                "UNSEEN_UNKNOWN": {"sea": [str(LANDMARKS10.parent / "non_landmarks" / "sea")]},
                                # section 10: two landmarks added from 1 and 5 of their first 30 photos, one draw each
                                "NEW_LANDMARKS": [str(LANDMARKS10.parent / "new_landmarks" / name)
                                                  for name in ("10.India_Gate", "13.Lotus_Temple")],
                                "FEW_SHOT_DRAWS": 1, "FEW_SHOT_PHOTOS": [1, 5], "NEW_LANDMARK_PHOTOS": 30},
}
# scratch: class counts, photo sizes, batch, augmentations, live plot, confusion matrix, per class, mistakes;
# transfer: comparison, batch, live plot, confusion matrix, per class, mistakes, known scores, tagged photos, few-shot
FIGURES = {"cnn_from_scratch.ipynb": 8, "transfer_learning.ipynb": 9}
PHOTOS_PER_CLASS = {"train": 50, "test": 20}  # LIMIT's sample, the validation photos, the tests and the comparison's


@pytest.fixture(scope="module")
def few_real_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first photos of each class of the real dataset, linked into a folder of the same layout: what the
    notebooks read whole (photo sizes, the backbone comparison's speed test) stays a few hundred photos."""
    root = tmp_path_factory.mktemp("landmarks10_subset")
    for split, count in PHOTOS_PER_CLASS.items():
        for folder in sorted(path for path in (LANDMARKS10 / split).iterdir() if path.is_dir()):
            (root / split / folder.name).mkdir(parents=True)
            for photo in sorted(folder.iterdir())[:count]:
                (root / split / folder.name / photo.name).symlink_to(photo)
    return root


def figures(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


@pytest.mark.parametrize("name", QUICK)
def test_notebook_runs_top_to_bottom(name: str, few_real_photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel draws inline figures, as for a person
    export = tmp_path / "model_exported.pt"
    parameters = {**QUICK[name], "DATA_DIR": str(few_real_photos), "CHECKPOINT": str(tmp_path / "model.pt"),
                  "EXPORT": str(export)}
    if name == "transfer_learning.ipynb":
        parameters["COMPARISON_RESULTS"] = str(tmp_path / "comparison")
    out = tmp_path / name
    papermill.execute_notebook(REPO / name, out, parameters=parameters, cwd=REPO, kernel_name="python3",
                               progress_bar=False)  # raises, with the failing cell, on any error
    executed = nbformat.read(out, as_version=4)
    assert figures(executed) == FIGURES[name]  # all the plots were drawn inline
    metrics = json.loads(export.with_suffix(".json").read_text())
    assert metrics["test"]["photos"] > 0 and len(metrics["history"]) == QUICK[name]["RECIPE"]["epochs"]
    if "NEGATIVES" in QUICK[name]:
        assert metrics["negatives"] == QUICK[name]["NEGATIVES"] and metrics["test"]["held_out_negatives"]["unknown_photos"] > 50
        section = "".join(output.get("data", {}).get("text/markdown", "") for cell in executed.cells for output in cell.get("outputs", []))
        assert "| held-out negatives |" in section and "| sea | 237 |" in section
    if "NEW_LANDMARKS" in QUICK[name]:
        rows = len(QUICK[name]["FEW_SHOT_PHOTOS"])  # one row per number of photos per landmark
        assert "2 new landmarks at once" in section and section.count("\n| ") >= rows + 3
    assert metrics["preprocess"]["eval_crop"] == 128  # the rule: landmarks10's 128 px photos used whole
    assert metrics["command"].startswith(name)
    if name == "transfer_learning.ipynb":
        comparison = json.loads((tmp_path / "comparison" / "compare_backbones.json").read_text())
        assert [row["backbone"] for row in comparison["rows"]] == ["mobilenet_v2"]


@pytest.mark.parametrize("name", list(QUICK) + ["app.ipynb"])
def test_notebook_has_a_parameters_cell_and_a_kernelspec(name: str) -> None:
    notebook = nbformat.read(REPO / name, as_version=4)
    assert notebook.metadata.kernelspec.name == "python3"  # Voilà and papermill need it
    assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells)


@pytest.mark.parametrize("name", QUICK)
def test_committed_notebook_was_executed_without_errors(name: str) -> None:
    notebook = nbformat.read(REPO / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "commit the notebook executed top to bottom"
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
