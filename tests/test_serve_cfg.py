"""A live stream's prompt switch with re-sink (the server's default) under classifier-free guidance: both the
conditional and the unconditional stream drop the old sink, so the first block under the new prompt equals a
reference written by hand from cache-free WanDiT calls (the window's last block re-cached under each prompt, and
the new block), guided in Wan's form uncond + g (cond - uncond)."""
from pathlib import Path

import torch

from causvid.config import denoising_steps, generator_grid, load_config
from causvid.flow import add_noise, flow_to_x0
from causvid.pipelines.rollout import Rollout, few_step_sampler
from causvid.pipelines.text_to_video import load_components

ROOT = Path(__file__).resolve().parents[1]
A, B, NEGATIVE = "a red square moving left", "a blue circle moving up", "a green triangle"
GUIDANCE = 3.0


def test_a_guided_switch_with_resink_moves_both_sinks():
    comp = load_components(ROOT / "checkpoints" / "toy")
    cfg = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml")
    dit, steps, grid = comp.dit, denoising_steps(cfg), generator_grid(cfg)
    ctx = {p: comp.text_encoder.encode([p]) for p in (A, B, NEGATIVE)}
    noise = torch.randn(1, 18, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(7)
    rollout = Rollout(dit, ctx[A], batch=1, num_frame_per_block=3, grid=grid, negative_context=ctx[NEGATIVE],
                      guidance_scale=GUIDANCE, local_attn_size=6, sink_size=3,
                      sampler=few_step_sampler(steps, generator=gen, grid=grid))
    with torch.no_grad():
        before = [rollout.step(noise[:, 3 * b:3 * b + 3]) for b in range(4)]
        state = gen.get_state()
        rollout.set_context(ctx[B], recache=True, resink=True)
        got = rollout.step(noise[:, 12:15])

        # by hand: each prompt sees only the window's last block (frames 9-11, clean, t = 0) and the new block
        hand_gen = torch.Generator()
        hand_gen.set_state(state)
        x = noise[:, 12:15]
        for i, step in enumerate(steps):
            t = torch.cat([torch.zeros(1, 3), torch.full((1, 3), step)], dim=1)
            cond, uncond = (dit(torch.cat([before[-1], x], 1), t, ctx[p], causal=True, num_frame_per_block=3,
                                start_frame=9)[:, 3:] for p in (B, NEGATIVE))
            x0 = flow_to_x0(uncond + GUIDANCE * (cond - uncond), x, step, grid)
            if i + 1 < len(steps):
                x = add_noise(x0, torch.randn(x0.shape, generator=hand_gen), steps[i + 1], grid)
        assert (got - x0).abs().max() <= 1e-4  # float error, x5 through the guidance (the old sink: 3.8)

        rollout.step(noise[:, 15:18])  # the block under B is the sink of both caches; the A block left both
    for stream in rollout.streams:
        assert stream.cache.sink_start == 12 and sorted(stream.cache.held_frames()) == list(range(12, 18))
