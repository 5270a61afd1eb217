"""Command line: ``python -m src {train,evaluate,export,add-landmarks,predict,tag,serve,models} ...``.

This module parses the arguments and hands them to :data:`COMMANDS`: the training side in :mod:`src.commands`, the
commands that run an exported model in :mod:`src.photo_commands`, each module imported only when one of its commands
runs. ``train`` runs the whole job on a dataset folder (:func:`~src.run.run_training`): split, train with the
best-validation weights kept, test, export a TorchScript predictor and write its metrics JSON beside it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .allocator import keep_freed_memory
from .checkpoint import CheckpointError
from .defaults import BATCH_SIZE, SEED, VALID_SIZE, threads_within_cores
from .distributed import shutdown
from .factory import SCRATCH, list_models
from .files import cache_limit_bytes
from .images import ImageReadError
from .location import DataNotFoundError
from .places import read_places_csv
from .recipes import recipe_settings
from .transfer import WeightsUnavailableError

COMMANDS: dict[str, str] = {  # command -> "module:function" of the package
    "train": "commands:train", "evaluate": "commands:evaluate", "export": "commands:export",
    "add-landmarks": "commands:add_landmarks_to", "models": "commands:models",
    "predict": "photo_commands:predict", "tag": "photo_commands:tag", "serve": "photo_commands:serve"}


# The shipped transfer model, found beside the package from any working folder (``PYTHONPATH=REPO python -m src ...``).
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "transfer_exported.pt"


def _add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=SHIPPED_MODEL,
                   help="exported model (TorchScript .pt, or .onnx; default: %(default)s)")


def command_function(name: str) -> Callable[[argparse.Namespace], Any]:
    """What command ``name`` runs, its module imported by this call (``predict`` thus never loads the training stack)."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(f".{module}", __package__), function)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a clear usage error otherwise)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value}")
    return value


def workers_count(text: str) -> int:
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (one per CPU core), 0 (no worker process) or more, got {value}")
    return value


def photo_limit(text: str) -> int:
    value = int(text)
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(f"must be a positive number of photos, or -1 for all, got {value}")
    return value


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset folder, test it and export it",
                       description="Recipe settings default to the recipe of the chosen model (src/recipes.py); "
                                   "sizes default to the rule of src/data_config.py.")
    p.add_argument("--data", help="dataset folder with train/ and test/ (default: $LANDMARK_DATA, ./landmark_images, download)")
    p.add_argument("--model", default="mobilenet_v2", help=f"'{SCRATCH}' or a backbone: {', '.join(list_models()[1:])} "
                   "(or any torchvision classification model, downloaded) (default: mobilenet_v2)")
    recipe = p.add_argument_group("recipe (default: the model's recipe, shown as 'scratch X, transfer Y')")
    for name, (kind, help_text, defaults) in recipe_settings().items():
        recipe.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"{help_text} ({', '.join(defaults)})")
    sizes = p.add_argument_group("preprocessing (default: from the model's native size and the photos' size)")
    sizes.add_argument("--eval-crop", type=positive_int, help="evaluation and prediction crop in pixels")
    sizes.add_argument("--resize", type=positive_int,
                       help="short side photos are resized to before the crop (default: the crop: the whole square)")
    sizes.add_argument("--train-crop", type=positive_int, help="training crop in pixels")
    p.add_argument("--valid-size", type=float, default=VALID_SIZE, help=f"fraction of train/ held out for validation (default: {VALID_SIZE})")
    p.add_argument("--negatives", type=Path, action="append", metavar="DIR",
                   help="folder of photos of no known landmark, for outlier exposure (repeatable; half of each "
                        "folder is held out to measure unknown detection on; default: the folders in $LANDMARK_NEGATIVES)")
    p.add_argument("--places", type=Path, metavar="CSV", help="places to add or correct (landmark,latitude,longitude,"
                   "country,city,wikidata); the package's src/places.csv covers the shipped datasets")
    p.add_argument("--limit", type=photo_limit, default=-1, help="use only this many training photos, for quick runs (default: all)")
    p.add_argument("--workers", type=workers_count, default=-1,
                   help="data loading processes (default -1: one per CPU core it may use, shared by torchrun's processes)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--checkpoint", type=Path, help="best weights (default: checkpoints/<model>.pt)")
    p.add_argument("--export", type=Path, help="TorchScript predictor (default: checkpoints/<model>_exported.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <checkpoint>.last.pt")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure a checkpoint or exported model on a dataset's test/ split",
                       description="Each test/ class folder is matched to a landmark of the model by name (numbered "
                                   "prefix and underscores aside), so photos of some of its landmarks are enough.")
    p.add_argument("model", type=Path, help="training checkpoint (.pt) or TorchScript export")
    p.add_argument("--data", help="dataset folder (default: as for train)")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--workers", type=workers_count, default=-1)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="turn a training checkpoint into a TorchScript predictor, or an export into ONNX",
                       description="The unknown threshold is chosen on the validation split of --data: give the "
                                   "--valid-size and --seed the checkpoint was trained with. With --format onnx, an "
                                   "exported model converts as it is (no data needed); `serve` runs an ONNX file "
                                   "beside its export (same name, .onnx) when onnxruntime is faster.")
    p.add_argument("checkpoint", type=Path, help="training checkpoint, or (with --format onnx) an exported model")
    p.add_argument("--out", type=Path, required=True, help="the exported file (.pt; .onnx with --format onnx)")
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript",
                   help="TorchScript (default: runs with torch alone, any photo size) or ONNX (onnxruntime; reads the "
                        "photo squares this project cuts)")
    p.add_argument("--data", help="dataset folder the checkpoint was trained on (default: as for train)")
    p.add_argument("--valid-size", type=float, default=VALID_SIZE, help=f"as given to train (default: {VALID_SIZE})")
    p.add_argument("--seed", type=int, default=SEED, help=f"as given to train (default: {SEED})")
    p.add_argument("--places", type=Path, metavar="CSV", help="places to add or correct (see train --places)")
    p.add_argument("--negatives", type=Path, action="append", metavar="DIR",
                   help="negatives folders it was trained with, kept in its feature memory for adding landmarks "
                        "(repeatable; default: the folders in $LANDMARK_NEGATIVES)")
    p.add_argument("--second-network", action="store_true",
                   help="models with landmarks added to this export carry a second ImageNet network (slower, a little "
                        "more accurate: docs/adding-landmarks.md) even where its own first stages could give those features")
    p.add_argument("--workers", type=workers_count, default=-1)
    p.add_argument("--force", action="store_true", help="replace an existing --out that is not a model exported by this project")


