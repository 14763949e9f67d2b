"""What every text encoder of the project shares (umT5 and the toy world's hashed words): prompts in,
`[B, text_len, dim]` out with rows past each prompt's length exactly zero, each distinct prompt encoded once.

Subclasses say how a prompt is keyed (`_key`, e.g. Wan's cleaned text) and how a list of new keys is embedded
(`_embed`, one trimmed `[length, dim]` tensor each); the LRU cache of the last `cache_size` keys, its counters,
and the zero-padded batch live here. The cache assumes frozen weights: `.to()` clears it, `clear_cache()` does
on demand, `cache_size=0` turns it off.
"""
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn


class CachedPromptEncoder(nn.Module):
    def __init__(self, text_len: int, cache_size: int = 128):
        super().__init__()
        self.text_len = int(text_len)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    # subclasses: key of a prompt, embeddings of new keys (prompts given for messages), dim/device/dtype
    def _key(self, prompt: str):
        raise NotImplementedError

    def _embed(self, keys: list, prompts: list) -> list:
        raise NotImplementedError

    def clear_cache(self) -> None:
        """Drop all cached prompt embeddings (and reset the hit/miss counters)."""
        self._cache.clear()
        self.cache_hits = 0
        self.cache_misses = 0

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(), ... invalidate cached tensors
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def encode(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """``[B, text_len, dim]``, rows past each prompt's length exactly zero."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        keys = [self._key(p) for p in prompts]
        found, todo, todo_prompts = {}, [], []
        for prompt, key in zip(prompts, keys):
            if key in found or key in todo:
                continue
            if self.cache_size > 0 and key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
                self.cache_hits += 1
            else:
                todo.append(key)
                todo_prompts.append(prompt)
        if todo:
            self.cache_misses += len(todo)
            for key, emb in zip(todo, self._embed(todo, todo_prompts)):
                found[key] = emb
                if self.cache_size > 0:
                    self._cache[key] = emb
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        with torch.no_grad():
            out = torch.zeros(len(prompts), self.text_len, self.dim, device=self.device, dtype=self.dtype)
            for i, key in enumerate(keys):
                emb = found[key]
                out[i, : emb.shape[0]] = emb
        return out

    def forward(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(prompts)
