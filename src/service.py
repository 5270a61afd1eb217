"""The HTTP tagging service (``python -m src serve``): photos in, each one's landmark or ``null``, its place and top-k out.

A photo platform posts its users' photos as they upload them. Endpoints (the OpenAPI page is ``/docs``):

- ``GET /health``: 200 once the model is loaded, 503 before (or when it could not be loaded);
- ``POST /tag?k=5``: ``multipart/form-data`` with one or more parts named ``photo``; per photo, in order, the
  fields of ``tag``'s JSON lines (``landmark``, ``probability``, ``known_score``, the place, ``top_k``, ``error``)
  with ``name`` (the part's file name) for ``path``, ``known`` (whether it shows one of the model's landmarks;
  ``landmark`` is ``null`` when not) and the place's ``wikidata``. 200 when at least one photo was read; 422 when
  none could be (each photo's ``error`` says why: not an image, corrupt, a decompression bomb, too thin...);
- ``GET /metrics``: Prometheus text (requests, photos, latency, batch sizes, errors by kind);
- ``POST /admin/reload``: load the model file again (or SIGHUP): requests keep being answered, by the old
  model until the new one is loaded.

Concurrent requests' photos are decoded in parallel threads and scored in shared batches
(:class:`~src.batching.BatchingModel`). Limits answer with a JSON ``{"error": ...}``: 413 over ``max_photos`` or
``max_upload_mb``, 504 past ``timeout`` seconds, 401 without the bearer ``token`` (when one is set) on anything
but ``/health``. Bad photos never fail a request with a 500, nor stop the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import prometheus_client as prometheus
import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .answer import model_square, read_for
from .batching import MAX_BATCH, MAX_WAIT, BatchingModel
from .defaults import cpu_cores
from .export import ExportView
from .images import ImageReadError
from .onnx_export import faster_runtime, runtime_name
from .tagging import UNKNOWN, tag_records

TOKEN_VARIABLE = "LANDMARK_TOKEN"  # the bearer token when --token is not given


@dataclass(frozen=True)
class ServiceSettings:
    """How ``serve`` runs: the model file and the limits a platform can tune (the defaults suit one 2-core machine)."""

    model: Path
    token: str | None = None
    max_photos: int = 16  # photos per request
    max_upload_mb: float = 50.0  # bytes per request, all photos together
    timeout: float = 30.0  # seconds for a request, reading the upload included
    max_batch: int = MAX_BATCH
    max_wait: float = MAX_WAIT
    decode_threads: int = cpu_cores()


class PhotoTag(BaseModel):
    """One photo's answer: the fields of ``tag``'s JSON lines, ``name`` for ``path``, plus ``known`` and ``wikidata``."""

    name: str
    landmark: str | None  # null when the photo shows none of the model's landmarks, or could not be read
    known: bool | None
    probability: float | None
    known_score: float | None
    latitude: float | None
    longitude: float | None
    country: str | None
    city: str | None
    wikidata: str | None
    top_k: list[tuple[str, float]]
    error: str | None


class TagResponse(BaseModel):
    model: str
    photos: list[PhotoTag]


class ServiceError(Exception):
    """A request refused as a whole: its status and the message of its JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (several services may share a process)."""

    def __init__(self) -> None:
        self.registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter("landmark_requests", "HTTP requests answered", ["endpoint", "status"],
                                           registry=self.registry)
        self.photos = prometheus.Counter("landmark_photos", "Photos answered, by outcome", ["outcome"], registry=self.registry)
        self.errors = prometheus.Counter("landmark_errors", "Refused requests and unreadable photos, by kind", ["kind"],
                                         registry=self.registry)
        self.latency = prometheus.Histogram("landmark_tag_seconds", "Seconds from a /tag request to its answer",
                                            registry=self.registry, buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batches = prometheus.Histogram("landmark_batch_photos", "Photos per batch the model scored",
                                            registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.loads = prometheus.Counter("landmark_model_loads", "Model loads (start and reloads), by outcome", ["outcome"],
                                        registry=self.registry)


class LoadedModel:
    """The model the service answers with, swapped whole on a reload (requests in flight keep the one they started with)."""

    def __init__(self, path: Path, view: ExportView | None, metrics: Metrics) -> None:
        self.path, self.view, self.problem, self.metrics = path, view, None if view is not None else "loading", metrics
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Load the model file, on the faster runtime when its ONNX file lies beside it (:func:`~src.onnx_export.faster_runtime`)."""
        async with self._lock:  # one reload at a time
            try:
                self.view, self.problem = await asyncio.to_thread(faster_runtime, self.path), None
            except (OSError, ValueError) as error:
                self.metrics.loads.labels(outcome="failed").inc()
                if self.view is None:
                    self.problem = str(error)
                raise ServiceError(422, f"model not reloaded: {error}") from error
            self.metrics.loads.labels(outcome="loaded").inc()

    def described(self) -> dict[str, Any]:
        """What ``/health`` and a reload say of the loaded model."""
        return {"model": self.path.name, "landmarks": len(self.view.class_names), "runtime": runtime_name(self.view)}


