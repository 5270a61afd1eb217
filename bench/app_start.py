"""How long a person waits for the photo app in the browser: page requested -> upload button on screen -> model ready.

    python bench/app_start.py [--visits 5] [--width 390 --height 844]

Serves ``app.ipynb`` with Voilà as ``make app`` does (``voila.json``, the ``landmarks`` template) and opens it in
headless Chromium (``CHROMIUM``, default ``/usr/bin/chromium``), one visit at a time, each a new page, timing from
the request to (1) the "Upload photos" button on screen and (2) the app ready: the model loaded, no loading text
left. Three ways of serving, in the same run:

- ``shipped``: ``voila.json`` as it is, visits spaced so that Voilà's pre-started kernel is back in its pool
  (a person opening the app);
- ``back to back``: the same server, each visit right after the previous one closed, so the pooled kernel
  is still being replaced and the page starts a kernel of its own (two people within seconds);
- ``no preheated kernel``: each page starts its own kernel and Voilà shows the notebook cell by cell
  (``--preheat_kernel=False --progressive_rendering=True``).

Median and range over the visits, and the memory of the kernels waiting for a visit; writes ``bench/results/app_start.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

from utils import REPO, RESULTS, write_result

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
POOL_REFILL_SECONDS = 15  # a pre-started kernel runs the whole notebook (model included) before it is back in the pool
READY = """() => { const text = document.body.innerText;
  return text.includes('Upload photos') && !text.includes('Getting the model ready') && !text.includes('Getting the app ready')
         && !/Loading \\S+\\.pt/.test(text); }"""
# extra Voilà options and the pause between visits (None: --settle)
SERVINGS = {"shipped": ([], None), "back to back": ([], 0.5),
            "no preheated kernel": (["--preheat_kernel=False", "--progressive_rendering=True"], 2)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def voila(extra: list[str], log: Path, folder: Path = REPO) -> Iterator[tuple[str, subprocess.Popen]]:
    """Voilà serving ``folder``'s app.ipynb as ``make app`` does (plus ``extra`` options); yields its URL, once it answers
    (asked for a static file: asking for the page would take the kernel it keeps ready), and its process."""
    port = free_port()
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "voila", "app.ipynb", "--no-browser", f"--port={port}",
                                   "--Voila.ip=127.0.0.1", "--template=landmarks", *extra], cwd=folder,
                                  env={**os.environ, "JUPYTER_PATH": str(REPO / "share" / "jupyter")},
                                  stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "voila/static/voila.js", timeout=5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Voilà did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)


def visit(browser, url: str, viewport: dict[str, int]) -> tuple[float, float]:
    """Seconds from requesting the page to its upload button, and to the app ready."""
    page = browser.new_page(viewport=viewport)
    try:
        start = time.perf_counter()
        page.goto(url, timeout=120_000, wait_until="commit")
        page.locator(".widget-upload", has_text="Upload photos").wait_for(timeout=120_000)
        upload = time.perf_counter() - start
        page.wait_for_function(READY, timeout=120_000)
        return upload, time.perf_counter() - start
    finally:
        page.close()


def kernels_mb(server: subprocess.Popen) -> list[int]:
    """Resident memory (MB) of each kernel the Voilà server runs."""
    sizes = []
    for child in psutil.Process(server.pid).children(recursive=True):
        with suppress(psutil.Error):
            if "ipykernel" in " ".join(child.cmdline()):
                sizes.append(round(child.memory_info().rss / 1e6))
    return sizes


def spread(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 2), "min_s": round(min(values), 2), "max_s": round(max(values), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visits", type=int, default=5, help="page visits per way of serving")
    parser.add_argument("--width", type=int, default=390)
    parser.add_argument("--height", type=int, default=844)
    parser.add_argument("--servings", nargs="+", choices=list(SERVINGS), default=list(SERVINGS), help="ways of serving to time")
    parser.add_argument("--settle", type=float, default=POOL_REFILL_SECONDS,
                        help="seconds a new server is given to start its kernel ahead, and between spaced visits")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        sys.exit(f"{CHROMIUM} not found: `apt-get install chromium` (or set CHROMIUM)")
    from playwright.sync_api import sync_playwright

    viewport = {"width": args.width, "height": args.height}
    rows = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as logs:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox", "--disable-background-networking"])
        for name in args.servings:
            extra, pause = SERVINGS[name]
            with voila(extra, Path(logs) / "voila.log") as (url, server):
                time.sleep(args.settle)  # the server's first kernel started ahead, when it keeps one
                waiting = kernels_mb(server)
                times = []
                for number in range(args.visits):
                    if number:
                        time.sleep(args.settle if pause is None else pause)
                    times.append(visit(browser, url, viewport))
            row = {"serving": name, "visits": args.visits, "upload_button": spread([t[0] for t in times]),
                   "ready": spread([t[1] for t in times]), "kernels_waiting_mb": waiting}
            print(f"{name:20s} upload button {row['upload_button']['median_s']} s, ready {row['ready']['median_s']} s "
                  f"(median of {args.visits})", flush=True)
            rows.append(row)
        browser.close()
    write_result("app_start", {"viewport": f"{args.width}x{args.height}", "rows": rows}, args.results)


if __name__ == "__main__":
    main()
