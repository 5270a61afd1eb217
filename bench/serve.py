"""Load test of the HTTP service (``python -m src serve``), against in-process prediction of the same photos.

    python bench/serve.py [--model checkpoints/transfer_exported.pt] [--requests 400] [--soak 10000]

Starts the service as a user does (its own process, default settings) and sends it one photo per
request from asyncio + httpx clients (up to 16 per process) at concurrency 1, 4, 16 and 64: the 800x600 JPEGs of the canonical
sample (``landmark_images_sample``) and 12-megapixel JPEGs made from them. Per row: photos per second,
latency p50/p95/p99 and failed requests. In the same run, the references: the batch ``tag`` engine's
scoring of the same photo files
(decoded in worker processes, batches of 50, four times as many photos as a row sends) and one photo at a time in
process (``read_for`` + ``answer``, what one request does without HTTP). Then ``--soak`` requests at
concurrency 16 with the server's resident memory before and after. Last, the same model with its ONNX file beside it
(``export --format onnx``; ``serve`` then runs onnxruntime when it is faster, and the rows say which it ran): 800x600
rows at 1 and 16 clients, with the in-process references on the ONNX file. Writes ``bench/results/serve.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import psutil
from PIL import Image

from predict import SAMPLE
from utils import REPO, RESULTS, write_result
from src.answer import answer, read_for
from src.export import open_export
from src.location import list_images
from src.tagging import local_scored_batches

CONCURRENCY = (1, 4, 16, 64)
BIG_PHOTOS = 8  # 12-megapixel JPEGs made from the first sample photos


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def twelve_megapixel(photos: list[Path], folder: Path) -> list[Path]:
    paths = []
    for photo in photos[:BIG_PHOTOS]:
        path = folder / f"12mp_{photo.stem}.jpg"
        Image.open(photo).convert("RGB").resize((4000, 3000)).save(path, quality=90)
        paths.append(path)
    return paths


def in_process_batch(model_path: Path, paths: list[Path], photos: int) -> float:
    """Photos per second of the batch ``tag`` engine on ``photos`` of ``paths`` (repeated as needed, so that starting
    its worker processes weighs as little as in a collection's run): decoded in worker processes, scored here."""
    model = open_export(model_path).module
    paths = (paths * (photos // len(paths) + 1))[:photos]
    list(local_scored_batches(model, paths[:50], 50, -1))  # warm-up
    start = time.perf_counter()
    scored = sum(len(indices) for indices, *_ in local_scored_batches(model, paths, 50, -1))
    return scored / (time.perf_counter() - start)


def in_process_single_ms(model_path: Path, paths: list[Path]) -> float:
    """Median milliseconds from one photo's bytes to its answer in process: what a request does, without HTTP."""
    view = open_export(model_path)
    data = [(path.name, path.read_bytes()) for path in paths]
    answer(view, read_for(view, data[0][1], data[0][0]))
    times = []
    for name, content in data:
        start = time.perf_counter()
        answer(view, read_for(view, content, name))
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


CLIENTS_PER_PROCESS = 16  # beyond this one asyncio + httpx process is itself the bottleneck, and unfair to its requests


async def _clients(url: str, photos: list[tuple[str, bytes]], concurrency: int, requests: int
                   ) -> tuple[list[float], dict[str, int]]:
    """``requests`` one-photo requests from ``concurrency`` clients of this process: latencies (ms) and failures."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests:
            name, data = photos[sent % len(photos)]
            sent += 1
            start = time.perf_counter()
            try:
                response = await http.post(f"{url}/tag", files=[("photo", (name, data, "image/jpeg"))])
                if response.status_code != 200:
                    failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
            except httpx.HTTPError as error:
                failures[type(error).__name__] = failures.get(type(error).__name__, 0) + 1
            latencies.append((time.perf_counter() - start) * 1000)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies, failures


def _client_process(url: str, photos: list[tuple[str, bytes]], concurrency: int, requests: int
                    ) -> tuple[list[float], dict[str, int]]:
    return asyncio.run(_clients(url, photos, concurrency, requests))


def load(url: str, photos: list[tuple[str, bytes]], concurrency: int, requests: int) -> dict:
    """``requests`` one-photo requests from ``concurrency`` clients at once (in processes of up to
    :data:`CLIENTS_PER_PROCESS` clients each): throughput, latency quantiles, failures."""
    processes = -(-concurrency // CLIENTS_PER_PROCESS)
    start = time.perf_counter()
    if processes == 1:
        latencies, failures = _client_process(url, photos, concurrency, requests)
    else:
        with ProcessPoolExecutor(processes) as pool:
            parts = list(pool.map(_client_process, [url] * processes, [photos] * processes,
                                  [concurrency // processes] * processes, [requests // processes] * processes))
        latencies = [ms for part, _ in parts for ms in part]
        failures = {}
        for _, part in parts:
            for kind, count in part.items():
                failures[kind] = failures.get(kind, 0) + count
    seconds = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100)
    return {"concurrency": concurrency, "requests": len(latencies), "photos_per_second": round(len(latencies) / seconds, 1),
            "p50_ms": round(statistics.median(latencies), 1), "p95_ms": round(cuts[94], 1), "p99_ms": round(cuts[98], 1),
            "failed": sum(failures.values()), "failures": failures}


def batches(url: str) -> tuple[float, float]:
    """The server's count of photos scored and of batches so far (its Prometheus metrics)."""
    values = dict(line.rsplit(" ", 1) for line in httpx.get(f"{url}/metrics").text.splitlines()
                  if line.startswith(("landmark_batch_photos_sum", "landmark_batch_photos_count")))
    return float(values["landmark_batch_photos_sum"]), float(values["landmark_batch_photos_count"])


def start_server(model: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "src", "serve", "--model", str(model), "--port", str(port)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start (exit status {server.poll()})")
        time.sleep(0.2)


def measured_row(url: str, name: str, payload: list[tuple[str, bytes]], concurrency: int, requests: int,
                 batch_reference: float, runtime: str) -> dict:
    """One row of the table: ``load`` at ``concurrency``, the server's mean batch meanwhile, and the ratio to the batch
    ``tag`` engine's ``batch_reference`` photos per second."""
    photos_before, batches_before = batches(url)
    row = {"photos": name, "runtime": runtime, **load(url, payload, concurrency, max(requests, concurrency))}
    photos_after, batches_after = batches(url)
    row["mean_batch"] = round((photos_after - photos_before) / (batches_after - batches_before), 1)
    row["over_batch_in_process"] = round(row["photos_per_second"] / batch_reference, 2)
    print(f"served ({runtime}), {name}, {concurrency:2d} clients: {row['photos_per_second']} photos/s, p50 {row['p50_ms']} ms, "
          f"p99 {row['p99_ms']} ms, batches of {row['mean_batch']}, {row['failed']} failed", flush=True)
    return row


def with_onnx_file(model: Path, folder: Path, photos: list[Path], requests: int) -> tuple[dict, list[dict]]:
    """The model with its ONNX file beside it, which ``serve`` then runs when onnxruntime is faster: the in-process
    references on that file, and the 800x600 rows at 1 and 16 clients."""
    copy = folder / model.name
    shutil.copy(model, copy)
    onnx = copy.with_suffix(".onnx")
    subprocess.run([sys.executable, "-m", "src", "export", str(copy), "--format", "onnx", "--out", str(onnx)], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reference = {"batch_photos_per_second": round(in_process_batch(onnx, photos, 4 * requests), 1),
                 "single_photo_ms": round(in_process_single_ms(onnx, photos), 1)}
    print(f"in process, 800x600, ONNX file: batch {reference['batch_photos_per_second']} photos/s, one photo "
          f"{reference['single_photo_ms']} ms", flush=True)
    port = free_port()
    server = start_server(copy, port)
    url = f"http://127.0.0.1:{port}"
    try:
        runtime = httpx.get(f"{url}/health").json()["runtime"]
        payload = [(path.name, path.read_bytes()) for path in photos]
        load(url, payload, 4, 8)  # warm-up
        rows = [measured_row(url, "800x600", payload, concurrency, requests, reference["batch_photos_per_second"], runtime)
                for concurrency in (1, 16)]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    return reference, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--photos", type=Path, default=SAMPLE, help="folder of photos to send")
    parser.add_argument("--requests", type=int, default=400, help="requests per 800x600 row (a quarter for 12 MP rows)")
    parser.add_argument("--soak", type=int, default=10_000, help="requests of the memory soak")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON figures")
    args = parser.parse_args()
    photos = list_images(args.photos)
    with tempfile.TemporaryDirectory() as folder:
        big = twelve_megapixel(photos, Path(folder))
        sets = {"800x600": (photos, args.requests), "12 MP": (big, max(8, args.requests // 4))}
        references = {name: {"batch_photos_per_second": round(in_process_batch(args.model, paths, 4 * count), 1),
                             "single_photo_ms": round(in_process_single_ms(args.model, paths), 1)}
                      for name, (paths, count) in sets.items()}
        for name, reference in references.items():
            print(f"in process, {name}: batch {reference['batch_photos_per_second']} photos/s, one photo "
                  f"{reference['single_photo_ms']} ms", flush=True)
        alone = Path(folder) / "torchscript" / args.model.name  # a copy without an ONNX file beside it: TorchScript
        alone.parent.mkdir()
        shutil.copy(args.model, alone)
        port = free_port()
        server = start_server(alone, port)
        url = f"http://127.0.0.1:{port}"
        rows = []
        try:
            runtime = httpx.get(f"{url}/health").json()["runtime"]
            for name, (paths, requests) in sets.items():
                payload = [(path.name, path.read_bytes()) for path in paths]
                load(url, payload, 4, 8)  # warm-up
                rows += [measured_row(url, name, payload, concurrency, requests, references[name]["batch_photos_per_second"],
                                      runtime) for concurrency in CONCURRENCY]
            payload = [(path.name, path.read_bytes()) for path in photos]
            rss_before = psutil.Process(server.pid).memory_info().rss / 1e6
            soak = load(url, payload, 16, args.soak)
            rss_after = psutil.Process(server.pid).memory_info().rss / 1e6
            print(f"soak: {soak['requests']} requests, {soak['failed']} failed, server memory {rss_before:.0f} -> "
                  f"{rss_after:.0f} MB", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        onnx_reference, onnx_rows = with_onnx_file(args.model, Path(folder), photos, args.requests)
    one_client = next(r for r in rows if r["photos"] == "800x600" and r["concurrency"] == 1)
    sixteen = next(r for r in rows if r["photos"] == "800x600" and r["concurrency"] == 16)
    write_result("serve", {
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "cpu_cores": os.cpu_count(),
        "in_process": references,
        "rows": rows,
        "one_client_over_single_photo_in_process": round(one_client["p50_ms"] / references["800x600"]["single_photo_ms"], 2),
        "sixteen_clients_over_batch_in_process": sixteen["over_batch_in_process"],
        "in_process_onnx": onnx_reference,
        "onnx_rows": onnx_rows,
        "soak": {"requests": soak["requests"], "failed": soak["failed"], "rss_before_mb": round(rss_before),
                 "rss_after_mb": round(rss_after), "rss_growth": round(rss_after / rss_before - 1, 3)},
    }, args.results)


if __name__ == "__main__":
    main()
