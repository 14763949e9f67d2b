"""The streaming rollout: KV-cached generation equals recomputing the prefix for every block, for the few-step
sampler, the many-step sampler with CFG (two caches) and a given first frame."""
import pytest
import torch

from causvid.pipelines.rollout import (Rollout, bidirectional_sample, causal_rollout, few_step_sampler,
                                      generator_noise, ode_sampler)
from causvid.tiny_wan.dit import random_dit


def run(model, noise, context, use_cache, steps=(1000, 750, 500), **kw):
    sampler = few_step_sampler(steps, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return list(causal_rollout(model, noise, context, sampler=sampler, use_cache=use_cache,
                                   generator=torch.Generator().manual_seed(1), **kw))


@pytest.mark.parametrize("block,window,sink,first", [(1, -1, 0, 0), (3, -1, 0, 0), (1, 3, 1, 0), (3, 7, 1, 0),
                                                     (3, -1, 0, 1)])
def test_cached_rollout_equals_prefix_recompute(block, window, sink, first):
    """first: frame 0 a block of its own ([1, 3, 3, ...]), which the recomputing path's mask must know."""
    model = random_dit("tiny", seed=2)
    noise, context = torch.randn(1, first + 4 * block, 16, 8, 8), torch.randn(1, 16, 32)
    kw = dict(num_frame_per_block=block, context_noise=50.0, local_attn_size=window, sink_size=sink,
              independent_first_frame=bool(first))
    cached, recomputed = run(model, noise, context, True, **kw), run(model, noise, context, False, **kw)
    assert [s for s, _ in cached] == [0] * first + list(range(first, first + 4 * block, block))
    for (start, a), (_, b) in zip(cached, recomputed):
        assert a.shape == (1, 1 if start < first else block, 16, 8, 8)
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


# ---- the rollout's arguments reach the loop: a hand loop, the defaults, the errors ------------------------------

def test_bidirectional_sample_with_cfg_by_hand():
    """Wan's guidance, uncond + g (cond - uncond), on the whole video at once; the whole video is block 0 (its
    step list is the first block's); a negative prompt alone (g = 1, the default) leaves the sampling unguided."""
    from test_losses_by_hand import Recorder, pattern

    noise, ctx, neg = torch.randn(1, 3, 16, 8, 8), torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    model = Recorder(lambda x, t: pattern(x, t))
    model.out = lambda x, t: pattern(x, t) * (2.0 if model.calls[-1]["context"] is neg else 1.0)
    sampler = lambda: few_step_sampler([1000], [[1000, 500]], generator=torch.Generator().manual_seed(0))  # noqa
    with torch.no_grad():
        video = bidirectional_sample(model, noise, ctx, sampler=sampler(), negative_context=neg, guidance_scale=3.0)
        assert [c["context"] is neg for c in model.calls] == [False, True, False, True]

        def guided(x, t):  # cond = pattern, uncond = 2 pattern: uncond + 3 (cond - uncond) = -pattern
            return 2 * pattern(x, t) + 3.0 * (pattern(x, t) - 2 * pattern(x, t))
        x0 = noise - 1.0 * guided(noise, torch.full((1, 3), 1000.0))
        x = 0.5 * x0 + 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        expected = x - 0.5 * guided(x, torch.full((1, 3), 500.0))
        torch.testing.assert_close(video, expected, rtol=1e-6, atol=1e-6)

        model.calls.clear()
        plain = bidirectional_sample(model, noise, ctx, sampler=sampler(), negative_context=neg)
        assert [c["context"] is ctx for c in model.calls] == [True, True]
        x0 = noise - pattern(noise, torch.full((1, 3), 1000.0))
        x = 0.5 * x0 + 0.5 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(plain, x - 0.5 * pattern(x, torch.full((1, 3), 500.0)), rtol=1e-6, atol=1e-6)


def test_ode_sampler_defaults_are_wans_50_step_unipc_as_diffusers_runs_it():
    """`ode_sampler()`: Wan's default schedule (50 steps, shift 5), the model fed the integer timesteps per frame,
    the result equal to diffusers' UniPCMultistepScheduler stepping the same flow."""
    import numpy as np
    from diffusers import UniPCMultistepScheduler

    noise, ctx = torch.randn(1, 2, 4, 3, 3, generator=torch.Generator().manual_seed(1)), torch.randn(1, 4, 8)
    fed = []

    def model(x, t, context):
        fed.append(t.clone())
        return torch.tanh(1.3 * x) - 0.3 * x * float(t[0, 0]) / 1000.0

    with torch.no_grad():
        got = bidirectional_sample(model, noise, ctx, sampler=ode_sampler())
    sched = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                    use_flow_sigmas=True, flow_shift=5.0, solver_order=2, solver_type="bh2",
                                    predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    sched.set_timesteps(sigmas=np.linspace(0.999, 0, 51)[:-1])
    x = noise
    for t in sched.timesteps:
        x = sched.step(torch.tanh(1.3 * x) - 0.3 * x * float(t) / 1000.0, t, x).prev_sample
    assert len(fed) == 50 and all(f.shape == (1, 2) and f.dtype == torch.float32 for f in fed)
    assert [float(f[0, 0]) for f in fed] == [float(t) for t in sched.timesteps]
    torch.testing.assert_close(got, x, rtol=0, atol=1e-5)


def test_generator_noise_draws_in_float32_and_casts_to_the_latents_dtype():
    like = torch.zeros(2, 3, 4, dtype=torch.bfloat16)
    got = generator_noise(torch.Generator().manual_seed(5))(like, (0, 0))
    expected = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    # drawn on the generator's device, then moved to the latents' (the meta device stands in for a GPU here)
    assert generator_noise(torch.Generator())(torch.empty(2, 3, device="meta"), (0, 0)).device.type == "meta"


@pytest.mark.parametrize("first_alone,size,message", [
    (False, 2, "a block of 2 frames at frame 0; the layout needs 3 (num_frame_per_block=3)"),
    (True, 3, "a block of 3 frames at frame 0; the layout needs 1 (num_frame_per_block=3, independent first frame)")])
def test_a_block_off_the_layout_is_refused_naming_both_sizes(first_alone, size, message):
    rollout = Rollout(random_dit("tiny", seed=2), torch.randn(1, 16, 32), batch=1, num_frame_per_block=3,
                      sampler=few_step_sampler([1000]), max_frames=7, independent_first_frame=first_alone)
    for call in (rollout.step, rollout.give):
        with pytest.raises(ValueError) as err:
            call(torch.randn(1, size, 16, 8, 8))
        assert str(err.value) == message


def recording(model):
    """Wrap model.forward to record each call's (start_frame, first t, whether it had a cache, frames fed)."""
    calls, original = [], model.forward

    def forward(x, t, *a, **k):
        calls.append((k.get("start_frame"), float(t.flatten()[-1]), k.get("cache") is not None, x.shape[1]))
        return original(x, t, *a, **k)
    model.forward = forward
    return calls


def test_rollout_defaults_given_frames_and_guidance_switches():
    """Given frames advance the rollout one after the other, the refresh runs at t = 0 by default, and only a
    negative prompt with g != 1 opens the second (unconditional) stream."""
    model = random_dit("tiny", seed=2)
    calls = recording(model)
    ctx, neg = torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    given = torch.randn(1, 2, 16, 8, 8)
    for kw in (dict(), dict(negative_context=neg), dict(guidance_scale=3.0)):
        calls.clear()
        rollout = Rollout(model, ctx, batch=1, num_frame_per_block=1, sampler=few_step_sampler([1000]),
                          max_frames=3, **kw)
        with torch.no_grad():
            rollout.give(given[:, :1])
            rollout.give(given[:, 1:])
            rollout.step(torch.randn(1, 1, 16, 8, 8))
        assert len(rollout.streams) == 1 and rollout.frame == 3
        assert [c[:2] for c in calls] == [(0, 0.0), (1, 0.0), (2, 1000.0), (2, 0.0)]
    with pytest.raises(ValueError, match=r"^an endless rollout \(max_frames None\) needs a rolling window "
                                         r"\(local_attn_size\)$"):
        Rollout(model, ctx, batch=1, num_frame_per_block=1, sampler=few_step_sampler([1000]))


def test_an_endless_rollout_has_no_sink_unless_asked():
    """A rolling window of 2 frames, one-frame blocks: without sink_size the window holds the last two frames."""
    model = random_dit("tiny", seed=2)
    ctx = torch.randn(1, 16, 32)
    held = []
    for kw in (dict(), dict(sink_size=1)):
        rollout = Rollout(model, ctx, batch=1, num_frame_per_block=1, sampler=few_step_sampler([1000]),
                          local_attn_size=2, **kw)
        with torch.no_grad():
            for _ in range(4):
                rollout.step(torch.randn(1, 1, 16, 8, 8))
        held.append(sorted(rollout.streams[0].cache.held_frames()))
    assert held == [[2, 3], [0, 3]]


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("window, sink, noise_by", [(3, 1, "generator"), (2, None, "noise_fn")])
def test_causal_rollout_equals_a_hand_loop(use_cache, window, sink, noise_by):
    """causal_rollout's options all reach the loop: a hand loop of cache-free block-causal DiT calls over the
    blocks made so far (a rolling window of `window` frames, `sink` of them the sink, none by default), the
    few-step sampler on the grid written out (x0 = x - s v, re-noise (1 - s) x0 + s n), and the refresh written
    as the originals' training does it: the clean block noised to context_noise on the grid with the rollout's
    noise (a generator, or a noise function), fed at that t. Without the cache every call is cache-free."""
    from test_losses_by_hand import bcast, hand_sigma

    model = random_dit("tiny", seed=2)
    calls = recording(model)
    noise, ctx = torch.randn(1, 4, 16, 8, 8, generator=torch.Generator().manual_seed(9)), torch.randn(1, 16, 32)
    steps, shift, t_ctx = [1000, 500], 5.0, 250.0
    rollout_noise = dict(generator=torch.Generator().manual_seed(1)) if noise_by == "generator" else \
        dict(noise_fn=generator_noise(torch.Generator().manual_seed(1)))
    window_kw = dict(local_attn_size=window, **({} if sink is None else dict(sink_size=sink)))
    with torch.no_grad():
        got = torch.cat([x for _, x in causal_rollout(
            model, noise, ctx, num_frame_per_block=1, use_cache=use_cache, noise_context=True, context_noise=t_ctx,
            grid=shift, sampler=few_step_sampler(steps, generator=torch.Generator().manual_seed(0), grid=shift),
            **window_kw, **rollout_noise)], dim=1)
    assert all(c[2] == use_cache for c in calls)
    assert use_cache or [c[3] for c in calls] == [1, 1, 2, 2, 3, 3, 4, 4]  # cache-free: the whole prefix, no refresh

    sampler_gen, refresh_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    done, done_t, clean = [], [], []
    s_ctx = bcast(hand_sigma(torch.full((1, 1), t_ctx), shift)).float()
    with torch.no_grad():
        for b in range(4):
            x = noise[:, b:b + 1]
            for i, step in enumerate(steps):
                t = torch.full((1, 1), float(step))
                v = model(torch.cat(done + [x], 1), torch.cat(done_t + [t], 1), ctx, causal=True,
                          num_frame_per_block=1, local_attn_size=window, sink_size=sink or 0)[:, b:]
                x0 = x - bcast(hand_sigma(t, shift)).float() * v
                if i + 1 < len(steps):
                    s = bcast(hand_sigma(torch.full((1, 1), float(steps[i + 1])), shift)).float()
                    x = (1 - s) * x0 + s * torch.randn(x0.shape, generator=sampler_gen)
            done.append((1 - s_ctx) * x0 + s_ctx * torch.randn(x0.shape, generator=refresh_gen))
            done_t.append(torch.full((1, 1), t_ctx))
            clean.append(x0)
    assert (got - torch.cat(clean, 1)).abs().max() <= 1e-4


def test_causal_rollout_defaults_and_given_frames_mid_block():
    """A negative prompt without g (default 1) is unguided; a window without sink_size has no sink (the
    rollout equals one with sink_size=0); given frames must end on a block boundary."""
    model = random_dit("tiny", seed=3)
    noise, ctx, neg = torch.randn(1, 4, 16, 8, 8), torch.randn(1, 16, 32), torch.randn(1, 16, 32)
    for a, b in ((dict(negative_context=neg), dict()), (dict(local_attn_size=2), dict(local_attn_size=2,
                                                                                          sink_size=0))):
        first, second = run(model, noise, ctx, True, num_frame_per_block=1, **a), \
            run(model, noise, ctx, True, num_frame_per_block=1, **b)
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(first, second))
    with pytest.raises(ValueError, match=r"^2 given latent frames end inside a block of num_frame_per_block=3: "
                                         r"give whole blocks$"):
        next(causal_rollout(model, torch.randn(1, 6, 16, 8, 8), ctx, num_frame_per_block=3,
                            sampler=few_step_sampler([1000]), initial_latent=torch.randn(1, 2, 16, 8, 8)))


