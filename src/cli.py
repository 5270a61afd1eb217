"""Command line: ``python -m src {train,evaluate,export,add-landmarks,predict,tag,models} ...``.

``train`` runs the whole job on a dataset folder: split, train with the best-validation
weights kept, test, export a TorchScript predictor and write its metrics JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import CheckpointError, checkpoint_config, model_from_checkpoint
from .data import PhotoFolder, get_data_loaders
from .distributed import init_from_env, is_main_process, rank, shutdown, world_size
from .evaluation import classification_report
from .factory import SCRATCH, create_model, data_defaults, list_models
from .files import cache_limit_bytes, check_outputs
from .finetune import fine_tune
from .finish import calibrated_predictor, finish_run
from .helpers import get_device, seed_everything, setup_env
from .images import ImageReadError
from .location import DataNotFoundError, get_data_location, negatives_from_env
from .new_landmarks import add_landmarks_command
from .optimization import get_loss, get_optimizer
from .places import read_places_csv
from .predictor import (export_predictor, load_exported, model_threshold, predict_photo, predict_photos,
                        predictor_from_checkpoint, torchscript_on_purpose)
from .preprocessing import resolve_data_config
from .recipes import ScratchRecipe, recipe_for, recipe_settings
from .tagging import model_places, tag_photos
from .train import last_state_path, load_best, optimize
from .transfer import WeightsUnavailableError


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (a clear usage error otherwise)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
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
                                   "sizes default to the rule of src/preprocessing.py.")
    p.add_argument("--data", help="dataset folder with train/ and test/ (default: $LANDMARK_DATA, ./landmark_images, download)")
    p.add_argument("--model", default="mobilenet_v2", help=f"'{SCRATCH}' or a backbone: {', '.join(list_models()[1:])} "
                   "(or any torchvision classification model, downloaded) (default: mobilenet_v2)")
    recipe = p.add_argument_group("recipe (default: the model's recipe, shown as 'scratch X, transfer Y')")
    for name, (kind, help_text, defaults) in recipe_settings().items():
        recipe.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"{help_text} ({', '.join(defaults)})")
    sizes = p.add_argument_group("preprocessing (default: from the model's native size and the photos' size)")
    sizes.add_argument("--eval-crop", type=positive_int, help="evaluation and prediction crop in pixels")
    sizes.add_argument("--resize", type=positive_int, help="short side photos are resized to before the crop")
    sizes.add_argument("--train-crop", type=positive_int, help="training crop in pixels")
    p.add_argument("--valid-size", type=float, default=0.2, help="fraction of train/ held out for validation (default: 0.2)")
    p.add_argument("--negatives", type=Path, action="append", metavar="DIR",
                   help="folder of photos of no known landmark, for outlier exposure (repeatable; half of each "
                        "folder is held out to measure unknown detection on; default: the folders in $LANDMARK_NEGATIVES)")
    p.add_argument("--places", type=Path, metavar="CSV", help="places to add or correct (landmark,latitude,longitude,"
                   "country,city,wikidata); the package's src/places.csv covers the shipped datasets")
    p.add_argument("--limit", type=photo_limit, default=-1, help="use only this many training photos, for quick runs (default: all)")
    p.add_argument("--workers", type=workers_count, default=-1, help="data loading processes (default -1: one per CPU core)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--checkpoint", type=Path, help="best weights (default: checkpoints/<model>.pt)")
    p.add_argument("--export", type=Path, help="TorchScript predictor (default: checkpoints/<model>_exported.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <checkpoint>.last.pt")


def _add_other(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure a checkpoint or exported model on a dataset's test/ split")
    p.add_argument("model", type=Path, help="training checkpoint (.pt) or TorchScript export")
    p.add_argument("--data", help="dataset folder (default: as for train)")
    p.add_argument("--batch-size", type=positive_int, default=50)
    p.add_argument("--workers", type=workers_count, default=-1)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")

    p = sub.add_parser("export", help="turn a training checkpoint into a TorchScript predictor",
                       description="The unknown threshold is chosen on the validation split of --data: give the "
                                   "--valid-size and --seed the checkpoint was trained with.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", help="dataset folder the checkpoint was trained on (default: as for train)")
    p.add_argument("--valid-size", type=float, default=0.2, help="as given to train (default: 0.2)")
    p.add_argument("--seed", type=int, default=42, help="as given to train (default: 42)")
    p.add_argument("--places", type=Path, metavar="CSV", help="places to add or correct (see train --places)")
    p.add_argument("--negatives", type=Path, action="append", metavar="DIR",
                   help="negatives folders it was trained with, kept in its feature memory for adding landmarks "
                        "(repeatable; default: the folders in $LANDMARK_NEGATIVES)")
    p.add_argument("--workers", type=workers_count, default=-1)
    p.add_argument("--force", action="store_true", help="replace an existing --out that is not a model exported by this project")

    p = sub.add_parser("add-landmarks", help="add landmarks to an exported model from a few photos each (seconds, no retraining)",
                       description="PHOTOS_DIR holds one folder per new landmark (NN.Name/ or Name/) with a few photos "
                                   "each (1 to ~50). Writes a new exported model and a JSON record beside it.")
    p.add_argument("model", type=Path, help="exported model to start from")
    p.add_argument("photos_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the new exported model (.pt)")
    p.add_argument("--places", type=Path, metavar="CSV", help="places of the new landmarks (see train --places)")
    p.add_argument("--replace", action="store_true", help="learn a landmark added earlier again from these photos")
    p.add_argument("--workers", type=workers_count, default=-1)
    p.add_argument("--force", action="store_true", help="replace an existing --out and its JSON record")

    p = sub.add_parser("predict", help="top-k landmarks for photos")
    p.add_argument("photos", type=Path, nargs="+")
    p.add_argument("--model", type=Path, default=Path("checkpoints/transfer_exported.pt"), help="TorchScript export")
    p.add_argument("--topk", type=positive_int, default=5)

    p = sub.add_parser("tag", help="tag every photo of a folder into a CSV or JSON-lines file (resumable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("photos_dir", type=Path)
    p.add_argument("--model", type=Path, default=Path("checkpoints/transfer_exported.pt"), help="TorchScript export")
    p.add_argument("--out", type=Path, required=True, help="tags.csv or tags.jsonl; an existing file is resumed")
    p.add_argument("--topk", type=positive_int, default=5)
    p.add_argument("--threshold", type=float, help="below this known score the landmark is 'unknown' "
                   "(default: the model's unknown_threshold, chosen on validation photos)")
    p.add_argument("--places", type=Path, metavar="CSV", help="places to add or correct (landmark,latitude,longitude,"
                   "country,city,wikidata); default: those the model carries")
    p.add_argument("--geotag", type=Path, metavar="DIR", help="write a copy of each photo of a known landmark here "
                   "(same relative path) with EXIF GPS set; originals are never modified")
    p.add_argument("--overwrite-gps", action="store_true", help="with --geotag: replace the GPS a photo already has")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local: decode in processes of this "
                   "machine; ray: decode and score on Ray Data (pip install -r requirements-scale.txt)")
    p.add_argument("--address", help="with --engine ray: join this Ray cluster (ray://HOST:10001 or HOST:6379) instead "
                   "of starting a local Ray")
    p.add_argument("--from-list", type=Path, metavar="FILE", help="tag the photos this text file names (one per "
                   "line: a path relative to photos_dir or inside it, or a URI such as s3://bucket/photo.jpg, gs://, "
                   "hdfs://, file://, read with pyarrow) instead of walking photos_dir")
    p.add_argument("--batch-size", type=positive_int, default=50)
    p.add_argument("--workers", type=workers_count, default=-1, help="decoding processes (-1: one per CPU core)")

    sub.add_parser("models", help="list the model names `train --model` accepts offline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src", description="Landmark classification: train, evaluate, export, add landmarks, predict, tag.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_other(sub)
    return parser


def _check_model_name(path: Path, what: str) -> None:
    """Refuse a model path not ending in .pt: its JSON goes beside it with the suffix swapped, so ``DIR/name``
    or ``DIR/name.json`` would replace another model's JSON. A folder is left to :func:`check_outputs` to name."""
    if path.suffix != ".pt" and not path.is_dir():
        raise ValueError(f"{path}: the {what} is a TorchScript file (its JSON goes beside it as .json); name it .pt")


