"""Part `wan14b.block_forward`: one chunkwise block of Wan2.1-T2V-14B in bf16 at 480x832."""
from __future__ import annotations

import contextlib
from dataclasses import replace
from functools import partial

import torch

from scripts import benchmark_inference as bench
from scripts.device_check.check import PRESET_14B, SMOKE_14B_PRESET, Check


def part_wan14b(c: Check) -> dict:
    """One chunkwise block (its denoising steps + the cache refresh) of the 14B model in bf16, cache sized for
    the whole video: latency, memory and MFU, to size the multi-GPU plan."""
    s = replace(c.settings, preset=SMOKE_14B_PRESET if c.smoke else PRESET_14B, max_blocks=1)
    model = c.model(preset=s.preset)
    noise, context = bench.random_inputs(model.config, s, c.device, c.dtype)
    block = s.num_frame_per_block
    make = partial(bench.ours, model, noise, context, s, block, True)
    memory = bench.PeakMemory(c.device)
    with torch.no_grad():
        for _ in range(s.warmup):
            bench.timed_latents(make, c.device)
        runs = []
        for r in range(s.repeats):
            with memory if r == 0 else contextlib.nullcontext():
                runs.append(bench.timed_latents(make, c.device))
    block_s = bench.stats(r["first_s"] for r in runs)
    flops = bench.flop_figures(model.config, "cached", s, block, True, block_s["median"])
    return dict(preset=s.preset, params=sum(p.numel() for p in model.parameters()), dtype=s.dtype,
                latent_shape=[1, block] + list(noise.shape[2:]), cache_frames=s.frames, block_s=block_s,
                forward_s=block_s["median"] / flops["calls"], forwards=flops["calls"], peak_memory=memory.result(),
                flops=flops)
