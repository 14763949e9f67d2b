"""Cut the MixKit videos into the clips of an Open-Sora-Plan annotation file.

Usage (the CausVid README's command):
    python distillation_data/slice_video.py --input_folder ./datasets/videos/ \
        --output_folder ./datasets/sliced_videos/65f/ \
        --anno_json ./sample_dataset/video_mixkit_65f_54735.json \
        --output_json ./sample_dataset/cap_to_video_65f.json \
        [--prompt_file ./sample_dataset/mixkit_prompts_65f.txt] [--workers 8]

The annotation is a JSON list of
    {"path": "all_mixkit/.../name.mp4", "frame_idx": "start:end", "cap": str or [str, ...],
     "fps": ..., "resolution": {"height": ..., "width": ...}}      (fps/resolution optional)

For each entry, frames [start, end) (decoded frame numbers, as decord counts them) of
input_folder/<path> -- or input_folder/<basename of path>, since move_mixkit.py flattens
the folder -- are written to output_folder/<stem>_<start>-<end>.mp4 (H.264, the source's
frame rate; a `_N` suffix is added when two different source paths share a stem).  Every
source video is decoded once, front to back, for all of its clips, and decoding stops at
the end of its last clip.

Outputs:
  --output_json   [{"video": "<clip file name>", "caption": str}, ...] in annotation order,
                  for the clips that exist at the end (the first caption when `cap` is a
                  list; whitespace runs and newlines collapsed to one space).  This is what
                  compute_vae_latent.py --info_path reads (causvid.data.video_info.read_info).
  --prompt_file   the captions of those rows, one per line (default: the output json's
                  path with the suffix replaced by `_prompts.txt`).

Entries with a missing source video, a bad frame_idx, no caption, a range past the end of
the video, or a corrupt source are skipped with a logged reason and counted in the
summary; clips that already exist are kept as they are (the writer is atomic, so an
existing clip is complete), which makes an interrupted run resumable.

Exit code: 0 when done (skipped entries included), 1 when a clip could not be encoded or
no clip at all was produced (then neither output file is written), 2 for unusable arguments /
annotation file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from tqdm import tqdm

from causvid.errors import ArgumentParser
from causvid.data.video_info import FrameStream
from causvid.runtime import write_text_atomic
from causvid.video_io.errors import VideoReadError, VideoWriteError

log = logging.getLogger("slice_video")

# skip reasons (data problems: counted, exit code 0)
BAD_ENTRY = "bad entry"
BAD_FRAME_IDX = "bad frame_idx"
NO_CAPTION = "no caption"
MISSING = "missing source video"
CORRUPT = "corrupt source video"
NO_FPS = "unknown frame rate"
PAST_END = "frame range past the end of the video"
# failure (exit code 1)
ENCODE_FAILED = "encode failed"

WRITTEN, EXISTING = "written", "existing"


class AnnotationError(ValueError):
    """The annotation file itself can't be used."""


@dataclass
class Clip:
    name: str
    out_path: str
    start: int
    end: int  # exclusive


@dataclass
class SourceTask:
    source: str
    fallback_fps: float | None = None
    clips: dict = field(default_factory=dict)  # name -> Clip


# --------------------------------------------------------------------------- #
# annotation
# --------------------------------------------------------------------------- #


def load_annotation(path: str) -> list:
    if os.path.isdir(path):
        raise AnnotationError(f"annotation {path!r} is a directory, expected a JSON file")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise AnnotationError(f"annotation {path!r} not found") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"annotation {path!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise AnnotationError(f"annotation {path!r} can't be read: {e}") from None
    if not isinstance(data, list):
        raise AnnotationError(f"annotation {path!r}: expected a JSON list of entries, got {type(data).__name__}")
    if not data:
        raise AnnotationError(f"annotation {path!r} holds no entries (an empty list): no clip to cut")
    return data


def parse_frame_idx(value) -> tuple[int, int]:
    """``"start:end"`` -> ``(start, end)`` with ``0 <= start < end``; ValueError otherwise."""
    if not isinstance(value, str) or value.count(":") != 1:
        raise ValueError(f"frame_idx must be a 'start:end' string, got {value!r}")
    a, b = value.split(":")
    try:
        start, end = int(a), int(b)
    except ValueError:
        raise ValueError(f"frame_idx must be a 'start:end' string of integers, got {value!r}") from None
    if start < 0 or end <= start:
        raise ValueError(f"frame_idx {value!r} is not a range 0 <= start < end")
    return start, end


def clean_caption(cap) -> str:
    """The caption of an entry (first one of a list), whitespace collapsed; '' if none."""
    if isinstance(cap, list):
        cap = next((c for c in cap if isinstance(c, str) and c.strip()), None)
    if not isinstance(cap, str):
        return ""
    return " ".join(cap.split())


