"""Process-level helpers shared by the command lines: which torchrun rank this is, which device it uses,
rank-tagged logging, and atomic saves."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def atomic_save(obj, path) -> Path:
    """``torch.save`` to a temporary name next to ``path`` (not ending in .pt, so globs skip it), then
    ``os.replace``: a crash never leaves a truncated file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for plain python. No process group is needed:
    every rank works on its own items."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def pick_device(name: str | None) -> str:
    """'cuda' means this process's GPU (LOCAL_RANK) under torchrun."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(name)
    return name


def log(msg: str) -> None:
    rank, world = distributed_rank()
    print(f"[rank {rank}/{world}] {msg}", flush=True)


def pending_items(items, out: Path, name: str, what: str) -> tuple:
    """([(global index, item)] this torchrun rank still has to do, how many of its items are already done):
    the strided share of `items` whose output `out / name.format(index)` does not exist yet (a restart
    continues where the last run stopped)."""
    from causvid.data.prompts import shard_for_rank

    rank, world = distributed_rank()
    items = list(items)
    mine = shard_for_rank(items, rank, world)
    todo = [(i, item) for i, item in mine if not (Path(out) / name.format(i)).exists()]
    log(f"{len(mine)} of {len(items)} {what} on this rank, {len(mine) - len(todo)} already done")
    return todo, len(mine) - len(todo)
