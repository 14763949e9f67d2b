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
import contextlib
import itertools
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from causvid.errors import ArgumentParser
from causvid.config import denoising_steps, first_block_steps, load_config
from causvid.models.wan import WanDiT, get_preset
from causvid.models.wan.attention import set_attention_backend
from causvid.pipelines.flops import CACHED_MODES, flop_figures, forward_flops, rollout_calls
from causvid.pipelines.measure import PeakMemory, _sync, stats, timed_latents, timed_pixels
from causvid.pipelines.rollout import causal_rollout, few_step_sampler
from causvid.pipelines.speed import SpeedOptions, apply_speed_options, compile_blocks, sdpa_kernel
from causvid.threads import add_threads_flag, use_threads

# the names tests/test_benchmark_smoke.py and scripts/device_check.py use from this script
__all__ = [
    "DEFAULT_CONFIG", "DEFAULT_TINY_CONFIG", "parse_args", "resolve_settings", "mode_block", "build_dit",
    "random_inputs", "build_vae", "ours", "bench_mode", "environment", "main", "forward_flops", "rollout_calls",
    "flop_figures", "PeakMemory", "_sync", "stats", "timed_latents",
]

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
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    first_block_steps: list
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
    get_preset(preset)  # fail early on a typo
    block = args.num_frame_per_block or int(cfg.num_frame_per_block)
    shape = list(cfg.image_or_video_shape)  # [B, F, C, h, w]
    if args.blocks and args.frames:
        raise SystemExit("give --frames or --blocks, not both")
    frames = args.blocks * block if args.blocks else (args.frames or int(shape[1]))
    steps = [float(s) for s in args.steps] if args.steps else denoising_steps(cfg)
    if not steps:
        raise SystemExit(f"{cfg_path} has no denoising_step_list (a many-step model): pass --steps")
    first = None if args.steps else first_block_steps(cfg)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown mode(s) {unknown}; choose from {MODES}")
    vae = args.vae if args.vae != "auto" else ("tiny" if preset.startswith("tiny") else "real")
    window = cfg.model_kwargs.local_attn_size if args.local_attn_size is None else args.local_attn_size
    sink = cfg.model_kwargs.sink_size if args.sink_size is None else args.sink_size
    return Settings(config=str(cfg_path), preset=preset, num_layers=args.num_layers, device=device, dtype=dtype,
                    frames=frames, height=args.height or int(shape[3]), width=args.width or int(shape[4]),
                    num_frame_per_block=block, steps=list(steps), first_block_steps=list(first) if first else None,
                    local_attn_size=int(window), sink_size=int(sink),
                    context_noise=float(cfg.context_noise if args.context_noise is None else args.context_noise),
                    max_blocks=args.max_blocks, vae=vae, modes=modes, repeats=max(1, args.repeats),
                    warmup=max(0, args.warmup), peak_tflops=args.peak_tflops, seed=args.seed)


def mode_block(mode: str, s: Settings) -> int:
    return {"framewise": 1, "chunkwise": 3}.get(mode, s.num_frame_per_block)


# ----------------------------------------------------------------------------------------------------------------
# Models


def build_dit(s: Settings) -> WanDiT:
    """Random weights at the preset's sizes: Wan's init, with the (zero-initialised) output head drawn too, so
    the rollout's latents are not trivially the noise. Made in s.dtype on s.device from the start (the 14B
    model in fp32 would take 56 GB before a cast to bf16)."""
    overrides = {"num_layers": s.num_layers} if s.num_layers else {}
    torch.manual_seed(s.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, s.dtype))
    try:
        with torch.device(s.device):
            model = WanDiT.from_preset(s.preset, **overrides)
    finally:
        torch.set_default_dtype(default)
    torch.nn.init.xavier_uniform_(model.head.head.weight)
    return model.eval().requires_grad_(False)


