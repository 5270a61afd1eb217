"""The photo app as a person uses it: Voilà serves app.ipynb and headless Chromium uploads photos.

Needs Debian's ``chromium`` (``.ci/run`` installs it; set ``CHROMIUM`` to use another binary).
Screenshots are saved in ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import nbformat
import psutil
import pytest

from conftest import LANDMARKS10, PHONE_HEIC, REPO

sys.path.insert(0, str(REPO / "bench"))
from app_start import voila  # noqa: E402

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts"
# A photo of every landmark the shipped model knows, the first of each test folder.
PHOTOS = sorted(LANDMARKS10.glob("test/00.*/*.jpg"))[:1] + sorted(LANDMARKS10.glob("test/07.*/*.jpg"))[:1]

pytestmark = pytest.mark.skipif(not PHOTOS, reason=f"real photos not found in {LANDMARKS10}")


# voila.json stops the kernels of closed pages after 40 s idle (checked every 10 s); the test server does it
# faster with the same mechanism (command-line values take precedence over voila.json).
CULLING = ["--MappingKernelManager.cull_idle_timeout=6", "--MappingKernelManager.cull_interval=2"]


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
        f"MODELS_DIR = {str(folder / 'models')!r}\nPROJECT_DIR = {str(REPO)!r}\n"
        f"EXAMPLES_DIR = {str(REPO / 'static_images' / 'examples')!r}"))
    nbformat.write(notebook, folder / "app.ipynb")
    shutil.copy(REPO / "voila.json", folder / "voila.json")
    return folder


class Server(NamedTuple):
    url: str
    process: subprocess.Popen


@pytest.fixture(scope="module")
def voila_server(served: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Voilà serving the app on a free local port, as `make app` does (the app start benchmark's server)."""
    with voila(CULLING, tmp_path_factory.mktemp("voila") / "voila.log", served) as (url, process):
        yield Server(url, process)


@pytest.fixture(scope="module")
def app_url(voila_server: Server) -> str:
    return voila_server.url


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
        page.requests_elsewhere = []  # nothing may be fetched from outside this server
        page.on("request", lambda request: request.url.startswith((app_url, "data:", "blob:"))
                or page.requests_elsewhere.append(request.url))
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
        images = results.nth(index).locator("img").count()  # the photo and its "why" map, or why no map
        assert images == 2 or (images == 1 and "no single part" in results.nth(index).inner_text())
        link = results.nth(index).get_by_role("link", name="OpenStreetMap")  # a known landmark comes with its place
        assert link.count() == 1 and link.get_attribute("href").startswith("https://www.openstreetmap.org/?mlat=")
    assert page.get_by_text("Landmarks I know (10)").count() == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_top5.png"), full_page=True)


def test_the_page_has_its_title_fetches_nothing_from_the_internet_and_an_example_is_one_click_away(page) -> None:
    assert page.title() == "Which landmark is this?"
    assert page.requests_elsewhere == []
    page.get_by_role("button", name="Colosseum").click()
    result = page.locator(".landmark-result", has_text="colosseum.jpg")
    result.wait_for(timeout=60_000)
    assert result.locator(".lm-verdict").inner_text().startswith("Colosseum")


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


SCENE = next(iter(sorted((LANDMARKS10.parent / "non_landmarks" / "forest").glob("*.jpg"))), None)
SAW_BUSY = """() => { window.sawBusy = false;
    new MutationObserver(() => { if (document.querySelector('.lm-busy')) window.sawBusy = true; })
        .observe(document.body, {childList: true, subtree: true}); }"""


