"""A live, steerable video stream: one block at a time for as long as the caller wants, prompt switches at block
boundaries, and zero-shot streaming video-to-video.

`StreamSession` drives the one autoregressive loop (`causvid.pipelines.rollout.Rollout`) that batch generation,
long videos and Self-Forcing training drive too, and decodes each block as it is made (streaming VAE decode).

- Endless: with no `num_frames`, the KV cache is a rolling window (default: the training length) keeping the
  first block as a sink, as Self-Forcing's long videos do.
- `set_prompt(text)`: from the next block on. With re-cache (default; LongLive, arXiv 2509.22622 §3.2) the
  frames still in the window are written again under the new prompt, so the next blocks follow it without a
  hard cut; `recache=False` keeps their old K/V and swaps only the cross-attention (the naive switch).
  With re-sink (default, in a rolling window) the old sink is dropped and the first block under the new prompt
  becomes the sink: in the toy world the new prompt then shows sooner than when the old sink (the old prompt's
  first block, with its motion) stays (measured by `python -m causvid.toy.streaming`; README, "Live streams").
  With `recache_frames` n (model_kwargs.recache_frames) only the blocks holding the latest n frames are
  re-cached and the older ones forgotten: the new prompt has less of the old motion to follow; with
  `recache_noise` T they are written noised to T, which binds the new prompt less still (ours, measured in the
  toy world: docs/toy/notes.md).
- Video-to-video (CausVid, arXiv 2412.07772 §5.3, SDEdit-style): each block of the input's latents is noised to
  `strength` T and denoised with the student's steps below T. T = 1000 from the same noise is text-to-video.
"""
import time
from dataclasses import dataclass

import torch

from causvid.config import denoising_steps, generator_grid, leading_block_steps, warp_shift
from causvid.flow import NUM_TRAIN_TIMESTEPS, add_noise
from causvid.pipelines.rollout import Rollout, few_step_sampler, ode_sampler

__all__ = ["StreamSession", "StreamBlock", "make_sampler", "strength_timestep"]


def make_sampler(config, generator: torch.Generator, below: float = None):
    """(sampler, Wan-form CFG scale) of a config: a few-step student's listed steps (those below `below`, after
    `below` itself, for V2V) or, without a step list, Wan's 50-step UniPC with CFG (the AR-diffusion teacher)."""
    steps, grid = denoising_steps(config), generator_grid(config)
    if not steps:
        if below is not None:
            raise ValueError("video-to-video needs a few-step student (a config with denoising_step_list)")
        return ode_sampler(config.num_inference_steps, warp_shift(config)), float(config.guidance_scale)
    leading = leading_block_steps(config)
    if below is not None:
        steps, leading = _from(steps, below), [_from(s, below) for s in leading]
    return few_step_sampler(steps, leading, generator=generator, grid=grid), 1.0


def strength_timestep(config, strength: float) -> tuple:
    """(timestep, steps run, steps in all) of a video-to-video `strength` in (0, 1], diffusers' image-to-image
    convention: of the student's n steps the last int(n * strength) run, starting at the first of them, to which
    the input is noised (1: every step from pure noise, the input ignored). A strength too small for one step
    is a UsageError naming the smallest."""
    from causvid.errors import UsageError

    steps = denoising_steps(config)
    if not steps:
        raise UsageError("--strength: video-to-video needs a few-step student (a config with denoising_step_list)")
    if not 0 < strength <= 1:
        raise UsageError(f"--strength {strength}: give a fraction of the noise schedule in (0, 1]")
    n = len(steps)
    run = min(int(n * strength), n)
    if run == 0:
        raise UsageError(f"--strength {strength}: the student has {n} steps, so the smallest strength that runs one "
                         f"is {1 / n:g}; give a strength in [{1 / n:g}, 1]")
    return float(steps[n - run]), run, n


def _from(steps, level):
    return [float(level)] + [s for s in steps if s < level]


@dataclass
class StreamBlock:
    start: int               # first latent frame of the block
    latents: torch.Tensor    # [1, n, C, h, w]
    pixels: torch.Tensor     # [1, m, 3, H, W] in [-1, 1]: the block's new pixel frames
    prompt: str              # the prompt it was made under
    latent_seconds: float    # time spent sampling it
    decode_seconds: float    # time spent decoding it


