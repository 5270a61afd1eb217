"""The HTTP service scaled out on Ray Serve (``python -m src serve --engine ray``): the same API, model replicas across a cluster.

Two deployments: the ingress runs the very app of the embedded server (:func:`src.service.create_app`: the same
endpoints, limits, token and answers), reading each photo in its own threads; it sends each photo's square to
``ModelReplica``, ``--replicas`` copies of the exported model spread over the cluster (one GPU each where the
cluster has GPUs), which score them in batches (``@serve.batch``). The model file is sent with the deployment,
so the machines need not share storage. A new model is deployed by running the command again: Ray Serve
replaces the replicas one at a time, without dropping requests (``/admin/reload`` answers 409 here).
Ray Serve is an optional install: ``pip install -r requirements-scale.txt``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import torch

from .allocator import keep_freed_memory
from .batching import MAX_BATCH, MAX_WAIT
from .export import ExportView, export_from_bytes
from .service import ServiceSettings, create_app, url_host

INSTALL_HINT = "the Ray engine needs Ray Serve: pip install -r requirements-scale.txt"
APP_NAME = "landmarks"


class ReplicaScorer:
    """The service's scorer (:class:`~src.service.Scorer`) that hands each photo to the model replicas."""

    reloads = False

    def __init__(self, replicas: object) -> None:
        self.replicas = replicas

    async def classify(self, view: ExportView, reading: Awaitable[torch.Tensor]) -> tuple[torch.Tensor, float]:
        probabilities, score = await self.replicas.score.remote((await reading).numpy())
        return torch.from_numpy(probabilities), score

    def close(self) -> None:
        pass


def deployments(model_bytes: bytes, settings: ServiceSettings, replicas: int, gpus: bool) -> object:
    """The Ray Serve application: the ingress and ``replicas`` model replicas (a GPU each when ``gpus``)."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_gpus": 1} if gpus else {"num_cpus": 0.5})
    class ModelReplica:
        """One copy of the exported model, scoring the photos sent to it in batches."""

        def __init__(self) -> None:
            keep_freed_memory()
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.view = export_from_bytes(model_bytes, self.device, str(settings.model))
            self.score.set_max_batch_size(settings.max_batch)
            self.score.set_batch_wait_timeout_s(settings.max_wait)

        @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=MAX_WAIT)
        async def score(self, squares: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
            with torch.inference_mode():
                probabilities, scores = self.view.classify(torch.from_numpy(np.stack(squares)).to(self.device))
            return [(probabilities[i].cpu().numpy(), float(scores[i])) for i in range(len(squares))]

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    @serve.ingress()
    class Ingress:
        """The embedded server's app, scoring on the replicas."""

        def __init__(self, replicas: object) -> None:
            self.replicas = replicas

        def __serve_build_asgi_app__(self) -> Callable:
            make_scorer = lambda on_batch: ReplicaScorer(self.replicas)  # noqa: E731  batches are the replicas'
            return create_app(settings, export_from_bytes(model_bytes, source=str(settings.model)), make_scorer)

    return Ingress.bind(ModelReplica.options(num_replicas=replicas).bind())


def serve_on_ray(settings: ServiceSettings, host: str, port: int, replicas: int, address: str | None = None,
                 blocking: bool = True) -> str:
    """Deploy the service on Ray Serve (a local Ray, or the cluster at ``address``) and return its URL; with
    ``blocking`` keep serving until interrupted, then shut the application down."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    model_bytes = Path(settings.model).read_bytes()
    export_from_bytes(model_bytes, source=str(settings.model))  # a wrong file is refused before anything is deployed
    if not ray.is_initialized():
        package = Path(__file__).resolve().parent  # replicas on other machines get src from here
        ray.init(address=address, runtime_env={"py_modules": [str(package)]}, log_to_driver=False,
                 include_dashboard=False, logging_level=logging.WARNING)
    gpus = int(ray.cluster_resources().get("GPU", 0)) > 0
    try:
        serve.start(http_options={"host": host, "port": port})
    except RuntimeError as error:  # Ray's error carries its remote traceback; its last line says why
        raise OSError(f"Ray Serve could not listen on {host}:{port}: {str(error).strip().splitlines()[-1]}") from None
    serve.run(deployments(model_bytes, settings, replicas, gpus), name=APP_NAME, route_prefix="/",
              blocking=blocking)
    return f"http://{url_host(host)}:{port}"
