"""The HTTP service (``python -m src serve``): every endpoint, the limits, bad photos, the token, batching and reload."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from conftest import BAD_PHOTO_KINDS, REPO, make_photo
from src.batching import BatchingModel
from src.cli import main
from src.export import ExportView, open_export
from src.predictor import predict_photo
from src.service import TOKEN_VARIABLE, ServiceSettings, create_app

TRANSFER = REPO / "checkpoints" / "transfer_exported.pt"
SCRATCH = REPO / "checkpoints" / "original_exported.pt"
BYTE_KINDS = [kind for kind in BAD_PHOTO_KINDS
              if kind in ("bomb", "truncated", "empty", "random_bytes", "text", "corrupt_dds", "damaged_heic")]


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real test photo of a landmark the shipped model knows, or a generated one where the data is absent."""
    real = sorted((REPO.parent / "shared" / "data" / "landmarks10" / "test").glob("00.*/*.jpg"))[:1]
    if real:
        return real[0]
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    import numpy as np

    make_photo(0, np.random.default_rng(0), (320, 240)).save(path)
    return path


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(loaded(ServiceSettings(TRANSFER, max_photos=4, max_upload_mb=2))) as client:
        yield client


class SlowModel(torch.nn.Module):
    """An export whose every batch takes ``seconds`` longer: requests pile up behind it."""

    def __init__(self, module: torch.nn.Module, seconds: float) -> None:
        super().__init__()
        self.module, self.seconds = module, seconds

    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.seconds)
        return self.module.classify(images)


def slow(seconds: float) -> ExportView:
    view = open_export(TRANSFER)
    return dataclasses.replace(view, module=SlowModel(view.module, seconds))


def loaded(settings: ServiceSettings) -> FastAPI:
    """The service with its model loaded already, as ``serve`` starts it (loaded in the background, a first request
    could find it loading)."""
    return create_app(settings, open_export(settings.model))


