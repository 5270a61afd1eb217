"""Unknown detection: outlier exposure, negatives, the threshold, and what the exported model carries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_photo, run_without_src, tiny_config
from src.data import UNKNOWN_TARGET, get_data_loaders
from src.location import split_negatives
import src.finish as finish
from src.factory import create_model
from src.images import read_image
from src.openset import AddedLandmarksDetector, MaxSoftmax, RememberedPhotos, _nearest_in, SoftmaxAndNearest, nearest_detector, open_set_report, percentile, similarity_floor, unit_features, unknown_threshold
from src.optimization import get_loss
from src.places import Place
from src.predictor import Predictor
from src.export import export_predictor, load_exported
from src.preprocessing import square_uint8


def test_outlier_exposure_loss_is_cross_entropy_without_negatives_and_pushes_negatives_to_uniform() -> None:
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 1])
    assert torch.allclose(get_loss(0.1)(logits, target), F.cross_entropy(logits, target, label_smoothing=0.1))
    negative = torch.tensor([[5.0, 0.0, 0.0]], requires_grad=True)
    loss = get_loss(0.0, outlier_weight=1.0)(negative, torch.tensor([UNKNOWN_TARGET]))
    loss.backward()
    assert loss > get_loss(0.0, 1.0)(torch.zeros(1, 3), torch.tensor([UNKNOWN_TARGET]))  # uniform is the minimum
    assert negative.grad[0, 0] > 0 > negative.grad[0, 1]  # the confident logit is pushed down, the others up
    mixed = get_loss(0.0, 0.5)(torch.cat([logits, negative]), torch.tensor([0, 1, UNKNOWN_TARGET]))
    expected = (F.cross_entropy(logits, target) * 2 + 0.5 * -F.log_softmax(negative, 1).mean()) / 3
    assert torch.allclose(mixed, expected)


def _negatives(folder: Path, n: int = 20) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        (folder / f"scene{i % 2}").mkdir(parents=True, exist_ok=True)
        make_photo(i % 3, rng).transpose(0).save(folder / f"scene{i % 2}" / f"{i:03d}.jpg")
    return folder


def test_negatives_split_is_stable_disjoint_and_joins_training_with_the_unknown_target(tiny_data: Path, tmp_path: Path) -> None:
    folder = _negatives(tmp_path / "negatives")
    train, held_out = split_negatives(folder)
    assert train and held_out and not set(train) & set(held_out) and len(train) + len(held_out) == 20
    (folder / "scene0" / "new.jpg").write_bytes((folder / "scene0" / "000.jpg").read_bytes())
    train2, held2 = split_negatives(folder)
    assert set(train) <= set(train2) and set(held_out) <= set(held2)  # adding a photo moves no other photo
    loaders = get_data_loaders(batch_size=4, num_workers=0, data_dir=tiny_data, config=tiny_config(32), negatives=[folder])
    dataset = loaders["train"].dataset
    assert len(dataset) == len(dataset.paths) + len(train2) and dataset.negative_paths == [p.resolve() for p in train2]
    assert dataset[len(dataset) - 1][1] == UNKNOWN_TARGET and dataset[0][1] >= 0
    assert len(loaders["valid"].dataset) == len(loaders["valid"].dataset.paths)  # never in validation or test
    with pytest.raises(FileNotFoundError, match="nowhere"):
        split_negatives(tmp_path / "nowhere")


def test_threshold_accepts_the_asked_share_of_validation_photos() -> None:
    scores = np.linspace(0, 1, 1001)
    threshold = unknown_threshold(scores, accept=0.97)
    assert (scores >= threshold).mean() == pytest.approx(0.97, abs=0.002)
    with pytest.raises(ValueError, match="no validation photos"):
        unknown_threshold(np.array([]))


def test_open_set_report_figures() -> None:
    known, unknown = np.linspace(0.6, 1.0, 100), np.linspace(0.0, 0.5, 50)
    report = open_set_report(known, unknown, threshold=0.55)
    assert report["auroc"] == 1.0 and report["fpr95"] == 0.0
    assert report["known_accepted"] == 1.0 and report["unknown_accepted"] == 0.0
    swapped = open_set_report(unknown, known, threshold=0.55)
    assert swapped["auroc"] == 0.0 and swapped["unknown_accepted"] == 1.0


@pytest.mark.parametrize("model_name", ["scratch", "mobilenet_v2"])
def test_known_score_threshold_and_places_survive_export_and_reload_without_src(model_name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    names = ["Colosseum", "Nowhere Tower"]
    kwargs = {"widths": (8, 16)} if model_name == "scratch" else {"pretrained": False}
    model = create_model(model_name, 2, **kwargs)
    colosseum = Place(41.8903, 12.4922, "Italy", "Rome", "Q10285")
    predictor = Predictor(model, names, tiny_config(32), unknown_threshold=0.6, places={"Colosseum": colosseum})
    valid_features, valid_logits = predictor.features_and_logits(torch.randint(0, 255, (6, 3, 40, 52), dtype=torch.uint8))
    training_features = predictor.features_and_logits(torch.randint(0, 255, (5, 3, 40, 52), dtype=torch.uint8))[0]
    predictor.detector, _ = nearest_detector(valid_features[:4], torch.arange(4), valid_features, valid_logits,
                                             training_bank=training_features)
    images = torch.randint(0, 255, (3, 3, 40, 52), dtype=torch.uint8)
    expected = predictor.classify(images)
    path = export_predictor(predictor, tmp_path / "m.pt")
    reloaded = load_exported(path)
    # freezing folds batch norm into the convolutions: features move by float rounding, and a percentile
    # among 6 reference photos magnifies that (seen: 0.5805 against 0.5804)
    assert torch.allclose(reloaded.known_score(images), expected[1], atol=1e-3)
    assert torch.allclose(reloaded(images), expected[0], atol=1e-5)
    features, logits = reloaded.features_and_logits(images)
    assert features.shape == (3, model.forward_features(torch.zeros(1, 3, 32, 32)).shape[1])
    assert torch.allclose(F.softmax(logits, 1), expected[0], atol=1e-5)
    shutil.copy(path, tmp_path / "copy.pt")
    result = run_without_src("""
        import json, torch
        model = torch.jit.load("copy.pt")
        images = torch.randint(0, 255, (3, 3, 40, 52), dtype=torch.uint8)
        probabilities, scores = model.classify(images)
        assert scores.shape == (3,) and torch.allclose(model.known_score(images), scores)
        assert torch.allclose(model.known_score_from_features(model.features_and_logits(images)[0]), scores)
        assert bool(((scores >= 0) & (scores <= 1)).all())
        print(json.dumps({"threshold": model.unknown_threshold, "places": json.loads(model.places_json)}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    carried = json.loads(result.stdout)
    assert carried["threshold"] == pytest.approx(0.6)
    assert carried["places"] == {"Colosseum": colosseum.to_dict()}  # a class without a place has none


def test_percentile_ranks_values_among_the_reference_and_keeps_their_order() -> None:
    reference = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ranks = percentile(reference, torch.tensor([0.0, 0.1, 0.15, 0.4, 0.9]))
    assert torch.allclose(ranks, torch.tensor([0.0, 0.125, 0.25, 0.875, 1.0]))  # mid-ranks, 0 and 1 beyond the ends
    dense = percentile(reference, torch.linspace(0, 1, 101))
    assert bool((dense[1:] >= dense[:-1]).all())
    assert torch.allclose(percentile(torch.ones(4), torch.ones(1)), torch.tensor([0.5]))  # a saturated softmax: ties


def test_softmax_and_nearest_accepts_photos_confident_and_close_to_a_known_photo() -> None:
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(2, 16), dim=1) * 5
    targets = torch.arange(40) % 2
    features = centres[targets] + torch.randn(40, 16) * 0.5
    logits = F.one_hot(targets, 2).float() * 4 + torch.randn(40, 2) * 0.3
    bank_rows = torch.arange(0, 40, 2)  # half the validation photos are remembered
    detector, valid_scores = nearest_detector(features[bank_rows], bank_rows, features, logits)
    assert valid_scores.shape == (40,) and 0 <= valid_scores.min() and valid_scores.max() <= 1
    threshold = unknown_threshold(valid_scores)
    assert (valid_scores >= threshold).mean() >= 0.95
    confident = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    close_and_confident = detector(centres, confident)
    far_and_unsure = detector(-centres, torch.zeros(2, 2))
    one_of_two = torch.cat([detector(-centres, confident), detector(centres, torch.zeros(2, 2))])
    assert (close_and_confident >= threshold).all() and (far_and_unsure < threshold).all()
    assert far_and_unsure.max() < one_of_two.min()  # either score alone lifts a photo
    # leave one out: a remembered photo is scored as a new photo would be, not as its own nearest neighbour
    assert valid_scores[0] < float(detector(features[:1], logits[:1]))
    with pytest.raises(ValueError, match="remembered and validation"):
        nearest_detector(features[:0], bank_rows[:0], features, logits)


def test_a_bank_of_training_photos_adds_a_third_rank_and_no_photo_is_left_out_of_it() -> None:
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(3, 16), dim=1) * 5
    valid_targets, training_targets = torch.arange(30) % 2, torch.arange(20) % 3  # class 2: training photos only
    valid = centres[valid_targets] + torch.randn(30, 16) * 0.5
    logits = F.one_hot(valid_targets, 2).float() * 4 + torch.randn(30, 2) * 0.3
    training = centres[training_targets] + torch.randn(20, 16) * 0.5
    bank_rows = torch.arange(0, 30, 2)
    with_training, scores = nearest_detector(valid[bank_rows], bank_rows, valid, logits, training_bank=training)
    without, _ = nearest_detector(valid[bank_rows], bank_rows, valid, logits)
    assert with_training.training_bank.shape == (20, 16) and without.training_bank.numel() == 0
    # validation photos are not training photos: their scores are the detector's own (no leave-one-out there)
    assert np.allclose(scores[1::2], with_training(valid[1::2], logits[1::2]).numpy(), atol=1e-6)
    unsure = torch.zeros(1, 2)
    near_training_only = with_training(centres[2:], unsure)  # far from every validation photo, near training ones
    assert float(near_training_only) > float(with_training(-centres[2:], unsure))
    assert float(near_training_only) > float(without(centres[2:], unsure))  # the third rank lifts it


