"""Adding landmarks to an exported model from a few photos (src/new_landmarks.py, `add-landmarks`)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import TINY_CLASSES, noise_photos, run_without_src, tiny_config
import src.commands as commands
from src.cli import main
from src.factory import create_model, list_models
from src.imagenet_features import GENERAL_BACKBONE, GENERAL_SIZE, PHOTOS_PER_PASS, ImageNetFeatures
import src.added_fit as added_fit
import src.new_landmarks as new_landmarks
from src.added_fit import MAX_NEGATIVES_ADDED, VIEWS, HeldOut, held_out
from src.new_landmarks import add_landmarks, read_new_landmarks
from src.commands import add_landmarks_command
from src.decoding import square_batches
from src.export import Predictor, export_predictor, export_view, load_exported, open_export, save_scripted
from src.memory import FEATURE_BATCH, MEMORY_NEGATIVES, feature_memory, photo_features
from src.onnx_export import export_onnx
from src.openset import nearest_of_class, percentile, similarity_floor, unit_features
from src.places import Place

BASE_NAMES = ["Red Fort", "Green Gate"]
# the tiny bases' untrained features put most new photos nearest to their noise negatives: that warning is tested on its own
pytestmark = pytest.mark.filterwarnings("ignore::src.new_landmarks.AlikeFolderWarning")


def _photos(folder: Path, name: str) -> list[Path]:
    return sorted((folder / name).iterdir())


def _base_export(tiny_data: Path, path: Path, name: str = "scratch", image_size: int = 32, memory: bool = True) -> Path:
    """A two-landmark export (Red Fort, Green Gate) with its feature memory, as finish_run writes it."""
    torch.manual_seed(0)
    kwargs = {"widths": (8, 16)} if name == "scratch" else {}
    network, places = create_model(name, 2, pretrained=False, **kwargs), {"Red Fort": Place(28.6562, 77.2410, "India", "Delhi")}
    predictor = Predictor(network, BASE_NAMES, tiny_config(image_size), unknown_threshold=0.5, places=places)
    if memory:
        paths = [p for c in TINY_CLASSES[:2] for p in _photos(tiny_data / "train", c)]
        targets = [i for i, c in enumerate(TINY_CLASSES[:2]) for _ in _photos(tiny_data / "train", c)]
        features, kept, _ = photo_features(predictor, paths, num_workers=0)
        kept_memory = feature_memory(predictor, features, [paths[i] for i in kept], [targets[i] for i in kept],
                                     [noise_photos(path.parent / "negatives")], num_workers=0)
        predictor = Predictor(network, BASE_NAMES, tiny_config(image_size), unknown_threshold=0.5, places=places,
                              memory=kept_memory)
    return export_predictor(predictor, path)


@pytest.fixture(scope="module")
def base_path(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _base_export(tiny_data, tmp_path_factory.mktemp("base") / "base.pt")


@pytest.fixture
def new_dir(tiny_data: Path, tmp_path: Path) -> Path:
    """One new landmark, Blue Tower: 6 of its photos and a damaged file."""
    folder = tmp_path / "new" / "02.Blue_Tower"
    folder.mkdir(parents=True)
    for photo in _photos(tiny_data / "train", TINY_CLASSES[2])[:6]:
        shutil.copy(photo, folder / photo.name)
    (folder / "damaged.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return tmp_path / "new"


def test_an_export_keeps_features_of_validation_photos_and_negatives(base_path: Path) -> None:
    model = load_exported(base_path)
    targets = model.memory_targets
    assert model.memory_features.dtype == torch.float16 and len(model.memory_features) == len(targets)
    assert (targets == 0).sum() == 12 and (targets == 1).sum() == 12 and 0 < (targets == -1).sum() <= MEMORY_NEGATIVES
    assert model.general_memory.shape == (len(targets), 1280) and model.general_memory.dtype == torch.float16
    assert (model.general_backbone, model.general_size) == (GENERAL_BACKBONE, GENERAL_SIZE)


def test_an_export_names_the_folder_of_each_remembered_negative(tiny_data: Path, tmp_path: Path) -> None:
    predictor = Predictor(create_model("scratch", 2, pretrained=False, widths=(8, 16)), BASE_NAMES, tiny_config(32))
    paths = _photos(tiny_data / "train", TINY_CLASSES[0])
    features, kept, _ = photo_features(predictor, paths, num_workers=0)
    tower = tmp_path / "07.Blue_Tower"
    tower.mkdir()
    for photo in _photos(tiny_data / "train", TINY_CLASSES[2]):
        shutil.copy(photo, tower / photo.name)
    memory = feature_memory(predictor, features, [paths[i] for i in kept], [0] * len(kept),
                            [noise_photos(tmp_path / "scenes"), tower], num_workers=0)
    view = export_view(torch.jit.load(export_predictor(Predictor(predictor.model, BASE_NAMES, tiny_config(32), memory=memory),
                                                       tmp_path / "named.pt")))
    assert view.negative_sources == ("scenes", "Blue Tower")
    negatives = view.memory_targets[view.memory_targets < 0]
    assert set(negatives.tolist()) == {-1, -2}  # -1 - k: a photo of folder k


def test_only_negatives_of_a_folder_named_as_an_added_landmark_are_left_out_for_it() -> None:
    targets = torch.tensor([0, 0, 1, 1, -1, -1, -2, -2, 2, 2])
    features = torch.randn(len(targets), 6)
    features[4:6] = features[8]  # scenes that look exactly like the added landmark's photos
    lookalike = added_fit.lookalike_negatives(features, targets, 2, 3, ("scenes", "Blue Tower"), ["blue  tower"])
    assert lookalike.tolist() == [False] * 6 + [True, True, False, False]  # by name: a lookalike of another folder stays a negative
    assert not added_fit.lookalike_negatives(features, targets, 2, 3, ("scenes", "Blue Tower"), ["Sky Gate"]).any()
    unnamed = added_fit.lookalike_negatives(features, targets, 2, 3)  # a memory that does not name them: by nearest photo
    assert unnamed[4] and unnamed[5]


def test_a_new_landmark_whose_photos_look_like_a_negatives_folder_of_another_name_is_said() -> None:
    targets = torch.tensor([0] * 4 + [-1] * 4 + [-2] * 4 + [2] * (4 * VIEWS))
    features = torch.randn(len(targets), 6)
    for photo, row in enumerate([8, 9, 10, 1]):  # 3 of the 4 new photos (all their views) are a Blue Tower negative's
        features[12 + photo * VIEWS:12 + (photo + 1) * VIEWS] = features[row]
    sources = ("scenes", "Blue Tower")
    alike = added_fit.folders_alike(features, targets, 3, sources, {"Azure Spire": 2})
    assert alike == {"Azure Spire": ("Blue Tower", 3, 4)}
    assert added_fit.folders_alike(features, targets, 3, sources, {"blue  tower": 2}) == {}  # under the folder's name
    assert added_fit.folders_alike(features, targets, 3, (), {"Azure Spire": 2}) == {}  # negatives of no named folder
    features[12 + 2 * VIEWS:12 + 3 * VIEWS] = features[0]  # 2 of 4 alike: under ALIKE_FOLDER_SHARE
    assert added_fit.folders_alike(features, targets, 3, sources, {"Azure Spire": 2}) == {}


def test_adding_a_negatives_folder_s_landmark_under_another_name_warns_and_the_command_says_it(
        tiny_data: Path, tmp_path: Path, capsys) -> None:
    predictor = Predictor(create_model("scratch", 2, pretrained=False, widths=(8, 16)), BASE_NAMES, tiny_config(32))
    paths = [p for c in TINY_CLASSES[:2] for p in _photos(tiny_data / "train", c)]
    features, kept, _ = photo_features(predictor, paths, num_workers=0)
    tower = tmp_path / "07.Blue_Tower"
    tower.mkdir()
    blue = _photos(tiny_data / "train", TINY_CLASSES[2])
    for photo in blue:
        shutil.copy(photo, tower / photo.name)
    memory = feature_memory(predictor, features, [paths[i] for i in kept], [i // 12 for i in kept], [tower], num_workers=0)
    base = export_predictor(Predictor(predictor.model, BASE_NAMES, tiny_config(32), memory=memory), tmp_path / "base.pt")
    with pytest.warns(new_landmarks.AlikeFolderWarning, match="'Azure Spire' look most like the negatives folder 'Blue Tower'"):
        add_landmarks(load_exported(base), {"Azure Spire": blue[:4]}, num_workers=0)
    with pytest.warns(new_landmarks.AlikeFolderWarning, match="The photo of 'Azure Spire' looks most like .* if it shows"):
        add_landmarks(load_exported(base), {"Azure Spire": blue[:1]}, num_workers=0)
    photos = tmp_path / "new" / "Azure_Spire"
    photos.mkdir(parents=True)
    for photo in blue[:4]:
        shutil.copy(photo, photos / photo.name)
    assert main(["add-landmarks", str(base), str(photos.parent), "--out", str(tmp_path / "added.pt"), "--workers", "0"]) == 0
    record = json.loads((tmp_path / "added.json").read_text())
    assert len(record["notes"]) == 1 and record["notes"][0] in capsys.readouterr().err
    (photos.parent / "Azure_Spire").rename(photos.parent / "Blue_Tower")  # under the folder's name: nothing to say
    assert main(["add-landmarks", str(base), str(photos.parent), "--out", str(tmp_path / "named.pt"), "--workers", "0"]) == 0
    assert json.loads((tmp_path / "named.json").read_text())["notes"] == []


def test_an_export_keeps_its_validation_photos_as_a_model_with_added_landmarks_reads_them(base_path: Path, tiny_data: Path
                                                                                          ) -> None:
    model = load_exported(base_path)
    validation = [p for c in TINY_CLASSES[:2] for p in _photos(tiny_data / "train", c)]  # the memory's 24 rows
    combined = new_landmarks.combined_features(model)
    as_read, _, _ = photo_features(combined, validation, num_workers=0)  # read at 224 px, the base scales them down
    assert model.memory_as_added.shape == (24, model.memory_features.shape[1]) and model.memory_as_added.dtype == torch.float16
    assert torch.allclose(model.memory_as_added.float(), as_read[:, :combined.base_size], atol=2e-2)
    assert not torch.allclose(model.memory_features[:24].float(), as_read[:, :combined.base_size], atol=2e-2)  # 37 px reads differ


def test_a_model_with_added_landmarks_calibrates_on_its_validation_photos_as_it_reads_them(base_path: Path, tiny_data: Path
                                                                                          ) -> None:
    base = load_exported(base_path)
    split = base.memory_features.shape[1]
    as_added = torch.cat([base.memory_as_added.float(), base.general_memory[:24].float()], 1)
    unit = unit_features(as_added, split)
    once, _ = add_landmarks(base, {"Blue Tower": _photos(tiny_data / "train", TINY_CLASSES[2])[:4]}, num_workers=0)
    assert torch.allclose(once.detector.remembered(unit)[0][:, :24], unit @ unit.T, atol=1e-3)
    twice, _ = add_landmarks(once, {"Sky Gate": _photos(tiny_data / "train", TINY_CLASSES[2])[4:8]}, num_workers=0)
    assert torch.allclose(twice.detector.remembered(unit)[0][:, :24], unit @ unit.T, atol=1e-3)


def test_imagenet_features_take_raw_photos_of_any_size_and_script() -> None:
    extractor = ImageNetFeatures()
    photos = torch.randint(0, 256, (2, 3, 90, 70), dtype=torch.uint8)
    features = extractor(photos)
    assert features.shape == (2, 1280)
    assert torch.allclose(extractor(photos[0]), features[:1], atol=1e-4)  # one photo (3, H, W) as a batch of one
    assert torch.allclose(extractor(photos.float() / 255), features, atol=1e-4)  # floats 0-1 as uint8 0-255
    assert torch.allclose(torch.jit.script(extractor)(photos), features, atol=1e-4)


def test_imagenet_features_take_a_cpu_batch_a_few_photos_at_a_time_with_the_same_features() -> None:
    extractor, passes = ImageNetFeatures(photos_per_pass=2), []
    extractor.backbone.register_forward_hook(lambda module, inputs, output: passes.append(len(inputs[0])))
    photos = torch.randint(0, 256, (5, 3, 60, 80), dtype=torch.uint8)
    features = extractor(photos)
    assert passes == [2, 2, 1]  # a few photos' activations at 224 px are blocks glibc keeps; a batch's are not
    extractor.photos_per_pass = 0
    assert torch.allclose(extractor(photos), features, atol=1e-5) and passes[3:] == [5]  # 0: the batch in one pass


def test_a_new_landmark_is_learned_and_the_old_ones_are_untouched(base_path: Path, new_dir: Path, tiny_data: Path) -> None:
    base = load_exported(base_path)
    add_landmarks_command(base_path, new_dir, new_dir.parent / "added.pt", None, False, num_workers=0)
    model = load_exported(new_dir.parent / "added.pt")
    assert list(model.class_names) == BASE_NAMES + ["Blue Tower"]
    record = json.loads((new_dir.parent / "added.json").read_text())
    assert record["added"] == {"Blue Tower": 7} and len(record["skipped"]) == 1 and "damaged.jpg" in record["skipped"][0]
    query = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[:, :40, :40]
                         for p in _photos(tiny_data / "test", TINY_CLASSES[2])])
    probabilities, scores = model.classify(query)
    assert (probabilities.argmax(1) == 2).all(), probabilities  # held-out photos of the new landmark
    features, logits = model.features_and_logits(query)
    assert torch.allclose(logits[:, :2], base.features_and_logits(query)[1], atol=1e-5)  # the old head as it was
    assert scores.shape == (len(query),) and torch.allclose(model.known_score(query), scores)
    assert 0 < float(model.unknown_threshold) < 1


def test_the_new_model_reloads_without_src_with_names_places_and_outputs(base_path: Path, new_dir: Path, tmp_path: Path) -> None:
    model, _ = add_landmarks(load_exported(base_path), read_new_landmarks(new_dir),
                             {"Blue Tower": Place(28.5245, 77.1855, "India", "Delhi")}, num_workers=0)
    model.save(str(tmp_path / "added.pt"))
    images = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    torch.save({"images": images, "expected": model(images)}, tmp_path / "io.pt")
    result = run_without_src(f"""
        import json, torch
        model = torch.jit.load({str(tmp_path / 'added.pt')!r})
        io = torch.load({str(tmp_path / 'io.pt')!r})
        assert list(model.class_names) == ["Red Fort", "Green Gate", "Blue Tower"], model.class_names
        places = json.loads(model.places_json)
        assert places["Blue Tower"]["latitude"] == 28.5245 and places["Red Fort"]["city"] == "Delhi", places
        assert torch.allclose(model(io["images"]), io["expected"], atol=1e-5)
        probabilities, scores = model.classify(io["images"])
        assert model.resize_size == 224 and model.image_size == 194  # ImageNet's input size; the base's crop share (32 of 37 px)
        print("ok", float(model.unknown_threshold), model.image_size, model.resize_size, tuple(scores.shape))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok") and result.stdout.strip().endswith("(2,)")


