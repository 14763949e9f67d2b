"""Reading a video's frames, or counting them, with one-line errors naming the file."""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np

from causvid.video_io.errors import VideoReadError
from causvid.video_io.ffmpeg import ffmpeg_exe, ffmpeg_reason, popen_kwargs, probe


def read_video(path: str | os.PathLike, *, strict: bool = True) -> np.ndarray:
    """Decode all frames of the first video stream as ``uint8 [T, H, W, 3]`` RGB.

    Raises :class:`VideoReadError` naming the file when it is missing, not a
    video, truncated or has no frames.  With ``strict=True`` any decoder error
    ffmpeg reports (e.g. a damaged stream) is an error too; with
    ``strict=False`` the frames that could be decoded are returned.
    """
    path = os.fspath(path)
    meta = probe(path)
    width, height = meta["size"]
    out = _decode(path, ["-f", "rawvideo", "-pix_fmt", "rgb24"], strict)
    frame_bytes = width * height * 3
    n, rest = divmod(len(out), frame_bytes)
    if n == 0:
        raise VideoReadError(f"cannot read video {path!r}: no frames could be decoded")
    if rest and strict:
        raise VideoReadError(f"cannot read video {path!r}: decoded data ends mid-frame")
    buf = np.frombuffer(out, dtype=np.uint8, count=n * frame_bytes)
    return buf.reshape(n, height, width, 3).copy()


def video_info(path: str | os.PathLike, *, strict: bool = True) -> tuple[int, int, int, float]:
    """``(num_frames, height, width, fps)`` of the first video stream.

    The frame count is exact: ffmpeg decodes the stream (without converting or
    keeping the frames), so this checks the file as :func:`read_video` would
    (same ``strict`` meaning).  ``fps`` is the stream's frame rate (0.0 if
    unknown).  Raises :class:`VideoReadError` naming the file.
    """
    path = os.fspath(path)
    meta = probe(path)
    width, height = meta["size"]
    out = _decode(path, ["-f", "null", "-progress", "pipe:1"], strict)
    counts = re.findall(rb"^frame=\s*(\d+)\s*$", out, flags=re.MULTILINE)
    nframes = int(counts[-1]) if counts else 0
    if nframes == 0:
        raise VideoReadError(f"cannot read video {path!r}: no frames could be decoded")
    return nframes, int(height), int(width), float(meta.get("fps") or 0.0)


def _decode(path: str, output: list, strict: bool) -> bytes:
    """Run ffmpeg over the first video stream of `path` with these output options; its stdout, or a
    VideoReadError naming the file (any error ffmpeg reports fails a `strict` read)."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error", "-i", path, "-map", "0:v:0",
           *output, "-"]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, **popen_kwargs())
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0 or (strict and err.strip()):
        raise VideoReadError(f"cannot read video {path!r}: {ffmpeg_reason(err)}")
    return proc.stdout