def _is_export(path: Path) -> bool:
    """Whether ``path`` is a model exported by this project (what ``export`` may replace without --force)."""
    try:
        load_exported(path)
    except (ValueError, OSError):
        return False
    return True


def _train_outputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The checkpoint and export paths, refused before any work when they collide or cannot be written."""
    checkpoint = args.checkpoint or Path("checkpoints") / f"{args.model}.pt"
    export = args.export or Path("checkpoints") / f"{args.model}_exported.pt"
    _check_model_name(export, "export")
    check_outputs(checkpoint=checkpoint, **{"resumable state": last_state_path(checkpoint)}, export=export,
                  **{"metrics JSON": export.with_suffix(".json")})
    return checkpoint, export


def _train(args: argparse.Namespace) -> dict[str, Any]:
    settings = {name: getattr(args, name) for name in recipe_settings()}
    recipe = recipe_for(args.model, **settings)
    negatives = args.negatives if args.negatives is not None else negatives_from_env()
    checkpoint, export = _train_outputs(args)
    env = setup_env(args.data, seed=args.seed)
    config = resolve_data_config(data_defaults(args.model), env.data_dir, eval_crop=args.eval_crop, resize=args.resize,
                                 train_crop=args.train_crop, train_crop_ratio=recipe.train_crop_ratio)
    loaders = get_data_loaders(batch_size=recipe.batch_size, valid_size=args.valid_size, num_workers=args.workers,
                               limit=args.limit, data_dir=env.data_dir, config=config, seed=args.seed,
                               negatives=negatives)
    model = create_model(args.model, len(loaders["train"].dataset.class_names), dropout=recipe.dropout)
    print(f"Model {args.model}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters; "
          f"{len(loaders['train'].dataset.paths)} train (+{len(loaders['train'].dataset.negatives)} negatives) / {len(loaders['valid'].dataset)} valid / {len(loaders['test'].dataset)} test photos; "
          f"{config}\n{recipe}")
    start = time.perf_counter()
    if isinstance(recipe, ScratchRecipe):
        loss = get_loss(recipe.label_smoothing, recipe.outlier_weight)
        optimizer = get_optimizer(model, recipe.optimizer, learning_rate=recipe.lr, momentum=recipe.momentum,
                                  weight_decay=recipe.weight_decay)
        history = optimize(loaders, model, optimizer, loss, recipe.epochs, checkpoint, scheduler=recipe.scheduler,
                           resume=args.resume)
        head_history, head_seconds = [], 0.0
    else:
        stages = fine_tune(loaders, model, checkpoint, recipe, resume=args.resume, seed=args.seed)
        head_history, head_seconds = stages["head"], stages["head_seconds"]
        history = stages["fine_tune"] or head_history  # a frozen backbone (--epochs 0) has stage 1 only
    train_seconds = time.perf_counter() - start
    if not is_main_process():  # rank 0 tests and exports
        return {}

    load_best(model, checkpoint)
    result = finish_run(model, loaders["test"].dataset, export, valid_set=loaders["valid"].dataset,
                        train_set=loaders["train"].dataset, negatives=negatives, places_csv=args.places,
                        command="python -m src " + shlex.join(args.argv),
                        model_name=args.model, data_dir=env.data_dir, device=env.device, history=history,
                        train_seconds=train_seconds, num_workers=args.workers, stage1_seconds=round(head_seconds, 1),
                        stage1_head_history=head_history, checkpoint=str(checkpoint))
    metrics, report, k = result.metrics, result.report, result.report["k"]
    scratch = isinstance(recipe, ScratchRecipe)
    print("\nSummary")
    print(f"  model            {args.model} ({'from scratch' if scratch else 'frozen backbone' if model.backbone_frozen else f'last {model.trainable_stages} backbone stages fine-tuned'})")
    print(f"  training         {len(history)} epochs in {train_seconds / 60:.1f} min on {env.device}")
    print(f"  validation       best accuracy {metrics['valid_accuracy']:.2%} (epoch {metrics['best_epoch']})")
    print(f"  test             top-1 {report['top1']:.2%}, top-{k} {report[f'top{k}']:.2%} on {report['photos']} photos")
    print(f"  checkpoint       {checkpoint}")
    print(f"  exported model   {export} ({metrics['export_megabytes']} MB), metrics in {export.with_suffix('.json')}")
    return metrics


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if args.json is not None:
        check_outputs(model=args.model, **{"JSON report": args.json})
    model = _load_any(args.model)
    env = setup_env(args.data)
    test = PhotoFolder(env.data_dir / "test")
    if list(model.class_names) != test.class_names:
        raise CheckpointError(f"{args.model}: its {len(model.class_names)} classes do not match the "
                              f"{len(test.class_names)} classes of {env.data_dir}/test")
    truth, probabilities, known_scores = predict_photos(model, test.paths, test.targets, args.batch_size, args.workers)
    report = classification_report(truth, probabilities, test.class_names)
    report["known_accepted"] = round(float((known_scores >= model_threshold(model)).mean()), 4)
    k = report["k"]
    print(f"{args.model} on {env.data_dir}/test: top-1 {report['top1']:.2%}, top-{k} {report[f'top{k}']:.2%} "
          f"({report['photos']} photos); {report['known_accepted']:.1%} accepted as known (threshold {model_threshold(model):.3f})")
    for name, accuracy in sorted(report["per_class_top1"].items(), key=lambda item: item[1]):
        print(f"  {accuracy:7.2%}  {name}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "data": str(env.data_dir), **report}, indent=2))
    return report


def _load_any(path: Path) -> torch.nn.Module:
    """An exported predictor, or a training checkpoint wrapped as one."""
    try:
        return load_exported(path)
    except ValueError:
        with torchscript_on_purpose():
            return torch.jit.script(predictor_from_checkpoint(path))


def _export(args: argparse.Namespace) -> None:
    _check_model_name(args.out, "exported model")
    check_outputs(checkpoint=args.checkpoint, **{"exported model": args.out})
    if args.out.exists() and not args.force and not _is_export(args.out):
        raise ValueError(f"{args.out}: exists and is not a model exported by this project; give another --out, "
                         "or --force to replace it")
    model, checkpoint = model_from_checkpoint(args.checkpoint)
    data_dir = get_data_location(args.data, download=False)  # the photos it was trained on: never a download
    loaders = get_data_loaders(valid_size=args.valid_size, num_workers=args.workers, data_dir=data_dir, seed=args.seed,
                               config=checkpoint_config(checkpoint, args.checkpoint))
    valid_set = loaders["valid"].dataset
    if valid_set.class_names != list(checkpoint["class_names"]):
        raise CheckpointError(f"{args.checkpoint}: its classes do not match those of {data_dir}/train")
    negatives = args.negatives if args.negatives is not None else negatives_from_env()
    predictor = calibrated_predictor(model, valid_set, args.places, args.workers, negatives, loaders["train"].dataset)
    path = export_predictor(predictor, args.out)
    print(f"Exported {args.checkpoint} to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _add_landmarks(args: argparse.Namespace) -> None:
    _check_model_name(args.out, "new model")
    if args.out.resolve() == args.model.resolve():
        raise ValueError(f"{args.out}: the new model would overwrite the one it starts from; give another --out")
    check_outputs(**{"new model": args.out, "record": args.out.with_suffix(".json")})
    existing = [str(path) for path in (args.out, args.out.with_suffix(".json")) if path.exists()]
    if existing and not args.force:
        raise ValueError(f"{' and '.join(existing)} already exist(s): give another --out, or --force to replace")
    record = add_landmarks_command(args.model, args.photos_dir, args.out, args.places, args.replace, args.workers)
    for message in record["skipped"]:
        print(message, file=sys.stderr)
    added = ", ".join(f"{name} ({n} photos)" for name, n in record["added"].items())
    print(f"Added {added} to {args.model} in {record['seconds']:.1f} s -> {args.out} "
          f"({len(record['class_names'])} landmarks, unknown threshold {record['unknown_threshold']:.3f})")


def _predict(args: argparse.Namespace) -> int:
    model = load_exported(args.model)
    places = model_places(model)
    failures = 0
    for photo in args.photos:
        try:
            prediction = predict_photo(model, photo, args.topk)
        except ImageReadError as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"{photo}\n  -> {prediction.verdict(places)}")
        for name, probability in prediction.ranking:
            print(f"  {probability:7.2%}  {name}")
    return 1 if failures else 0


def _tag(args: argparse.Namespace) -> None:
    if args.overwrite_gps and args.geotag is None:
        raise ValueError("--overwrite-gps only applies with --geotag DIR")
    if args.address is not None and args.engine != "ray":
        raise ValueError("--address only applies with --engine ray")
    model = load_exported(args.model)
    summary = tag_photos(model, args.photos_dir, args.out, args.topk, args.threshold, args.batch_size, args.workers,
                         model_path=args.model, places_csv=args.places, geotag_dir=args.geotag, overwrite_gps=args.overwrite_gps,
                         from_list=args.from_list, engine=args.engine, address=args.address)
    for message in summary.unreadable:
        print(f"skipped unreadable photo: {message}", file=sys.stderr)
    threshold = model_threshold(model) if args.threshold is None else args.threshold
    geotagged = f", {summary.geotagged} geotagged copies in {args.geotag}" if args.geotag else ""
    print(f"Tagged {summary.tagged} photos ({summary.unknown} unknown: known score below {threshold:.3f}){geotagged}, "
          f"{len(summary.unreadable)} unreadable, {summary.skipped_done} already done, "
          f"in {summary.seconds:.1f} s ({summary.photos_per_second:.0f} photos/s) -> {args.out}")


def _check_settings(args: argparse.Namespace) -> None:
    """Refuse, before any work, settings that would otherwise stop a run only after minutes of it."""
    if args.command in ("train", "export"):
        cache_limit_bytes()  # they decode photos into the bounded cache
    if getattr(args, "places", None) is not None:
        read_places_csv(args.places)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the metrics JSON, so every number says how to reproduce it
    try:
        _check_settings(args)
        if args.command == "train":
            seed_everything(args.seed)
            if init_from_env():
                print(f"Distributed training: rank {rank()} of {world_size()}")
            _train(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "add-landmarks":
            _add_landmarks(args)
        elif args.command == "predict":
            return _predict(args)
        elif args.command == "tag":
            _tag(args)
        elif args.command == "models":
            print("\n".join(list_models()))
            print(f"(device: {get_device()})")
    except (DataNotFoundError, CheckpointError, WeightsUnavailableError, ImageReadError, ValueError, OSError) as error:
        # OSError: missing files, read-only or full folders, a folder given as a file; the message names the path
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {"train": " (finished epochs are saved: rerun the same command with --resume)",
                "tag": " (tags so far are saved: rerun the same command to continue)"}.get(args.command, "")
        print(f"Interrupted{hint}.", file=sys.stderr)
        return 130
    finally:
        shutdown()
    return 0