def test_the_new_model_carries_its_base_network_alone_and_a_frozen_imagenet_network(base_path: Path, new_dir: Path,
                                                                                     tmp_path: Path) -> None:
    base = load_exported(base_path)
    model, _ = add_landmarks(base, read_new_landmarks(new_dir), num_workers=0)
    inside = model.combined.base
    assert not hasattr(inside, "classify") and not hasattr(inside, "detector")  # its own detector answers
    assert inside.memory_features.shape == (0, base.memory_features.shape[1]) and inside.general_memory.numel() == 0
    assert torch.equal(inside.memory_as_added, base.memory_as_added) and list(inside.class_names) == BASE_NAMES
    photos = torch.randint(0, 256, (3, 3, 50, 40), dtype=torch.uint8)
    for ours, theirs in zip(inside.features_and_logits(photos), base.features_and_logits(photos)):
        assert torch.equal(ours, theirs)
    assert torch.allclose(inside(photos), base(photos))  # probabilities, as every export's forward (the app's explanations)
    general = model.combined.general
    assert not list(general.parameters())  # frozen: batch norm folded into the convolutions
    assert general.photos_per_pass == PHOTOS_PER_PASS  # kept: the saved model splits a CPU batch too
    batch = torch.randint(0, 256, (PHOTOS_PER_PASS + 2, 3, 50, 40), dtype=torch.uint8)
    assert torch.allclose(general(batch), ImageNetFeatures(GENERAL_BACKBONE, GENERAL_SIZE, photos_per_pass=0)(batch), atol=1e-4)
    rows = sum(m.numel() * m.element_size() for m in (base.memory_features, base.general_memory))  # the new model's too
    inside.save(str(tmp_path / "inside.pt"))
    assert (tmp_path / "inside.pt").stat().st_size < base_path.stat().st_size - rows


