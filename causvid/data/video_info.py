"""Clip lists and frame streaming for the data-preparation scripts.

Clip lists (:func:`read_info`)
    ``distillation_data/slice_video.py --output_json`` writes the list of the
    clips it cut, and ``compute_vae_latent.py --info_path`` reads it back.  Two
    shapes are accepted:

    * a JSON list ``[{"video": "clip.mp4", "caption": "a cat ..."}, ...]`` (what
      ``slice_video.py`` writes; ``video`` is relative to the clip folder);
    * a flat JSON object, either ``{caption: video}`` (the original
      ``cap_to_video_*.json``) or ``{video: caption}``.  The direction is decided
      by which side ends with a video suffix (``.mp4 .mov .webm .mkv .avi``).

    Problems raise a one-line :class:`VideoInfoError` naming the file.

Frame streaming (:class:`FrameStream`)
    Decodes a video one frame at a time (``uint8 [H, W, 3]`` RGB) with the ffmpeg
    binary of ``imageio-ffmpeg``, so that long or large sources never have to be
    held in memory, and decoding can stop as soon as the frames needed are in.
    Frames are passed through as decoded (``-fps_mode passthrough``: no frame is
    duplicated or dropped to make the rate constant), so frame ``n`` is the
    ``n``-th decoded frame, the numbering of decord (which the Open-Sora-Plan
    ``frame_idx`` annotations use) and of :func:`causvid.video_io.video_info`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from typing import Iterator

import numpy as np

from causvid.errors import UsageError
from causvid.jsonfile import load_json
from causvid.video_io.errors import VideoReadError
from causvid.video_io.ffmpeg import ffmpeg_reason, popen_kwargs, probe

__all__ = ["VIDEO_SUFFIXES", "VideoInfoError", "is_video_name", "read_info", "FrameStream"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")


class VideoInfoError(UsageError):
    """A clip-list JSON can't be used (missing, not JSON, wrong shape)."""


def is_video_name(name: object) -> bool:
    """Whether ``name`` is a string ending with one of :data:`VIDEO_SUFFIXES` (any case)."""
    return isinstance(name, str) and name.lower().endswith(VIDEO_SUFFIXES)


# --------------------------------------------------------------------------- #
# clip lists
# --------------------------------------------------------------------------- #