def resolve_source(input_folder: str, relpath: str) -> str | None:
    rel = relpath.lstrip("/\\")
    for cand in (os.path.join(input_folder, rel), os.path.join(input_folder, os.path.basename(rel))):
        if os.path.isfile(cand):
            return cand
    return None


# --------------------------------------------------------------------------- #
# cutting
# --------------------------------------------------------------------------- #


def cut_clips(task: SourceTask) -> dict[str, tuple[str, str]]:
    """Write the clips of one source video; returns ``{clip name: (status, detail)}``.

    status is ``written``, ``existing`` or one of the skip / failure reasons.
    """
    results: dict[str, tuple[str, str]] = {}
    pending = []
    for clip in task.clips.values():
        if os.path.exists(clip.out_path):
            results[clip.name] = (EXISTING, "")
        else:
            pending.append(clip)
    if not pending:
        return results

    def all_pending(status, detail):
        for c in pending:
            if c.name not in results:
                results[c.name] = (status, detail)
        return results

    try:
        stream = FrameStream(task.source)
    except VideoReadError as e:
        return all_pending(CORRUPT, str(e))
    fps = stream.fps or task.fallback_fps
    if not fps:
        stream.close()
        return all_pending(NO_FPS, f"{task.source!r}: the stream has no frame rate and the annotation gives none")
    # yuv420p needs an even size: drop the last row / column of odd-sized sources
    h, w = stream.height - stream.height % 2, stream.width - stream.width % 2
    if h < 2 or w < 2:
        stream.close()
        return all_pending(CORRUPT, f"{task.source!r}: frame size {stream.width}x{stream.height} is too small")

    starting = defaultdict(list)
    for c in pending:
        starting[c.start].append(c)
    last_end = max(c.end for c in pending)
    from causvid.video_io import VideoWriter  # torch: only once there is a clip to write

    open_writers: dict[str, tuple[Clip, VideoWriter]] = {}
    written: list[Clip] = []
    try:
        with stream:
            for n, frame in enumerate(stream):
                for c in starting.get(n, ()):
                    open_writers[c.name] = (c, VideoWriter(c.out_path, fps=fps))
                if open_writers:
                    block = frame[None, :h, :w]
                    for _, writer in open_writers.values():
                        writer.write(block)
                    for name in [k for k, (c, _) in open_writers.items() if c.end == n + 1]:
                        c, writer = open_writers.pop(name)
                        writer.close()
                        written.append(c)
                if n + 1 >= last_end:
                    err = stream.errors_so_far()
                    if err:
                        raise VideoReadError(f"cannot read video {task.source!r}: {err.splitlines()[0][:200]}")
                    break
            total = stream.frames_read
    except VideoReadError as e:
        # frames of this source may be damaged: drop what this run cut from it
        for _, writer in open_writers.values():
            writer.abort()
        for c in written:
            try:
                os.remove(c.out_path)
            except FileNotFoundError:
                pass
        return all_pending(CORRUPT, str(e))
    except (VideoWriteError, OSError, ValueError) as e:
        for _, writer in open_writers.values():
            writer.abort()
        for c in written:
            results[c.name] = (WRITTEN, "")
        return all_pending(ENCODE_FAILED, str(e).splitlines()[0] if str(e) else type(e).__name__)

    for c in written:
        results[c.name] = (WRITTEN, "")
    for _, writer in open_writers.values():
        writer.abort()
    return all_pending(PAST_END, f"{task.source!r} has {total} frames")


# --------------------------------------------------------------------------- #
# driver
# --------------------------------------------------------------------------- #


def default_prompt_file(output_json: str) -> str:
    root, _ = os.path.splitext(output_json)
    return root + "_prompts.txt"