def test_the_imagenet_network_is_made_once_per_process_and_each_model_gets_its_own_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_landmarks.imagenet_stages(GENERAL_BACKBONE, GENERAL_SIZE, 0)
    monkeypatch.setattr(new_landmarks, "ImageNetFeatures", lambda *args: pytest.fail("the network was made again"))
    second = new_landmarks.imagenet_stages(GENERAL_BACKBONE, GENERAL_SIZE, 0)
    assert second is not first  # read from the bytes again: a model never shares its network with another
    assert (second.resize_size, second.backbone_name, second.photos_per_pass) == (GENERAL_SIZE, GENERAL_BACKBONE, PHOTOS_PER_PASS)
    batch = torch.randint(0, 256, (2, 3, 50, 40), dtype=torch.uint8)
    assert torch.equal(first(batch), second(batch))


def test_one_photo_runs_the_two_networks_side_by_side_with_the_answers_of_a_batch(base_path: Path, new_dir: Path,
                                                                                    tmp_path: Path) -> None:
    model, _ = add_landmarks(load_exported(base_path), read_new_landmarks(new_dir), num_workers=0)
    saved = load_exported(save_scripted(model, tmp_path / "added.pt"))
    assert "fork(__forked_function)" in saved.combined.code  # the ImageNet network beside the base's
    photos = torch.randint(0, 256, (5, 3, 50, 40), dtype=torch.uint8)
    probabilities, scores = saved.classify(photos)  # a batch: one network after the other
    for i in range(len(photos)):  # one photo: side by side; the base's network finishes first and waits for the other
        one = saved.classify(photos[i:i + 1])
        assert torch.allclose(one[0], probabilities[i:i + 1], atol=1e-6) and torch.allclose(one[1], scores[i:i + 1], atol=1e-6)
        assert torch.is_grad_enabled()
    with torch.no_grad():
        assert torch.allclose(saved.classify(photos[0])[0], probabilities[:1], atol=1e-6)
    assert torch.is_grad_enabled()


