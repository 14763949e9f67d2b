"""The streaming session on the shipped toy student (real loading code, CPU): it equals the batch rollout, a
prompt switch with and without re-cache equals a reference written by hand from WanDiT calls, endless streams
keep bounded state, and zero-shot video-to-video (SDEdit per block) starts from T2V at strength 1000."""
from pathlib import Path

import pytest
import torch

from causvid.config import denoising_steps, generator_grid, load_config
from causvid.flow import add_noise, flow_to_x0
from causvid.pipelines.rollout import causal_rollout, few_step_sampler
from causvid.pipelines.stream import StreamSession
from causvid.pipelines.text_to_video import load_components

ROOT = Path(__file__).resolve().parents[1]
A, B = "a red square moving left", "a blue circle moving up"


@pytest.fixture(scope="module")
def toy():
    cfg = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml")
    return load_components(ROOT / "checkpoints" / "toy"), cfg


def noise_of(frames, seed=3):
    return torch.randn(1, frames, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_session_without_a_switch_equals_the_batch_rollout(toy):
    comp, cfg = toy
    noise = noise_of(12)
    got = torch.cat([b.latents for b in StreamSession(comp, cfg, A, noise=noise,
                                                       generator=torch.Generator().manual_seed(7))], dim=1)
    context = comp.text_encoder.encode([A])
    with torch.no_grad():
        blocks = causal_rollout(comp.dit, noise, context, num_frame_per_block=3, grid=generator_grid(cfg),
                                sampler=few_step_sampler(denoising_steps(cfg), grid=generator_grid(cfg),
                                                         generator=torch.Generator().manual_seed(7)))
        expected = torch.cat([x for _, x in blocks], dim=1)
    assert (got - expected).abs().max() <= 1e-6


def by_hand(comp, cfg, noise, switch_block, recache):
    """Four blocks from direct WanDiT calls: the few-step sampler written out, prompt A, then B from
    `switch_block` on, re-caching by writing the earlier clean blocks into a fresh cache under B."""
    dit, steps, grid = comp.dit, denoising_steps(cfg), generator_grid(cfg)
    ctx = {p: comp.text_encoder.encode([p]) for p in (A, B)}
    gen = torch.Generator().manual_seed(7)
    cache, prompt, clean = dit.new_cache(1, max_frames=12), A, []
    with torch.no_grad():
        for block in range(4):
            start = 3 * block
            if block == switch_block:
                prompt = B
                if recache:
                    cache = dit.new_cache(1, max_frames=12)
                    for s, x0 in enumerate(clean):
                        dit(x0, torch.zeros(1, 3), ctx[B], cache=cache, start_frame=3 * s)
            x = noise[:, start:start + 3]
            for i, step in enumerate(steps):
                t = torch.full((1, 3), step)
                x0 = flow_to_x0(dit(x, t, ctx[prompt], cache=cache, start_frame=start), x, t, grid)
                if i + 1 < len(steps):
                    x = add_noise(x0, torch.randn(x0.shape, generator=gen), steps[i + 1], grid)
            dit(x0, torch.zeros(1, 3), ctx[prompt], cache=cache, start_frame=start)
            clean.append(x0)
    return torch.cat(clean, dim=1)


@pytest.mark.parametrize("recache", [True, False])
def test_prompt_switch_equals_the_hand_reference(toy, recache):
    comp, cfg = toy
    noise = noise_of(12)
    session = StreamSession(comp, cfg, A, noise=noise, generator=torch.Generator().manual_seed(7), recache=recache)
    blocks = [session.next_block(), session.next_block()]
    session.set_prompt(B)
    blocks += list(session)
    assert [b.prompt for b in blocks] == [A, A, B, B]
    got = torch.cat([b.latents for b in blocks], dim=1)
    expected = by_hand(comp, cfg, noise, switch_block=2, recache=recache)
    assert (got - expected).abs().max() <= 1e-5
    other = by_hand(comp, cfg, noise, switch_block=2, recache=not recache)
    assert (got[:, 6:] - other[:, 6:]).abs().max() > 1e-3  # re-cache changes what follows


def test_a_session_with_given_first_frames_equals_the_batch_rollout(toy):
    """I2V: the given first block (any dtype) comes back as the first block, in the model's dtype, and the
    blocks after it equal the batch rollout given the same frames."""
    comp, cfg = toy
    noise, image = noise_of(9), noise_of(3, seed=5).double()
    blocks = list(StreamSession(comp, cfg, A, noise=noise, initial_latent=image,
                                generator=torch.Generator().manual_seed(7)))
    assert [b.start for b in blocks] == [0, 3, 6] and all(b.latents.dtype == torch.float32 for b in blocks)
    assert torch.equal(blocks[0].latents, image.float())
    with torch.no_grad():
        expected = causal_rollout(comp.dit, noise, comp.text_encoder.encode([A]), num_frame_per_block=3,
                                  grid=generator_grid(cfg), initial_latent=image.float(),
                                  sampler=few_step_sampler(denoising_steps(cfg), grid=generator_grid(cfg),
                                                           generator=torch.Generator().manual_seed(7)))
        expected = torch.cat([x for _, x in expected], dim=1)
    assert (torch.cat([b.latents for b in blocks], dim=1) - expected).abs().max() <= 1e-6


def test_endless_session_keeps_a_bounded_window(toy):
    """No num_frames: a rolling window of 6 frames with a 3-frame sink. Its first two blocks equal a finite
    session's (the window is not full yet), and over 8 blocks, a re-cache included, the cache keeps one shape."""
    comp, cfg = toy
    session = StreamSession(comp, cfg, A, seed=1)
    finite = StreamSession(comp, cfg, A, num_frames=6, seed=1)
    cache, shapes = session.rollout.streams[0].cache, None
    for i in range(8):
        block = session.next_block()
        assert block.start == 3 * i and block.pixels.shape[1] == (9 if i == 0 else 12)
        if i < 2:
            torch.testing.assert_close(block.latents, finite.next_block().latents, rtol=0, atol=1e-6)
        now = {tuple(kv.shape) for kvs in (cache.k, cache.v) for kv in kvs}
        assert now == (shapes or now)
        shapes = now
        assert len(shapes) == 1 and next(iter(shapes))[1] == 6 * cache.frame_tokens  # 6 frames' tokens
        if i == 4:
            session.set_prompt(B)  # a re-cache in the rolling window: the sink and the last block again
    assert session.frame == 24 and not session.finished


def test_rolling_recache_reads_only_written_slots():
    """Mid re-cache the cache holds the sink and a later block with unwritten slots between (a jump past the
    evicted frames): what those slots hold (stale frames of the old prompt, or anything) changes nothing."""
    from causvid.tiny_wan.dit import random_dit

    dit = random_dit("tiny", seed=2, text_len=16)
    ctx = torch.randn(1, 16, 32)
    x = [torch.randn(1, 3, 16, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    t0 = torch.zeros(1, 3)
    outputs = []
    with torch.no_grad():
        for garbage in (None, 10.0):
            cache = dit.new_cache(1, local_attn_size=9, sink_size=3)
            for s, block in enumerate(x):  # frames 0..11: the ring holds 0-2 (sink), 6-8 and 9-11 (slots 3-5)
                dit(block, t0, ctx, cache=cache, start_frame=3 * s)
            cache.reset()  # the re-cache: the sink again, then a jump to frames 6-8; slots 3-5 keep frames 9-11
            dit(x[0], t0, ctx, cache=cache, start_frame=0)
            if garbage:
                ft = cache.frame_tokens
                for kv in (cache.k, cache.v):
                    for layer in kv:
                        layer[:, 3 * ft:6 * ft] = garbage * torch.randn_like(layer[:, 3 * ft:6 * ft])
            cache.seek(6)
            outputs.append(dit(x[2], t0, ctx, cache=cache, start_frame=6))
            assert cache.held_frames() == [0, 1, 2, -1, -1, -1, 6, 7, 8]  # a gap: read around it (equal outputs)
            out_all = dit(x[3], t0, ctx, cache=cache, start_frame=9)  # slots 3-5 written: all valid again
            assert cache.held_frames() == [0, 1, 2, 9, 10, 11, 6, 7, 8] and torch.isfinite(out_all).all()
    torch.testing.assert_close(outputs[0], outputs[1])


def test_v2v_at_strength_1000_is_text_to_video(toy):
    comp, cfg = toy
    noise = noise_of(6)
    source = torch.randn(1, 6, 16, 16, 16)
    t2v = [b.latents for b in StreamSession(comp, cfg, A, noise=noise, generator=torch.Generator().manual_seed(7))]
    v2v = [b.latents for b in StreamSession(comp, cfg, A, noise=noise, generator=torch.Generator().manual_seed(7),
                                            input_latents=source, strength=1000)]
    assert (torch.cat(t2v, 1) - torch.cat(v2v, 1)).abs().max() <= 1e-6


def sdedit_by_hand(comp, source, noise, strength, prompt, seed):
    """CausVid's V2V (SDEdit per block) from WanDiT calls: each block of the input noised to T on the shift-5
    grid, x = (1 - s_T) src + s_T n, then the student's steps from T down (T itself, then the warped list's
    entries below T, each x0 = x - s v re-noised to the next), then the refresh pass at t = 0."""
    import numpy as np

    u = np.linspace(1.0, 0.0, 1001, dtype=np.float32)[:-1]
    grid = (5 * u / (1 + 4 * u)).astype(np.float32)  # float32, as the originals' scheduler
    sigma = lambda t: float(grid[np.abs(1000 * grid.astype(np.float64) - t).argmin()])  # noqa: E731  (nearest)
    warped = [float(np.float32(1000) * grid[k]) for k in (0, 250, 500, 750)]  # [1000, 937.5, 833.3, 625]
    steps = [float(strength)] + [t for t in warped if t < strength - 1e-3]
    dit, ctx, gen = comp.dit, comp.text_encoder.encode([prompt]), torch.Generator().manual_seed(seed)
    cache, out = dit.new_cache(1, max_frames=source.shape[1]), []
    with torch.no_grad():
        for start in range(0, source.shape[1], 3):
            s_t = sigma(strength)
            x = (1 - s_t) * source[:, start:start + 3] + s_t * noise[:, start:start + 3]
            for i, step in enumerate(steps):
                flow = dit(x, torch.full((1, 3), step), ctx, cache=cache, start_frame=start)
                x0 = (x.double() - sigma(step) * flow.double()).float()
                if i + 1 < len(steps):
                    s = sigma(steps[i + 1])
                    x = (1 - s) * x0 + s * torch.randn(x0.shape, generator=gen)
            dit(x0, torch.zeros(1, 3), ctx, cache=cache, start_frame=start)
            out.append(x0)
    return torch.cat(out, dim=1), steps


@pytest.mark.parametrize("strength, steps", [(500, 1), (900, 3)])
def test_v2v_equals_a_hand_sdedit_reference(toy, strength, steps):
    """At T = 500 only T itself is run (every listed step is above it); at T = 900 T, 833.3 and 625."""
    comp, cfg = toy
    noise, source = noise_of(6), noise_of(6, seed=11)
    session = StreamSession(comp, cfg, B, noise=noise, generator=torch.Generator().manual_seed(7),
                            input_latents=source.double(), strength=strength)  # any dtype in: the model's out
    got = torch.cat([b.latents for b in session], dim=1)
    expected, hand_steps = sdedit_by_hand(comp, source, noise, strength, B, seed=7)
    assert len(hand_steps) == steps and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # float32 rounding of two evaluation orders
    assert (got - source).abs().mean() < (got - noise).abs().mean() or strength > 500  # T = 500 keeps the input


@pytest.mark.parametrize("strength, frames, message", [
    (0, 6, "--strength 0: video-to-video needs a timestep T in (0, 1000]"),
    (1001, 6, "--strength 1001: video-to-video needs a timestep T in (0, 1000]"),
    (None, 6, "--strength None: video-to-video needs a timestep T in (0, 1000]"),
    (500, 2, "the input video has 2 latent frames, fewer than one block (3)"),
])
def test_v2v_bad_inputs(toy, strength, frames, message):
    comp, cfg = toy
    with pytest.raises(ValueError) as error:
        StreamSession(comp, cfg, A, input_latents=torch.zeros(1, frames, 16, 16, 16), strength=strength)
    assert str(error.value) == message


@pytest.mark.parametrize("frames, num_frames, made", [(10, None, 9), (10, 6, 6), (6, 9, 6)])
def test_v2v_makes_the_inputs_whole_blocks_or_fewer_frames_if_asked(toy, frames, num_frames, made):
    """The input's whole blocks (a trailing partial block is left), or num_frames if fewer; T = 1 is a strength
    (the smallest timestep)."""
    comp, cfg = toy
    session = StreamSession(comp, cfg, A, input_latents=noise_of(frames), strength=1, num_frames=num_frames)
    assert sum(b.latents.shape[1] for b in session) == made and session.frame == made


def test_v2v_cuts_every_blocks_own_schedule_at_t():
    """With per-block schedules (the first block 4 steps, the rest 1), V2V at T runs T and each list's steps
    below it: block 0 [600, 500, 250], block 1 [600]."""
    from causvid.pipelines.stream import make_sampler

    cfg = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml", overrides=[
        "denoising_step_list=[1000]", "denoising_step_list_per_block=[[1000,750,500,250]]",
        "warp_denoising_step=false"])
    sampler, guidance = make_sampler(cfg, torch.Generator(), below=600.0)
    for block, expected in ((0, [600.0, 500.0, 250.0]), (1, [600.0])):
        fed = []
        sampler(lambda x, t: fed.append(float(t[0, 0])) or torch.zeros_like(x), torch.ones(1, 3, 1, 1, 1), block)
        assert fed == expected
    assert guidance == 1.0


def test_resink_makes_the_first_block_under_the_new_prompt_the_sink(toy):
    """A switch with resink in a rolling window (6 frames, sink 3): the old sink (A's first block) is dropped;
    the first block under B sees only the window's last A block, re-cached under B, and itself (reference: a
    cache-free block-causal forward over those contiguous frames at their own positions); then that block is
    the sink, and the A block leaves the window."""
    comp, cfg = toy
    dit, steps, grid = comp.dit, denoising_steps(cfg), generator_grid(cfg)
    noise, gen = noise_of(18), torch.Generator().manual_seed(7)
    session = StreamSession(comp, cfg, A, noise=noise, generator=gen, local_attn_size=6, sink_size=3)
    before = [session.next_block() for _ in range(4)]
    state = gen.get_state()
    session.set_prompt(B, resink=True)
    got = session.next_block().latents

    hand_gen, ctx = torch.Generator(), comp.text_encoder.encode([B])
    hand_gen.set_state(state)
    x = noise[:, 12:15]
    with torch.no_grad():
        for i, step in enumerate(steps):
            t = torch.cat([torch.zeros(1, 3), torch.full((1, 3), step)], dim=1)
            flow = dit(torch.cat([before[-1].latents, x], 1), t, ctx, causal=True, num_frame_per_block=3,
                       start_frame=9)[:, 3:]
            x0 = flow_to_x0(flow, x, step, grid)
            if i + 1 < len(steps):
                x = add_noise(x0, torch.randn(x0.shape, generator=hand_gen), steps[i + 1], grid)
    assert (got - x0).abs().max() <= 1e-5
    cache = session.rollout.streams[0].cache
    session.next_block()
    assert cache.sink_start == 12 and sorted(cache.held_frames()) == list(range(12, 18))
    assert [s for s in session.rollout.streams[0].starts] == [12, 15]


def test_the_many_step_teachers_sampler_is_wans_unipc_with_its_guidance():
    """A config without a step list (the AR-diffusion teacher) samples with Wan's UniPC over its
    num_inference_steps at its shift (the model fed diffusers' timesteps for that schedule) and CFG at its
    guidance_scale; it cannot do video-to-video, which needs the student's steps."""
    import numpy as np
    from diffusers import UniPCMultistepScheduler

    from causvid.pipelines.stream import make_sampler

    cfg = load_config(ROOT / "configs" / "tiny" / "ar_diffusion_tf_chunkwise.yaml",
                      overrides=["num_inference_steps=7", "model_kwargs.timestep_shift=3.0"])
    sampler, guidance = make_sampler(cfg, torch.Generator())
    fed = []
    sampler(lambda x, t: fed.append(float(t[0, 0])) or -x, torch.ones(1, 3, 1, 1, 1), 0)
    sched = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                    use_flow_sigmas=True, flow_shift=3.0)
    sched.set_timesteps(sigmas=np.linspace(0.999, 0, 8)[:-1])
    assert fed == [float(t) for t in sched.timesteps] and guidance == 3.0
    with pytest.raises(ValueError, match=r"^video-to-video needs a few-step student \(a config with "
                                         r"denoising_step_list\)$"):
        make_sampler(cfg, torch.Generator(), below=500.0)