@pytest.mark.skipif(SCENE is None, reason="../shared/data/non_landmarks is absent")
def test_several_photos_show_a_busy_state_then_a_summary_and_a_verdict_each(page) -> None:
    page.evaluate(SAW_BUSY)
    upload(page, *PHOTOS, SCENE)
    page.get_by_text(f"{len(PHOTOS) + 1} photo(s) classified by transfer_exported.pt").wait_for(timeout=60_000)
    assert page.evaluate("window.sawBusy") and page.locator(".lm-busy").count() == 0  # shown, then replaced
    summary = page.locator(".lm-summary tr")
    assert summary.count() == len(PHOTOS) + 2 and "Not sure" in summary.last.inner_text()  # header + a row each
    assert summary.last.locator("img").count() == 1  # each row shows its photo
    results = page.locator(".landmark-result")
    assert results.count() == len(PHOTOS) + 1
    for index in range(results.count()):  # the verdict comes first, the model that gave it is named
        text = results.nth(index).inner_text()
        assert results.nth(index).locator(".lm-verdict").count() == 1 and "by transfer_exported.pt" in text
        if index < len(PHOTOS):  # a recognised landmark: why, on a scale stretched to its strongest part
            assert results.nth(index).locator(".lm-legend").count() == 1 or "no single part" in text
    assert "Not sure — this doesn't look like any of the 10 landmarks I know" in results.last.inner_text()
    assert results.last.locator(".lm-legend").count() == 0 and results.last.locator("img").count() == 1  # no why map
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_desktop.png"), full_page=True)


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


@pytest.mark.parametrize("width, height", [(360, 740), (390, 844), (1280, 800)])
def test_the_answer_is_on_screen_and_every_control_is_easy_to_tap(page, app_url: str, width: int, height: int) -> None:
    """After choosing one photo, its verdict is on screen without scrolling; on a phone every control is at least
    40 px tall; every image says what it shows; no tooltip reads "null"."""
    phone = page.context.browser.new_page(viewport={"width": width, "height": height})
    try:
        phone.goto(app_url, timeout=90_000)
        button = phone.locator(".widget-upload", has_text="Upload photos")
        button.wait_for(timeout=90_000)
        upload(phone, PHOTOS[0])
        phone.get_by_text("1 photo(s) classified").wait_for(timeout=60_000)
        verdict = phone.locator(".lm-verdict").first.bounding_box()
        assert verdict["y"] >= 0 and verdict["y"] + verdict["height"] <= height, verdict
        assert phone.evaluate("document.documentElement.scrollWidth") <= width + 1  # nothing wider than the screen
        for element in phone.locator(".landmark-result img, .lm-verdict, .lm-track").all():
            right = element.bounding_box()
            assert right["x"] + right["width"] <= width + 1, element.inner_html()[:80]
        if width < 700:
            controls = [button, phone.locator(".widget-dropdown select"), phone.locator(".widget-checkbox"),
                        *phone.locator(".jupyter-widgets button").all(), *phone.locator(".lm-TabBar-tab, .p-TabBar-tab").all()]
            for control in controls:
                box = control.first.bounding_box() if hasattr(control, "first") else control.bounding_box()
                assert box is None or box["height"] >= 40 - 0.5, (control, box)
        nulls = phone.locator('[title="null"]:visible').evaluate_all("found => found.map(element => element.outerHTML.slice(0, 120))")
        assert not nulls, nulls
        alts = phone.locator("img").evaluate_all("images => images.map(image => image.getAttribute('alt') || '')")
        assert alts and all(alt.strip() for alt in alts), alts
        ARTIFACTS.mkdir(exist_ok=True)
        phone.screenshot(path=str(ARTIFACTS / f"app_{width}x{height}.png"))
    finally:
        phone.close()


DROP = """([name, data, type]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const photos = () => { const transfer = new DataTransfer();
                           transfer.items.add(new File([bytes], name, {type})); return transfer; };
    const outside = new DragEvent("drop", {dataTransfer: photos(), bubbles: true, cancelable: true});
    document.body.dispatchEvent(outside);  // a drop beside the zone: the browser must not open the file
    window.outsidePrevented = outside.defaultPrevented;
    document.querySelector(".lm-drop").dispatchEvent(new DragEvent("drop", {dataTransfer: photos(), bubbles: true,
                                                                           cancelable: true}));
}"""


