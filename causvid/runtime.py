"""Process-level helpers shared by the command lines: which torchrun rank this is, which device it uses,
rank-tagged logging, atomic saves, and the checks of an output folder. torch is imported where it is used, so the
torch-free data scripts can use the file helpers."""
from __future__ import annotations

import os
import re
from pathlib import Path

from causvid.errors import UsageError


def atomic_save(obj, path) -> Path:
    """``torch.save`` to a temporary name next to ``path`` (not ending in .pt, so globs skip it), then
    ``os.replace``: a crash never leaves a truncated file under the final name."""
    import torch

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


def write_text_atomic(path, text: str) -> Path:
    """Write `text` (UTF-8) to a temporary file next to `path`, then ``os.replace``: a crash never leaves a
    half-written file, and the file gets the permissions a plain ``open`` would give (the user's umask)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def check_output_folder(path, what: str) -> Path:
    """Fail now, before any model loads, when `path` can't become a writable folder; `what` names it in the
    message ("--output_folder"). Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file, not a folder; pass a folder (it is created if missing)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {path}: {existing} is a file, so no folder can be made under it; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {existing} is not writable (permission denied); pass a folder you can "
                         "write to, or fix its permissions")
    return path


def check_wan_folder(path, what: str = "wan_model_path",
                     fix: str = "set wan_model_path in the config or pass --wan_model_path") -> Path:
    """The Wan folder `what` (a flag or config key) names, or a UsageError saying what is wrong with it; `fix`
    says how to give another, as this command takes it."""
    path = Path(path)
    if path.is_file():
        raise UsageError(f"{what} {path} is a file; pass the Wan model folder that holds it ({path.parent}?): "
                         "config.json, the DiT weights, Wan2.1_VAE.pth and the umT5 text encoder")
    if not path.is_dir():
        raise UsageError(f"{what}: Wan model folder {path} not found ({fix}; download with: hf download "
                         "Wan-AI/Wan2.1-T2V-1.3B --local-dir wan_models/Wan2.1-T2V-1.3B)")
    return path


_DEVICE = re.compile(r"^(cpu|cuda)(:\d+)?$")


def torch_cuda_build():
    """The CUDA version this torch was built with ('12.4'), or None for a CPU build, read from torch/version.py
    without importing torch (seconds on a busy machine), so `--device cuda` on a CPU build fails at once."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except (AttributeError, TypeError, OSError):
        return "unknown"  # can't tell: let torch decide later
    match = re.search(r"^cuda(?::[^=]*)?=\s*(.+)$", text, re.M)
    value = match.group(1).strip().strip("'\"") if match else "unknown"
    return None if value == "None" else value


def check_device_name(name: str | None, what: str = "--device") -> None:
    """What can be told of a device name before torch loads: its form, and that a CUDA device needs a CUDA build
    of torch. `pick_device` checks the rest (a GPU visible, its index)."""
    if name is None:
        return
    if not _DEVICE.match(name):
        raise UsageError(f"{what} {name!r} is not a device; use cpu or cuda (cuda:N for GPU N)")
    if name.startswith("cuda") and torch_cuda_build() is None:
        raise UsageError(f"{what} {name}: CUDA is not available here (this torch is built without CUDA); "
                         f"use {what} cpu")


def pick_device(name: str | None, what: str = "--device") -> str:
    """'cuda' means this process's GPU (LOCAL_RANK) under torchrun. A device this machine lacks, or a name
    torch does not know, is a UsageError naming `what`."""
    import torch

    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"{what} {name!r} is not a device; use cpu or cuda (cuda:N for GPU N)") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{what} {name!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise UsageError(f"{what} {name}: CUDA is not available here ({why}); use {what} cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{what} {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
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
