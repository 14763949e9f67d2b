"""Per-block latency of the KV-cached causal rollout against recomputing the whole prefix for every block.

A benchmark, run by hand (never a test): random weights, since speed does not depend on their values.

    python scripts/bench_rollout.py --preset tiny --num_frame_per_block 3 --blocks 8
    python scripts/bench_rollout.py --preset wan2.1-t2v-1.3b --height 60 --width 104 --blocks 7 \
        --device cuda --dtype bfloat16

The two rollouts run side by side in one process on the same noise; the ratio is what to quote.
"""
import argparse
import statistics
import time

import torch

from causvid.models.wan import WanDiT
from causvid.pipelines.rollout import causal_rollout, few_step_sampler


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--num_layers", type=int, help="override the preset's layer count")
    p.add_argument("--num_frame_per_block", type=int, default=3)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--height", type=int, default=16, help="latent height (480p video: 60)")
    p.add_argument("--width", type=int, default=16, help="latent width (832 px: 104)")
    p.add_argument("--steps", type=float, nargs="+", default=[1000, 937.5, 833.3, 625])
    p.add_argument("--local_attn_size", type=int, default=-1)
    p.add_argument("--sink_size", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p.parse_args(argv)


def timed_rollout(model, noise, context, args, use_cache):
    """Seconds per block (each block's denoising steps plus its cache refresh)."""
    times = []
    sync = torch.cuda.synchronize if noise.is_cuda else (lambda: None)
    sync()
    last = time.perf_counter()
    sampler = few_step_sampler(args.steps, generator=torch.Generator(noise.device).manual_seed(0))
    for _ in causal_rollout(model, noise, context, num_frame_per_block=args.num_frame_per_block, sampler=sampler,
                            local_attn_size=args.local_attn_size, sink_size=args.sink_size, use_cache=use_cache):
        sync()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def main(argv=None):
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    overrides = {"num_layers": args.num_layers} if args.num_layers else {}
    with torch.device(args.device):
        model = WanDiT.from_preset(args.preset, **overrides).to(dtype).eval()
    cfg = model.config
    frames = args.blocks * args.num_frame_per_block
    noise = torch.randn(1, frames, cfg.in_dim, args.height, args.width, device=args.device, dtype=dtype)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=args.device, dtype=dtype)
    tokens = (args.height // cfg.patch_size[1]) * (args.width // cfg.patch_size[2])
    print(f"preset {args.preset} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params), "
          f"{args.blocks} blocks x {args.num_frame_per_block} frames, {tokens} tokens/frame, "
          f"{len(args.steps)} steps + 1 refresh per block, window {args.local_attn_size}, sink {args.sink_size}, "
          f"{args.device} {args.dtype}, median of {args.repeats} runs after a warm-up")
    with torch.no_grad():
        timed_rollout(model, noise[:, : 2 * args.num_frame_per_block], context, args, True)  # warm-up
        runs = {name: [timed_rollout(model, noise, context, args, use_cache)
                       for _ in range(args.repeats)] for name, use_cache in (("cached", True), ("no-cache", False))}
    med = {name: [statistics.median(r[b] for r in rs) for b in range(args.blocks)] for name, rs in runs.items()}
    print(f"{'block':>5} {'cached ms':>10} {'no-cache ms':>12} {'ratio':>6}")
    for b in range(args.blocks):
        c, n = med["cached"][b] * 1e3, med["no-cache"][b] * 1e3
        print(f"{b:>5} {c:>10.1f} {n:>12.1f} {n / c:>6.2f}")
    total_c, total_n = sum(med["cached"]), sum(med["no-cache"])
    print(f"total {total_c * 1e3:>10.1f} {total_n * 1e3:>12.1f} {total_n / total_c:>6.2f}")
    print(f"latent frames/s: cached {frames / total_c:.1f}, no-cache {frames / total_n:.1f}")


if __name__ == "__main__":
    main()