def read_info(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a clip list as ``[(video relpath, caption), ...]`` in file order.

    See the module docstring for the two accepted shapes.  For a flat object,
    the side (keys or values) with more names ending in a video suffix is taken
    as the videos; a tie (e.g. no video names at all) is an error, as is an
    empty file / list / object.
    """
    name = os.fspath(path)
    data = load_json(name, "clip list", VideoInfoError)

    out: list[tuple[str, str]] = []
    if isinstance(data, list):
        for i, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise VideoInfoError(f"clip list {name!r}, entry {i}: expected an object, got {type(entry).__name__}")
            video, caption = entry.get("video"), entry.get("caption")
            if not isinstance(video, str) or not video:
                raise VideoInfoError(f"clip list {name!r}, entry {i}: missing or invalid 'video'")
            if not isinstance(caption, str):
                raise VideoInfoError(f"clip list {name!r}, entry {i} ({video!r}): missing or invalid 'caption'")
            out.append((video, caption))
    elif isinstance(data, dict):
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise VideoInfoError(f"clip list {name!r}: value of {bad[0]!r} is not a string")
        keys_videos = sum(is_video_name(k) for k in data)
        values_videos = sum(is_video_name(v) for v in data.values())
        if keys_videos == values_videos:
            raise VideoInfoError(
                f"clip list {name!r}: can't tell whether it maps caption -> video or video -> caption "
                f"({keys_videos} keys and {values_videos} values end with a video suffix {'/'.join(VIDEO_SUFFIXES)})"
            )
        if keys_videos > values_videos:
            out = [(k, v) for k, v in data.items()]
        else:
            out = [(v, k) for k, v in data.items()]
    else:
        raise VideoInfoError(
            f"clip list {name!r}: expected a JSON list of {{'video', 'caption'}} objects or a flat object, "
            f"got {type(data).__name__}"
        )
    if not out:
        raise VideoInfoError(f"clip list {name!r} is empty")
    return out


# --------------------------------------------------------------------------- #
# frame streaming
# --------------------------------------------------------------------------- #

# imageio-ffmpeg reports the rate with two decimals; snap the NTSC ones back
_NTSC = [Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001)]


def _snap_fps(fps: float) -> float | Fraction:
    for r in _NTSC:
        if abs(fps - float(r)) < 0.006:
            return r
    return fps


class FrameStream:
    """Iterate over a video's frames as ``uint8 [H, W, 3]`` arrays.

    ::

        with FrameStream("in.mp4") as s:      # probes the header (size, fps)
            for n, frame in enumerate(s):     # decodes lazily
                ...
                if done:
                    break                     # stops ffmpeg; the rest is not decoded

    Opening raises :class:`causvid.video_io.VideoReadError` (naming the file)
    when the file is missing, empty or has no readable video stream.  With
    ``strict=True`` (default) a decode error reported by ffmpeg, or a stream
    ending mid-frame, raises ``VideoReadError`` when the iteration reaches the
    end; :meth:`errors_so_far` lets a caller that stops early check the frames
    it did take.  ``fps`` is the stream's frame rate (0.0 if unknown; NTSC
    rates such as 29.97 are returned as exact fractions).  ``frames_read``
    counts the frames yielded so far.
    """

    def __init__(self, path: str | os.PathLike, *, strict: bool = True):
        self.path = os.fspath(path)
        self.strict = strict
        self.frames_read = 0
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._started = False
        meta = probe(self.path)  # VideoReadError naming the file, with ffmpeg's reason
        size = meta["size"]
        self.width, self.height = int(size[0]), int(size[1])
        try:
            fps = float(meta.get("fps") or 0.0)
        except (TypeError, ValueError):
            fps = 0.0
        self.fps: float | Fraction = _snap_fps(fps) if fps > 0 else 0.0

    # -- context manager --------------------------------------------------- #
    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- decoding ------------------------------------------------------------ #
    def _start(self) -> None:
        import imageio_ffmpeg

        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
            "-i", self.path, "-map", "0:v:0", "-fps_mode", "passthrough",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
                                      **popen_kwargs())

    def errors_so_far(self) -> str:
        """ffmpeg's error output so far ('' if none)."""
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            return self._log.read().decode("utf-8", errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._started:
            raise RuntimeError(f"FrameStream({self.path!r}) can only be iterated once")
        self._started = True
        self._start()
        frame_bytes = self.width * self.height * 3
        stdout = self._proc.stdout
        while True:
            # a fresh writable buffer per frame: callers may keep frames or hand them to torch
            buf = bytearray(frame_bytes)
            view, got = memoryview(buf), 0
            while got < frame_bytes:
                n = stdout.readinto(view[got:])
                if not n:
                    break
                got += n
            if got < frame_bytes:
                rest = got
                break
            self.frames_read += 1
            yield np.frombuffer(buf, dtype=np.uint8).reshape(self.height, self.width, 3)
        rc = self._proc.wait()
        err = self.errors_so_far()
        self.close()
        if rc != 0 or (self.strict and (err or rest)):
            reason = (ffmpeg_reason(err) if err
                      else "decoded data ends mid-frame" if rest else f"ffmpeg exit code {rc}")
            raise VideoReadError(f"cannot read video {self.path!r}: {reason}")
        if self.frames_read == 0:
            raise VideoReadError(f"cannot read video {self.path!r}: no frames could be decoded")

    def close(self) -> None:
        """Stop ffmpeg (if still running) and release its pipes.  Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.stdout.close()
            except (OSError, ValueError):
                pass
            proc.wait()
        log, self._log = self._log, None
        if log is not None:
            try:
                log.close()
            except OSError:
                pass