class StreamSession:
    """A stream from loaded `components` (DiT, text encoder, VAE) and a run `config`.

    num_frames: latent frames to make (None: endless). noise [1, F, C, h, w]: the noise of every block (a finite
    stream; else each block's is drawn from `generator` as it is needed). initial_latent: given first frames
    (I2V). input_latents + strength: video-to-video. local_attn_size / sink_size: the KV window (default: the
    config's; an endless stream without one rolls a window of the training length with a one-block sink);
    rope_positions: "absolute" or "window" (default: the config's model_kwargs.rope_positions; see KVCache).
    recache / resink / recache_frames / recache_noise: what `set_prompt` does by default (re-cache the window; in a
    rolling window, make the first block under the new prompt the sink; re-cache the blocks holding the latest
    recache_frames latent frames and forget the older ones, -1 none; write them noised to recache_noise, 0 clean:
    the last two default to the config's model_kwargs).
    """

    def __init__(self, components, config, prompt: str, *, num_frames: int = None, noise: torch.Tensor = None,
                 generator: torch.Generator = None, seed: int = 0, initial_latent: torch.Tensor = None,
                 input_latents: torch.Tensor = None, strength: float = None, local_attn_size: int = None,
                 sink_size: int = None, recache: bool = True, resink: bool = True, rope_positions: str = None,
                 recache_frames: int = None, recache_noise: float = None):
        self.components, self.config, self.recache, self.resink = components, config, recache, resink
        self.recache_frames = config.model_kwargs.recache_frames if recache_frames is None else recache_frames
        self.recache_noise = float(config.model_kwargs.recache_noise if recache_noise is None else recache_noise)
        dit = components.dit
        self.dtype, self.device = dit.dtype, dit.device
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.latent_shape = tuple(config.image_or_video_shape[2:])  # C, h, w
        if input_latents is not None:
            if strength is None or not 0 < float(strength) <= NUM_TRAIN_TIMESTEPS:
                raise ValueError(f"--strength {strength}: video-to-video needs a timestep T in (0, 1000]")
            block = config.num_frame_per_block
            usable = input_latents.shape[1] // block * block
            if usable == 0:
                raise ValueError(f"the input video has {input_latents.shape[1]} latent frames, fewer than one block "
                                 f"({block})")
            num_frames = usable if num_frames is None else min(num_frames, usable)
        self.input_latents, self.strength = input_latents, strength
        self.num_frames = num_frames if num_frames is not None else (None if noise is None else noise.shape[1])
        self.noise, self.initial = noise, initial_latent

        window = config.model_kwargs.local_attn_size if local_attn_size is None else local_attn_size
        sink = config.model_kwargs.sink_size if sink_size is None else sink_size
        if self.num_frames is None and window == -1:
            window = config.image_or_video_shape[1]
            sink = config.num_frame_per_block if sink_size is None else sink_size
        self.sampler, guidance = make_sampler(config, self.generator)
        self.v2v_sampler = make_sampler(config, self.generator, below=strength)[0] if input_latents is not None \
            else None
        self.prompt = prompt
        context = self._encode(prompt)
        negative = self._encode(config.negative_prompt) if guidance != 1.0 else None
        self.rollout = Rollout(dit, context, batch=1, num_frame_per_block=config.num_frame_per_block,
                               sampler=self.sampler, max_frames=self.num_frames, negative_context=negative,
                               guidance_scale=guidance, context_noise=config.context_noise,
                               local_attn_size=window, sink_size=sink,
                               independent_first_frame=bool(config.independent_first_frame),
                               rope_positions=rope_positions or config.model_kwargs.rope_positions,
                               generator=self.generator)  # the draws of a noised re-cache (recache_noise)
        self.decoder = components.vae.stream_decoder()
        self.rolling = window != -1  # only a rolling window has a sink to move
        self._pending = None

    # -- control -------------------------------------------------------------------------------------------
    def set_prompt(self, prompt: str, recache: bool = None, resink: bool = None, recache_frames: int = None,
                   recache_noise: float = None) -> None:
        """Switch to `prompt` from the next block on (re-caching the window unless recache=False, or only the
        blocks holding its latest recache_frames frames, noised to recache_noise; with resink, the next block
        replaces the old sink). None: the session's defaults."""
        self._pending = (prompt, self.recache if recache is None else recache,
                         self.resink if resink is None else resink,
                         self.recache_frames if recache_frames is None else recache_frames,
                         self.recache_noise if recache_noise is None else float(recache_noise))

    @property
    def frame(self) -> int:
        """Latent frames made so far."""
        return self.rollout.frame

    @property
    def finished(self) -> bool:
        return self.num_frames is not None and self.frame >= self.num_frames

    # -- blocks --------------------------------------------------------------------------------------------
    def next_block(self) -> StreamBlock:
        if self.finished:
            raise StopIteration
        started = time.perf_counter()
        if self._pending is not None:
            prompt, recache, resink, recache_frames, recache_noise = self._pending
            self._pending = None
            with torch.no_grad():
                self.rollout.set_context(self._encode(prompt), recache=recache,
                                         resink=resink and recache and self.rolling, recache_frames=recache_frames,
                                         recache_noise=recache_noise)
            self.prompt = prompt
        start, size = self.frame, self.rollout.next_block_size()
        with torch.no_grad():
            if self.initial is not None and start < self.initial.shape[1]:
                latents = self.rollout.give(self.initial[:, start:start + size].to(self.device, self.dtype))
            else:
                noise = self._noise(start, size)
                if self.input_latents is None:
                    latents = self.rollout.step(noise)
                else:  # SDEdit: the input block noised to the strength, then the steps below it
                    source = self.input_latents[:, start:start + size].to(self.device, self.dtype)
                    x = add_noise(source, noise, torch.full((1, size), float(self.strength), device=self.device),
                                  generator_grid(self.config))
                    latents = self.rollout.step(x, sampler=self.v2v_sampler)
            sampled = time.perf_counter()
            pixels = self.decoder.decode(latents)
        return StreamBlock(start, latents, pixels, self.prompt, sampled - started, time.perf_counter() - sampled)

    def __iter__(self):
        while not self.finished:
            yield self.next_block()

    def _noise(self, start, size):
        if self.noise is not None:
            return self.noise[:, start:start + size].to(self.device, self.dtype)
        shape = (1, size) + self.latent_shape
        return torch.randn(shape, generator=self.generator).to(self.device, self.dtype)

    def _encode(self, prompt):
        return self.components.text_encoder.encode([prompt]).to(self.device, self.dtype)
