"""Randomness keyed by what it is for: (seed, step, global sample index, purpose) in training, (seed, item
index) in data generation and inference.

Every noise tensor, timestep and exit step is drawn from a generator seeded by its key, never from a stream
shared across samples. So a run gives the same numbers on 1 or 8 processes, with or without gradient
accumulation, after a resume (there is no RNG state to save), and whatever order prompts are processed in.
"""
import hashlib

import torch


def key_seed(*key) -> int:
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*key) -> torch.Generator:
    return torch.Generator().manual_seed(key_seed(*key))


def randn(shape, *key, device=None, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=generator(*key)).to(device=device, dtype=dtype)


def rand(shape, *key, device=None) -> torch.Tensor:
    return torch.rand(shape, generator=generator(*key)).to(device)


def randint(high: int, shape, *key, device=None) -> torch.Tensor:
    return torch.randint(high, shape, generator=generator(*key)).to(device)


def per_sample(fn, shape, samples, *key, device=None, **kw) -> torch.Tensor:
    """Stack fn(shape, *key, sample) for each global sample index: a batch whose rows do not depend on which
    other samples share the batch (or the process)."""
    return torch.stack([fn(shape, *key, int(s), **kw) for s in samples]).to(device)
