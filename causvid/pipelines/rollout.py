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
from causvid.models.wan.attention import block_layout

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


def block_steps(steps: Sequence[float], leading_steps: Sequence[Sequence[float]], block_index: int):
    """The timesteps block `block_index` runs: its own list among the leading blocks', else the main list."""
    return leading_steps[block_index] if block_index < len(leading_steps or ()) else steps


def few_step_sampler(steps: Sequence[float], leading_steps: Sequence[Sequence[float]] = (),
                     generator: torch.Generator = None, noise_fn: NoiseFn = None,
                     exit_step: Callable[[int], int] = None, grid: float = None,
                     trajectory: list = None) -> Sampler:
    """The distilled students' sampler (CausVid / Self-Forcing inference): predict x0 at each listed
    timestep, re-noise it with fresh noise to the next one. `leading_steps[i]` replaces the list for block i
    (Causal-Forcing's 1/2-step models give the first block 4 steps; a per-block schedule gives any number of
    first blocks more steps than the rest).

    exit_step(block_index) -> i: Self-Forcing training. Stop at step i and return its x0; the steps before it
    run without gradient, so the generator's gradient comes from the exit step alone.
    grid: the shift of the training grid that flow -> x0 and re-noising snap to (the originals'), or None.
    trajectory: a list that receives, per step, the state the model saw (CausVid's backward simulation).
    """
    noise_fn = noise_fn or generator_noise(generator)

    def sample(flow_fn, x, block_index):
        times = block_steps(steps, leading_steps, block_index)
        last = len(times) - 1 if exit_step is None else exit_step(block_index)
        for i, step in enumerate(times[:last + 1]):
            t = torch.full(x.shape[:2], float(step), device=x.device)
            if trajectory is not None:
                trajectory.append(x)
            with torch.set_grad_enabled(torch.is_grad_enabled() and (exit_step is None or i == last)):
                x0 = flow_to_x0(flow_fn(x, t), x, t, grid)
            if i < last:
                x = add_noise(x0, noise_fn(x0, (block_index, i)), torch.full_like(t, float(times[i + 1])), grid)
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


