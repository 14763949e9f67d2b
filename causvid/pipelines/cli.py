"""What the inference CLIs share: flags, device and dtype, config, the prompt split across torchrun ranks,
the checks that need no model (run before any model loads), and the output folder: each video is written block
by block into a `.partial` file renamed when complete, so a failure never leaves a half video under the final
name, and the run ends with one line saying how many videos were written, skipped and failed, and where.

Nothing heavy is imported at module level: `--help`, flag errors and every check that needs no model (the config,
the device name, the Wan folder, the checkpoint file, the output folder, prompt files and schedules) answer
before torch loads (`tests/test_startup.py`; `python -m scripts.benchmark_startup` times them).

The CLIs themselves (`minimal_inference/*.py`, `inference.py`) only say which model they load, how they
name their outputs and, for long videos, how rollouts are chained. Errors become one line through
`causvid.errors.run_cli` (exported here as `run`).
"""
import re
import sys
from pathlib import Path

from tqdm import tqdm

from causvid.config import ConfigError, generator_is_causal, load_config
from causvid.data.prompts import shard_for_rank
from causvid.errors import ArgumentParser, UsageError, run_cli
from causvid.models.weights_file import check_weights_file
from causvid.runtime import check_device_name, check_output_folder, check_wan_folder, distributed_rank
from causvid.threads import add_threads_flag, dit_width, use_threads

FPS = 16  # Wan2.1's sample_fps
run = run_cli


def base_parser(description: str) -> ArgumentParser:
    p = ArgumentParser(description=description)
    p.add_argument("--config_path", required=True,
                   help="YAML config of the model (configs/*.yaml): sampling steps, block size, video shape")
    p.add_argument("--output_folder", required=True, help="folder the mp4s are written to (created if missing)")
    p.add_argument("--wan_model_path",
                   help="Wan2.1 folder (DiT, umT5 text encoder, VAE); default: the config's wan_model_path")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed; the noise of prompt i comes from (seed, i), whatever the number of GPUs")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate videos that already exist in --output_folder (default: skip them)")
    p.add_argument("--report_timing", action="store_true",
                   help="print each video's first-block latency and FPS with and without VAE decode")
    p.add_argument("--device",
                   help="cpu, cuda (this torchrun rank's GPU) or cuda:N; default: cuda when available")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="weights and activations; default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="merge this LoRA (ours, diffusers' or ComfyUI's Wan2.1 key format) into the DiT's weights "
                        "once, times SCALE (default 1); repeatable, merged in order")
    add_threads_flag(p)
    return p


def build_generator(args, checkpoint=None, causal=True, use_ema=False, checkpoint_flag="--checkpoint_folder",
                    check=None):
    """Load the model the flags describe (a `VideoGenerator`). Everything that needs no model is checked first,
    most of it before torch loads: the config, the device name, the Wan folder, the checkpoint file, the output
    folder and `check(config)` (the CLI's own flags). Then the threads (`--threads`, when the CLI has the flag)."""
    cfg = load_config(args.config_path)
    check_device_name(args.device)
    where = "--wan_model_path" if args.wan_model_path else f"wan_model_path (in {args.config_path})"
    wan = check_wan_folder(args.wan_model_path or cfg.wan_model_path, where)
    if checkpoint is not None:
        check_checkpoint(checkpoint, checkpoint_flag, causal)
    if getattr(args, "output_folder", None) is not None:  # the server writes no files
        check_output_folder(args.output_folder, "--output_folder")
    if check is not None:
        check(cfg)
    import torch

    from causvid.models.lora import check_lora_specs, merge_loras
    from causvid.pipelines.text_to_video import VideoGenerator, load_components
    from causvid.runtime import pick_device

    check_lora_specs(getattr(args, "lora", None))
    device = pick_device(args.device)
    if hasattr(args, "threads") and distributed_rank()[0] == 0:
        use_threads(args.threads, device, dit_width(wan))
    elif hasattr(args, "threads"):
        use_threads(args.threads, device, dit_width(wan), log=None)
    default = torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default
    components = load_components(wan, checkpoint, use_ema=use_ema, dtype=dtype, device=device)
    for path, scale, count in merge_loras(components.dit, getattr(args, "lora", None)):
        print(f"merged LoRA {path} (scale {scale:g}): {count} tensors changed", flush=True)
    return VideoGenerator(components, cfg, causal=causal, device=device)