def url_host(host: str) -> str:
    """``host`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def _records(view: ExportView, names: list[str], rows: list[tuple[torch.Tensor, float]], k: int) -> list[dict[str, Any]]:
    """``tag``'s records of scored photos, as the service answers them (:class:`PhotoTag`)."""
    records = tag_records(torch.stack([row[0] for row in rows]), torch.tensor([row[1] for row in rows]), names,
                          view.class_names, k, view.unknown_threshold, view.places)
    answers = []
    for record, name in zip(records, names):
        known = record["landmark"] != UNKNOWN
        place = view.places.get(record["landmark"]) if known else None
        answers.append({**_error(name, None), **{key: record[key] for key in PhotoTag.model_fields if key in record},
                        "name": name, "landmark": record["landmark"] if known else None, "known": known,
                        "wikidata": (place.wikidata or None) if place else None})
    return answers


def _error(name: str, message: str | None) -> dict[str, Any]:
    """A photo's answer with every field empty but ``error``."""
    return {**dict.fromkeys(PhotoTag.model_fields), "name": name, "top_k": [], "error": message}


def _too_large(limit: int) -> ServiceError:
    return ServiceError(413, f"the upload is larger than the service accepts ({limit / 1e6:g} MB a request)")


def _limited(receive: Callable[[], Awaitable[dict]], limit: int) -> Callable[[], Awaitable[dict]]:
    """``receive`` of a request body that refuses (413) more than ``limit`` bytes, however it is sent."""
    received = 0

    async def counted() -> dict:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise _too_large(limit)
        return message
    return counted


class Guard:
    """ASGI middleware: the bearer token on every path but ``/health``, and the request count by route and status."""

    def __init__(self, app: Any, token: str | None, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.expected = f"Bearer {token}".encode() if token is not None else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.expected is not None and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                self.metrics.errors.labels(kind="401").inc()
                self.metrics.requests.labels(endpoint="any", status="401").inc()
                refusal = JSONResponse({"error": "a valid 'Authorization: Bearer TOKEN' header is needed"}, status_code=401,
                                       headers={"WWW-Authenticate": "Bearer"})
                return await refusal(scope, receive, send)
        status = 500

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, sending)
        finally:  # the route, not the raw path: every URL a scanner tries would be a new series
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(endpoint=route, status=str(status)).inc()


class Scorer(Protocol):
    """What scores the photos of requests: :class:`~src.batching.BatchingModel` in this process, or model replicas
    elsewhere (:mod:`src.ray_serving`), which hold their own copy of the model and so cannot reload it from here."""

    reloads: bool

    async def classify(self, view: ExportView, reading: Awaitable[torch.Tensor]) -> tuple[torch.Tensor, float]: ...

    def close(self) -> None: ...