def test_an_export_compares_photos_with_training_photos_spread_evenly_over_the_classes(tiny_data: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finish, "TRAINING_BANK_PHOTOS", 7)  # 2 of each of the 3 classes
    loaders = get_data_loaders(batch_size=4, valid_size=0.3, num_workers=0, data_dir=tiny_data, config=tiny_config(32))
    train_set, valid_set = loaders["train"].dataset, loaders["valid"].dataset
    torch.manual_seed(0)
    model = create_model("scratch", 3, widths=(8, 16))
    predictor = finish.calibrated_predictor(model, valid_set, num_workers=0, train_set=train_set)
    bank = predictor.detector.training_bank.float()
    rows = finish.rows_per_class(train_set.targets, 2)
    size = predictor.resize_size
    squares = torch.stack([square_uint8(read_image(train_set.paths[i], size), size) for i in rows])
    expected = predictor.features_and_logits(squares)[0]
    assert bank.shape == (6, expected.shape[1])
    assert torch.allclose(bank, F.normalize(expected, dim=1), atol=2e-3)  # fp16
    assert len(predictor.detector.training_reference) == len(valid_set.paths)
    alone = finish.calibrated_predictor(model, valid_set, num_workers=0)  # no training photos: the memory alone
    assert alone.detector.training_bank.numel() == 0


