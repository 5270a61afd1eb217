"""Could a model with added landmarks run its ImageNet network only for the photos that need it?

    python bench/feature_gate.py [--model checkpoints/transfer_exported.pt] [--shots 10] [--draws 3]

A model with added landmarks spends most of a photo's time in its second network (docs/adding-landmarks.md). A photo
needs that network's features only if it could be one of the added landmarks; the others could get the base's own
answer at the base's speed. This bench asks whether the base's own features, which every photo gets anyway, can tell
those photos apart. A *gate* scores each photo by its base features against the added landmarks' given photos:

- ``nearest``: the cosine similarity to the nearest given photo, features centred on the mean of the photos the
  export remembers (raw, every pair of photos is alike: the features are non-negative);
- ``margin``: that similarity less the one to the nearest photo the export remembers (of an original landmark or of
  no landmark).

A photo whose score reaches a threshold runs the whole model with added landmarks; any other gets the base's answer
(its class among the original landmarks, or unknown, by the base's own detector). The threshold comes from the given
photos alone, each scored against the others of its landmark (left out in turn): their lowest score (``lowest``) or
their 5th percentile (``5th percentile``). No photo a figure is measured on takes part in that choice.

The 9 landmarks of ``new_landmarks`` the base never trained against are added at once, ``--shots`` photos each
(``--draws`` random draws, :func:`few_shot.draw`, as ``bench/add_landmarks.py`` draws them). Reported for each gate
and threshold (means over the draws): the share of each source's photos that would still run the ImageNet network (the
new landmarks' other photos, the base's test photos, the held-out scene photos, the ``everyday`` categories kept out
of every choice, the held-out photos of the landmarks trained against), and the new landmarks' photos and the original
test photos named right and accepted, with and without the gate. The speed a gate could buy at most, its own cost left
out, is estimated from times measured in the same run on the base's test photos, decoding included: the base's and the
model's photos per second in batches of ``BATCH_SIZE`` and the ImageNet network's milliseconds a photo, which the
photos that skip it save. Writes ``bench/results/feature_gate.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils import REPO, write_result
from add_landmarks import everyday_sources, new_landmark_photos, side_by_side
from few_shot import accepted_elsewhere, draw
from src.data import PhotoFolder
from src.decoding import square_batches
from src.defaults import BATCH_SIZE
from src.export import load_exported
from src.location import split_negatives
from src.memory import photo_features
from src.new_landmarks import add_landmarks, combined_features

SHARED = REPO.parent / "shared" / "data"
GATES = ("nearest", "margin")
THRESHOLDS = {"lowest": 0.0, "5th percentile": 0.05}


def gate_scores(photos: torch.Tensor, given: list[torch.Tensor], remembered: torch.Tensor, gate: str) -> torch.Tensor:
    """Each photo's gate score from its base features (rows of ``photos``, unit length and centred, as ``given``, the
    given photos' by landmark, and ``remembered``, the export's memory)."""
    score = (photos @ torch.cat(given).T).max(1).values
    return score - (photos @ remembered.T).max(1).values if gate == "margin" else score


def held_out_scores(given: list[torch.Tensor], remembered: torch.Tensor, gate: str) -> torch.Tensor:
    """Each given photo's gate score against the other given photos of its landmark (itself left out)."""
    scores = []
    for photos in given:
        similarity = photos @ photos.T
        similarity.fill_diagonal_(-2.0)
        score = similarity.max(1).values
        scores.append(score - (photos @ remembered.T).max(1).values if gate == "margin" else score)
    return torch.cat(scores)