@pytest.mark.parametrize("config, strength, message", [
    ("ar_diffusion_tf_chunkwise", 0.5,
     "--strength: video-to-video needs a few-step student (a config with denoising_step_list)"),
    ("causal_forcing_dmd_chunkwise", 0.0, "--strength 0.0: give a fraction of the noise schedule in (0, 1]"),
    ("causal_forcing_dmd_chunkwise", 1.5, "--strength 1.5: give a fraction of the noise schedule in (0, 1]"),
    ("causal_forcing_dmd_chunkwise", 0.2, "--strength 0.2: the student has 4 steps, so the smallest strength that "
                                          "runs one is 0.25; give a strength in [0.25, 1]"),
])
def test_a_strength_the_student_cannot_run_is_one_line(config, strength, message):
    from causvid.errors import UsageError
    from causvid.pipelines.stream import strength_timestep

    with pytest.raises(UsageError) as error:
        strength_timestep(load_config(ROOT / "configs" / "tiny" / f"{config}.yaml"), strength)
    assert str(error.value) == message


def test_set_prompt_takes_the_sessions_defaults_unless_told(toy):
    """recache / resink given to set_prompt override the session's; left out, the session's apply."""
    comp, cfg = toy
    noise = noise_of(12)
    session = StreamSession(comp, cfg, A, noise=noise, generator=torch.Generator().manual_seed(7), recache=False)
    blocks = [session.next_block(), session.next_block()]
    session.set_prompt(B, recache=True)
    got = torch.cat([b.latents for b in blocks + list(session)], dim=1)
    assert (got - by_hand(comp, cfg, noise, switch_block=2, recache=True)).abs().max() <= 1e-5
    sinks = []
    for kw in (dict(), dict(resink=False)):  # the session's default: re-sink
        session = StreamSession(comp, cfg, A, seed=1, local_attn_size=6, sink_size=3)
        for _ in range(4):
            session.next_block()
        session.set_prompt(B, **kw)
        session.next_block()
        sinks.append(session.rollout.streams[0].cache.sink_start)
    assert sinks == [12, 0]