def slice_videos(input_folder, output_folder, anno_json, output_json, prompt_file=None, workers=1) -> dict:
    """Run the whole job; returns the summary (see :func:`main`).  Raises AnnotationError."""
    entries = load_annotation(anno_json)
    prompt_file = prompt_file or default_prompt_file(output_json)
    os.makedirs(output_folder, exist_ok=True)

    skipped = Counter()
    rows = []  # (entry index, clip name, caption)
    tasks: dict[str, SourceTask] = {}
    name_owner: dict[tuple[str, int, int], str] = {}  # (annotation path, start, end) -> clip name
    names_taken: set[str] = set()

    def skip(i, what, reason, detail):
        skipped[reason] += 1
        log.warning("entry %d (%s): skipped, %s: %s", i, what, reason, detail)

    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not isinstance(e.get("path"), str) or not e["path"].strip():
            skip(i, "?", BAD_ENTRY, "expected an object with a 'path' string")
            continue
        relpath = e["path"].strip()
        try:
            start, end = parse_frame_idx(e.get("frame_idx"))
        except ValueError as err:
            skip(i, relpath, BAD_FRAME_IDX, err)
            continue
        caption = clean_caption(e.get("cap"))
        if not caption:
            skip(i, relpath, NO_CAPTION, "'cap' is missing or empty")
            continue
        source = resolve_source(input_folder, relpath)
        if source is None:
            skip(i, relpath, MISSING, f"neither {os.path.join(input_folder, relpath)!r} nor the flattened name exists")
            continue
        key = (relpath, start, end)
        name = name_owner.get(key)
        if name is None:
            stem = os.path.splitext(os.path.basename(relpath))[0]
            base = f"{stem}_{start}-{end}"
            name, k = base + ".mp4", 0
            while name in names_taken:
                k += 1
                name = f"{base}_{k}.mp4"
            name_owner[key] = name
            names_taken.add(name)
        task = tasks.setdefault(os.path.realpath(source), SourceTask(source=source))
        if task.fallback_fps is None and isinstance(e.get("fps"), (int, float)) and e["fps"] > 0:
            task.fallback_fps = float(e["fps"])
        task.clips.setdefault(name, Clip(name, os.path.join(output_folder, name), start, end))
        rows.append((i, name, caption, relpath))

    status: dict[str, tuple[str, str]] = {}
    n_clips = sum(len(t.clips) for t in tasks.values())
    log.info("%d entries: %d clips from %d source videos to cut (%d entries skipped so far)",
             len(entries), n_clips, len(tasks), sum(skipped.values()))
    bar = tqdm(total=len(tasks), unit="video", desc="slice", disable=None)
    try:
        if workers <= 1:
            for task in tasks.values():
                status.update(cut_clips(task))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for fut in as_completed([pool.submit(cut_clips, t) for t in tasks.values()]):
                    status.update(fut.result())
                    bar.update()
    finally:
        bar.close()

    clip_counts = Counter(s for s, _ in status.values())
    reported = set()
    out_rows, seen = [], set()
    for i, name, caption, relpath in rows:
        st, detail = status[name]
        if st in (WRITTEN, EXISTING):
            if (name, caption) not in seen:
                seen.add((name, caption))
                out_rows.append({"video": name, "caption": caption})
            continue
        skipped[st] += 1
        if name not in reported:  # one line per clip, not per duplicate entry
            reported.add(name)
            log.warning("entry %d (%s): skipped, %s: %s", i, relpath, st, detail)

    if out_rows:  # no clip: no empty clip list or prompt file either
        os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(prompt_file)), exist_ok=True)
        write_text_atomic(output_json, json.dumps(out_rows, ensure_ascii=False, indent=1) + "\n")
        write_text_atomic(prompt_file, "".join(r["caption"] + "\n" for r in out_rows))
    summary = {
        "entries": len(entries),
        "clips_written": clip_counts[WRITTEN],
        "clips_existing": clip_counts[EXISTING],
        "rows": len(out_rows),
        "skipped": dict(skipped),
        "failed": skipped.get(ENCODE_FAILED, 0),
        "output_json": output_json,
        "prompt_file": prompt_file,
    }
    skipped_txt = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"
    if out_rows:
        log.info(
            "done: %d entries -> %d clips written, %d already there; %d rows in %s (prompts: %s); skipped entries: %s",
            len(entries), summary["clips_written"], summary["clips_existing"], len(out_rows), output_json,
            prompt_file, skipped_txt,
        )
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_folder", required=True, help="folder of the (flattened) MixKit videos")
    p.add_argument("--output_folder", required=True, help="where the clips are written")
    p.add_argument("--anno_json", required=True, help="Open-Sora-Plan annotation (JSON list)")
    p.add_argument("--output_json", required=True, help="clip list written here: [{'video', 'caption'}]")
    p.add_argument("--prompt_file", default=None, help="captions of the clips, one per line (default: <output_json>_prompts.txt)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="source videos cut in parallel")
    return p


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    if args.workers < 1:
        print(f"slice_video.py: error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.input_folder):
        print(f"slice_video.py: error: input folder {args.input_folder!r} is not a directory", file=sys.stderr)
        return 2
    try:
        summary = slice_videos(
            args.input_folder, args.output_folder, args.anno_json, args.output_json, args.prompt_file, args.workers
        )
    except AnnotationError as e:
        print(f"slice_video.py: error: {e}", file=sys.stderr)
        return 2
    if summary["rows"] == 0:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(summary["skipped"].items()))
        print(f"slice_video.py: error: no clip was produced from the {summary['entries']} entries of "
              f"{args.anno_json} (skipped: {skipped}); nothing written, see the warnings above", file=sys.stderr)
        return 1
    if summary["failed"]:
        print(f"slice_video.py: error: {summary['failed']} clips could not be encoded (see above); the "
              f"{summary['rows']} clips made are listed in {args.output_json}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
