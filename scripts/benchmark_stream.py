"""Real-time benchmark of an endless stream (run by hand, not a test): the shipped toy student on this CPU.

For each scenario (no switch; a prompt switch with re-cache; a switch without re-cache) and each repeat, an
endless `StreamSession` makes --blocks blocks, and the script reports

  first frame   seconds from creating the session (text encoding included) to the first block's pixels;
  sustained     pixel frames per second from the end of the first block to the end of the last (wall time:
                sampling, decoding and any switch), the figure to hold against the video's fps (16 in the toy);
  switch block  wall time of the block that takes the new prompt (its text encoding and re-cache included).

Medians over --repeats. Then where the time goes: DiT forward calls (timed by hooks: the sampler's steps and
the cache refresh), the VAE decode, text encoding, and the rest (Python, sampler arithmetic); with --profile
the top operators of a few blocks (torch.profiler).

    python -m scripts.benchmark_stream                       # checkpoints/toy, 1 thread (the default), 20 blocks
    python -m scripts.benchmark_stream --threads 2 --profile

The machine's load average is printed with the figures: on a shared CPU two OpenMP threads on two busy cores can
run several times slower than one.
"""
from __future__ import annotations

import json
import os
import statistics
import time
import sys
from pathlib import Path

from causvid.config import load_config
from causvid.errors import ArgumentParser, run_cli
from causvid.runtime import check_wan_folder
from causvid.threads import add_threads_flag, dit_width, use_threads

REPO = Path(__file__).resolve().parents[1]

A, B = "a red square moving left", "a blue circle moving up"
SCENARIOS = {"no switch": None, "switch, re-cache": True, "switch, no re-cache": False}


class DiTTimer:
    """Wall time spent inside the DiT's forward calls (forward hooks)."""

    def __init__(self, dit):
        self.seconds, self.calls, self._t = 0.0, 0, None
        self.handles = [dit.register_forward_pre_hook(self._start), dit.register_forward_hook(self._stop)]

    def _start(self, *_):
        self._t = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def run_session(components, config, blocks, switch_at, recache, seed):
    """One timed endless session; returns its figures."""
    started = time.perf_counter()
    from causvid.pipelines.stream import StreamSession

    session = StreamSession(components, config, A, seed=seed)
    ends, frames, latent, decode = [], [], 0.0, 0.0
    for i in range(blocks):
        if recache is not None and i == switch_at:
            session.set_prompt(B, recache=recache)
        block = session.next_block()
        ends.append(time.perf_counter())
        frames.append(block.pixels.shape[1])
        latent += block.latent_seconds
        decode += block.decode_seconds
    walls = [b - a for a, b in zip([started] + ends, ends)]
    return dict(first_frame=ends[0] - started, sustained_fps=sum(frames[1:]) / (ends[-1] - ends[0]),
                block_median=statistics.median(walls[1:]), switch_block=walls[switch_at] if recache is not None
                else None, latent=latent, decode=decode, wall=ends[-1] - started, pixel_frames=sum(frames))


def breakdown(components, config, blocks, switch_at):
    """Where the time of one session with a re-cached switch goes."""
    timer = DiTTimer(components.dit)
    try:
        r = run_session(components, config, blocks, switch_at, True, seed=99)
    finally:
        timer.remove()
    encoder = components.text_encoder
    started = time.perf_counter()
    for _ in range(20):
        encoder.encode([B])
    encode = (time.perf_counter() - started) / 20
    rest = r["wall"] - timer.seconds - r["decode"] - 2 * encode
    return dict(wall=r["wall"], dit=timer.seconds, dit_calls=timer.calls, decode=r["decode"], text_encode=2 * encode,
                rest=rest)


def profile(components, config, blocks=5):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from causvid.pipelines.stream import StreamSession

    session = StreamSession(components, config, A, seed=7)
    session.next_block()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(blocks):
            session.next_block()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv=None):
    p = ArgumentParser(prog="python -m scripts.benchmark_stream", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "toy"), help="student folder")
    p.add_argument("--config", default=str(REPO / "configs" / "toy" / "cf_dmd_chunkwise.yaml"))
    add_threads_flag(p)
    p.add_argument("--blocks", type=int, default=20)
    p.add_argument("--switch_at", type=int, default=10, help="the block that takes the new prompt")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fps", type=float, default=16.0, help="the video's frame rate (the real-time goal)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    if not 0 < args.switch_at < args.blocks:
        p.error(f"--switch_at {args.switch_at} must be in [1, --blocks {args.blocks})")
    check_wan_folder(args.checkpoint, "--checkpoint", "give a student folder such as checkpoints/toy")
    config = load_config(args.config)
    threads = use_threads(args.threads, "cpu", dit_width(args.checkpoint))
    from causvid.pipelines.text_to_video import load_components  # the models load only once the flags hold

    components = load_components(args.checkpoint)
    run_session(components, config, 3, 1, True, seed=0)  # warm-up
    print(f"{args.checkpoint}: {args.blocks} blocks of {config.num_frame_per_block} latent frames, "
          f"{threads} thread{'s' * (threads != 1)}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {}
    for name, recache in SCENARIOS.items():
        runs = [run_session(components, config, args.blocks, args.switch_at, recache, seed=r)
                for r in range(args.repeats)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if runs[0][k] is not None}
        spread = (min(r["sustained_fps"] for r in runs), max(r["sustained_fps"] for r in runs))
        results[name] = {**med, "sustained_fps_range": spread}
        switch = f", switch block {med['switch_block'] * 1000:.0f} ms" if "switch_block" in med else ""
        verdict = "real time" if med["sustained_fps"] >= args.fps else "below real time"
        print(f"  {name:20s} first frame {med['first_frame'] * 1000:6.0f} ms   sustained {med['sustained_fps']:6.1f} "
              f"frames/s ({spread[0]:.1f}-{spread[1]:.1f}; {verdict} at {args.fps:g} fps)   block "
              f"{med['block_median'] * 1000:.0f} ms{switch}")
    parts = breakdown(components, config, args.blocks, args.switch_at)
    results["breakdown"] = parts
    print(f"  where the time goes ({args.blocks} blocks, one re-cached switch, {parts['wall']:.2f} s): "
          + ", ".join(f"{k} {parts[k] / parts['wall']:.0%}" for k in ("dit", "decode", "text_encode", "rest"))
          + f"; {parts['dit_calls']} DiT calls, {parts['dit'] / parts['dit_calls'] * 1000:.1f} ms each")
    results.update(threads=threads, blocks=args.blocks, load_average=os.getloadavg()[0])
    if args.profile:
        profile(components, config)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}" if args.json else "wrote nothing (figures above; --json FILE keeps them)")
    return results


def _cli(argv) -> int:
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(_cli))  # a bad input is one line (its exit code), not a traceback