def random_inputs(model_cfg, s: Settings, device, dtype) -> tuple:
    """The rollout's noise [1, frames, C, h, w] and a random prompt embedding [1, text_len, text_dim]."""
    gen = torch.Generator().manual_seed(s.seed)
    noise = torch.randn(1, s.frames, model_cfg.in_dim, s.height, s.width, generator=gen).to(device, dtype)
    context = torch.randn(1, model_cfg.text_len, model_cfg.text_dim, generator=gen).to(device, dtype)
    return noise, context


def build_skyreels(model: WanDiT, block: int):
    """diffusers' SkyReelsV2Transformer3DModel at the DiT's sizes with `num_frame_per_block=block`, holding the
    DiT's weights (through diffusers' own Wan converter), so its rollout can be checked against ours."""
    from diffusers import SkyReelsV2Transformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    c = model.config
    with torch.device(model.device):
        sky = SkyReelsV2Transformer3DModel(
            patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
            in_channels=c.in_dim, out_channels=c.out_dim, text_dim=c.text_dim, freq_dim=c.freq_dim, ffn_dim=c.ffn_dim,
            num_layers=c.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=c.eps)
    sky._set_ar_attention(block)  # diffusers' way of setting the causal block size (num_frame_per_block)
    state = convert_wan_transformer_to_diffusers({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    sky.load_state_dict(state, strict=True)
    if model.dtype != torch.float32:  # (diffusers warns that its fp32 modules are cast too; ours cast likewise)
        sky = sky.to(model.dtype)
    return sky.eval().requires_grad_(False)


def build_vae(kind: str, device: str, dtype: torch.dtype):
    if kind == "none":
        return None
    from causvid.models.vae import WanVAE

    if kind == "tiny":
        from causvid.tiny_wan.vae import tiny_vae_model
        net = tiny_vae_model()
    else:
        from diffusers import AutoencoderKLWan
        torch.manual_seed(0)
        net = AutoencoderKLWan()
    return WanVAE(net).eval().requires_grad_(False).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# Rollouts


def ours(model, noise, context, s: Settings, block: int, use_cache: bool):
    sampler = few_step_sampler(s.steps, s.first_block_steps, generator=torch.Generator().manual_seed(s.seed))
    blocks = causal_rollout(model, noise, context, num_frame_per_block=block, sampler=sampler,
                            context_noise=s.context_noise, local_attn_size=s.local_attn_size, sink_size=s.sink_size,
                            use_cache=use_cache, generator=torch.Generator().manual_seed(s.seed + 1))
    return itertools.islice(blocks, s.max_blocks) if s.max_blocks else blocks


def skyreels_rollout(sky, noise, context, *, num_frame_per_block: int, sampler, context_noise: float = 0.0):
    """Yield (start_frame, clean latents) block by block, recomputing the prefix the diffusers way: for each
    block and denoising step one SkyReels-V2 forward over [earlier clean blocks labelled t = context_noise ‖
    the noisy block at t] with `enable_diffusion_forcing=True`, keeping the block's output (the originals'
    inference refresh: the clean block, not noised). Same sampler and noise draws as `causal_rollout`, so with
    the same weights the latents agree with ours up to float error."""
    done, done_t = [], []
    for index, start in enumerate(range(0, noise.shape[1], num_frame_per_block)):
        def flow_fn(x, t, start=start):
            xs = torch.cat(done + [x], dim=1).transpose(1, 2)  # diffusers: [B, C, F, H, W]
            ts = torch.cat(done_t + [t], dim=1)
            out = sky(xs, ts, context, enable_diffusion_forcing=True, return_dict=False)[0]
            return out.transpose(1, 2)[:, start:]
        x0 = sampler(flow_fn, noise[:, start:start + num_frame_per_block], index)
        t_ctx = torch.full(x0.shape[:2], float(context_noise), device=x0.device)
        done.append(x0)
        done_t.append(t_ctx)
        yield start, x0


def theirs(sky, noise, context, s: Settings, block: int):
    sampler = few_step_sampler(s.steps, s.first_block_steps, generator=torch.Generator().manual_seed(s.seed))
    blocks = skyreels_rollout(sky, noise, context, num_frame_per_block=block, sampler=sampler,
                              context_noise=s.context_noise)
    return itertools.islice(blocks, s.max_blocks) if s.max_blocks else blocks


# ----------------------------------------------------------------------------------------------------------------
# Main


def pixel_frames(latent_frames: int) -> int:
    return 1 + 4 * (latent_frames - 1) if latent_frames > 0 else 0


def bench_mode(mode, make_blocks, s: Settings, device, vae, overlap: bool, frames_done: int, log) -> dict:
    # Peak memory is measured on the last warm-up run (on the first timed run without warm-up).
    memory = PeakMemory(device)
    for i in range(s.warmup):
        with memory if i == s.warmup - 1 else contextlib.nullcontext():
            timed_latents(make_blocks, device)
    runs = []
    for r in range(s.repeats):
        with memory if (s.warmup == 0 and r == 0) else contextlib.nullcontext():
            runs.append(timed_latents(make_blocks, device))
        log(f"  {mode}: run {r + 1}/{s.repeats} {runs[-1]['total_s']:.3f} s")
    n_blocks = len(runs[0]["block_s"])
    total = stats(r["total_s"] for r in runs)
    out = dict(
        blocks=n_blocks, latent_frames=frames_done, pixel_frames=pixel_frames(frames_done),
        total_s=total, first_block_s=stats(r["first_s"] for r in runs),
        per_block_s=[statistics.median(r["block_s"][b] for r in runs) for b in range(n_blocks)],
        per_block_min_s=[min(r["block_s"][b] for r in runs) for b in range(n_blocks)],
        per_block_max_s=[max(r["block_s"][b] for r in runs) for b in range(n_blocks)],
        fps=pixel_frames(frames_done) / total["median"], latent_fps=frames_done / total["median"],
        peak_memory=memory.result(),
    )
    out["last_block_s"] = out["per_block_s"][-1]
    if vae is not None and mode in CACHED_MODES:
        timed_pixels(make_blocks, vae, overlap, device)  # warm-up of the decoder
        vruns = []
        for r in range(s.repeats):
            vruns.append(timed_pixels(make_blocks, vae, overlap, device))
            log(f"  {mode} + VAE decode: run {r + 1}/{s.repeats} {vruns[-1]['total_s']:.3f} s")
        vtotal = stats(r["total_s"] for r in vruns)
        out["with_vae"] = dict(overlap_decode=overlap, total_s=vtotal,
                               first_block_pixels_s=stats(r["first_pixels_s"] for r in vruns),
                               fps=vruns[0]["pixel_frames"] / vtotal["median"], pixel_frames=vruns[0]["pixel_frames"])
    return out, runs[-1]["latents"]


def vae_only(vae, latents, block, s: Settings, device) -> dict:
    """Streaming decode of the finished latents alone, block by block (the VAE's share of the with-VAE time)."""
    def once():
        decoder = vae.stream_decoder()
        _sync(device)
        t0 = time.perf_counter()
        for start in range(0, latents.shape[1], block):
            decoder.decode(latents[:, start:start + block])
        _sync(device)
        return time.perf_counter() - t0
    once()
    return stats(once() for _ in range(s.repeats))


def environment(device) -> dict:
    env = dict(torch=torch.__version__, python=platform.python_version(), platform=platform.platform(),
               cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    try:
        env["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def main(argv=None) -> dict:
    args = parse_args(argv)
    s = resolve_settings(args)
    use_threads(args.threads, s.device, get_preset(s.preset).dim)
    opts = SpeedOptions(compile=args.compile, compile_backend=args.compile_backend, cuda_graphs=args.cuda_graphs,
                        cross_cache=not args.no_cross_cache, overlap_decode=args.overlap_decode,
                        attention_backend=args.attention_backend, sdpa_kernel=args.sdpa_kernel)
    device = torch.device(s.device)
    dtype = getattr(torch, s.dtype)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    model = build_dit(s)
    cfg = model.config
    apply_speed_options(model, opts)
    frame_tokens = (s.height // cfg.patch_size[1]) * (s.width // cfg.patch_size[2])
    noise, context = random_inputs(cfg, s, device, dtype)
    vae = build_vae(s.vae, s.device, dtype)
    params = sum(p.numel() for p in model.parameters())
    env = environment(device)

    log(f"preset {s.preset} ({params / 1e6:.1f}M params, {cfg.num_layers} layers), latents {s.frames} x "
        f"{cfg.in_dim} x {s.height} x {s.width} ({frame_tokens} tokens/frame), {len(s.steps)} steps + 1 refresh "
        f"per block, window {s.local_attn_size}, sink {s.sink_size}, {s.device} {s.dtype}, vae {s.vae}; "
        f"{s.warmup} warm-up + {s.repeats} timed runs per mode; {opts.describe()}")
    log(f"config {s.config}; steps {[round(x, 1) for x in s.steps]}"
        + (f", first block {s.first_block_steps}" if s.first_block_steps else "")
        + (f"; load average {env['loadavg_start'][0]:.2f}" if "loadavg_start" in env else ""))

    results = dict(settings=asdict(s), options=asdict(opts), environment=env, params=params,
                   frame_tokens=frame_tokens, modes={}, skipped={}, checks={})
    latents = {}
    sky = None
    with torch.no_grad(), sdpa_kernel(opts.sdpa_kernel):
        for mode in s.modes:
            block = mode_block(mode, s)
            if s.frames % block:
                results["skipped"][mode] = f"{s.frames} frames do not split into blocks of {block}"
                log(f"skip {mode}: {results['skipped'][mode]}")
                continue
            n_blocks = s.frames // block if not s.max_blocks else min(s.frames // block, s.max_blocks)
            frames_done = n_blocks * block
            if mode == "skyreels":
                if block == 1:
                    results["skipped"][mode] = ("num_frame_per_block is 1: SkyReelsV2Transformer3DModel builds no "
                                                "mask then (bidirectional), so it is no causal reference")
                    log(f"skip {mode}: {results['skipped'][mode]}")
                    continue
                if s.local_attn_size != -1:
                    log("note: skyreels has no local window: it attends to the whole prefix")
                set_attention_backend("auto")
                sky = build_skyreels(model, block)
                if opts.compile or opts.cuda_graphs:
                    compile_blocks(sky, backend=opts.compile_backend,
                                   mode="reduce-overhead" if opts.cuda_graphs else None)

                def make(sky=sky, block=block):
                    return theirs(sky, noise, context, s, block)
            else:
                use_cache = mode != "nocache"
                # flash-attn takes no mask: the masked (no-cache) calls fall back to the automatic choice
                set_attention_backend("auto" if not use_cache and opts.attention_backend == "flash"
                                      else opts.attention_backend)

                def make(block=block, use_cache=use_cache):
                    return ours(model, noise, context, s, block, use_cache)
            log(f"{mode}: {n_blocks} blocks of {block} frame(s)")
            out, latents[mode] = bench_mode(mode, make, s, device, vae if mode in CACHED_MODES else None,
                                            opts.overlap_decode, frames_done, log)
            out["flops"] = flop_figures(cfg, mode, s, block, opts.cross_cache or mode not in CACHED_MODES,
                                        out["total_s"]["median"])
            out["num_frame_per_block"] = block
            results["modes"][mode] = out
            if sky is not None and mode == "skyreels":
                del sky
                sky = None
        set_attention_backend(opts.attention_backend)
        if vae is not None and latents:
            name = next(iter(latents))
            results["vae_decode_s"] = vae_only(vae, latents[name], mode_block(name, s), s, device)

    # checks: the three rollouts compute the same video (same noise and weights), up to float error
    ref = latents.get("cached")
    for other in ("nocache", "skyreels"):
        if ref is not None and other in latents and (other != "skyreels" or s.local_attn_size == -1):
            diff = (latents[other].float() - ref.float()).abs().max().item()
            results["checks"][f"{other}_vs_cached_max_abs_diff"] = diff
    results["ratios"] = ratios(results["modes"])
    try:
        results["environment"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    report(results, s, log)
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        log(f"wrote {path}")
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


if __name__ == "__main__":
    main()
