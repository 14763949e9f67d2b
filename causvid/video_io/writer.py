"""Writing H.264 MP4 files block by block, atomically (see the package docstring)."""
from __future__ import annotations

import math
import os
import subprocess
import tempfile
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from causvid.video_io.errors import VideoWriteError
from causvid.video_io.ffmpeg import ffmpeg_exe, ffmpeg_reason, popen_kwargs
from causvid.video_io.frames import to_uint8_frames


class VideoWriter:
    """Stream frames into an H.264 MP4, block by block; atomic on success.

    ::

        with VideoWriter("out/cat.mp4", fps=16) as w:
            for block in rollout:          # [t, 3, H, W] in [-1, 1], or uint8
                w.write(block)
        # out/cat.mp4 now exists; if the loop raised, neither it nor
        # out/cat.mp4.partial does

    ``write`` accepts what :func:`to_uint8_frames` accepts; every block must
    have the frame size of the first one (even width and height).  ffmpeg is
    started on the first ``write``; parent folders are created then.
    ``close()`` with no frames written raises ``ValueError`` and creates
    nothing.  ``crf`` (0-51, lower is better) and ``preset`` are passed to
    libx264.  ``frames_written`` counts the frames handed to ffmpeg so far.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 16, *, crf: int = 18, preset: str = "medium"):
        self.path = os.fspath(path)
        if not self.path.lower().endswith(".mp4"):
            raise ValueError(f"VideoWriter writes MP4 files; path must end in .mp4, got {self.path!r}")
        try:
            fps_ok = math.isfinite(float(fps)) and float(fps) > 0
        except (TypeError, ValueError):
            fps_ok = False
        if not fps_ok:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf must be in [0, 51], got {crf!r}")
        self.fps = fps
        self.crf = int(crf)
        self.preset = preset
        self.partial_path = self.path + ".partial"
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (height, width) once started
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._closed = False

    # -- context manager --------------------------------------------------- #
    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    @property
    def closed(self) -> bool:
        return self._closed

    # -- internals ------------------------------------------------------------ #
    def _start(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(
                f"VideoWriter({self.path!r}): frame size {width}x{height} (width x height) has an odd side; "
                "H.264 with yuv420p needs an even width and height - crop or pad the frames"
            )
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        # create the partial file now (ffmpeg only opens its output once the encoder is
        # set up): an unwritable folder fails here with a plain OSError, and the file
        # is there from the first write on
        open(self.partial_path, "wb").close()
        fps = Fraction(self.fps).limit_denominator(100000) if not isinstance(self.fps, Fraction) else self.fps
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-vcodec", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
            "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
            "-crf", str(self.crf), "-preset", str(self.preset),
            "-f", "mp4", self.partial_path,
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, **popen_kwargs()
        )
        self.size = (height, width)

    def _stderr(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0)
            return self._log.read().decode("utf-8", errors="replace")
        except (OSError, ValueError):
            return ""

    def _fail(self, what: str) -> VideoWriteError:
        reason = ffmpeg_reason(self._stderr())
        self.abort()
        return VideoWriteError(f"VideoWriter({self.path!r}): ffmpeg failed {what}: {reason}")

    def _cleanup(self) -> None:
        if self._log is not None:
            try:
                self._log.close()
            except OSError:
                pass
            self._log = None
        try:
            os.remove(self.partial_path)
        except FileNotFoundError:
            pass

    # -- API ------------------------------------------------------------------- #
    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        """Append frames (``[t, 3, H, W]`` / ``[t, H, W, 3]``, float in [-1, 1] or uint8)."""
        if self._closed:
            raise ValueError(f"VideoWriter({self.path!r}) is closed")
        arr = to_uint8_frames(frames)
        t, h, w, _ = arr.shape
        if t == 0:
            return
        if self._proc is None:
            self._start(h, w)
        elif (h, w) != self.size:
            raise ValueError(
                f"VideoWriter({self.path!r}): frame size {w}x{h} differs from the first block's "
                f"{self.size[1]}x{self.size[0]} (width x height)"
            )
        try:
            self._proc.stdin.write(memoryview(arr).cast("B"))
        except (BrokenPipeError, OSError, ValueError):
            try:  # let ffmpeg finish writing its error message
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise self._fail(f"after {self.frames_written} frames") from None
        self.frames_written += t

    def close(self) -> None:
        """Finish the file and rename it onto ``path``.  Idempotent."""
        if self._closed:
            return
        if self._proc is None:
            self._closed = True
            self._cleanup()
            raise ValueError(f"VideoWriter({self.path!r}): no frames were written, the video was not created")
        try:
            try:
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            rc = self._proc.wait()
            if rc != 0:
                raise self._fail(f"with exit code {rc} after {self.frames_written} frames")
            if not os.path.isfile(self.partial_path) or os.path.getsize(self.partial_path) == 0:
                raise self._fail("to produce output")
            with open(self.partial_path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.partial_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._proc = None
        self._cleanup()

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file; ``path`` is not created.  Idempotent."""
        proc, self._proc = self._proc, None
        self._closed = True
        if proc is not None:
            try:
                proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._cleanup()

    def __del__(self):
        try:
            if not self._closed and self._proc is not None:
                self.abort()
        except Exception:
            pass


def write_video(path: str | os.PathLike, video: torch.Tensor | np.ndarray, fps: float = 16, **kwargs: Any) -> str:
    """Write a whole video at once (see :class:`VideoWriter`); returns ``path``."""
    with VideoWriter(path, fps=fps, **kwargs) as w:
        w.write(video)
    return w.path
