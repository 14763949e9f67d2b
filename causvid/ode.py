"""ODE trajectories for student initialisation: which states to keep, how to sample them, and the causal
(teacher-forcing) trajectories of Causal Forcing, with a blockwise KV-cached fast path.

Two datasets are made from these pieces:

* CausVid's ODE pairs (`causvid/models/wan/generate_ode_pairs.py`): the bidirectional Wan teacher samples a
  prompt with Euler (50 steps, shift 8, CFG 6 with the negative prompt); the states the few-step student is
  trained at are kept, plus the endpoint. For CausVid's ``[1000, 757, 522, 0]`` those are states 0, 36, 44 and
  50 of the 51 (``ode_slot_indices``).
* Causal Forcing's causal ODE data (`get_causal_ode_data_{framewise,chunkwise}.py`): the AR-diffusion teacher
  samples all frames in parallel at the same t (48 steps, shift 5, CFG 6 on the flow), in the teacher-forcing
  layout with the ground-truth clean latent as context. Kept: the noise, the states at the warped 4-step
  times 937.5 / 833.3 / 625 (indices 12, 24, 36), the ODE output and the GT latent: 6 slots.

State indexing: an N-step Euler run has N + 1 states; state i < N is the input of step i (the model sees it at
``t = 1000 * sigmas[i]``), state N is the output. Negative indices count from the end (-1 = the output).

The pure functions come first; the command-line drivers of the causal ODE scripts (and the small file helpers
the three data CLIs share: noise per item, atomic saves, rank split) are at the bottom.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from causvid import rng
from causvid.runtime import atomic_save, distributed_rank, log, pending_items, pick_device  # noqa: F401
from causvid.flow import NUM_TRAIN_TIMESTEPS, WAN_NEGATIVE_PROMPT, cfg, euler_sample, euler_sigmas, normalize_step_list

__all__ = [
    "CAUSAL_ODE_STEP_LIST", "ode_slot_indices", "slot_timesteps", "sample_trajectory", "teacher_forcing_flow",
    "causal_ode_trajectory", "causal_ode_slots", "item_noise", "atomic_save", "distributed_rank", "pick_device",
    "log", "LatentFolderDataset", "open_latent_dataset", "causal_ode_main",
]

# Causal Forcing's student steps (configs/causal_ode_*.yaml: [1000, 750, 500, 250], warped at shift 5 to
# [1000, 937.5, 833.3, 625]); the causal ODE data keeps the states at these times.
CAUSAL_ODE_STEP_LIST = (1000, 750, 500, 250)


# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
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


def teacher_forcing_flow(model, clean: torch.Tensor, context: torch.Tensor, *, num_frame_per_block: int,
                         negative_context: torch.Tensor | None = None, guidance_scale: float = 1.0) -> Callable:
    """flow_fn(x, t) of the AR-diffusion model in the teacher-forcing layout: [clean ‖ noisy] with ``clean`` at
    t = 0 as context (a noisy block sees its own block and the clean blocks before it), CFG in Wan's form on the
    flow when ``negative_context`` is given and ``guidance_scale != 1``."""
    contexts = [context] + ([negative_context] if negative_context is not None and guidance_scale != 1 else [])

    def flow(x, t):
        return _guided([model(x, t, c, clean_x=clean, num_frame_per_block=num_frame_per_block) for c in contexts],
                       guidance_scale)
    return flow


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

    contexts = [context] + ([negative_context] if negative_context is not None and guidance_scale != 1 else [])
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


# ----------------------------------------------------------------------------------------------------------------
# Shared by the data CLIs


def item_noise(seed: int, index: int, shape: Sequence[int]) -> torch.Tensor:
    """Float32 CPU noise of item ``index``, from (seed, index) only: the same whatever the rank count, the
    order, or a restart (never one tensor shared by all prompts)."""
    return rng.randn(tuple(shape), "item", int(seed), int(index))


class LatentFolderDataset(torch.utils.data.Dataset):
    """A folder of ``*.pt`` files holding ``{prompt: latent}`` (``compute_vae_latent.py`` output, [1, F, C, h, w],
    or ODE files [1, S, F, C, h, w], whose last slot is taken), sorted by name; items shaped like
    ``LatentLMDBDataset``'s: ``{"prompts": str, "clean_latent": float32 [F, C, h, w]}``. Files are opened
    memory-mapped, so listing the prompts reads no tensor data."""

    def __init__(self, folder):
        self.items = []
        for file in sorted(Path(folder).glob("*.pt")):
            data = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(data, dict):
                raise ValueError(f"{file}: expected a dict {{prompt: latent}}, got {type(data).__name__}")
            self.items.extend((file, str(prompt)) for prompt in data)
        if not self.items:
            raise FileNotFoundError(f"{folder}: no *.pt latent files")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        file, prompt = self.items[i]
        latent = torch.load(file, map_location="cpu", weights_only=True, mmap=True)[prompt].float()
        if latent.ndim == 6:  # [1, S, F, C, h, w]: the last slot is the clean latent
            latent = latent[:, -1]
        if latent.ndim == 5:
            latent = latent[0]
        if latent.ndim != 4:
            raise ValueError(f"{file}: latent of {prompt!r} has shape {tuple(latent.shape)}; expected [1, F, C, h, w]")
        return {"prompts": prompt, "clean_latent": latent}


def open_latent_dataset(path):
    """A latent LMDB (``causvid.data.datasets.LatentLMDBDataset``) or a folder of ``{prompt: latent}`` .pt files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"raw data {path} not found")
    if path.is_dir() and not (path / "data.mdb").exists() and any(path.glob("*.pt")):
        return LatentFolderDataset(path)
    from causvid.data.datasets import LatentLMDBDataset
    return LatentLMDBDataset(str(path))


