"""Convert clips to the training format: width x height, --fps, --num_frames frames.

Usage (the CausVid README's command):
    python distillation_data/process_mixkit.py --input_dir ./datasets/sliced_videos/65f/ \
        --output_dir ./datasets/converted_videos/65f/ --width 832 --height 480 --fps 16 \
        [--num_frames 81] [--workers 8]

For every video below --input_dir (.mp4 .mov .webm .mkv .avi, sub-folders included):
  * frames are resized keeping the aspect ratio so that they cover height x width
    (bicubic, antialiased) and the centre is cut out -- never stretched;
  * the frame rate is changed to --fps by taking, for output frame k, the source frame
    nearest to the time k / fps (source frame round(k * src_fps / fps)); frames are
    repeated when the source rate is lower;
  * the first --num_frames output frames are kept (81 = 5.06 s at 16 fps).
The result goes to output_dir/<same relative path>.mp4 (H.264, written atomically: a
video is either complete or absent), so the clip names of slice_video.py's --output_json
stay valid for compute_vae_latent.py.

Videos that give fewer than --num_frames frames at --fps, or can't be decoded, are skipped
with a logged reason and counted by reason in the summary.  Outputs that already exist
are skipped, so an interrupted run can simply be restarted.  Videos are converted in
parallel by a pool of --workers processes.

Exit code: 0 when done (skipped videos included), 1 when a video could not be encoded, no
input video was found or none was converted, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from fractions import Fraction

from tqdm import tqdm

from causvid.data.video_info import VIDEO_SUFFIXES, FrameStream
from causvid.errors import ArgumentParser, UsageError
from causvid.runtime import check_output_folder
from causvid.video_io.errors import VideoReadError, VideoWriteError

log = logging.getLogger("process_mixkit")

WRITTEN, EXISTING = "written", "existing"
TOO_SHORT = "too short"
CORRUPT = "corrupt"
NO_FPS = "unknown frame rate"
NAME_CLASH = "output name clash"
ENCODE_FAILED = "encode failed"  # a failure, not a skip


def source_indices(src_fps: float, fps: float, num_frames: int) -> list[int]:
    """Source frame shown at time k / fps for k < num_frames: round(k * src_fps / fps), halves up."""
    ratio = Fraction(src_fps).limit_denominator(1_000_000) / Fraction(fps).limit_denominator(1_000_000)
    return [math.floor(k * ratio + Fraction(1, 2)) for k in range(num_frames)]


def convert_frame(frame, height: int, width: int) -> torch.Tensor:
    """uint8 [h, w, 3] -> uint8 [height, width, 3], aspect-preserving resize + centre crop."""
    import torch

    from causvid.video_io import resize_center_crop

    img = torch.from_numpy(frame).permute(2, 0, 1).float()
    out = resize_center_crop(img, height, width)
    return out.clamp_(0, 255).round_().to(torch.uint8).permute(1, 2, 0)


def process_video(src: str, dst: str, width: int, height: int, fps: float, num_frames: int) -> tuple[str, str]:
    """Convert one video; returns ``(status, detail)`` (status: written / existing / a skip reason)."""
    from causvid.video_io import VideoWriter

    if os.path.exists(dst):
        return EXISTING, ""
    try:
        stream = FrameStream(src)
    except VideoReadError as e:
        return CORRUPT, str(e)
    with stream:
        if not stream.fps:
            return NO_FPS, f"{src!r}: the stream has no frame rate"
        picks = source_indices(stream.fps, fps, num_frames)
        uses = Counter(picks)
        last = picks[-1]
        writer = VideoWriter(dst, fps=fps)
        try:
            for n, frame in enumerate(stream):
                if n in uses:
                    out = convert_frame(frame, height, width)[None]
                    for _ in range(uses[n]):
                        writer.write(out)
                if n >= last:
                    err = stream.errors_so_far()
                    if err:
                        raise VideoReadError(f"cannot read video {src!r}: {err.splitlines()[0][:200]}")
                    break
        except VideoReadError as e:
            writer.abort()
            return CORRUPT, str(e)
        except (VideoWriteError, OSError, ValueError) as e:
            writer.abort()
            return ENCODE_FAILED, (str(e).splitlines() or [type(e).__name__])[0]
        except BaseException:
            writer.abort()
            raise
        if writer.frames_written < num_frames:
            total = stream.frames_read
            writer.abort()
            got = sum(1 for i in picks if i < total)
            return TOO_SHORT, (
                f"{src!r} has {total} frames at {float(stream.fps):g} fps, {got} frames at {fps:g} fps, "
                f"need {num_frames}"
            )
        try:
            writer.close()
        except (VideoWriteError, OSError, ValueError) as e:
            return ENCODE_FAILED, (str(e).splitlines() or [type(e).__name__])[0]
    return WRITTEN, ""


def _init_worker() -> None:
    # one thread per process: the pool is the parallelism (and no OpenMP team is
    # used in a forked child)
    import torch

    torch.set_num_threads(1)


def _run_task(task):
    rel, src, dst, width, height, fps, num_frames = task
    try:
        status, detail = process_video(src, dst, width, height, fps, num_frames)
    except Exception as e:  # keep the pool alive; reported as a failure
        status, detail = ENCODE_FAILED, f"{type(e).__name__}: {e}"
    return rel, status, detail


def find_videos(input_dir: str, exclude: str | None = None) -> list[str]:
    """Relative paths of the videos below ``input_dir`` (sorted), skipping ``exclude``'s subtree."""
    out = []
    excl = os.path.realpath(exclude) if exclude else None
    for root, dirs, files in os.walk(input_dir):
        if excl is not None:
            dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) != excl]
        for f in files:
            if f.lower().endswith(VIDEO_SUFFIXES) and not f.startswith("."):
                out.append(os.path.relpath(os.path.join(root, f), input_dir))
    return sorted(out)