def test_features_of_two_networks_count_equally_in_the_nearest_similarity() -> None:
    torch.manual_seed(0)
    own, general = torch.randn(6, 8) * 100, torch.randn(6, 4) * 0.01  # very different scales
    joined = unit_features(torch.cat([own, general], 1), split=8)
    assert torch.allclose(joined[:, :8].norm(dim=1), torch.full((6,), 0.5 ** 0.5))
    assert torch.allclose(joined[:, 8:].norm(dim=1), torch.full((6,), 0.5 ** 0.5))
    assert torch.allclose(unit_features(own), F.normalize(own, dim=1))  # split 0: one vector
    # a photo close in the small-scale part only is as near as one close in the large-scale part only
    bank = torch.cat([own[:1], general[:1]], 1)
    detector, _ = nearest_detector(bank, torch.tensor([-1]), torch.cat([own, general], 1), torch.zeros(6, 2), split=8)
    near_general = _nearest_in(unit_features(torch.cat([-own[:1], general[:1]], 1), detector.split), detector.bank)
    near_own = _nearest_in(unit_features(torch.cat([own[:1], -general[:1]], 1), detector.split), detector.bank)
    assert torch.allclose(near_general, near_own, atol=1e-3) and torch.allclose(near_own, torch.zeros(1), atol=1e-3)  # fp16 bank