def test_recache_frames_comes_from_the_config_unless_set_prompt_says():
    """model_kwargs.recache_frames is the session's default (framewise toy: 1, only the latest frame is re-cached
    and the older ones forgotten); set_prompt(recache_frames=-1) re-caches the whole window (LongLive)."""
    cfg = load_config(ROOT / "configs" / "toy" / "cf_dmd_framewise.yaml", overrides=["model_kwargs.recache_frames=1"])
    held = []
    for kw in (dict(), dict(recache_frames=-1)):
        session = StreamSession(load_components(ROOT / "checkpoints" / "toy_long"), cfg, A, seed=1)
        for _ in range(8):  # a rolling window of the training length, 6 frames, with a one-frame sink
            session.next_block()
        session.set_prompt(B, **kw)
        session.next_block()  # the switch happens here, then frame 8 is written as the new sink
        held.append(sorted(f for f in session.rollout.streams[0].cache.held_frames() if f >= 0))
    assert held == [[7, 8], [3, 4, 5, 6, 7, 8]]


def test_recache_noise_comes_from_the_config_unless_set_prompt_says():
    """model_kwargs.recache_noise is the session's default: a switch with it equals one told the same level by
    set_prompt, and differs from a clean re-cache (set_prompt(recache_noise=0))."""
    components = load_components(ROOT / "checkpoints" / "toy_long")
    clean = load_config(ROOT / "configs" / "toy" / "cf_dmd_framewise.yaml", overrides=["model_kwargs.recache_noise=0"])
    noisy = load_config(ROOT / "configs" / "toy" / "cf_dmd_framewise.yaml",
                        overrides=["model_kwargs.recache_noise=500"])
    videos = []
    for cfg, kw in ((noisy, {}), (clean, dict(recache_noise=500)), (noisy, dict(recache_noise=0))):
        session = StreamSession(components, cfg, A, seed=1)
        blocks = [session.next_block().latents for _ in range(7)]
        session.set_prompt(B, **kw)
        videos.append(torch.cat(blocks + [session.next_block().latents for _ in range(2)], dim=1))
    assert (videos[0] - videos[1]).abs().max() == 0 and (videos[0][:, 7:] - videos[2][:, 7:]).abs().max() > 0.1


