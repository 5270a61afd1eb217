from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_config
from src.data import get_data_loaders, visualize_one_batch
from src import defaults
from src.cli import main
from src.defaults import cpu_cores, threads_within_cores
from src.places import display_name

FAST = {"batch_size": 8, "num_workers": 0, "config": tiny_config()}


def test_display_name() -> None:
    assert display_name("09.St_Stephen_Cathedral_Vienna") == "St Stephen Cathedral Vienna"
    assert display_name("00.Haleakala_National_Park") == "Haleakala National Park"
    assert display_name("plain_folder") == "plain folder"


def test_loaders_split_train_into_train_and_valid(tiny_data: Path) -> None:
    loaders = get_data_loaders(data_dir=tiny_data, valid_size=0.25, **FAST)
    assert set(loaders) == {"train", "valid", "test"}
    train, valid, test = (loaders[k].dataset for k in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (27, 9, 12)
    assert not set(train.paths) & set(valid.paths)
    assert train.class_names == ["Red Fort", "Green Gate", "Blue Tower"]
    images, labels = next(iter(loaders["train"]))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.long and labels.max() < 3
    images, _ = next(iter(loaders["test"]))
    assert images.shape[-2:] == (32, 32)


def test_split_is_seeded_and_reproducible(tiny_data: Path) -> None:
    first = get_data_loaders(data_dir=tiny_data, **FAST)["valid"].dataset.paths
    again = get_data_loaders(data_dir=tiny_data, **FAST)["valid"].dataset.paths
    other = get_data_loaders(data_dir=tiny_data, seed=7, **FAST)["valid"].dataset.paths
    assert first == again and first != other


def test_limit_keeps_a_random_sample_of_every_split(tiny_data: Path) -> None:
    loaders = get_data_loaders(data_dir=tiny_data, limit=10, **FAST)
    assert len(loaders["train"].dataset) + len(loaders["valid"].dataset) == 10
    test_targets = loaders["test"].dataset.targets
    assert 0 < len(test_targets) < 12 and len(set(test_targets)) > 1  # not just the first class


def test_bad_arguments_are_rejected(tiny_data: Path) -> None:
    with pytest.raises(ValueError, match="valid_size"):
        get_data_loaders(data_dir=tiny_data, valid_size=1.5, **FAST)


def test_unreadable_photos_are_named_and_skipped(tiny_data_copy: Path) -> None:
    folder = tiny_data_copy / "train" / "00.Red_Fort"
    (folder / "notes.txt").write_text("not a photo")
    (folder / "empty.jpg").write_bytes(b"")
    truncated = folder / "truncated.jpg"
    data = (folder / "000.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning) as warned:
        loaders = get_data_loaders(data_dir=tiny_data_copy, valid_size=0.0, **FAST)
    messages = " ".join(str(w.message) for w in warned)
    assert "empty.jpg" in messages and "notes.txt" in messages  # rejected when the folder is scanned
    assert "truncated.jpg" in messages  # rejected when the photos are decoded (once)
    dataset = loaders["train"].dataset
    assert truncated not in dataset.paths and (folder / "empty.jpg") not in dataset.paths
    assert len(dataset) == 12 * 3 and len(dataset.images) == len(dataset)
    assert sum(len(labels) for _, labels in loaders["train"]) <= len(dataset)


def test_train_and_test_must_have_the_same_classes(tiny_data_copy: Path) -> None:
    shutil.rmtree(tiny_data_copy / "test" / "02.Blue_Tower")
    (tiny_data_copy / "test" / "09.Lost").mkdir()
    shutil.copy(next((tiny_data_copy / "test" / "00.Red_Fort").iterdir()), tiny_data_copy / "test" / "09.Lost")
    with pytest.raises(ValueError, match=r"different class folders \(only in train/: 02.Blue_Tower; only in test/: 09.Lost\)"):
        get_data_loaders(data_dir=tiny_data_copy, **FAST)


def test_empty_class_folder_is_reported(tiny_data_copy: Path) -> None:
    (tiny_data_copy / "train" / "03.Empty").mkdir()
    (tiny_data_copy / "train" / "03.Empty" / "notes.txt").write_text("no photo")
    with pytest.raises(FileNotFoundError) as error:
        get_data_loaders(data_dir=tiny_data_copy, **FAST)
    assert str(error.value).startswith(f"{tiny_data_copy / 'train'}: Found no valid file for the classes 03.Empty.")
    notes = tiny_data_copy / "train" / "03.Empty" / "notes.txt"
    assert f"each with at least one photo (1 file(s) of it are not readable images, such as {notes})." in str(error.value)


def test_too_few_photos_to_hold_out_validation_ones_are_reported_before_any_work(tiny_data: Path, tmp_path: Path) -> None:
    for split in ("train", "test"):
        for c in range(2):
            (tmp_path / split / f"{c}").mkdir(parents=True)
            Image.new("RGB", (20, 30), (c * 90, 50, 100)).save(tmp_path / split / f"{c}" / "0.jpg")
    with pytest.raises(ValueError, match=r"/train: 2 training photo\(s\) leave none for validation \(20% are held out "
                                         r"to choose the best weights\); it needs at least 3"):
        get_data_loaders(data_dir=tmp_path, **FAST)
    with pytest.raises(ValueError, match=r"2 training photo\(s\) kept by the limit leave none for validation"):
        get_data_loaders(data_dir=tiny_data, limit=2, **FAST)
    with pytest.raises(ValueError, match=r"2 training photo\(s\) leave none for training \(75% .*at least 3"):
        get_data_loaders(data_dir=tmp_path, valid_size=0.75, **FAST)


@pytest.mark.parametrize("negatives", ["train", "train/00.Red_Fort", "test", "."])
def test_a_negatives_folder_overlapping_the_dataset_is_refused(negatives: str, tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a negatives folder overlapping the dataset's .*; negatives are photos of no "
                                         "landmark it learns"):
        get_data_loaders(data_dir=tiny_data, negatives=[tiny_data / negatives], **FAST)
    (tmp_path / "scenes").symlink_to(tiny_data / "train" / "01.Green_Gate")  # also through a link
    with pytest.raises(ValueError, match="overlapping"):
        get_data_loaders(data_dir=tiny_data, negatives=[tmp_path / "scenes"], **FAST)


def test_any_number_of_classes(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for c in range(7):
            folder = tmp_path / split / f"{c:02d}.Class_{c}"
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 30), (c * 30, i * 50, 100)).save(folder / f"{i}.jpg")
    loaders = get_data_loaders(data_dir=tmp_path, **FAST)
    assert len(loaders["train"].dataset.class_names) == 7


def test_workers_deliver_the_same_batches(tiny_data: Path) -> None:
    kwargs = dict(FAST, data_dir=tiny_data)
    kwargs.pop("num_workers")
    serial = next(iter(get_data_loaders(num_workers=0, **kwargs)["test"]))[0]
    parallel = next(iter(get_data_loaders(num_workers=2, **kwargs)["test"]))[0]
    assert torch.equal(serial, parallel)


def test_visualize_one_batch(tiny_data: Path) -> None:
    fig = visualize_one_batch(get_data_loaders(data_dir=tiny_data, **FAST), max_n=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 and set(titles) <= {"Red Fort", "Green Gate", "Blue Tower"}


def test_loading_leaves_the_global_random_state_alone_cold_or_warm(tiny_data_copy: Path) -> None:
    """The same seed gives the same model whether the decode and statistics caches are cold or warm."""
    draws = []
    for _ in ("cold", "warm"):
        torch.manual_seed(0)
        loaders = get_data_loaders(data_dir=tiny_data_copy, batch_size=8, num_workers=1)  # statistics, sizes, decoding
        next(iter(loaders["valid"]))
        draws.append(torch.rand(4))
    torch.manual_seed(0)
    assert draws[0].equal(draws[1]) and draws[0].equal(torch.rand(4))


def test_a_one_class_dataset_is_refused(tiny_data_copy: Path) -> None:
    for split in ("train", "test"):
        for name in ("01.Green_Gate", "02.Blue_Tower"):
            shutil.rmtree(tiny_data_copy / split / name)
    with pytest.raises(ValueError, match="1 class folder"):
        get_data_loaders(data_dir=tiny_data_copy, **FAST)


def test_limit_zero_is_refused_rather_than_meaning_all(tiny_data: Path) -> None:
    with pytest.raises(ValueError, match="limit must be a positive number"):
        get_data_loaders(data_dir=tiny_data, limit=0, **FAST)


def test_loader_workers_follow_the_cores_this_process_may_use_shared_among_torchrun_processes(
        tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Slurm job or a container pinned to 4 cores of a 64-core machine: ``os.cpu_count()`` says 64."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(defaults, "CPU_QUOTA_FILES", ())  # whatever quota the machine running the tests has
    assert cpu_cores() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun's processes on this machine share them
    assert cpu_cores() == 2
    loaders = get_data_loaders(data_dir=tiny_data, **{**FAST, "num_workers": -1})
    assert {loader.num_workers for loader in loaders.values()} == {2}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert cpu_cores() == 1


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: docker --cpus 1.5, rounded up
    ({"cpu.max": "max 100000\n"}, 4),  # no quota: the affinity's 4
    ({"cfs_quota_us": "100000\n", "cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cfs_quota_us": "-1\n", "cfs_period_us": "100000\n"}, 4),
    ({"cpu.max": "garbage\n"}, 4),
])
def test_a_cpu_quota_lowers_the_cores(files: dict[str, str], cores: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Kubernetes CPU limit or `docker --cpus` is a cgroup quota: every core stays in the process's affinity."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(defaults, "CPU_QUOTA_FILES", ((str(tmp_path / "cpu.max"),),
                                                      (str(tmp_path / "cfs_quota_us"), str(tmp_path / "cfs_period_us"))))
    assert cpu_cores() == cores


def test_torch_threads_stay_within_the_cores_a_quota_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch counts its affinity's cores: a container limited to 1 CPU would otherwise run as many threads."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(defaults, "_cpu_quota", lambda: 1)
    try:
        assert main(["models"]) == 0 and torch.get_num_threads() == 1  # the command line's first step
        torch.set_num_threads(threads)
        monkeypatch.setattr(defaults, "_cpu_quota", lambda: None)
        assert threads_within_cores() == threads  # never raised above torch's own count
    finally:
        torch.set_num_threads(threads)
