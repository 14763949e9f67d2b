"""ODE trajectories for student initialisation: which states to keep, how to sample them, and the causal
(teacher-forcing) trajectories of Causal Forcing, with a blockwise KV-cached fast path.

Two datasets are made from these pieces:

* CausVid's ODE pairs (`causvid.ode_data.pairs`): the bidirectional Wan teacher samples a prompt with Euler
  (50 steps, shift 8, CFG 6 with the negative prompt); the states the few-step student is trained at are kept,
  plus the endpoint. For CausVid's ``[1000, 757, 522, 0]`` those are states 0, 36, 44 and 50 of the 51
  (``ode_slot_indices``).
* Causal Forcing's causal ODE data (`causvid.ode_data.causal`): the AR-diffusion teacher samples all frames in
  parallel at the same t (48 steps, shift 5, CFG 6 on the flow), in the teacher-forcing layout with the
  ground-truth clean latent as context. Kept: the noise, the states at the warped 4-step times
  937.5 / 833.3 / 625 (indices 12, 24, 36), the ODE output and the GT latent: 6 slots.

State indexing: an N-step Euler run has N + 1 states; state i < N is the input of step i (the model sees it at
``t = 1000 * sigmas[i]``), state N is the output. Negative indices count from the end (-1 = the output).
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch

from causvid import rng
from causvid.config import warp_shift
from causvid.flow import NUM_TRAIN_TIMESTEPS, cfg, euler_sample, euler_sigmas, normalize_step_list

# Causal Forcing's student steps (configs/causal_ode_*.yaml: [1000, 750, 500, 250], warped at shift 5 to
# [1000, 937.5, 833.3, 625]); the causal ODE data keeps the states at these times.
CAUSAL_ODE_STEP_LIST = (1000, 750, 500, 250)


# Which states to keep


def ode_slot_indices(step_list: Sequence[float], sigmas: torch.Tensor, *, warp: bool = False,
                     shift: float | None = None, tolerance: float = 1.0) -> list[int]:
    """Indices of the trajectory states a few-step student trained on ``step_list`` needs, plus the endpoint.

    ``sigmas``: the sampler's schedule (N + 1 values ending in 0, e.g. ``euler_sigmas(50, 8)``); state i sits at
    timestep ``1000 * sigmas[i]``. Each listed step (a trailing 0 dropped, warped first when ``warp``, as
    ``normalize_step_list`` reads config lists) maps to the state whose timestep is **nearest** to it; the
    endpoint N (the clean sample) is appended. A step farther than ``tolerance`` timesteps from its state is
    warned about: the saved state then sits at a different noise level than the step the student uses.

    CausVid: ``[1000, 757, 522, 0]`` on ``euler_sigmas(50, 8)`` -> ``[0, 36, 44, 50]`` (timesteps 1000, 756.8,
    521.7, 0). Causal Forcing: ``[1000, 750, 500, 250]`` warped at shift 5 on ``euler_sigmas(48, 5)`` ->
    ``[0, 12, 24, 36, 48]`` (1000, 937.5, 833.3, 625, 0), exactly.
    """
    steps = normalize_step_list(list(step_list), warp=warp, shift=shift)
    grid = torch.as_tensor(sigmas, dtype=torch.float64) * NUM_TRAIN_TIMESTEPS
    n = len(grid) - 1
    indices = []
    for step in steps:
        dist = (grid[:-1] - step).abs()
        i = int(dist.argmin())
        if float(dist[i]) > tolerance:
            warnings.warn(f"step {step:g} is {float(dist[i]):.2f} timesteps from the nearest sampler state "
                          f"(index {i}, t = {float(grid[i]):.2f}); that state is saved for it", stacklevel=2)
        indices.append(i)
    if len(set(indices)) != len(indices):
        raise ValueError(f"steps {steps} map to repeated states {indices}: the sampler has too few steps")
    return indices + [n]


def slot_timesteps(indices: Sequence[int], sigmas: torch.Tensor) -> list[float]:
    """The timestep (``1000 * sigma``) of each kept state; the endpoint is 0."""
    grid = torch.as_tensor(sigmas, dtype=torch.float64) * NUM_TRAIN_TIMESTEPS
    return [float(grid[i]) for i in indices]


# Sampling


def sample_trajectory(flow_fn: Callable, noise: torch.Tensor, sigmas: torch.Tensor,
                      indices: Sequence[int]) -> torch.Tensor:
    """Euler-solve from ``noise`` (``causvid.flow.euler_sample``) and return the states at ``indices``, stacked
    on dim 1: [B, S, *noise.shape[1:]], in ``noise``'s dtype (pass float32 noise)."""
    n = len(sigmas) - 1
    wanted = [i % (n + 1) if -(n + 1) <= i <= n else None for i in indices]
    if None in wanted:
        raise IndexError(f"state indices {list(indices)} out of range for a {n}-step trajectory ({n + 1} states)")
    kept = {}

    def record(info):
        if info["i"] in wanted:
            kept[info["i"]] = info["x"].clone()

    kept[n] = euler_sample(flow_fn, noise, sigmas, callback=record)
    return torch.stack([kept[i] for i in wanted], dim=1)


