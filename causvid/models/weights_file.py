"""The checks of a weights file that need no torch (so a CLI fails on a bad file before torch loads): its first
bytes are a torch.save zip / pickle or a safetensors header."""
from pathlib import Path

from causvid.errors import UsageError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(UsageError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def check_weights_file(path) -> None:
    """Read the first bytes of a .pt / .safetensors file: fail with a CheckpointError naming it when it is empty,
    a text file or cut short, before anything is loaded."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; expected a checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); download or save it again")
    if path.suffix == ".safetensors":
        header = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
        if not 0 < header <= size - 8 or head[8:9] != b"{":
            raise CheckpointError(f"{path}: not a safetensors file (no header; starts with {head[:8]!r}) or cut "
                                  "short; download or save it again")
    elif path.suffix in TORCH_SUFFIXES and not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip or a pickle; this file "
                              f"starts with {head[:12]!r}); point at the .pt that training or the release wrote")
