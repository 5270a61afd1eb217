"""Dynamic batching: photos of concurrent requests go through the model together (:mod:`src.service`).

A model scores a batch of 16 photos in far less than 16 times the time of one, so a service that ran each
request's photos alone would waste most of the CPU under load. :class:`BatchingModel` keeps one thread that
takes the photos waiting in its queue, up to ``max_batch`` of them, and scores them in one ``classify``
call. A batch waits (at most ``max_wait`` seconds) only for photos that are being read already, never for
photos that may not come: a lone request is scored at once. Photos are grouped by the model they were read
for, so a model swapped in (a reload) never scores a photo read at another model's size.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import torch

from .export import ExportView

MAX_BATCH = 32  # photos scored at once: beyond this a CPU gains little per photo and a request waits longer
MAX_WAIT = 0.002  # seconds a batch waits for photos still being read (longer waits cost more than they gain on 2 cores)


@dataclass
class _Waiting:
    view: ExportView
    square: torch.Tensor  # (3, S, S) uint8, S = view.resize_size
    future: asyncio.Future  # settled on its own event loop


class BatchingModel:
    """Scores photos of any number of concurrent callers in shared batches, on one thread of its own.

    ``await classify(view, reading)`` reads the photo (``reading``: an awaitable of its ``(3, S, S)`` uint8 square,
    whose errors are the caller's) and returns its ``(probabilities (C,), known score)``. ``on_batch(size)``
    is told of every batch scored (the service's metrics). It scores with whichever model a photo was
    read for, so the service may swap its model at any time (``reloads``)."""

    reloads = True

    def __init__(self, max_batch: int = MAX_BATCH, max_wait: float = MAX_WAIT,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 seconds or more, got {max_wait}")
        self.max_batch, self.max_wait = max_batch, max_wait
        self.on_batch = on_batch or (lambda size: None)
        self._queue: queue.Queue[_Waiting | None] = queue.Queue()
        self._reading = 0  # photos being read, which the batch being formed may wait for
        self._lock = threading.Lock()
        self._held: _Waiting | None = None  # the first photo of the next batch (read for another model than the last)
        self._thread = threading.Thread(target=self._run, name="batching-model", daemon=True)
        self._thread.start()

    def _count_reading(self, change: int) -> None:
        with self._lock:
            self._reading += change

    async def classify(self, view: ExportView, reading: Awaitable[torch.Tensor]) -> tuple[torch.Tensor, float]:
        self._count_reading(1)
        try:
            square = await reading
        except BaseException:
            self._count_reading(-1)
            raise
        waiting = _Waiting(view, square, asyncio.get_running_loop().create_future())
        self._queue.put(waiting)
        self._count_reading(-1)  # after the put: a batch never misses a photo between the two
        return await waiting.future

    def close(self) -> None:
        """Score what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _next_batch(self) -> list[_Waiting] | None:
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait() if self._reading == 0 else \
                    self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if item is None:  # closing: this batch is scored, then the thread stops
                self._queue.put(None)
                break
            if item.view is not first.view:  # read for another model (a reload): it starts the next batch
                self._held = item
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                with torch.inference_mode():
                    probabilities, scores = batch[0].view.classify(torch.stack([item.square for item in batch]))
                results: list = [(probabilities[i], float(scores[i])) for i in range(len(batch))]
            except Exception as error:  # a model failure is every waiting request's error, never the thread's end
                results = [error] * len(batch)
            self.on_batch(len(batch))
            for item, result in zip(batch, results):
                item.future.get_loop().call_soon_threadsafe(_settle, item.future, result)


def _settle(future: asyncio.Future, result: object) -> None:
    if future.cancelled():  # the request timed out or its client left
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
