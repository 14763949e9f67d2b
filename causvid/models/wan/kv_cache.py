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

Gradient (Self-Forcing training, `gradient="straight_through"`). The stored values carry no graph. But the
originals write each block's exit-step K/V into their cache in place with autograd on, and the no-grad
refresh pass then overwrites the values but not the graph: later blocks read the refresh values, and their
gradient flows to the exit-step K/V. Here that path is explicit: a with-grad write also records
`k - k.detach()` (zero-valued, with the graph) for its slots, and a with-grad read adds those records to the
values it returns. A write of new frames without grad clears its slots' records (the frame left the window);
a no-grad rewrite of the same frames (the refresh) keeps them. `gradient="detached"`: no records.

RoPE positions. `rope_positions="absolute"` (the originals): keys are rotated at their frame index before they
are stored. `"window"` (∞-RoPE's block-relativistic RoPE, 2511.20649): keys are stored un-rotated and every call
rotates the frames it reads at their rank in the window (the sink first, then the other frames in order), the
query block at the last ranks, so no position exceeds the window however long the stream runs; until the window
rolls, the ranks are the frame indices and both modes give the same outputs. The model reads the positions of
a call from `rope_frames()`.
"""
import torch


class KVCache:
    GRADIENTS = ("straight_through", "detached")
    ROPE_POSITIONS = ("absolute", "window")

    def __init__(self, num_layers: int, batch_size: int, max_frames: int = None, local_attn_size: int = -1,
                 sink_size: int = 0, gradient: str = "straight_through", rope_positions: str = "absolute"):
        if gradient not in self.GRADIENTS:
            raise ValueError(f"KVCache gradient={gradient!r}: expected one of {self.GRADIENTS}")
        if rope_positions not in self.ROPE_POSITIONS:
            raise ValueError(f"KVCache rope_positions={rope_positions!r}: expected one of {self.ROPE_POSITIONS}")
        self.gradient, self.rope_positions = gradient, rope_positions
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
        self.k_grad = [None] * num_layers  # straight-through records (zero values with a graph), or None
        self.v_grad = [None] * num_layers
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
        self.k_grad = [None] * self.num_layers
        self.v_grad = [None] * self.num_layers
        self._write_index = None
        self._valid_tokens = 0
        self._read_index = None  # token index of the valid slots when they are not a prefix (see seek)
        self._new_frames = False
        self._slot_frame = torch.full((self.capacity,), -1, dtype=torch.long)  # frame held per slot, -1 = empty
        self._rope_frames = None
        self.sink_start = 0  # first frame of the sink (moved by a re-sink)

    def seek(self, frame: int) -> None:
        """Make `frame` the next frame to write, leaving the frames before it unwritten (a prompt switch's
        re-cache writes the sink and the window's last frames again, skipping those evicted)."""
        self.frames_end = self.block_start = frame

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
        """Slot of each frame: the sink's frames [sink_start, sink_start + sink_size) in slots 0..sink-1, every
        other frame in the ring after them (frames before a moved sink too, until later frames overwrite them)."""
        ring = self.capacity - self.sink_size
        rel = frame - self.sink_start
        return torch.where((rel >= 0) & (rel < self.sink_size), rel, self.sink_size + (rel - self.sink_size) % ring)

    def move_sink(self, frame: int) -> None:
        """Make frames [frame, frame + sink_size) the sink from now on (a prompt switch's re-sink): call on an
        empty cache (after `reset`), before writing again."""
        if not self.rolling:
            raise ValueError("only a rolling window (local_attn_size) has a sink to move")
        self.sink_start = frame

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
        self._new_frames = next_block
        self.block_start, self.frames_end = start_frame, end
        frames = torch.arange(start_frame, end)
        self._slot_frame[self.slot_of_frame(frames)] = frames
        slots = self.slot_of_frame(frames.to(device))
        self._write_index = (slots[:, None] * frame_tokens + torch.arange(frame_tokens, device=device)).flatten()
        filled = int((self._slot_frame >= 0).sum())
        self._valid_tokens = filled * frame_tokens
        self._read_index = None
        read_slots = torch.arange(filled)
        if not bool((self._slot_frame[:filled] >= 0).all()):  # filled slots with gaps: read them by index
            read_slots = torch.nonzero(self._slot_frame >= 0).flatten()
            valid = read_slots.to(device)
            self._read_index = (valid[:, None] * frame_tokens + torch.arange(frame_tokens, device=device)).flatten()
        self._rope_frames = self._window_ranks(frames, read_slots) if self.rope_positions == "window" else None

    def _window_ranks(self, frames: torch.Tensor, read_slots: torch.Tensor) -> tuple:
        """Positions of the query frames and of the frames read (in read order): ranks in the window, the sink
        first, then the other frames by index."""
        held = self._slot_frame[read_slots]
        sink = (held >= self.sink_start) & (held < self.sink_start + self.sink_size)
        order = torch.argsort(torch.where(sink, held - (1 << 40), held))
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        slot_rank = torch.full((self.capacity,), -1, dtype=torch.long)
        slot_rank[read_slots] = rank
        return slot_rank[self.slot_of_frame(frames)], rank

    def rope_frames(self):
        """For `rope_positions="window"`: (query frame positions, read frame positions) of this call, set by
        `begin`; None for absolute positions (the model then rotates at the frame indices)."""
        return self._rope_frames

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """Write this block's K/V ([B, n, heads, head_dim]) for `layer`; return all K/V the block attends to."""
        if self.k[layer] is None:
            shape = (k.shape[0], self.capacity * self.frame_tokens) + tuple(k.shape[2:])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        idx, n = self._write_index, self._valid_tokens
        # The cache stores detached values, so later in-place writes never touch tensors autograd saved; the
        # gradient across blocks goes through the straight-through records (see the module docstring).
        self.k[layer].index_copy_(1, idx, k.detach().to(self.k[layer].dtype))
        self.v[layer].index_copy_(1, idx, v.detach().to(self.v[layer].dtype))
        with_grad = k.requires_grad or v.requires_grad
        if self.gradient == "straight_through":
            self.k_grad[layer] = self._record(self.k_grad[layer], self.k[layer], k, with_grad)
            self.v_grad[layer] = self._record(self.v_grad[layer], self.v[layer], v, with_grad)
        if self._read_index is not None:
            if with_grad:
                raise RuntimeError("a KV cache with unwritten slots (mid re-cache) cannot be read with gradient")
            return self.k[layer].index_select(1, self._read_index), self.v[layer].index_select(1, self._read_index)
        ks, vs = self.k[layer][:, :n], self.v[layer][:, :n]
        if with_grad:
            if self.k_grad[layer] is not None:  # values of the cache, gradient to the earlier exit steps
                ks, vs = ks + self.k_grad[layer][:, :n], vs + self.v_grad[layer][:, :n]
            # the block's own K/V keep their gradient (out-of-place copy)
            ks, vs = ks.index_copy(1, idx, k.to(ks.dtype)), vs.index_copy(1, idx, v.to(vs.dtype))
        return ks, vs

    def _record(self, record, store, new, with_grad):
        """Update one layer's straight-through record for this call's slots (out of place, graph kept)."""
        idx = self._write_index
        if with_grad:
            with torch.enable_grad():
                base = store.new_zeros(store.shape) if record is None else record
                return base.index_copy(1, idx, (new - new.detach()).to(store.dtype))
        if record is not None and self._new_frames:  # new frames replace the slots' old ones: drop their records
            with torch.enable_grad():
                return record.index_fill(1, idx, 0.0)
        return record
