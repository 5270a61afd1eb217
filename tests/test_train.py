from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from conftest import tiny_config
from src import train as train_module
from src.checkpoint import CheckpointError, load_checkpoint, load_weights, model_from_checkpoint, save_checkpoint
from src.data import get_data_loaders
from src.factory import create_model
from src.optimization import get_loss, get_optimizer
from src.progress import tqdm
from src.statistics import compute_mean_and_std
from src.train import EpochMetrics, evaluate, last_state_path, load_best, optimize, train_epoch

SMALL = {"widths": (8, 16, 32), "dropout": 0.1}


@pytest.fixture
def loaders(tiny_data: Path):
    torch.manual_seed(0)
    return get_data_loaders(data_dir=tiny_data, batch_size=8, num_workers=0, config=tiny_config())


def _setup(lr: float = 3e-3):
    torch.manual_seed(0)
    model = create_model("scratch", 3, **SMALL)
    return model, get_optimizer(model, "AdamW", learning_rate=lr), get_loss()


def test_epoch_functions_return_loss_and_accuracy(loaders) -> None:
    model, optimizer, loss = _setup()
    for metrics in (
        train_epoch(loaders["train"], model, optimizer, loss),
        evaluate(loaders["valid"], model, loss),
    ):
        assert isinstance(metrics, EpochMetrics)
        assert metrics.loss > 0 and 0 <= metrics.accuracy <= 1


