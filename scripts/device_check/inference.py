"""Parts `inference.*`: Wan2.1-T2V-1.3B at 480x832, chunkwise, 4 steps + 1 refresh per block, bf16, through
scripts/benchmark_inference.py's driver (bench.ours + bench.bench_mode), eager and with each speed switch; and
`inference.prompt_switch`, the cost of a switch with re-cache."""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from functools import partial
from typing import Callable

import torch

from causvid.models.wan.attention import flash_attn_func
from causvid.pipelines.rollout import causal_rollout, few_step_sampler
from causvid.pipelines.speed import SpeedOptions, apply_speed_options
from scripts import benchmark_inference as bench
from scripts.device_check.check import Check
from scripts.device_check.runner import SkipPart


def need_cuda(c: Check, what: str) -> None:
    if c.device.type != "cuda":
        raise SkipPart(f"{what} needs a CUDA device")


def part_inference(c: Check, key: str, mode: str = "cached", need: Callable = None, **switches) -> dict:
    if need is not None:
        need(c)
    s = c.settings
    opts = SpeedOptions(**{"attention_backend": "sdpa", **switches})
    if opts.compile or opts.cuda_graphs:
        opts.compile_backend = c.compile_backend
        c.compiled = True
    model = c.model()
    apply_speed_options(model, opts)
    block = bench.mode_block(mode, s)
    noise, context = bench.random_inputs(model.config, s, c.device, c.dtype)
    make = partial(bench.ours, model, noise, context, s, block, True)
    with torch.no_grad():
        out, latents = bench.bench_mode(mode, make, s, c.device, c.vae(), opts.overlap_decode, s.frames, c.log)
    out["flops"] = bench.flop_figures(model.config, mode, s, block, opts.cross_cache, out["total_s"]["median"])
    out.update(num_frame_per_block=block, options=asdict(opts), dtype=s.dtype, preset=s.preset,
               latent_shape=list(noise.shape), vae=s.vae if c.vae() is not None else f"none: {c.vae_error}")
    c.latents[key] = latents.float().cpu()
    return out


def need_flash(c: Check) -> None:
    need_cuda(c, "flash-attn")
    if flash_attn_func is None:
        raise SkipPart("flash-attn is not importable here (pip install flash-attn)")


def part_prompt_switch(c: Check) -> dict:
    """After a video, switch the prompt: re-write the cached frames' K/V under the new prompt (one cached
    forward per block over the window, at t = 0, plus the new prompt's cross-attention K/V), then make the next
    block. Through causal_rollout's `initial_latent`, which does exactly that write before generating."""
    s = c.settings
    block = s.num_frame_per_block
    model = c.model()
    noise, context = bench.random_inputs(model.config, s, c.device, c.dtype)
    window = c.latents.get("inference.eager_sdpa")
    with torch.no_grad():
        if window is None:  # the eager part did not run: make the video first (untimed)
            window = torch.cat([z for _, z in bench.ours(model, noise, context, s, block, True)], dim=1)
        window = window.to(c.device, c.dtype)
        gen = torch.Generator().manual_seed(s.seed + 7)
        new_context = torch.randn(context.shape, generator=gen).to(c.device, c.dtype)
        next_noise = torch.randn((1, block) + tuple(noise.shape[2:]), generator=gen).to(c.device, c.dtype)
        all_noise = torch.cat([window, next_noise], dim=1)  # the window part is not read (initial_latent is)

        def make():
            sampler = few_step_sampler(s.steps, s.leading_steps, generator=torch.Generator().manual_seed(s.seed))
            return causal_rollout(model, all_noise, new_context, num_frame_per_block=block, sampler=sampler,
                                  context_noise=s.context_noise, local_attn_size=s.local_attn_size,
                                  sink_size=s.sink_size, initial_latent=window,
                                  generator=torch.Generator().manual_seed(s.seed + 1))

        for _ in range(s.warmup):
            bench.timed_latents(make, c.device)
        memory = bench.PeakMemory(c.device)
        runs = []
        for r in range(s.repeats):
            with memory if r == 0 else contextlib.nullcontext():
                runs.append(bench.timed_latents(make, c.device))
    n_window = window.shape[1] // block
    recache = [sum(r["block_s"][:n_window]) for r in runs]
    nxt = [r["block_s"][n_window] for r in runs]
    eager = c.ok_result("inference.eager_sdpa")
    return dict(
        recache_s=bench.stats(recache), next_block_s=bench.stats(nxt),
        switch_to_next_block_s=bench.stats(a + b for a, b in zip(recache, nxt)),
        window_frames=window.shape[1], recache_forwards=n_window, peak_memory=memory.result(),
        eager_first_block_s=eager["first_block_s"]["median"] if eager else None,
        method=("causal_rollout(initial_latent=the window's clean latents, context=the new prompt): a fresh KV "
                "cache, the window written block by block by the model's cached forward at t = 0 (one forward per "
                "block, the rollout's refresh pass; the first also embeds the new prompt), then the next block "
                "generated: the passes StreamSession.set_prompt's re-cache runs on a global cache"))