def test_a_block_reports_its_sampling_and_decoding_time(toy, monkeypatch):
    """latent_seconds: from the block's start to its latents; decode_seconds: from there to its pixels (a fake
    clock that advances 3 s, then 7 s)."""
    import causvid.pipelines.stream as stream

    comp, cfg = toy
    session = StreamSession(comp, cfg, A, num_frames=3, seed=1)
    ticks = iter([100.0, 103.0, 110.0])
    monkeypatch.setattr(stream.time, "perf_counter", lambda: next(ticks))
    block = session.next_block()
    assert (block.latent_seconds, block.decode_seconds) == (3.0, 7.0)


def test_a_bfloat16_model_streams_in_bfloat16_whatever_the_noise_dtype(toy):
    """The session casts what it is given (noise of another dtype) and what it draws to the model's dtype."""
    import copy

    comp, cfg = toy
    half = copy.copy(comp)
    half.dit = copy.deepcopy(comp.dit).to(torch.bfloat16)
    for kw in (dict(noise=noise_of(3).double()), dict(num_frames=3, seed=1)):
        block = StreamSession(half, cfg, A, **kw).next_block()
        assert block.latents.dtype == torch.bfloat16 and torch.isfinite(block.latents.float()).all()


@pytest.mark.parametrize("overrides", [
    ["num_inference_steps=3"],  # the many-step teacher: UniPC with CFG on a second (negative-prompt) stream
    ["context_noise=40", "independent_first_frame=true", "image_or_video_shape=[1,7,16,16,16]",
     "num_training_frames=7"],
    ["model_kwargs.rope_positions=window", "model_kwargs.local_attn_size=6", "model_kwargs.sink_size=3"],
])
def test_the_sessions_settings_come_from_the_config(toy, overrides):
    """The session builds the rollout its config describes: the same blocks as the one loop given those settings
    by hand (the teacher's sampler and guidance, context noise, the [1, 3, 3] layout, window RoPE in a window)."""
    from causvid.config import warp_shift
    from causvid.pipelines.rollout import Rollout, ode_sampler

    comp = toy[0]
    teacher = overrides[0].startswith("num_inference_steps")
    cfg = load_config(ROOT / "configs" / "toy" / f"{'ar_diffusion' if teacher else 'cf_dmd'}_chunkwise.yaml",
                      overrides=overrides)
    frames = 10 if cfg.independent_first_frame else 15
    noise = noise_of(frames)
    got = torch.cat([b.latents for b in StreamSession(comp, cfg, A, noise=noise,
                                                       generator=torch.Generator().manual_seed(7))], dim=1)
    kw = dict(grid=generator_grid(cfg), context_noise=float(cfg.context_noise),
              independent_first_frame=bool(cfg.independent_first_frame), rope_positions=cfg.model_kwargs.rope_positions)
    if teacher:
        assert cfg.guidance_scale != 1.0
        kw.update(sampler=ode_sampler(3, warp_shift(cfg)), guidance_scale=float(cfg.guidance_scale),
                  negative_context=comp.text_encoder.encode([cfg.negative_prompt]))
    else:
        kw.update(sampler=few_step_sampler(denoising_steps(cfg), grid=generator_grid(cfg),
                                           generator=torch.Generator().manual_seed(7)))
    if cfg.model_kwargs.local_attn_size != -1:
        kw.update(local_attn_size=6, sink_size=3)
    rollout = Rollout(comp.dit, comp.text_encoder.encode([A]), batch=1, num_frame_per_block=3, max_frames=frames,
                      **kw)
    blocks = []
    with torch.no_grad():
        while rollout.frame < frames:
            blocks.append(rollout.step(noise[:, rollout.frame:rollout.frame + rollout.next_block_size()]))
    assert (got - torch.cat(blocks, dim=1)).abs().max() <= 1e-5