def test_each_pass_opens_its_loader_once_and_a_progress_bar_draws_nothing(loaders, tiny_data_copy: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar that opened its loader as it was made would start a second set of workers, decode batches for nothing
    and draw the shuffle from the loader's generator first."""
    shuffled = [DataLoader(range(40), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(3)) for _ in "ab"]
    assert [batch.tolist() for batch in tqdm(shuffled[0])] == [batch.tolist() for batch in shuffled[1]]

    opened = Counter()
    open_loader = DataLoader.__iter__
    monkeypatch.setattr(DataLoader, "__iter__", lambda self: opened.update([id(self)]) or open_loader(self))
    model, optimizer, loss = _setup()
    train_epoch(loaders["train"], model, optimizer, loss)
    evaluate(loaders["valid"], model, loss)
    compute_mean_and_std(tiny_data_copy, num_workers=0)  # a new dataset: not in the cache
    assert len(opened) == 3 and set(opened.values()) == {1}


def test_optimize_learns_saves_the_best_weights_and_can_resume(loaders, tmp_path: Path) -> None:
    model, optimizer, loss = _setup()
    save_path = tmp_path / "best.pt"
    history = optimize(loaders, model, optimizer, loss, n_epochs=6, save_path=save_path)
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert max(h["valid_accuracy"] for h in history) > 0.6  # three colour-coded classes
    best = load_checkpoint(save_path)
    assert best["valid_loss"] == min(h["valid_loss"] for h in history)
    assert best["class_names"] == ["Red Fort", "Green Gate", "Blue Tower"] and best["preprocess"]["eval_crop"] == 32
    assert last_state_path(save_path).is_file()

    # continuing to 8 epochs runs only the two missing ones
    model2, optimizer2, loss2 = _setup()
    resumed = optimize(loaders, model2, optimizer2, loss2, n_epochs=8, save_path=save_path, resume=True)
    assert [h["epoch"] for h in resumed] == list(range(1, 9)) and resumed[:6] == history
    rebuilt, _ = model_from_checkpoint(save_path)
    assert isinstance(rebuilt, type(model))


def test_interrupted_training_keeps_finished_epochs(loaders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_train = train_module.train_epoch
    calls = {"n": 0}

    def interrupted_on_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", interrupted_on_second_epoch)
    model, optimizer, loss = _setup()
    with pytest.raises(KeyboardInterrupt):
        optimize(loaders, model, optimizer, loss, n_epochs=3, save_path=tmp_path / "m.pt")
    assert len(load_checkpoint(last_state_path(tmp_path / "m.pt"))["history"]) == 1
    assert (tmp_path / "m.pt").is_file()
    model, optimizer, loss = _setup()
    history = optimize(loaders, model, optimizer, loss, n_epochs=3, save_path=tmp_path / "m.pt", resume=True)
    assert len(history) == 3 and calls["n"] == 4


def test_resuming_on_other_classes_or_photo_sizes_is_refused(loaders, tiny_data: Path, tiny_data_copy: Path,
                                                            tmp_path: Path) -> None:
    """Its weights would otherwise go on training, and be exported, under the other dataset's names."""
    model, optimizer, loss = _setup()
    optimize(loaders, model, optimizer, loss, n_epochs=1, save_path=tmp_path / "m.pt")
    for split in ("train", "test"):  # the same photos under another class name
        (tiny_data_copy / split / "02.Blue_Tower").rename(tiny_data_copy / split / "02.Azure_Spire")
    renamed = get_data_loaders(data_dir=tiny_data_copy, batch_size=8, num_workers=0, config=tiny_config())
    resized = get_data_loaders(data_dir=tiny_data, batch_size=8, num_workers=0, config=tiny_config(24))
    for other, said in ((renamed, "a run on other classes (Red Fort, Green Gate, Blue Tower) than this dataset's "
                                  "(Red Fort, Green Gate, Azure Spire); resuming continues a run on the same data"),
                        (resized, "a run with other photo sizes or normalisation (eval_crop 32 (now 24), resize 37 "
                                  "(now 27), train_crop 32 (now 24))")):
        model, optimizer, loss = _setup()
        with pytest.raises(CheckpointError, match=re.escape(said)):
            optimize(other, model, optimizer, loss, n_epochs=2, save_path=tmp_path / "m.pt", resume=True)


def test_plateau_scheduler_divides_the_rate_when_validation_stalls_and_the_plot_follows(
        loaders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, loss = _setup()
    start = optimizer.param_groups[0]["lr"]
    monkeypatch.setattr(train_module, "evaluate", lambda *args: train_module.EpochMetrics(1.0, 0.5))  # stalled
    drawn: list[list[list[float]]] = []

    class RecordingPlot(train_module.LivePlot):
        def update(self, history: list[dict[str, float]]) -> None:
            super().update(history)
            drawn.append([list(line.get_ydata()) for line in self.axes[1].lines])

    monkeypatch.setattr(train_module, "LivePlot", RecordingPlot)
    history = optimize(loaders, model, optimizer, loss, n_epochs=5, save_path=tmp_path / "p.pt",
                       scheduler="plateau", interactive_tracking=True)
    # patience 2: the fourth epoch without improvement divides the rate by 10, and only then
    assert [h["lr"] for h in history] == pytest.approx([start] * 3 + [start / 10] * 2)
    assert len(drawn) == 5 and drawn[-1] == [[h["train_accuracy"] for h in history], [0.5] * 5]
    with pytest.raises(ValueError, match="scheduler"):
        optimize(loaders, model, optimizer, loss, n_epochs=1, save_path=tmp_path / "p.pt", scheduler="step")


def test_checkpoint_with_the_wrong_class_count_is_refused(loaders, tmp_path: Path) -> None:
    model, optimizer, loss = _setup()
    optimize(loaders, model, optimizer, loss, n_epochs=1, save_path=tmp_path / "three.pt")
    other = create_model("scratch", 50, **SMALL)
    with pytest.raises(CheckpointError, match="has 3 classes but the model has 50"):
        load_best(other, tmp_path / "three.pt")


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.pt", create_model("scratch", 3, **SMALL), {"class_names": ["a", "b", "c"]})
    with pytest.raises(CheckpointError, match="weights do not fit this model") as error:
        load_weights(create_model("scratch", 3), load_checkpoint(tmp_path / "c.pt"), "c.pt")
    assert "(checkpoint architecture: scratch; " in str(error.value) and " of another shape, such as '" in str(error.value)
    with pytest.raises(CheckpointError, match=r"checkpoint architecture: scratch; \d+ of the model's \d+ tensors missing, "
                       r"such as 'backbone\.[^']+'; \d+ not the model's, such as 'features\.") as error:
        load_weights(create_model("mobilenet_v2", 3, pretrained=False), load_checkpoint(tmp_path / "c.pt"), "c.pt")
    assert len(str(error.value)) < 300  # counts, not torch's list of every key


@pytest.mark.parametrize("content", [b"", b"garbage bytes", None])
def test_foreign_files_are_not_checkpoints(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)  # a PyTorch file, but not ours
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_damaged_or_foreign_checkpoint_is_named_without_torch_s_advice(tmp_path: Path) -> None:
    """torch's loading errors go on about ``weights_only`` and miniz: only what is wrong with the file is said."""
    cut = tmp_path / "cut.pt"
    torch.save({"weights": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save(Path("a path object"), foreign)  # a zip archive, but of objects weights_only does not load
    legacy = tmp_path / "legacy.pt"
    torch.save(Path("a path object"), legacy, _use_new_zipfile_serialization=False)  # torch's pickle format before zips
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), scripted)
    for path, reason in ((cut, "neither a zip archive nor a pickle: damaged, cut short or another kind of file)"),
                         (foreign, "UnpicklingError: Weights only load failed)"),
                         (legacy, "UnpicklingError: Weights only load failed)"),
                         (scripted, "an exported model (TorchScript), not a training checkpoint")):
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path)
        assert str(error.value).startswith(f"{path}: ") and str(error.value).endswith(reason)
        assert "weights_only" not in str(error.value) and "\n" not in str(error.value)
