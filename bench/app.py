"""How long the photo app makes a person wait: one upload -> top-5, and the "why" map.

    python bench/app.py [--model checkpoints/transfer_exported.pt]

Runs the code cells of ``app.ipynb`` in this process (what the Voilà kernel runs), then times,
per photo of the canonical sample (800x600 JPEGs, ``landmark_images_sample``) and for one
12-megapixel JPEG made from the first of them: reading the upload (decode, EXIF, RGB; ``src.answer.read_for``), the
top-5, and the occlusion map; and the whole kernel-side path from the upload to the result on
screen (``LandmarkApp.result``: read, verdict, thumbnail with the model's square, top-5 bars, why
map, JPEG encoding). Median and 90th percentile over every photo. Then the whole result of 40 test photos of
landmarks the model knows (why map drawn), with the model and with the same model after teaching it a landmark
(``--taught-photos``, the Teach tab's code); the Teach click itself for 5 and for 20 of those photos (the
first in the process, so it loads the learning code as a person's first teach does); and the app's start in a
fresh Python.
"""

from __future__ import annotations

import argparse
import datetime
import io
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from PIL import Image

from predict import SAMPLE
from utils import REPO, RESULTS, write_result
from src.location import list_images

TEACH_COUNTS = (5, 20)  # the Teach tab asks for 5-20 photos


def app_namespace(model: Path, page_only: bool = False) -> dict:
    """The app notebook's functions and objects (its app opened on ``model``), its parameters cell first;
    ``page_only``: without its last cell, which loads torch, the photo code and the model once the page is shown."""
    namespace: dict = {}
    cells = [cell for cell in nbformat.read(REPO / "app.ipynb", as_version=4).cells if cell.cell_type == "code"]
    for cell in cells[:-1] if page_only else cells:
        exec(cell.source.replace("display(app.widget())", ""), namespace)
        namespace["MODELS_DIR"], namespace["DEFAULT_MODEL"], namespace["PROJECT_DIR"] = str(model.parent), model.name, str(REPO)
    return namespace


def timed(function, *args) -> tuple[object, float]:
    start = time.perf_counter()
    result = function(*args)
    return result, (time.perf_counter() - start) * 1000


def summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 1),
            "p90_ms": round(statistics.quantiles(values, n=10)[-1], 1) if len(values) > 10 else round(max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--photos", type=Path, default=SAMPLE, help="folder of photos to time")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    parser.add_argument("--known-photos", type=Path, default=REPO.parent / "shared" / "data" / "landmarks10",
                        help="a dataset of the landmarks the model knows: every 50th test photo is timed with its why map")
    parser.add_argument("--taught-photos", type=Path, default=REPO.parent / "shared" / "data" / "new_landmarks" / "10.India_Gate",
                        help="photos of a landmark to teach, to time a taught model too (skipped when absent)")
    parser.add_argument("--starts", type=int, default=3, help="fresh Pythons timed for the app's start and its page's (median)")
    args = parser.parse_args()
    app = app_namespace(args.model)
    model = app["open_export"](args.model)
    photos = [(p.name, p.read_bytes()) for p in list_images(args.photos)]
    first = Image.open(io.BytesIO(photos[0][1]))
    buffer = io.BytesIO()
    first.resize((4000, 3000)).save(buffer, format="JPEG", quality=90)
    big = ("12mp.jpg", buffer.getvalue())

    def one(name: str, data: bytes) -> tuple[float, float, float]:
        image, read_ms = timed(app["read_for"], model, data, name)
        (ranking, _, _), top5_ms = timed(app["answer"], model, image)  # top-5, known score and verdict
        view = app["model_view"](model, image)
        _, why_ms = timed(app["occlusion_map"], model, view, list(model.class_names).index(ranking[0][0]))
        return read_ms, top5_ms, why_ms

    def whole(name: str, data: bytes) -> float:
        return timed(app["app"].result, name, data, app["app"].picker.value)[1]

    one(*photos[0])  # warm-up: TorchScript optimises on the first calls
    times = [one(*photo) for photo in photos]
    big_times = [one(*big) for _ in range(3)]
    whole_times = [whole(*photo) for photo in photos]
    big_whole = [whole(*big) for _ in range(3)]
    known = [(p.name, p.read_bytes()) for p in sorted((args.known_photos / "test").glob("*/*.jpg"))[::50]]
    whole(*known[0])
    known_whole = [whole(*photo) for photo in known]  # photos of landmarks it knows: the why map is drawn
    teach_seconds = {count: timed_teach(app, args.taught_photos, count) for count in TEACH_COUNTS} if args.taught_photos.is_dir() else {}
    taught_whole = taught_result_times(app, args.taught_photos, known, whole) if args.taught_photos.is_dir() else []
    start, page = start_seconds(args.model, args.starts), start_seconds(args.model, args.starts, page_only=True)
    write_result("app", {
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "photos": len(photos),
        "read_upload": summary([t[0] for t in times]),
        "top5": summary([t[1] for t in times]),
        "upload_to_top5": summary([t[0] + t[1] for t in times]),
        "why_map": summary([t[2] for t in times]),
        "photo_12mp_upload_to_top5_ms": round(statistics.median(t[0] + t[1] for t in big_times), 1),
        "photo_12mp_why_map_ms": round(statistics.median(t[2] for t in big_times), 1),
        "upload_to_result": summary(whole_times),
        "photo_12mp_upload_to_result_ms": round(statistics.median(big_whole), 1),
        "start_seconds": start,
        "page_seconds": page,
        "known_photos": len(known),
        "known_upload_to_result": summary(known_whole),
        **({"taught_known_upload_to_result": summary(taught_whole),
            "taught_over_base": round(statistics.median(taught_whole) / statistics.median(known_whole), 2),
            "taught_from": str(args.taught_photos.relative_to(REPO.parent)),
            "teach_seconds": {f"{count} photos": seconds for count, seconds in teach_seconds.items()}} if taught_whole else {}),
    }, args.results)