def create_app(settings: ServiceSettings, view: ExportView | None = None,
               make_scorer: Callable[[Callable[[int], None]], Scorer] | None = None) -> FastAPI:
    """The service as an ASGI app (uvicorn or Ray Serve runs it). Without ``view`` the model is loaded once the app
    starts; ``make_scorer(on_batch)`` makes what scores photos when it starts (default: a :class:`BatchingModel`)."""
    make_scorer = make_scorer or (lambda on_batch: BatchingModel(settings.max_batch, settings.max_wait, on_batch))
    token = settings.token if settings.token is not None else os.environ.get(TOKEN_VARIABLE) or None
    metrics = Metrics()
    model = LoadedModel(settings.model, view, metrics)
    # The decoding threads' torch work (resizing) runs on one thread each: OpenMP thread pools of several threads
    # competing with the model's made a lone photo's scoring 2x slower on 2 cores (docs/service.md).
    decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode", initializer=torch.set_num_threads,
                                  initargs=(1,))
    limit = int(settings.max_upload_mb * 1e6)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.scorer = make_scorer(metrics.batches.observe)
        loading = asyncio.create_task(_quietly(model.load())) if model.view is None else None
        loop = asyncio.get_running_loop()
        with suppress(NotImplementedError, RuntimeError, ValueError):  # signals only where the loop may take them
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_quietly(model.load())))
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            with suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            app.state.scorer.close()
            decoders.shutdown()

    app = FastAPI(title="Landmark tagging", lifespan=lifespan,
                  description="Photos in; each one's landmark (or null), its place and its top-k out.")

    @app.exception_handler(ServiceError)
    async def refused(request: Request, error: ServiceError) -> JSONResponse:
        metrics.errors.labels(kind=str(error.status)).inc()
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        metrics.errors.labels(kind=str(error.status_code)).inc()
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    app.add_middleware(Guard, token=token, metrics=metrics)

    @app.get("/health")
    async def health() -> JSONResponse:
        if model.view is None:
            return JSONResponse({"status": "unavailable", "error": model.problem}, status_code=503)
        return JSONResponse({"status": "ok", **model.described()})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(prometheus.generate_latest(metrics.registry).decode(),
                                 media_type=prometheus.CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload(request: Request) -> dict[str, Any]:
        if not request.app.state.scorer.reloads:
            raise ServiceError(409, "the model replicas hold their own copy of the model: deploy the new file by running "
                                    "`serve --engine ray` again (Ray Serve replaces the replicas one at a time)")
        await model.load()
        return {"status": "reloaded", **model.described()}

    def read(view: ExportView, name: str, data: bytes) -> torch.Tensor:
        return model_square(view, read_for(view, data, name))

    async def tag_one(scorer: Scorer, view: ExportView, name: str, upload: UploadFile) -> tuple[torch.Tensor, float] | str:
        """One photo's scores, or the message of why it could not be read; it is read in a decoding thread."""
        data = await upload.read()
        try:
            return await scorer.classify(view, asyncio.get_running_loop().run_in_executor(decoders, read, view, name, data))
        except ImageReadError as error:
            return str(error)

    async def answer(request: Request, k: int) -> JSONResponse:
        view = model.view
        if view is None:
            raise ServiceError(503, f"the model is not loaded yet ({model.problem})")
        if int(request.headers.get("content-length") or 0) > limit:  # refused before reading any of it
            raise _too_large(limit)
        try:
            form = await Request(request.scope, _limited(request.receive, limit)).form(max_files=settings.max_photos)
        except HTTPException as error:  # the multipart parser's refusals
            if "Too many files" in str(error.detail):
                raise ServiceError(413, f"more photos in one request than the service takes ({settings.max_photos})") from None
            raise
        uploads = [part for part in form.getlist("photo") if isinstance(part, UploadFile)]
        if not uploads:
            as_text = form.getlist("photo")  # parts without a filename: a form's text fields, not files
            without_file = " ('photo' parts came without a filename, as text: send each as a file)" if as_text else ""
            raise ServiceError(400, f"no photo: send multipart/form-data with one or more parts named 'photo'{without_file}")
        names = [upload.filename or "photo" for upload in uploads]
        results = await asyncio.gather(*(tag_one(request.app.state.scorer, view, name, upload)
                                         for name, upload in zip(names, uploads)))
        readable = [i for i, result in enumerate(results) if not isinstance(result, str)]
        answers = dict(zip(readable, _records(view, [names[i] for i in readable], [results[i] for i in readable], k))) \
            if readable else {}
        photos = [answers.get(i) or _error(names[i], results[i]) for i in range(len(uploads))]
        for photo in photos:
            metrics.photos.labels(outcome="error" if photo["error"] else "known" if photo["known"] else "unknown").inc()
            if photo["error"]:
                metrics.errors.labels(kind="unreadable photo").inc()
        return JSONResponse({"model": model.path.name, "photos": photos}, status_code=200 if readable else 422)

    @app.post("/tag", response_model=TagResponse, responses={413: {}, 422: {"model": TagResponse}, 504: {}},
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["photo"], "properties": {
                      "photo": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}})
    async def tag(request: Request, k: int = Query(5, ge=1, le=1000, description="landmarks listed per photo")) -> JSONResponse:
        """Tag the photos of a ``multipart/form-data`` body (parts named ``photo``), in order."""
        start = time.perf_counter()
        try:
            return await asyncio.wait_for(answer(request, k), settings.timeout)
        except asyncio.TimeoutError:
            raise ServiceError(504, f"the request took longer than {settings.timeout:g} s") from None
        finally:
            metrics.latency.observe(time.perf_counter() - start)

    return app


async def _quietly(reloading: Awaitable[None]) -> None:
    """A load nobody waits for (at start, or asked by SIGHUP): a file that cannot be loaded leaves the current model in
    use, and the log says why."""
    try:
        await reloading
    except ServiceError as error:
        logging.getLogger(__name__).warning("%s", error)