def check_checkpoint(path, flag: str, causal: bool) -> None:
    """The checkpoint exists, its first bytes are a checkpoint's, and, when the training run's config.yaml is
    beside it, the model was trained with the attention this CLI samples with."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file or folder")
    if path.is_file():
        check_weights_file(path)
    trained = _training_config(path)
    if trained is not None and generator_is_causal(trained[1]) != causal:
        kind = "causal (block-causal attention, KV cache)" if not causal else "bidirectional (full attention)"
        other = ("minimal_inference/autoregressive_inference.py or inference.py" if not causal
                 else "minimal_inference/bidirectional_inference.py")
        raise UsageError(f"{flag} {path}: trained as a {kind} model ({trained[0]}); this CLI would sample it "
                         f"the other way: use {other}")


_CHECKPOINT_FOLDER = re.compile(r"^checkpoint_model_\d{6,}$")


def _training_config(checkpoint: Path):
    """(path, config) of the training run a checkpoint of ours came from (logdir/config.yaml beside
    logdir/checkpoint_model_XXXXXX/model.pt), or None."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if not _CHECKPOINT_FOLDER.match(folder.name) or not (folder.parent / "config.yaml").is_file():
        return None
    try:
        return folder.parent / "config.yaml", load_config(folder.parent / "config.yaml")
    except ConfigError:  # a config of another version: say nothing rather than guess
        return None


def my_prompts(prompts):
    """[(global index, prompt)] of this rank (strided split across torchrun ranks, as the originals)."""
    rank, world = distributed_rank()
    return shard_for_rank(prompts, rank, world)


def progress(items, desc):
    rank, _ = distributed_rank()
    return tqdm(items, desc=desc, disable=rank != 0)


class Outputs:
    """The output folder of a run: writes each video (or skips one that exists), counts, and ends the run with
    one line saying what it did. A video that fails to encode is counted and the run goes on."""

    def __init__(self, folder, overwrite: bool, report_timing: bool):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.overwrite, self.report_timing = overwrite, report_timing
        self.written = self.skipped = self.failed = 0

    def write(self, name: str, pixel_blocks, generator, note: str = "") -> None:
        """Write pixel blocks [1, n, 3, H, W] into folder/name as they arrive."""
        import torch

        from causvid.video_io import VideoWriteError, VideoWriter

        path = self.folder / name
        if path.exists() and not self.overwrite:
            self.skipped += 1
            return
        try:
            with VideoWriter(path, fps=FPS) as writer:
                for pixels in pixel_blocks:
                    writer.write(pixels[0])
        except (VideoWriteError, OSError, torch.OutOfMemoryError) as err:
            self.failed += 1
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            tqdm.write(f"error: {path}: {text}", file=sys.stderr)
            return
        self.written += 1
        if self.report_timing:  # on its own line above the progress bar, as each video ends (flushed: a pipe or a
            tqdm.write(f"[timing] {name}{note}: {generator.timing.summary()}", file=sys.stdout)  # log file too)
            sys.stdout.flush()

    def summary(self) -> str:
        rank, world = distributed_rank()
        who = f"rank {rank}/{world}: " if world > 1 else ""
        skipped = f", {self.skipped} skipped (already there; use --overwrite to regenerate)" if self.skipped else ""
        return f"{who}{count(self.written, 'video')} written{skipped}, {self.failed} failed -> {self.folder}"

    def finish(self) -> int:
        """Print the summary line; the exit code (1 when a video failed)."""
        print(self.summary(), flush=True)
        return 1 if self.failed else 0


