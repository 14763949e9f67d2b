"""The models, rollouts and timing of scripts/benchmark_inference.py (and scripts/device_check's driver).

benchmark_inference parses and checks its flags without torch, then calls `run(settings, args)` here; the
results dict it returns is what the benchmark reports and writes.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import platform
import statistics
import time
from dataclasses import asdict

import torch

from causvid.models.wan import WanDiT, get_preset
from causvid.models.wan.attention import set_attention_backend
from causvid.pipelines.flops import CACHED_MODES, flop_figures
from causvid.pipelines.measure import PeakMemory, _sync, stats, timed_latents, timed_pixels
from causvid.pipelines.rollout import causal_rollout, few_step_sampler
from causvid.pipelines.speed import SpeedOptions, apply_speed_options, compile_blocks, sdpa_kernel
from causvid.threads import use_threads
from scripts.benchmark_inference import _DRIVER_NAMES, Settings, mode_block, ratios

__all__ = list(_DRIVER_NAMES)  # the names benchmark_inference hands on to its users

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
    sampler = few_step_sampler(s.steps, s.leading_steps, generator=torch.Generator().manual_seed(s.seed))
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
    sampler = few_step_sampler(s.steps, s.leading_steps, generator=torch.Generator().manual_seed(s.seed))
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



def run(s: Settings, args) -> dict:
    """Every mode of the settings, timed; the results dict (benchmark_inference's report prints it)."""
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
        + "".join(f", block {b} {[round(x, 1) for x in steps]}" for b, steps in enumerate(s.leading_steps))
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
    return results