def parts(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photo", (name, data, "image/jpeg")) for name, data in files]


def test_health_says_ok_once_the_model_is_loaded(client: TestClient) -> None:
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json() == {"status": "ok", "model": TRANSFER.name, "landmarks": 10,
                                                           "runtime": "torchscript"}


def test_health_is_503_while_the_model_cannot_be_loaded(tmp_path: Path) -> None:
    with TestClient(create_app(ServiceSettings(tmp_path / "missing.pt"))) as client:
        deadline = time.monotonic() + 10
        while (health := client.get("/health")).json()["error"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health.status_code == 503 and "missing.pt: exported model not found" in health.json()["error"]
        refused = client.post("/tag", files=parts(("a.jpg", b"x")))
        assert refused.status_code == 503 and "not loaded" in refused.json()["error"]


def test_a_photo_gets_the_same_answer_as_predict_with_its_place(client: TestClient, photo: Path) -> None:
    answer = client.post("/tag?k=3", files=parts((photo.name, photo.read_bytes())))
    assert answer.status_code == 200
    (tag,) = answer.json()["photos"]
    expected = predict_photo(open_export(TRANSFER), photo, 3)
    assert tag["name"] == photo.name and tag["error"] is None and len(tag["top_k"]) == 3
    assert [name for name, _ in tag["top_k"]] == [name for name, _ in expected.ranking]
    assert tag["top_k"][0][1] == pytest.approx(expected.ranking[0][1], abs=1e-5)
    assert tag["known_score"] == pytest.approx(expected.known_score, abs=1e-5) and tag["known"] == expected.known
    if tag["known"]:
        assert tag["landmark"] == expected.ranking[0][0] and tag["probability"] == tag["top_k"][0][1]
        assert tag["latitude"] is not None and tag["country"] and tag["wikidata"].startswith("Q")
    else:
        assert tag["landmark"] is None and tag["latitude"] is None


def test_a_photo_of_no_landmark_is_null_with_its_closest_guesses(client: TestClient) -> None:
    grey = jpeg(Image.new("RGB", (640, 480), (128, 128, 128)))
    (tag,) = client.post("/tag", files=parts(("grey.jpg", grey))).json()["photos"]
    assert tag["landmark"] is None and tag["known"] is False and len(tag["top_k"]) == 5 and tag["latitude"] is None


@pytest.mark.parametrize("kind", BYTE_KINDS)
def test_every_bad_kind_of_photo_gets_its_error_and_the_others_their_answer(client: TestClient, photo: Path, tmp_path: Path,
                                                                           make_bad_photo, kind: str) -> None:
    bad = make_bad_photo(kind, tmp_path).read_bytes()
    answer = client.post("/tag", files=parts(("bad.jpg", bad), (photo.name, photo.read_bytes())))
    assert answer.status_code == 200
    failed, good = answer.json()["photos"]
    assert failed["name"] == "bad.jpg" and BAD_PHOTO_KINDS[kind] in failed["error"] and failed["top_k"] == []
    assert good["error"] is None and good["top_k"]
    alone = client.post("/tag", files=parts(("bad.jpg", bad)))
    assert alone.status_code == 422 and BAD_PHOTO_KINDS[kind] in alone.json()["photos"][0]["error"]


def test_a_thin_strip_is_refused_by_its_aspect_ratio(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (20000, 2)).save(buffer, format="PNG")
    answer = client.post("/tag", files=parts(("strip.png", buffer.getvalue())))
    assert answer.status_code == 422 and "aspect ratio" in answer.json()["photos"][0]["error"]


def test_too_many_photos_or_bytes_are_refused_with_413(client: TestClient, photo: Path) -> None:
    many = client.post("/tag", files=parts(*[(f"{i}.jpg", photo.read_bytes()) for i in range(5)]))
    assert many.status_code == 413 and "at most" not in many.text and "(4)" in many.json()["error"]
    big = client.post("/tag", files=parts(("big.jpg", os.urandom(3_000_000))))
    assert big.status_code == 413 and "2 MB" in big.json()["error"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body streams in
        yield b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"x.jpg\"\r\n\r\n"
        for _ in range(30):
            yield os.urandom(100_000)
        yield b"\r\n--b--\r\n"
    streamed = client.post("/tag", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "2 MB" in streamed.json()["error"]


def test_a_request_without_photos_is_a_400_that_says_what_to_send(client: TestClient) -> None:
    answer = client.post("/tag", data={"other": "x"})
    assert answer.status_code == 400 and "parts named 'photo'" in answer.json()["error"]
    assert "without a filename" not in answer.json()["error"]
    unnamed = client.post("/tag", files=[("photo", ("", b"\xff\xd8 a photo's bytes", "image/jpeg"))])  # a text field
    assert unnamed.status_code == 400 and "'photo' parts came without a filename" in unnamed.json()["error"]
    assert client.post("/tag?k=0", files=parts(("a.jpg", b"x"))).status_code == 422  # k is checked by its declaration


def test_the_token_guards_everything_but_health(photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_VARIABLE, "s3cret")
    with TestClient(loaded(ServiceSettings(TRANSFER))) as client:
        assert client.get("/health").status_code == 200
        for answer in (client.post("/tag", files=parts((photo.name, photo.read_bytes()))), client.get("/metrics"),
                       client.post("/admin/reload"), client.get("/metrics", headers={"Authorization": "Bearer wrong"})):
            assert answer.status_code == 401 and "Bearer" in answer.json()["error"]
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/tag", files=parts((photo.name, photo.read_bytes())), headers=good).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200


def test_a_request_past_its_timeout_is_a_504(photo: Path) -> None:
    with TestClient(create_app(ServiceSettings(TRANSFER, timeout=0.2), slow(1.0))) as client:
        answer = client.post("/tag", files=parts((photo.name, photo.read_bytes())))
        assert answer.status_code == 504 and "0.2 s" in answer.json()["error"]


def test_a_batch_waits_for_photos_being_read_and_never_for_photos_that_may_not_come() -> None:
    view, sizes = open_export(TRANSFER), []
    square = torch.zeros(3, view.resize_size, view.resize_size, dtype=torch.uint8)

    async def read_in(seconds: float) -> torch.Tensor:
        await asyncio.sleep(seconds)
        return square

    async def scenario() -> None:
        start = time.perf_counter()
        await batcher.classify(view, read_in(0))  # alone: scored at once, not after max_wait
        alone = time.perf_counter() - start
        await asyncio.gather(batcher.classify(view, read_in(0)), batcher.classify(view, read_in(0.2)))
        assert alone < 0.5
    batcher = BatchingModel(max_wait=1.0, on_batch=sizes.append)
    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert sizes == [1, 2]  # the second pair's first photo waited for the one still being read


def test_reload_swaps_the_model_and_a_bad_file_keeps_the_old_one(photo: Path, tmp_path: Path) -> None:
    served = tmp_path / "model.pt"
    shutil.copy(TRANSFER, served)
    with TestClient(loaded(ServiceSettings(served))) as client:
        def score() -> float:
            return client.post("/tag", files=parts((photo.name, photo.read_bytes()))).json()["photos"][0]["known_score"]
        before = score()
        shutil.copy(SCRATCH, served)
        assert client.post("/admin/reload").json()["status"] == "reloaded"
        after = score()
        assert after == pytest.approx(predict_photo(open_export(SCRATCH), photo).known_score, abs=1e-5) and after != before
        served.write_bytes(b"not a model")
        refused = client.post("/admin/reload")
        assert refused.status_code == 422 and "model not reloaded" in refused.json()["error"]
        assert score() == after and client.get("/health").status_code == 200
        assert 'landmark_model_loads_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_the_metrics_count_requests_photos_and_errors(client: TestClient, photo: Path) -> None:
    client.post("/tag", files=parts((photo.name, photo.read_bytes()), ("e.jpg", b"")))
    text = client.get("/metrics").text
    for series in ('landmark_requests_total{endpoint="/tag",status="200"}', 'landmark_photos_total{outcome="error"}',
                   'landmark_errors_total{kind="unreadable photo"}', "landmark_tag_seconds_count", "landmark_batch_photos_sum"):
        assert series in text


def test_the_openapi_page_documents_the_photo_parts_and_the_answer(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/tag"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["photo"]["items"]["format"] == "binary"
    assert {"name", "landmark", "known", "top_k", "wikidata", "error"} <= set(spec["components"]["schemas"]["PhotoTag"]["properties"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_concurrent_requests_share_a_batch_and_reload_drops_none(photo: Path) -> None:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceSettings(TRANSFER), slow(0.5)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    data = photo.read_bytes()

    def post(into: list[int]) -> threading.Thread:
        sending = threading.Thread(target=lambda: into.append(
            httpx.post(f"{url}/tag", files=parts(("p.jpg", data)), timeout=30).status_code))
        sending.start()
        return sending
    try:
        while not server.started:
            time.sleep(0.05)
        answers: list[int] = []
        first = post(answers)
        time.sleep(0.2)  # the first photo's batch is being scored: the next two queue up behind it
        later = [post(answers) for _ in range(2)]
        for sending in (first, *later):
            sending.join()
        metrics = httpx.get(f"{url}/metrics").text
        assert answers == [200, 200, 200]
        assert "landmark_batch_photos_count 2.0" in metrics and "landmark_batch_photos_sum 3.0" in metrics
        statuses: list[int] = []
        steady = threading.Thread(target=lambda: statuses.extend(
            httpx.post(f"{url}/tag", files=parts(("p.jpg", data)), timeout=30).status_code for _ in range(4)))
        steady.start()
        for _ in range(3):
            assert httpx.post(f"{url}/admin/reload", timeout=30).status_code == 200
        steady.join()
        assert statuses == [200] * 4
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_serve_refuses_a_wrong_model_before_listening(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.pt").write_bytes(b"junk")
    assert main(["serve", "--model", str(tmp_path / "x.pt")]) == 2
    assert "x.pt: not a TorchScript export" in capsys.readouterr().err


def test_serve_says_plainly_why_it_cannot_listen_before_saying_it_serves(capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(SCRATCH), "--port", str(port)]) == 2
        said = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in said.err and "another --port" in said.err
    assert "Serving" not in said.out
    assert main(["serve", "--model", str(SCRATCH), "--host", "203.0.113.7", "--port", str(port)]) == 2  # TEST-NET-3
    assert "this machine has no such address" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a usage error, not a server that never answers
        main(["serve", "--port", "99999"])
    assert "a port number from 1 to 65535, got 99999" in capsys.readouterr().err


def test_the_command_serves_reloads_on_sighup_and_finishes_a_request_in_flight_on_sigterm(photo: Path) -> None:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "src", "serve", "--port", str(port)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read() if server.poll() else "no start"
            time.sleep(0.2)
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while 'landmark_model_loads_total{outcome="loaded"} 1.0' not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, "SIGHUP did not reload the model"
            time.sleep(0.2)
        sent = threading.Event()

        def slowly() -> Iterator[bytes]:  # a phone on a slow network: the request is in flight for a second
            yield b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.jpg\"\r\n\r\n"
            sent.set()
            time.sleep(1.0)
            yield photo.read_bytes() + b"\r\n--b--\r\n"
        answers: list[int] = []
        posting = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/tag", content=slowly(), headers={"content-type": "multipart/form-data; boundary=b"}, timeout=30).status_code))
        posting.start()
        sent.wait(10)
        time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        posting.join()
        assert answers == [200]
        assert server.wait(timeout=30) == -signal.SIGTERM  # uvicorn ends by the signal it was sent, once drained
    finally:
        if server.poll() is None:
            server.kill()
