"""Causal Forcing stage 2a: causal ODE data from the AR-diffusion teacher, with the GT latent as teacher-forcing
context (`get_causal_ode_data_framewise.py` / `get_causal_ode_data_chunkwise.py` at the repository root parse
nothing themselves and call `causal_ode_main`; they differ only in ``num_frame_per_block``: 1 and 3).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from causvid.errors import ArgumentParser, UsageError
from causvid.models.weights_file import check_weights_file
from causvid.runtime import (atomic_save, check_device_name, check_output_folder, check_wan_folder, log,
                             pending_items)
from causvid.threads import add_threads_flag, dit_width, use_threads
from causvid.wan_conventions import WAN_NEGATIVE_PROMPT


def _causal_ode_parser(num_frame_per_block: int) -> argparse.ArgumentParser:
    kind = "framewise" if num_frame_per_block == 1 else f"{num_frame_per_block}-frame-block (chunkwise)"
    p = ArgumentParser(description=(
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
    p.add_argument("--denoising_step_list", type=float, nargs="+",
                   help="student steps, warped at --shift; the states nearest to them are saved (default: Causal "
                        "Forcing's 1000 750 500 250)")
    p.add_argument("--mode", choices=["full", "blockwise_kv"], default="blockwise_kv",
                   help="full: whole [clean | noisy] sequence every step (the original); blockwise_kv: block by "
                        "block against a KV cache of the GT blocks before it (same trajectories, faster)")
    p.add_argument("--negative_prompt", default=WAN_NEGATIVE_PROMPT)
    p.add_argument("--seed", type=int, default=0, help="noise of item i comes from (seed, i)")
    p.add_argument("--max_items", type=int, help="only the first N items of the data set")
    p.add_argument("--device", default=None, help="default: cuda when available (LOCAL_RANK's GPU), else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="DiT dtype; default bfloat16 on CUDA, float32 "
                   "on CPU (the ODE state is always float32)")
    add_threads_flag(p)
    return p


def causal_ode_main(argv=None, num_frame_per_block: int = 1) -> int:
    """The body of both root scripts; they differ only in ``num_frame_per_block`` (1 framewise, 3 chunkwise).
    The flags and the device name are checked before torch loads."""
    args = _causal_ode_parser(num_frame_per_block).parse_args(argv)
    check_device_name(args.device)
    if not Path(args.rawdata_path).exists():
        raise UsageError(f"--rawdata_path {args.rawdata_path}: no such LMDB or folder of .pt latents")
    if not Path(args.generator_ckpt).exists():
        raise UsageError(f"--generator_ckpt {args.generator_ckpt}: no such file (the AR-diffusion checkpoint)")
    if Path(args.generator_ckpt).is_file():
        check_weights_file(args.generator_ckpt)
    check_wan_folder(args.wan_model_path, "--wan_model_path", fix="pass --wan_model_path FOLDER")
    check_output_folder(args.output_folder, "--output_folder")
    import torch

    with torch.no_grad():
        return _causal_ode(args, num_frame_per_block)


def _causal_ode(args, num_frame_per_block: int) -> int:
    import torch

    from causvid.data.latent_folder import open_latent_dataset
    from causvid.flow import euler_sigmas
    from causvid.ode_data.trajectory import (CAUSAL_ODE_STEP_LIST, causal_ode_slots, item_noise, ode_slot_indices,
                                             slot_timesteps)
    from causvid.pipelines.text_to_video import load_dit, load_text_encoder
    from causvid.runtime import pick_device

    device = pick_device(args.device)
    use_threads(args.threads, device, dit_width(args.wan_model_path))
    step_list = args.denoising_step_list or list(CAUSAL_ODE_STEP_LIST)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda")
                                                           else torch.float32)
    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)

    sigmas = euler_sigmas(args.num_steps, args.shift)
    indices = ode_slot_indices(step_list, sigmas, warp=True, shift=args.shift)
    log(f"{args.num_steps} Euler steps at shift {args.shift:g}; saving states {indices} (t = "
        f"{', '.join(f'{t:.1f}' for t in slot_timesteps(indices, sigmas))}) + the GT latent; mode {args.mode}")

    data = open_latent_dataset(args.rawdata_path)
    total = len(data) if args.max_items is None else min(len(data), args.max_items)
    todo = [i for i, _ in pending_items(range(total), out, "{:05d}.pt", "items")[0]]
    if not todo:
        return 0

    wan = Path(args.wan_model_path)
    model = load_dit(wan, args.generator_ckpt, dtype=dtype, device=device).eval().requires_grad_(False)
    encoder = load_text_encoder(wan, model.config.text_len, dtype=dtype, device=device)
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
