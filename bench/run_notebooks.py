"""Execute the training notebooks in place with their default parameters: the committed outputs.

    python bench/run_notebooks.py [cnn_from_scratch.ipynb] [transfer_learning.ipynb]

Each notebook trains its shipped recipe on the whole dataset (``LANDMARK_DATA``), exports its
model to ``checkpoints/`` and writes the metrics JSON beside it. Progress-bar widgets are dropped
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
        papermill.execute_notebook(REPO / name, REPO / name, cwd=REPO, kernel_name="python3")
        drop_progress_widgets(REPO / name)
        print(f"{name}: executed in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
