"""Attention for the Wan DiT: which token may see which (defined once), and the kernels that compute it.

Token layout: a sequence holds `num_frames` latent frames of `frame_tokens` tokens each, in (f, h, w) order.
Teacher forcing (Causal Forcing, stage 1) concatenates two such streams, [clean context ‖ noisy targets],
that share RoPE positions. Frames are grouped into blocks of `block` frames (1 = framewise, 3 = chunkwise).

The rule, `MaskSpec.allowed(q, k)`, is written with tensor ops on token indices only, so the same function
builds a dense boolean mask for SDPA and serves as a FlexAttention `mask_mod`:
- one stream: a token sees every token of its own block and of earlier blocks (blocks of `block` frames, or
  with `independent_first_frame` frame 0 alone and then blocks of `block`, Self-Forcing's [1, 3, 3, ...]);
- teacher forcing: a clean token sees clean tokens up to the end of its block; a noisy token of block b sees
  the noisy tokens of block b and the clean tokens of blocks 0..b-1;
- local window (`local_attn_size` frames, with `sink_size` first frames always kept): a key frame g is also
  required to satisfy g < sink or g >= block_end - (local_attn_size - sink). This is exactly what the rolling
  KV cache holds after writing that block, so cached streaming and the full forward agree.
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from causvid.wan_conventions import block_layout  # noqa: F401

try:  # optional: used on CUDA for unmasked attention in half precision
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - old torch
    create_block_mask = flex_attention = None

BACKENDS = ("auto", "sdpa", "flex", "flash")
_backend = "auto"


def set_attention_backend(name: str) -> None:
    """Choose the kernel: 'auto' (flash-attn / flex on CUDA, SDPA on CPU), 'sdpa', 'flex' or 'flash'."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    _backend = name


@dataclass(frozen=True)
class MaskSpec:
    num_frames: int          # latent frames per stream
    frame_tokens: int        # tokens per latent frame
    block: int = 1           # num_frame_per_block
    teacher_forcing: bool = False
    local_attn_size: int = -1  # frames; -1 = unlimited
    sink_size: int = 0
    independent_first_frame: bool = False  # frame 0 is a block of its own: [1, block, block, ...]

    def __post_init__(self):
        if self.block < 1:
            raise ValueError(f"num_frame_per_block must be >= 1, got {self.block}")
        if self.local_attn_size != -1 and self.local_attn_size < self.block + self.sink_size:
            raise ValueError(
                f"local_attn_size={self.local_attn_size} must be -1 or at least num_frame_per_block + sink_size "
                f"= {self.block + self.sink_size}: a block must fit in the window beside the sink")

    @property
    def seq_len(self) -> int:
        return self.num_frames * self.frame_tokens * (2 if self.teacher_forcing else 1)

    def allowed(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        stream_len = self.num_frames * self.frame_tokens
        q_frame, k_frame = (q_idx % stream_len) // self.frame_tokens, (k_idx % stream_len) // self.frame_tokens
        off = 1 if self.independent_first_frame else 0
        q_start = off + ((q_frame - off) // self.block) * self.block
        q_end = q_start + self.block
        if off:  # frame 0: a block of one frame
            q_start, q_end = torch.where(q_frame < off, 0, q_start), torch.where(q_frame < off, off, q_end)
        if self.teacher_forcing:
            q_noisy, k_noisy = q_idx >= stream_len, k_idx >= stream_len
            clean_end = torch.where(q_noisy, q_start, q_end)  # how far a query sees into the clean stream
            see_clean = ~k_noisy & (k_frame < clean_end)
            see_noisy = q_noisy & k_noisy & (k_frame >= q_start) & (k_frame < q_end)
            ok = see_clean | see_noisy
        else:
            ok = k_frame < q_end
        if self.local_attn_size != -1:
            ok = ok & ((k_frame < self.sink_size) | (k_frame >= q_end - (self.local_attn_size - self.sink_size)))
        return ok

    def dense(self, device=None) -> torch.Tensor:
        idx = torch.arange(self.seq_len, device=device)
        return self.allowed(idx[:, None], idx[None, :])


@functools.lru_cache(maxsize=16)
def _block_mask(spec: MaskSpec, device: str):
    return create_block_mask(lambda b, h, q, k: spec.allowed(q, k), None, None, spec.seq_len, spec.seq_len,
                             device=device)


@functools.lru_cache(maxsize=16)
def _dense_mask(spec: MaskSpec, device: str):
    return spec.dense(device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec = None) -> torch.Tensor:
    """Scaled dot-product attention on [B, L, heads, head_dim] tensors, optionally under a MaskSpec."""
    backend = _backend
    on_cuda = q.is_cuda
    half = q.dtype in (torch.float16, torch.bfloat16)
    if backend == "flash" or (backend == "auto" and mask is None and on_cuda and half and flash_attn_func):
        if mask is not None:
            raise ValueError("the flash-attn backend takes no mask; use 'flex' or 'sdpa' for masked attention")
        if flash_attn_func is None:
            raise RuntimeError("attention backend 'flash' requested but flash-attn is not installed")
        return flash_attn_func(q, k, v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, L, head_dim]
    if mask is not None and (backend == "flex" or (backend == "auto" and on_cuda)):
        if flex_attention is None:
            raise RuntimeError("attention backend 'flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
        block_mask = _block_mask(mask, str(q.device))
        fn = _compiled_flex() if on_cuda else flex_attention
        out = fn(q, k, v, block_mask=block_mask)
    else:
        dense = None if mask is None else _dense_mask(mask, str(q.device))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    return out.transpose(1, 2)
