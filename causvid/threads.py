"""How many CPU threads torch runs on (`--threads N` on every command line), chosen for the work.

Measured by `python -m scripts.benchmark_threads` (the main job and a toy training stage, each with every thread
count side by side): on the shared 2-core machine at load average 7-12, a toy-size model (DiT width up to
`SMALL_DIT_DIM`) ran 15-17x slower on 2 threads than on 1 (inference and training alike: extra OpenMP threads
wait for cores other processes hold); on a quiet one a toy training stage ran 1.8-2.0x faster on 2 threads and
batch-1 sampling 1.2x (the toy pipeline's timings, 2026-11-30). So a toy-size model gets the cores that are idle
(cores minus the 1-minute load average, at least 1): every core on a quiet machine, one on a busy one. Wider
models (Wan's 1536 / 5120) split their large matmuls well and keep every core; on a GPU the CPU threads only feed
it. OMP_NUM_THREADS, when set, is the default (the usual cap, which the test runner sets).

No torch import at module level: a CLI adds the flag and reads a model folder's width before torch loads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from causvid.errors import positive_int

SMALL_DIT_DIM = 512  # toy 256, tiny test models 32-64; Wan2.1 1.3B is 1536


def add_threads_flag(parser) -> None:
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="CPU threads torch uses (torch.set_num_threads); default: OMP_NUM_THREADS if set, else "
                             f"for a toy- or tiny-size model (DiT width <= {SMALL_DIT_DIM}) on the CPU the idle "
                             "cores (1 on a busy machine; measured by scripts/benchmark_threads.py), otherwise every "
                             "core")


def cores() -> int:
    """The cores this process may run on (its CPU affinity), or os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def dit_width(folder) -> int | None:
    """The DiT width of a Wan folder from its config.json (original: `dim`; diffusers: heads x head dim), without
    loading anything; None when it can't be told."""
    for path in (Path(folder) / "config.json", Path(folder) / "transformer" / "config.json"):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            if isinstance(config.get("dim"), int):
                return config["dim"]
            heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
            if isinstance(heads, int) and isinstance(head_dim, int):
                return heads * head_dim
    return None


def default_threads(device: str = "cpu", width: int | None = None) -> tuple[int, str]:
    """(threads, why) for work on `device` with a DiT of `width` (None: unknown, taken as large)."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    if not str(device).startswith("cpu"):
        return cores(), "every core: the GPU does the work"
    if width is not None and width <= SMALL_DIT_DIM:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        idle = max(1, min(cores(), round(cores() - load)))
        return idle, (f"the idle cores for a DiT of width {width}: {cores()} cores, load average {load:.1f}")
    return cores(), "every core for a Wan-size model"


def _print(line: str) -> None:
    print(line, flush=True)


def use_threads(requested: int | None, device: str = "cpu", width: int | None = None, log=_print) -> int:
    """Set torch's intra-op threads to `requested` (--threads) or the default for the work, and say so in one
    line. Returns the number."""
    import torch

    if requested is None:
        threads, why = default_threads(device, width)
    else:
        threads, why = requested, "--threads"
    torch.set_num_threads(threads)
    if log is not None:
        log(f"threads: {threads} ({why}; --threads N to change)" if requested is None else f"threads: {threads} ({why})")
    return threads
