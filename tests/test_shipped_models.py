"""The shipped exported models: load with torch alone in a fresh process, small, and right on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_without_src, shared_folder
from src.location import split_negatives
from src.places import display_name

SHIPPED = ["original_exported.pt", "transfer_exported.pt"]
MAX_SCENES_ACCEPTED = {"original_exported.pt": 8, "transfer_exported.pt": 3}  # of 21 (bench/openset.py: all of them)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_predicts_in_a_fresh_process(name: str, tmp_path: Path) -> None:
    path = REPO / "checkpoints" / name
    assert path.is_file(), f"{path} is not in the repository"
    assert path.stat().st_size <= 30e6
    metrics = json.loads(path.with_suffix(".json").read_text())
    assert metrics["test"]["photos"] == 2000 and len(metrics["test"]["per_class_top1"]) == 10
    result = run_without_src(f"""
        import torch
        model = torch.jit.load({str(path)!r}, map_location="cpu")
        assert len(model.class_names) == 10
        probabilities = model(torch.randint(0, 256, (2, 3, 600, 800), dtype=torch.uint8))
        assert probabilities.shape == (2, 10) and torch.allclose(probabilities.sum(1), torch.ones(2))
        print("ok")
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_names_real_landmarks(name: str, landmarks10: Path, tmp_path: Path) -> None:
    """With torch, Pillow and NumPy alone, the first test photo of every landmark (10 photos) is mostly right."""
    photos = sorted(landmarks10.glob("test/*/*.jpg"))[::200]
    assert len(photos) == 10
    result = run_without_src(f"""
        import numpy as np
        import torch
        from PIL import Image
        model = torch.jit.load({str(REPO / "checkpoints" / name)!r}, map_location="cpu")
        correct = 0
        for path in {[str(p) for p in photos]!r}:
            image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
            best = int(model(image)[0].argmax())
            correct += model.class_names[best].replace(" ", "_") in path
        print(correct)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 8  # ~95 % or better on the test split


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_says_unknown_for_scene_photos_and_knows_its_places(name: str, landmarks10: Path, tmp_path: Path) -> None:
    """With torch alone: held-out scene photos (never trained on) fall under the threshold, test photos do not."""
    scenes_folder = shared_folder(landmarks10.parent / "non_landmarks")
    scenes = split_negatives(scenes_folder)[1][::33]
    landmarks = sorted(landmarks10.glob("test/*/*.jpg"))[::100]
    assert len(scenes) == 21 and len(landmarks) == 20
    result = run_without_src(f"""
        import json
        import numpy as np
        import torch
        from PIL import Image
        model = torch.jit.load({str(REPO / "checkpoints" / name)!r}, map_location="cpu")
        def accepted(paths):
            images = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]
            return sum(float(model.known_score(image)[0]) >= model.unknown_threshold for image in images)
        print(json.dumps({{"scenes": accepted({[str(p) for p in scenes]!r}), "landmarks": accepted({[str(p) for p in landmarks]!r}),
                          "places": json.loads(model.places_json)}}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["scenes"] <= MAX_SCENES_ACCEPTED[name] and answer["landmarks"] >= 18
    assert len(answer["places"]) == 10 and answer["places"]["Colosseum"]["city"] == "Rome"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_learns_a_new_landmark_from_a_few_photos(name: str, landmarks10: Path) -> None:
    """Every shipped export keeps its feature memory: 8 photos of a landmark it does not know teach it,
    and other photos of that landmark are then named, while its own landmarks keep their names."""
    folder = shared_folder(landmarks10.parent / "new_landmarks" / "13.Lotus_Temple")
    from src.new_landmarks import add_landmarks
    from src.predictor import predict_photos
    from src.export import export_view, load_exported

    base = load_exported(REPO / "checkpoints" / name)
    assert len(base.memory_features) == len(base.memory_targets) == len(base.general_memory) > 1000
    sources = export_view(base).negative_sources  # each remembered negative's folder, so a folder's landmark can be added
    assert "non landmarks" in sources and set((-1 - base.memory_targets[base.memory_targets < 0]).tolist()) <= set(range(len(sources)))
    assert len(base.memory_as_added) == int((base.memory_targets >= 0).sum())  # its validation photos as read when adding
    photos = sorted(folder.glob("*.jpg"))
    model, _ = add_landmarks(base, {"Lotus Temple": photos[:8]}, num_workers=0)
    query = photos[8::4]
    known = sorted(landmarks10.glob("test/*/*.jpg"))[::100]
    targets = [10] * len(query) + [list(base.class_names).index(display_name(p.parent.name)) for p in known]
    truth, probabilities, known_scores = predict_photos(model, query + known, targets, num_workers=0)
    correct = probabilities.argmax(1) == truth
    assert correct[:len(query)].mean() >= 0.6 and correct[len(query):].mean() >= 0.9, correct
    # 8 photos in file-name order are much alike: held out, they alone would set too strict a standard
    accepted = known_scores >= float(model.unknown_threshold)
    assert accepted[:len(query)].mean() >= 0.7 and accepted[len(query):].mean() >= 0.9, accepted
