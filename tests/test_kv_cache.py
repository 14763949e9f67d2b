"""The KV cache's bookkeeping by hand: which slot each frame takes (a ring after the sink, the sink moved by a
re-sink), what `held_frames` reports as blocks come, and every misuse as one line naming the value. (Its values,
gradients and memory are pinned against cache-free forwards in test_dit.py, test_rollout.py and test_memory.py.)"""
import pytest
import torch

from causvid.models.wan.attention import MaskSpec, set_attention_backend
from causvid.models.wan.kv_cache import KVCache
from causvid.tiny_wan.dit import random_dit


def test_a_frame_takes_its_slot_in_the_ring_after_the_sink():
    """Capacity 7, sink 2: frames 0-1 keep slots 0-1; frame g >= 2 takes slot 2 + (g - 2) mod 5. After a re-sink
    to frame 10, frames 10-11 take slots 0-1 and every other frame g takes 2 + (g - 12) mod 5."""
    cache = KVCache(1, 1, local_attn_size=7, sink_size=2)
    frames = torch.arange(0, 21)
    expected = [g if g < 2 else 2 + (g - 2) % 5 for g in range(21)]
    assert cache.slot_of_frame(frames).tolist() == expected
    cache.move_sink(10)
    expected = [g - 10 if g in (10, 11) else 2 + (g - 12) % 5 for g in range(21)]
    assert cache.slot_of_frame(frames).tolist() == expected
    global_cache = KVCache(1, 1, max_frames=5)
    assert global_cache.slot_of_frame(torch.arange(5)).tolist() == [0, 1, 2, 3, 4] and not global_cache.rolling
    no_sink = KVCache(1, 1, local_attn_size=3)  # no sink unless asked: a plain ring
    assert no_sink.slot_of_frame(torch.arange(6)).tolist() == [0, 1, 2, 0, 1, 2]
    assert KVCache(1, 1, max_frames=4, local_attn_size=9).held_frames() == [-1] * 4  # the smaller of the two


def test_held_frames_follow_the_blocks_written():
    """Blocks of 2 into a window of 5 with a 1-frame sink: the ring overwrites exactly the frame that leaves."""
    cache = KVCache(1, 1, local_attn_size=5, sink_size=1)
    assert cache.held_frames() == [-1] * 5
    held = []
    for start in range(0, 10, 2):
        cache.begin(start, 2, 4, "cpu", batch=1)
        held.append(cache.held_frames())
    assert held == [[0, 1, -1, -1, -1], [0, 1, 2, 3, -1], [0, 5, 2, 3, 4], [0, 5, 6, 7, 4], [0, 9, 6, 7, 8]]
    cache.begin(8, 2, 4, "cpu")  # the same block again (another step, or the refresh): nothing moves
    assert cache.held_frames() == held[-1] and cache.frames_end == 10
    cache.reset()
    assert cache.held_frames() == [-1] * 5 and cache.frames_end == 0 and cache.sink_start == 0


@pytest.mark.parametrize("make, message", [
    (lambda: KVCache(2, 1, 4, gradient="x"), "KVCache gradient='x': expected one of ('straight_through', 'detached')"),
    (lambda: KVCache(2, 1, 4, rope_positions="x"),
     "KVCache rope_positions='x': expected one of ('absolute', 'window')"),
    (lambda: KVCache(2, 1), "KVCache needs max_frames, or local_attn_size for a rolling window"),
    (lambda: KVCache(2, 1, local_attn_size=3, sink_size=3), "local_attn_size=3 must exceed sink_size=3"),
    (lambda: KVCache(2, 1, max_frames=4).move_sink(3), "only a rolling window (local_attn_size) has a sink to move"),
    (lambda: KVCache(2, 1, local_attn_size=4, sink_size=1).begin(0, 4, 16, "cpu"),
     "a block of 4 frames does not fit the rolling window of 4 frames with 1 sink frames"),
    (lambda: KVCache(2, 1, max_frames=4).begin(0, 5, 16, "cpu"),
     "KV cache holds at most 4 frames (max_frames); frame 4 does not fit: allocate a larger cache or use "
     "local_attn_size for a rolling window"),
    (lambda: KVCache(2, 3, max_frames=4).begin(0, 1, 16, "cpu", batch=2),
     "KV cache made for batch 3; this call has batch 2"),
    (lambda: MaskSpec(4, 16, block=0), "num_frame_per_block must be >= 1, got 0"),
    (lambda: MaskSpec(6, 16, block=3, local_attn_size=4, sink_size=2),
     "local_attn_size=4 must be -1 or at least num_frame_per_block + sink_size = 5: a block must fit in the window "
     "beside the sink"),
    (lambda: set_attention_backend("xformers"),
     "unknown attention backend 'xformers'; choose one of ('auto', 'sdpa', 'flex', 'flash')"),
])
def test_misuse_is_one_line_naming_the_value(make, message):
    with pytest.raises(ValueError) as error:
        make()
    assert str(error.value) == message