def _twice(features: torch.Tensor) -> torch.Tensor:
    """Features as a model with added landmarks has them (its own, then ImageNet ones: split 4), here the same vector
    twice, so that the similarities of :class:`RememberedPhotos` are the plain cosines of ``features``."""
    return torch.cat([features, features], dim=1)


def test_remembered_photos_give_the_similarities_of_unit_features_from_the_memory_it_keeps() -> None:
    torch.manual_seed(0)
    memory, as_added = (torch.randn(7, 12) * 5).half(), (torch.randn(3, 8) * 2).half()
    remembered = RememberedPhotos(memory, 8, as_added)
    assert remembered.memory is memory and remembered.as_added is as_added  # held, not copied: the file keeps them once
    as_read = memory.float().clone()
    as_read[:3, :8] = as_added.float()  # the first rows' own half as the model with added landmarks reads them
    queries = unit_features(torch.randn(4, 12), 8)
    similarity, general = remembered(queries)
    assert torch.allclose(similarity, queries @ unit_features(as_read, 8).T, atol=1e-5)
    assert torch.allclose(general, F.normalize(queries[:, 8:], dim=1) @ F.normalize(as_read[:, 8:], dim=1).T, atol=1e-5)
    assert torch.allclose(RememberedPhotos(memory, 8)(queries)[0], queries @ unit_features(memory.float(), 8).T, atol=1e-5)
    assert torch.allclose(torch.jit.script(remembered)(queries)[0], similarity)


def test_the_added_landmarks_detector_ranks_each_kind_of_photo_among_its_own_held_out_photos() -> None:
    # remembered: a photo of each of the 2 original classes, one of the added class 2, one of no landmark (scaled)
    remembered = RememberedPhotos(_twice(torch.cat([torch.eye(4)[:3], torch.tensor([[0.0, 0.0, 0.0, 2.0]])])).half(), 4)
    targets, references = torch.tensor([0, 1, 2, -1]), (torch.linspace(0.5, 1, 11), torch.linspace(0.5, 1, 11))
    negatives = targets < 0
    original = SoftmaxAndNearest(_twice(torch.eye(4)[:3]), *references, split=4)  # how an original landmark's photo scores
    original_scores = torch.linspace(0, 1, 21)
    top_reference, margin_reference, added_scores = torch.linspace(0.3, 0.9, 7), torch.linspace(0.2, 0.8, 7), torch.linspace(0, 1, 5)
    detector = AddedLandmarksDetector(remembered, targets, negatives, 2, references, original_scores, top_reference,
                                      margin_reference, added_scores, 0.1)
    features = _twice(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))  # the same photo...
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # ...called an original landmark, then the added one
    top = F.softmax(logits, 1).max(1).values
    scores = detector(features, logits)
    # as an original landmark (within fp16: the remembered photos are kept as the memory keeps them)
    assert torch.allclose(scores[0], percentile(original_scores, original(features[:1], logits[:1])), atol=1e-3)
    # as the added landmark: its nearest photo *of that landmark* (similarity 0, not the identical class-0 photo),
    # less its similarity to the nearest photo of no landmark (0)
    added = (percentile(top_reference, top[1:]) + percentile(margin_reference, torch.zeros(1))) / 2
    as_original = percentile(original_scores, original(features[1:], logits[1:]))
    assert torch.allclose(scores[1:], torch.maximum(percentile(added_scores, added - 0.1), as_original), atol=1e-3)
    assert percentile(added_scores, added - 0.1) < as_original  # never stricter than an original landmark's standard
    close = _twice(torch.tensor([[0.0, 0.6, 0.8, 0.0]]))  # near the added landmark's photo, confidently called it
    own_standard = percentile(added_scores, detector.added_score(close, logits[1:]) - 0.1)
    assert own_standard > percentile(original_scores, original(close, logits[1:]))
    assert torch.allclose(detector(close, logits[1:]), own_standard)
    # as near the added landmark's photo, but near a photo of no landmark too: the margin is what counts
    near_negative = _twice(torch.tensor([[0.0, 0.0, 0.96, 0.28]]))
    margin = (percentile(top_reference, top[1:]) + percentile(margin_reference, torch.tensor([0.96 - 0.28]))) / 2
    assert torch.allclose(detector.added_score(near_negative, logits[1:]), margin, atol=1e-3)
    assert detector.added_score(near_negative, logits[1:]) < detector.added_score(close, logits[1:])
    assert torch.allclose(torch.jit.script(detector)(features, logits), scores)
    # no remembered photos of no landmark compared with: the plain similarity to the added landmark's photo
    alone = AddedLandmarksDetector(remembered, targets, ~negatives, 2, references, original_scores, top_reference,
                                   margin_reference, added_scores, 0.1)
    plain = (percentile(top_reference, top[1:]) + percentile(margin_reference, torch.tensor([0.96]))) / 2
    assert torch.allclose(alone.added_score(near_negative, logits[1:]), plain, atol=1e-3)
    # no held-out support photos to calibrate on: every photo is scored as an original one
    uncalibrated = AddedLandmarksDetector(remembered, targets, negatives, 2, references, original_scores, torch.zeros(0),
                                          torch.zeros(0), torch.zeros(0), 0.0)
    assert torch.allclose(uncalibrated(features, logits), percentile(original_scores, original(features, logits)), atol=1e-3)