def answers(model: torch.jit.ScriptModule, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The class each photo is named as and whether it is accepted, from its features."""
    with torch.inference_mode():
        return (model.logits_from_features(features).argmax(1).numpy(),
                (model.known_score_from_features(features) >= float(model.unknown_threshold)).numpy())


def at_most(speed: dict[str, float], imagenet_ms: float, runs: float) -> float:
    """The model's speed against its base's if only a share ``runs`` of the photos ran the ImageNet network (the gate's
    own cost left out)."""
    return round((1000 / speed["base"]) / (1000 / speed["with_added_landmarks"] - (1 - runs) * imagenet_ms), 3)


def imagenet_ms_per_photo(extractor: torch.nn.Module, paths: list[Path]) -> float:
    """Milliseconds a photo of the second network alone, on photos decoded beforehand (the best of 3 rounds)."""
    batches = [images for _, images, _ in square_batches(paths, int(extractor.resize_size), BATCH_SIZE)]
    best = float("inf")
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            for images in batches:
                extractor.general(images)
            best = min(best, time.perf_counter() - start)
    return 1000 * best / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    base = load_exported(args.model)
    metrics = json.loads(args.model.with_suffix(".json").read_text())
    test_folder = PhotoFolder(Path(metrics["data"]) / "test")
    settings = new_landmark_photos(metrics.get("negatives", []))
    never = settings["never trained against"]
    others = {name: paths for name, paths in settings["all at once"].items() if name not in never}
    extractor = combined_features(base)
    split = extractor.base_size

    def read(paths: list[Path]) -> tuple[torch.Tensor, list[Path]]:
        features, kept, _ = photo_features(extractor, paths)
        return features, [paths[i] for i in kept]

    test_features, kept, _ = photo_features(extractor, test_folder.paths)
    test_targets = np.asarray(test_folder.targets)[kept]
    landmark_features, landmark_paths = read(sorted({p for paths in settings["all at once"].values() for p in paths}))
    by_path = dict(zip(landmark_paths, landmark_features))
    other_paths = [(name, p) for name, paths in others.items() for p in paths if p in by_path]
    fixed = {"original": test_features, "scenes": read(split_negatives(SHARED / "non_landmarks")[1])[0],
             "everyday_left_out": read(everyday_sources(metrics.get("negatives", []))["everyday_left_out"])[0],
             "other_landmarks": torch.stack([by_path[p] for _, p in other_paths])}
    centre = base.memory_features.float().mean(0)

    def unit(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features[:, :split].float() - centre, dim=1)

    remembered = unit(base.memory_features)
    base_answer = {source: answers(base, features[:, :split]) for source, features in fixed.items()}
    draws = []
    for seed in range(args.draws):
        support, query, query_targets = draw(never, args.shots, seed, by_path, len(base.class_names))
        model, _ = add_landmarks(base, support)
        sources = {"new": torch.stack([by_path[p] for p in query]), **fixed}
        targets = {"new": np.asarray(query_targets), "original": test_targets}
        given = [unit(torch.stack([by_path[p] for p in paths if p in by_path])) for paths in support.values()]
        model_answer = {source: answers(model, features) for source, features in sources.items()}
        base_answers = {**base_answer, "new": answers(base, sources["new"][:, :split])}
        row = {}
        for gate in GATES:
            held_out = held_out_scores(given, remembered, gate)
            for threshold_name, share in THRESHOLDS.items():
                threshold = float(held_out.min() if share == 0 else held_out.quantile(share))
                figures: dict[str, float] = {}
                for source, features in sources.items():
                    runs = (gate_scores(unit(features), given, remembered, gate) >= threshold).numpy()
                    (named, accepted), (base_named, base_accepted) = model_answer[source], base_answers[source]
                    gated_named, gated_accepted = np.where(runs, named, base_named), np.where(runs, accepted, base_accepted)
                    figures[f"{source}_runs_imagenet"] = float(runs.mean())
                    if source in targets:
                        figures[f"{source}_named_and_accepted"] = float(((named == targets[source]) & accepted).mean())
                        figures[f"{source}_named_and_accepted_gated"] = float(
                            ((gated_named == targets[source]) & gated_accepted).mean())
                    elif source == "other_landmarks":
                        landmarks = [name for name, _ in other_paths]
                        for key, (n, a) in (("", (named, accepted)), ("_gated", (gated_named, gated_accepted))):
                            figures[f"other_landmarks_elsewhere{key}"] = float(accepted_elsewhere(
                                [model.class_names[c] for c in n], landmarks, a).mean())
                    else:
                        figures[f"{source}_accepted"] = float(accepted.mean())
                        figures[f"{source}_accepted_gated"] = float(gated_accepted.mean())
                row[f"{gate}, {threshold_name}"] = figures
        draws.append(row)
        print(f"draw {seed}: " + "; ".join(f"{key}: original {f['original_runs_imagenet']:.0%}, everyday "
                                           f"{f['everyday_left_out_runs_imagenet']:.0%} run it" for key, f in row.items()),
              flush=True)
    speed = side_by_side(base, model, test_folder.paths[:500], BATCH_SIZE)
    imagenet_ms = imagenet_ms_per_photo(extractor, test_folder.paths[:500])
    gates = {}
    for key in draws[0]:
        mean = {figure: round(float(np.mean([draw[key][figure] for draw in draws])), 4) for figure in draws[0][key]}
        mean["at_most_x_base_original"] = at_most(speed, imagenet_ms, mean["original_runs_imagenet"])
        mean["at_most_x_base_everyday"] = at_most(speed, imagenet_ms, mean["everyday_left_out_runs_imagenet"])
        gates[key] = mean
        print(f"{key:24s} runs the ImageNet network for: new {mean['new_runs_imagenet']:.1%}, original "
              f"{mean['original_runs_imagenet']:.1%}, scenes {mean['scenes_runs_imagenet']:.1%}, everyday "
              f"{mean['everyday_left_out_runs_imagenet']:.1%}; new named right and accepted "
              f"{mean['new_named_and_accepted']:.1%} -> {mean['new_named_and_accepted_gated']:.1%}; at most "
              f"{mean['at_most_x_base_original']:.2f}x the base on its test photos, {mean['at_most_x_base_everyday']:.2f}x "
              "on everyday photos")
    write_result("feature_gate", {"model": str(args.model), "shots": args.shots, "draws": args.draws,
                                  "photos_per_second": speed, "imagenet_ms_per_photo": round(imagenet_ms, 2),
                                  "gates": gates})


if __name__ == "__main__":
    main()
