"""The causal rollout: blocks x a per-block sampler, with the KV cache, yielding each clean block as it is made.

Framewise and chunkwise generation are the same loop with a different `num_frame_per_block`, and few-step
(distilled) and many-step (AR-diffusion teacher, with CFG) generation are the same loop with a different
sampler. For each block: run the sampler on the block's noise with a flow function that calls the model on
that block only (the cache holds the past), then write the clean block into the cache with one more pass at
`context_noise`, so that later blocks attend to clean context. With `use_cache=False` every call recomputes
the whole prefix instead (the cost the cache removes; same numbers up to float error).
"""
from typing import Callable, Iterator, Sequence

import torch

from causvid.flow import add_noise, cfg, flow_to_x0, model_timesteps, sampling_sigmas, unipc_sample

# sampler(flow_fn, noise, block_index) -> clean sample; flow_fn(x, t) -> flow with t of shape [B, F]
Sampler = Callable[[Callable, torch.Tensor, int], torch.Tensor]


# noise_fn(like, tag) -> standard normal noise shaped like `like`; `tag` names the draw (block, step), so
# training can key every draw to its sample (causvid.rng) while inference uses one generator.
NoiseFn = Callable[[torch.Tensor, tuple], torch.Tensor]


def generator_noise(generator: torch.Generator = None) -> NoiseFn:
    """Noise from one torch.Generator, drawn on its device (a CPU generator gives the same noise on CUDA)."""
    def noise(like, tag):
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device).to(like.device, like.dtype)
    return noise


def few_step_sampler(steps: Sequence[float], first_block_steps: Sequence[float] = None,
                     generator: torch.Generator = None, noise_fn: NoiseFn = None,
                     exit_step: Callable[[int], int] = None) -> Sampler:
    """The distilled students' sampler (CausVid / Self-Forcing inference): predict x0 at each listed
    timestep, re-noise it with fresh noise to the next one. `first_block_steps` replaces the list for block 0
    (Causal-Forcing's 1/2-step models give the first block 4 steps).

    exit_step(block_index) -> i: Self-Forcing training. Stop at step i and return its x0; the steps before it
    run without gradient, so the generator's gradient comes from the exit step alone.
    """
    noise_fn = noise_fn or generator_noise(generator)

    def sample(flow_fn, x, block_index):
        block_steps = first_block_steps if (block_index == 0 and first_block_steps) else steps
        last = len(block_steps) - 1 if exit_step is None else exit_step(block_index)
        for i, step in enumerate(block_steps[:last + 1]):
            t = torch.full(x.shape[:2], float(step), device=x.device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and (exit_step is None or i == last)):
                x0 = flow_to_x0(flow_fn(x, t), x, t)
            if i < last:
                x = add_noise(x0, noise_fn(x0, (block_index, i)), torch.full_like(t, float(block_steps[i + 1])))
        return x0
    return sample


def ode_sampler(num_steps: int = 50, shift: float = 5.0) -> Sampler:
    """The many-step teachers' sampler: Wan's UniPC schedule (integer timesteps as Wan feeds them)."""
    sigmas = sampling_sigmas(num_steps, shift)
    timesteps = model_timesteps(sigmas, integer=True)

    def sample(flow_fn, x, block_index):
        per_frame = lambda x_, t: flow_fn(x_, t[:, None].expand(x_.shape[:2]).float())  # noqa: E731
        return unipc_sample(per_frame, x, sigmas, timesteps=timesteps)
    return sample


