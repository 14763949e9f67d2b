"""Flatten a folder of videos: move every video found in its sub-folders into it.

Usage (the CausVid README's command):
    python distillation_data/move_mixkit.py ./datasets/videos [--dry_run]

The extracted MixKit tars leave the videos nested (all_mixkit/<category>/.../name.mp4);
slice_video.py looks a video up by its annotation path and falls back to its base name
in the flat folder.  Videos are the files ending in .mp4 .mov .webm .mkv .avi (any case);
other files stay where they are.

* Nothing is overwritten: a name already present in DIR (or taken by an earlier move of
  this run) becomes name_1.mp4, name_2.mp4, ... (the first free number).
* Files are visited in sorted path order, so the renaming is reproducible.
* Afterwards the sub-folders left empty are removed (bottom-up; DIR itself is kept).
* --dry_run prints the planned moves ("old -> new", relative to DIR) and changes nothing.
A summary line gives the counts.  Exit code 0, 1 if a move failed, 2 if DIR is not a folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from tqdm import tqdm

from causvid.errors import ArgumentParser
from causvid.data.video_info import VIDEO_SUFFIXES

log = logging.getLogger("move_mixkit")


def _free_name(name: str, taken: set[str]) -> str:
    """``name`` or ``stem_N.ext`` (smallest N >= 1) not in ``taken`` (compared case-insensitively)."""
    if name.casefold() not in taken:
        return name
    stem, ext = os.path.splitext(name)
    n = 1
    while f"{stem}_{n}{ext}".casefold() in taken:
        n += 1
    return f"{stem}_{n}{ext}"


def plan_moves(folder: str) -> list[tuple[str, str]]:
    """``[(source path, target name in folder), ...]`` for the videos in sub-folders of ``folder``."""
    # names compared case-insensitively so that the plan is also safe on macOS / Windows
    taken = {n.casefold() for n in os.listdir(folder)}
    nested = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        if os.path.abspath(root) == os.path.abspath(folder):
            continue
        for f in sorted(files):
            if f.lower().endswith(VIDEO_SUFFIXES):
                nested.append(os.path.join(root, f))
    moves = []
    for src in nested:
        target = _free_name(os.path.basename(src), taken)
        taken.add(target.casefold())
        moves.append((src, target))
    return moves


def remove_empty_dirs(folder: str) -> int:
    """Remove the empty sub-folders of ``folder`` (bottom-up); returns how many."""
    removed = 0
    top = os.path.abspath(folder)
    for root, dirs, files in os.walk(folder, topdown=False):
        if os.path.abspath(root) == top:
            continue
        if os.path.islink(root):
            continue
        try:
            if not os.listdir(root):
                os.rmdir(root)
                removed += 1
        except OSError as e:
            log.warning("could not remove empty folder %r: %s", root, e.strerror or e)
    return removed


def flatten(folder: str, dry_run: bool = False) -> dict:
    moves = plan_moves(folder)
    renamed = sum(1 for src, dst in moves if os.path.basename(src) != dst)
    moved = failed = 0
    if dry_run:
        for src, dst in moves:
            print(f"{os.path.relpath(src, folder)} -> {dst}")
    else:
        for src, dst in tqdm(moves, unit="file", desc="move", disable=None):
            target = os.path.join(folder, dst)
            try:
                if os.path.lexists(target):  # appeared since the plan was made: never overwrite
                    raise FileExistsError(f"{target!r} exists")
                try:
                    os.rename(src, target)
                except OSError:
                    if os.path.lexists(target):
                        raise
                    shutil.move(src, target)  # e.g. a sub-folder on another file system
                moved += 1
            except OSError as e:
                failed += 1
                log.error("could not move %r to %r: %s", src, target, e.strerror or e)
    removed = 0 if dry_run else remove_empty_dirs(folder)
    summary = {"planned": len(moves), "renamed": renamed, "moved": moved, "failed": failed, "removed_dirs": removed}
    if dry_run:
        log.info("dry run: would move %d videos into %s (%d renamed to avoid a clash); nothing changed",
                 len(moves), folder, renamed)
    else:
        log.info("moved %d videos into %s (%d renamed to avoid a clash), %d failed, removed %d empty folders",
                 moved, folder, renamed, failed, removed)
    return summary


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="folder to flatten (e.g. ./datasets/videos)")
    p.add_argument("--dry_run", action="store_true", help="print the moves, change nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if not os.path.isdir(args.dir):
        print(f"move_mixkit.py: error: {args.dir!r} is not a directory", file=sys.stderr)
        return 2
    summary = flatten(args.dir, args.dry_run)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