def _guided(flows: list, guidance_scale: float) -> torch.Tensor:
    return cfg(flows[0], flows[1], guidance_scale) if len(flows) == 2 else flows[0]


def _contexts(context: torch.Tensor, negative_context: torch.Tensor | None, guidance_scale: float) -> list:
    """[context] or [context, negative context] (a one-row negative prompt broadcast over the batch)."""
    if negative_context is None or guidance_scale == 1:
        return [context]
    return [context, negative_context.expand(context.shape[0], *negative_context.shape[1:])]


def guided_flow(model, context: torch.Tensor, negative_context: torch.Tensor | None = None,
                guidance_scale: float = 1.0, **model_kwargs) -> Callable:
    """flow_fn(x, t) of ``model`` on ``context``, with CFG in Wan's form on the flow (``causvid.flow.cfg``) when
    ``negative_context`` is given and ``guidance_scale != 1``; ``model_kwargs`` go to every call."""
    contexts = _contexts(context, negative_context, guidance_scale)

    def flow(x, t):
        return _guided([model(x, t, c, **model_kwargs) for c in contexts], guidance_scale)
    return flow


def ode_pairs(model, noise: torch.Tensor, context: torch.Tensor, *, sigmas: torch.Tensor, indices: Sequence[int],
              negative_context: torch.Tensor | None = None, guidance_scale: float = 1.0) -> torch.Tensor:
    """CausVid's ODE pairs of a batch: the bidirectional teacher's guided Euler run from ``noise``, the states at
    ``indices``: [B, S, F, C, h, w]."""
    flow = guided_flow(model, context, negative_context, guidance_scale)
    return sample_trajectory(flow, noise, sigmas, indices)


def teacher_forcing_flow(model, clean: torch.Tensor, context: torch.Tensor, *, num_frame_per_block: int,
                         negative_context: torch.Tensor | None = None, guidance_scale: float = 1.0) -> Callable:
    """flow_fn(x, t) of the AR-diffusion model in the teacher-forcing layout: [clean ‖ noisy] with ``clean`` at
    t = 0 as context (a noisy block sees its own block and the clean blocks before it), CFG in Wan's form on the
    flow when ``negative_context`` is given and ``guidance_scale != 1``."""
    return guided_flow(model, context, negative_context, guidance_scale, clean_x=clean,
                       num_frame_per_block=num_frame_per_block)


