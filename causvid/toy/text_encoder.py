"""The toy world's text encoder: fixed hashed word embeddings behind :class:`WanTextEncoder`'s interface.

Recipe (no weights, no tokenizer, nothing trained):

1. clean: HTML entities unescaped twice (as Wan's cleaning does), lower-cased;
2. split into words: maximal runs of letters (Unicode letters; digits, ``_``, punctuation and spaces split);
3. word ``w`` -> a fixed vector ``N(0, 1) / sqrt(dim)`` in ``dim`` dimensions drawn from a ``torch.Generator``
   seeded with ``sha256(f"{seed}:{w}")`` (hashlib, so the same on every machine and Python process);
4. row ``t`` of a prompt's embedding is the vector of its ``t``-th word; rows past the word count are exactly
   zero (``[B, text_len, dim]``, like the real encoder's zero-padding past each prompt's true length). Prompts
   with more than ``text_len`` words are truncated with a warning.

So the same word always gives the same row, different prompts give different embeddings, and a prompt's
embedding depends only on its words. Settings (``dim``, ``seed``, ``text_len``) come from the toy folder's
``toy_world.json`` (see :mod:`causvid.toy.marker`).
"""
from __future__ import annotations

import hashlib
import html
import math
import os
import re
import warnings

import torch

from causvid.toy.marker import read_toy_config
from causvid.models.prompt_encoder import CachedPromptEncoder

__all__ = ["ToyTextEncoder", "prompt_words", "word_vector"]

_WORD_RE = re.compile(r"[^\W\d_]+")  # runs of (Unicode) letters


def prompt_words(prompt: str) -> list[str]:
    """The toy encoder's words of a prompt: HTML-unescaped, lower-cased, split on everything but letters."""
    text = html.unescape(html.unescape(str(prompt))).lower()
    return _WORD_RE.findall(text)


def word_vector(word: str, dim: int, seed: int) -> torch.Tensor:
    """The fixed float32 embedding of ``word``: ``N(0, I) / sqrt(dim)`` from a sha256 of ``(seed, word)``."""
    digest = hashlib.sha256(f"{int(seed)}:{word}".encode("utf-8")).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randn(int(dim), generator=gen, dtype=torch.float32) / math.sqrt(dim)


class ToyTextEncoder(CachedPromptEncoder):
    """Hashed word embeddings with :class:`causvid.models.text_encoder.WanTextEncoder`'s interface.

    ``encode(prompts) -> [B, text_len, dim]``; a per-instance LRU cache keyed by the prompt's word sequence
    (``cache_size=0`` disables it; ``.to()`` clears it), ``clear_cache``, ``cache_hits`` / ``cache_misses``,
    properties ``dim`` / ``device`` / ``dtype``. No parameters: nothing to train or freeze.
    """

    def __init__(self, dim: int, seed: int = 0, text_len: int = 512, cache_size: int = 128):
        if dim < 1 or text_len < 1:
            raise ValueError(f"dim and text_len must be positive, got dim={dim}, text_len={text_len}")
        super().__init__(text_len, cache_size)
        self._dim = int(dim)
        self.seed = int(seed)
        self._words: dict[str, torch.Tensor] = {}  # word -> float32 CPU vector (fixed, never invalid)
        # carries dtype and device through .to(); holds no data
        self.register_buffer("_anchor", torch.zeros(0, dtype=torch.float32), persistent=False)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None, *, text_len: int | None = None,
                        num_heads: int | None = None, cache_size: int = 128) -> "ToyTextEncoder":
        """Build from a toy folder's ``toy_world.json`` (``dim``, ``seed``; ``text_len`` unless given).

        ``dtype=None`` means float32. ``num_heads`` (a ``WanTextEncoder.from_pretrained`` keyword) is accepted
        and ignored, so callers can pass either class the same arguments."""
        settings = read_toy_config(path)["text_encoder"]
        enc = cls(dim=settings["dim"], seed=settings["seed"],
                  text_len=settings["text_len"] if text_len is None else text_len, cache_size=cache_size)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.replace("torch.", ""))
        return enc.to(device=device, dtype=dtype or torch.float32)

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    # ---------------------------------------------------------------- recipe
    def _vector(self, word: str) -> torch.Tensor:
        vec = self._words.get(word)
        if vec is None:
            vec = self._words[word] = word_vector(word, self._dim, self.seed)
        return vec

    def _embed_words(self, words: tuple[str, ...], prompt: str, stacklevel: int) -> torch.Tensor:
        if len(words) > self.text_len:
            warnings.warn(
                f"prompt truncated to {self.text_len} words: {len(words) - self.text_len} of its {len(words)} "
                f"words were dropped (prompt starts {prompt[:60]!r})", stacklevel=stacklevel)
            words = words[: self.text_len]
        if not words:
            return torch.zeros(0, self._dim, device=self.device, dtype=self.dtype)
        return torch.stack([self._vector(w) for w in words]).to(device=self.device, dtype=self.dtype)

    # the cache is keyed by the prompt's word sequence: prompts with the same words give the same rows
    def _key(self, prompt: str) -> tuple:
        return tuple(prompt_words(prompt))

    def _embed(self, keys: list, prompts: list) -> list:
        return [self._embed_words(k, p, stacklevel=5) for k, p in zip(keys, prompts)]  # warn at encode's caller

    def extra_repr(self) -> str:
        return f"dim={self._dim}, seed={self.seed}, text_len={self.text_len}"