def test_the_new_model_keeps_each_remembered_photo_once(base_path: Path, new_dir: Path, tmp_path: Path) -> None:
    model, _ = add_landmarks(load_exported(base_path), read_new_landmarks(new_dir), num_workers=0)
    saved = load_exported(save_scripted(model, tmp_path / "added.pt"))
    remembered = saved.detector.remembered  # the detector compares with the memory itself, not with a copy of it
    for theirs, ours in ((saved.memory_features, remembered.memory), (saved.combined.base.memory_as_added, remembered.as_added)):
        assert ours.untyped_storage().data_ptr() == theirs.untyped_storage().data_ptr() and torch.equal(ours, theirs)
    saved.combined.save(str(tmp_path / "network.pt"))  # the networks and the base's memory_as_added
    beside = (tmp_path / "added.pt").stat().st_size - (tmp_path / "network.pt").stat().st_size
    memory = saved.memory_features.numel() * saved.memory_features.element_size()
    assert memory < beside < 1.5 * memory  # the memory once (a copy in the detector: twice); code, indices, references


def test_adding_twice_keeps_every_landmark_and_replace_learns_one_again(base_path: Path, tiny_data: Path) -> None:
    blue = _photos(tiny_data / "train", TINY_CLASSES[2])
    once, _ = add_landmarks(load_exported(base_path), {"Blue Tower": blue[:4]}, num_workers=0)
    twice, _ = add_landmarks(once, {"Sky Gate": blue[4:8]}, num_workers=0)
    assert list(twice.class_names) == BASE_NAMES + ["Blue Tower", "Sky Gate"]
    assert not hasattr(twice.combined.base, "combined")  # the original export, never a model inside a model inside a model
    assert (twice.memory_targets == 2).sum() == 4 * 5 and (twice.memory_targets == 3).sum() == 4 * 5  # 5 views a photo
    with pytest.raises(ValueError, match="'Blue Tower' is already a landmark of this model; pass --replace"):
        add_landmarks(twice, {"Blue Tower": blue[:2]}, num_workers=0)
    with pytest.raises(ValueError, match="'blue tower' is the model's landmark 'Blue Tower'.*its exact name with --replace"):
        add_landmarks(twice, {"blue tower": blue[:2]}, replace=True, num_workers=0)
    again, _ = add_landmarks(twice, {"Blue Tower": blue[8:10]}, replace=True, num_workers=0)
    assert list(again.class_names) == BASE_NAMES + ["Sky Gate", "Blue Tower"]
    assert (again.memory_targets == 3).sum() == 2 * 5 and (again.memory_targets == 2).sum() == 4 * 5
    with pytest.raises(ValueError, match="'Red Fort' is one of the landmarks the model was trained on"):
        add_landmarks(again, {"Red Fort": blue[:2]}, replace=True, num_workers=0)