def test_a_photo_dropped_on_the_page_is_previewed_and_answered_and_the_page_stays(page) -> None:
    url = page.url
    page.evaluate(DROP, [PHOTOS[1].name, base64.b64encode(PHOTOS[1].read_bytes()).decode("ascii"), "image/jpeg"])
    page.locator(".landmark-result", has_text=PHOTOS[1].name).wait_for(timeout=60_000)
    assert page.evaluate("window.outsidePrevented") and page.url == url  # the app is still there
    preview = page.locator(".lm-drop-previews img")
    assert preview.count() == 1 and preview.get_attribute("alt") == f"Preview of {PHOTOS[1].name}"


def test_a_dropped_heic_photo_is_answered_and_previewed_by_its_name(page) -> None:
    """Chromium cannot show HEIC, a phone's format: the preview names the photo, and the app answers it."""
    heic = base64.b64encode(PHONE_HEIC.read_bytes()).decode("ascii")
    page.evaluate(DROP, ["IMG_0001.HEIC", heic, "image/heic"])
    page.locator(".landmark-result", has_text="IMG_0001.HEIC").wait_for(timeout=60_000)
    label = page.locator(".lm-drop-previews .lm-drop-name")
    label.wait_for(timeout=10_000)
    assert label.text_content() == "IMG_0001.HEIC" and page.locator(".lm-drop-previews img").count() == 0


def test_choosing_the_same_photo_again_gives_a_fresh_answer(page) -> None:
    upload(page, PHOTOS[0])
    page.locator(".landmark-result", has_text=PHOTOS[0].name).wait_for(timeout=60_000)
    page.evaluate(SAW_BUSY)
    upload(page, PHOTOS[0])
    page.wait_for_function("window.sawBusy", timeout=60_000)  # the same photo is classified again
    page.locator(".landmark-result", has_text=PHOTOS[0].name).wait_for(timeout=60_000)


def kernels(server: subprocess.Popen) -> int:
    """The Jupyter kernels the Voilà server runs (one per open page until culled, and its pre-started ones)."""
    count = 0
    for child in psutil.Process(server.pid).children(recursive=True):
        try:
            count += "ipykernel" in " ".join(child.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a culled kernel on its way out is none
            continue
    return count


def test_pages_opened_back_to_back_work_and_kernels_of_closed_ones_are_stopped(page, app_url: str, voila_server: Server) -> None:
    pooled = json.loads((REPO / "voila.json").read_text())["VoilaConfiguration"]["default_pool_size"]
    for _ in range(3):  # faster than Voilà replaces its pre-started kernel: each page still gets a working app
        visit = page.context.browser.new_page()
        visit.goto(app_url, timeout=90_000)
        visit.locator(".widget-upload", has_text="Upload photos").wait_for(timeout=90_000)
        upload(visit, PHOTOS[1])
        visit.locator(".landmark-result", has_text=PHOTOS[1].name).wait_for(timeout=60_000)
        visit.close()
    assert kernels(voila_server.process) >= 2 + pooled
    deadline = time.monotonic() + 60
    while kernels(voila_server.process) > 1 + pooled and time.monotonic() < deadline:
        time.sleep(1)
    assert kernels(voila_server.process) == 1 + pooled  # the page still open, and the kernel waiting for the next one
    upload(page, PHOTOS[0])
    page.locator(".landmark-result", has_text=PHOTOS[0].name).wait_for(timeout=60_000)


def test_voila_json_keeps_a_ready_kernel_and_stops_idle_kernels_of_closed_pages_within_a_minute() -> None:
    settings = json.loads((REPO / "voila.json").read_text())
    voila = settings["VoilaConfiguration"]
    assert voila["preheat_kernel"] is True and voila["default_pool_size"] >= 1  # a page opens on an app already loaded
    assert voila["progressive_rendering"] is False  # Voilà refuses it beside preheated kernels
    culling = settings["MappingKernelManager"]
    assert culling["cull_connected"] is False  # an open page's kernel is never culled
    assert culling["cull_idle_timeout"] + culling["cull_interval"] <= 60