class Rollout:
    """The one autoregressive loop, a block at a time: sample the block with the sampler (the model sees the
    cached context), then write it into the cache with the refresh pass. Batch generation (`causal_rollout`),
    live streams (`causvid.pipelines.stream.StreamSession`), long videos and Self-Forcing training all drive it.

    max_frames: the video's length, or None for an endless stream through a rolling window (local_attn_size
    must then be set). `set_context` switches the prompt at the next block: with `recache`, the frames still in
    the window are written again under the new prompt (LongLive's KV re-cache), else only the cross-attention
    changes (the naive switch). rope_positions: "absolute" (frame indices, the originals) or "window" (ranks in
    the rolling window, ∞-RoPE; see `KVCache`). Other arguments as `causal_rollout`'s.
    """

    def __init__(self, model, context: torch.Tensor, *, batch: int, num_frame_per_block: int, sampler: Sampler,
                 max_frames: int = None, negative_context: torch.Tensor = None, guidance_scale: float = 1.0,
                 context_noise: float = 0.0, noise_context: bool = False, grid: float = None,
                 local_attn_size: int = -1, sink_size: int = 0, cache_gradient: str = "straight_through",
                 use_cache: bool = True, independent_first_frame: bool = False, noise_fn: NoiseFn = None,
                 generator: torch.Generator = None, rope_positions: str = "absolute"):
        if max_frames is None and local_attn_size == -1:
            raise ValueError("an endless rollout (max_frames None) needs a rolling window (local_attn_size)")
        self.sampler, self.block, self.first_alone = sampler, num_frame_per_block, independent_first_frame
        self.context_noise, self.noise_context, self.grid = float(context_noise), noise_context, grid
        self.guided = negative_context is not None and guidance_scale != 1.0
        self.guidance_scale = guidance_scale
        self.noise_fn = noise_fn or generator_noise(generator)
        window = dict(local_attn_size=local_attn_size, sink_size=sink_size)
        layout = dict(num_frame_per_block=num_frame_per_block, independent_first_frame=independent_first_frame)
        contexts = [context] + ([negative_context] if self.guided else [])
        cache = dict(gradient=cache_gradient, rope_positions=rope_positions) if use_cache else None
        self.streams = [_Stream(model, c, batch, max_frames, layout, window, cache) for c in contexts]
        self.frame = 0      # frames made (or given) so far
        self.generated = 0  # blocks sampled so far (the sampler's block index)

    def next_block_size(self) -> int:
        return 1 if (self.first_alone and self.frame == 0) else self.block

    def give(self, latent: torch.Tensor) -> torch.Tensor:
        """Take a given block (an I2V image latent, a long video's overlap) as made: written at t = 0."""
        self._check(latent.shape[1])
        for s in self.streams:
            s.commit(latent, torch.zeros(latent.shape[:2], device=latent.device), self.frame)
        self.frame += latent.shape[1]
        return latent

    def step(self, noise: torch.Tensor, sampler: Sampler = None) -> torch.Tensor:
        """Sample the next block from its noise [B, n, C, H, W] (`sampler` overrides the rollout's for this
        block: V2V's partial schedule), write it into the cache, return its clean latents."""
        start, index = self.frame, self.generated
        self._check(noise.shape[1])

        def flow_fn(x, t):
            flows = [s.flow(x, t, start) for s in self.streams]
            return cfg(flows[0], flows[1], self.guidance_scale) if self.guided else flows[0]
        x0 = (sampler or self.sampler)(flow_fn, noise, index)
        t_ctx = torch.full(x0.shape[:2], self.context_noise, device=x0.device)
        with torch.no_grad():  # the refresh pass only writes the cache: no graph
            ctx = add_noise(x0, self.noise_fn(x0, (index, "context")), t_ctx, self.grid) if self.noise_context \
                else x0.detach()
            for s in self.streams:
                s.commit(ctx, t_ctx, start)
        self.frame += noise.shape[1]
        self.generated += 1
        return x0

    def set_context(self, context: torch.Tensor, recache: bool = True, resink: bool = False,
                    recache_frames: int = -1, recache_noise: float = 0.0) -> None:
        """The prompt of the blocks from the next one on (the negative prompt's stream keeps its own).
        resink (a rolling window): the old sink is dropped and the next block becomes the sink, so the stream
        anchors on the new prompt; the window's other blocks are re-cached for continuity until evicted.
        recache_frames: re-cache only the blocks holding the latest this many frames (besides a sink that stays)
        and forget the older ones; -1: all of them (LongLive). recache_noise T > 0: the re-cached blocks are
        written noised to T (`add_noise`, labelled T) instead of clean, so the new prompt trusts them less; their
        clean latents stay the refresh inputs of later switches. The negative stream (CFG) moves its sink,
        forgets and is noised with it (the same draws), so both caches hold the same frames."""
        noised = {}

        def renoise(clean, t, start):  # one draw per block, shared by the streams
            if start not in noised:
                level = torch.full_like(t, float(recache_noise))
                noised[start] = add_noise(clean, self.noise_fn(clean, ("recache", self.generated, start)), level,
                                          self.grid), level
            return noised[start]
        refresh = renoise if recache and recache_noise > 0 else None
        self.streams[0].switch(context, recache, resink, recache_frames, refresh)
        if resink or (recache and (recache_frames != -1 or refresh is not None)):
            for s in self.streams[1:]:
                s.switch(s.context, True, resink, recache_frames, refresh)

    def _check(self, size):
        if size != self.next_block_size():
            raise ValueError(f"a block of {size} frames at frame {self.frame}; the layout needs "
                             f"{self.next_block_size()} (num_frame_per_block={self.block}"
                             f"{', independent first frame' if self.first_alone else ''})")


def causal_rollout(model, noise: torch.Tensor, context: torch.Tensor, *, num_frame_per_block: int,
                   sampler: Sampler, negative_context: torch.Tensor = None, guidance_scale: float = 1.0,
                   context_noise: float = 0.0, noise_context: bool = False, grid: float = None,
                   local_attn_size: int = -1, sink_size: int = 0, cache_gradient: str = "straight_through",
                   initial_latent: torch.Tensor = None, use_cache: bool = True,
                   independent_first_frame: bool = False,
                   generator: torch.Generator = None, noise_fn: NoiseFn = None) -> Iterator[tuple]:
    """Yield (start_frame, clean latents [B, n, C, H, W]) block by block, for noise [B, F, C, H, W].

    negative_context + guidance_scale: classifier-free guidance in Wan's form (many-step AR diffusion), with
    a second KV cache for the unconditional stream. initial_latent [B, k, ...]: given first frames (an I2V
    image latent, or the overlap of a long video) written into the cache at t = 0 and yielded first.

    The cache refresh runs the model at t = context_noise on the clean block (Self-Forcing / Causal-Forcing
    inference) or, with noise_context (their training), on the block noised to context_noise first, through
    `add_noise` on `grid`: on the originals' grid even context_noise 0 adds sigma 0.005 of noise (shift 5).
    cache_gradient: how a training rollout's gradient crosses blocks through the cache (`KVCache`).
    independent_first_frame: frame 0 is a block of its own, [1, N, N, ...] (Self-Forcing's layout; with a
    one-frame initial_latent, the I2V layout).
    """
    batch, frames = noise.shape[:2]
    first = 0 if initial_latent is None else initial_latent.shape[1]
    blocks = block_layout(frames, num_frame_per_block, independent_first_frame)
    if first not in [start for start, _ in blocks] + [frames]:
        raise ValueError(f"{first} given latent frames end inside a block of num_frame_per_block="
                         f"{num_frame_per_block}: give whole blocks")
    rollout = Rollout(model, context, batch=batch, num_frame_per_block=num_frame_per_block, sampler=sampler,
                      max_frames=frames, negative_context=negative_context, guidance_scale=guidance_scale,
                      context_noise=context_noise, noise_context=noise_context, grid=grid,
                      local_attn_size=local_attn_size, sink_size=sink_size, cache_gradient=cache_gradient,
                      use_cache=use_cache, independent_first_frame=independent_first_frame, noise_fn=noise_fn,
                      generator=generator)
    for start, size in blocks:
        if start < first:
            yield start, rollout.give(initial_latent[:, start:start + size])
        else:
            yield start, rollout.step(noise[:, start:start + size])


