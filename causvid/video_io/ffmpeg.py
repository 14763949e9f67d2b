"""The ffmpeg binary of ``imageio-ffmpeg``: how to start it, what its errors say, a video's header."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from causvid.video_io.errors import VideoReadError


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def popen_kwargs() -> dict:
    # own process group: a Ctrl-C in the terminal reaches Python (which then
    # aborts the writer) rather than killing ffmpeg mid-file behind our back
    if sys.platform.startswith("win"):
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


_LOG_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-fA-F]+\]\s*")
_BANNER = ("ffmpeg version", "Input #", "Output #", "===", "Could not load meta information")


def ffmpeg_reason(text: str, limit: int = 240) -> str:
    """Pick the informative error lines out of ffmpeg's stderr, as one line."""
    picked = []
    for raw in text.splitlines():
        line = raw.strip()
        # the banner / stream listing is indented; errors are not
        if not line or raw[:1].isspace() or line.startswith(_BANNER) or "misdetection possible" in line:
            continue
        while _LOG_PREFIX.match(line):
            line = _LOG_PREFIX.sub("", line)
        if line and line not in picked:
            picked.append(line)
    reason = "; ".join(picked[:2]) if picked else "ffmpeg gave no error message"
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def check_readable(path: str) -> None:
    if os.path.isdir(path):
        raise VideoReadError(f"cannot read video {path!r}: is a directory")
    if not os.path.exists(path):
        raise VideoReadError(f"cannot read video {path!r}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"cannot read video {path!r}: file is empty")


def probe(path: str) -> dict:
    """ffmpeg's header for the first video stream (size as decoded, fps)."""
    import imageio_ffmpeg

    check_readable(path)
    gen = imageio_ffmpeg.read_frames(path)
    try:
        meta = next(gen)
    except Exception as e:  # IOError from ffmpeg, parse errors, no video stream...
        reason = ffmpeg_reason(str(e))
        if "does not contain any stream" in reason or "matches no streams" in reason:
            reason = "no video stream found"
        raise VideoReadError(f"cannot read video {path!r}: {reason}") from None
    finally:
        gen.close()
    size = meta.get("size") if isinstance(meta, dict) else None
    if not size or len(size) != 2 or min(size) <= 0:
        raise VideoReadError(f"cannot read video {path!r}: no video stream found")
    return meta
