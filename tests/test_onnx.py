"""ONNX export (src/onnx_export.py, `export --format onnx`) and onnxruntime (src/onnx_runtime.py): the same answers
as the TorchScript export for every registered model and the shipped ones, and `serve` picking the faster runtime."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import REPO, SHARED_DATA, TINY_CLASSES, shared_folder, tiny_config
import src.onnx_export as onnx_export
from src.cli import main
from src.decoding import square_batches
from src.export import ExportView, Predictor, export_predictor, open_export
from src.factory import create_model, list_models
from src.onnx_export import TOLERANCE, export_onnx, faster_runtime, file_sha256, runtime_name
from src.onnx_runtime import OnnxExport
from src.predictor import predict_photo
from src.preprocessing import square_uint8
from src.service import ServiceSettings, create_app

TRANSFER = REPO / "checkpoints" / "transfer_exported.pt"


def photo_squares(view: ExportView, paths: list[Path]) -> torch.Tensor:
    """The squares ``tag`` and ``serve`` feed the model for ``paths``."""
    return torch.cat([images for _, images, _ in square_batches(paths, view.resize_size, 64, num_workers=0)])


def assert_same_answers(torchscript: ExportView, onnx: ExportView, squares: torch.Tensor) -> None:
    """Probabilities and known scores within :data:`TOLERANCE`, and the same known/unknown verdict for every photo."""
    expected, got = torchscript.classify(squares), onnx.classify(squares)
    for a, b in zip(expected, got):
        assert float((a - b).abs().max()) <= TOLERANCE
    threshold = torchscript.unknown_threshold
    assert torch.equal(expected[1] >= threshold, got[1] >= onnx.unknown_threshold)
    assert torch.equal(expected[0].argmax(1), got[0].argmax(1))


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_exports_to_onnx_with_the_same_answers(name: str, tiny_data: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    network = create_model(name, len(TINY_CLASSES), pretrained=False, **({"widths": (8, 16)} if name == "scratch" else {}))
    view = open_export(export_predictor(Predictor(network, TINY_CLASSES, tiny_config(32), unknown_threshold=0.4),
                                        tmp_path / "m.pt"))
    onnx = open_export(export_onnx(view, tmp_path / "m.onnx"))
    assert isinstance(onnx.module, OnnxExport) and runtime_name(onnx) == "onnxruntime"
    assert (onnx.class_names, onnx.resize_size, onnx.image_size, onnx.unknown_threshold) == (
        view.class_names, view.resize_size, view.image_size, view.unknown_threshold)
    paths = sorted((tiny_data / "test").glob("*/*.*"))
    assert_same_answers(view, onnx, photo_squares(view, paths))
    assert_same_answers(view, onnx, photo_squares(view, paths[:1]))  # a batch of one


def test_the_shipped_model_converts_with_the_same_answers_on_real_photos(landmarks10: Path, tmp_path: Path) -> None:
    view = open_export(TRANSFER)
    onnx = open_export(export_onnx(view, tmp_path / "transfer.onnx", file_sha256(TRANSFER)))
    assert onnx.places == view.places and onnx.module.source_sha256 == file_sha256(TRANSFER)
    scenes = shared_folder(SHARED_DATA / "non_landmarks")
    photos = sorted((landmarks10 / "test").glob("*/*.jpg"))[::100] + sorted(scenes.rglob("*.jpg"))[::100]
    squares = photo_squares(view, photos)
    assert_same_answers(view, onnx, squares)
    known = view.classify(squares)[1] >= view.unknown_threshold
    assert known.any() and not known.all()  # both verdicts are compared
    assert (tmp_path / "transfer.onnx").stat().st_size < 0.8 * TRANSFER.stat().st_size  # its fp16 banks stay fp16


def test_large_float_constants_that_are_fp16_are_stored_as_fp16_with_the_same_values() -> None:
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    banks = {"half": rng.standard_normal(onnx_export.HALF_CONSTANT).astype(np.float16).astype(np.float32),
             "full": rng.standard_normal(onnx_export.HALF_CONSTANT).astype(np.float32),  # not fp16: kept as it is
             "small": rng.standard_normal(8).astype(np.float16).astype(np.float32)}
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name))
             for name, value in banks.items()]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [len(value)]) for name, value in banks.items()]
    model = helper.make_model(helper.make_graph(nodes, "banks", [], outputs), opset_imports=[helper.make_opsetid("", 18)])
    onnx_export._half_constants(model.graph)
    onnx.checker.check_model(model)
    stored = {node.output[0]: node.attribute[0].t.data_type for node in model.graph.node if node.op_type == "Constant"}
    assert stored == {"half_fp16": TensorProto.FLOAT16, "full": TensorProto.FLOAT, "small": TensorProto.FLOAT}
    answers = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})
    for answer, value in zip(answers, banks.values()):
        assert answer.dtype == np.float32 and np.array_equal(answer, value)


def test_onnx_answers_photos_of_any_size_as_their_squares(tmp_path: Path) -> None:
    view = open_export(TRANSFER)
    onnx = OnnxExport((export_onnx(view, tmp_path / "t.onnx")).read_bytes())
    photo = torch.randint(0, 256, (3, 300, 200), dtype=torch.uint8)
    square = square_uint8(photo, view.resize_size).unsqueeze(0)
    assert torch.allclose(onnx.classify(photo)[0], onnx.classify(square)[0], atol=1e-6)
    assert torch.allclose(onnx.classify(photo.float() / 255)[0], onnx.classify(square)[0], atol=1e-3)


def test_onnx_runs_with_as_many_threads_as_torch_uses_at_each_call(tmp_path: Path) -> None:
    onnx = OnnxExport((export_onnx(open_export(TRANSFER), tmp_path / "t.onnx")).read_bytes())
    squares = torch.randint(0, 256, (2, 3, onnx.resize_size, onnx.resize_size), dtype=torch.uint8)
    before, threads = onnx.classify(squares), torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # as tag does for large photos
        once = onnx.classify(squares)
        assert onnx.threads == 1 and onnx.session.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(once[0], before[0], atol=1e-6) and torch.allclose(once[1], before[1], atol=1e-6)
    onnx.classify(squares)
    assert onnx.threads == threads


def test_the_command_converts_an_export_and_predict_reads_the_onnx_file(landmarks10: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "transfer.onnx"
    assert main(["export", str(TRANSFER), "--format", "onnx", "--out", str(out)]) == 0
    assert "Exported" in capsys.readouterr().out
    photo = sorted((landmarks10 / "test").glob("*/*.jpg"))[0]
    expected, got = predict_photo(open_export(TRANSFER), photo), predict_photo(open_export(out), photo)
    assert [name for name, _ in got.ranking] == [name for name, _ in expected.ranking] and got.known == expected.known
    assert np.allclose([p for _, p in got.ranking], [p for _, p in expected.ranking], atol=TOLERANCE)


def test_bad_onnx_files_and_names_are_clear_errors(tmp_path: Path, capsys) -> None:
    assert main(["export", str(TRANSFER), "--format", "onnx", "--out", str(tmp_path / "x.pt")]) != 0
    assert "name it .onnx" in capsys.readouterr().err
    assert main(["export", str(TRANSFER), "--format", "onnx", "--second-network", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "--second-network is chosen when a training checkpoint is exported" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ValueError, match="bad.onnx: not an ONNX export"):
        open_export(bad)
    misnamed = tmp_path / "misnamed.onnx"
    misnamed.write_bytes(TRANSFER.read_bytes())
    with pytest.raises(ValueError, match=r"misnamed.onnx: a TorchScript export named .onnx; name it .pt, or make its ONNX file"):
        open_export(misnamed)
    onnx = open_export(export_onnx(open_export(TRANSFER), tmp_path / "ok.onnx"))
    with pytest.raises(ValueError, match="classify only"):
        onnx.features_and_logits(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))
    with pytest.raises(ValueError, match="an ONNX file already"):
        export_onnx(onnx, tmp_path / "again.onnx")


def test_a_conversion_that_does_not_match_is_not_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "largest_difference", lambda *args: 0.5)
    with pytest.raises(ValueError, match="differ from the export's by 0.5"):
        export_onnx(open_export(TRANSFER), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.fixture
def served_pair(tmp_path: Path) -> Path:
    """The shipped model with its ONNX file beside it."""
    model = tmp_path / "transfer_exported.pt"
    shutil.copy(TRANSFER, model)
    export_onnx(open_export(model), model.with_suffix(".onnx"), file_sha256(model))
    return model


@pytest.mark.parametrize("onnx_faster", [True, False])
def test_serve_runs_the_faster_runtime_of_an_export_and_its_onnx_file(served_pair: Path, monkeypatch, onnx_faster: bool
                                                                       ) -> None:
    timed = lambda model, squares: (0.001 if onnx_faster else 1.0) if runtime_name(model) == "onnxruntime" else 0.01  # noqa: E731
    monkeypatch.setattr(onnx_export, "seconds_per_batch", timed)
    expected = "onnxruntime" if onnx_faster else "torchscript"
    assert runtime_name(faster_runtime(served_pair)) == expected
    with TestClient(create_app(ServiceSettings(served_pair))) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health")).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # the model loads once the app starts
        assert health.json()["runtime"] == expected
        reloaded = client.post("/admin/reload").json()
        assert reloaded["runtime"] == expected


@pytest.mark.parametrize("onnx_faster", [True, False])
def test_tag_runs_the_faster_runtime_of_an_export_and_its_onnx_file(served_pair: Path, tiny_data: Path, tmp_path: Path,
                                                                     monkeypatch, capsys, onnx_faster: bool) -> None:
    timed = lambda model, squares: (0.001 if onnx_faster else 1.0) if runtime_name(model) == "onnxruntime" else 0.01  # noqa: E731
    monkeypatch.setattr(onnx_export, "seconds_per_batch", timed)
    photos = tiny_data / "train" / TINY_CLASSES[0]
    out = tmp_path / "tags.csv"
    assert main(["tag", str(photos), "--model", str(served_pair), "--out", str(out), "--workers", "0"]) == 0
    summary = capsys.readouterr().out
    assert f"photos/s, {'onnxruntime' if onnx_faster else 'torchscript'}) -> {out}" in summary
    assert len(out.read_text().splitlines()) == 1 + len(list(photos.iterdir()))  # a header and a row a photo


def test_an_onnx_file_made_from_another_export_is_left_aside(served_pair: Path) -> None:
    served_pair.with_suffix(".onnx").write_bytes(export_onnx(open_export(TRANSFER), served_pair.parent / "x.onnx").read_bytes())
    with pytest.warns(UserWarning, match="was not made from"):
        assert runtime_name(faster_runtime(served_pair)) == "torchscript"