@pytest.mark.parametrize("gradient", ["straight_through", "detached"])
def test_cache_gradient_reaches_causal_rollout(gradient):
    """Block 1 depends on block 0's noise only through the cache (the refresh is values only): its gradient
    reaches that noise straight through the cache, and not at all when the cache is detached."""
    model = random_dit("tiny", seed=2)
    noise = torch.randn(1, 2, 16, 8, 8, requires_grad=True)
    blocks = list(causal_rollout(model, noise, torch.randn(1, 16, 32), num_frame_per_block=1,
                                 sampler=few_step_sampler([1000]), cache_gradient=gradient))
    blocks[1][1].square().sum().backward()
    reached = noise.grad[:, 0].abs().max()
    assert (reached > 0) if gradient == "straight_through" else (reached == 0)


def test_a_switch_without_a_cache_recomputes_under_the_new_prompt():
    """Without a cache every call recomputes the prefix, so a switch is a re-cache (the default of set_context):
    the two give the same video; asking a cache-free rollout for a naive switch or a re-sink is an error."""
    model = random_dit("tiny", seed=2)
    a, b, noise = torch.randn(1, 16, 32), torch.randn(1, 16, 32), torch.randn(1, 4, 16, 8, 8)
    videos, rollouts = [], []
    for use_cache in (True, False):
        rollout = Rollout(model, a, batch=1, num_frame_per_block=1, max_frames=4, use_cache=use_cache,
                          sampler=few_step_sampler([1000, 500], generator=torch.Generator().manual_seed(0)))
        with torch.no_grad():
            blocks = [rollout.step(noise[:, i:i + 1]) for i in range(2)]
            rollout.set_context(b)
            blocks += [rollout.step(noise[:, i:i + 1]) for i in range(2, 4)]
        videos.append(torch.cat(blocks, 1))
        rollouts.append(rollout)
    assert (videos[0] - videos[1]).abs().max() <= 1e-4
    message = r"^without a KV cache every call recomputes the context: a switch always re-caches$"
    for kw in (dict(recache=False), dict(resink=True)):
        with pytest.raises(ValueError, match=message):
            rollouts[1].set_context(a, **kw)


