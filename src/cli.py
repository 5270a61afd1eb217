"""Command line: ``python -m src {train,evaluate,export,predict,models} ...``.

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
from .checkpoint import CheckpointError
from .data import PhotoFolder, get_data_loaders
from .distributed import init_from_env, is_main_process, rank, shutdown, world_size
from .evaluation import classification_report, training_metrics, write_metrics
from .factory import SCRATCH, create_model, list_models
from .finetune import FineTuneRecipe, fine_tune
from .helpers import DataNotFoundError, get_device, seed_everything, setup_env
from .images import ImageReadError
from .optimization import OPTIMIZERS, get_loss, get_optimizer
from .predictor import Predictor, export_predictor, load_exported, predict_photos, predictor_from_checkpoint, top_k
from .tagging import tag_photos
from .train import load_best, optimize
from .transfer import WeightsUnavailableError, get_backbone_spec


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset folder, test it and export it",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", help="dataset folder with train/ and test/ (default: $LANDMARK_DATA, ./landmark_images, download)")
    p.add_argument("--model", default="mobilenet_v2", help=f"'{SCRATCH}' or a backbone: {', '.join(list_models()[1:])} "
                   "(or any torchvision classification model, downloaded)")
    p.add_argument("--epochs", type=int, default=10, help="epochs on augmented photos (transfer: stage 2; 0 stops after stage 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 3e-3 scratch, 1e-3 transfer)")
    p.add_argument("--optimizer", default="AdamW", choices=OPTIMIZERS, help="scratch only (transfer: AdamW with per-stage rates)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=None, help="(default: 5e-2 scratch, 1e-4 transfer)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=None, help="(default: 0.3 scratch, 0.2 transfer)")
    p.add_argument("--head-epochs", type=int, default=30, help="transfer stage 1: head epochs on cached backbone features")
    p.add_argument("--feature-views", type=int, default=1, help="transfer stage 1: augmented views per photo (plus the centre)")
    p.add_argument("--unfreeze", type=int, default=12, help="transfer stage 2: backbone stages trained (0 frozen, -1 all)")
    p.add_argument("--backbone-lr", type=float, default=5e-4, help="transfer stage 2: learning rate of the unfrozen stages")
    p.add_argument("--image-size", type=int, default=224, help="evaluation (and prediction) crop size in pixels")
    p.add_argument("--resize-size", type=int, default=None, help="short side photos are resized to before the crop "
                   "(default: image size x 256/224)")
    p.add_argument("--train-size", type=int, default=None, help="training crop size (default: image size)")
    p.add_argument("--valid-size", type=float, default=0.2, help="fraction of train/ held out for validation")
    p.add_argument("--limit", type=int, default=-1, help="use only this many training photos (quick runs)")
    p.add_argument("--scheduler", default="cosine", choices=("cosine", "plateau"))
    p.add_argument("--workers", type=int, default=-1, help="data loading processes (-1: one per CPU core)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--checkpoint", type=Path, help="best weights (default: checkpoints/<model>.pt)")
    p.add_argument("--export", type=Path, help="TorchScript predictor (default: checkpoints/<model>_exported.pt)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from <checkpoint>.last.pt")


def _add_other(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="measure a checkpoint or exported model on a dataset's test/ split")
    p.add_argument("model", type=Path, help="training checkpoint (.pt) or TorchScript export")
    p.add_argument("--data", help="dataset folder (default: as for train)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")

    p = sub.add_parser("export", help="turn a training checkpoint into a TorchScript predictor")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("predict", help="top-k landmarks for photos")
    p.add_argument("photos", type=Path, nargs="+")
    p.add_argument("--model", type=Path, default=Path("checkpoints/transfer_exported.pt"), help="TorchScript export")
    p.add_argument("--topk", type=int, default=5)

    p = sub.add_parser("tag", help="tag every photo of a folder into a CSV or JSON-lines file (resumable)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("photos_dir", type=Path)
    p.add_argument("--model", type=Path, default=Path("checkpoints/transfer_exported.pt"), help="TorchScript export")
    p.add_argument("--out", type=Path, required=True, help="tags.csv or tags.jsonl; an existing file is resumed")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.5, help="below this top-1 probability the landmark is 'unknown'")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (-1: one per CPU core)")

    sub.add_parser("models", help="list the model names `train --model` accepts offline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src", description="Landmark classification: train, evaluate, export, predict, tag.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_other(sub)
    return parser


def _train(args: argparse.Namespace) -> dict[str, Any]:
    scratch = args.model == SCRATCH
    lr = args.lr or (3e-3 if scratch else 1e-3)
    weight_decay = args.weight_decay if args.weight_decay is not None else (5e-2 if scratch else 1e-4)
    dropout = args.dropout if args.dropout is not None else (0.3 if scratch else 0.2)
    checkpoint = args.checkpoint or Path("checkpoints") / f"{args.model}.pt"
    export = args.export or Path("checkpoints") / f"{args.model}_exported.pt"

    env = setup_env(args.data, seed=args.seed)
    norm: dict[str, Any] = {}
    if not scratch:  # a pretrained backbone dictates the normalisation of its inputs
        spec = get_backbone_spec(args.model)
        norm = {"mean": spec.mean, "std": spec.std}
    loaders = get_data_loaders(batch_size=args.batch_size, valid_size=args.valid_size, num_workers=args.workers,
                               limit=args.limit, data_dir=env.data_dir, image_size=args.image_size,
                               resize_size=args.resize_size, train_size=args.train_size, seed=args.seed, **norm)
    model_kwargs: dict[str, Any] = {"dropout": dropout}
    model = create_model(args.model, len(loaders["train"].dataset.class_names), **model_kwargs)
    print(f"Model {args.model}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters; "
          f"{len(loaders['train'].dataset)} train / {len(loaders['valid'].dataset)} valid / {len(loaders['test'].dataset)} test photos")
    start = time.perf_counter()
    if scratch:
        loss = get_loss(label_smoothing=args.label_smoothing)
        optimizer = get_optimizer(model, args.optimizer, learning_rate=lr, momentum=args.momentum, weight_decay=weight_decay)
        history = optimize(loaders, model, optimizer, loss, args.epochs, checkpoint, scheduler=args.scheduler, resume=args.resume)
        head_history, head_seconds = [], 0.0
    else:
        recipe = FineTuneRecipe(head_epochs=args.head_epochs, feature_views=args.feature_views, unfreeze=args.unfreeze,
                                epochs=args.epochs, head_lr=lr, backbone_lr=args.backbone_lr, weight_decay=weight_decay,
                                label_smoothing=args.label_smoothing)
        stages = fine_tune(loaders, model, checkpoint, recipe, resume=args.resume, seed=args.seed)
        head_history, head_seconds = stages["head"], stages["head_seconds"]
        history = stages["fine_tune"] or head_history  # a frozen backbone (--epochs 0) has stage 1 only
    train_seconds = time.perf_counter() - start
    if not is_main_process():  # rank 0 tests and exports
        return {}

    load_best(model, checkpoint)
    model.cpu()
    dataset = loaders["test"].dataset
    predictor = Predictor(model, dataset.class_names, dataset.mean, dataset.std, dataset.image_size, dataset.resize_size)
    export_predictor(predictor, export)
    exported = load_exported(export)
    truth, probabilities = predict_photos(exported, dataset.paths, dataset.targets, num_workers=args.workers)
    report = classification_report(truth, probabilities, exported.class_names)
    metrics = training_metrics("python -m src " + shlex.join(args.argv), args.model, env.data_dir, env.device, history,
                               train_seconds, report, export, stage1_seconds=round(head_seconds, 1),
                               stage1_head_history=head_history, checkpoint=str(checkpoint))
    write_metrics(export, metrics)
    print("\nSummary")
    print(f"  model            {args.model} ({'from scratch' if scratch else 'frozen backbone' if model.backbone_frozen else f'last {model.trainable_stages} backbone stages fine-tuned'})")
    print(f"  training         {len(history)} epochs in {train_seconds / 60:.1f} min on {env.device}")
    print(f"  validation       best accuracy {metrics['valid_accuracy']:.2%} (epoch {metrics['best_epoch']})")
    print(f"  test             top-1 {report['top1']:.2%}, top-5 {report.get('top5', report['top1']):.2%} on {report['photos']} photos")
    print(f"  checkpoint       {checkpoint}")
    print(f"  exported model   {export} ({metrics['export_megabytes']} MB), metrics in {export.with_suffix('.json')}")
    return metrics


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    model = _load_any(args.model)
    env = setup_env(args.data)
    test = PhotoFolder(env.data_dir / "test")
    if list(model.class_names) != test.class_names:
        raise CheckpointError(f"{args.model}: its {len(model.class_names)} classes do not match the "
                              f"{len(test.class_names)} classes of {env.data_dir}/test")
    truth, probabilities = predict_photos(model, test.paths, test.targets, args.batch_size, args.workers)
    report = classification_report(truth, probabilities, test.class_names)
    print(f"{args.model} on {env.data_dir}/test: top-1 {report['top1']:.2%}, top-5 {report.get('top5', report['top1']):.2%} "
          f"({report['photos']} photos)")
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
        return torch.jit.script(predictor_from_checkpoint(path))


def _export(args: argparse.Namespace) -> None:
    path = export_predictor(predictor_from_checkpoint(args.checkpoint), args.out)
    print(f"Exported {args.checkpoint} to {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _predict(args: argparse.Namespace) -> int:
    model = load_exported(args.model)
    failures = 0
    for photo in args.photos:
        try:
            ranking = top_k(model, photo, args.topk)
        except ImageReadError as error:
            print(f"error: {error}", file=sys.stderr)
            failures += 1
            continue
        print(photo)
        for name, probability in ranking:
            print(f"  {probability:7.2%}  {name}")
    return 1 if failures else 0


def _tag(args: argparse.Namespace) -> None:
    summary = tag_photos(load_exported(args.model), args.photos_dir, args.out, args.topk, args.threshold,
                         args.batch_size, args.workers)
    for message in summary.unreadable:
        print(f"skipped unreadable photo: {message}", file=sys.stderr)
    print(f"Tagged {summary.tagged} photos ({summary.unknown} unknown below {args.threshold:.0%}), "
          f"{len(summary.unreadable)} unreadable, {summary.skipped_done} already done, "
          f"in {summary.seconds:.1f} s ({summary.photos_per_second:.0f} photos/s) -> {args.out}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the metrics JSON, so every number says how to reproduce it
    try:
        if args.command == "train":
            seed_everything(args.seed)
            if init_from_env():
                print(f"Distributed training: rank {rank()} of {world_size()}")
            _train(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "predict":
            return _predict(args)
        elif args.command == "tag":
            _tag(args)
        elif args.command == "models":
            print("\n".join(list_models()))
            print(f"(device: {get_device()})")
    except (DataNotFoundError, CheckpointError, WeightsUnavailableError, ImageReadError, FileNotFoundError, ValueError) as error:
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
