"""The streaming rollout: KV-cached generation equals recomputing the prefix for every block, for the few-step
sampler, the many-step sampler with CFG (two caches) and a given first frame."""
import pytest
import torch

from causvid.pipelines.rollout import bidirectional_sample, causal_rollout, few_step_sampler, ode_sampler
from causvid.tiny_wan.dit import random_dit


def run(model, noise, context, use_cache, steps=(1000, 750, 500), **kw):
    sampler = few_step_sampler(steps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return list(causal_rollout(model, noise, context, sampler=sampler, use_cache=use_cache,
                                   generator=torch.Generator().manual_seed(1), **kw))


@pytest.mark.parametrize("block,window,sink", [(1, -1, 0), (3, -1, 0), (1, 3, 1), (3, 7, 1)])
def test_cached_rollout_equals_prefix_recompute(block, window, sink):
    model = random_dit("tiny", seed=2)
    noise, context = torch.randn(1, 4 * block, 16, 8, 8), torch.randn(1, 16, 32)
    kw = dict(num_frame_per_block=block, context_noise=50.0, local_attn_size=window, sink_size=sink)
    cached, recomputed = run(model, noise, context, True, **kw), run(model, noise, context, False, **kw)
    assert [s for s, _ in cached] == list(range(0, 4 * block, block))
    for (_, a), (_, b) in zip(cached, recomputed):
        assert a.shape == (1, block, 16, 8, 8)
        assert (a - b).abs().max() <= 1e-4  # several steps of float error, outputs of size ~1


def test_many_step_rollout_with_cfg_and_initial_frame():
    model = random_dit("tiny", seed=3)
    noise, context, negative = torch.randn(1, 4, 16, 8, 8), torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    first = torch.randn(1, 1, 16, 8, 8)
    outs = []
    for use_cache in (True, False):
        with torch.no_grad():
            outs.append(list(causal_rollout(model, noise, context, num_frame_per_block=1, sampler=ode_sampler(6),
                                            negative_context=negative, guidance_scale=3.0, initial_latent=first,
                                            use_cache=use_cache)))
    assert torch.equal(outs[0][0][1], first)  # the given frame comes back first, untouched
    for (_, a), (_, b) in zip(*outs):
        assert (a - b).abs().max() <= 1e-4
    with torch.no_grad():  # guidance matters
        plain = list(causal_rollout(model, noise, context, num_frame_per_block=1, sampler=ode_sampler(6),
                                    initial_latent=first))
    assert (plain[-1][1] - outs[0][-1][1]).abs().max() > 1e-2


def test_first_block_step_list():
    model = random_dit("tiny", seed=2)
    calls = []
    original = model.forward

    def counting(x, t, *a, **k):
        calls.append((k.get("start_frame"), float(t.flatten()[0])))
        return original(x, t, *a, **k)

    model.forward = counting
    sampler = few_step_sampler([1000], [[1000, 750, 500, 250]])
    with torch.no_grad():
        list(causal_rollout(model, torch.randn(1, 3, 16, 8, 8), torch.randn(1, 16, 32), num_frame_per_block=1,
                            sampler=sampler))
    # block 0: 4 steps + refresh; blocks 1, 2: 1 step + refresh each
    assert calls == [(0, 1000.0), (0, 750.0), (0, 500.0), (0, 250.0), (0, 0.0),
                     (1, 1000.0), (1, 0.0), (2, 1000.0), (2, 0.0)]


def test_bidirectional_few_step_uses_full_attention():
    """The whole video at once, by hand: x0 = x - s v at t = 1000 with full attention, re-noised to 500 with the
    sampler's next draw, x0 again; and the first frame depends on the last frame's noise."""
    model = random_dit("tiny", seed=4)
    noise, context = torch.randn(1, 3, 16, 8, 8), torch.randn(1, 16, 32)
    with torch.no_grad():
        sampler = lambda: few_step_sampler([1000, 500], generator=torch.Generator().manual_seed(0))  # noqa: E731
        video = bidirectional_sample(model, noise, context, sampler=sampler())
        gen = torch.Generator().manual_seed(0)
        x0 = noise - 1.0 * model(noise, torch.full((1, 3), 1000.0), context)  # no causal mask: full attention
        x = 0.5 * x0 + 0.5 * torch.randn(x0.shape, generator=gen)
        expected = x - 0.5 * model(x, torch.full((1, 3), 500.0), context)
        noise2 = noise.clone()
        noise2[:, -1] += 1
        video2 = bidirectional_sample(model, noise2, context, sampler=sampler())
    torch.testing.assert_close(video, expected, rtol=1e-5, atol=1e-5)
    assert video.shape == noise.shape and (video[:, 0] - video2[:, 0]).abs().max() > 1e-4
