"""Execute the training notebooks in place with their default parameters: the committed outputs.

    python bench/run_notebooks.py [cnn_from_scratch.ipynb] [transfer_learning.ipynb]

Each notebook trains its shipped recipe on the whole dataset (``LANDMARK_DATA``, with the negatives
of ``LANDMARK_NEGATIVES``), exports its model to ``checkpoints/`` and writes the metrics JSON
beside it. Where ``../shared/data`` is present, ``transfer_learning.ipynb`` also measures unknown
detection on the 9 other landmarks never trained on and on the full-size canonical photos, and
adds those 9 landmarks from a few photos each (section 10). Progress-bar widgets are dropped
from the saved outputs: they only render in a live session and would show as raw text elsewhere.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
import papermill

from utils import REPO

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
SHARED = REPO.parent / "shared" / "data"


def parameters(name: str) -> dict:
    """The transfer notebook shows the backbone comparison of bench/results (``make bench`` or
    ``RUN_COMPARISON=True`` reruns it, 10 min) and, where ../shared/data is present, measures unknown
    detection on photos never trained on in section 9 (see the Makefile's negatives) and adds the
    landmarks never trained against in section 10."""
    if name != "transfer_learning.ipynb":
        return {}
    unseen = {} if not (SHARED / "new_landmarks").is_dir() else {
        "other landmarks (never trained on)": [str(p) for p in sorted((SHARED / "new_landmarks").glob("1?.*"))],
        "Haleakala (full-size, canonical class 0)": [str(SHARED / "landmark_images_sample")],
    }
    new = [str(p) for p in sorted((SHARED / "new_landmarks").glob("1?.*"))]  # never negatives (see the Makefile)
    return {"RUN_COMPARISON": False, "UNSEEN_UNKNOWN": unseen, "NEW_LANDMARKS": new}


def drop_progress_widgets(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if WIDGET_VIEW not in output.get("data", {})]
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", default=["cnn_from_scratch.ipynb", "transfer_learning.ipynb"])
    args = parser.parse_args()
    for name in args.notebooks:
        start = time.perf_counter()
        papermill.execute_notebook(REPO / name, REPO / name, cwd=REPO, kernel_name="python3", parameters=parameters(name))
        drop_progress_widgets(REPO / name)
        print(f"{name}: executed in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
