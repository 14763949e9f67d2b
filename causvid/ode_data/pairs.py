"""CausVid's ODE pairs: the bidirectional Wan teacher's Euler trajectories at the student's steps.

    torchrun --nproc_per_node 8 causvid/models/wan/generate_ode_pairs.py \
        --output_folder datasets/odes --caption_path sample_dataset/mixkit_prompts.txt \
        [--config configs/wan_causal_ode.yaml] [--model_type T2V-14B] [--fsdp] [--guidance_scale 6.0]

For each prompt (one per line; prompt i goes to rank i % world): noise [1, F, C, h, w] (the config's
image_or_video_shape) from (seed, i); Euler at the config's schedule (num_inference_steps, 50, at the generator's
timestep shift, 8 for CausVid) with CFG in Wan's form ``uncond + s * (cond - uncond)`` against the negative
prompt; the states at the student's `denoising_step_list` are kept (the state nearest to each step, see
`causvid.ode_data.trajectory.ode_slot_indices`: [1000, 757, 522, 0] -> states 0, 36, 44 and the endpoint 50), saved as
``{prompt: [1, S, F, C, h, w] float32}`` in ``<output_folder>/<i:05d>.pt``. Existing files are skipped, so a
stopped run continues where it was; files are written atomically.

The teacher: ``--wan_model_path``, else the config's wan_model_path for the default model type, else the folder
``Wan2.1-<model_type>`` next to it (wan_models/Wan2.1-T2V-14B for ``--model_type T2V-14B``). It runs in float32
by default, as CausVid's does.

``--fsdp``: accepted for the seed's command line. This project has no FSDP wrapper yet, so it is ignored: every
process holds the whole teacher (the 14B in float32 is ~57 GB, which fits one 80 GB GPU; use ``--dtype
bfloat16`` to halve it).
"""
import argparse
import time
from pathlib import Path

from causvid.config import load_config, warp_shift
from causvid.data.prompts import read_prompt_file
from causvid.errors import ArgumentParser
from causvid.runtime import atomic_save, check_device_name, log, pending_items
from causvid.threads import add_threads_flag, dit_width, use_threads

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "wan_causal_ode.yaml"
MODEL_TYPES = ("T2V-1.3B", "T2V-14B")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_folder", required=True)
    p.add_argument("--caption_path", required=True, help="prompt file, one prompt per line")
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="student config: denoising_step_list, image_or_video_shape, timestep shift, "
                        "num_inference_steps, negative_prompt (default: configs/wan_causal_ode.yaml)")
    p.add_argument("--model_type", choices=MODEL_TYPES, help="teacher size (default: the config's wan_model_path, "
                                                             "the 1.3B)")
    p.add_argument("--wan_model_path", help="teacher Wan folder (overrides --model_type)")
    p.add_argument("--guidance_scale", type=float, default=6.0)
    p.add_argument("--num_steps", type=int, help="Euler steps (default: the config's num_inference_steps, 50)")
    p.add_argument("--shift", type=float, help="schedule shift (default: the generator's timestep shift, 8)")
    p.add_argument("--seed", type=int, default=0, help="noise of prompt i comes from (seed, i)")
    p.add_argument("--fsdp", action="store_true",
                   help="shard the teacher with the project's FSDP wrapper when it exists; ignored for now "
                        "(no wrapper yet): each process holds the whole teacher")
    p.add_argument("--device", default=None, help="default: cuda when available (LOCAL_RANK's GPU), else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="teacher dtype")
    add_threads_flag(p)
    return p


def teacher_folder(args, config) -> Path:
    if args.wan_model_path:
        return Path(args.wan_model_path)
    base = Path(config.wan_model_path)
    if args.model_type is None or base.name == f"Wan2.1-{args.model_type}":
        return base
    return base.parent / f"Wan2.1-{args.model_type}"


def generate(argv=None) -> int:
    """Flags, config, prompt file and device name are checked before torch loads."""
    args = parser().parse_args(argv)
    config = load_config(args.config)
    prompts = read_prompt_file(args.caption_path)
    check_device_name(args.device)
    import torch

    with torch.no_grad():
        return _generate(args, config, prompts)


def _generate(args, config, prompts) -> int:
    import torch

    from causvid.ode_data.trajectory import item_noise, ode_pairs, schedule, slot_timesteps
    from causvid.pipelines.text_to_video import load_dit, load_text_encoder
    from causvid.runtime import pick_device

    if args.fsdp:
        log("--fsdp: no FSDP wrapper in this project yet; ignored, each process holds the whole teacher")
    sigmas, indices = schedule(config, args.num_steps, args.shift)
    shape = (1,) + tuple(config.image_or_video_shape[1:])
    log(f"{len(sigmas) - 1} Euler steps at shift {warp_shift(config) if args.shift is None else args.shift:g}, "
        f"CFG {args.guidance_scale:g}; saving states {indices} (t = "
        f"{', '.join(f'{t:.1f}' for t in slot_timesteps(indices, sigmas))}) of noise {shape}")

    out = Path(args.output_folder)
    out.mkdir(parents=True, exist_ok=True)
    todo, _ = pending_items(prompts, out, "{:05d}.pt", "prompts")
    if not todo:
        return 0

    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype)
    wan = teacher_folder(args, config)
    use_threads(args.threads, device, dit_width(wan))
    model = load_dit(wan, dtype=dtype, device=device).eval().requires_grad_(False)
    encoder = load_text_encoder(wan, model.config.text_len, dtype=dtype, device=device)
    guided = args.guidance_scale != 1.0
    negative = encoder.encode([config.negative_prompt]) if guided else None

    for n, (index, prompt) in enumerate(todo):
        start = time.perf_counter()
        states = ode_pairs(model, item_noise(args.seed, index, shape).to(device), encoder.encode([prompt]),
                           sigmas=sigmas, indices=indices, negative_context=negative,
                           guidance_scale=args.guidance_scale)
        atomic_save({prompt: states.float().cpu()}, out / f"{index:05d}.pt")
        log(f"[{n + 1}/{len(todo)}] prompt {index}: {tuple(states.shape)} in {time.perf_counter() - start:.1f} s")
    return 0