def _add_add_landmarks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("add-landmarks", help="add landmarks to an exported model from a few photos each (seconds, no retraining)",
                       description="PHOTOS_DIR holds one folder per new landmark (NN.Name/ or Name/) with a few photos "
                                   "each (1 to ~50). Writes a new exported model and a JSON record beside it. A landmark "
                                   "the model was trained against as a negatives folder is added under that folder's name "
                                   "(the model's metrics JSON lists them): its photos there then stop counting as no landmark; "
                                   "the command says so when a new landmark's photos look like such a folder of another name.")
    p.add_argument("model", type=Path, help="exported model to start from")
    p.add_argument("photos_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the new exported model (.pt)")
    p.add_argument("--places", type=Path, metavar="CSV", help="places of the new landmarks (see train --places)")
    p.add_argument("--replace", action="store_true", help="learn a landmark added earlier again from these photos")
    p.add_argument("--workers", type=workers_count, default=-1)
    p.add_argument("--force", action="store_true", help="replace an existing --out and its JSON record")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k landmarks for photos")
    p.add_argument("photos", type=Path, nargs="+")
    _add_model_option(p)
    p.add_argument("--topk", type=positive_int, default=5)


def _add_tag(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag", help="tag every photo of a folder into a CSV or JSON-lines file (resumable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("photos_dir", type=Path)
    _add_model_option(p)
    p.add_argument("--out", type=Path, required=True, help="tags.csv or tags.jsonl; an existing file is resumed")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--threshold", type=score_threshold, help="below this known score the landmark is 'unknown' "
                   "(default: the model's unknown_threshold, chosen on validation photos)")
    p.add_argument("--places", type=Path, metavar="CSV", help="places to add or correct (landmark,latitude,longitude,"
                   "country,city,wikidata); default: those the model carries")
    p.add_argument("--geotag", type=Path, metavar="DIR", help="write a copy of each photo of a known landmark here "
                   "(same relative path) with EXIF GPS set; originals are never modified")
    p.add_argument("--overwrite-gps", action="store_true", help="with --geotag: replace the GPS a photo already has")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local: decode in processes of this "
                   "machine; ray: decode and score on Ray Data (pip install -r requirements-scale.txt)")
    p.add_argument("--address", help="with --engine ray: join this Ray cluster (ray://HOST:10001 or HOST:6379); "
                   "without it, the one RAY_ADDRESS names or `ray start` started here, else a local Ray")
    p.add_argument("--from-list", type=Path, metavar="FILE", help="tag the photos this text file names (one per "
                   "line: a path relative to photos_dir or inside it, or a URI such as s3://bucket/photo.jpg, gs://, "
                   "hdfs://, file://, read with pyarrow) instead of walking photos_dir")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--workers", type=workers_count, default=-1,
                   help="decoding processes (-1: one per CPU core the process may use)")


