"""TorchScript against onnxruntime for the same exports: the same answers? how fast on this machine?

    python bench/runtimes.py [--models checkpoints/transfer_exported.pt checkpoints/original_exported.pt]
                             [--add 3] [--every 5] [--rounds 3]

Each model is converted with ``python -m src export MODEL --format onnx`` (timed), and a model with added
landmarks too: ``--add`` landmarks of ``new_landmarks`` (the last ones, 10 photos each) added to the first model
with ``add-landmarks``. Photos (``--photos``): every ``--every``-th of the landmarks' test split, of the everyday scenes
(``non_landmarks``) and of the ``everyday`` photos, cut to each model's squares as ``tag`` and ``serve`` cut them.

- Answers: the largest difference in probability and in known score, and how many photos get another top-1
  or another known/unknown verdict.
- Speed: milliseconds per photo in batches of 1 (what one request to ``serve`` runs) and of 32 (``tag``,
  ``serve`` under load), both runtimes on the same squares with as many threads as torch uses, alternating
  ``--rounds`` times; the median round is reported.

Writes ``bench/results/runtimes.json``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from utils import REPO, write_result
from src.decoding import square_batches
from src.export import ExportView, open_export
from src.location import list_images
from src.onnx_export import runtime_name

SHARED = REPO.parent / "shared" / "data"
PHOTO_SOURCES = [SHARED / "landmarks10" / "test", SHARED / "non_landmarks", SHARED / "everyday"]
SINGLE_PHOTOS = 48  # photos timed one at a time per round


def command(*args: str) -> float:
    """Run ``python -m src ARGS`` and return its seconds (interpreter start included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "src", *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def added_model(base: Path, landmarks: int, folder: Path) -> Path:
    """``base`` with the last ``landmarks`` folders of new_landmarks added, 10 photos each."""
    photos = folder / "photos"
    for source in sorted(p for p in (SHARED / "new_landmarks").iterdir() if p.is_dir())[-landmarks:]:
        (photos / source.name).mkdir(parents=True)
        for path in list_images(source)[:10]:
            (photos / source.name / path.name).symlink_to(path)
    out = folder / f"{base.stem}_added.pt"
    command("add-landmarks", str(base), str(photos), "--out", str(out))
    return out


def squares_of(view: ExportView, paths: list[Path]) -> torch.Tensor:
    return torch.cat([images for _, images, _ in square_batches(paths, view.resize_size, 64) if images is not None])


def agreement(torchscript: ExportView, onnx: ExportView, squares: torch.Tensor) -> dict:
    with torch.inference_mode():
        (p, s), (q, t) = torchscript.classify(squares), onnx.classify(squares)
    threshold = torchscript.unknown_threshold
    return {"photos": len(squares), "largest_probability_difference": float((p - q).abs().max()),
            "largest_known_score_difference": float((s - t).abs().max()),
            "top1_differs": int((p.argmax(1) != q.argmax(1)).sum()),
            "verdict_differs": int(((s >= threshold) != (t >= onnx.unknown_threshold)).sum()),
            "known_share": round(float((s >= threshold).float().mean()), 3)}


def ms_per_photo(view: ExportView, squares: torch.Tensor, batch: int) -> float:
    chunks = [squares[i:i + batch] for i in range(0, len(squares), batch)]
    with torch.inference_mode():
        view.classify(chunks[0])  # warm-up
        start = time.perf_counter()
        for chunk in chunks:
            view.classify(chunk)
    return (time.perf_counter() - start) / len(squares) * 1000


def speed(views: dict[str, ExportView], squares: torch.Tensor, rounds: int) -> dict:
    """Median over ``rounds`` of ms per photo for each runtime and batch size, runtimes alternating within a round."""
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for batch, photos in ((1, squares[:SINGLE_PHOTOS]), (32, squares)):
            for name, view in views.items():
                times.setdefault(f"{name}_batch{batch}_ms", []).append(ms_per_photo(view, photos, batch))
    return {key: round(statistics.median(values), 2) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, nargs="+",
                        default=[REPO / "checkpoints" / "transfer_exported.pt", REPO / "checkpoints" / "original_exported.pt"])
    parser.add_argument("--add", type=int, default=3, help="landmarks added to the first model (0: none)")
    parser.add_argument("--photos", type=Path, nargs="+", default=PHOTO_SOURCES, help="folders of photos to compare on")
    parser.add_argument("--every", type=int, default=5, help="every how many photos of each folder are compared")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path)
    args = parser.parse_args()
    photos = {folder.name: list_images(folder)[::args.every] for folder in args.photos}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        models = [(path, "trained") for path in args.models]
        if args.add:
            models.append((added_model(args.models[0], args.add, Path(folder)), f"{args.models[0].name} + {args.add} added landmarks"))
        for path, kind in models:
            onnx_path = Path(folder) / f"{path.stem}.onnx"
            seconds = command("export", str(path), "--format", "onnx", "--out", str(onnx_path))
            views = {"torchscript": open_export(path), "onnxruntime": open_export(onnx_path)}
            assert runtime_name(views["onnxruntime"]) == "onnxruntime"
            squares = {name: squares_of(views["torchscript"], paths) for name, paths in photos.items()}
            row = {"model": path.name if kind == "trained" else kind, "resize_size": views["torchscript"].resize_size,
                   "export_seconds": round(seconds, 1), "torchscript_megabytes": round(path.stat().st_size / 1e6, 1),
                   "onnx_megabytes": round(onnx_path.stat().st_size / 1e6, 1),
                   "answers": {name: agreement(views["torchscript"], views["onnxruntime"], s) for name, s in squares.items()},
                   **speed(views, torch.cat(list(squares.values()))[:256], args.rounds)}
            row["onnx_speedup_batch1"] = round(row["torchscript_batch1_ms"] / row["onnxruntime_batch1_ms"], 2)
            row["onnx_speedup_batch32"] = round(row["torchscript_batch32_ms"] / row["onnxruntime_batch32_ms"], 2)
            rows.append(row)
            print(f"{row['model']}: batch 1 {row['torchscript_batch1_ms']} vs {row['onnxruntime_batch1_ms']} ms, batch 32 "
                  f"{row['torchscript_batch32_ms']} vs {row['onnxruntime_batch32_ms']} ms per photo (TorchScript vs onnxruntime); "
                  + "; ".join(f"{name}: max diff {a['largest_probability_difference']:.1e}, {a['verdict_differs']} verdicts differ"
                              for name, a in row["answers"].items()), flush=True)
    write_result("runtimes", {"threads": torch.get_num_threads(), "rows": rows,
                              "largest_difference": max(max(a["largest_probability_difference"], a["largest_known_score_difference"])
                                                        for row in rows for a in row["answers"].values()),
                              "verdicts_differ": sum(a["verdict_differs"] for row in rows for a in row["answers"].values()),
                              "photos_compared": sum(a["photos"] for row in rows for a in row["answers"].values())},
                 **({"results": args.results} if args.results else {}))


if __name__ == "__main__":
    main()