def start_seconds(model: Path, runs: int = 3, page_only: bool = False) -> float:
    """Median of ``runs`` fresh Pythons' seconds to the app ready (its cells run: imports, the model loaded, the widgets built),
    or with ``page_only`` to its page built (what Voilà shows first): the kernel's share of opening the page,
    without Voilà and the browser."""
    script = f"""
import time
start = time.perf_counter()
import json
cells = [cell for cell in json.load(open("app.ipynb"))["cells"] if cell["cell_type"] == "code"]
namespace = {{}}
for cell in cells[:-1] if {page_only} else cells:
    exec("".join(cell["source"]).replace("display(app.widget())", "app.widget()"), namespace)
    namespace["MODELS_DIR"], namespace["DEFAULT_MODEL"] = {str(model.parent)!r}, {model.name!r}
print(time.perf_counter() - start)
"""
    seconds = [float(subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
                     .stdout.split()[-1]) for _ in range(runs)]
    return round(statistics.median(seconds), 2)


def teach(app: dict, folder: Path, count: int) -> float:
    """Teach the landmark of ``folder`` (its first ``count`` photos) to the model in use with the Teach tab's form
    and button; the seconds of the click (read, add, save, switch to the new model)."""
    form = app["teach"]
    form.name.value = folder.name.split(".", 1)[-1].replace("_", " ")
    form.photos.value = [{"name": p.name, "type": "", "size": 0, "content": memoryview(p.read_bytes()),
                          "last_modified": datetime.datetime.now(datetime.timezone.utc)} for p in list_images(folder)[:count]]
    _, seconds = timed(form.teach)
    if "Learned" not in form.status.value:
        raise RuntimeError(f"teaching failed: {form.status.value}")
    return round(seconds / 1000, 2)


def remove_taught(app: dict, base: str) -> None:
    """Delete the taught model in use as its "Remove this model" button does (two clicks), and use ``base`` again."""
    app["app"].remove_model()
    app["app"].remove_model()
    app["app"].picker.value = base


def timed_teach(app: dict, folder: Path, count: int) -> float:
    """Seconds of one Teach click for ``count`` photos; the taught model is removed afterwards."""
    base = app["app"].picker.value
    seconds = teach(app, folder, count)
    remove_taught(app, base)
    return seconds


def taught_result_times(app: dict, folder: Path, photos: list[tuple[str, bytes]], whole) -> list[float]:
    """Teach the landmark of ``folder`` (its first 10 photos) to the model in use, as the app's Teach tab does,
    then time the whole result of every photo with that model (the why map included); the taught model is removed."""
    base = app["app"].picker.value
    teach(app, folder, 10)
    try:
        whole(*photos[0])  # warm-up
        return [whole(*photo) for photo in photos]
    finally:
        remove_taught(app, base)


if __name__ == "__main__":
    main()
