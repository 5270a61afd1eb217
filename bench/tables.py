"""Regenerate the measurement tables in README.md and docs/*.md from bench/results/*.json.

A table between `<!-- table: NAME -->` and `<!-- /table -->` is written by the generator
registered under NAME, so a doc's figures cannot drift from what the benchmarks stored.

    python bench/tables.py          # rewrite the tables in place
    python bench/tables.py --check  # exit 1, naming each table that differs from the JSON
"""
from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHECKPOINTS = ROOT / "checkpoints"
MARKED = re.compile(r"^(?P<indent>[ \t]*)<!-- table: (?P<name>[\w-]+) -->\n(?P<body>.*?)^(?P=indent)<!-- /table -->",
                    re.M | re.S)

Row = list[str]
TABLES: dict[str, Callable[[], str]] = {}


def generator(name: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Register a table generator under the marker name the docs use."""
    def register(function: Callable[[], str]) -> Callable[[], str]:
        TABLES[name] = function
        return function
    return register


def load(name: str, folder: Path = RESULTS) -> dict[str, Any]:
    """One stored result; the file name is what the docs cite, so it is given without a path."""
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


def pct(share: float, digits: int = 1, space: bool = True) -> str:
    """A share as the docs write it: `98.70 %` in prose-like cells, `3.2%` in the dense open-set tables."""
    return f"{100 * share:.{digits}f}{' ' if space else ''}%"


def rate(per_second: float) -> str:
    """Photos per second: whole numbers from 100 on (`1,479/s`), one decimal below (`93.2/s`)."""
    return f"{per_second:,.0f}/s" if per_second >= 100 else f"{per_second:.1f}/s"


def added_over_base(speed: dict[str, float]) -> str:
    """Photos per second of a model with added landmarks over its base's, as `64 / 240 = **0.26×**`."""
    added, base = speed["with_added_landmarks"], speed["base"]
    return f"{added:.0f} / {base:.0f} = **{added / base:.2f}×**"


def markdown(header: Row, rows: list[Row]) -> str:
    """A pipe table in the docs' style (no column alignment, so a changed figure changes one line)."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def by_set(rows: list[dict[str, Any]], score: str) -> dict[str, dict[str, Any]]:
    """The open-set rows of one score, keyed by their unknown set."""
    return {row["unknown"]: row for row in rows if row["score"] == score}


@generator("sizes")
def sizes_table() -> str:
    """docs/data.md: the default transfer recipe on tuned and held-out landmarks (bench/sizes.py)."""
    rows: list[Row] = []
    for r in load("sizes")["rows"]:
        p = r["preprocess"]
        sizes = f"{p['eval_crop']} / {p['resize']} / {p['train_crop']}"
        if r["flags"] != "(none)":
            sizes += f", `{r['flags']}`"
        rows.append([f"{r['classes']} ({r['split']['train']} train / {r['split']['test']} test)",
                     f"{r['photos']} ({r['short_side']} px)", sizes, pct(r["valid_accuracy"], 2),
                     f"**{pct(r['test_top1'], 2)}**", f"{r['train_minutes']:.1f} min ({r['wall_minutes']:.1f} min)"])
    return markdown(["landmarks", "photos (median short side)", "sizes (eval crop / resize / train crop)",
                     "validation", "test top-1", "training (whole command)"], rows)


@generator("sizes-classes")
def sizes_classes_table() -> str:
    """docs/data.md: where the held-out landmarks' test errors fall, per landmark (bench/sizes.py, no flags)."""
    rows = [r for r in load("sizes")["rows"] if r["classes"] == "held out" and r["flags"] == "(none)"]
    names = list(rows[0]["per_class_top1"])
    return markdown(["held-out landmark", *(f"test top-1, {r['photos']}" for r in rows)],
                    [[name, *(pct(r["per_class_top1"][name], 1) for r in rows)] for name in names])


def seed_figures() -> dict[tuple[str, str], list[float]]:
    """Test top-1 of the plain command per (landmarks, photos) at the default seed (``sizes``), then at each seed
    of ``sizes_seeds`` (bench/sizes.py --seeds)."""
    figures: dict[tuple[str, str], list[float]] = {}
    for r in load("sizes")["rows"] + load("sizes_seeds")["rows"]:
        if r["flags"] == "(none)" or r["flags"].startswith("--seed "):
            figures.setdefault((r["classes"], r["photos"]), []).append(r["test_top1"])
    return figures


@generator("sizes-seeds")
def sizes_seeds_table() -> str:
    """docs/data.md: the plain command's test top-1 at three seeds (bench/sizes.py, then with --seeds)."""
    seed_flags = dict.fromkeys(r["flags"] for r in load("sizes_seeds")["rows"])  # in the order they ran
    rows = [[classes, photos, *(pct(share, 2) for share in shares), f"**{pct(sum(shares) / len(shares), 2)}**"]
            for (classes, photos), shares in seed_figures().items()]
    return markdown(["landmarks", "photos", "default seed", *(f"`{flags}`" for flags in seed_flags), "mean"], rows)


@generator("recipe-steps")
def recipe_steps_table() -> str:
    """docs/recipes.md: stage 2's length and depth on the tuned landmarks as thumbnails (bench/recipe_steps.py)."""
    record = load("recipe_steps")
    rows = [[r["candidate"] + (" (**chosen**)" if r["candidate"] == record["chosen"] else ""),
             f"`{r['flags']}`" if r["flags"] != "(none)" else r["flags"], str(r["epochs"]), f"{r['best_valid_loss']:.3f}",
             pct(r["valid_accuracy"], 2), pct(r["test_top1"], 2), f"{r['train_minutes']:.1f} min"] for r in record["rows"]]
    return markdown(["stage 2", "flags", "epochs", "best validation loss", "validation", "test top-1", "training"], rows)


@generator("compare-backbones")
def compare_backbones_table() -> str:
    """docs/recipes.md: each backbone with the shipped recipe on 3,000 photos (bench/compare_backbones.py)."""
    rows = [[r["backbone"], pct(r["frozen_valid_accuracy"], 2), pct(r["fine_tuned_valid_accuracy"], 2),
             f"{r['fine_tuned_minutes']:.1f} min", f"{r['predictor_test_seconds']:.1f} s",
             f"{r['single_photo_top5_median_ms']:.1f} ms"]
            for r in load("compare_backbones")["rows"]]
    return markdown(["backbone", "frozen (stage 1) validation", "fine-tuned validation", "both stages",
                     "predictor_test", "one photo"], rows)


@generator("openset")
def openset_table() -> str:
    """docs/unknown-photos.md: the shipped detectors, and the transfer recipe without outlier exposure."""
    transfer, scratch = load("openset")["models"]
    plain = load("openset_without_outlier_exposure")["models"][0]
    rows: list[Row] = []

    def shipped(label: str, model: dict[str, Any], only: str | None = None, bold: bool = False,
                accepted: bool = True) -> None:
        """The rows of the model's shipped score; the shipped transfer model's figures are the ones in bold."""
        for r in model["rows"]:
            if not r["shipped"] or (only is not None and r["unknown"] != only):
                continue
            mark = (lambda text: f"**{text}**") if bold else (lambda text: text)
            rows.append([label, r["unknown"], str(r["unknown_photos"]), mark(f"{r['auroc']:.4f}"),
                         mark(pct(r["fpr95"], space=False)),
                         pct(r["known_accepted"], space=False) if accepted else "—",
                         mark(pct(r["unknown_accepted"], space=False)) if accepted else "—"])

    shipped(f"transfer ({transfer['unknown_threshold']:.3f})", transfer, bold=True)
    shipped(f"scratch ({scratch['unknown_threshold']:.3f})", scratch, only="other landmarks (never trained on)")
    shipped("transfer without outlier exposure", plain, accepted=False)  # its threshold was chosen otherwise
    return markdown(["model (threshold)", "unknown photos, never trained on", "photos", "AUROC", "FPR@95TPR",
                     "known accepted", "unknown accepted"], rows)


SCORE_LABELS = {
    "msp_nearest": "msp_nearest (shipped `known_score`: top probability, memory and training photos)",
    "msp_nearest_memory": "msp_nearest_memory (top probability and memory alone)",
    "msp": "msp (top probability alone)",
    "knn": "knn (all 6,000 training photos alone)",
}
SET_HEADERS = {
    "scenes (held-out photos)": "scenes (held-out)",
    "everyday (categories never trained on)": "everyday (never trained on)",
}


@generator("openset-scores")
def openset_scores_table() -> str:
    """docs/unknown-photos.md: every candidate score from one pass of the shipped transfer model."""
    rows = load("openset")["models"][0]["rows"]
    sets = list(dict.fromkeys(row["unknown"] for row in rows))
    scores = list(dict.fromkeys(row["score"] for row in rows))
    table = [[SCORE_LABELS.get(score, score)]
             + [f"{r['auroc']:.4f} / {pct(r['fpr95'], space=False)}" for r in (by_set(rows, score)[s] for s in sets)]
             for score in scores]
    return markdown(["score", *(SET_HEADERS.get(s, s) for s in sets)], table)


@generator("add-landmarks")
def add_landmarks_table() -> str:
    """docs/adding-landmarks.md: new landmarks added from a few photos (bench/add_landmarks.py --shots 5 10)."""
    rows: list[Row] = []
    for r in load("add_landmarks")["rows"]:
        other = " / ".join("—" if r.get(f"{key}_accepted") is None else
                           f"{pct(r[f'{key}_accepted'], space=False)} ({pct(r[f'{key}_elsewhere'], space=False)})"
                           for key in ("other_landmarks", "unseen_landmarks"))
        rows.append([r["setting"], str(r["new_landmarks"]), str(r["photos_per_landmark"]),
                     *(pct(r[key], space=False) for key in ("new_top1", "new_accepted", "new_named_and_accepted")),
                     pct(r["original_top1"], 2, space=False), pct(r["original_accepted"], space=False),
                     f"{r['unknown_auroc']:.4f} / {pct(r['unknown_fpr95'], space=False)} / "
                     f"{pct(r['unknown_accepted'], space=False)}",
                     f"{pct(r['everyday_tuned_accepted'], space=False)} / "
                     f"{pct(r['everyday_left_out_accepted'], space=False)}",
                     other, f"{r['seconds']:.1f}"])
    return markdown(["new landmarks", "count", "photos each", "new: top-1", "new: accepted",
                     "new: named right and accepted", "original: top-1", "original: accepted",
                     "scenes: AUROC / FPR@95TPR / accepted", "everyday accepted: floor chosen on / left out",
                     "other landmarks accepted (at another site): trained against / never seen", "seconds"], rows)


@generator("shared-trunk")
def shared_trunk_table() -> str:
    """docs/adding-landmarks.md: both designs of a model with added landmarks, one base (bench/shared_trunk.py)."""
    rows: list[Row] = []
    for design, r in load("shared_trunk")["designs"].items():
        never, speed = r["never_trained_against"], r["photos_per_second"]
        rows.append([design, pct(never["new_top1"], space=False), pct(never["new_named_and_accepted"], space=False),
                     pct(never["original_accepted"], space=False),
                     f"{pct(never['everyday_tuned_accepted'], space=False)} / {pct(never['everyday_left_out_accepted'], space=False)}"
                     f" ({pct(r['everyday_before']['everyday_tuned'], space=False)} / "
                     f"{pct(r['everyday_before']['everyday_left_out'], space=False)})",
                     f"{pct(never['other_landmarks_accepted'], space=False)} ({pct(r['other_landmarks_before'], space=False)})",
                     f"{speed['with_added_landmarks']:.0f} / {speed['base']:.0f} = **{r['speed_ratio']:.2f}×**",
                     f"{r['base_megabytes']} MB, **{r['file_size_ratio']:.2f}×**", f"{r['command_seconds_10_photos']:.1f}"])
    return markdown(["design", "new: top-1", "new: named right and accepted", "original: accepted",
                     "everyday accepted: floor chosen on / left out (base alone)", "other landmarks accepted (base alone)",
                     "photos/s: added / base", "base file, added model's size", "command seconds"], rows)


@generator("base-224")
def base_224_table() -> str:
    """docs/adding-landmarks.md: the shipped base against one trained whole at 224 px, each with landmarks added
    (bench/add_landmarks.py --shots 10 on each export)."""
    rows: list[Row] = []
    for name, base, design in (("add_landmarks", "shipped (128 px)", "second network"),
                               ("add_landmarks_base224", "trained at 224 px", "shared trunk"),
                               ("add_landmarks_base224_second_network", "trained at 224 px", "second network")):
        r = load(name)
        tens = [row for row in r["rows"] if row["photos_per_landmark"] == 10]
        never = next(row for row in tens if row["setting"] == "never trained against")
        alone = next(row for row in tens if row["setting"] == "one at a time")
        batched, single = r["photos_per_second"], r["photos_per_second_one_at_a_time"]
        rows.append([f"{base}, {pct(r['original_top1_before'], 2, space=False)}", design, pct(never["new_top1"], space=False),
                     pct(never["new_named_and_accepted"], space=False), pct(never["original_accepted"], space=False),
                     f"{pct(r['other_landmarks_before'], space=False)} → {pct(never['other_landmarks_accepted'], space=False)}",
                     f"{pct(r['unseen_landmarks_before'], space=False)} → {pct(alone['unseen_landmarks_accepted'], space=False)}",
                     f"{pct(r['everyday_before']['everyday_left_out'], space=False)} → "
                     f"{pct(never['everyday_left_out_accepted'], space=False)}",
                     added_over_base(batched), added_over_base(single),
                     f"{r['file_size_ratio']:.2f}×", f"{r['command_seconds_10_photos']:.1f}"])
    return markdown(["base, test top-1", "design", "new: top-1", "new: named right and accepted", "original: accepted",
                     "other monuments accepted: before → after", "never-seen landmarks, one added: before → after",
                     "everyday left out: before → after", "photos/s in batches of 50: added / base",
                     "one at a time: added / base", "file", "command seconds"], rows)


@generator("general-size")
def general_size_table() -> str:
    """docs/adding-landmarks.md: the shipped model with added landmarks, its second network at fewer pixels
    (bench/general_size.py)."""
    rows: list[Row] = []
    for size, r in load("general_size")["sizes"].items():
        never = next(row for row in r["rows"] if row["setting"] == "never trained against")
        alone = next(row for row in r["rows"] if row["setting"] == "one at a time")
        batched, single = r["photos_per_second"], r["photos_per_second_one_at_a_time"]
        rows.append([f"{size} px", pct(never["new_top1"], space=False), pct(never["new_named_and_accepted"], space=False),
                     pct(never["everyday_left_out_accepted"], space=False),
                     f"{pct(never['other_landmarks_accepted'], space=False)} ({pct(never['other_landmarks_elsewhere'], space=False)})",
                     f"{pct(alone['unseen_landmarks_accepted'], space=False)} ({pct(alone['unseen_landmarks_elsewhere'], space=False)})",
                     added_over_base(batched), added_over_base(single)])
    return markdown(["EfficientNet-Lite0 reads", "new: top-1", "new: named right and accepted", "everyday left out accepted",
                     "other landmarks accepted (at another site)", "never-seen landmarks accepted, one added (at another site)",
                     "photos/s in batches of 50: added / base", "one at a time: added / base"], rows)


@generator("memory-negatives")
def memory_negatives_table() -> str:
    """docs/adding-landmarks.md: the shipped model with added landmarks, its memory keeping more negatives
    (bench/memory_negatives.py), under the shipped cap on held-out negatives and under the others measured."""

    def share_of(row: dict, key: str) -> str:
        return pct(row[key], space=False)

    rows: list[Row] = []
    results = [load("memory_negatives")] + [load(path.stem) for path in sorted(RESULTS.glob("memory_negatives_cap_*.json"))]
    for result in results:
        for count, r in result["counts"].items():
            run = result if "max_negatives_added" in result else load(f"add_landmarks_negatives_{count}")
            share = run["max_negatives_added"]
            never = next(row for row in r["rows"] if row["setting"] == "never trained against")
            alone = next(row for row in r["rows"] if row["setting"] == "one at a time")
            batched = r["photos_per_second"]
            rows.append([f"{r['remembered_negatives']:,}", pct(share, space=False), f"{r['file_megabytes']:.1f} MB",
                         share_of(never, "new_named_and_accepted"), share_of(alone, "new_named_and_accepted"),
                         share_of(never, "everyday_left_out_accepted"),
                         f"{share_of(never, 'other_landmarks_accepted')} ({share_of(never, 'other_landmarks_elsewhere')})",
                         f"{share_of(alone, 'unseen_landmarks_accepted')} ({share_of(alone, 'unseen_landmarks_elsewhere')})",
                         f"{r['command_seconds_10_photos']:.1f}" if "command_seconds_10_photos" in r else "—",
                         f"{r['file_size_ratio']:.2f}×" if "file_size_ratio" in r else "—",
                         f"{batched['with_added_landmarks'] / batched['base']:.2f}×"])
    return markdown(["remembered negatives", "held-out negatives let through", "base file",
                     "new: named right and accepted, 9 at once", "the same, one added at a time", "everyday left out accepted",
                     "other landmarks accepted (at another site)", "never-seen landmarks accepted, one added (at another site)",
                     "command seconds", "added model's file", "photos/s in batches: added / base"], rows)


@generator("feature-gate")
def feature_gate_table() -> str:
    """docs/adding-landmarks.md: the ImageNet network run only for photos a gate on the base's features lets through
    (bench/feature_gate.py)."""
    result = load("feature_gate")
    speed = result["photos_per_second"]
    rows: list[Row] = [["no gate", "100% / 100% / 100% / 100%",
                        pct(result["gates"]["margin, lowest"]["new_named_and_accepted"], space=False),
                        pct(result["gates"]["margin, lowest"]["original_named_and_accepted"], space=False),
                        *[f"{speed['with_added_landmarks'] / speed['base']:.2f}× (measured)"] * 2]]
    for gate, r in result["gates"].items():
        runs = (pct(r[f"{source}_runs_imagenet"], space=False) for source in ("new", "original", "scenes", "everyday_left_out"))
        rows.append([gate, " / ".join(runs),
                     pct(r["new_named_and_accepted_gated"], space=False), pct(r["original_named_and_accepted_gated"], space=False),
                     f"{r['at_most_x_base_original']:.2f}×", f"{r['at_most_x_base_everyday']:.2f}×"])
    return markdown(["gate, threshold",
                     "photos that run the ImageNet network: new landmarks / original / scenes / everyday left out",
                     "new: named right and accepted", "original: named right and accepted",
                     "at most × the base: original photos", "everyday photos"], rows)


@generator("distilled-tail")
def distilled_tail_table() -> str:
    """docs/adding-landmarks.md: MobileNetV2's later stages taught EfficientNet-Lite0's features, on the landmarks
    none of it learnt from (bench/distilled_tail.py)."""
    rows: list[Row] = [[r["features"], pct(r["top1"], space=False), f"{r['cosine_to_targets']:.3f}",
                        f"{r['last_epoch_loss']:.3f}" if "last_epoch_loss" in r else "",
                        f"{r['train_seconds'] / 60:.1f}" if "train_seconds" in r else ""]
                       for r in load("distilled_tail")["rows"]]
    return markdown(["features", "never-seen landmarks named, nearest mean of 10 photos",
                     "mean cosine similarity to EfficientNet-Lite0's", "training loss, last epoch", "training minutes"], rows)


@generator("passes")
def passes_table() -> str:
    """docs/adding-landmarks.md: milliseconds a photo by photos per pass, under two allocator settings (bench/passes.py)."""
    rows: list[Row] = []
    for network, settings in load("passes")["ms_per_photo"].items():
        for allocator, timings in settings.items():
            rows.append([network, allocator, *(f"{ms:.2f}" for ms in timings.values())])
    return markdown(["network (ms a photo)", "allocator", *(f"{size} per pass" for size in timings)], rows)


@generator("allocator-training")
def allocator_training_table() -> str:
    """docs/design.md: a training step's milliseconds a photo, and each child's peak memory, as glibc comes and with
    freed memory kept (bench/passes.py)."""
    result = load("passes")
    settings = list(result["peak_memory_mb"])
    rows: list[Row] = [[network, *(f"{timings[s]:.2f}" for s in settings), f"{timings[settings[0]] / timings[settings[-1]]:.1f}×"]
                       for network, timings in result["training_ms_per_photo"].items()]
    peaks = result["peak_memory_mb"]
    rows.append(["peak memory of the whole run (MB)", *(f"{peaks[s]:,.0f}" for s in settings),
                 f"{peaks[settings[-1]] / peaks[settings[0]]:.2f}× the memory"])
    return markdown(["training step (ms a photo)", *settings, "faster"], rows)


@generator("tag")
def tag_table() -> str:
    """docs/command-line.md: `tag` throughput, local and on Ray, against decoding alone (bench/tag.py)."""
    labels = {"unlabelled_128px": "{photos:,} `landmarks10/unlabeled` (128 px)",
              "full_size_12mp": "{photos:,} full-size 12 MP JPEGs"}
    rows: list[Row] = []
    for key, label in labels.items():
        r = load("tag")[key]
        ray = rate(r["ray_photos_per_s"])
        if "ray_simulated_2_node_cluster" in r:
            ray += f"; {rate(r['ray_simulated_2_node_cluster']['photos_per_s'])} joining a simulated 2-node cluster"
        draft = ", JPEG draft mode" if key == "full_size_12mp" else ""
        rows.append([label.format(photos=r["photos"]), rate(r["decode_only_photos_per_s"]),
                     rate(r["model_only_photos_per_s"]), f"**{rate(r['local_photos_per_s'])}**",
                     f"{rate(r['local_onnx_photos_per_s'])} ({r['onnx_same_landmark']:,} of {r['photos']:,} same landmark)",
                     ray,
                     f"{rate(r['decode_ceiling_photos_per_s'])} ({r['decode_ms_per_photo_one_core']} ms a photo{draft})"])
    return markdown(["photos", "decode only (2 processes)", "model only (1 process)", "`tag`, local engine",
                     "the same on onnxruntime (ONNX file beside the model)", "`tag --engine ray` (local Ray)",
                     "decode ceiling (2 × one photo on one core)"], rows)


@generator("cli-start")
def cli_start_table() -> str:
    """docs/command-line.md: a command's whole run as a new process, against the imports under it (bench/cli_start.py)."""
    labels = {"predict": "`python -m src predict PHOTO --model {model}`", "models": "`python -m src models` (training side)",
              "import torch": "`python -c \"import torch\"`",
              "import torch, torchvision.models": "`python -c \"import torch, torchvision.models\"`"}
    record = load("cli_start")
    model = Path(record["model"]).name
    rows = [[labels[r["row"]].format(model=model), f"**{r['median_s']:.2f} s** ({r['min_s']:.2f}-{r['max_s']:.2f})"]
            for r in record["rows"]]
    return markdown([f"new process (rows taking turns, {record['runs']} rounds)", "start to exit: median (range)"], rows)


@generator("geotag")
def geotag_table() -> str:
    """docs/command-line.md: `tag` with and without `--geotag` in the same run (bench/geotag.py)."""
    labels = {"landmarks10_one_folder": "{photos:,} `landmarks10` photos (128 px) in one folder",
              "full_size_12mp": "{photos:,} 12 MP JPEGs of `landmarks10` test photos"}
    rows: list[Row] = []
    for key, label in labels.items():
        r = load("geotag")[key]
        rows.append([label.format(photos=r["photos"]), f"{r['copies']:,}", rate(r["tag_photos_per_s"]),
                     f"**{rate(r['tag_geotag_photos_per_s'])}**", f"{r['ratio']:.2f}×"])
    return markdown(["photos", "geotagged copies", "`tag`", "`tag --geotag`", "with copies / without"], rows)


@generator("app-start")
def app_start_table() -> str:
    """docs/app.md: from requesting the app's page to its upload button and to the app ready (bench/app_start.py)."""
    labels = {"shipped": "`make app` (`voila.json`: a kernel started ahead), one visit at a time",
              "back to back": "the same, each visit right after the last (its kernel still being replaced)",
              "no preheated kernel": "reference: a kernel started per visit, cell-by-cell page"}
    record = load("app_start")
    rows = [[labels[r["serving"]], str(r["visits"]),
             f"{r['upload_button']['median_s']:.1f} s ({r['upload_button']['min_s']:.1f}-{r['upload_button']['max_s']:.1f})",
             f"**{r['ready']['median_s']:.1f} s** ({r['ready']['min_s']:.1f}-{r['ready']['max_s']:.1f})"]
            for r in record["rows"]]
    return markdown([f"serving (headless Chromium, {record['viewport']})", "visits", "upload button: median (range)",
                     "model ready: median (range)"], rows)


@generator("serve")
def serve_table() -> str:
    """docs/service.md: the HTTP service under load against in-process prediction (bench/serve.py); the last rows
    with the model's ONNX file beside it (the runtime column says which the service ran)."""
    record = load("serve")
    rows: list[Row] = []
    for row, reference in ([(r, record["in_process"][r["photos"]]) for r in record["rows"]]
                           + [(r, record["in_process_onnx"]) for r in record["onnx_rows"]]):
        rows.append([row["photos"], row["runtime"], str(row["concurrency"]), f"**{rate(row['photos_per_second'])}**",
                     f"{row['over_batch_in_process']:.2f}×", f"{row['p50_ms']:.0f} / {row['p95_ms']:.0f} / {row['p99_ms']:.0f} ms",
                     f"{row['mean_batch']:.1f}", str(row["failed"]), f"{rate(reference['batch_photos_per_second'])}; {reference['single_photo_ms']} ms"])
    return markdown(["photos", "runtime", "clients", "served photos/s", "÷ batch in process", "latency p50 / p95 / p99",
                     "photos a batch", "failed",
                     "in process, same runtime: batch `tag` engine; one photo"], rows)


@generator("runtimes")
def runtimes_table() -> str:
    """docs/service.md: TorchScript against onnxruntime on the same squares, answers and speed (bench/runtimes.py)."""
    record = load("runtimes")
    rows: list[Row] = []
    for row in record["rows"]:
        answers = row["answers"].values()
        rows.append([f"`{row['model']}`" if row["model"].endswith(".pt") else row["model"], f"{row['resize_size']} px",
                     f"{row['torchscript_batch1_ms']:.1f} / **{row['onnxruntime_batch1_ms']:.1f} ms** ({row['onnx_speedup_batch1']:.2f}×)",
                     f"{row['torchscript_batch32_ms']:.2f} / **{row['onnxruntime_batch32_ms']:.2f} ms** ({row['onnx_speedup_batch32']:.2f}×)",
                     f"{max(max(a['largest_probability_difference'], a['largest_known_score_difference']) for a in answers):.1e}",
                     f"{sum(a['verdict_differs'] for a in answers)} / {sum(a['top1_differs'] for a in answers)} of "
                     f"{sum(a['photos'] for a in answers):,}",
                     f"{row['torchscript_megabytes']} / {row['onnx_megabytes']} MB", f"{row['export_seconds']} s"])
    return markdown(["model", "square", "ms a photo, batches of 1: TorchScript / onnxruntime", "batches of 32",
                     "largest difference (probability or known score)", "verdict / top-1 differs", "file size",
                     "`export --format onnx`"], rows)


def readme_serve() -> str:
    """The README's one-cell summary of the service's load test."""
    record = load("serve")
    sixteen = next(r for r in record["rows"] if r["photos"] == "800x600" and r["concurrency"] == 16)
    one = next(r for r in record["rows"] if r["photos"] == "800x600" and r["concurrency"] == 1)
    soak = record["soak"]
    return (f"16 clients: **{rate(sixteen['photos_per_second'])}**, {record['sixteen_clients_over_batch_in_process']:.2f}× the "
            f"batch `tag` engine in the same run, p99 {sixteen['p99_ms']:.0f} ms, {sixteen['failed']} failed; one client: "
            f"**{one['p50_ms']:.1f} ms**, {record['one_client_over_single_photo_in_process']:.2f}× one photo in process; "
            f"memory {soak['rss_before_mb']} → {soak['rss_after_mb']} MB over {soak['requests']:,} requests "
            f"({soak['failed']} failed)")


def readme_runtimes() -> str:
    """The README's one-cell summary of TorchScript against onnxruntime (bench/runtimes.py, bench/serve.py)."""
    record, serve = load("runtimes"), load("serve")
    transfer = record["rows"][0]
    sixteen = next(r for r in serve["onnx_rows"] if r["concurrency"] == 16)
    one = next(r for r in serve["onnx_rows"] if r["concurrency"] == 1)
    answers = [sets for row in record["rows"] for sets in row["answers"].values()]
    probability = max(a["largest_probability_difference"] for a in answers)
    known = max(a["largest_known_score_difference"] for a in answers)
    return (f"probabilities within **{probability:.1e}**, known scores within {known:.1e} (steps of its percentile ranks), "
            f"{record['verdicts_differ']} of "
            f"{record['photos_compared']:,} verdicts differ ({len(record['rows'])} models, one with added landmarks); "
            f"one photo {transfer['torchscript_batch1_ms']:.1f} → **{transfer['onnxruntime_batch1_ms']:.1f} ms**, batches of 32 "
            f"{transfer['torchscript_batch32_ms']:.2f} → **{transfer['onnxruntime_batch32_ms']:.2f} ms** a photo; served "
            f"({sixteen['runtime']}): 16 clients {rate(sixteen['photos_per_second'])}, one client {one['p50_ms']:.1f} ms")


OPENSET_README = [("held-out scenes", "scenes (held-out photos)"),
                  ("held-out photos of other landmarks", "other landmarks (held-out photos)"),
                  ("9 landmarks never trained on", "other landmarks (never trained on)"),
                  ("full-size Haleakalā", "Haleakala (full-size)"),
                  ("{photos:,} everyday photos (animals, objects, food, people…)",
                   "everyday (categories never trained on)")]


def readme_openset() -> str:
    """The README's one-cell summary of the shipped transfer model's unknown detection."""
    rows = by_set(load("openset")["models"][0]["rows"], "msp_nearest")
    parts: list[str] = []
    for i, (label, name) in enumerate(OPENSET_README):
        r = rows[name]
        figures = [f"{r['auroc']:.4f}", pct(r["fpr95"]), pct(r["unknown_accepted"])]
        if i == 0:
            figures.append(pct(r["known_accepted"]))
        parts.append(f"{label.format(photos=r['unknown_photos'])} **{' / '.join(figures)}**")
    return "; ".join(parts)


def readme_add_landmarks() -> str:
    """The README's summary of adding the 9 never-seen landmarks from 10 photos each."""
    record = load("add_landmarks")
    rows = {(r["setting"], r["photos_per_landmark"]): r for r in record["rows"]}
    nine, one = rows["never trained against", 10], rows["one at a time", 10]
    scenes, scenes_before = pct(nine["unknown_accepted"]), pct(record["scenes_before"]["unknown_accepted"])
    scenes_note = "as before adding" if scenes == scenes_before else f"{scenes_before} before adding"
    speed, single = record["photos_per_second"], record["photos_per_second_one_at_a_time"]
    return (f"**{pct(nine['new_top1'])}** new top-1, **{pct(nine['new_accepted'])}** accepted, "
            f"{pct(nine['new_named_and_accepted'])} both (one landmark at a time: {pct(one['new_top1'])} / "
            f"**{pct(one['new_accepted'])}**); {pct(nine['original_top1'], 2)} original, "
            f"{pct(nine['original_accepted'])} of it accepted; scenes {scenes} accepted ({scenes_note}), "
            f"everyday photos never chosen on {pct(nine['everyday_left_out_accepted'])} "
            f"({pct(record['everyday_before']['everyday_left_out'])} before adding), other landmarks "
            f"{pct(nine['other_landmarks_accepted'])} ({pct(nine['other_landmarks_elsewhere'])} at another site; "
            f"{pct(record['other_landmarks_before'])} before adding), "
            f"never-seen landmarks {pct(one['unseen_landmarks_accepted'])} with one added "
            f"({pct(one['unseen_landmarks_elsewhere'])} at another site; {pct(record['unseen_landmarks_before'])} before adding); "
            f"{record['command_seconds_10_photos']:.1f} s for the whole command; "
            f"{speed['with_added_landmarks']:.1f} photos/s afterwards against {speed['base']:.1f}/s in the same run "
            f"(**{speed['with_added_landmarks'] / speed['base']:.2f}×**; one photo at a time "
            f"{single['with_added_landmarks']:.1f} against {single['base']:.1f}/s, "
            f"**{single['with_added_landmarks'] / single['base']:.2f}×**), "
            f"from a file {record['file_size_ratio']:.2f}× its base's")


def readme_sizes() -> str:
    """The README's summary of the default recipe on landmarks no recipe choice looked at."""
    record = load("sizes")
    plain = {(r["classes"], r["photos"]): r for r in record["rows"] if r["flags"] == "(none)"}
    minutes = [r["train_minutes"] for r in plain.values()]
    held = [plain["held out", "as is"], plain["held out", "thumbnails"]]
    seeds = seed_figures()
    held_seeds = [seeds["held out", "as is"], seeds["held out", "thumbnails"]]
    means, lowest = [sum(s) / len(s) for s in held_seeds], [min(s) for s in held_seeds]
    minutes += [r["train_minutes"] for r in load("sizes_seeds")["rows"]]
    if max(minutes) > 10 or min(means) < 0.975:
        verdict = ": not met"
    elif min(lowest) < 0.975:
        verdict = ": met on average, not at every seed"
    else:
        verdict = ""
    return (f"**{pct(held[0]['test_top1'], 2)}** (their photos as they are), **{pct(held[1]['test_top1'], 2)}** "
            f"as 256 px thumbnails; {pct(plain['tuned', 'as is']['test_top1'], 2)} / "
            f"{pct(plain['tuned', 'thumbnails']['test_top1'], 2)} on the {len(record['tuned'])} landmarks the "
            f"choices looked at; over {len(held_seeds[0])} seeds (`--seeds`) {pct(means[0], 2)} / {pct(means[1], 2)} "
            f"on average, {pct(lowest[0], 2)} / {pct(lowest[1], 2)} at the lowest; "
            f"{min(minutes):.1f}-{max(minutes):.1f} min of training for ~800 photos{verdict}")


def trained(name: str) -> str:
    """A command-line training run of one recipe (bench/train.py), without outlier exposure."""
    r = load(f"train_{name}")
    return (f"{pct(r['test_top1'], 2)} / {pct(r['test_top5'], 2)} (validation {pct(r['valid_accuracy'], 2)}), "
            f"{r['train_minutes']:.1f} min, {r['peak_memory_mb'] / 1000:.1f} GB")


def readme_shared_trunk() -> str:
    """The README's summary of both designs of a model with added landmarks on one 224 px base."""
    designs = load("shared_trunk")["designs"]
    return "; ".join(
        f"{design}: **{r['speed_ratio']:.2f}×** its base's photos/s, {r['file_size_ratio']:.2f}× its file, "
        f"{pct(r['never_trained_against']['new_named_and_accepted'])} of the new landmarks' photos named right and accepted, "
        f"left-out everyday photos {pct(r['never_trained_against']['everyday_left_out_accepted'])} accepted"
        for design, r in designs.items())


@generator("results")
def readme_results_table() -> str:
    """README.md: the targets and what was measured. Training times of the shipped (notebook) models come
    from the metrics JSON beside each export; everything else from bench/results."""
    scratch, transfer = load("predict_original_exported"), load("predict_transfer_exported")
    notebook = {name: load(f"{name}_exported", CHECKPOINTS)["train_seconds"] / 60 for name in ("original", "transfer")}
    memory = {name: load(f"train_{name}")["peak_memory_mb"] / 1000 for name in ("scratch", "transfer")}
    ref = load("reference_vs_ours")
    same_recipe = "same recipe from the command line, without `--negatives` (recipe from `src/recipes.py`, sizes from the rule)"
    rows = [
        ["scratch CNN top-1 / top-5 (`checkpoints/original_exported.pt`, with outlier exposure)", "≥ 90 %",
         f"**{pct(scratch['test_top1'], 2)} / {pct(scratch['test_top5'], 2)}**",
         "`cnn_from_scratch.ipynb` (`make notebooks`)"],
        ["its training time / peak memory", "≤ 60 min / ≤ 4 GB",
         f"**{notebook['original']:.1f} min** of epochs (the first two beside benchmark runs) / "
         f"{memory['scratch']:.1f} GB (command-line run)", "(same run)"],
        [same_recipe, "—", trained("scratch"), "`python bench/train.py scratch`"],
        ["transfer top-1 / top-5 (`checkpoints/transfer_exported.pt`, with outlier exposure)",
         "≥ 97 % (≥ 98 % with unknown detection)",
         f"**{pct(transfer['test_top1'], 2)} / {pct(transfer['test_top5'], 2)}**",
         "`transfer_learning.ipynb` (`make notebooks`)"],
        ["its training time / peak memory", "≤ 30 min / ≤ 4 GB",
         f"**{notebook['transfer']:.1f} min** / "
         f"{memory['transfer']:.1f} GB (command-line run)", "(same run)"],
        ["unknown detection, shipped transfer model",
         "AUROC ≥ 0.99, FPR@95TPR ≤ 5 %, ≤ 5 % unknown / ≥ 95 % known accepted", readme_openset(),
         "`python bench/openset.py` ([details](docs/unknown-photos.md#unknown-photos-and-places))"],
        ["new landmarks added from 10 photos each (the 9 never trained against, at once), shipped transfer model",
         "≥ 90 % new top-1 and accepted, ≥ 97.5 % original, ≤ 60 s, ≥ 0.5× the base's photos/s, ≤ 1.3× its file",
         readme_add_landmarks(),
         "`python bench/add_landmarks.py` ([details](docs/adding-landmarks.md#adding-landmarks-from-a-few-photos))"],
        ["the same, on a quick MobileNetV2 base read at 224 px: its shared trunk against a second network",
         "≥ 0.5× the base's photos/s, ≤ 1.3× its file", readme_shared_trunk(),
         "`python bench/shared_trunk.py --checkpoint CKPT` ([details](docs/adding-landmarks.md#two-designs-a-shared-trunk-or-a-second-network))"],
        [same_recipe, "—", trained("transfer"), "`python bench/train.py transfer`"],
        ["default transfer recipe on 9 landmarks no recipe choice looked at (`new_landmarks` 10-18)",
         "≥ 97.5 % within 10 min", readme_sizes(),
         "`python bench/sizes.py`, then `--seeds 0 1` ([details](docs/data.md#sizes-one-rule-for-small-and-full-size-photos))"],
        ["`predictor_test`, 2,000 test photos, shipped transfer model", "≤ 15 s",
         f"**{transfer['predictor_test_seconds']:.1f} s** (scratch model: {scratch['predictor_test_seconds']:.1f} s); "
         "this machine's speed drifts 2-3× between runs", "`python bench/predict.py checkpoints/transfer_exported.pt`"],
        ["one 800×600 JPEG → top-5, median, decode included", "≤ 20 ms",
         f"**{transfer['single_photo_top5_median_ms']:.1f} ms** (p90 {transfer['single_photo_top5_p90_ms']:.1f} ms; "
         f"scratch model {scratch['single_photo_top5_median_ms']:.1f} ms)", "(same run)"],
        ["HTTP service (`python -m src serve`), shipped transfer model, one 800×600 photo per request",
         "16 clients ≥ 0.6× batch in process, 0 failed; one client ≤ 1.5× in process; memory growth ≤ 10 % over 10,000 requests",
         readme_serve(), "`python bench/serve.py` ([details](docs/service.md#the-http-service))"],
        ["ONNX export (`export --format onnx`) against the TorchScript export, shipped transfer model, 2 threads",
         "probabilities within 1e-4, identical known/unknown; the faster runtime served", readme_runtimes(),
         "`python bench/runtimes.py`, `python bench/serve.py` ([details](docs/service.md#onnx-the-faster-runtime))"],
        ["reference transfer recipe (frozen MobileNetV2 at 224 px + linear, Adam, 15 epochs), same machine, same run",
         "—",
         f"{pct(ref['reference_test_top1'], 2)} top-1, `predictor_test` {ref['reference_predictor_test_seconds']:.1f} s, "
         f"one photo {ref['reference_single_photo_top5_median_ms']:.1f} ms; that run's MobileNetV2 export of this "
         f"project's recipe: {pct(ref['ours_test_top1'], 2)}, {ref['ours_predictor_test_seconds']:.1f} s, "
         f"{ref['ours_single_photo_top5_median_ms']:.1f} ms — **{ref['top1_error_ratio_reference_over_ours']:.1f}× "
         f"fewer errors, {ref['predictor_test_speedup']:.1f}× and {ref['single_photo_speedup']:.1f}× faster**",
         "`python bench/reference.py`"],
    ]
    return markdown(["what", "target", "measured", "command"], rows)


def regenerate(text: str, path: Path, show_diff: bool = False) -> tuple[str, list[str]]:
    """The text with every marked table rebuilt, and the names of those that changed (their diff printed
    when asked, so a failing check shows which figure moved)."""
    changed: list[str] = []

    def rebuild(match: re.Match[str]) -> str:
        name, indent = match["name"], match["indent"]
        if name not in TABLES:
            raise SystemExit(f"{path.relative_to(ROOT)}: no generator for table '{name}' (known: {', '.join(TABLES)})")
        table = "\n".join(indent + line for line in TABLES[name]().splitlines())
        body = f"\n{table}\n\n"
        if body != match["body"]:
            changed.append(name)
            if show_diff:
                sys.stdout.writelines(difflib.unified_diff(match["body"].splitlines(True), body.splitlines(True),
                                                           f"{path.name} ({name}, now)", f"{name} (from JSON)"))
        return f"{indent}<!-- table: {name} -->\n{body}{indent}<!-- /table -->"

    return MARKED.sub(rebuild, text), changed


def main() -> int:
    """Rewrite the docs, or with --check say which tables differ (exit 1) and write nothing."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a doc's table differs from the JSON")
    check = parser.parse_args().check
    found: set[str] = set()
    stale: list[str] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        found.update(match["name"] for match in MARKED.finditer(text))
        new, changed = regenerate(text, path, show_diff=check)
        stale += [f"{path.relative_to(ROOT)}: table '{name}'" for name in changed]
        if changed and not check:
            path.write_text(new, encoding="utf-8")
    missing = sorted(set(TABLES) - found)
    for line in stale:
        print(f"{line} {'differs from bench/results (run python bench/tables.py)' if check else 'rewritten'}")
    for name in missing:
        print(f"table '{name}' has no <!-- table: {name} --> marker in README.md or docs/*.md")
    return 1 if missing or (check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