# ----------------------------------------------------------------------------------------------------------------
# get_causal_ode_data_{framewise,chunkwise}.py


def _causal_ode_parser(num_frame_per_block: int) -> argparse.ArgumentParser:
    kind = "framewise" if num_frame_per_block == 1 else f"{num_frame_per_block}-frame-block (chunkwise)"
    p = argparse.ArgumentParser(description=(
        f"Causal Forcing stage 2a, {kind}: ODE trajectories of the AR-diffusion teacher with the GT latent as "
        "teacher-forcing context. Writes {prompt: [1, 6, F, C, h, w]} per item (noise, states at the warped "
        "student steps, ODE output, GT latent) as <output_folder>/<index:05d>.pt; run under torchrun to split "
        "items across ranks (index = i * world + rank)."))
    p.add_argument("--generator_ckpt", required=True, help="AR-diffusion checkpoint (.pt with 'generator')")
    p.add_argument("--rawdata_path", required=True,
                   help="latent LMDB (LatentLMDBDataset) or a folder of {prompt: latent} .pt files")
    p.add_argument("--output_folder", required=True)
    p.add_argument("--wan_model_path", default="wan_models/Wan2.1-T2V-1.3B",
                   help="Wan folder: text encoder, and the DiT's head count / text length")
    p.add_argument("--guidance_scale", type=float, default=6.0, help="CFG on the flow, uncond + s * (cond - uncond)")
    p.add_argument("--num_steps", type=int, default=48, help="Euler steps")
    p.add_argument("--shift", type=float, default=5.0, help="timestep shift of the Euler schedule")
    p.add_argument("--denoising_step_list", type=float, nargs="+", default=list(CAUSAL_ODE_STEP_LIST),
                   help="student steps, warped at --shift; the states nearest to them are saved")
    p.add_argument("--mode", choices=["full", "blockwise_kv"], default="blockwise_kv",
                   help="full: whole [clean | noisy] sequence every step (the original); blockwise_kv: block by "
                        "block against a KV cache of the GT blocks before it (same trajectories, faster)")
    p.add_argument("--negative_prompt", default=WAN_NEGATIVE_PROMPT)
    p.add_argument("--seed", type=int, default=0, help="noise of item i comes from (seed, i)")
    p.add_argument("--max_items", type=int, help="only the first N items of the data set")
    p.add_argument("--device", default=None, help="default: cuda when available (LOCAL_RANK's GPU), else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="DiT dtype; default bfloat16 on CUDA, float32 "
                   "on CPU (the ODE state is always float32)")
    return p


@torch.no_grad()
def causal_ode_main(argv=None, num_frame_per_block: int = 1) -> int:
    """The body of both root scripts; they differ only in ``num_frame_per_block`` (1 framewise, 3 chunkwise)."""
    from causvid.models.text_encoder import WanTextEncoder
    from causvid.pipelines.text_to_video import load_dit

    args = _causal_ode_parser(num_frame_per_block).parse_args(argv)
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda")
                                                           else torch.float32)
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)

    sigmas = euler_sigmas(args.num_steps, args.shift)
    indices = ode_slot_indices(args.denoising_step_list, sigmas, warp=True, shift=args.shift)
    log(f"{args.num_steps} Euler steps at shift {args.shift:g}; saving states {indices} (t = "
        f"{', '.join(f'{t:.1f}' for t in slot_timesteps(indices, sigmas))}) + the GT latent; mode {args.mode}")

    data = open_latent_dataset(args.rawdata_path)
    total = len(data) if args.max_items is None else min(len(data), args.max_items)
    todo = [i for i, _ in pending_items(range(total), out, "{:05d}.pt", "items")[0]]
    if not todo:
        return 0

    wan = Path(args.wan_model_path)
    model = load_dit(wan, args.generator_ckpt, dtype=dtype, device=device).eval().requires_grad_(False)
    encoder = WanTextEncoder.from_pretrained(wan, dtype=dtype, device=device, text_len=model.config.text_len)
    guided = args.guidance_scale != 1.0
    negative = encoder.encode([args.negative_prompt]) if guided else None

    for n, index in enumerate(todo):
        start = time.perf_counter()
        item = data[index]
        prompt = item["prompts"]
        clean = torch.as_tensor(item["clean_latent"]).float()[None].to(device)
        noise = item_noise(args.seed, index, clean.shape).to(device)
        slots = causal_ode_slots(model, noise, clean, encoder.encode([prompt]), num_frame_per_block=num_frame_per_block,
                                 sigmas=sigmas, indices=indices, negative_context=negative,
                                 guidance_scale=args.guidance_scale, mode=args.mode)
        atomic_save({prompt: slots.float().cpu()}, out / f"{index:05d}.pt")
        log(f"[{n + 1}/{len(todo)}] item {index}: {tuple(slots.shape)} in {time.perf_counter() - start:.1f} s")
    return 0