def test_resinks_drop_only_the_old_sink_and_recache_the_rest_of_the_window():
    """A window of 9 frames with a 3-frame sink, 3-frame blocks. The first re-sink drops the first block (the old
    sink) and re-caches frames 6-11 under the new prompt, block 6 seeing only itself: the block after it equals a
    cache-free block-causal forward over frames 6-14 at their own positions (reference by hand, one step at
    t = 1000: x0 = x - v). That block is the sink; a second re-sink right after drops it alone, re-caching 6-11."""
    model = random_dit("tiny", seed=2)
    a, b, noise = torch.randn(1, 16, 32), torch.randn(1, 16, 32), torch.randn(1, 15, 16, 8, 8)
    rollout = Rollout(model, a, batch=1, num_frame_per_block=3, sampler=few_step_sampler([1000]),
                      local_attn_size=9, sink_size=3)
    cache = rollout.streams[0].cache
    with torch.no_grad():
        clean = [rollout.step(noise[:, 3 * i:3 * i + 3]) for i in range(4)]
        rollout.set_context(b, recache=True, resink=True)
        assert sorted(f for f in cache.held_frames() if f >= 0) == list(range(6, 12))
        got = rollout.step(noise[:, 12:15])
        t = torch.cat([torch.zeros(1, 6), torch.full((1, 3), 1000.0)], 1)
        v = model(torch.cat(clean[2:] + [noise[:, 12:15]], 1), t, b, causal=True, num_frame_per_block=3,
                  start_frame=6)[:, 6:]
        assert (got - (noise[:, 12:15] - v)).abs().max() <= 1e-4
        assert cache.sink_start == 12 and sorted(cache.held_frames()) == list(range(6, 15))
        rollout.set_context(a, recache=True, resink=True)
    assert cache.sink_start == 15 and sorted(f for f in cache.held_frames() if f >= 0) == list(range(6, 12))


