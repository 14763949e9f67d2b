"""Encode videos with the Wan VAE: one ``{caption: latent [1, F, 16, h, w]}`` file per video.

    torchrun --nproc_per_node 8 distillation_data/compute_vae_latent.py \
        --input_video_folder datasets/converted_videos/65f --output_latent_folder datasets/latents/65f \
        --info_path sample_dataset/cap_to_video_65f.json [--wan_model_path wan_models/Wan2.1-T2V-1.3B]

The info file lists (video path relative to --input_video_folder, caption) pairs: a clip list
``[{"video": ..., "caption": ...}, ...]`` or a flat dict, caption -> video or video -> caption (read by
``causvid.data.video_info.read_info``). Video i (its position in that list) goes to rank i % world and is
written to ``<output_latent_folder>/<i:08d>.pt``.

Each video is read whole, mapped to [-1, 1], trimmed to 1 + 4k frames (the VAE's temporal stride; ``--max_frames``
caps the count first) and encoded to Wan-normalised latents (posterior mean), saved in float32. Outputs that
already exist are skipped, so a stopped run continues where it was; files are written atomically. Videos that
can't be used (missing, corrupt, or a size that is not a multiple of the VAE's spatial factor) are skipped with
the reason logged and counted; they are retried on the next run. A rank that encodes none of its videos exits
with 1.
"""
import sys
import time
from pathlib import Path

from causvid.data.video_info import read_info
from causvid.errors import ArgumentParser, RunError, run_cli
from causvid.runtime import atomic_save, check_device_name, log, pending_items
from causvid.threads import add_threads_flag, use_threads
from causvid.video_io import VideoReadError, read_video


def load_pixels(path, max_frames=None, temporal_factor=4, spatial_factor=8):
    """uint8 video file -> float pixels [1, T, 3, H, W] in [-1, 1] with T = 1 + 4k (extra frames dropped); the
    sides must be multiples of the VAE's spatial factor (8 for Wan's, 2 for the toy latent space)."""
    frames = read_video(path)  # [T, H, W, 3] uint8; VideoReadError on anything unreadable
    if max_frames:
        frames = frames[:max_frames]
    keep = 1 + (len(frames) - 1) // temporal_factor * temporal_factor
    h, w = frames.shape[1:3]
    if h % spatial_factor or w % spatial_factor:
        raise VideoReadError(f"video {str(path)!r} is {h}x{w}; the VAE needs sides that are multiples of "
                             f"{spatial_factor}")
    import torch

    video = torch.from_numpy(frames[:keep]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return video[None]


def parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input_video_folder", required=True)
    p.add_argument("--output_latent_folder", required=True)
    p.add_argument("--info_path", required=True, help="JSON: clip list [{video, caption}] or flat dict")
    p.add_argument("--wan_model_path", default="wan_models/Wan2.1-T2V-1.3B",
                   help="model folder with the VAE (Wan, or any folder whose model_index.json names one)")
    p.add_argument("--max_frames", type=int, help="use at most this many frames of each video (then 1 + 4k)")
    p.add_argument("--device", default=None, help="default: cuda when available (LOCAL_RANK's GPU), else cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"],
                   help="VAE dtype; default bfloat16 on CUDA (as CausVid), float32 on CPU")
    add_threads_flag(p)
    return p


def encode_all(argv=None) -> int:
    """Flags, the clip list and the device name are checked before torch loads."""
    args = parser().parse_args(argv)
    entries = read_info(args.info_path)
    check_device_name(args.device)
    import torch

    with torch.no_grad():
        return _encode(args, entries)


def _encode(args, entries) -> int:
    import torch

    from causvid.pipelines.text_to_video import load_vae
    from causvid.runtime import pick_device

    out = Path(args.output_latent_folder)
    out.mkdir(parents=True, exist_ok=True)
    todo, already = pending_items(entries, out, "{:08d}.pt", "videos")
    if not todo:
        return 0

    device = pick_device(args.device)
    use_threads(args.threads, device, None)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.startswith("cuda")
                                                           else torch.float32)
    vae = load_vae(args.wan_model_path, dtype=dtype, device=device)  # the folder's VAE (model_index.json)
    encoded, failed = 0, []
    for n, (index, (relpath, caption)) in enumerate(todo):
        path = Path(args.input_video_folder) / relpath
        start = time.perf_counter()
        try:
            pixels = load_pixels(path, args.max_frames, vae.temporal_factor, vae.spatial_factor)
            latent = vae.encode(pixels.to(device=device, dtype=dtype)).float().cpu()
        except VideoReadError as err:
            failed.append((index, str(err)))
            log(f"skipped video {index} ({relpath}): {err}")
            continue
        atomic_save({caption: latent}, out / f"{index:08d}.pt")
        encoded += 1
        log(f"[{n + 1}/{len(todo)}] video {index}: {tuple(pixels.shape)} -> {tuple(latent.shape)} in "
            f"{time.perf_counter() - start:.1f} s")
    log(f"done: {encoded} encoded, {already} already there, {len(failed)} skipped as unreadable"
        + "".join(f"\n  {i:08d}: {reason}" for i, reason in failed))
    if not encoded and not already:
        raise RunError(f"no latent written to {out}: all {len(failed)} videos of this rank are unreadable (see above)")
    return 0


def main(argv=None) -> int:
    return run_cli(encode_all, argv)


if __name__ == "__main__":
    sys.exit(main())
