"""What ``predict``, ``tag`` and ``serve`` do, given their parsed arguments: the commands that run an exported model.

They import only the export side of the package (torch, Pillow, the exported model's view), never the training
stack (torchvision, timm, the data loaders), whose imports take longer than the rest of a ``predict``
(``bench/cli_start.py``); ``tests/test_cli.py`` checks that ``predict`` and ``tag`` load neither torchvision nor timm.
``predict`` returns the exit status: 1 when a photo could not be read.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys
from pathlib import Path

from .export import open_export
from .images import RAW_EXTENSIONS, RAW_HINT, ImageReadError
from .onnx_export import faster_runtime, runtime_name
from .predictor import predict_photo
from .tagging import tag_photos


def predict(args: argparse.Namespace) -> int:
    model = open_export(args.model)
    failures = 0
    for photo in args.photos:
        try:
            prediction = predict_photo(model, photo, args.topk)
        except ImageReadError as error:
            hint = f" (`tag {photo} --out tags.csv` labels every photo in a folder)" if Path(photo).is_dir() else ""
            print(f"error: {error}{hint}", file=sys.stderr)
            failures += 1
            continue
        print(f"{photo}\n  -> {prediction.verdict(model.places)}")
        for name, probability in prediction.ranking:
            print(f"  {probability:7.2%}  {name}")
    return 1 if failures else 0


def tag(args: argparse.Namespace) -> None:
    if args.overwrite_gps and args.geotag is None:
        raise ValueError("--overwrite-gps only applies with --geotag DIR")
    if args.address is not None and args.engine != "ray":
        raise ValueError("--address only applies with --engine ray")
    # the local engine runs the faster of the export and its ONNX file, as serve does; Ray's workers run the file given
    model = faster_runtime(args.model) if args.engine == "local" else open_export(args.model)
    summary = tag_photos(model.module, args.photos_dir, args.out, args.topk, args.threshold, args.batch_size, args.workers,
                         model_path=args.model, places_csv=args.places, geotag_dir=args.geotag, overwrite_gps=args.overwrite_gps,
                         from_list=args.from_list, engine=args.engine, address=args.address)
    for message in summary.unreadable:
        print(f"skipped unreadable photo: {message}", file=sys.stderr)
    for message in summary.not_geotagged:
        print(f"no geotagged copy: {message}", file=sys.stderr)
    threshold = model.unknown_threshold if args.threshold is None else args.threshold
    geotagged = f", {summary.geotagged} geotagged copies in {args.geotag}" if args.geotag else ""
    if summary.not_geotagged:
        geotagged += f" ({len(summary.not_geotagged)} photo(s) with a place got none: the geotag column says why)"
    print(f"Tagged {summary.tagged} photos ({summary.unknown} unknown: known score below {threshold:.3f}){geotagged}, "
          f"{len(summary.unreadable)} unreadable, {summary.skipped_done} already done, "
          f"in {summary.seconds:.1f} s ({summary.photos_per_second:.0f} photos/s, {runtime_name(model)}) -> {args.out}")
    if summary.other_files:
        counts = ", ".join(f"{count} {extension}" for extension, count in summary.other_files.items())
        raw = any(extension in RAW_EXTENSIONS for extension in summary.other_files)
        print(f"Not looked at: {sum(summary.other_files.values())} file(s) without a photo extension ({counts})"
              + (f"; {RAW_HINT}" if raw else ""))
    if not (summary.tagged or summary.unreadable or summary.skipped_done):  # a mistyped or empty folder, or list
        said = f"{args.from_list} lists no photos" if args.from_list is not None else \
            f"{args.photos_dir} holds no photos (files named .jpg, .png, .heic, … in it or its subfolders)"
        print(f"warning: {said}", file=sys.stderr)


LISTEN_HINTS = {errno.EADDRINUSE: "another program listens there: choose another --port",
                errno.EADDRNOTAVAIL: "this machine has no such address: --host 0.0.0.0 listens on every interface",
                errno.EACCES: "ports below 1024 need root: choose a port from 1024 up"}


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` as uvicorn binds one, so that a port in use or an address this machine lacks
    is refused with a plain error before the service says it is serving."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        hint = LISTEN_HINTS.get(error.errno, "--host takes an address or a name of this machine")
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error} ({hint})") from None
    return sock


def serve(args: argparse.Namespace) -> int:
    from .service import TOKEN_VARIABLE, ServiceSettings, url_host

    if args.engine != "ray" and (args.address is not None or args.replicas != 1):
        raise ValueError("--address and --replicas only apply with --engine ray")
    token = args.token if args.token is not None else os.environ.get(TOKEN_VARIABLE) or None  # replicas elsewhere see no env
    # a wrong file is refused before the service listens; Ray Serve's replicas run the file they are given
    view = faster_runtime(args.model) if args.engine != "ray" else open_export(args.model)
    settings = ServiceSettings(args.model, token=token, max_photos=args.max_photos, max_upload_mb=args.max_upload_mb,
                               timeout=args.timeout, max_batch=args.max_batch, max_wait=args.max_wait_ms / 1000)
    # the port and address are checked before "Serving"; Ray Serve's proxies bind their own (a Serve already running on
    # the cluster holds the port it redeploys on), and one that cannot is reported by serve_on_ray
    if args.engine == "local":
        sock = listening_socket(args.host, args.port)
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"warning: listening on {args.host} without a token: anyone who can reach it can use it "
              f"(--token or ${TOKEN_VARIABLE})", file=sys.stderr)
    replicas = f"{args.replicas} model replica{'s' if args.replicas > 1 else ''}"
    where = f"on Ray Serve ({replicas})" if args.engine == "ray" else "in this process"
    token_note = "; bearer token required" if token else ""
    print(f"Serving {args.model} ({len(view.class_names)} landmarks, {runtime_name(view)}) {where} "
          f"on http://{url_host(args.host)}:{args.port} (POST /tag, GET /health, /metrics, /docs{token_note})", flush=True)
    if args.engine == "ray":
        from .ray_serving import serve_on_ray

        serve_on_ray(settings, args.host, args.port, args.replicas, args.address)
        return 0
    import uvicorn  # the service's stack loads only for this command

    from .service import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings, view), host=args.host, port=args.port,
                                           timeout_graceful_shutdown=int(args.timeout) + 1, log_level="warning"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops on the signal and raises it again once drained: a normal stop
        pass
    return 0 if server.started else 3  # 3: uvicorn's status for a service that never started
