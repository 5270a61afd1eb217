"""Adding landmarks from a few photos: accuracy on new and original landmarks, unknown detection, seconds.

    python bench/add_landmarks.py [--model checkpoints/transfer_exported.pt] [--shots 1 5 10 20] [--draws 3] [--without-floor]
                                  [--max-negatives-added SHARE] [--name NAME]

New landmarks: the folders of ``../shared/data/new_landmarks``, in three settings:

- ``never trained against``: the landmarks the base model did not see as negatives (its metrics
  JSON lists the negatives folders it trained with), added together: the honest case;
- ``all at once``: every folder (for those trained against as negatives, only their held-out half,
  :func:`src.data.split_negatives`, so no photo trained on is used);
- ``one at a time``: each never-trained landmark added alone, as a user of the app's "Teach a
  landmark" tab does (means over the landmarks and draws).

For each number of photos per landmark and each random draw, ``add_landmarks`` gets that many
photos of every new landmark (the *support*); the others (the *query*) measure it. Reported
(mean over draws): new-landmark top-1 among all classes and share accepted as known, original
top-1 and share accepted on the base's test split, unknown detection against the held-out
everyday scenes of ``non_landmarks`` (AUROC, FPR@95TPR and the share accepted) before and after
adding, the share of ``everyday`` photos accepted (:func:`everyday_sources`: ``everyday_tuned``, the
categories the similarity floor's share was chosen on, and ``everyday_left_out``, the categories kept out
of training, fitting, calibration and that choice: the honest figure), with the never-trained landmarks the share
of *other* landmarks accepted (the held-out photos of the landmarks trained against, which look most like
the added ones: the cost of accepting the added landmarks' photos), with one landmark at a time the share of
the other never-trained landmarks' photos accepted (``unseen_landmarks``: landmarks never in a negatives
folder, as most a user meets are; :func:`unseen_landmarks`), of both also the share accepted as a landmark of
another site (``_elsewhere``: a wrong place; a photo of Qutub Minar named as the Iron Pillar beside it gets the right
one, :data:`few_shot.SITES`; before adding, every accepted one is named as an original landmark), plus the seconds ``add_landmarks``
took (read, features, fit, script); see
:func:`few_shot.few_shot_draw`. Predictions come from each photo's features, computed once
(:func:`src.new_landmarks.combined_features`; ``logits_from_features`` of the new model, checked equal
to its ``classify``). The whole command line is also timed once (10 photos each, never-trained set), and
the model it writes is compared in file size with its base, and in photos per second (decoding included, in
batches of ``BATCH_SIZE`` as ``tag`` runs it and one photo at a time as the app and the service do; the best of 3
rounds that alternate the two models).
Writes ``bench/results/add_landmarks.json``; ``--without-floor`` measures the same draws with no
similarity floor for added landmarks (:func:`src.openset.similarity_floor`: what it buys) and writes
``bench/results/add_landmarks_without_floor.json``; ``--max-negatives-added`` measures them with another cap on the
held-out negatives that may pass as an added landmark (:data:`src.added_fit.MAX_NEGATIVES_ADDED`) and writes
``bench/results/add_landmarks_cap_SHARE.json`` (``--name`` gives another name). Neither times the command, which runs
the shipped settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils import REPO, write_result
from src.data import PhotoFolder
from src.location import split_negatives
from src.places import display_name
from src.decoding import square_batches
from src.defaults import BATCH_SIZE
from src.location import list_images
import src.added_fit as added_fit
from src.new_landmarks import add_landmarks, combined_features
from few_shot import few_shot_draw
from src.memory import photo_features
from src.openset import open_set_report
from src.export import load_exported

SHARED = REPO.parent / "shared" / "data"
FLOOR_CHOSEN_ON = ("animals", "clothing", "food", "indoor", "street", "vehicles")  # with the scenes; pets, objects, plants, people stay out


def new_landmark_photos(trained_negatives: list[str]) -> dict[str, dict[str, list[Path]]]:
    """``{setting: {landmark: photos never trained on}}``."""
    trained = {Path(folder).resolve() for folder in trained_negatives}
    folders = sorted(p for p in (SHARED / "new_landmarks").iterdir() if p.is_dir())
    photos = {display_name(f.name): (split_negatives(f)[1] if f.resolve() in trained else list_images(f)) for f in folders}
    never = {display_name(f.name): photos[display_name(f.name)] for f in folders if f.resolve() not in trained}
    return {"never trained against": never, "all at once": photos}


def check_features_route(base: torch.jit.ScriptModule, photos: dict[str, list[Path]], sample: list[Path]
                         ) -> torch.jit.ScriptModule:
    """The figures come from ``logits_from_features`` of features computed once: check it is ``classify``.
    Returns the model with landmarks added that it checked."""
    model, _ = add_landmarks(base, {name: paths[:3] for name, paths in photos.items()})
    with torch.inference_mode():
        routed = F.softmax(model.logits_from_features(photo_features(model, sample)[0]), 1)
        direct = model.classify(next(iter(square_batches(sample, int(model.resize_size), len(sample))))[1])[0]
    assert torch.allclose(routed, direct, atol=1e-5), "logits_from_features differs from classify"
    return model


def photos_per_second(model: torch.jit.ScriptModule, paths: list[Path], batch_size: int) -> float:
    """Photos a model classifies per second in batches of ``batch_size``, decoding included (as ``tag`` and
    ``predict_photos`` run it with :data:`~src.defaults.BATCH_SIZE` and decoding processes, the app and the service one
    photo at a time, decoded in process)."""
    start = time.perf_counter()
    with torch.inference_mode():
        for _, images, _ in square_batches(paths, int(model.resize_size), batch_size, num_workers=-1 if batch_size > 1 else 0):
            model.classify(images)
    return len(paths) / (time.perf_counter() - start)


def side_by_side(base: torch.jit.ScriptModule, added: torch.jit.ScriptModule, paths: list[Path], batch_size: int,
                 rounds: int = 3) -> dict[str, float]:
    """Photos per second of the base and of the model with added landmarks on the same photos, one after the other
    ``rounds`` times (this machine's speed drifts): the best round of each."""
    best = {"base": 0.0, "with_added_landmarks": 0.0}
    for _ in range(rounds):
        for key, model in (("base", base), ("with_added_landmarks", added)):
            best[key] = max(best[key], photos_per_second(model, paths, batch_size))
    return {key: round(value, 1) for key, value in best.items()}


def everyday_sources(trained_negatives: list[str]) -> dict[str, list[Path]]:
    """Photos of no landmark beside the scenes: ``everyday_tuned``, the ``everyday`` categories that
    :data:`~src.openset.FLOOR_SHARE` was chosen on (:data:`FLOOR_CHOSEN_ON`) or that the base trained on as
    negatives (their held-out half), and ``everyday_left_out``, every photo of the other categories, kept
    out of training, fitting, calibration and every choice."""
    trained = {Path(folder).resolve() for folder in trained_negatives}
    folders = sorted(p for p in (SHARED / "everyday").iterdir() if p.is_dir()) if (SHARED / "everyday").is_dir() else []
    tuned = [f for f in folders if f.name in FLOOR_CHOSEN_ON or f.resolve() in trained]
    sources = {"everyday_tuned": [p for f in tuned for p in (split_negatives(f)[1] if f.resolve() in trained else list_images(f))],
               "everyday_left_out": [p for f in folders if f not in tuned for p in list_images(f)]}
    return {source: paths for source, paths in sources.items() if paths}


def labelled(photos: dict[str, list[Path]], features: dict[Path, torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    """The ``features`` of every photo of ``photos`` (``{landmark: paths}``) that has them, and each one's landmark."""
    pairs = [(features[p], name) for name, paths in photos.items() for p in paths if p in features]
    return torch.stack([f for f, _ in pairs]), [name for _, name in pairs]


def unseen_landmarks(never: dict[str, list[Path]], added: dict[str, list[Path]], features: dict[Path, torch.Tensor]
                     ) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """``{"unseen_landmarks": (features, landmarks)}`` of every photo of the never-trained landmarks not being added
    (none left when they all are): landmarks neither known, nor added, nor ever in a negatives folder, as most are."""
    rest = {name: paths for name, paths in never.items() if name not in added}
    return {"unseen_landmarks": labelled(rest, features)} if rest else {}


def command_run(model_path: Path, photos: dict[str, list[Path]], shots: int) -> tuple[float, int]:
    """Wall-clock seconds of the whole ``add-landmarks`` command (interpreter start included), and the bytes of
    the model it writes."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in photos.items():
            folder = Path(tmp, "photos", name.replace(" ", "_"))
            folder.mkdir(parents=True)
            for path in paths[:shots]:
                (folder / path.name).symlink_to(path)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "src", "add-landmarks", str(model_path), f"{tmp}/photos", "--out",
                        f"{tmp}/added.pt"], cwd=REPO, check=True, capture_output=True)
        return time.perf_counter() - start, Path(tmp, "added.pt").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("checkpoints/transfer_exported.pt"))
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--without-floor", action="store_true", help="added landmarks get no similarity floor (the ablation)")
    parser.add_argument("--max-negatives-added", type=float, default=added_fit.MAX_NEGATIVES_ADDED, metavar="SHARE",
                        help=f"held-out negatives that may pass as an added landmark (default {added_fit.MAX_NEGATIVES_ADDED})")
    parser.add_argument("--name", help="result file name (default: add_landmarks, add_landmarks_without_floor or "
                                       "add_landmarks_cap_SHARE)")
    args = parser.parse_args()
    if args.without_floor:
        added_fit.similarity_floor = lambda *_, **__: -2.0  # the floor of "none": every similarity reaches it
    shipped_cap = args.max_negatives_added == added_fit.MAX_NEGATIVES_ADDED
    added_fit.MAX_NEGATIVES_ADDED = args.max_negatives_added
    base = load_exported(args.model)
    metrics = json.loads(args.model.with_suffix(".json").read_text())
    test_folder = PhotoFolder(Path(metrics["data"]) / "test")
    settings = new_landmark_photos(metrics.get("negatives", []))
    everything = sorted({p for photos in settings.values() for paths in photos.values() for p in paths})
    print(f"Features of {len(test_folder)} test, {len(everything)} new-landmark and the held-out scene photos")
    extractor = combined_features(base)
    test_features, kept, _ = photo_features(extractor, test_folder.paths)
    test = (test_features, np.asarray(test_folder.targets)[kept])
    new_features, kept, _ = photo_features(extractor, everything)
    features = {everything[i]: f for i, f in zip(kept, new_features)}
    scene_photos = split_negatives(SHARED / "non_landmarks")[1]
    scenes = photo_features(extractor, scene_photos)[0]
    everyday = everyday_sources(metrics.get("negatives", []))
    everyday_features = {source: photo_features(extractor, paths)[0] for source, paths in everyday.items()}
    base_test = photo_features(base, test_folder.paths)[0]  # before adding: the base as it runs alone
    with torch.inference_mode():
        base_probabilities = F.softmax(base.logits_from_features(base_test), 1)
        before = open_set_report(base.known_score_from_features(base_test).numpy(),
                                 base.known_score_from_features(photo_features(base, scene_photos)[0]).numpy(),
                                 float(base.unknown_threshold))
        never = settings["never trained against"]
        other_landmarks = {name: paths for name, paths in settings["all at once"].items() if name not in never}
        other_photos = [p for paths in other_landmarks.values() for p in paths]
        other_scores = base.known_score_from_features(photo_features(base, other_photos)[0])
        other_before = round(float((other_scores >= float(base.unknown_threshold)).float().mean()), 4)
        unseen_scores = base.known_score_from_features(photo_features(base, [p for paths in never.values() for p in paths])[0])
        unseen_before = round(float((unseen_scores >= float(base.unknown_threshold)).float().mean()), 4)
        everyday_before = {source: round(float((base.known_score_from_features(photo_features(base, paths)[0])
                                                >= float(base.unknown_threshold)).float().mean()), 4)
                           for source, paths in everyday.items()}
    print(f"Before adding: {other_before:.1%} of {len(other_photos)} photos of other landmarks accepted, "
          f"{unseen_before:.1%} of the never-trained landmarks' photos; everyday photos "
          + ", ".join(f"{source} {everyday_before[source]:.1%} of {len(paths)}" for source, paths in everyday.items()))
    added = check_features_route(base, never, test_folder.paths[:20])
    speed = side_by_side(base, added, test_folder.paths[:500], BATCH_SIZE)
    speed_one = side_by_side(base, added, test_folder.paths[:100], 1)
    print(f"Photos classified per second, batches of {BATCH_SIZE}: {speed['base']:.0f} by the base, "
          f"{speed['with_added_landmarks']:.0f} with landmarks added; one at a time: {speed_one['base']:.0f} and "
          f"{speed_one['with_added_landmarks']:.0f}")
    rows = []
    others = {"other_landmarks": labelled(other_landmarks, features)}
    groups = {setting: [photos] for setting, photos in settings.items()}
    groups["one at a time"] = [{name: paths} for name, paths in never.items()]  # as the app's "Teach a landmark" tab
    for setting, group in groups.items():
        measure_others = setting != "all at once"  # there, the other landmarks are added too
        for shots in args.shots:
            draws = [few_shot_draw(base, photos, shots, seed, features, test, scenes,
                                   {**(others if measure_others else {}), **unseen_landmarks(never, photos, features)},
                                   everyday_features)
                     for photos in group for seed in range(args.draws)]
            row = {"setting": setting, "new_landmarks": len(group[0]), "photos_per_landmark": shots, "draws": args.draws,
                   **{key: round(float(np.mean([d[key] for d in draws])), 4) for key in draws[0]}}
            rows.append(row)
            print(f"{setting:22s} {len(group[0]):2d} new x {shots:2d} photos: new top-1 {row['new_top1']:.1%} (accepted "
                  f"{row['new_accepted']:.1%}), original top-1 {row['original_top1']:.2%} (accepted {row['original_accepted']:.1%}), "
                  f"scenes accepted {row['unknown_accepted']:.1%} (AUROC {row['unknown_auroc']:.4f}), "
                  + "".join(f"{source} accepted {row[source + '_accepted']:.1%}, " for source in everyday)
                  + (f"other landmarks accepted {row['other_landmarks_accepted']:.1%} "
                     f"({row['other_landmarks_elsewhere']:.1%} at another site), " if measure_others else "")
                  + (f"never-seen landmarks accepted {row['unseen_landmarks_accepted']:.1%} "
                     f"({row['unseen_landmarks_elsewhere']:.1%} at another site), " if "unseen_landmarks_accepted" in row else "")
                  + f"{row['seconds']:.1f} s", flush=True)
    name = args.name or ("add_landmarks_without_floor" if args.without_floor else
                         "add_landmarks" if shipped_cap else f"add_landmarks_cap_{args.max_negatives_added:g}")
    record = {"model": str(args.model), "similarity_floor": not args.without_floor,
              "max_negatives_added": args.max_negatives_added,
              "original_top1_before": round(float((base_probabilities.argmax(1).numpy() == test[1]).mean()), 4),
              "scenes_before": before, "other_landmarks_before": other_before, "unseen_landmarks_before": unseen_before,
              "everyday_before": everyday_before,
              "everyday_photos": {source: len(paths) for source, paths in everyday.items()},
              "photos_per_second": speed, "photos_per_second_one_at_a_time": speed_one, "rows": rows}
    if not args.without_floor and shipped_cap:
        command, size = command_run(args.model, never, 10)
        print(f"Whole add-landmarks command, {len(never)} landmarks x 10 photos: {command:.1f} s; the model it writes is "
              f"{size / args.model.stat().st_size:.2f}x its base's file size")
        record.update(command_seconds_10_photos=round(command, 1), file_size_ratio=round(size / args.model.stat().st_size, 3))
    write_result(name, record)


if __name__ == "__main__":
    main()
