from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BAD_PHOTO_KINDS, REPO
import src.run as run
from src.cli import main
from src.location import split_negatives
from src.export import load_exported

TINY_TRAIN = ["--model", "scratch", "--epochs", "2", "--eval-crop", "32", "--batch-size", "8", "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cli")
    checkpoint, export = out / "scratch.pt", out / "scratch_exported.pt"
    negatives = out / "negatives"
    rng = np.random.default_rng(3)
    for i in range(16):
        (negatives / f"scene{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(negatives / f"scene{i % 2}" / f"{i}.jpg")
    code = main(["train", "--data", str(tiny_data), *TINY_TRAIN, "--checkpoint", str(checkpoint), "--export", str(export),
                 "--negatives", str(negatives)])
    assert code == 0
    return {"checkpoint": checkpoint, "export": export, "data": tiny_data, "out": out, "negatives": negatives}


def test_train_writes_checkpoint_export_and_metrics(trained: dict[str, Path]) -> None:
    assert trained["checkpoint"].is_file() and trained["export"].is_file()
    metrics = json.loads(trained["export"].with_suffix(".json").read_text())
    assert metrics["model"] == "scratch" and metrics["epochs"] == 2
    assert metrics["test"]["photos"] == 12 and 0 <= metrics["test"]["top1"] <= 1
    assert set(metrics["test"]["per_class_top1"]) == {"Red Fort", "Green Gate", "Blue Tower"}
    assert metrics["command"].startswith("python -m src train")
    assert metrics["negatives"] == [str(trained["negatives"])]
    held_out = metrics["test"]["held_out_negatives"]
    assert held_out["unknown_photos"] == len(split_negatives(trained["negatives"])[1]) and 0 <= held_out["auroc"] <= 1
    exported = load_exported(trained["export"])
    assert metrics["test"]["unknown_threshold"] == pytest.approx(float(exported.unknown_threshold))
    assert 0 < exported.unknown_threshold <= 1 and 0 <= metrics["test"]["known_accepted"] <= 1


def test_evaluate_export_and_checkpoint_agree(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    reports = []
    for model in (trained["export"], trained["checkpoint"]):
        assert main(["evaluate", str(model), "--data", str(trained["data"]), "--workers", "0", "--json", str(tmp_path / "r.json")]) == 0
        reports.append(json.loads((tmp_path / "r.json").read_text()))
    assert reports[0]["top1"] == reports[1]["top1"]
    assert "top-1" in capsys.readouterr().out


def test_the_shipped_model_is_found_from_any_working_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (160, 120), (90, 120, 200)).save(photo)
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: the default --model is the one beside the package
    assert main(["predict", str(photo), "--topk", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{photo}\n  -> ")
    assert list(tmp_path.iterdir()) == [photo]


def test_export_and_predict(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    exported = tmp_path / "again.pt"
    assert main(["export", str(trained["checkpoint"]), "--out", str(exported), "--workers", "0"]) == 2  # no --data here
    assert "No dataset found" in capsys.readouterr().err
    assert main(["export", str(trained["checkpoint"]), "--out", str(exported), "--data", str(trained["data"]), "--workers", "0"]) == 0
    # the same validation photos choose the same threshold as at the end of training
    assert float(load_exported(exported).unknown_threshold) == pytest.approx(float(load_exported(trained["export"]).unknown_threshold))
    photo = next((trained["data"] / "test" / "00.Red_Fort").iterdir())
    (tmp_path / "bad.jpg").write_text("not a photo")
    capsys.readouterr()
    assert main(["predict", str(photo), str(tmp_path / "bad.jpg"), "--model", str(exported), "--topk", "2"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == str(photo) and len(lines) == 4 and lines[1].startswith("  -> ")
    assert lines[2].strip().endswith(("Red Fort", "Green Gate", "Blue Tower"))
    assert "bad.jpg: not an image" in captured.err
    assert main(["predict", str(photo.parent), "--model", str(exported)]) == 1  # a folder: the command for one is named
    assert f"is a directory (`tag {photo.parent} --out tags.csv` labels every photo in a folder)" in capsys.readouterr().err


def test_clear_errors_for_bad_input(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "nowhere"), *TINY_TRAIN]) == 2
    assert "is not a dataset folder" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.pt"), "--data", str(trained["data"])]) == 2
    assert "missing.pt" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["export", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    assert "junk.pt: not a readable PyTorch checkpoint (neither a zip archive nor a pickle" in capsys.readouterr().err
    assert main(["export", str(trained["export"]), "--out", str(tmp_path / "x.pt")]) == 2  # an export: its command named
    assert f"{trained['export']}: an exported model already; `export` makes one from a training checkpoint " \
           "(`train --checkpoint`), and `--format onnx` converts an export as it is" in capsys.readouterr().err
    photo = next((trained["data"] / "test" / "00.Red_Fort").iterdir())
    for model, message in ((tmp_path / "absent.pt", "absent.pt: exported model not found"),
                           (tmp_path, f"{tmp_path}: a folder, not a model file")):
        assert main(["predict", str(photo), "--model", str(model)]) == 2
        assert message in capsys.readouterr().err
    assert main(["tag", str(photo), "--model", str(trained["export"]), "--out", str(tmp_path / "t.csv")]) == 2
    assert f"{photo}: a file, not a folder of photos (`predict {photo}` answers one photo)" in capsys.readouterr().err


def test_evaluate_matches_class_folders_by_name_and_refuses_landmarks_the_model_lacks(trained: dict[str, Path],
                                                                                     tmp_path: Path, capsys) -> None:
    other, some = tmp_path / "other", tmp_path / "some"
    for split in ("train", "test"):
        for name in ("00.A", "01.B"):
            (other / split / name).mkdir(parents=True)
            (other / split / name / "x.jpg").write_bytes((next((trained["data"] / "test" / "00.Red_Fort").iterdir())).read_bytes())
        (some / split).mkdir(parents=True)  # photos of one of its three landmarks, in a folder named without a number
        shutil.copytree(trained["data"] / split / "02.Blue_Tower", some / split / "Blue_Tower")
        shutil.copytree(trained["data"] / split / "02.Blue_Tower", some / split / "Red_Fort")
    assert main(["evaluate", str(trained["export"]), "--data", str(other), "--workers", "0"]) == 2
    assert f"{other / 'test'}: 2 of its 2 class folders name no landmark of {trained['export']} (A, B); its landmarks: " \
           "Red Fort, Green Gate, Blue Tower" in capsys.readouterr().err
    assert main(["evaluate", str(trained["export"]), "--data", str(some), "--workers", "0",
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    whole = main(["evaluate", str(trained["export"]), "--data", str(trained["data"]), "--workers", "0",
                  "--json", str(tmp_path / "whole.json")])
    blue = json.loads((tmp_path / "whole.json").read_text())["per_class_top1"]["Blue Tower"]
    assert whole == 0 and report["per_class_top1"]["Blue Tower"] == blue  # the same photos, the same class index
    assert report["per_class_top1"]["Red Fort"] <= 1 - blue  # Blue Tower's photos in a folder named Red Fort
    assert main(["export", str(trained["checkpoint"]), "--out", str(tmp_path / "x_exported.pt"), "--data", str(some),
                 "--workers", "0"]) == 2  # calibrating needs the validation photos it was trained with
    assert f"trained on other classes (Red Fort, Green Gate, Blue Tower) than those of {some / 'train'} (Blue Tower, " \
           "Red Fort); export calibrates on the validation photos of the dataset it was trained on" in capsys.readouterr().err


def test_a_diverging_training_is_one_line_that_says_what_to_change(tiny_data: Path, tmp_path: Path, monkeypatch, capsys
                                                                   ) -> None:
    from src.optimization import OutlierExposureLoss

    monkeypatch.setattr(OutlierExposureLoss, "forward", lambda self, logits, target: logits.sum() * float("nan"))
    assert main(["train", "--data", str(tiny_data), "--model", "scratch", "--epochs", "1", "--eval-crop", "32",
                 "--workers", "0", "--checkpoint", str(tmp_path / "s.pt"), "--export", str(tmp_path / "s_exported.pt")]) == 2
    assert "error: Training loss became nan; lower the learning rate" in capsys.readouterr().err


@pytest.mark.parametrize("interrupted_epoch, said", [(1, "Interrupted before any epoch finished: nothing was saved."),
                                                     (2, "finished epochs are saved: rerun the same command with --resume")])
def test_an_interrupted_training_says_what_it_kept(interrupted_epoch: int, said: str, tiny_data: Path, tmp_path: Path,
                                                  monkeypatch, capsys) -> None:
    import src.train as train_module

    real_epoch, calls = train_module.train_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupted_epoch:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted)
    assert main(["train", "--data", str(tiny_data), "--model", "scratch", "--epochs", "2", "--eval-crop", "32",
                 "--workers", "0", "--checkpoint", str(tmp_path / "s.pt"), "--export", str(tmp_path / "s_exported.pt")]) == 130
    assert said in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "src", "models"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["scratch", "mobilenet_v2"]
    result = subprocess.run([sys.executable, "-m", "src", "train", "--model", "scratch"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
                                            "LANDMARK_DATA": str(tmp_path / "absent")})
    assert result.returncode == 2 and "absent" in result.stderr and "Traceback" not in result.stderr


def test_commands_on_an_export_never_load_the_training_stack(trained: dict[str, Path], tmp_path: Path) -> None:
    """predict and tag start without torchvision and timm, whose imports take most of their start: src.photo_commands."""
    photos = trained["data"] / "test" / "00.Red_Fort"
    script = ("import sys; from src.cli import main; "
              f"codes = [main(['predict', {str(next(photos.iterdir()))!r}, '--model', {str(trained['export'])!r}]), "
              f"main(['tag', {str(photos)!r}, '--model', {str(trained['export'])!r}, '--out', {str(tmp_path / 'tags.csv')!r}, "
              "'--workers', '0'])]; "
              "print('loaded:', sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'timm'}), codes)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "loaded: [] [0, 0]"
    assert (tmp_path / "tags.csv").read_text().count("\n") == 1 + len(list(photos.iterdir()))


@pytest.mark.parametrize("command, message", [
    (["train", "--export", "{o}/m.json"], "name it .pt"),
    (["train", "--checkpoint", "{o}/x.pt", "--export", "{o}/x.pt"], "the export and the checkpoint would be the same file"),
    (["train", "--checkpoint", "{o}/x.pt", "--export", "{o}/x.last.pt"], "would be the same file"),
    (["train", "--export", "{o}"], "is a folder"),
    (["train", "--export", "/proc/self/m.pt"], "cannot write the export there"),
])
def test_train_refuses_outputs_that_would_destroy_files_before_training(trained: dict[str, Path], command: list[str],
                                                                         message: str, capsys) -> None:
    out = trained["out"]
    argv = [part.format(o=out) for part in command] + ["--data", str(trained["data"]), *TINY_TRAIN]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "Epoch" not in capsys.readouterr().out


def test_evaluate_and_export_refuse_to_overwrite_their_input(trained: dict[str, Path], capsys) -> None:
    before = trained["export"].read_bytes()
    assert main(["evaluate", str(trained["export"]), "--data", str(trained["data"]), "--json", str(trained["export"])]) == 2
    assert "the JSON report and the model would be the same file" in capsys.readouterr().err
    assert main(["export", str(trained["checkpoint"]), "--out", str(trained["checkpoint"])]) == 2
    assert "would be the same file" in capsys.readouterr().err
    assert trained["export"].read_bytes() == before and main(["export", str(trained["checkpoint"]), "--out",
                                                             str(trained["out"] / "again.pt"), "--data", str(trained["data"])]) == 0


@pytest.mark.parametrize("argv, message", [
    (["tag", "{photos}", "--out", "{o}/t.csv", "--topk", "0"], "--topk: must be at least 1"),
    (["tag", "{photos}", "--out", "{o}/t.csv", "--topk", "-1"], "--topk: must be at least 1"),
    (["tag", "{photos}", "--out", "{o}/t.csv", "--threshold", "2"], "--threshold: must be a known score from 0 to 1, got 2"),
    (["tag", "{photos}", "--out", "{o}/t.csv", "--threshold", "nan"], "--threshold: must be a known score from 0 to 1"),
    (["predict", "{photo}", "--topk", "-3"], "--topk: must be at least 1"),
    (["predict", "{photo}", "--topk", "0"], "--topk: must be at least 1"),
    (["evaluate", "{export}", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["train", "--limit", "0"], "--limit: must be a positive number of photos"),
])
def test_bad_numbers_are_usage_errors(trained: dict[str, Path], argv: list[str], message: str, capsys) -> None:
    photo = next((trained["data"] / "test" / "00.Red_Fort").iterdir())
    argv = [part.format(o=trained["out"], photos=trained["data"] / "test", photo=photo, export=trained["export"])
            for part in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--label-smoothing", "2"], "label_smoothing must be in [0, 0.99]"),
    (["--lr", "1e9"], "lr must be in (0, 10]"),
    (["--lr", "0"], "lr must be in (0, 10]"),
    (["--eval-crop", "64", "--resize", "32"], "resize (32 px) must be at least eval_crop (64 px)"),
    (["--head-epochs", "3"], "head_epochs: not a setting of the ScratchRecipe"),
])
def test_bad_recipe_values_are_one_line_errors(trained: dict[str, Path], extra: list[str], message: str, capsys) -> None:
    argv = ["train", "--data", str(trained["data"]), *TINY_TRAIN, *extra, "--checkpoint", str(trained["out"] / "bad.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (trained["out"] / "bad.pt").exists()


def test_read_only_outputs_and_folders_as_files_are_one_line_errors(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    photos = trained["data"] / "test"
    assert main(["tag", str(photos), "--out", "/proc/self/tags.csv", "--workers", "0"]) == 2
    assert "/proc/self/tags.csv" in capsys.readouterr().err
    (tmp_path / "tags.csv").mkdir()
    assert main(["tag", str(photos), "--out", str(tmp_path / "tags.csv"), "--workers", "0"]) == 2
    assert "tags.csv" in capsys.readouterr().err
    assert main(["evaluate", str(trained["export"]), "--data", str(trained["data"]), "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_summary_names_top_k_by_the_class_count(trained: dict[str, Path], capsys) -> None:
    """Three classes: the second figure is top-3, never called top-5."""
    assert main(["evaluate", str(trained["export"]), "--data", str(trained["data"]), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "top-3" in out and "top-5" not in out


def test_export_writes_only_a_pt_file_and_replaces_a_foreign_file_only_with_force(trained: dict[str, Path], tmp_path: Path,
                                                                                  capsys) -> None:
    metrics = tmp_path / "ex.json"
    metrics.write_text('{"top1": 0.9}')
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes, not a model")
    export = ["export", str(trained["checkpoint"]), "--data", str(trained["data"]), "--workers", "0", "--out"]
    assert main([*export, str(metrics)]) == 2
    assert "name it .pt" in capsys.readouterr().err and metrics.read_text() == '{"top1": 0.9}'
    assert main([*export, str(notes)]) == 2
    err = capsys.readouterr().err
    assert "not a model exported by this project" in err and "--force" in err
    assert notes.read_text() == "my notes, not a model"
    assert main([*export, str(notes), "--force"]) == 0
    assert list(load_exported(notes).class_names) == ["Red Fort", "Green Gate", "Blue Tower"]


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_bad_cache_bound_is_refused_before_any_work(tiny_data: Path, tmp_path: Path, value: str,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("LANDMARK_CACHE_GB", value)
    monkeypatch.setattr(run, "get_data_loaders", lambda *args, **kwargs: pytest.fail("loaded data before checking the bound"))
    assert main(["train", "--data", str(tiny_data), *TINY_TRAIN, "--checkpoint", str(tmp_path / "m.pt")]) == 2
    assert f"$LANDMARK_CACHE_GB={value!r}" in capsys.readouterr().err


def test_a_bad_places_file_is_refused_before_any_work(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys) -> None:
    (tmp_path / "places.csv").mkdir()
    monkeypatch.setattr(run, "get_data_loaders", lambda *args, **kwargs: pytest.fail("loaded data before reading --places"))
    assert main(["train", "--data", str(tiny_data), *TINY_TRAIN, "--checkpoint", str(tmp_path / "m.pt"),
                 "--places", str(tmp_path / "places.csv")]) == 2
    assert "places.csv: not a file" in capsys.readouterr().err


@pytest.mark.parametrize("kind", BAD_PHOTO_KINDS)
def test_predict_names_a_bad_file_and_what_it_is_without_a_traceback(trained: dict[str, Path], tmp_path: Path,
                                                                    make_bad_photo, kind: str, capsys) -> None:
    bad = make_bad_photo(kind, tmp_path)
    good = next((trained["data"] / "test" / "00.Red_Fort").iterdir())
    assert main(["predict", str(bad), str(good), "--model", str(trained["export"])]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {bad}: ") and BAD_PHOTO_KINDS[kind] in captured.err[len(f"error: {bad}: "):]
    assert "Traceback" not in captured.err and captured.out.startswith(str(good))