@pytest.mark.parametrize("recache_frames,resink,held", [(3, True, [9, 10, 11]), (4, True, [6, 7, 8, 9, 10, 11]),
                                                        (3, False, [0, 1, 2, 9, 10, 11])])
def test_recache_frames_keeps_the_blocks_holding_the_latest_frames_and_forgets_the_rest(recache_frames, resink, held):
    """The window of the test above (9 frames, 3-frame sink and blocks), a switch after frame 11 re-caching only
    the blocks that hold the latest `recache_frames` frames (4 reaches into block 6), the sink too when it stays;
    the CFG stream forgets the same frames. With the sink moved and one block kept, the next block equals a
    cache-free block-causal forward over frames 9-14 under the new prompt (by hand, one step at t = 1000)."""
    model = random_dit("tiny", seed=2)
    a, b, neg = (torch.randn(1, 16, 32) for _ in range(3))
    noise = torch.randn(1, 15, 16, 8, 8)
    by_hand = recache_frames == 3 and resink  # the others with CFG: two caches
    rollout = Rollout(model, a, batch=1, num_frame_per_block=3, sampler=few_step_sampler([1000]),
                      local_attn_size=9, sink_size=3, negative_context=neg, guidance_scale=1.0 if by_hand else 2.0)
    with torch.no_grad():
        clean = [rollout.step(noise[:, 3 * i:3 * i + 3]) for i in range(4)]
        rollout.set_context(b, recache=True, resink=resink, recache_frames=recache_frames)
        assert len(rollout.streams) == (1 if by_hand else 2)
        for stream in rollout.streams:
            assert sorted(f for f in stream.cache.held_frames() if f >= 0) == held
        if by_hand:
            got = rollout.step(noise[:, 12:15])
            t = torch.cat([torch.zeros(1, 3), torch.full((1, 3), 1000.0)], 1)
            v = model(torch.cat([clean[3], noise[:, 12:15]], 1), t, b, causal=True, num_frame_per_block=3,
                      start_frame=9)[:, 3:]
            assert (got - (noise[:, 12:15] - v)).abs().max() <= 1e-4


