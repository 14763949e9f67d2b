"""A folder of ``{prompt: latent}`` .pt files read as a data set, and the one opener for latent data (an LMDB or
such a folder)."""
from pathlib import Path

import torch


class LatentFolderDataset(torch.utils.data.Dataset):
    """A folder of ``*.pt`` files holding ``{prompt: latent}`` (``compute_vae_latent.py`` output, [1, F, C, h, w],
    or ODE files [1, S, F, C, h, w], whose last slot is taken), sorted by name; items shaped like
    ``LatentLMDBDataset``'s: ``{"prompts": str, "clean_latent": float32 [F, C, h, w]}``. Files are opened
    memory-mapped, so listing the prompts reads no tensor data."""

    def __init__(self, folder):
        self.items = []
        for file in sorted(Path(folder).glob("*.pt")):
            data = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(data, dict):
                raise ValueError(f"{file}: expected a dict {{prompt: latent}}, got {type(data).__name__}")
            self.items.extend((file, str(prompt)) for prompt in data)
        if not self.items:
            raise FileNotFoundError(f"{folder}: no *.pt latent files")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        file, prompt = self.items[i]
        latent = torch.load(file, map_location="cpu", weights_only=True, mmap=True)[prompt].float()
        if latent.ndim == 6:  # [1, S, F, C, h, w]: the last slot is the clean latent
            latent = latent[:, -1]
        if latent.ndim == 5:
            latent = latent[0]
        if latent.ndim != 4:
            raise ValueError(f"{file}: latent of {prompt!r} has shape {tuple(latent.shape)}; expected [1, F, C, h, w]")
        return {"prompts": prompt, "clean_latent": latent}


def open_latent_dataset(path):
    """A latent LMDB (``causvid.data.datasets.LatentLMDBDataset``) or a folder of ``{prompt: latent}`` .pt files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"raw data {path} not found")
    if path.is_dir() and not (path / "data.mdb").exists() and any(path.glob("*.pt")):
        return LatentFolderDataset(path)
    from causvid.data.datasets import LatentLMDBDataset
    return LatentLMDBDataset(str(path))