def test_views_are_grouped_by_photo_whole_photo_first() -> None:
    squares = torch.stack([torch.full((3, 45, 45), 10, dtype=torch.uint8), torch.full((3, 45, 45), 200, dtype=torch.uint8)])
    squares[0, :, :20, :20] = 0  # photo 0's top-left corner differs from the rest of it
    views = new_landmarks._views(squares, 40)
    assert views.shape == (2 * VIEWS, 3, 40, 40)
    assert (views[VIEWS:] == 200).all() and (views[:VIEWS] <= 10).all()  # rows of photo 0, then photo 1
    assert torch.equal(views[0], views[1].flip(-1)) and torch.equal(views[2], squares[0, :, :40, :40])


def _memory_with_support(base: torch.jit.ScriptModule, photos_per_landmark: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The base's memory (own + ImageNet features) and random support rows, VIEWS per photo, for added landmarks."""
    features = torch.cat([base.memory_features.float(), base.general_memory.float()], 1)
    targets = base.memory_targets.clone()
    generator = torch.Generator().manual_seed(0)
    for index, photos in enumerate(photos_per_landmark):
        centre = torch.randn(features.shape[1], generator=generator) * features.std()
        rows = centre + 0.3 * torch.randn(photos * VIEWS, features.shape[1], generator=generator) * features.std()
        features = torch.cat([features, rows])
        targets = torch.cat([targets, torch.full((photos * VIEWS,), len(base.class_names) + index)])
    return features, targets


def test_support_photos_are_held_out_whole_and_once_to_calibrate_the_added_landmarks(base_path: Path, monkeypatch) -> None:
    base = load_exported(base_path)
    features, targets = _memory_with_support(base, [3, 1])  # Blue Tower: 3 photos; Sky Gate: 1, never held out
    support = targets >= len(BASE_NAMES)
    photo_of_row = torch.full_like(targets, -1)
    photo_of_row[support] = torch.arange(int(support.sum())) // VIEWS
    fits = []
    real_fit = added_fit.fit_rows
    monkeypatch.setattr(added_fit, "fit_rows", lambda b, f, t, n, lookalike: fits.append(f) or real_fit(b, f, t, n, lookalike))
    unlike = ~added_fit.lookalike_negatives(features, targets, len(BASE_NAMES), base.memory_features.shape[1])
    out = held_out(base, features, targets, 2, ~unlike)
    held_photos = []
    for kept in fits:
        kept_rows = {tuple(row.tolist()) for row in kept[-int(support.sum()):]}
        in_fit = torch.tensor([tuple(row.tolist()) in kept_rows for row in features[support]])
        for photo in range(int(photo_of_row.max()) + 1):
            views = in_fit[photo * VIEWS:(photo + 1) * VIEWS]
            assert views.all() or not views.any()  # a photo is held out with all its views
            held_photos += [photo] * int(not views.any())
    assert sorted(held_photos) == [0, 1, 2]  # each of Blue Tower's photos once, Sky Gate's alone never
    assert len(out.support_top) == len(out.support_margin) <= 3
    # 3 photos make 3 folds: the negatives counted are those the 3 folds held out (unless they look like Blue Tower)
    negative = (targets < 0).nonzero().flatten()
    in_run_folds = torch.zeros_like(support)
    in_run_folds[negative[torch.arange(len(negative)) % 5 < 3]] = True
    assert out.negatives == int((in_run_folds & unlike).sum()) > 0
    assert len(out.negative_top) == len(out.negative_margin) <= out.negatives


def test_added_landmarks_may_not_let_through_more_held_out_negatives_than_allowed(base_path: Path, monkeypatch) -> None:
    base = load_exported(base_path)
    features, targets = _memory_with_support(base, [4])
    ramp = torch.linspace(0.5, 1.0, 20)
    monkeypatch.setattr(added_fit, "held_out", lambda *args: HeldOut(ramp, ramp, ramp[-10:], ramp[-10:], 100))
    added = torch.nn.Linear(features.shape[1], 1)
    lookalike = torch.zeros_like(targets, dtype=torch.bool)
    detector, threshold = added_fit.added_detector(base, added, features, targets, lookalike)
    support = (percentile(ramp, ramp) + percentile(ramp, ramp)) / 2
    needed = float(np.quantile(support.numpy(), 0.04, method="lower"))
    negatives = support[-10:] - detector.added_offset
    assert detector.added_offset > 0 and int((negatives >= needed).sum()) == int(MAX_NEGATIVES_ADDED * 100)
    relaxed = HeldOut(ramp, ramp, ramp[:2], ramp[:2], 100)  # held-out negatives all score low: nothing to correct
    monkeypatch.setattr(added_fit, "held_out", lambda *args: relaxed)
    assert added_fit.added_detector(base, added, features, targets, lookalike)[0].added_offset == 0.0
    assert 0 < threshold < 0.2


def test_with_too_few_photos_to_hold_out_added_landmarks_are_scored_as_original_ones(base_path: Path, tiny_data: Path) -> None:
    blue = _photos(tiny_data / "train", TINY_CLASSES[2])
    model, _ = add_landmarks(load_exported(base_path), {"Blue Tower": blue[:1], "Sky Gate": blue[1:2]}, num_workers=0)
    detector = model.detector
    assert detector.added_scores.numel() == 0 and detector.negative_rows.numel() == 0  # nor a margin to keep
    features = model.combined(torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8))
    logits = model.logits_from_features(features)
    split, (top, predicted) = detector.split, F.softmax(logits, 1).max(1)
    bank = model.memory_features[model.memory_targets >= 0].float()
    bank[:len(model.combined.base.memory_as_added), :split] = model.combined.base.memory_as_added.float()
    nearest = (unit_features(features, split) @ unit_features(bank, split).T).max(1).values
    original = percentile(detector.original_scores, (percentile(detector.original_softmax_reference, top)
                                                     + percentile(detector.original_nearest_reference, nearest)) / 2)
    floors = detector.added_floors  # the original landmarks' standard for one photo: still a floor
    assert floors.tolist()[:2] == [-2.0, -2.0] and all(-1 < floor < 1 for floor in floors.tolist()[2:])
    general = F.normalize(features[:, split:], dim=1) @ F.normalize(bank[:, split:], dim=1).T
    floored = (predicted >= 2) & (nearest_of_class(general, detector.bank_targets, predicted) < floors[predicted])
    assert torch.allclose(model.known_score_from_features(features), torch.where(floored, torch.zeros_like(original), original),
                          atol=1e-3)


