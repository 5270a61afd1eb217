"""Tagging throughput: photos/s of `tag` with the local engine and with Ray, and where the time goes.

    python bench/tag.py [--model checkpoints/transfer_exported.pt] [--full-size 40]

Two photo sets: the 2,500 unlabelled ``landmarks10`` photos (128 px) and ``--full-size`` (default 250) 12-megapixel
JPEGs (4000×3000, quality 90) made in a temporary folder from ``landmark_images_sample`` (its 125
photos, then mirrored copies). For each:
the whole ``tag_photos`` run with ``engine="local"`` and ``engine="ray"`` (a local Ray on this
machine, started before the clock), and with ``engine="local"`` on the model's ONNX file (what ``tag`` runs when
that file lies beside the model and is faster here: :func:`src.onnx_export.faster_runtime`), and the two parts
alone: decoding (``square_batches``, all cores, no model) and the model (``classify`` on already decoded batches,
one process). The decode ceiling is the number of cores over one photo's decode time on one core (``read_image`` with JPEG
draft mode + the model's square, 40 photos, no process start-up). The two engines' outputs are
compared photo by photo (each photo once, same landmark, largest probability difference). Last, the
unlabelled photos go through ``--address``, joining a 2-node Ray cluster simulated on this machine
(``ray.cluster_utils.Cluster``, one CPU per node: the same two cores, split).
Writes ``bench/results/tag.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from utils import REPO, write_result
from src.decoding import square_batches
from src.defaults import cpu_cores
from src.images import read_image
from src.location import list_images
from src.export import export_view, load_exported, open_export
from src.onnx_export import export_onnx, file_sha256
from src.ray_tagging import start_ray
from src.preprocessing import square_uint8
from src.tagging import tag_photos

SHARED = REPO.parent / "shared" / "data"


def rate(photos: int, seconds: float) -> float:
    return round(photos / seconds, 1)


def full_size_photos(folder: Path, count: int, sources: list[Path] | None = None) -> list[Path]:
    """``count`` 12 MP JPEGs: ``sources`` (default: the canonical sample's 125 photos) scaled up, each used again,
    mirrored, past their number."""
    sources = sources or list_images(SHARED / "landmark_images_sample")
    for index in range(count):
        image = Image.open(sources[index % len(sources)]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
        if index >= len(sources):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"{index:03d}.jpg", quality=90)
    return list_images(folder)


def measure(model: torch.jit.ScriptModule, model_path: Path, onnx_path: Path, folder: Path, work: Path) -> dict:
    photos = list_images(folder)
    size = int(model.resize_size)
    sample = photos[:: max(1, len(photos) // 40)]  # the decode ceiling: one core, no process start-up
    start = time.perf_counter()
    for path in sample:
        square_uint8(read_image(path, size), size)
    one_core = (time.perf_counter() - start) / len(sample)
    start = time.perf_counter()
    batches = [images for _, images, _ in square_batches(photos, size, 50) if images is not None]
    decode = time.perf_counter() - start
    start = time.perf_counter()
    view = export_view(model)
    with torch.inference_mode():
        for images in batches:
            view.classify(images)
    network = time.perf_counter() - start
    figures = {"photos": len(photos), "decode_ms_per_photo_one_core": round(one_core * 1000, 1),
               "decode_ceiling_photos_per_s": round(cpu_cores() / one_core, 1),
               "decode_only_photos_per_s": rate(len(photos), decode),
               "model_only_photos_per_s": rate(len(photos), network)}
    tags = {}
    for engine in ("local", "ray"):
        out = work / f"{folder.name}_{engine}.jsonl"
        summary = tag_photos(model, folder, out, model_path=model_path, engine=engine)
        figures[f"{engine}_photos_per_s"] = rate(summary.tagged + len(summary.unreadable), summary.seconds)
        print(f"{folder.name}: {engine} {figures[f'{engine}_photos_per_s']} photos/s", flush=True)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        tags[engine] = {row["path"]: row for row in rows}
        figures[f"{engine}_rows"] = len(rows)
    out = work / f"{folder.name}_onnx.jsonl"
    summary = tag_photos(open_export(onnx_path).module, folder, out, model_path=onnx_path, engine="local")
    figures["local_onnx_photos_per_s"] = rate(summary.tagged + len(summary.unreadable), summary.seconds)
    print(f"{folder.name}: local, onnxruntime {figures['local_onnx_photos_per_s']} photos/s", flush=True)
    onnx = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    figures["onnx_same_landmark"] = sum(tags["local"][p]["landmark"] == onnx[p]["landmark"] for p in tags["local"] if p in onnx)
    local, ray = tags["local"], tags["ray"]
    figures["ray_same_photos_each_once"] = set(local) == set(ray) and figures["ray_rows"] == len(ray) == len(photos)
    figures["ray_same_landmark"] = sum(local[p]["landmark"] == ray[p]["landmark"] for p in local if p in ray)
    figures["ray_max_probability_difference"] = max((abs(local[p]["probability"] - ray[p]["probability"]) for p in local
                                                     if p in ray and local[p]["probability"] is not None), default=0.0)
    figures["local_share_of_decode_ceiling"] = round(figures["local_photos_per_s"] / figures["decode_ceiling_photos_per_s"], 2)
    return figures


def simulated_cluster(model: torch.jit.ScriptModule, model_path: Path, folder: Path, work: Path) -> dict:
    """``tag --engine ray --address`` joining a 2-node cluster simulated on this machine (one CPU each)."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        start_ray(cluster.address)  # joining is not tagging time
        summary = tag_photos(model, folder, work / f"{folder.name}_cluster.csv", model_path=model_path, engine="ray",
                             address=cluster.address)
        nodes = len(ray.nodes())
    finally:
        ray.shutdown()
        cluster.shutdown()
    photos_per_s = rate(summary.tagged + len(summary.unreadable), summary.seconds)
    print(f"{folder.name}: simulated {nodes}-node cluster {photos_per_s} photos/s", flush=True)
    return {"nodes": nodes, "photos_per_s": photos_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "checkpoints" / "transfer_exported.pt")
    parser.add_argument("--full-size", type=int, default=250, help="how many 12 MP JPEGs to make and tag")
    args = parser.parse_args()
    model = load_exported(args.model)
    start_ray(None)  # Ray's start-up (seconds) is not tagging time
    with tempfile.TemporaryDirectory() as tmp:
        work, big = Path(tmp), Path(tmp) / "full_size_12mp"
        big.mkdir()
        full_size_photos(big, args.full_size)
        onnx_path = export_onnx(open_export(args.model), work / "model.onnx", file_sha256(args.model))
        results = {"unlabelled_128px": measure(model, args.model, onnx_path, SHARED / "landmarks10" / "unlabeled", work),
                   "full_size_12mp": measure(model, args.model, onnx_path, big, work)}
        results["unlabelled_128px"]["ray_simulated_2_node_cluster"] = simulated_cluster(
            model, args.model, SHARED / "landmarks10" / "unlabeled", work)
    write_result("tag", {"model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
                         **results})


if __name__ == "__main__":
    main()
