"""What the inference CLIs share: flags, device and dtype, config, the prompt split across torchrun ranks,
and writing a stream of pixel blocks into an mp4 (block by block into a `.partial` file, renamed when
complete, so a failure never leaves a half video under the final name).

The CLIs themselves (`minimal_inference/*.py`, `inference.py`) only say which model they load, how they
name their outputs and, for long videos, how rollouts are chained.
"""
import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from causvid.config import ConfigError, load_config
from causvid.data.prompts import PromptFileError, shard_for_rank
from causvid.models.vae import VAECheckpointError
from causvid.models.wan.checkpoints import CheckpointError
from causvid.pipelines.text_to_video import VideoGenerator, load_components
from causvid.runtime import distributed_rank, pick_device
from causvid.video_io import VideoWriter

FPS = 16  # Wan2.1's sample_fps
USER_ERRORS = (ConfigError, PromptFileError, CheckpointError, VAECheckpointError, FileNotFoundError, ValueError)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config_path", required=True, help="YAML config (see configs/)")
    p.add_argument("--output_folder", required=True)
    p.add_argument("--wan_model_path", help="Wan2.1 folder; default: the config's wan_model_path")
    p.add_argument("--seed", type=int, default=0, help="the noise of prompt i comes from (seed, i)")
    p.add_argument("--overwrite", action="store_true", help="regenerate videos that already exist")
    p.add_argument("--report_timing", action="store_true",
                   help="print first-block latency and FPS with and without VAE decode")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on CUDA, float32 on CPU")
    return p


def build_generator(args, checkpoint=None, causal=True, use_ema=False) -> VideoGenerator:
    cfg = load_config(args.config_path)
    device = pick_device(args.device)
    default = torch.bfloat16 if device.startswith("cuda") else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default
    components = load_components(args.wan_model_path or cfg.wan_model_path, checkpoint, use_ema=use_ema,
                                 dtype=dtype, device=device)
    return VideoGenerator(components, cfg, causal=causal, device=device)


def my_prompts(prompts):
    """[(global index, prompt)] of this rank (strided split across torchrun ranks, as the originals)."""
    rank, world = distributed_rank()
    return shard_for_rank(prompts, rank, world)


def output_folder(path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_stream(path: Path, pixel_blocks, overwrite: bool) -> bool:
    """Write pixel blocks [1, n, 3, H, W] into `path` as they arrive; skip an existing video unless
    overwrite. Returns whether a video was written."""
    if path.exists() and not overwrite:
        return False
    with VideoWriter(path, fps=FPS) as writer:
        for pixels in pixel_blocks:
            writer.write(pixels[0])
    return True


def progress(items, desc):
    rank, _ = distributed_rank()
    return tqdm(items, desc=desc, disable=rank != 0)


def report(generator: VideoGenerator, name: str, enabled: bool):
    if enabled:
        print(f"[timing] {name}: {generator.timing.summary()}", flush=True)


def run(main_fn, argv=None) -> int:
    """Run a CLI body; errors the user can fix (files, keys, folders, values) become one-line messages."""
    try:
        return main_fn(argv)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


# -- CausVid's prompt-file CLIs (autoregressive_inference.py, bidirectional_inference.py) ----------------
def checkpoint_in(folder):
    """CausVid's checkpoint folders hold model.pt; no folder means the Wan folder's own weights."""
    if folder is None:
        return None
    path = Path(folder) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no model.pt in the checkpoint folder")
    return path


def prompt_file_parser(description):
    p = base_parser(description)
    p.add_argument("--checkpoint_folder", help="folder with model.pt ('generator'); default: Wan folder weights")
    p.add_argument("--prompt_file_path", required=True, help="one prompt per line")
    return p


def prompt_file_main(argv, causal: bool, description: str) -> int:
    from causvid.data.prompts import read_prompt_file

    args = prompt_file_parser(description).parse_args(argv)
    prompts = read_prompt_file(args.prompt_file_path)  # fail on a bad prompt file before loading models
    generator = build_generator(args, checkpoint_in(args.checkpoint_folder), causal=causal)
    out = output_folder(args.output_folder)
    for i, prompt in progress(my_prompts(prompts), "videos"):
        stream = (pixels for _, pixels in generator.stream(prompt, seed=args.seed, index=i))
        if write_stream(out / f"output_{i:03d}.mp4", stream, args.overwrite):
            report(generator, f"output_{i:03d}.mp4", args.report_timing)
    return 0