def count(n: int, noun: str) -> str:
    """'1 video', '2 videos', '0 videos'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_num_frames(cfg, num_frames, config_path, flag="--num_output_frames") -> None:
    """A causal rollout generates whole blocks of num_frame_per_block latent frames."""
    block = cfg.num_frame_per_block
    if num_frames is not None and num_frames % block:
        raise UsageError(f"{flag} {num_frames}: {config_path} generates blocks of num_frame_per_block={block} latent "
                         f"frames; pass a multiple of {block}")


# -- CausVid's prompt-file CLIs (autoregressive_inference.py, bidirectional_inference.py) ----------------
def checkpoint_in(folder):
    """CausVid's checkpoint folders hold model.pt; no folder means the Wan folder's own weights."""
    if folder is None:
        return None
    folder = Path(folder)
    if folder.is_file():
        raise UsageError(f"--checkpoint_folder {folder} is a file; pass the folder that holds model.pt "
                         f"(here: {folder.parent})" + (" or use inference.py --checkpoint_path for a .pt file"
                                                         if folder.name != "model.pt" else ""))
    if not folder.is_dir():
        raise UsageError(f"--checkpoint_folder {folder}: no such folder")
    path = folder / "model.pt"
    if not path.exists():
        raise UsageError(f"--checkpoint_folder {folder}: no model.pt in this folder")
    return path


def prompt_file_parser(description, schedule: bool = False):
    """The flags of CausVid's prompt-file CLIs; `schedule`: a prompt schedule may replace the prompt file."""
    p = base_parser(description)
    p.add_argument("--checkpoint_folder",
                   help="folder with model.pt (its 'generator' weights); default: the Wan folder's own weights")
    p.add_argument("--prompt_file_path", required=not schedule,
                   help="text file with one prompt per line (UTF-8)"
                   + (" (or give --prompt_schedule)" if schedule else ""))
    if schedule:
        add_schedule_flag(p)
    return p


NUM_FRAMES_HELP = ("latent frames to generate (default: the config's image_or_video_shape[1], 21 for Wan); n latent "
                   "frames decode to 4(n-1)+1 video frames at 16 fps (21 -> 81 frames, 5 s); a causal model "
                   "needs a multiple of its num_frame_per_block")


def add_schedule_flag(p) -> None:
    p.add_argument("--prompt_schedule", metavar="FILE.jsonl",
                   help='prompts that change mid-video, in place of the prompt file: one video per line, a JSON list '
                        'of {"prompt": str, "start_frame": int} (latent frames, the first at 0, increasing, on block '
                        'boundaries); each switch re-caches the KV window under the new prompt')


def add_v2v_flags(p) -> None:
    p.add_argument("--input_video", metavar="PATH",
                   help="video-to-video: this video, resized and centre-cropped to the config's size, is each "
                        "prompt's source; the output has its length in whole blocks")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--strength", type=float, metavar="F",
                       help="video-to-video: how much of the student's noise schedule to run on the input, a "
                            "fraction in (0, 1] as in diffusers' image-to-image (1: ignore the input; lower keeps "
                            "more of it); mapped to a step of the student's grid, which the run prints")
    group.add_argument("--strength_timestep", type=float, metavar="T",
                       help="video-to-video as CausVid's recipe gives it: the timestep T in (0, 1000] the input is "
                            "noised to before the student's steps below T (any T, on the grid or not)")


def read_items(args, data_flag: str):
    """The prompts (a prompt file) or schedules (--prompt_schedule) of a run, read and checked before any model
    loads: [prompt or [(prompt, start frame), ...]]."""
    from causvid.data.prompts import read_prompt_file, read_prompt_schedule

    data = getattr(args, data_flag.lstrip("-"))
    schedule = getattr(args, "prompt_schedule", None)
    if (data is None) == (schedule is None):
        raise UsageError(f"give either {data_flag} (one prompt per line) or --prompt_schedule (prompts that change "
                         "mid-video), not both" if data is not None else f"give {data_flag} or --prompt_schedule")
    check_strength_flags(args)
    if getattr(args, "input_video", None) is not None:
        from causvid.video_io.reader import video_info
        video_info(args.input_video)  # unreadable: one line naming it, before any model loads
    if schedule is None:
        return read_prompt_file(data)
    return read_prompt_schedule(schedule)