def causal_rollout(model, noise: torch.Tensor, context: torch.Tensor, *, num_frame_per_block: int,
                   sampler: Sampler, negative_context: torch.Tensor = None, guidance_scale: float = 1.0,
                   context_noise: float = 0.0, local_attn_size: int = -1, sink_size: int = 0,
                   initial_latent: torch.Tensor = None, use_cache: bool = True,
                   generator: torch.Generator = None, noise_fn: NoiseFn = None) -> Iterator[tuple]:
    """Yield (start_frame, clean latents [B, n, C, H, W]) block by block, for noise [B, F, C, H, W].

    negative_context + guidance_scale: classifier-free guidance in Wan's form (many-step AR diffusion), with
    a second KV cache for the unconditional stream. initial_latent [B, k, ...]: given first frames (an I2V
    image latent, or the overlap of a long video) written into the cache at t = 0 and yielded first.
    """
    batch, frames = noise.shape[:2]
    first = 0 if initial_latent is None else initial_latent.shape[1]
    if (frames - first) % num_frame_per_block or first % num_frame_per_block:
        raise ValueError(f"{first} given + {frames - first} generated latent frames do not split into blocks "
                         f"of num_frame_per_block={num_frame_per_block}")
    guided = negative_context is not None and guidance_scale != 1.0
    noise_fn = noise_fn or generator_noise(generator)
    streams = [_Stream(model, context, batch, frames, num_frame_per_block, local_attn_size, sink_size, use_cache)]
    if guided:
        streams.append(_Stream(model, negative_context, batch, frames, num_frame_per_block, local_attn_size,
                               sink_size, use_cache))

    for start in range(0, first, num_frame_per_block):
        block = initial_latent[:, start:start + num_frame_per_block]
        for s in streams:
            s.commit(block, torch.zeros(block.shape[:2], device=block.device), start)
        yield start, block

    for index, start in enumerate(range(first, frames, num_frame_per_block)):
        def flow_fn(x, t):
            flows = [s.flow(x, t, start) for s in streams]
            return cfg(flows[0], flows[1], guidance_scale) if guided else flows[0]
        x0 = sampler(flow_fn, noise[:, start:start + num_frame_per_block], index)
        t_ctx = torch.full(x0.shape[:2], float(context_noise), device=x0.device)
        # The refresh input: the clean block, noised to context_noise when that is > 0 (Self-Forcing training).
        with torch.no_grad():  # the refresh pass only writes the cache: no graph
            ctx = add_noise(x0, noise_fn(x0, (index, "context")), t_ctx) if context_noise > 0 else x0.detach()
            for s in streams:
                s.commit(ctx, t_ctx, start)
        yield start, x0


class _Stream:
    """One conditioning stream of the rollout: a prompt and its KV cache (or, without a cache, the clean
    context frames to recompute)."""

    def __init__(self, model, context, batch, frames, block, local_attn_size, sink_size, use_cache):
        self.model, self.context, self.block = model, context, block
        self.window = dict(local_attn_size=local_attn_size, sink_size=sink_size)
        self.cache = model.new_cache(batch, max_frames=frames, **self.window) if use_cache else None
        self.done, self.done_t = [], []

    def flow(self, x, t, start):
        if self.cache is not None:
            return self.model(x, t, self.context, cache=self.cache, start_frame=start)
        full = self.model(torch.cat(self.done + [x], dim=1), torch.cat(self.done_t + [t], dim=1), self.context,
                          causal=True, num_frame_per_block=self.block, **self.window)
        return full[:, start:]

    def commit(self, clean, t, start):
        """Make the clean block part of the context for later blocks (the cache refresh pass)."""
        if self.cache is not None:
            self.model(clean, t, self.context, cache=self.cache, start_frame=start)
        else:
            self.done.append(clean)
            self.done_t.append(t)


def bidirectional_sample(model, noise: torch.Tensor, context: torch.Tensor, *, sampler: Sampler,
                         negative_context: torch.Tensor = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """The whole video at once with full attention (the Wan teacher, or a bidirectional DMD student)."""
    guided = negative_context is not None and guidance_scale != 1.0

    def flow_fn(x, t):
        cond = model(x, t, context)
        return cfg(cond, model(x, t, negative_context), guidance_scale) if guided else cond
    return sampler(flow_fn, noise, 0)