def test_a_model_with_added_landmarks_exports_to_onnx_with_the_same_answers(base_path: Path, new_dir: Path, tiny_data: Path,
                                                                            tmp_path: Path) -> None:
    model, _ = add_landmarks(load_exported(base_path), read_new_landmarks(new_dir), num_workers=0)
    view = export_view(model)
    onnx = open_export(export_onnx(view, tmp_path / "added.onnx"))
    paths = [p for c in TINY_CLASSES for p in _photos(tiny_data / "test", c)] + list(noise_photos(tmp_path / "noise").iterdir())
    squares = torch.cat([images for _, images, _ in square_batches(paths, view.resize_size, 64, num_workers=0)])
    (probabilities, scores), (onnx_probabilities, onnx_scores) = view.classify(squares), onnx.classify(squares)
    assert view.resize_size > view.base.resize_size  # the base reads a resized square: the resize is in the ONNX graph
    assert float((probabilities - onnx_probabilities).abs().max()) <= 1e-4 and float((scores - onnx_scores).abs().max()) <= 1e-4
    assert torch.equal(scores >= view.unknown_threshold, onnx_scores >= onnx.unknown_threshold)
    assert onnx.class_names == BASE_NAMES + ["Blue Tower"]
    assert model.combined.general.photos_per_pass == PHOTOS_PER_PASS  # the ONNX graph takes a batch whole; the model still splits