def test_a_photo_called_an_added_landmark_but_far_from_its_photos_is_unknown() -> None:
    # features: 2 own columns, then 2 ImageNet ones (split 2); class 2 is added (2 original classes)
    remembered = RememberedPhotos(torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0.6, 0.8]]).half(), 2)
    targets, no_negatives = torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.bool)
    references = torch.linspace(0.3, 0.9, 7), torch.linspace(-0.5, 0.8, 7), torch.linspace(0, 1, 5)
    original = (torch.linspace(0.5, 1, 11), torch.linspace(0.5, 1, 11))
    # unlike the added landmark's photo in ImageNet features (cosine 0.35), though confidently called it
    far, called_added = torch.tensor([[1.0, 1, 0.96, -0.28]]), torch.tensor([[0.0, 0.0, 4.0]])
    loose = AddedLandmarksDetector(remembered, targets, no_negatives, 2, original, torch.linspace(0, 1, 21), *references, 0.0)
    floored = AddedLandmarksDetector(remembered, targets, no_negatives, 2, original, torch.linspace(0, 1, 21), *references, 0.0,
                                     added_floors=torch.tensor([-2.0, -2.0, 0.5]))
    assert loose(far, called_added) > 0.5  # relative scores alone: confidently the added landmark
    assert floored(far, called_added) == 0  # below its floor: unknown, whatever its relative scores
    close = torch.tensor([[1.0, 1, 0.8, 0.6]])  # cosine 0.96 in ImageNet features
    assert torch.allclose(floored(close, called_added), loose(close, called_added))  # above it: unchanged
    as_original = torch.tensor([[4.0, 0.0, 0.0]])  # a photo called an original landmark is never floored
    assert torch.allclose(floored(far, as_original), loose(far, as_original))
    assert torch.allclose(torch.jit.script(floored)(far, called_added), floored(far, called_added))


def test_the_similarity_floor_is_what_the_original_landmarks_photos_reach_from_as_many_of_their_own() -> None:
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 16), dim=1)
    general = torch.cat([centre + 0.3 * torch.randn(30, 16) for centre in centres])
    targets = torch.arange(4).repeat_interleave(30)
    floors = [similarity_floor(general, targets, k, share=0.05) for k in (1, 5, 20)]
    assert -1 < floors[0] < floors[1] < floors[2] < 1  # more remembered photos: a nearer nearest one, a higher floor
    # all but about the share of photos measured that way reach it
    unit, reached = F.normalize(general, dim=1), []
    for target in range(4):
        rows = (targets == target).nonzero().flatten()
        reached.append((unit[rows[5:]] @ unit[rows[:5]].T).max(dim=1).values >= floors[1])
    assert 0.85 <= torch.cat(reached).float().mean() <= 1.0
    assert similarity_floor(general[:4], torch.arange(4), 5) == -2.0  # one photo per class: nothing to measure


def test_max_softmax_scores_the_top_probability() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(MaxSoftmax()(torch.zeros(2, 4), logits), F.softmax(logits, 1).max(1).values)
