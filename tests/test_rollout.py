"""The streaming rollout: KV-cached generation equals recomputing the prefix for every block."""
import pytest
import torch

from causvid.pipelines.rollout import causal_rollout
from causvid.tiny_wan.dit import random_dit


def run(model, noise, context, use_cache, **kw):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return list(causal_rollout(model, noise, context, use_cache=use_cache, generator=gen, **kw))


@pytest.mark.parametrize("block,window,sink", [(1, -1, 0), (3, -1, 0), (1, 3, 1), (3, 7, 1)])
def test_cached_rollout_equals_prefix_recompute(block, window, sink):
    model = random_dit("tiny", seed=2)
    noise, context = torch.randn(1, 4 * block, 16, 8, 8), torch.randn(1, 16, 32)
    kw = dict(num_frame_per_block=block, denoising_steps=[1000, 750, 500], context_noise=50.0,
              local_attn_size=window, sink_size=sink)
    cached, recomputed = run(model, noise, context, True, **kw), run(model, noise, context, False, **kw)
    assert [s for s, _ in cached] == list(range(0, 4 * block, block))
    for (_, a), (_, b) in zip(cached, recomputed):
        assert a.shape == (1, block, 16, 8, 8)
        assert (a - b).abs().max() <= 1e-4  # several steps of float error, outputs of size ~1


def test_first_block_step_list():
    model = random_dit("tiny", seed=2)
    calls = []
    original = model.forward

    def counting(x, t, *a, **k):
        calls.append((k.get("start_frame"), float(t.flatten()[0])))
        return original(x, t, *a, **k)

    model.forward = counting
    run(model, torch.randn(1, 3, 16, 8, 8), torch.randn(1, 16, 32), True, num_frame_per_block=1,
        denoising_steps=[1000], first_block_steps=[1000, 750, 500, 250])
    # block 0: 4 steps + refresh; blocks 1, 2: 1 step + refresh each
    assert calls == [(0, 1000.0), (0, 750.0), (0, 500.0), (0, 250.0), (0, 0.0),
                     (1, 1000.0), (1, 0.0), (2, 1000.0), (2, 0.0)]