def test_a_photo_far_from_everything_is_unknown_after_adding(base_path: Path, new_dir: Path) -> None:
    model, _ = add_landmarks(load_exported(base_path), read_new_landmarks(new_dir), num_workers=0)
    split, floors = model.detector.split, model.detector.added_floors
    validation = model.memory_targets[(model.memory_targets >= 0) & (model.memory_targets < 2)]
    assert floors[2] == similarity_floor(model.memory_features[:len(validation), split:], validation, 6)  # 6 photos added
    # features called the new landmark (along its row) whose ImageNet part is unlike each of its remembered photos
    row = model.added.weight[0]
    remembered = model.memory_features.float()[model.memory_targets == 2, split:]
    general = row[split:] - remembered.T @ torch.linalg.lstsq(remembered.T, row[split:].unsqueeze(1)).solution.squeeze(1)
    far = torch.cat([row[:split], general]).unsqueeze(0) / row.norm() * model.memory_features.float().norm(dim=1).mean() * 4
    assert model.logits_from_features(far).argmax(1).item() == 2
    assert float(model.known_score_from_features(far)) == 0.0 < float(model.unknown_threshold)
    model.detector.added_floors = torch.zeros(0)  # the same photo without the floor: the relative scores alone let it through
    assert float(model.known_score_from_features(far)) >= float(model.unknown_threshold)


