"""What the training-side ``python -m src`` commands do (``train``, ``evaluate``, ``export``, ``add-landmarks``,
``models``), given their parsed arguments; :mod:`src.cli` parses and dispatches, and :mod:`src.photo_commands` holds
the commands that only run an exported model.

Each command checks its outputs before any work, prints what a person needs, and returns its figures.
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

from .checkpoint import CheckpointError, checkpoint_config, model_from_checkpoint, predictor_from_checkpoint
from .data import PhotoFolder, get_data_loaders
from .distributed import init_from_env, is_main_process, printing_on_rank_0_only, rank, world_size
from .evaluation import classification_report
from .export import ExportView, Predictor, export_predictor, export_view, open_export, torchscript_on_purpose
from .factory import list_models
from .files import atomic_write, check_model_name, check_outputs
from .finish import calibrated_predictor
from .helpers import get_device, seed_everything, setup_env
from .location import get_data_location, negatives_from_env
from .model_files import is_torchscript_file
from .new_landmarks import add_landmarks, alike_folder_notes, read_new_landmarks, save_added
from .onnx_export import export_onnx, file_sha256
from .places import listed, places_for
from .predictor import predict_photos
from .recipes import recipe_for, recipe_settings
from .run import RunData, RunOutputs, run_training


def _opened_export(path: Path) -> ExportView | None:
    """``path`` as a model exported by this project (what ``export`` may replace without --force, and converts to ONNX
    as it is), or None for any other file."""
    try:
        return open_export(path)
    except (ValueError, OSError):
        return None


def _load_any(path: Path) -> ExportView:
    """An exported model, or a training checkpoint wrapped as one."""
    try:
        return open_export(path)
    except ValueError:
        with torchscript_on_purpose():
            return export_view(torch.jit.script(predictor_from_checkpoint(path)), path)


def train(args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(args.seed)
    if init_from_env():
        print(f"Distributed training: rank {rank()} of {world_size()}")
    recipe = recipe_for(args.model, **{name: getattr(args, name) for name in recipe_settings()})
    sizes = {name: getattr(args, name) for name in ("eval_crop", "resize", "train_crop") if getattr(args, name) is not None}
    data = RunData(args.data, args.valid_size, args.limit, args.negatives, args.places, args.workers, args.seed, sizes)
    outputs = RunOutputs.for_model(args.model, args.checkpoint, args.export)
    with printing_on_rank_0_only():
        result = run_training(args.model, recipe, data, outputs, "python -m src " + shlex.join(args.argv),
                              resume=args.resume, main_process=is_main_process())
    return result.metrics if result is not None else {}


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    if args.json is not None:
        check_outputs(model=args.model, **{"JSON report": args.json})
    model = _load_any(args.model)
    env = setup_env(args.data)
    test = PhotoFolder(env.data_dir / "test")
    foreign = [name for name in test.class_names if name not in model.class_names]
    if foreign:  # photos of some of its landmarks are fine: each folder is matched to the model's class by name
        raise CheckpointError(f"{env.data_dir}/test: {len(foreign)} of its {len(test.class_names)} class folders name no "
                              f"landmark of {args.model} ({listed(foreign)}); its landmarks: {', '.join(model.class_names)}")
    index = [model.class_names.index(name) for name in test.class_names]  # each test class's index in the model
    targets = [index[target] for target in test.targets]
    truth, probabilities, known_scores = predict_photos(model, test.paths, targets, args.batch_size, args.workers)
    report = classification_report(truth, probabilities, model.class_names)
    report["known_accepted"] = round(float((known_scores >= model.unknown_threshold).mean()), 4)
    k = report["k"]
    print(f"{args.model} on {env.data_dir}/test: top-1 {report['top1']:.2%}, top-{k} {report[f'top{k}']:.2%} "
          f"({report['photos']} photos); {report['known_accepted']:.1%} accepted as known (threshold {model.unknown_threshold:.3f})")
    for name, accuracy in sorted(report["per_class_top1"].items(), key=lambda item: item[1]):
        print(f"  {accuracy:7.2%}  {name}")
    if args.json:
        summary = {"model": str(args.model), "data": str(env.data_dir), **report}
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return report


def export(args: argparse.Namespace) -> None:
    onnx = args.format == "onnx"
    if onnx and args.out.suffix != ".onnx":
        raise ValueError(f"{args.out}: an ONNX file is read by its name; name it .onnx")
    if not onnx:
        check_model_name(args.out, "exported model")
    check_outputs(checkpoint=args.checkpoint, **{"exported model": args.out})
    if args.out.exists() and not args.force and _opened_export(args.out) is None:
        raise ValueError(f"{args.out}: exists and is not a model exported by this project; give another --out, "
                         "or --force to replace it")
    if not onnx and is_torchscript_file(args.checkpoint):  # told from its zip directory: nothing loaded to refuse it
        raise ValueError(f"{args.checkpoint}: an exported model already; `export` makes one from a training checkpoint "
                         "(`train --checkpoint`), and `--format onnx` converts an export as it is")
    exported = _opened_export(args.checkpoint) if onnx else None
    if exported is not None:  # an export converts as it is: no data, no calibration
        if args.second_network:
            raise ValueError(f"{args.checkpoint}: --second-network is chosen when a training checkpoint is exported; "
                             "this file is an export already and converts as it is")
        path = export_onnx(exported, args.out, file_sha256(args.checkpoint))
    else:
        predictor = _calibrated(args)
        path = export_onnx(predictor, args.out) if onnx else export_predictor(predictor, args.out)
    print(f"Exported {args.checkpoint} to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _calibrated(args: argparse.Namespace) -> Predictor:
    """The predictor of a training checkpoint, its unknown detector calibrated on the validation split it was trained with."""
    model, checkpoint = model_from_checkpoint(args.checkpoint)
    data_dir = get_data_location(args.data, download=False)  # the photos it was trained on: never a download
    loaders = get_data_loaders(valid_size=args.valid_size, num_workers=args.workers, data_dir=data_dir, seed=args.seed,
                               config=checkpoint_config(checkpoint, args.checkpoint))
    valid_set = loaders["valid"].dataset
    if valid_set.class_names != list(checkpoint["class_names"]):
        raise CheckpointError(f"{args.checkpoint}: trained on other classes ({listed(checkpoint['class_names'])}) than "
                              f"those of {data_dir}/train ({listed(valid_set.class_names)}); export calibrates on the "
                              "validation photos of the dataset it was trained on: give that one with --data")
    negatives = args.negatives if args.negatives is not None else negatives_from_env()
    return calibrated_predictor(model, valid_set, args.places, args.workers, negatives, loaders["train"].dataset,
                                share_trunk=not args.second_network)


def add_landmarks_command(base_path: Path, photos_dir: Path, out: Path, places_csv: Path | None, replace: bool,
                          num_workers: int = -1) -> dict:
    """Read, add, save, and return the record written beside the new model (``skipped`` lists the photos that
    could not be read, ``notes`` the landmarks that look like a negatives folder of another name)."""
    start = time.perf_counter()
    model = open_export(base_path)
    photos = read_new_landmarks(photos_dir)
    with alike_folder_notes() as notes:
        new_model, skipped = add_landmarks(model, photos, places_for(list(photos), places_csv), replace, num_workers)
    return save_added(new_model, out, str(base_path), {name: len(paths) for name, paths in photos.items()}, skipped,
                      time.perf_counter() - start, notes, photos_dir=str(photos_dir))


def add_landmarks_to(args: argparse.Namespace) -> None:
    check_model_name(args.out, "new model")
    if args.out.resolve() == args.model.resolve():
        raise ValueError(f"{args.out}: the new model would overwrite the one it starts from; give another --out")
    check_outputs(**{"new model": args.out, "record": args.out.with_suffix(".json")})
    existing = [str(path) for path in (args.out, args.out.with_suffix(".json")) if path.exists()]
    if existing and not args.force:
        raise ValueError(f"{' and '.join(existing)} already exist(s): give another --out, or --force to replace")
    record = add_landmarks_command(args.model, args.photos_dir, args.out, args.places, args.replace, args.workers)
    for message in record["skipped"] + record["notes"]:
        print(message, file=sys.stderr)
    added = ", ".join(f"{name} ({n} photo{'s' if n != 1 else ''})" for name, n in record["added"].items())
    print(f"Added {added} to {args.model} in {record['seconds']:.1f} s -> {args.out} "
          f"({len(record['class_names'])} landmarks, unknown threshold {record['unknown_threshold']:.3f}; ImageNet features from a "
          f"{record['imagenet_features']})")


def models(args: argparse.Namespace) -> None:
    print("\n".join(list_models()))
    print(f"(device: {get_device()})")
