"""Per-block step schedules in the toy world (a benchmark, run by hand): the same student sampled with several
`denoising_step_list` schedules, side by side in one process.

A schedule gives the first blocks their own step lists (`denoising_step_list_per_block`) and every later block
the main list: more steps while the context is thin, fewer once it is established. For each schedule: the
analyser's accuracy (colour / shape / direction / all three) on held-out captions at the training length and
all three per window of 21 frames over rollouts 8x the training length (rolling KV window of the training
length, one block of sink), the toy pipeline's own measurements (`causvid.toy.evaluate.evaluate_model`); then
frames per second and time to the first frame, text encoding and decoding included, timed with the schedules
taking turns video by video (--timing_videos rounds), so a change in the machine's load falls on all of them:
medians, and each schedule's frames/s over the uniform 4-step one's.

    python -m scripts.benchmark_step_schedules                     # the shipped student, 4 schedules
    python -m scripts.benchmark_step_schedules --eval_videos 8 --drift_videos 4 --json schedules.json

Schedules are written `4` (every block the 4 listed steps), `4>2` (block 0 four steps, then 2), ... with the
step lists of `LISTS` (Self-Forcing's [1000, 750, 500, 250] and its 2- and 1-step subsets, warped as the
student's config says).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from causvid.errors import ArgumentParser, UsageError, positive_int, run_cli
from causvid.runtime import check_wan_folder
from causvid.threads import add_threads_flag, dit_width, use_threads

REPO = Path(__file__).resolve().parents[1]
LISTS = {4: [1000, 750, 500, 250], 2: [1000, 500], 1: [1000]}
DEFAULT_SCHEDULES = "4,2,4>2,4>1"


def parse_schedule(text: str) -> list:
    """'4>2' -> [4, 2]: the steps of block 0, 1, ..., the last for every later block."""
    try:
        counts = [int(part) for part in text.split(">")]
    except ValueError:
        counts = []
    if not counts or any(c not in LISTS for c in counts):
        raise UsageError(f"--schedules: {text!r} is not a schedule; write step counts from {sorted(LISTS)} joined "
                         "by '>', e.g. 4>2 (block 0 four steps, the rest two)")
    return counts


def overrides(counts: list) -> list:
    """Config overrides that give the blocks these step counts."""
    main = f"denoising_step_list=[{','.join(map(str, LISTS[counts[-1]]))}]"
    if len(counts) == 1:
        return [main, "denoising_step_list_first_chunk=null"]
    lead = ",".join(f"[{','.join(map(str, LISTS[c]))}]" for c in counts[:-1])
    return [main, "denoising_step_list_first_chunk=null", f"denoising_step_list_per_block=[{lead}]"]


def timed_in_turns(args, schedules: dict, budget) -> dict:
    """name -> (median frames/s, median seconds to the first frame): one video per schedule in turn."""
    import statistics

    from causvid.pipelines.text_to_video import VideoGenerator, load_components
    from causvid.toy import world
    from causvid.toy.evaluate import generate, stage_config

    components = load_components(args.checkpoint)
    generators = {name: VideoGenerator(components, stage_config(args.config, budget, overrides(counts)))
                  for name, counts in schedules.items()}
    captions = [world.caption(s) for s in world.sample_specs(args.timing_videos, seed=30_000 + args.seed)]
    fps, first = {name: [] for name in schedules}, {name: [] for name in schedules}
    for i, caption in enumerate(captions):
        for name, generator in generators.items():
            generate(generator, caption, i, args.seed)
            fps[name].append(generator.timing.fps(with_vae=True))
            first[name].append(generator.timing.first_block_pixels)
    return {name: (statistics.median(fps[name]), statistics.median(first[name])) for name in schedules}


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m scripts.benchmark_step_schedules", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "toy"), help="a toy student folder")
    p.add_argument("--config", default="cf_dmd_chunkwise", help="its toy config (a name under configs/toy/)")
    p.add_argument("--schedules", default=DEFAULT_SCHEDULES, help=f"comma-separated (default {DEFAULT_SCHEDULES})")
    p.add_argument("--eval_videos", type=positive_int, default=32, help="videos at the training length per schedule")
    p.add_argument("--drift_videos", type=positive_int, default=16, help="long rollouts per schedule")
    p.add_argument("--drift_factor", type=positive_int, default=8, help="long rollouts: this many training lengths")
    p.add_argument("--timing_videos", type=positive_int, default=32, help="timed videos per schedule, in turns")
    p.add_argument("--seed", type=int, default=0)
    add_threads_flag(p)
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    schedules = {text.strip(): parse_schedule(text.strip()) for text in args.schedules.split(",") if text.strip()}
    check_wan_folder(args.checkpoint, "--checkpoint", "give a toy student folder such as checkpoints/toy")
    if not (REPO / "configs" / "toy" / f"{args.config}.yaml").is_file():
        raise UsageError(f"--config {args.config}: no configs/toy/{args.config}.yaml")
    threads = use_threads(args.threads, "cpu", dit_width(args.checkpoint))
    # torch and the models load once the flags hold
    from causvid.toy.evaluate import evaluate_model
    from causvid.toy.pipeline import Budget

    budget = Budget(eval_videos=args.eval_videos, drift_videos=args.drift_videos, drift_factor=args.drift_factor,
                    long_video_prompts=0)
    print(f"{args.checkpoint} ({args.config}), {threads} thread{'s' * (threads != 1)}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.eval_videos} videos, {args.drift_videos} "
          f"rollouts of {args.drift_factor}x per schedule", flush=True)
    results = {}
    for name, counts in schedules.items():
        result, _, _ = evaluate_model(args.config, args.checkpoint, None, budget, args.seed,
                                      overrides=overrides(counts))
        results[name] = {k: result[k] for k in ("colour_acc", "shape_acc", "direction_acc", "all_acc")}
        results[name]["drift"] = result["drift"]["one-block sink"]
        print(f"  {name:6s} colour {result['colour_acc']:.2f} shape {result['shape_acc']:.2f} direction "
              f"{result['direction_acc']:.2f} all {result['all_acc']:.2f}", flush=True)
    timing = timed_in_turns(args, schedules, budget)
    for name, (fps, first) in timing.items():
        results[name].update(fps=fps, first_frame_s=first)
        print(f"  {name:6s} {fps:6.1f} frames/s, first frame {first * 1000:.0f} ms", flush=True)
    windows = len(next(iter(results.values()))["drift"]["all_acc"])
    print(f"\nper window of the training length (1 = the training window), over {args.drift_videos} rollouts:")
    print("| schedule | attribute | " + " | ".join(str(w + 1) for w in range(windows)) + " |")
    print("|---|---|" + "---|" * windows)
    for name, r in results.items():
        for key in ("colour_acc", "shape_acc", "direction_acc"):
            print(f"| {name} | {key[:-4]} | " + " | ".join(f"{v:.2f}" for v in r["drift"][key]) + " |")
    base = results.get("4")
    if base:
        for name, r in results.items():
            print(f"frames/s {name} / 4: {r['fps'] / base['fps']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results=results, threads=threads, seed=args.seed,
                                                   load_average=os.getloadavg()[0]), indent=2) + "\n")
    print(f"wrote {args.json}" if args.json else "wrote nothing (figures above; --json FILE keeps them)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