def check_strength_flags(args) -> None:
    """--strength F in (0, 1] or --strength_timestep T in (0, 1000], with --input_video and only with it."""
    video = getattr(args, "input_video", None)
    fraction, timestep = getattr(args, "strength", None), getattr(args, "strength_timestep", None)
    if fraction is not None and not 0 < fraction <= 1:
        raise UsageError(f"--strength {fraction}: give a fraction of the noise schedule in (0, 1] (1: ignore the "
                         "input video); for a timestep in (0, 1000] use --strength_timestep")
    if timestep is not None and not 0 < timestep <= 1000:
        raise UsageError(f"--strength_timestep {timestep}: give a timestep in (0, 1000]")
    given = "--strength" if fraction is not None else "--strength_timestep" if timestep is not None else None
    if given and video is None:
        raise UsageError(f"{given} needs --input_video (the video to start from)")
    if video is not None and given is None:
        raise UsageError("--input_video needs --strength F (a fraction in (0, 1]) or --strength_timestep T")


def v2v_timestep(args, cfg):
    """The timestep the input video is noised to: --strength_timestep as given, or --strength mapped to the
    student's steps (printed), or None without --input_video. Called in a CLI's config check, before the model
    loads."""
    if getattr(args, "input_video", None) is None:
        return None
    if args.strength_timestep is not None:
        return args.strength_timestep
    from causvid.pipelines.stream import strength_timestep

    timestep, steps, total = strength_timestep(cfg, args.strength)
    print(f"--strength {args.strength}: the input is noised to timestep {timestep:g} and denoised with "
          f"{count(steps, 'step')} of the student's {total}", flush=True)
    return timestep


def check_items(args, cfg, items, num_frames=None) -> None:
    """Once the config is known (before the model loads): the schedules' switches (`items` from `read_items`) on
    block boundaries, inside the video."""
    from causvid.wan_conventions import block_layout
    from causvid.data.prompts import check_schedule_blocks

    if getattr(args, "prompt_schedule", None) is None:
        return
    frames = num_frames or cfg.image_or_video_shape[1]
    starts = [s for s, _ in block_layout(frames, cfg.num_frame_per_block, bool(cfg.independent_first_frame))]
    check_schedule_blocks(items, args.prompt_schedule, starts, frames)


def input_latents(args, generator):
    """--input_video as latents [1, F, C, h, w]: read, resized and centre-cropped to the config's size, encoded."""
    if getattr(args, "input_video", None) is None:
        return None
    import torch

    from causvid.video_io import read_video, resize_center_crop

    frames = torch.from_numpy(read_video(args.input_video)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    vae, (_, _, h, w) = generator.components.vae, generator.latent_shape
    usable = 1 + (frames.shape[0] - 1) // vae.temporal_factor * vae.temporal_factor
    block = generator.config.num_frame_per_block
    if 1 + (usable - 1) // vae.temporal_factor < block:
        raise UsageError(f"--input_video {args.input_video}: {frames.shape[0]} frames make fewer latent frames than "
                         f"one block ({block}); give a longer video")
    video = torch.stack([resize_center_crop(f, h * vae.spatial_factor, w * vae.spatial_factor)
                         for f in frames[:usable]]).clamp(-1, 1)
    with torch.no_grad():
        return vae.encode(video[None].to(generator.device, generator.components.dit.dtype))


def prompt_file_main(argv, causal: bool, description: str) -> int:
    from causvid.errors import positive_int

    parser = prompt_file_parser(description, schedule=causal)
    if causal:
        parser.add_argument("--num_output_frames", type=positive_int, help=NUM_FRAMES_HELP)
        add_v2v_flags(parser)
    args = parser.parse_args(argv)
    items = read_items(args, "--prompt_file_path")  # fail on bad prompts before loading models
    num_frames = getattr(args, "num_output_frames", None)

    def check(cfg):
        check_num_frames(cfg, num_frames, args.config_path)
        check_items(args, cfg, items, num_frames)
        args.timestep = v2v_timestep(args, cfg)

    generator = build_generator(args, checkpoint_in(args.checkpoint_folder), causal=causal, check=check)
    source = input_latents(args, generator)
    outputs = Outputs(args.output_folder, args.overwrite, args.report_timing)
    for i, item in progress(my_prompts(items), "videos"):
        stream = (pixels for _, pixels in generator.stream(item, num_frames=num_frames, seed=args.seed, index=i,
                                                           input_latents=source, strength=args.timestep))
        outputs.write(f"output_{i:03d}.mp4", stream, generator)
    return outputs.finish()
