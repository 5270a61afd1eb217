"""Tagging beyond one machine: the decode and scoring steps of ``tag`` on Ray Data (``--engine ray``).

Ray Data streams the photo paths through two stages: decoding in parallel CPU tasks (each photo
read and cut to the model's square, as :mod:`src.decoding` does locally), then the exported
TorchScript model in an actor pool sized to the cluster (one actor per GPU where the cluster has
GPUs). Scored batches come back to the driver in the order they complete, where
:func:`src.tagging.tag_photos` writes, geotags and resumes exactly as with the local engine.
Without ``address`` a local Ray starts; with it (``ray://host:10001`` or ``host:6379``) the run
joins that cluster, which must see the photo paths at the same place (shared storage, or URIs of
object storage: :func:`src.images.read_uri`). Ray is an
optional install: ``pip install -r requirements-scale.txt``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .allocator import keep_freed_memory
from .decoding import SquarePhotos

INSTALL_HINT = "the Ray engine needs Ray: pip install -r requirements-scale.txt"


def _decode(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray task: each photo of the batch as a ``size`` square (:class:`~src.decoding.SquarePhotos`; zeros and
    its error message when unreadable)."""
    photos = SquarePhotos(list(batch["path"]), size)  # paths and URIs alike (src.images.load_rgb)
    images = np.zeros((len(photos), 3, size, size), dtype=np.uint8)
    errors = []
    for row in range(len(photos)):
        _, item = photos[row]
        if isinstance(item, str):
            errors.append(item)
        else:
            images[row] = item.numpy()
            errors.append("")
    return {"index": batch["index"], "image": images, "error": np.array(errors, dtype=object)}


class _Scorer:
    """Ray actor: the exported model, loaded once, scoring decoded batches (on a GPU when it has one)."""

    def __init__(self, model_bytes: bytes, source: str) -> None:
        from .export import export_from_bytes

        keep_freed_memory()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = export_from_bytes(model_bytes, self.device, source)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        readable = batch["error"] == ""
        probabilities = np.zeros((len(readable), len(self.model.class_names)), dtype=np.float32)
        known_scores = np.zeros(len(readable), dtype=np.float32)
        if readable.any():
            with torch.inference_mode():
                p, s = self.model.classify(torch.from_numpy(batch["image"][readable]).to(self.device))
            probabilities[readable], known_scores[readable] = p.cpu().numpy(), s.cpu().numpy()
        return {"index": batch["index"], "error": batch["error"], "probabilities": probabilities, "known_score": known_scores}


def start_ray(address: str | None):
    """The ``ray`` module, connected to ``address`` (None: as ``ray.init()`` finds one, ``RAY_ADDRESS`` or the cluster
    ``ray start`` last started on this machine, else a local Ray started once per process) and with Ray Data's own
    progress bars off; a clear error where Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    if not ray.is_initialized():
        package = Path(__file__).resolve().parent  # workers on other machines get src from the driver
        ray.init(address=address, runtime_env={"py_modules": [str(package)]}, log_to_driver=False,
                 include_dashboard=False, logging_level=logging.WARNING)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # tag shows its own
    context.print_on_execution_start = False
    return ray


def ray_scored_batches(model_path: str | Path, paths: list[Path | str], size: int, batch_size: int, address: str | None = None
                       ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, dict[int, str]]]:
    """``(indices, probabilities, known scores, {index: error})`` per batch of ``paths``, decoded and scored on
    Ray Data, in the order batches complete (the same tuples as ``tagging.local_scored_batches``)."""
    ray = start_ray(address)
    if not paths:
        return
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    pool = {"concurrency": gpus, "num_gpus": 1} if gpus else {"concurrency": (1, max(1, cpus // 2))}
    model = Path(model_path).read_bytes()
    decode_batch = max(1, min(batch_size, -(-len(paths) // (4 * cpus))))  # enough decode tasks for every CPU
    dataset = (ray.data.from_items([{"index": i, "path": str(p)} for i, p in enumerate(paths)])
               .map_batches(_decode, fn_kwargs={"size": size}, batch_size=decode_batch)
               .map_batches(_Scorer, fn_constructor_kwargs={"model_bytes": model, "source": str(model_path)},
                            batch_size=batch_size, **pool))
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        readable = batch["error"] == ""
        errors = {int(i): str(e) for i, e in zip(batch["index"][~readable], batch["error"][~readable])}
        yield (batch["index"][readable].tolist(), torch.from_numpy(batch["probabilities"][readable]),
               torch.from_numpy(batch["known_score"][readable]), errors)
