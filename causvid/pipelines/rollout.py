"""The causal rollout: blocks x denoising steps, with the KV cache, yielding each clean block as it is made.

Framewise and chunkwise generation are the same loop with a different `num_frame_per_block`. For each block:
start from its noise, run the few-step sampler (predict x0, re-noise to the next step; Self-Forcing's
inference), then write the clean block into the cache with one more pass at `context_noise` so that later
blocks attend to clean context. With `use_cache=False` every call recomputes the whole prefix instead (the
cost the cache removes; same numbers up to float error).
"""
from typing import Iterator, Sequence

import torch

from causvid.flow import add_noise, flow_to_x0


def _randn_like(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32).to(x.dtype)


def causal_rollout(model, noise: torch.Tensor, context: torch.Tensor, *, num_frame_per_block: int,
                   denoising_steps: Sequence[float], first_block_steps: Sequence[float] = None,
                   context_noise: float = 0.0, local_attn_size: int = -1, sink_size: int = 0,
                   use_cache: bool = True, generator: torch.Generator = None) -> Iterator[tuple]:
    """Yield (start_frame, clean block [B, n, C, H, W]) for noise [B, F, C, H, W].

    denoising_steps: timesteps actually used, e.g. [1000, 937.5, 833.3, 625] (see flow.normalize_step_list);
    first_block_steps: a different list for block 0 (Causal-Forcing's 1/2-step configs).
    """
    batch, frames = noise.shape[:2]
    if frames % num_frame_per_block:
        raise ValueError(f"{frames} latent frames do not split into blocks of {num_frame_per_block}")
    cache = model.new_cache(batch, max_frames=frames, local_attn_size=local_attn_size,
                            sink_size=sink_size) if use_cache else None
    done, done_t = [], []  # clean context (no-cache path only)
    for start in range(0, frames, num_frame_per_block):
        steps = first_block_steps if (start == 0 and first_block_steps) else denoising_steps
        x = noise[:, start:start + num_frame_per_block]
        for i, step in enumerate(steps):
            t = torch.full(x.shape[:2], float(step), device=x.device)
            flow = _denoise(model, x, t, context, cache, start, done, done_t, num_frame_per_block,
                            local_attn_size, sink_size)
            x0 = flow_to_x0(flow, x, t)
            if i + 1 < len(steps):
                x = add_noise(x0, _randn_like(x0, generator), torch.full_like(t, float(steps[i + 1])))
        t_ctx = torch.full(x0.shape[:2], float(context_noise), device=x0.device)
        ctx = add_noise(x0, _randn_like(x0, generator), t_ctx) if context_noise > 0 else x0
        if use_cache:
            model(ctx, t_ctx, context, cache=cache, start_frame=start)  # cache refresh with the clean block
        else:
            done.append(ctx)
            done_t.append(t_ctx)
        yield start, x0


def _denoise(model, x, t, context, cache, start, done, done_t, block, local_attn_size, sink_size):
    if cache is not None:
        return model(x, t, context, cache=cache, start_frame=start)
    full_x = torch.cat(done + [x], dim=1)
    full_t = torch.cat(done_t + [t], dim=1)
    out = model(full_x, full_t, context, causal=True, num_frame_per_block=block,
                local_attn_size=local_attn_size, sink_size=sink_size)
    return out[:, start:]
