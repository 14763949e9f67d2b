"""Inference benchmark: the KV-cached causal rollout against recomputing the prefix and against SkyReels-V2.

A benchmark, run by hand (never a timing test): random weights, since speed does not depend on their values;
the shapes are those of the chosen preset and config. For one model size, latent resolution and number of
latent frames it measures, in one process and on the same noise:

  cached     our KV-cached causal rollout at the config's num_frame_per_block
  framewise  the same with blocks of 1 frame      chunkwise  the same with blocks of 3 frames
  nocache    the same rollout recomputing the whole prefix for every call (the cost the cache removes)
  skyreels   diffusers' SkyReelsV2Transformer3DModel (dense block-causal mask, per-frame timesteps, no KV cache)
             driven over the same blocks and steps: for block b and each step, one forward over frames
             [0, end of b] with the earlier frames clean at t = context_noise, keeping block b's output.
             Chunkwise only (with num_frame_per_block 1 diffusers builds no mask: the model is bidirectional),
             and without a local window (diffusers has none).

For each: first-block latency, per-block latency, throughput in video frames per second (1 + 4(F - 1) pixel
frames), peak memory, the analytic FLOP count of the DiT and, with --peak_tflops, MFU; for the cached modes also
with VAE decode (time to the first block's pixels, FPS). Warm-up runs, then --repeats timed runs: median and
spread. The same video comes out of all three rollouts (checked: max abs difference of the latents;
SkyReels-V2 only without a window).

On a shared CPU machine pass --threads 1: with two OpenMP threads on two busy cores the runs spread by 2-10x.

    # tiny model, CPU, 48 latent frames = 16 chunkwise blocks
    python -m scripts.benchmark_inference --config configs/tiny/causal_forcing_dmd_chunkwise.yaml --preset tiny \
        --frames 48 --modes cached,nocache,skyreels --threads 1 --json bench.json
    # the same with a rolling window (first vs last block latency)
    python -m scripts.benchmark_inference --config configs/tiny/causal_forcing_dmd_chunkwise.yaml --preset tiny \
        --frames 48 --local_attn_size 12 --sink_size 3 --threads 1
    # Wan2.1-T2V-1.3B shapes (21 x 60 x 104 latents) on a GPU, bf16, compiled blocks, overlapped decode
    python -m scripts.benchmark_inference --config configs/causal_forcing_dmd_chunkwise.yaml \
        --preset wan2.1-t2v-1.3b --device cuda --vae real --compile --overlap_decode --peak_tflops 989
    # the old bench_rollout.py table (per-block latency cached vs no-cache)
    python -m scripts.benchmark_inference --preset tiny --num_frame_per_block 3 --blocks 8 --height 16 --width 16 \
        --modes cached,nocache --vae none

The FLOP model is causvid/pipelines/flops.py; the timing and memory helpers are causvid/pipelines/measure.py.

`main(argv)` returns the results dict (also written by --json).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from causvid.config import denoising_steps, leading_block_steps, load_config
from causvid.errors import ArgumentParser, run_cli
from causvid.pipelines.flops import forward_flops, rollout_calls
from causvid.runtime import check_device_name, pick_device
from causvid.threads import add_threads_flag

# The flags are parsed and checked before torch loads (an answer in under 2 s); the models, rollouts and timing
# are scripts/inference_driver.py, imported by main once the settings hold. Its names stay reachable from here
# (`bench.ours`, `bench.build_dit`, ...) for scripts/device_check and the tests.
_DRIVER_NAMES = ("build_dit", "random_inputs", "build_skyreels", "build_vae", "ours", "theirs", "skyreels_rollout",
                 "pixel_frames", "bench_mode", "vae_only", "environment", "flop_figures", "PeakMemory", "_sync",
                 "stats", "timed_latents", "run")


def __getattr__(name):
    if name in _DRIVER_NAMES:
        from scripts import inference_driver
        return getattr(inference_driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_CONFIG", "DEFAULT_TINY_CONFIG", "Settings", "parse_args", "resolve_settings", "mode_block", "main",
           "forward_flops", "rollout_calls", *_DRIVER_NAMES]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/causal_forcing_dmd_chunkwise.yaml"  # Wan2.1-T2V-1.3B shapes: 21 x 60 x 104 latents
DEFAULT_TINY_CONFIG = "configs/tiny/causal_forcing_dmd_chunkwise.yaml"  # its tiny mirror: 6 x 4 x 4 latents
MODES = ("cached", "framewise", "chunkwise", "nocache", "skyreels")


# ----------------------------------------------------------------------------------------------------------------
# Arguments and settings


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m scripts.benchmark_inference", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help=f"project YAML config: num_frame_per_block, denoising steps, latent shape, window "
                        f"(default {DEFAULT_CONFIG}, or {DEFAULT_TINY_CONFIG} for a tiny preset)")
    p.add_argument("--preset", default=None,
                   help="DiT size (wan2.1-t2v-1.3b, wan2.1-t2v-14b, tiny, tiny-4layer); default: tiny for a config "
                        "under configs/tiny/, else wan2.1-t2v-1.3b")
    p.add_argument("--num_layers", type=int, help="override the preset's layer count")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda where this torch has CUDA)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--frames", type=int, help="latent frames (default: the config's)")
    p.add_argument("--blocks", type=int, help="alternative to --frames: blocks x num_frame_per_block frames")
    p.add_argument("--max_blocks", type=int,
                   help="stop every rollout after this many blocks (the cache is still sized for --frames): e.g. "
                        "one block of the real 1.3B shapes on a CPU")
    p.add_argument("--height", type=int, help="latent height (default: the config's; 480p video: 60)")
    p.add_argument("--width", type=int, help="latent width (default: the config's; 832 px: 104)")
    p.add_argument("--num_frame_per_block", type=int, help="override the config's block size")
    p.add_argument("--steps", type=float, nargs="+", help="denoising timesteps (default: the config's list)")
    p.add_argument("--local_attn_size", type=int, help="rolling window in latent frames (-1: global)")
    p.add_argument("--sink_size", type=int, help="first frames always kept in the window")
    p.add_argument("--context_noise", type=float, help="timestep of the cache refresh pass (default: the config's)")
    p.add_argument("--vae", default="auto", choices=["auto", "tiny", "real", "none"],
                   help="decoder for the with-VAE figures: tiny = causvid.tiny_wan.vae.tiny_vae_model(), real = a "
                        "random full-size AutoencoderKLWan(); auto: tiny for tiny presets, else real")
    p.add_argument("--modes", default="cached,nocache,skyreels",
                   help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median and spread reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per mode before timing")
    p.add_argument("--peak_tflops", type=float, help="the device's peak TFLOP/s for MFU (e.g. H100 SXM bf16: 989)")
    p.add_argument("--seed", type=int, default=0)
    add_threads_flag(p)
    p.add_argument("--json", dest="json_out", help="write all figures to this JSON file")
    # speed switches (causvid.pipelines.speed)
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend (inductor, aot_eager, ...)")
    p.add_argument("--cuda_graphs", action="store_true", help="compile with mode='reduce-overhead' (CUDA graphs)")
    p.add_argument("--overlap_decode", action="store_true",
                   help="decode block b while block b+1 is generated (worker thread; CUDA side stream)")
    p.add_argument("--no_cross_cache", action="store_true",
                   help="recompute the prompt's cross-attention K/V and text MLP on every call")
    p.add_argument("--attention_backend", default="auto", choices=["auto", "sdpa", "flex", "flash"],
                   help="causvid attention kernel (flash needs flash-attn; masked no-cache calls then use auto)")
    p.add_argument("--sdpa_kernel", default=None, choices=["auto", "flash", "efficient", "cudnn", "math"],
                   help="pin torch SDPA's kernel")
    return p.parse_args(argv)


@dataclass
class Settings:
    config: str
    preset: str
    num_layers: int
    device: str
    dtype: str
    frames: int
    height: int
    width: int
    num_frame_per_block: int
    steps: list
    leading_steps: list  # the first blocks' own step lists (a per-block schedule)
    local_attn_size: int
    sink_size: int
    context_noise: float
    max_blocks: int
    vae: str
    modes: list
    repeats: int
    warmup: int
    peak_tflops: float
    seed: int


def _resolve_config_path(path: str) -> Path:
    p = Path(path)
    if not p.exists() and (REPO / p).exists():
        p = REPO / p
    return p


def resolve_settings(args) -> Settings:
    tiny_preset = bool(args.preset) and args.preset.lower().startswith("tiny")
    cfg_path = _resolve_config_path(args.config or (DEFAULT_TINY_CONFIG if tiny_preset else DEFAULT_CONFIG))
    cfg = load_config(cfg_path)
    preset = args.preset or ("tiny" if cfg_path.parent.name == "tiny" else "wan2.1-t2v-1.3b")
    block = args.num_frame_per_block or int(cfg.num_frame_per_block)
    shape = list(cfg.image_or_video_shape)  # [B, F, C, h, w]
    if args.blocks and args.frames:
        raise SystemExit("give --frames or --blocks, not both")
    frames = args.blocks * block if args.blocks else (args.frames or int(shape[1]))
    steps = [float(s) for s in args.steps] if args.steps else denoising_steps(cfg)
    if not steps:
        raise SystemExit(f"{cfg_path} has no denoising_step_list (a many-step model): pass --steps")
    leading = [] if args.steps else leading_block_steps(cfg)
    check_device_name(args.device)  # its form, and CUDA in this torch build, read without importing torch
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {MODES}")
    # the checks that need torch come last: the preset's name (its table lives beside the model) and, without
    # --device, whether a GPU is there
    from causvid.models.wan import PRESETS
    if preset.lower() not in PRESETS:
        raise SystemExit(f"--preset {preset!r}: no such preset; choose from {', '.join(PRESETS)}")
    device = args.device or pick_device(None)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    vae = args.vae if args.vae != "auto" else ("tiny" if preset.startswith("tiny") else "real")
    window = cfg.model_kwargs.local_attn_size if args.local_attn_size is None else args.local_attn_size
    sink = cfg.model_kwargs.sink_size if args.sink_size is None else args.sink_size
    return Settings(config=str(cfg_path), preset=preset, num_layers=args.num_layers, device=device, dtype=dtype,
                    frames=frames, height=args.height or int(shape[3]), width=args.width or int(shape[4]),
                    num_frame_per_block=block, steps=list(steps), leading_steps=[list(x) for x in leading],
                    local_attn_size=int(window), sink_size=int(sink),
                    context_noise=float(cfg.context_noise if args.context_noise is None else args.context_noise),
                    max_blocks=args.max_blocks, vae=vae, modes=modes, repeats=max(1, args.repeats),
                    warmup=max(0, args.warmup), peak_tflops=args.peak_tflops, seed=args.seed)


def mode_block(mode: str, s: Settings) -> int:
    return {"framewise": 1, "chunkwise": 3}.get(mode, s.num_frame_per_block)


def main(argv=None) -> dict:
    args = parse_args(argv)
    s = resolve_settings(args)
    from scripts.inference_driver import run  # torch and the model code load here, once the flags hold

    results = run(s, args)
    report(results, s, lambda msg: print(msg, flush=True))
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}", flush=True)
    return results


def ratios(modes: dict) -> dict:
    out = {}
    base = modes.get("cached")
    if base is None:
        return out
    for other in ("nocache", "skyreels", "framewise", "chunkwise"):
        if other in modes and modes[other]["blocks"] and modes[other]["latent_frames"] == base["latent_frames"]:
            out[f"{other}_over_cached_total"] = modes[other]["total_s"]["median"] / base["total_s"]["median"]
            if modes[other]["blocks"] == base["blocks"]:
                out[f"{other}_over_cached_last_block"] = modes[other]["last_block_s"] / base["last_block_s"]
    return out


def report(results: dict, s: Settings, log) -> None:
    modes = results["modes"]
    if not modes:
        return
    log("")
    log(f"{'mode':<10} {'blocks':>6} {'total s':>9} {'spread':>7} {'first ms':>9} {'last ms':>8} {'FPS':>8} "
        f"{'FPS+VAE':>8} {'1st px ms':>9} {'TFLOP':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak MB':>8}")
    for name, m in modes.items():
        v = m.get("with_vae")
        mfu = m["flops"]["mfu"]
        log(f"{name:<10} {m['blocks']:>6} {m['total_s']['median']:>9.3f} {m['total_s']['spread']:>6.0%} "
            f"{m['first_block_s']['median'] * 1e3:>9.1f} {m['last_block_s'] * 1e3:>8.1f} {m['fps']:>8.2f} "
            f"{(v['fps'] if v else float('nan')):>8.2f} "
            f"{(v['first_block_pixels_s']['median'] * 1e3 if v else float('nan')):>9.1f} "
            f"{m['flops']['tflop_per_video']:>9.4f} {m['flops']['achieved_tflops']:>8.4f} "
            f"{(f'{mfu:.1%}' if mfu is not None else 'n/a'):>6} {m['peak_memory']['peak_bytes'] / 2**20:>8.0f}")
    first = next(iter(modes.values()))
    log(f"FPS = pixel frames (1 + 4(F - 1) = {first['pixel_frames']}) / median seconds; spread = (max - min) / "
        f"median over {s.repeats} runs; TFLOP: analytic, DiT only; peak memory: {first['peak_memory']['method']}"
        + ("" if s.peak_tflops else "; MFU: pass --peak_tflops"))
    if "vae_decode_s" in results:
        log(f"VAE streaming decode alone: {results['vae_decode_s']['median']:.3f} s per video")

    # per-block table (the old bench_rollout.py output), for the modes with the cached rollout's block count
    base = modes.get("cached") or first
    cols = [n for n, m in modes.items() if m["blocks"] == base["blocks"]]
    if len(cols) > 0:
        log("")
        header = f"{'block':>5} " + " ".join(f"{n + ' ms':>12}" for n in cols)
        extra = [n for n in cols if n != "cached" and "cached" in cols]
        header += "".join(f" {n[:8] + '/cached':>15}" for n in extra)
        log(header)
        for b in range(base["blocks"]):
            row = f"{b:>5} " + " ".join(f"{modes[n]['per_block_s'][b] * 1e3:>12.1f}" for n in cols)
            row += "".join(f" {modes[n]['per_block_s'][b] / modes['cached']['per_block_s'][b]:>15.2f}" for n in extra)
            log(row)
        row = f"{'total':>5} " + " ".join(f"{modes[n]['total_s']['median'] * 1e3:>12.1f}" for n in cols)
        row += "".join(f" {modes[n]['total_s']['median'] / modes['cached']['total_s']['median']:>15.2f}"
                       for n in extra)
        log(row)
    for key, value in results["ratios"].items():
        log(f"ratio {key}: {value:.2f}")
    for key, value in results["checks"].items():
        log(f"check {key}: {value:.2e}")
    for key, value in results["skipped"].items():
        log(f"skipped {key}: {value}")


def _cli(argv) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(_cli))  # a bad input is one line (its exit code), not a traceback
