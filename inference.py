"""Self-Forcing / Causal-Forcing inference: prompts (or images with --i2v) into mp4s named after the prompt.

    python inference.py --config_path configs/causal_forcing_dmd_chunkwise.yaml \
        --checkpoint_path checkpoints/chunkwise/causal_forcing.pt --data_path prompts/demos.txt \
        --output_folder output/chunkwise [--use_ema] [--num_output_frames 21] [--seed 0] [--report_timing]

A config with `denoising_step_list` runs the few-step causal rollout; one without (the AR-diffusion teacher)
runs Wan's 50-step UniPC rollout with classifier-free guidance. `--i2v`: `--data_path` is a folder of images
(captions from Causal-Forcing's `target_crop_info_*.json`, or a `.txt` beside each image); each image is
encoded as latent frame 0, cached at t = 0, and the rest of the video follows it (framewise models only).
"""
import sys
from pathlib import Path

from causvid.errors import UsageError, positive_int
from causvid.pipelines.cli import (NUM_FRAMES_HELP, Outputs, add_schedule_flag, add_v2v_flags, base_parser,
                                   build_generator, check_items, check_num_frames, input_latents, my_prompts,
                                   progress, read_items, run, v2v_timestep)
from causvid.video_io.crop_info import read_crop_info
from causvid.video_io.names import safe_filename

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def i2v_items(folder):
    """[(prompt, image path, crop box or None)] from an I2V folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--data_path {folder}: --i2v reads a folder of images; this is not a folder")
    infos = {}
    for json_path in sorted(folder.glob("target_crop_info_*.json")):
        infos.update(read_crop_info(json_path))
    items = []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        info = infos.get(image.name)
        if info is not None:
            items.append((info["caption"], image, info.get("bbox")))
        elif image.with_suffix(".txt").exists():
            items.append((image.with_suffix(".txt").read_text(encoding="utf-8").strip(), image, None))
        else:
            raise UsageError(f"--i2v: no caption for {image} (add it to a target_crop_info_*.json "
                                    f"or write {image.with_suffix('.txt').name} beside it)")
    if not items:
        raise UsageError(f"--i2v: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return items


def unique_names(prompts):
    """The prompt's first 100 characters, made safe; prompts that start alike get their index appended."""
    names, seen = [], set()
    for i, prompt in enumerate(prompts):
        name = safe_filename(prompt, max_len=100)
        names.append(name if name not in seen else f"{name}-{i}")
        seen.add(name)
    return names


def _main(argv=None):
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--checkpoint_path", help="the weights: a .pt holding 'generator' / 'generator_ema', a "
                   ".safetensors, or a Wan / diffusers folder; default: the Wan folder's own weights")
    p.add_argument("--data_path",
                   help="prompt file (one prompt per line), or with --i2v a folder of images with captions "
                        "(or give --prompt_schedule)")
    p.add_argument("--use_ema", action="store_true", help="load the checkpoint's EMA weights ('generator_ema')")
    p.add_argument("--num_output_frames", type=positive_int, help=NUM_FRAMES_HELP)
    p.add_argument("--i2v", action="store_true",
                   help="image-to-video: each image of --data_path becomes the first frame (framewise models)")
    add_schedule_flag(p)
    add_v2v_flags(p)
    args = p.parse_args(argv)
    if args.i2v and (args.prompt_schedule or args.input_video):
        raise UsageError("--i2v takes its prompts from --data_path's images: leave out --prompt_schedule and "
                         "--input_video")
    items = i2v_items(args.data_path) if args.i2v else [(p, None, None) for p in read_items(args, "--data_path")]

    def check(cfg):
        if args.i2v and cfg.num_frame_per_block != 1:
            raise UsageError(f"--i2v needs a framewise model (num_frame_per_block 1); {args.config_path} has "
                             f"{cfg.num_frame_per_block}")
        check_num_frames(cfg, args.num_output_frames, args.config_path)
        check_items(args, cfg, [prompt for prompt, _, _ in items], args.num_output_frames)
        args.timestep = v2v_timestep(args, cfg)

    generator = build_generator(args, args.checkpoint_path, causal=True, use_ema=args.use_ema,
                                checkpoint_flag="--checkpoint_path", check=check)
    _, _, h, w = generator.latent_shape
    factor = generator.components.vae.spatial_factor  # 8 for the Wan VAE, 2 for the toy latent space
    source = input_latents(args, generator)
    outputs = Outputs(args.output_folder, args.overwrite, args.report_timing)
    names = unique_names(p if isinstance(p, str) else p[0][0] for p, _, _ in items)  # over all, so ranks agree
    for i, (prompt, image, crop) in progress(my_prompts(items), "videos"):
        initial = None
        if image is not None:
            from causvid.video_io import load_image

            pixels = load_image(image, factor * h, factor * w, crop=crop)[None, None]
            initial = generator.components.vae.encode(pixels).to(generator.components.dit.dtype)
        stream = (px for _, px in generator.stream(prompt, num_frames=args.num_output_frames, seed=args.seed,
                                                    index=i, initial_latent=initial, input_latents=source,
                                                    strength=args.timestep))
        outputs.write(f"{names[i]}.mp4", stream, generator)
    return outputs.finish()


def main(argv=None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