def process_all(input_dir, output_dir, width, height, fps, num_frames=81, workers=1) -> dict:
    rels = find_videos(input_dir, exclude=output_dir)
    tasks, counts = [], Counter()
    owners: dict[str, str] = {}
    for rel in rels:
        out_rel = os.path.splitext(rel)[0] + ".mp4"
        if out_rel in owners:
            counts[NAME_CLASH] += 1
            log.warning("%s: skipped, %s: %s already goes to %s", rel, NAME_CLASH, owners[out_rel], out_rel)
            continue
        owners[out_rel] = rel
        tasks.append((rel, os.path.join(input_dir, rel), os.path.join(output_dir, out_rel), width, height, fps, num_frames))
    log.info("%d videos in %s -> %s (%dx%d, %g fps, %d frames)", len(rels), input_dir, output_dir, width, height,
             fps, num_frames)

    def record(rel, status, detail):
        counts[status] += 1
        if status == ENCODE_FAILED:
            log.error("%s: failed: %s", rel, detail)
        elif status not in (WRITTEN, EXISTING):
            log.warning("%s: skipped, %s: %s", rel, status, detail)

    bar = tqdm(total=len(tasks), unit="video", desc="process", disable=None)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                record(*_run_task(t))
                bar.update()
        else:
            with multiprocessing.Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
                for res in pool.imap_unordered(_run_task, tasks):
                    record(*res)
                    bar.update()
    finally:
        bar.close()

    skipped = {k: v for k, v in counts.items() if k not in (WRITTEN, EXISTING, ENCODE_FAILED)}
    summary = {
        "videos": len(rels),
        "written": counts[WRITTEN],
        "existing": counts[EXISTING],
        "skipped": skipped,
        "failed": counts[ENCODE_FAILED],
    }
    skipped_txt = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
    log.info("done: %d videos -> %d written, %d already there, %d failed; skipped: %s",
             len(rels), summary["written"], summary["existing"], summary["failed"], skipped_txt)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", required=True, help="folder of clips (e.g. slice_video.py's output)")
    p.add_argument("--output_dir", required=True, help="converted videos go here, same relative names")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=16)
    p.add_argument("--num_frames", type=int, default=81)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="worker processes")
    return p


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    problems = []
    for name in ("width", "height"):
        v = getattr(args, name)
        if v < 2 or v % 2:
            problems.append(f"--{name} must be a positive even number (H.264 / yuv420p), got {v}")
    if not (math.isfinite(args.fps) and args.fps > 0):
        problems.append(f"--fps must be > 0, got {args.fps}")
    if args.num_frames < 1:
        problems.append(f"--num_frames must be >= 1, got {args.num_frames}")
    if args.workers < 1:
        problems.append(f"--workers must be >= 1, got {args.workers}")
    if not os.path.isdir(args.input_dir):
        problems.append(f"input folder {args.input_dir!r} is not a directory")
    if problems:
        print(f"process_mixkit.py: error: {problems[0]}", file=sys.stderr)
        return 2
    try:
        check_output_folder(args.output_dir, "--output_dir")  # the writer creates it with the first video
    except UsageError as e:
        print(f"process_mixkit.py: error: {e}", file=sys.stderr)
        return 2
    created = not os.path.exists(args.output_dir)
    summary = process_all(args.input_dir, args.output_dir, args.width, args.height, args.fps, args.num_frames, args.workers)
    if created and os.path.isdir(args.output_dir) and not any(files for _, _, files in os.walk(args.output_dir)):
        shutil.rmtree(args.output_dir)  # made for videos that were then skipped: leave no empty folders
    if summary["videos"] == 0:
        print(f"process_mixkit.py: error: no videos ({' '.join(VIDEO_SUFFIXES)}) found in {args.input_dir}",
              file=sys.stderr)
        return 1
    if summary["written"] + summary["existing"] == 0:
        skipped = ", ".join(f"{v} {k}" for k, v in sorted(summary["skipped"].items()))
        failed = f", {summary['failed']} failed" if summary["failed"] else ""
        hint = (f"; the clips are shorter than --num_frames {args.num_frames} at --fps {args.fps:g}: lower "
                "--num_frames or give longer clips" if TOO_SHORT in summary["skipped"] else "")
        print(f"process_mixkit.py: error: no video converted from the {summary['videos']} in {args.input_dir} "
              f"({skipped}{failed}){hint}", file=sys.stderr)
        return 1
    if summary["failed"]:
        print(f"process_mixkit.py: error: {summary['failed']} videos could not be encoded (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