def test_a_session_without_a_length_runs_on_and_with_one_stops():
    """num_frames 6: two blocks, then finished; the default seed is 0; an endless stream rolls a window of the
    training length with a one-block sink, or the sink it is given."""
    import causvid.pipelines.text_to_video as t2v

    comp = t2v.load_components(ROOT / "checkpoints" / "toy")
    cfg = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml")
    finite = StreamSession(comp, cfg, A, num_frames=6)
    blocks = list(finite)
    assert len(blocks) == 2 and finite.finished
    seeded = StreamSession(comp, cfg, A, num_frames=6, seed=0)
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(blocks, seeded))
    for kw, sink in ((dict(), 3), (dict(sink_size=0), 0)):
        cache = StreamSession(comp, cfg, A, **kw).rollout.streams[0].cache
        assert (cache.capacity, cache.sink_size) == (6, sink)


@pytest.mark.parametrize("teacher", [False, True])
def test_the_negative_prompt_is_encoded_only_for_guidance(toy, teacher, monkeypatch):
    """A few-step student (guidance 1) encodes its prompts and nothing else; the many-step teacher (CFG) also
    encodes the config's negative prompt, once, for its second stream."""
    comp, cfg = toy
    if teacher:
        cfg = load_config(ROOT / "configs" / "toy" / "ar_diffusion_chunkwise.yaml", overrides=["num_inference_steps=2"])
        assert cfg.guidance_scale not in (1.0, 2.0)
    encoded, encode = [], comp.text_encoder.encode

    def recording(prompts):
        encoded.extend(prompts)
        return encode(prompts)
    monkeypatch.setattr(comp.text_encoder, "encode", recording)
    session = StreamSession(comp, cfg, A, noise=noise_of(6))
    session.next_block()
    session.set_prompt(B)
    session.next_block()
    assert encoded == ([A, cfg.negative_prompt, B] if teacher else [A, B])
