"""The photo app as a person uses it: Voilà serves app.ipynb and headless Chromium uploads photos.

Needs Debian's ``chromium`` (``.ci/run`` installs it; set ``CHROMIUM`` to use another binary).
Screenshots are saved in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from conftest import LANDMARKS10, REPO

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts"
# A photo of every landmark the shipped model knows, the first of each test folder.
PHOTOS = sorted(LANDMARKS10.glob("test/00.*/*.jpg"))[:1] + sorted(LANDMARKS10.glob("test/07.*/*.jpg"))[:1]

pytestmark = pytest.mark.skipif(not PHOTOS, reason=f"real photos not found in {LANDMARKS10}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of app.ipynb whose models folder is a temporary copy of the shipped ones (teaching a
    landmark saves a model there, never in the repository), with the project's src for teaching."""
    folder = tmp_path_factory.mktemp("served")
    shutil.copytree(REPO / "checkpoints", folder / "models", ignore=shutil.ignore_patterns("*.last.pt", ".gitkeep"))
    notebook = nbformat.read(REPO / "app.ipynb", as_version=4)
    parameters = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(
        f"MODELS_DIR = {str(folder / 'models')!r}\nPROJECT_DIR = {str(REPO)!r}"))
    nbformat.write(notebook, folder / "app.ipynb")
    shutil.copy(REPO / "voila.json", folder / "voila.json")
    return folder


@pytest.fixture(scope="module")
def app_url(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Voilà serving the app on a free local port, as `make app` does."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("voila") / "voila.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "voila", "app.ipynb", "--no-browser", f"--port={port}",
                                   "--Voila.ip=127.0.0.1"], cwd=served, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"Voilà did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture(scope="module")
def page(app_url: str):
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: `apt-get install chromium` (or set CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a missing browser there is a broken setup, not a skip
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(app_url, timeout=90_000)
        page.locator(".widget-upload", has_text="Upload photos").wait_for(timeout=90_000)  # the kernel ran the notebook
        yield page
        browser.close()


def upload(page, *files: Path, button: str = "Upload photos") -> None:
    """Click the upload button and pick files in the dialog it opens, as a person does."""
    with page.expect_file_chooser() as chooser:
        page.locator(".widget-upload", has_text=button).click()
    chooser.value.set_files([str(f) for f in files])


def top5(result) -> list[tuple[str, float]]:
    rows = result.locator(".lm-row").all_inner_texts()
    parsed = [re.fullmatch(r"\s*(.+?)\s+([\d.]+)%\s*", " ".join(row.split())) for row in rows]
    return [(m.group(1), float(m.group(2))) for m in parsed if m]


def test_uploaded_photos_get_their_landmark_on_top(page) -> None:
    upload(page, *PHOTOS)
    page.get_by_text(f"{len(PHOTOS)} photo(s) classified").wait_for(timeout=60_000)
    results = page.locator(".landmark-result")
    assert results.count() == len(PHOTOS)
    for index, photo in enumerate(PHOTOS):
        ranking = top5(results.nth(index))
        assert len(ranking) == 5, ranking
        truth = photo.parent.name.split(".", 1)[1].replace("_", " ")
        assert ranking[0][0] == truth, (photo, ranking)
        probabilities = [p for _, p in ranking]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 100.5
        assert results.nth(index).locator("img").count() == 2  # the photo and its "why" map
        link = results.nth(index).get_by_role("link", name="OpenStreetMap")  # a known landmark comes with its place
        assert link.count() == 1 and link.get_attribute("href").startswith("https://www.openstreetmap.org/?mlat=")
    assert page.get_by_text("Landmarks I know (10)").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_top5.png"), full_page=True)


def test_a_non_image_gets_a_message_and_the_app_keeps_working(page, tmp_path: Path) -> None:
    fake = tmp_path / "holiday.jpg"
    fake.write_bytes(b"these are not the pixels you are looking for")
    upload(page, fake)
    error = page.locator(".landmark-error")
    error.wait_for(timeout=60_000)
    assert "holiday.jpg" in error.inner_text() and "not an image" in error.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_error.png"), full_page=True)
    upload(page, PHOTOS[0])
    page.locator(".landmark-result").wait_for(timeout=60_000)
    assert page.locator(".landmark-error").count() == 0


TEACH = sorted((LANDMARKS10.parent / "new_landmarks" / "13.Lotus_Temple").glob("*.jpg"))


@pytest.mark.skipif(len(TEACH) < 9, reason="../shared/data/new_landmarks is absent")
def test_teaching_a_landmark_switches_to_a_model_that_knows_it(page, served: Path) -> None:
    page.get_by_role("tab", name="Teach a landmark").click()
    page.get_by_placeholder("e.g. India Gate").fill("Lotus Temple")
    page.get_by_placeholder("optional, e.g. 28.6129").fill("28.5535")
    page.get_by_placeholder("optional, e.g. 77.2295").fill("77.2588")
    upload(page, *TEACH[:8], button="Choose 5-20 photos")
    page.get_by_text("8 photo(s) chosen").wait_for(timeout=30_000)
    page.get_by_role("button", name="Teach").click()
    page.get_by_text("Learned Lotus Temple from 8 photo(s)").wait_for(timeout=90_000)
    assert (served / "models" / "transfer_exported+lotus_temple.pt").is_file()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_teach.png"), full_page=True)
    page.get_by_role("tab", name="Identify photos").click()
    upload(page, TEACH[8])
    result = page.locator(".landmark-result", has_text=TEACH[8].name)  # not the earlier photo, reclassified on the switch
    result.wait_for(timeout=60_000)
    assert page.get_by_text("classified by transfer_exported+lotus_temple.pt").count() == 1
    assert top5(result)[0][0] == "Lotus Temple"
    assert page.get_by_text("Landmarks I know (11)").count() == 1
