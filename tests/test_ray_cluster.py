"""Ray across two nodes simulated on this machine, started once for the module (seconds each start): `serve --engine
ray`, the embedded server's API and answers on Ray Serve with model replicas on both nodes, and `tag --address`
joining that cluster as a real one is joined."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import REPO

if os.environ.get("CI"):
    import ray  # noqa: F401  CI installs requirements-scale.txt: a missing Ray there is a broken setup
else:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -r requirements-scale.txt")

from src.cli import main  # noqa: E402
from src.export import open_export  # noqa: E402
from src.service import ServiceSettings, create_app  # noqa: E402
from test_ray_tagging import _rows  # noqa: E402
from test_tagging import exported, photos  # noqa: E402,F401  the same tiny model and photo collection (one broken file)

TRANSFER = REPO / "checkpoints" / "transfer_exported.pt"


def _photos() -> list[tuple[str, tuple[str, bytes, str]]]:
    examples = sorted((REPO / "static_images" / "examples").glob("*.jpg"))
    return [("photo", (path.name, path.read_bytes(), "image/jpeg")) for path in examples] + \
        [("photo", ("broken.jpg", b"not a photo", "image/jpeg"))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """Two Ray nodes of one CPU each; a driver connects through the cluster's address, as to a real cluster."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # a local Ray an earlier test started
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_ray_serve_on_a_two_node_cluster_answers_as_the_embedded_server(cluster, tmp_path: Path) -> None:
    """Two model replicas, deployed through --address."""
    import ray
    from ray import serve

    from src.ray_serving import serve_on_ray

    settings = ServiceSettings(TRANSFER, token="s3cret")
    with TestClient(create_app(settings, open_export(TRANSFER))) as embedded:
        expected = embedded.post("/tag?k=3", files=_photos(), headers={"Authorization": "Bearer s3cret"}).json()
    try:
        url = serve_on_ray(settings, "127.0.0.1", _free_port(), replicas=2, address=cluster.address, blocking=False)
        headers = {"Authorization": "Bearer s3cret"}
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert httpx.post(f"{url}/tag", files=_photos()).status_code == 401
        answer = httpx.post(f"{url}/tag?k=3", files=_photos(), headers=headers, timeout=60)
        assert answer.status_code == 200 and len(ray.nodes()) == 2
        served = answer.json()
        assert [p["name"] for p in served["photos"]] == [p["name"] for p in expected["photos"]]
        for got, want in zip(served["photos"], expected["photos"]):
            assert {k: v for k, v in got.items() if k not in ("probability", "known_score", "top_k")} == \
                {k: v for k, v in want.items() if k not in ("probability", "known_score", "top_k")}
            assert [name for name, _ in got["top_k"]] == [name for name, _ in want["top_k"]]
            if want["error"] is None:
                assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
                assert got["known_score"] == pytest.approx(want["known_score"], abs=1e-5)
        reload = httpx.post(f"{url}/admin/reload", headers=headers)
        assert reload.status_code == 409 and "serve --engine ray" in reload.json()["error"]
    finally:
        serve.shutdown()
        ray.shutdown()


def test_tag_address_joins_an_existing_cluster(cluster, exported: Path, photos: Path, tmp_path: Path) -> None:
    import ray

    try:
        assert main(["tag", str(photos), "--model", str(exported), "--out", str(tmp_path / "tags.jsonl"),
                     "--engine", "ray", "--address", cluster.address, "--batch-size", "4"]) == 0
        assert len(ray.nodes()) == 2
    finally:
        ray.shutdown()
    rows = _rows(tmp_path / "tags.jsonl")
    assert len(rows) == 13 and sum(row["error"] is not None for row in rows.values()) == 1


def test_address_and_replicas_need_the_ray_engine(capsys) -> None:
    assert main(["serve", "--replicas", "2"]) == 2
    assert "only apply with --engine ray" in capsys.readouterr().err
