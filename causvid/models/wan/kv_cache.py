"""Streaming state of the DiT: self-attention K/V per layer for the frames made so far, and the
cross-attention K/V of the prompt (computed once per prompt, reused by every block and denoising step).

Slots. Keys are stored after RoPE (absolute frame positions are baked in), so attention does not care in
which order the cached frames sit. That lets the rolling window be a ring buffer instead of shifting the
whole cache left on every block as Self-Forcing does: frame g lives in slot g while the cache is not full;
past that, the first `sink_size` frames keep slots 0..sink-1 and every later frame g takes slot
sink + (g - sink) % (capacity - sink), overwriting exactly the frame that leaves the window.

Calls. Each forward with a cache passes one block of new frames at `start_frame`: either the next block
(start_frame == frames written so far) or the same block again (another denoising step, or the cache
refresh pass on the clean block), which overwrites the same slots.
"""
import torch


class KVCache:
    def __init__(self, num_layers: int, batch_size: int, max_frames: int = None, local_attn_size: int = -1,
                 sink_size: int = 0):
        if local_attn_size == -1:
            if max_frames is None:
                raise ValueError("KVCache needs max_frames, or local_attn_size for a rolling window")
            capacity = max_frames
        else:
            if local_attn_size <= sink_size:
                raise ValueError(f"local_attn_size={local_attn_size} must exceed sink_size={sink_size}")
            capacity = local_attn_size if max_frames is None else min(local_attn_size, max_frames)
        self.num_layers, self.batch_size = num_layers, batch_size
        self.capacity, self.local_attn_size, self.sink_size = capacity, local_attn_size, sink_size
        self.k = [None] * num_layers
        self.v = [None] * num_layers
        self.cross = [None] * num_layers
        self.context = None
        self.frame_tokens = None
        self.reset()

    @property
    def rolling(self) -> bool:
        return self.local_attn_size != -1

    def reset(self) -> None:
        """Forget all frames and the prompt (allocated memory is kept for the next video)."""
        self.frames_end = 0  # frames [0, frames_end) have been written
        self.block_start = 0  # first frame of the last block written
        self.context = None
        self.cross = [None] * self.num_layers
        self._write_index = None
        self._valid_tokens = 0

    # -- prompt -------------------------------------------------------------------------------------
    def holds_context(self, context: torch.Tensor) -> bool:
        """True when the cross-attention K/V stored here were computed from this very context."""
        if self.context is None or context is None:
            return self.context is not None and context is None
        return self.context is context or (self.context.shape == context.shape and torch.equal(self.context, context))

    def set_context(self, context: torch.Tensor) -> None:
        self.context = context
        self.cross = [None] * self.num_layers

    # -- frames -------------------------------------------------------------------------------------
    def slot_of_frame(self, frame: torch.Tensor) -> torch.Tensor:
        ring = self.capacity - self.sink_size
        return torch.where(frame < self.sink_size, frame, self.sink_size + (frame - self.sink_size) % ring)

    def begin(self, start_frame: int, num_frames: int, frame_tokens: int, device) -> None:
        """Validate a call for frames [start_frame, start_frame + num_frames) and prepare its slot writes."""
        if self.frame_tokens is not None and frame_tokens != self.frame_tokens:
            raise ValueError(f"KV cache holds {self.frame_tokens} tokens per frame; this call has {frame_tokens} "
                             "(a different latent resolution needs a new cache)")
        end = start_frame + num_frames
        next_block = start_frame == self.frames_end
        same_block = start_frame == self.block_start and end == self.frames_end and self.frames_end > 0
        if not (next_block or same_block):
            raise ValueError(
                f"KV cache holds frames [0, {self.frames_end}) with last block starting at {self.block_start}; a "
                f"call for frames [{start_frame}, {end}) is neither the next block nor a repeat of the last one")
        if self.rolling and num_frames > self.capacity - self.sink_size:
            raise ValueError(f"a block of {num_frames} frames does not fit the rolling window of "
                             f"{self.capacity} frames with {self.sink_size} sink frames")
        if not self.rolling and end > self.capacity:
            raise ValueError(f"KV cache holds at most {self.capacity} frames (max_frames); frame {end - 1} "
                             "does not fit: allocate a larger cache or use local_attn_size for a rolling window")
        self.frame_tokens = frame_tokens
        self.block_start, self.frames_end = start_frame, end
        slots = self.slot_of_frame(torch.arange(start_frame, end, device=device))
        self._write_index = (slots[:, None] * frame_tokens + torch.arange(frame_tokens, device=device)).flatten()
        self._valid_tokens = min(end, self.capacity) * frame_tokens

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """Write this block's K/V ([B, n, heads, head_dim]) for `layer`; return all K/V the block attends to."""
        if self.k[layer] is None:
            shape = (k.shape[0], self.capacity * self.frame_tokens) + tuple(k.shape[2:])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        idx, n = self._write_index, self._valid_tokens
        # The cache stores detached values: context K/V carry no gradient across blocks (as in Self-Forcing),
        # and later in-place writes must not touch tensors that autograd saved.
        self.k[layer].index_copy_(1, idx, k.detach().to(self.k[layer].dtype))
        self.v[layer].index_copy_(1, idx, v.detach().to(self.v[layer].dtype))
        ks, vs = self.k[layer][:, :n], self.v[layer][:, :n]
        if k.requires_grad or v.requires_grad:  # the block's own K/V keep their gradient (out-of-place copy)
            ks, vs = ks.index_copy(1, idx, k.to(ks.dtype)), vs.index_copy(1, idx, v.to(vs.dtype))
        return ks, vs
