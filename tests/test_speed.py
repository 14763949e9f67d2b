"""The speed switches of causvid.pipelines.speed leave the outputs as the plain path makes them: compiled blocks,
recomputed (instead of reused) cross-attention K/V, and VAE decode overlapped with generation."""
import threading

import pytest
import torch

from causvid.models.vae import WanVAE
from causvid.models.wan import set_attention_backend
from causvid.pipelines.rollout import causal_rollout, few_step_sampler
from causvid.pipelines.speed import (SpeedKVCache, SpeedOptions, apply_speed_options, compile_blocks,
                                     overlapped_decode, sdpa_kernel, set_cross_cache_reuse)
from causvid.tiny_wan.dit import random_dit
from causvid.tiny_wan.vae import tiny_vae_model

# compiling the no-cache path traces the attention mask's lru_cache'd builder (correct, recomputed per call)
pytestmark = pytest.mark.filterwarnings("ignore:Dynamo detected a call to a:UserWarning")


def rollout(model, noise, context, block=3, use_cache=True, window=-1, sink=0):
    sampler = few_step_sampler([1000, 750, 500], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return list(causal_rollout(model, noise, context, num_frame_per_block=block, sampler=sampler,
                                   use_cache=use_cache, local_attn_size=window, sink_size=sink, context_noise=50.0,
                                   generator=torch.Generator().manual_seed(1)))


def inputs(frames=9, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, 16, size, size, generator=gen), torch.randn(1, 16, 32, generator=gen)


def assert_same_blocks(a, b, atol=0.0):
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= atol


class CountingBackend:
    """A torch.compile backend that runs the captured FX graphs as they are, counting compilations and calls
    (so a test can tell that compiled code really ran, rather than dynamo falling back to eager)."""

    def __init__(self):
        self.compiled = 0
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.compiled += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)
        return run


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# -- compile ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block,use_cache,window,sink", [(3, True, -1, 0), (1, True, 3, 1), (3, False, -1, 0)])
def test_compiled_blocks_equal_plain_rollout(fresh_dynamo, block, use_cache, window, sink):
    # A pass-through backend (the FX graphs dynamo captures, run as they are): fast on CPU and exact. The
    # inductor test below covers real code generation.
    model = random_dit("tiny", seed=2, num_layers=3)
    noise, context = inputs(frames=6 if block == 1 or not use_cache else 9)
    plain = rollout(model, noise, context, block, use_cache, window, sink)
    backend = CountingBackend()
    compile_blocks(model, backend=backend)
    compiled = rollout(model, noise, context, block, use_cache, window, sink)
    assert backend.compiled > 0 and backend.calls >= len(model.blocks)
    assert_same_blocks(plain, compiled, atol=1e-6)
    again = rollout(model, noise, context, block, use_cache, window, sink)  # cached graphs, no new state
    assert_same_blocks(plain, again, atol=1e-6)


def test_compiled_cached_rollout_bounded_recompiles(fresh_dynamo):
    """Cache bookkeeping stays out of the graphs: the number of graphs does not grow with the layer count or
    the number of blocks (each layer would otherwise be its own graph)."""
    counts = []
    for layers, frames in ((2, 9), (6, 18)):
        torch._dynamo.reset()
        model = random_dit("tiny", seed=2, num_layers=layers)
        backend = CountingBackend()
        compile_blocks(model, backend=backend)
        rollout(model, *inputs(frames=frames))
        counts.append(backend.compiled)
    assert counts[1] == counts[0]


@pytest.mark.long(10)
def test_compiled_blocks_inductor(fresh_dynamo):
    # inductor generates and builds C++ for the CPU: about 10-30 s for this model on a 2-core machine
    pytest.importorskip("torch._inductor")
    model = random_dit("tiny", seed=2)
    noise, context = inputs(frames=6)
    plain = rollout(model, noise, context)
    compile_blocks(model, backend="inductor")
    compiled = rollout(model, noise, context)
    assert_same_blocks(plain, compiled, atol=1e-4)  # fused kernels reorder float sums


def test_compile_blocks_needs_blocks():
    with pytest.raises(TypeError, match="no .blocks"):
        compile_blocks(torch.nn.Linear(2, 2))


# -- cross-attention cache reuse -------------------------------------------------------------------------------


def test_no_cross_cache_equals_reuse_and_recomputes():
    model = random_dit("tiny", seed=5)
    noise, context = inputs(frames=6)
    text_calls = []
    model.text_embedding.register_forward_hook(lambda *a: text_calls.append(1))

    reused = rollout(model, noise, context)
    reuse_calls = len(text_calls)
    set_cross_cache_reuse(model, False)
    assert isinstance(model.new_cache(1, max_frames=6), SpeedKVCache)
    text_calls.clear()
    recomputed = rollout(model, noise, context)
    assert_same_blocks(reused, recomputed)  # bitwise: the same K/V, computed again
    assert reuse_calls == 1  # one prompt, embedded once for the whole rollout
    assert len(text_calls) == 2 * (3 + 1)  # 2 blocks x (3 steps + refresh): every call
    set_cross_cache_reuse(model, True)
    text_calls.clear()
    assert_same_blocks(reused, rollout(model, noise, context))
    assert len(text_calls) == 1


