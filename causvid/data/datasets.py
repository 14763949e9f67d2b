"""Training datasets over the LMDB latent stores (the trainer picks each step's rows itself: a permutation per
epoch keyed by the seed, `causvid.training.trainer`).

* :class:`ODERegressionLMDBDataset` -- CausVid / Self-Forcing ODE pairs:
  ``{"prompts": str, "ode_latent": float32 [S, F, C, H, W]}``.
* :class:`LatentLMDBDataset` -- Causal-Forcing: the same plus
  ``"clean_latent"`` = the last slot ``[F, C, H, W]`` (the VAE latent for
  ``clean_data`` / the ground truth for ``ODE6KCausal``).
* prompt-only data: :class:`causvid.data.prompts.PromptDataset` (re-exported).

The LMDB environment is opened on the first ``__getitem__`` of each process
(read-only, ``lock=False``) and shared by every dataset of that process on the
same path (LMDB allows one handle per environment and process); a DataLoader
worker replaces a handle inherited through ``fork`` with its own.  Datasets hold
no handle themselves, so they pickle for ``spawn`` workers.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.utils.data

from causvid.data.lmdb import lmdb_errors, read_lmdb_meta, read_row, shared_lmdb
from causvid.data.prompts import PromptDataset

__all__ = [
    "ODERegressionLMDBDataset",
    "LatentLMDBDataset",
    "PromptDataset",
]


class ODERegressionLMDBDataset(torch.utils.data.Dataset):
    """Rows of an LMDB as ``{"prompts": str, "ode_latent": float32 tensor [S, F, C, H, W]}``.

    A row stored without a slot dim (``latents_shape`` ``"N F C H W"``, e.g.
    ``mixkit_latents_lmdb``) gets a leading slot dim of 1, as in the original.
    ``max_pair`` caps the number of rows used (the first ``max_pair``).
    """

    def __init__(self, path: str | os.PathLike, max_pair: int | None = None):
        self.path = os.fspath(path)
        self.num_rows, self.row_shape = read_lmdb_meta(self.path)
        if max_pair is not None and max_pair < 0:
            raise ValueError(f"max_pair must be >= 0, got {max_pair}")
        self.max_pair = max_pair

    def __len__(self) -> int:
        return self.num_rows if self.max_pair is None else min(self.num_rows, self.max_pair)

    def _ode_latent(self, i: int) -> tuple[torch.Tensor, str]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} rows of {self.path}")
        with lmdb_errors(self.path), shared_lmdb(self.path).begin() as txn:
            row, prompt = read_row(txn, i, self.row_shape)
        latent = torch.from_numpy(row.astype(np.float32))
        if latent.ndim == 4:
            latent = latent[None]
        return latent, prompt

    def __getitem__(self, i: int) -> dict:
        latent, prompt = self._ode_latent(int(i))
        return {"prompts": prompt, "ode_latent": latent}


class LatentLMDBDataset(ODERegressionLMDBDataset):
    """Causal-Forcing's view: ``{"prompts", "clean_latent": [F, C, H, W], "ode_latent": [S, F, C, H, W]}``.

    ``clean_latent`` is the last slot (``latents[-1]``): the VAE latent of
    ``clean_data`` (rows ``1 F C H W``) or ``mixkit_latents_lmdb``, and the ground
    truth of the ``ODE6KCausal`` rows.
    """

    def __getitem__(self, i: int) -> dict:
        latent, prompt = self._ode_latent(int(i))
        return {"prompts": prompt, "clean_latent": latent[-1], "ode_latent": latent}


# ----------------------------------------------------------------------------- sampling
