"""Training datasets over the LMDB latent stores, and a resumable distributed loader.

* :class:`ODERegressionLMDBDataset` -- CausVid / Self-Forcing ODE pairs:
  ``{"prompts": str, "ode_latent": float32 [S, F, C, H, W]}``.
* :class:`LatentLMDBDataset` -- Causal-Forcing: the same plus
  ``"clean_latent"`` = the last slot ``[F, C, H, W]`` (the VAE latent for
  ``clean_data`` / the ground truth for ``ODE6KCausal``).
* prompt-only data: :class:`causvid.data.prompts.PromptDataset` (re-exported).
* :func:`distributed_loader` -- a DataLoader whose per-rank order depends only on
  ``(seed, epoch)`` and that can start at any global sample position.

The LMDB environment is opened on the first ``__getitem__`` of each process
(read-only, ``lock=False``) and shared by every dataset of that process on the
same path (LMDB allows one handle per environment and process); a DataLoader
worker replaces a handle inherited through ``fork`` with its own.  Datasets hold
no handle themselves, so they pickle for ``spawn`` workers.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch
import torch.utils.data

from causvid.data.lmdb import lmdb_errors, read_lmdb_meta, read_row, shared_lmdb
from causvid.data.prompts import PromptDataset

__all__ = [
    "ODERegressionLMDBDataset",
    "LatentLMDBDataset",
    "PromptDataset",
    "ResumableDistributedSampler",
    "distributed_loader",
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


def _check_rank(rank: int, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global sample order of one epoch: a function of ``(seed, epoch)`` only."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class ResumableDistributedSampler(torch.utils.data.Sampler):
    """Endless, deterministic per-rank sample indices, resumable at any global position.

    The global stream is epoch 0, epoch 1, ...; each epoch is :func:`epoch_order`
    cut (``drop_last``) or wrapped around (not ``drop_last``) to a whole number
    of global batches ``batch_size * world_size``, so every batch is full and no
    batch spans two epochs.  Rank ``r`` takes the global positions ``r, r + W,
    r + 2W, ...`` (the strided split of ``DistributedSampler``).  After ``k``
    steps the ranks together have consumed ``k * batch_size * world_size``
    samples: that number, as ``start_index``, continues the stream exactly.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        start_index: int = 0,
    ):
        _check_rank(rank, world_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        if start_index < 0 or start_index % world_size:
            raise ValueError(
                f"start_index must be a non-negative multiple of world_size={world_size} "
                f"(a global sample position reached by all ranks), got {start_index}"
            )
        global_batch = batch_size * world_size
        if drop_last and num_samples < global_batch:
            raise ValueError(
                f"{num_samples} samples are fewer than one global batch ({batch_size} x {world_size} ranks); "
                f"use drop_last=False to repeat samples"
            )
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle, self.start_index = seed, shuffle, start_index
        per_epoch = num_samples // global_batch if drop_last else -(-num_samples // global_batch)
        self.samples_per_epoch = per_epoch * global_batch  # global samples per epoch

    def _epoch(self, epoch: int) -> np.ndarray:
        """Global order of one epoch, cut or wrapped to ``samples_per_epoch``."""
        order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
        return np.resize(order, self.samples_per_epoch)  # np.resize repeats from the start

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start_index, self.samples_per_epoch)
        while True:
            order = self._epoch(epoch)
            for pos in range(offset + self.rank, self.samples_per_epoch, self.world_size):
                yield int(order[pos])
            epoch, offset = epoch + 1, 0


def distributed_loader(
    dataset,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    start_index: int = 0,
) -> torch.utils.data.DataLoader:
    """An endless DataLoader giving rank ``rank`` its ``batch_size`` samples per step.

    The order depends only on ``(seed, epoch)`` (not on torch's global RNG nor on
    ``num_workers``).  ``start_index`` is a global sample position (summed over
    ranks): to resume after ``step`` steps pass ``step * batch_size * world_size``;
    the batches then equal those an uninterrupted run would have produced.
    Use it with ``next(iterator)``; ``len()`` is undefined (the stream is endless).
    """
    sampler = ResumableDistributedSampler(
        len(dataset), batch_size, rank, world_size, seed, shuffle, drop_last, start_index
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=False,  # every batch is full by construction
        persistent_workers=num_workers > 0,
    )