def test_bad_folders_are_refused_naming_them(base_path: Path, tmp_path: Path) -> None:
    unreadable = tmp_path / "unreadable" / "Ghost_Gate"
    unreadable.mkdir(parents=True)
    (unreadable / "a.jpg").write_bytes(b"nothing")
    with pytest.raises(ValueError, match=f"{unreadable}: no readable photo of 'Ghost Gate'"):
        add_landmarks(load_exported(base_path), read_new_landmarks(unreadable.parent), num_workers=0)
    empty = tmp_path / "empty" / "Empty_Gate"
    empty.mkdir(parents=True)
    (empty / "notes.txt").write_text("no photos here")
    with pytest.raises(ValueError, match=f"{empty}: no photos in this landmark folder"):
        read_new_landmarks(empty.parent)
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="no landmark folders"):
        read_new_landmarks(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_new_landmarks(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="notes.txt: a file, not a folder with one sub-folder of photos"):
        read_new_landmarks(empty / "notes.txt")


def test_an_export_without_feature_memory_says_how_to_get_one(tiny_data: Path, tmp_path: Path) -> None:
    old = load_exported(_base_export(tiny_data, tmp_path / "old.pt", memory=False))
    with pytest.raises(ValueError, match="keeps no feature memory.*python -m src export"):
        add_landmarks(old, {"Blue Tower": _photos(tiny_data / "train", TINY_CLASSES[2])[:2]}, num_workers=0)


def test_the_command_writes_a_model_that_predict_and_tag_use(base_path: Path, new_dir: Path, tmp_path: Path, capsys) -> None:
    places = tmp_path / "places.csv"
    places.write_text("landmark,latitude,longitude,country,city\nBlue Tower,28.5245,77.1855,India,Delhi\n")
    out = tmp_path / "models" / "added.pt"
    assert main(["add-landmarks", str(base_path), str(new_dir), "--out", str(out), "--places", str(places), "--workers", "0"]) == 0
    printed = capsys.readouterr()
    assert "Added Blue Tower (7 photos)" in printed.out and "damaged.jpg" in printed.err
    for step in ("Features of the new photos", "Fitting the new landmarks", "Calibrating on held-out photos"):
        assert f"{step}: 100%" in printed.err  # each step shows its progress, to its end
    photo = next(p for p in (new_dir / "02.Blue_Tower").iterdir() if p.suffix == ".jpg" and p.stat().st_size > 100)
    assert main(["predict", str(photo), "--model", str(out)]) == 0
    assert "Blue Tower" in capsys.readouterr().out
    assert main(["tag", str(new_dir), "--model", str(out), "--out", str(tmp_path / "tags.csv"), "--workers", "0"]) == 0
    tags = (tmp_path / "tags.csv").read_text()
    assert "Blue Tower" in tags and "28.5245" in tags
    assert main(["add-landmarks", str(out), str(new_dir), "--out", str(tmp_path / "again.pt")]) == 2
    assert "already a landmark of this model; pass --replace" in capsys.readouterr().err
    assert main(["add-landmarks", str(out), str(new_dir), "--out", str(out)]) == 2
    assert "would overwrite the one it starts from" in capsys.readouterr().err


@pytest.mark.parametrize("name", list_models())
def test_every_model_can_learn_a_landmark_and_stay_scriptable(name: str, tiny_data: Path, tmp_path: Path) -> None:
    base = load_exported(_base_export(tiny_data, tmp_path / f"{name}.pt", name, image_size=64))
    model, _ = add_landmarks(base, {"Blue Tower": _photos(tiny_data / "train", TINY_CLASSES[2])[:3]}, num_workers=0)
    model.save(str(tmp_path / "added.pt"))
    reloaded = torch.jit.load(str(tmp_path / "added.pt"))
    probabilities = reloaded(torch.randint(0, 256, (2, 3, 70, 90), dtype=torch.uint8))
    assert probabilities.shape == (2, 3) and torch.allclose(probabilities.sum(1), torch.ones(2))


def test_the_command_writes_only_a_pt_file_and_replaces_files_only_with_force(base_path: Path, new_dir: Path,
                                                                             tmp_path: Path, monkeypatch, capsys) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "transfer_exported.json").write_text('{"test": "the metrics of another model"}')
    (models / "other.pt").write_bytes(b"another model")
    (models / "record_only.json").write_text("{}")
    files = {path.name: path.read_bytes() for path in models.iterdir()}
    command = ["add-landmarks", str(base_path), str(new_dir), "--workers", "0", "--out"]
    for out, message in (("transfer_exported", "name it .pt"), ("x.json", "name it .pt"),
                         ("other.pt", "other.pt already exist(s)"), ("record_only.pt", "record_only.json already exist(s)")):
        assert main([*command, str(models / out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert {path.name: path.read_bytes() for path in models.iterdir()} == files
    monkeypatch.setattr(commands, "add_landmarks_command", lambda *args: {"skipped": [], "notes": [], "added": {"Blue Tower": 7},
                                                                     "seconds": 1.0, "class_names": BASE_NAMES + ["Blue Tower"],
                                                                     "unknown_threshold": 0.5,
                                                                     "imagenet_features": "second network: ImageNet efficientnet_lite0 at 224 px"})
    assert main([*command, str(models / "other.pt"), "--force"]) == 0


def test_landmark_names_are_checked_before_any_work(base_path: Path, tmp_path: Path, tiny_data: Path, monkeypatch,
                                                    capsys) -> None:
    monkeypatch.setattr(new_landmarks, "support_features", lambda *args: pytest.fail("read the photos before the names"))
    photos = _photos(tiny_data / "train", TINY_CLASSES[2])[:2]
    base = load_exported(base_path)
    for name, message in (("red fort", "'red fort' is the model's landmark 'Red Fort'"),
                          ("Green_Gate!", "'Green_Gate!' is the model's landmark 'Green Gate'"),
                          ("   ", "'   ' is no landmark name")):
        with pytest.raises(ValueError, match=message):
            add_landmarks(base, {name: photos}, num_workers=0)
    with pytest.raises(ValueError, match="'Blue tower' and 'Blue Tower' are one landmark"):
        add_landmarks(base, {"Blue Tower": photos, "Blue tower": photos}, num_workers=0)
    latin1 = os.fsdecode(b"Caf\xe9_Tower")  # a folder name that is not UTF-8 (a Latin-1 file system)
    (tmp_path / "new" / latin1).mkdir(parents=True)
    shutil.copy(photos[0], tmp_path / "new" / latin1 / "a.jpg")
    assert main(["add-landmarks", str(base_path), str(tmp_path / "new"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "Caf\\udce9_Tower" in err and "not UTF-8" in err and "Traceback" not in err


def test_a_full_disk_while_saving_is_a_clear_error_and_leaves_no_temporary(base_path: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    def full_disk(path: Path, data: bytes) -> int:
        with open(path, "wb") as file:
            file.write(bytes(data[:1000]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "added.pt"
    out.write_bytes(b"the model saved before")
    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match=rf"{out}: No space left on device") as error:
        new_landmarks.save_added(load_exported(base_path), out, "base.pt", {}, [], 1.0)
    assert error.value.errno == errno.ENOSPC
    assert sorted(path.name for path in tmp_path.iterdir()) == ["added.pt"] and out.read_bytes() == b"the model saved before"


def test_networks_see_bounded_batches_however_many_photos_are_read(tiny_data: Path) -> None:
    """A network's activations grow with its batch (~22 MB per 224 px image): 12 photos, 60 views, go in parts."""
    seen = []

    class Recorder(torch.nn.Module):
        resize_size = 40

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(x))
            return x.float().mean(dim=(2, 3))

    photos = _photos(tiny_data / "train", TINY_CLASSES[2])
    features, _ = new_landmarks.support_features(Recorder(), {"Blue Tower": photos}, num_workers=0)
    assert features["Blue Tower"].shape == (len(photos) * VIEWS, 3) and sum(seen) == len(photos) * VIEWS
    assert photo_features(Recorder(), photos * 6, num_workers=0)[0].shape == (len(photos) * 6, 3)
    assert max(seen) <= FEATURE_BATCH