def score_threshold(text: str) -> float:
    """argparse type: a threshold on ``known_score``, which lies from 0 to 1 (2 would make every photo unknown)."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a known score from 0 to 1, got {text}")
    return value


def positive_number(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="an HTTP service that tags photos (POST /tag; FastAPI + uvicorn)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="POST /tag takes multipart/form-data with parts named 'photo'; GET /health, "
                                   "/metrics; POST /admin/reload (or SIGHUP) loads the model file again. docs/service.md")
    _add_model_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port to listen on (1-65535)")
    p.add_argument("--token", help="bearer token required on every endpoint but /health (default: $LANDMARK_TOKEN; "
                   "none: no token)")
    p.add_argument("--max-photos", type=positive_int, default=16, help="photos per request")
    p.add_argument("--max-upload-mb", type=positive_number, default=50.0, help="megabytes per request")
    p.add_argument("--timeout", type=positive_number, default=30.0, help="seconds per request")
    p.add_argument("--max-batch", type=positive_int, default=32, help="photos the model scores at once, across requests")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="milliseconds a batch waits for photos still being read")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local: uvicorn in this process; ray: "
                   "on Ray Serve, model replicas across the cluster (pip install -r requirements-scale.txt)")
    p.add_argument("--address", help="with --engine ray: deploy on this Ray cluster (HOST:6379 or ray://HOST:10001); "
                   "without it, the one RAY_ADDRESS names or `ray start` started here, else a local Ray")
    p.add_argument("--replicas", type=positive_int, default=1, help="with --engine ray: model replicas (a GPU each where "
                   "the cluster has GPUs)")


def _add_models(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("models", help="list the model names `train --model` accepts offline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src", description="Landmark classification: train, evaluate, export, add landmarks, predict, tag, serve.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_export, _add_add_landmarks, _add_predict, _add_tag, _add_serve, _add_models):
        add(sub)
    return parser


def _check_settings(args: argparse.Namespace) -> None:
    """Refuse, before any work, settings that would otherwise stop a run only after minutes of it."""
    if args.command in ("train", "export"):
        cache_limit_bytes()  # they decode photos into the bounded cache
    if getattr(args, "places", None) is not None:
        read_places_csv(args.places)


def _interrupted_hint(args: argparse.Namespace) -> str:
    """What an interrupted command kept, and how to go on from it."""
    if args.command == "tag":
        return " (tags so far are saved: rerun the same command to continue)"
    if args.command != "train":
        return ""
    from .run import RunOutputs  # loaded by the training that was stopped
    from .train import last_state_path

    if last_state_path(RunOutputs.checkpoint_for(args.model, args.checkpoint)).is_file():
        return " (finished epochs are saved: rerun the same command with --resume)"
    return " before any epoch finished: nothing was saved"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    threads_within_cores()
    args.argv = argv  # recorded in the metrics JSON, so every number says how to reproduce it
    try:
        _check_settings(args)
        status = command_function(args.command)(args)
    except (DataNotFoundError, CheckpointError, WeightsUnavailableError, ImageReadError, ValueError, OSError,
            FloatingPointError) as error:
        # OSError: missing files, read-only or full folders, a folder given as a file; the message names the path;
        # FloatingPointError: a training whose loss diverged (its best epoch so far stays in the checkpoint)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"Interrupted{_interrupted_hint(args)}.", file=sys.stderr)
        return 130
    finally:
        shutdown()
    return status if isinstance(status, int) else 0
