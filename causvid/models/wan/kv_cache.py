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

Gradient (Self-Forcing training, `gradient="straight_through"`). As in the originals, each layer's store is one
tensor that a with-grad call writes in place with autograd on: it then carries the graph of every exit step's
K/V it holds. The no-grad refresh pass overwrites the values but not the graph, so later blocks read the
refresh values and their gradient flows to the exit-step K/V (the straight-through path). A write of new
frames without grad cuts its slots' graph (the frame left the window); a no-grad rewrite of the same frames
(the refresh) keeps it. `gradient="detached"`: the store never carries a graph. Either way a with-grad call
attends to its own block's K/V with their gradient.

Activation checkpointing. A layer's use of the cache in one call is a `CacheCall`, made before the layer runs
and handed to it: its first run writes the store and freezes what it read (views of the store, which later
calls of a global cache never overwrite at those slots; in a rolling window, whose slots later frames reuse, an
undo log keeps the values each new block overwrites once a with-grad call has read them), so
a recomputation in backward reads what the forward read and writes nothing. Held for backward per layer: the
store, once (the original's cache), and no copy per call.

RoPE positions. `rope_positions="absolute"` (the originals): keys are rotated at their frame index before they
are stored. `"window"` (∞-RoPE's block-relativistic RoPE, 2511.20649): keys are stored un-rotated and every call
rotates the frames it reads at their rank in the window (the sink first, then the other frames in order), the
query block at the last ranks, so no position exceeds the window however long the stream runs; until the window
rolls, the ranks are the frame indices and both modes give the same outputs. The model reads the positions of
a call from `rope_frames()`.
"""
import torch
from torch.autograd.graph import saved_tensors_hooks


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
        # a training rollout's graph (straight-through) is dropped; the stores' memory is kept
        self.k = [None if t is None else t.detach() for t in self.k]
        self.v = [None if t is None else t.detach() for t in self.v]
        self._current = None  # the CacheCall whose first run is writing
        self._undo = [None] * self.num_layers  # per layer, once read with grad: [(slots, old K, old V)] (rolling)
        self._write_index = None
        self._valid_tokens = 0
        self._read_index = None  # token index of the valid slots when they are not a prefix (see seek)
        self._new_frames = False
        self._slot_frame = torch.full((self.capacity,), -1, dtype=torch.long)  # frame held per slot, -1 = empty
        self._rope_frames = None
        self.sink_start = 0  # first frame of the sink (moved by a re-sink)

    def held_frames(self) -> list:
        """The frame each slot holds, in slot order (-1: a slot nothing has been written to since `reset`)."""
        return self._slot_frame.tolist()

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

    def begin(self, start_frame: int, num_frames: int, frame_tokens: int, device, batch: int = None) -> None:
        """Validate a call for frames [start_frame, start_frame + num_frames) (of `batch` videos, when given) and
        prepare its slot writes."""
        if batch is not None and batch != self.batch_size:
            raise ValueError(f"KV cache made for batch {self.batch_size}; this call has batch {batch}")
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

    def call(self, layer: int) -> "CacheCall":
        """This forward call's use of `layer` (see the module docstring): hand it to the layer."""
        return CacheCall(self, layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """Write this block's K/V ([B, n, heads, head_dim]) for `layer`; return all K/V the block attends to."""
        call, self._current = self._current, None
        if self.k[layer] is None:
            shape = (k.shape[0], self.capacity * self.frame_tokens) + tuple(k.shape[2:])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        idx, n = self._write_index, self._valid_tokens
        with_grad = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
        if with_grad:
            if self._read_index is not None:
                raise RuntimeError("a KV cache with unwritten slots (mid re-cache) cannot be read with gradient")
            # what this call reads besides its own block: the store itself (views), and in a rolling window the
            # undo log from here on, which gives back the values later frames overwrite (see `past_values`)
            past = (self.k[layer][:, :n], self.v[layer][:, :n])
            self._undo[layer] = self._undo[layer] if self._undo[layer] is not None else []
            if call is not None:
                call.past = past + (idx, self._undo[layer], len(self._undo[layer]))
        if self._new_frames and self.rolling and self._undo[layer] is not None:
            # new frames take slots a with-grad call read: keep the values they held, for its recomputation
            self._undo[layer].append((idx,) + tuple(s.detach().index_select(1, idx) for s in (self.k[layer],
                                                                                                self.v[layer])))
        for store, new in ((self.k[layer], k), (self.v[layer], v)):
            self._write(store, new, with_grad and self.gradient == "straight_through")
        if with_grad:
            return attend_past(*past, idx, k, v)
        if self._read_index is not None:
            return self.k[layer].index_select(1, self._read_index), self.v[layer].index_select(1, self._read_index)
        return self.k[layer][:, :n], self.v[layer][:, :n]

    def _write(self, store, new, keep_graph):
        """Write `new` into this call's slots of `store`, in place: with its graph (straight-through), or values
        only, cutting the slots' graph when they take new frames."""
        cut = self._new_frames and store.requires_grad
        # own saved-tensor hooks: the write is the first run's alone, so activation checkpointing must not count
        # what it saves (the index) among the tensors its recomputation has to reproduce
        with torch.set_grad_enabled(keep_graph or cut), saved_tensors_hooks(_keep, _keep):
            store.index_copy_(1, self._write_index, (new if keep_graph else new.detach()).to(store.dtype))


def _keep(t):
    return t


def past_values(past_k, past_v, positions, undo, read_at) -> tuple:
    """(K, V, positions) a with-grad call read, for its recomputation: the store's views, with the slots that
    frames written since (a rolling window's) have taken given back their values, newest entry first."""
    later = undo[read_at:]
    if not later:
        return past_k, past_v, positions
    with torch.no_grad():  # values only: the backward's graph is the first run's
        past_k, past_v = past_k.clone(), past_v.clone()
        for index, old_k, old_v in reversed(later):
            keep = index < past_k.shape[1]
            past_k.index_copy_(1, index[keep], old_k[:, keep])
            past_v.index_copy_(1, index[keep], old_v[:, keep])
    return past_k, past_v, positions


def attend_past(past_k, past_v, positions, k, v) -> tuple:
    """The K/V a with-grad call attends to: what it read from the cache, its own block's K/V (with their
    gradient) at `positions`."""
    return past_k.index_copy(1, positions, k.to(past_k.dtype)), past_v.index_copy(1, positions, v.to(past_v.dtype))


class CacheCall:
    """One layer's use of a `KVCache` in one forward call: the prompt's cross-attention K/V as they were when the
    call began, and (after its first run, for a with-grad call) the K/V it read. A second run, activation
    checkpointing's recomputation in backward, reads those and writes nothing."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache, self.layer = cache, layer
        self.cross = cache.cross[layer]
        self.past = None     # (k, v, positions, undo log, its length) read by a with-grad first run
        self.written = False

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple:
        if self.written:
            if self.past is None:
                raise RuntimeError("a cached call without gradient ran twice")
            return attend_past(*past_values(*self.past), k, v)
        self.written = True
        self.cache._current = self
        return self.cache.update(self.layer, k, v)

    def set_cross(self, kv: tuple) -> None:
        """This call computed the prompt's cross-attention K/V itself: keep them (values only) for the cache's
        next calls, once per prompt; and hold no earlier copy of them for a recomputation."""
        self.cross = None
        if self.cache.cross[self.layer] is None:
            self.cache.cross[self.layer] = tuple(t.detach() for t in kv)