class _Stream:
    """One conditioning stream of the rollout: a prompt and its KV cache (or, without a cache, the clean
    context frames to recompute), and the refresh inputs of the blocks still in the cache's window."""

    def __init__(self, model, context, batch, frames, layout, window, cache_options):
        """cache_options: KVCache keyword arguments (gradient, rope_positions), or None for no cache."""
        self.model, self.context, self.layout, self.window = model, context, layout, window
        self.cache = None if cache_options is None else model.new_cache(batch, max_frames=frames, **window,
                                                                        **cache_options)
        self.done, self.done_t, self.starts = [], [], []  # refresh inputs (and timesteps, start frames)

    def flow(self, x, t, start):
        if self.cache is not None:
            return self.model(x, t, self.context, cache=self.cache, start_frame=start)
        full = self.model(torch.cat(self.done + [x], dim=1), torch.cat(self.done_t + [t], dim=1), self.context,
                          causal=True, **self.layout, **self.window)
        return full[:, start:]

    def commit(self, clean, t, start):
        """Make the clean block part of the context for later blocks (the cache refresh pass)."""
        self.done.append(clean)
        self.done_t.append(t)
        self.starts.append(start)
        if self.cache is not None:
            self.model(clean, t, self.context, cache=self.cache, start_frame=start)
            self._forget_evicted()

    def _forget_evicted(self):
        """Keep the refresh inputs of the blocks whose frames the (rolling) cache still holds."""
        if not self.cache.rolling:
            return
        # the cache's slots say it (after a re-sink the newest block is the sink: the oldest frames are not
        # always the ones a new block overwrites)
        held = set(self.cache.held_frames())
        self._keep([i for i, s in enumerate(self.starts) if s in held])

    def _keep(self, indices):
        """Keep these blocks' refresh inputs (the others left the window)."""
        self.done, self.done_t, self.starts = ([xs[i] for i in indices] for xs in (self.done, self.done_t,
                                                                                   self.starts))

    def switch(self, context, recache, resink, recache_frames=-1, refresh=None):
        """A new prompt: only the cross-attention (recache False), or every cached frame written again under it
        (LongLive's re-cache: one refresh pass per block still in the window, at its own positions, the sink
        included, each block seeing the re-cached blocks before it). resink: the old sink's frames are dropped
        and the next block becomes the sink (re-caching the others). recache_frames (with recache): only the
        blocks holding the latest this many frames, and a sink that stays, are re-cached; the others are
        forgotten (-1: none is). refresh(clean, t, start) -> (input, t): what a block is re-cached from (default:
        its refresh inputs as they were)."""
        self.context = context
        if self.cache is None:
            if not recache or resink or refresh is not None:
                raise ValueError("without a KV cache every call recomputes the context: a switch always re-caches")
            return
        if not (recache or resink):
            return
        cache, end = self.cache, self.cache.frames_end
        old_sink = range(cache.sink_start, cache.sink_start + cache.sink_size) if cache.rolling else range(0)
        if resink:
            self._keep([i for i, s in enumerate(self.starts) if s not in old_sink])
        if recache and recache_frames != -1:
            self._keep([i for i, (s, x) in enumerate(zip(self.starts, self.done))
                        if s + x.shape[1] > end - recache_frames or (not resink and s in old_sink)])
        cache.reset()
        if resink:
            cache.move_sink(end)
        with torch.no_grad():
            for clean, t, start in zip(self.done, self.done_t, self.starts):
                cache.seek(start)
                x, t = (clean, t) if refresh is None else refresh(clean, t, start)
                self.model(x, t, context, cache=cache, start_frame=start)
        cache.seek(end)


def bidirectional_sample(model, noise: torch.Tensor, context: torch.Tensor, *, sampler: Sampler,
                         negative_context: torch.Tensor = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """The whole video at once with full attention (the Wan teacher, or a bidirectional DMD student)."""
    guided = negative_context is not None and guidance_scale != 1.0

    def flow_fn(x, t):
        cond = model(x, t, context)
        return cfg(cond, model(x, t, negative_context), guidance_scale) if guided else cond
    return sampler(flow_fn, noise, 0)
