"""Photos on object storage: `tag --from-list` with s3:// URIs, against a local S3 server (moto)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.cli import main

if os.environ.get("CI"):
    import moto.server  # noqa: F401  CI installs requirements-scale.txt: a missing moto there is a broken setup
    import pyarrow.fs
else:
    pytest.importorskip("moto.server", reason="moto is not installed: pip install -r requirements-scale.txt")
    pytest.importorskip("pyarrow.fs", reason="pyarrow is not installed: pip install -r requirements-scale.txt")
from moto.server import ThreadedMotoServer  # noqa: E402
from pyarrow import fs  # noqa: E402

from test_tagging import exported, photos  # noqa: E402,F401  the same tiny model and photo collection (one broken file)


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[fs.S3FileSystem]:
    """An empty bucket ``photos`` on a local S3 server, found through the environment as a real one would be."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    storage = fs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{port}", scheme="http", region="us-east-1",
                              allow_bucket_creation=True)
    storage.create_dir("photos")
    yield storage
    server.stop()


def test_tags_photos_on_s3_as_their_local_copies(exported: Path, photos: Path, bucket: fs.S3FileSystem,
                                                 tmp_path: Path, capsys) -> None:
    local = sorted((photos / "holiday").rglob("*.jpg"))
    for path in local:
        with bucket.open_output_stream(f"photos/{path.relative_to(photos).as_posix()}") as stream:
            stream.write(path.read_bytes())
    uris = [f"s3://photos/{p.relative_to(photos).as_posix()}" for p in local] + ["s3://photos/holiday/gone.jpg"]
    list_file = tmp_path / "bucket.txt"
    list_file.write_text("\n".join(uris) + "\n")
    on_s3, on_disk = tmp_path / "s3.jsonl", tmp_path / "disk.jsonl"
    assert main(["tag", str(tmp_path), "--model", str(exported), "--out", str(on_s3), "--from-list", str(list_file),
                 "--workers", "0"]) == 0
    assert main(["tag", str(photos), "--model", str(exported), "--out", str(on_disk), "--workers", "0"]) == 0
    remote = {row["path"]: row for row in map(json.loads, on_s3.read_text().splitlines())}
    here = {row["path"]: row for row in map(json.loads, on_disk.read_text().splitlines())}
    assert set(remote) == set(uris)  # each photo once, the missing one too
    for uri, path in zip(uris, local):
        assert remote[uri]["landmark"] == here[str(path)]["landmark"], uri
        assert remote[uri]["known_score"] == pytest.approx(here[str(path)]["known_score"], abs=1e-6)
    assert remote["s3://photos/holiday/broken.jpg"]["error"] == "s3://photos/holiday/broken.jpg: not an image file (or an unsupported format)"
    assert remote["s3://photos/holiday/gone.jpg"]["error"] == "s3://photos/holiday/gone.jpg: file not found"
    assert main(["tag", str(tmp_path), "--model", str(exported), "--out", str(on_s3), "--from-list", str(list_file)]) == 0
    assert f"{len(uris)} already done" in capsys.readouterr().out