def causal_ode_trajectory(model, noise: torch.Tensor, clean: torch.Tensor, context: torch.Tensor, *,
                          num_frame_per_block: int, sigmas: torch.Tensor, indices: Sequence[int],
                          negative_context: torch.Tensor | None = None, guidance_scale: float = 1.0,
                          mode: str = "full") -> torch.Tensor:
    """States [B, S, F, C, H, W] of the teacher-forced ODE run from ``noise`` with ``clean`` as context.

    mode "full": Causal Forcing's layout: every step runs the whole [clean ‖ noisy] sequence, all frames at the
    same t.
    mode "blockwise_kv": the same numbers at a fraction of the cost. In the teacher-forcing mask a noisy block
    sees only itself and the clean blocks before it, and clean tokens see only clean tokens up to their own
    block, so block b's trajectory does not depend on any other noisy block. Block by block: the GT clean
    block b - 1 is written into a KV cache with one cached forward at t = 0 (clean tokens of earlier blocks are
    already there), then the block's whole trajectory runs on its own tokens against that cache. CFG keeps two
    caches (prompt and negative prompt). Per step this costs one block instead of 2F frames.
    """
    if noise.shape != clean.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and clean latent {tuple(clean.shape)} differ in shape")
    frames = noise.shape[1]
    if frames % num_frame_per_block:
        raise ValueError(f"{frames} latent frames do not split into blocks of num_frame_per_block="
                         f"{num_frame_per_block}")
    clean = clean.to(noise.dtype)
    if mode == "full":
        flow = teacher_forcing_flow(model, clean, context, num_frame_per_block=num_frame_per_block,
                                    negative_context=negative_context, guidance_scale=guidance_scale)
        return sample_trajectory(flow, noise, sigmas, indices)
    if mode != "blockwise_kv":
        raise ValueError(f"mode must be 'full' or 'blockwise_kv', got {mode!r}")

    contexts = _contexts(context, negative_context, guidance_scale)
    caches = [model.new_cache(noise.shape[0], max_frames=frames) for _ in contexts]
    blocks = []
    for start in range(0, frames, num_frame_per_block):
        if start > 0:  # the clean GT block before this one becomes context (its K/V replace the noisy ones)
            prev = start - num_frame_per_block
            ctx_block = clean[:, prev:start]
            t0 = torch.zeros(ctx_block.shape[:2], device=ctx_block.device)
            for c, cache in zip(contexts, caches):
                model(ctx_block, t0, c, cache=cache, start_frame=prev)

        def flow(x, t, start=start):
            return _guided([model(x, t, c, cache=cache, start_frame=start) for c, cache in zip(contexts, caches)],
                           guidance_scale)
        blocks.append(sample_trajectory(flow, noise[:, start:start + num_frame_per_block], sigmas, indices))
    return torch.cat(blocks, dim=2)


def causal_ode_slots(model, noise: torch.Tensor, clean: torch.Tensor, context: torch.Tensor, *,
                     num_frame_per_block: int, sigmas: torch.Tensor, indices: Sequence[int],
                     negative_context: torch.Tensor | None = None, guidance_scale: float = 1.0,
                     mode: str = "full") -> torch.Tensor:
    """Causal Forcing's saved tensor: the states at ``indices`` (noise, the student's steps, the ODE output)
    followed by the GT clean latent: [B, len(indices) + 1, F, C, H, W] (6 slots for the default indices)."""
    states = causal_ode_trajectory(model, noise, clean, context, num_frame_per_block=num_frame_per_block,
                                   sigmas=sigmas, indices=indices, negative_context=negative_context,
                                   guidance_scale=guidance_scale, mode=mode)
    return torch.cat([states, clean.to(states.dtype)[:, None]], dim=1)


def item_noise(seed: int, index: int, shape: Sequence[int]) -> torch.Tensor:
    """Float32 CPU noise of item ``index``, from (seed, index) only: the same whatever the rank count, the
    order, the batch, or a restart (never one tensor shared by all prompts)."""
    return rng.randn(tuple(shape), "item", int(seed), int(index))


def batch_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """[len(indices), *shape]: ``item_noise`` of each item, so a batch holds the rows the items get alone."""
    return torch.stack([item_noise(seed, i, shape) for i in indices])


def schedule(config, num_steps: int | None = None, shift: float | None = None):
    """(sigmas, kept state indices) of a student config: Euler at ``num_steps`` (default: the config's
    num_inference_steps) and ``shift`` (default: the generator's timestep shift, ``causvid.config.warp_shift``);
    the states nearest to its denoising_step_list plus the endpoint."""
    if config.denoising_step_list is None:
        raise ValueError("the config has no denoising_step_list: nothing says which states to keep")
    sigmas = euler_sigmas(num_steps or config.num_inference_steps, warp_shift(config) if shift is None else shift)
    indices = ode_slot_indices(list(config.denoising_step_list), sigmas, warp=bool(config.warp_denoising_step),
                               shift=warp_shift(config))
    return sigmas, indices