def test_a_call_of_another_resolution_or_out_of_order_leaves_the_cache_as_it_was():
    cache = KVCache(2, 1, max_frames=4)
    cache.begin(0, 2, 16, "cpu")
    for call, message in [((2, 1, 8), "KV cache holds 16 tokens per frame; this call has 8 (a different latent "
                                      "resolution needs a new cache)"),
                          ((3, 1, 16), "KV cache holds frames [0, 2) with last block starting at 0; a call for "
                                       "frames [3, 4) is neither the next block nor a repeat of the last one"),
                          # the last block's start or its end alone is not a repeat of it
                          ((0, 1, 16), "KV cache holds frames [0, 2) with last block starting at 0; a call for "
                                       "frames [0, 1) is neither the next block nor a repeat of the last one"),
                          ((1, 1, 16), "KV cache holds frames [0, 2) with last block starting at 0; a call for "
                                       "frames [1, 2) is neither the next block nor a repeat of the last one")]:
        with pytest.raises(ValueError) as error:
            cache.begin(*call, "cpu")
        assert str(error.value) == message
        assert (cache.frames_end, cache.block_start, cache.held_frames()) == (2, 0, [0, 1, -1, -1])


def test_a_cache_mid_re_cache_cannot_be_read_with_gradient():
    """Between a re-cache's writes the window has unwritten slots: a with-grad call there is an error (training
    never switches prompts mid-rollout)."""
    dit = random_dit("tiny", seed=2, text_len=16)
    ctx, t0 = torch.randn(1, 16, 32), torch.zeros(1, 3)
    cache = dit.new_cache(1, local_attn_size=9, sink_size=3)
    with torch.no_grad():
        for s in range(4):
            dit(torch.randn(1, 3, 16, 4, 4), t0, ctx, cache=cache, start_frame=3 * s)
        cache.reset()
        dit(torch.randn(1, 3, 16, 4, 4), t0, ctx, cache=cache, start_frame=0)
    cache.seek(6)
    with pytest.raises(RuntimeError, match="^a KV cache with unwritten slots \\(mid re-cache\\) cannot be read with "
                                           "gradient$"):
        dit(torch.randn(1, 3, 16, 4, 4, requires_grad=True), t0, ctx, cache=cache, start_frame=6)


def test_holds_context_is_this_very_prompt():
    """The cross-attention K/V stored belong to a context when it is the stored one, or equal to it; a call
    without a context reads the stored one; an empty cache holds none."""
    cache = KVCache(1, 1, max_frames=2)
    context = torch.randn(1, 4, 8)
    assert not cache.holds_context(None) and not cache.holds_context(context)
    cache.set_context(context)
    assert cache.holds_context(context) and cache.holds_context(context.clone()) and cache.holds_context(None)
    assert not cache.holds_context(context + 1) and not cache.holds_context(context[:, :2])


def test_window_rope_ranks_put_a_moved_sink_first():
    """rope_positions="window": frames are numbered by rank in the window, the sink first, then the others by
    index. Window 5, sink 1 moved to frame 6 (a re-sink), then frames 2-3, 4-5 (the re-cache) and 6-7 written:
    the slots hold frames [6, 7, 4, 5, 2], so the ranks read are [0, 4, 2, 3, 1] and the block's [0, 4]."""
    cache = KVCache(1, 1, local_attn_size=5, sink_size=1, rope_positions="window")
    cache.move_sink(6)
    cache.seek(2)
    for start in (2, 4, 6):
        cache.begin(start, 2, 1, "cpu")
    assert cache.held_frames() == [6, 7, 4, 5, 2]
    query, read = cache.rope_frames()
    assert query.tolist() == [0, 4] and read.tolist() == [0, 4, 2, 3, 1]