def test_apply_speed_options_combines_switches(fresh_dynamo):
    model = random_dit("tiny", seed=6)
    noise, context = inputs(frames=6)
    plain = rollout(model, noise, context)
    backend = CountingBackend()
    apply_speed_options(model, SpeedOptions(compile=True, compile_backend=backend, cross_cache=False,
                                            attention_backend="sdpa"))
    cache = model.new_cache(1, max_frames=6)
    assert cache.eager_update and not cache.reuse_cross
    try:
        assert_same_blocks(plain, rollout(model, noise, context), atol=1e-6)
    finally:
        set_attention_backend("auto")  # a process-wide setting
    assert backend.calls > 0


# -- overlapped decode -----------------------------------------------------------------------------------------


def test_overlapped_decode_same_frames_same_order():
    model = random_dit("tiny", seed=3)
    noise, context = inputs(frames=9, size=4)
    vae = WanVAE(tiny_vae_model(seed=1)).eval()

    def run(enabled):
        sampler = few_step_sampler([1000, 500], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            blocks = causal_rollout(model, noise, context, num_frame_per_block=3, sampler=sampler)
            return list(overlapped_decode(blocks, vae.stream_decoder(), enabled=enabled))

    sequential, overlapped = run(False), run(True)
    assert [s for s, _, _ in overlapped] == [s for s, _, _ in sequential] == [0, 3, 6]
    for (_, za, pa), (_, zb, pb) in zip(sequential, overlapped):
        assert torch.equal(za, zb) and torch.equal(pa, pb)
    assert [p.shape[1] for _, _, p in overlapped] == [9, 12, 12]  # 1 + 4k pixel frames in total
    full = vae.decode(torch.cat([z for _, z, _ in sequential], dim=1))
    assert torch.allclose(torch.cat([p for _, _, p in overlapped], dim=1), full, atol=1e-5)


def test_overlapped_decode_runs_generation_during_decode():
    """Block b's decode waits until block b+1 is being generated: this only finishes if the two overlap. A
    rollout run on the decoding thread (no overlap) fails at once instead of waiting forever."""
    started = [threading.Event() for _ in range(4)]
    grad_modes, threads = [], []

    def blocks():
        for b in range(4):
            started[b].set()
            threads.append(threading.get_ident())
            grad_modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            yield b, torch.full((1, 1), float(b))

    def decode(z):
        b = int(z.item())
        assert threads[b] != threading.get_ident(), "block b was generated on the decoding thread: no overlap"
        if b + 1 < 4:
            started[b + 1].wait()  # set by the worker, which is one block ahead
        return z * 10

    with torch.no_grad():
        out = list(overlapped_decode(blocks(), decode))
    assert [(s, p.item()) for s, _, p in out] == [(0, 0.0), (1, 10.0), (2, 20.0), (3, 30.0)]
    assert grad_modes == [(False, False)] * 4  # the worker thread inherits the caller's grad mode
    started = [threading.Event() for _ in range(4)]
    grad_modes.clear()
    threads.clear()
    with torch.inference_mode():
        assert len(list(overlapped_decode(blocks(), decode))) == 4
    assert grad_modes == [(False, True)] * 4
    started = [threading.Event() for _ in range(4)]
    grad_modes.clear()
    threads.clear()
    assert len(list(overlapped_decode(blocks(), decode))) == 4
    assert grad_modes == [(True, False)] * 4


def test_overlapped_decode_errors_and_early_stop():
    def failing():
        yield 0, torch.zeros(1)
        raise RuntimeError("rollout failed")

    with pytest.raises(RuntimeError, match="rollout failed"):
        list(overlapped_decode(failing(), lambda z: z))

    produced = []

    def endless():
        for b in range(10_000):
            produced.append(b)
            yield b, torch.zeros(1)

    before = set(threading.enumerate())
    stream = overlapped_decode(endless(), lambda z: z, max_ahead=1)
    assert next(stream)[0] == 0
    stream.close()  # stops and joins the worker: no thread is left to produce more
    assert set(threading.enumerate()) == before
    # block 0 (consumed), one in the queue (max_ahead), one generated and refused
    assert len(produced) <= 3


def test_sdpa_kernel():
    """The context restricts SDPA to the named kernel: on CPU, which has no memory-efficient kernel, SDPA under
    "efficient" finds none, and after the context (or under "auto") it runs again."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q = torch.randn(1, 2, 8, 4, dtype=torch.float64)
    reference = torch.softmax(q @ q.transpose(-1, -2) / 2.0, dim=-1) @ q  # head dim 4: scale 1 / sqrt(4)
    with sdpa_kernel("math"):
        assert torch.allclose(sdpa(q, q, q), reference)
    with pytest.raises(RuntimeError, match="No viable backend"), sdpa_kernel("efficient"):
        sdpa(q.float(), q.float(), q.float())
    with sdpa_kernel(None), sdpa_kernel("auto"):
        assert torch.allclose(sdpa(q, q, q), reference)
    with pytest.raises(ValueError, match="unknown SDPA kernel"):
        sdpa_kernel("fast")