@pytest.mark.parametrize("guided", [False, True])
def test_recache_noise_writes_the_kept_frames_noised_once_for_both_streams(guided):
    """recache_noise T: the kept block (frames 9-11 of the window above) is re-cached from add_noise(clean, eps, T)
    labelled T, so the next block equals a cache-free forward over [noised 9-11, new block] (by hand: sigma =
    T / 1000, one step at t = 1000). With CFG the negative stream gets the same draw: one per block."""
    model = random_dit("tiny", seed=2)
    a, b, neg = (torch.randn(1, 16, 32) for _ in range(3))
    noise, eps = torch.randn(1, 15, 16, 8, 8), torch.randn(1, 3, 16, 8, 8)
    draws = []

    def noise_fn(like, tag):
        draws.append(tag)
        return eps
    rollout = Rollout(model, a, batch=1, num_frame_per_block=3, sampler=few_step_sampler([1000]), local_attn_size=9,
                      sink_size=3, noise_fn=noise_fn, negative_context=neg, guidance_scale=2.0 if guided else 1.0)
    with torch.no_grad():
        clean = [rollout.step(noise[:, 3 * i:3 * i + 3]) for i in range(4)]
        assert draws == []  # the sampler and the clean refresh draw nothing
        rollout.set_context(b, recache=True, resink=True, recache_frames=3, recache_noise=500)
        assert draws == [("recache", 4, 9)]
        if guided:
            return
        got = rollout.step(noise[:, 12:15])
        t = torch.cat([torch.full((1, 3), 500.0), torch.full((1, 3), 1000.0)], 1)
        v = model(torch.cat([0.5 * clean[3] + 0.5 * eps, noise[:, 12:15]], 1), t, b, causal=True,
                  num_frame_per_block=3, start_frame=9)[:, 3:]
        assert (got - (noise[:, 12:15] - v)).abs().max() <= 1e-4
        assert (rollout.streams[0].done[-2] - clean[3]).abs().max() == 0  # later switches start from clean