def test_a_call_keeps_the_graph_when_either_of_k_and_v_needs_it():
    for grad_k in (True, False):
        cache = KVCache(1, 1, max_frames=2)
        cache.begin(0, 1, 2, "cpu")
        k = torch.randn(1, 2, 1, 4, requires_grad=grad_k)
        v = torch.randn(1, 2, 1, 4, requires_grad=not grad_k)
        read_k, read_v = cache.update(0, k, v)
        assert read_k.requires_grad == grad_k and read_v.requires_grad == (not grad_k)


def test_k_and_v_of_another_dtype_are_stored_in_the_caches():
    """The store takes the first block's dtype; a later block's K/V (with or without gradient) are cast to it."""
    cache = KVCache(1, 1, max_frames=2)
    cache.begin(0, 1, 2, "cpu")
    with torch.no_grad():
        cache.update(0, torch.randn(1, 2, 1, 4, dtype=torch.bfloat16), torch.randn(1, 2, 1, 4, dtype=torch.bfloat16))
    k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    cache.begin(1, 1, 2, "cpu")
    with torch.no_grad():
        read_k, read_v = cache.update(0, k, v)
    assert read_k.dtype == read_v.dtype == torch.bfloat16
    assert torch.equal(read_k[:, 2:], k.bfloat16()) and torch.equal(read_v[:, 2:], v.bfloat16())
    cache.begin(1, 1, 2, "cpu")  # the same block again, with gradient
    read_k, read_v = cache.update(0, k.requires_grad_(), v.requires_grad_())
    assert read_k.dtype == read_v.dtype == torch.bfloat16 and torch.equal(read_k[:, 2:], k.bfloat16())
    (read_k.float().sum() + read_v.float().sum()).backward()
    assert torch.equal(k.grad, torch.ones_like(k)) and torch.equal(v.grad, torch.ones_like(v))


def test_a_call_without_gradient_runs_once():
    cache = KVCache(1, 1, max_frames=2)
    cache.begin(0, 1, 2, "cpu")
    call = cache.call(0)
    k = torch.randn(1, 2, 1, 4)
    with torch.no_grad():
        call.update(k, k)
        with pytest.raises(RuntimeError) as error:
            call.update(k, k)
    assert str(error.value) == "a cached call without gradient ran twice"


def test_a_re_cache_with_gaps_reads_every_frame_written_since_the_reset():
    """Mid re-cache (frames written again under a new prompt, skipping those the window evicted) the slots
    written are not a prefix: a call reads exactly the frames written since `reset`, the sink's frame 0
    included, in slot order. (K holds each frame's index, one token per frame.)"""
    cache = KVCache(1, 1, local_attn_size=5, sink_size=1)

    def write(start, n):
        cache.seek(start)
        cache.begin(start, n, 1, "cpu")
        frames = torch.arange(start, start + n, dtype=torch.float32).view(1, n, 1, 1)
        with torch.no_grad():
            return cache.update(0, frames, frames)[0].flatten().tolist()
    assert write(0, 1) == [0]
    cache.reset()
    assert write(0, 1) == [0]
    assert write(3, 2) == [0, 3, 4] and cache.held_frames() == [0, -1, -1, 3, 4]


def test_reset_forgets_the_frames_and_keeps_the_memory():
    cache = KVCache(1, 1, max_frames=4)
    k = torch.randn(1, 2, 1, 4)
    for start in (0, 1):
        cache.begin(start, 1, 2, "cpu")
        cache.update(0, k, k)
    store = cache.k[0].data_ptr()
    cache.reset()
    assert (cache.frames_end, cache.held_frames()) == (0, [-1] * 4)
    with pytest.raises(ValueError) as error:  # the last block is forgotten too
        cache.begin(1, 1, 2, "cpu")
    assert str(error.value) == ("KV cache holds frames [0, 0) with last block starting at 0; a call for frames "
                                "[1, 2) is neither the next block nor a repeat of the last one")
    cache.begin(0, 1, 2, "cpu")
    with torch.no_grad():
        read, _ = cache.update(0, k, k)
    assert cache.k[0].data_ptr() == store and torch.equal(read, k)  # written into the memory it had
