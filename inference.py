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


from causvid.data.prompts import read_prompt_file
from causvid.pipelines.cli import base_parser, build_generator, my_prompts, output_folder, progress, report, run, write_stream
from causvid.video_io import load_image, read_crop_info, safe_filename

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def i2v_items(folder):
    """[(prompt, image path, crop box or None)] from an I2V folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--i2v: {folder} is not a folder of images")
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
            raise FileNotFoundError(f"--i2v: no caption for {image} (add it to a target_crop_info_*.json "
                                    f"or write {image.with_suffix('.txt').name} beside it)")
    if not items:
        raise FileNotFoundError(f"--i2v: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
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
    p.add_argument("--checkpoint_path", help="a .pt with 'generator' / 'generator_ema' (default: Wan folder weights)")
    p.add_argument("--data_path", required=True, help="prompt file, or an image folder with --i2v")
    p.add_argument("--use_ema", action="store_true", help="load 'generator_ema'")
    p.add_argument("--num_output_frames", type=int, help="latent frames (default: the config's)")
    p.add_argument("--i2v", action="store_true", help="image-to-video from the images in --data_path")
    args = p.parse_args(argv)
    items = i2v_items(args.data_path) if args.i2v else [(prompt, None, None) for prompt in read_prompt_file(args.data_path)]
    generator = build_generator(args, args.checkpoint_path, causal=True, use_ema=args.use_ema)
    if args.i2v and generator.config.num_frame_per_block != 1:
        raise ValueError(f"--i2v needs a framewise model (num_frame_per_block 1); {args.config_path} has "
                         f"{generator.config.num_frame_per_block}")
    _, _, h, w = generator.latent_shape
    factor = generator.components.vae.spatial_factor  # 8 for the Wan VAE, 2 for the toy latent space
    out = output_folder(args.output_folder)
    names = unique_names(prompt for prompt, _, _ in items)  # over all prompts, so ranks agree
    for i, (prompt, image, crop) in progress(my_prompts(items), "videos"):
        name = names[i]
        initial = None
        if image is not None:
            pixels = load_image(image, factor * h, factor * w, crop=crop)[None, None]
            initial = generator.components.vae.encode(pixels).to(generator.components.dit.dtype)
        stream = (px for _, px in generator.stream(prompt, num_frames=args.num_output_frames, seed=args.seed,
                                                    index=i, initial_latent=initial))
        if write_stream(out / f"{name}.mp4", stream, args.overwrite):
            report(generator, f"{name}.mp4", args.report_timing)
    return 0


def main(argv=None) -> int:
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
