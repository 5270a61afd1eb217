"""What every benchmark shares: where results go, peak memory, and printing a figure table."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))  # run as `python bench/<script>.py` from anywhere

from src.allocator import keep_freed_memory  # noqa: E402  (after the path)

# every benchmark runs in a process set up as the entry points set theirs (src/allocator.py); bench/passes.py sets
# BENCH_ALLOCATOR=glibc in the child it compares against, left as glibc comes (any MALLOC_* setting would not be)
FREED_MEMORY_KEPT = keep_freed_memory() if os.environ.get("BENCH_ALLOCATOR") != "glibc" else False


def peak_memory_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or of its finished child processes), in MB."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024  # Linux reports kilobytes


def machine() -> dict[str, Any]:
    return {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(), "torch": torch.__version__,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M")}


def write_result(name: str, record: dict[str, Any], results: Path = RESULTS) -> Path:
    """Print ``record`` as an aligned table and save it to ``<results>/<name>.json``."""
    record = {**record, "machine": machine(), "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    width = max(len(key) for key in record)
    for key, value in record.items():
        if not isinstance(value, (dict, list)):
            print(f"{key:<{width}}  {value}")
    print(f"(all figures in {path})")
    return path
