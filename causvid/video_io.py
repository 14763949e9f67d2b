"""Video and image I/O for the inference CLIs.

Everything here runs on the ffmpeg binary shipped with ``imageio-ffmpeg`` (no
system ffmpeg, no Pillow/OpenCV/torchvision.io needed; ``imageio`` reads the
images).

Writing (:class:`VideoWriter`, :func:`write_video`)
    H.264 (libx264), ``yuv420p``, in an MP4 container, ``-crf 18`` by default.
    Frames are piped to one ffmpeg process as they come (block by block, as the
    blocks of a streaming rollout finish).  No resizing happens (the
    ``macro_block_size=1`` behaviour of imageio): ``yuv420p`` needs an even width
    and height, so odd sizes are refused with a ``ValueError`` before ffmpeg is
    started.

    The video is written to ``path + ".partial"`` (``out.mp4.partial``; the MP4
    muxer is chosen explicitly with ``-f mp4`` since the name does not end in
    ``.mp4``, and a ``*.mp4`` glob, e.g. a "skip videos already done" check,
    never sees a half-written file).  On a successful close the file is fsynced
    and renamed onto ``path`` with ``os.replace`` (atomic on one file system;
    an existing ``path`` is replaced).  On an exception inside the ``with``
    block, on ``abort()``, or when ffmpeg fails, ffmpeg is killed, the partial
    file is deleted and ``path`` is left untouched.  ``-movflags +faststart`` is
    deliberately *not* used: with the index (``moov``) at the end of the file a
    truncated copy can't be opened at all, so it is detected as corrupt.

Reading (:func:`read_video`, :func:`video_info`)
    Any problem (missing file, not a video, truncated, decode errors) is a
    one-line :class:`VideoReadError` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from causvid.data.jsonfile import load_json
from causvid.errors import RunError, UsageError

__all__ = [
    "VideoReadError",
    "VideoWriteError",
    "ImageReadError",
    "CropInfoError",
    "safe_filename",
    "to_uint8_frames",
    "VideoWriter",
    "write_video",
    "read_video",
    "video_info",
    "load_image",
    "resize_center_crop",
    "read_crop_info",
]


class VideoReadError(UsageError):
    """A file can't be read as a video (missing, not a video, truncated, corrupt)."""


class VideoWriteError(RunError):
    """ffmpeg failed while encoding a video."""


class ImageReadError(UsageError):
    """A file can't be read as an image, or the requested crop doesn't fit it."""


class CropInfoError(UsageError):
    """A crop-info JSON file is unreadable or has invalid / missing fields."""


# --------------------------------------------------------------------------- #
# file names
# --------------------------------------------------------------------------- #

_RESERVED_CHARS = frozenset('<>:"/\\|?*')
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"{p}{d}" for p in ("COM", "LPT") for d in "123456789\u00b9\u00b2\u00b3"]
)


def safe_filename(text: str, max_len: int = 100, *, max_bytes: int = 200) -> str:
    """Turn (the first ``max_len`` characters of) a prompt into a file name.

    The result is safe as a single path component on Linux, macOS and Windows
    and is a pure function of ``text`` (deterministic, no counters):

    * Unicode is NFC-normalised; letters of any script, digits, punctuation
      other than the reserved ones, and emoji are kept;
    * ``< > : " / \\ | ? *`` and lone surrogates become ``_``;
    * control characters, line breaks and tabs become spaces, runs of
      whitespace collapse to one space; invisible format characters (zero-width
      joiners, bidi overrides, BOM) are dropped;
    * leading and trailing spaces and dots are removed (Windows drops trailing
      ones silently; leading dots would make a hidden file, or ``.``/``..``);
    * the UTF-8 encoding is cut to at most ``max_bytes`` bytes (at a character
      boundary) so that an extension and an index still fit under the 255-byte
      limit of common file systems, even for CJK text;
    * Windows device names (``CON``, ``nul``, ``COM1``, ``LPT9``, ..., also
      followed by an extension) get a ``_`` appended to the stem;
    * an empty result becomes ``"untitled"``.

    No extension is added.  Different prompts can map to the same name (same
    first ``max_len`` characters): callers that need unique names should add
    the prompt index.
    """
    if not isinstance(text, str):
        raise TypeError(f"safe_filename expects str, got {type(text).__name__}")
    if max_len < 1 or max_bytes < 1:
        raise ValueError("max_len and max_bytes must be >= 1")
    text = unicodedata.normalize("NFC", text)[:max_len]
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in _RESERVED_CHARS or cat == "Cs":
            out.append("_")
        elif cat in ("Cc", "Zl", "Zp") or ch.isspace():
            out.append(" ")
        elif cat == "Cf":
            continue
        else:
            out.append(ch)
    name = " ".join("".join(out).split()).strip(" .")
    encoded = name.encode("utf-8")
    if len(encoded) > max_bytes:
        name = encoded[:max_bytes].decode("utf-8", errors="ignore").strip(" .")
    if not name:
        return "untitled"
    stem = name.split(".", 1)[0].rstrip(" ")
    if stem.upper() in _WINDOWS_RESERVED:
        name = stem + "_" + name[len(stem):]
    return name


# --------------------------------------------------------------------------- #
# frames
# --------------------------------------------------------------------------- #


def to_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """Convert a video to a C-contiguous ``numpy.uint8`` array ``[T, H, W, 3]``.

    ``video`` is a torch tensor (any device / float dtype) or numpy array shaped
    ``[T, 3, H, W]`` or ``[T, H, W, 3]`` (when both dim 1 and the last dim are 3,
    ``[T, 3, H, W]`` is assumed), either floating point in ``[-1, 1]`` (values
    outside are clamped, then rounded to the nearest level) or ``uint8`` (taken
    as is).  NaN/inf values raise ``ValueError`` rather than being written as
    garbage.
    """
    if isinstance(video, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(video))
    elif torch.is_tensor(video):
        t = video.detach()
    else:
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(video).__name__}")
    if t.ndim != 4:
        raise ValueError(f"expected a video shaped [T, 3, H, W] or [T, H, W, 3], got shape {tuple(t.shape)}")
    if t.shape[1] == 3:
        channels_first = True
    elif t.shape[-1] == 3:
        channels_first = False
    else:
        raise ValueError(
            f"expected 3 colour channels in dim 1 ([T, 3, H, W]) or dim 3 ([T, H, W, 3]), got shape {tuple(t.shape)}"
        )
    if t.dtype == torch.uint8:
        pass
    elif t.is_floating_point():
        t = t.float()
        if t.numel() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"video has {bad} non-finite (NaN/inf) values")
        t = ((t.clamp(-1.0, 1.0) + 1.0) * 127.5).round_().to(torch.uint8)
    else:
        raise TypeError(f"expected a float video in [-1, 1] or uint8, got dtype {t.dtype}")
    if channels_first:
        t = t.permute(0, 2, 3, 1)
    return np.ascontiguousarray(t.contiguous().cpu().numpy())


# --------------------------------------------------------------------------- #
# ffmpeg helpers
# --------------------------------------------------------------------------- #


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _popen_kwargs() -> dict:
    # own process group: a Ctrl-C in the terminal reaches Python (which then
    # aborts the writer) rather than killing ffmpeg mid-file behind our back
    if sys.platform.startswith("win"):
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


_LOG_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-fA-F]+\]\s*")
_BANNER = ("ffmpeg version", "Input #", "Output #", "===", "Could not load meta information")


def _ffmpeg_reason(text: str, limit: int = 240) -> str:
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


def _check_readable(path: str) -> None:
    if os.path.isdir(path):
        raise VideoReadError(f"cannot read video {path!r}: is a directory")
    if not os.path.exists(path):
        raise VideoReadError(f"cannot read video {path!r}: file not found")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"cannot read video {path!r}: file is empty")


def _probe(path: str) -> dict:
    """ffmpeg's header for the first video stream (size as decoded, fps)."""
    import imageio_ffmpeg

    _check_readable(path)
    gen = imageio_ffmpeg.read_frames(path)
    try:
        meta = next(gen)
    except Exception as e:  # IOError from ffmpeg, parse errors, no video stream...
        reason = _ffmpeg_reason(str(e))
        if "does not contain any stream" in reason or "matches no streams" in reason:
            reason = "no video stream found"
        raise VideoReadError(f"cannot read video {path!r}: {reason}") from None
    finally:
        gen.close()
    size = meta.get("size") if isinstance(meta, dict) else None
    if not size or len(size) != 2 or min(size) <= 0:
        raise VideoReadError(f"cannot read video {path!r}: no video stream found")
    return meta


# --------------------------------------------------------------------------- #
# writing
# --------------------------------------------------------------------------- #


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
            _ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-vcodec", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
            "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p",
            "-crf", str(self.crf), "-preset", str(self.preset),
            "-f", "mp4", self.partial_path,
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log, **_popen_kwargs()
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
        reason = _ffmpeg_reason(self._stderr())
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


# --------------------------------------------------------------------------- #
# reading
# --------------------------------------------------------------------------- #


def read_video(path: str | os.PathLike, *, strict: bool = True) -> np.ndarray:
    """Decode all frames of the first video stream as ``uint8 [T, H, W, 3]`` RGB.

    Raises :class:`VideoReadError` naming the file when it is missing, not a
    video, truncated or has no frames.  With ``strict=True`` any decoder error
    ffmpeg reports (e.g. a damaged stream) is an error too; with
    ``strict=False`` the frames that could be decoded are returned.
    """
    path = os.fspath(path)
    meta = _probe(path)
    width, height = meta["size"]
    cmd = [
        _ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
        "-i", path, "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, **_popen_kwargs())
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0 or (strict and err.strip()):
        raise VideoReadError(f"cannot read video {path!r}: {_ffmpeg_reason(err)}")
    frame_bytes = width * height * 3
    n, rest = divmod(len(proc.stdout), frame_bytes)
    if n == 0:
        raise VideoReadError(f"cannot read video {path!r}: no frames could be decoded")
    if rest and strict:
        raise VideoReadError(f"cannot read video {path!r}: decoded data ends mid-frame")
    buf = np.frombuffer(proc.stdout, dtype=np.uint8, count=n * frame_bytes)
    return buf.reshape(n, height, width, 3).copy()


def video_info(path: str | os.PathLike, *, strict: bool = True) -> tuple[int, int, int, float]:
    """``(num_frames, height, width, fps)`` of the first video stream.

    The frame count is exact: ffmpeg decodes the stream (without converting or
    keeping the frames), so this checks the file as :func:`read_video` would
    (same ``strict`` meaning).  ``fps`` is the stream's frame rate (0.0 if
    unknown).  Raises :class:`VideoReadError` naming the file.
    """
    path = os.fspath(path)
    meta = _probe(path)
    width, height = meta["size"]
    cmd = [
        _ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
        "-i", path, "-map", "0:v:0", "-f", "null", "-progress", "pipe:1", "-",
    ]  # fmt: skip
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, **_popen_kwargs())
    err = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0 or (strict and err.strip()):
        raise VideoReadError(f"cannot read video {path!r}: {_ffmpeg_reason(err)}")
    counts = re.findall(rb"^frame=\s*(\d+)\s*$", proc.stdout, flags=re.MULTILINE)
    nframes = int(counts[-1]) if counts else 0
    if nframes == 0:
        raise VideoReadError(f"cannot read video {path!r}: no frames could be decoded")
    return nframes, int(height), int(width), float(meta.get("fps") or 0.0)


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #


def _read_rgb(path: str) -> np.ndarray:
    """Image file -> float32 [H, W, 3] in [0, 255] (first frame; alpha dropped)."""
    import imageio.v3 as iio

    if os.path.isdir(path):
        raise ImageReadError(f"cannot read image {path!r}: is a directory")
    if not os.path.exists(path):
        raise ImageReadError(f"cannot read image {path!r}: file not found")
    try:
        img = np.asarray(iio.imread(path, index=0))
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageReadError(f"cannot read image {path!r}: {msg}") from None
    if img.dtype == np.uint8:
        img = img.astype(np.float32)
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) * (255.0 / 65535.0)
    elif img.dtype == np.bool_:
        img = img.astype(np.float32) * 255.0
    elif np.issubdtype(img.dtype, np.floating):
        img = np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0
    else:
        raise ImageReadError(f"cannot read image {path!r}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"cannot read image {path!r}: unsupported image shape {img.shape}")
    if img.shape[2] in (1, 2):  # grey (+ alpha)
        img = np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def resize_center_crop(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale ``img`` ``[C, h, w]`` (float) to cover ``height x width`` keeping its
    aspect ratio (bicubic, antialiased), then cut the centre ``[C, height, width]``."""
    if height < 1 or width < 1:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    _, h, w = img.shape
    scale = max(height / h, width / w)
    new_h = max(height, int(round(h * scale)))
    new_w = max(width, int(round(w * scale)))
    if (new_h, new_w) != (h, w):
        img = F.interpolate(
            img[None].float(), size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True
        )[0]
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    return img[:, top : top + height, left : left + width]


def load_image(
    path: str | os.PathLike,
    height: int,
    width: int,
    crop: tuple[float, float, float, float] | None = None,
    *,
    crop_ref_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Load an image as a float32 tensor ``[3, height, width]`` in ``[-1, 1]``.

    The first frame is used for multi-frame files; grey images are repeated
    to RGB, alpha is dropped (as PIL's ``convert("RGB")``), 16-bit and float
    images are scaled.  EXIF orientation is not applied (as ``PIL.Image.open``).

    ``crop=(x0, y0, x1, y1)`` (pixels of the image as stored, x1/y1 exclusive;
    rounded to integers and clipped to the image) is cut out first.  If the box
    was measured on a differently sized copy of the image (e.g. the
    ``origin_width`` x ``origin_height`` of :func:`read_crop_info`), pass that
    size as ``crop_ref_size=(width, height)`` and the box is scaled to the file.  The result
    is then resized keeping its aspect ratio so that it covers
    ``height x width``, and centre-cropped to it (never stretched).
    """
    path = os.fspath(path)
    arr = _read_rgb(path)
    img = torch.from_numpy(arr).permute(2, 0, 1)  # [3, H, W], 0..255
    if crop is not None:
        H, W = arr.shape[:2]
        try:
            box = [float(v) for v in crop]
            if len(box) != 4:
                raise ValueError
            if crop_ref_size is not None:
                rw, rh = (float(v) for v in crop_ref_size)
                if rw <= 0 or rh <= 0:
                    raise ValueError
                box = [box[0] * W / rw, box[1] * H / rh, box[2] * W / rw, box[3] * H / rh]
            x0, y0, x1, y1 = (int(round(v)) for v in box)
        except (TypeError, ValueError):
            raise ValueError(
                f"crop must be (x0, y0, x1, y1) numbers and crop_ref_size (width, height) > 0, "
                f"got {crop!r} / {crop_ref_size!r}"
            ) from None
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            raise ImageReadError(
                f"cannot crop image {path!r}: box {tuple(crop)} is empty or outside the {W}x{H} image"
            )
        img = img[:, cy0:cy1, cx0:cx1]
    img = resize_center_crop(img, height, width)
    return (img / 127.5 - 1.0).clamp_(-1.0, 1.0).contiguous()


# --------------------------------------------------------------------------- #
# Causal-Forcing crop info
# --------------------------------------------------------------------------- #


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_crop_info(json_path: str | os.PathLike) -> dict[str, dict]:
    """Parse a Causal-Forcing ``target_crop_info_*.json``.

    The file is a JSON list of entries like::

        {"file_name": "0001.jpg", "caption": "...", "type": "...",
         "origin_width": 1280, "origin_height": 720,
         "target_crop": {"target_bbox": [x0, y0, x1, y1]}}

    Returns ``{file_name: {"caption": str, "bbox": (x0, y0, x1, y1), "type":
    ..., "origin_width": int | None, "origin_height": int | None}}`` with
    ``bbox`` in integer pixels of the original image (``x1``/``y1``
    exclusive), ready for ``load_image(..., crop=bbox)``.

    A bbox whose four values are all within ``[0, 1]`` is taken as fractions of
    ``origin_width`` / ``origin_height`` (which are then required); otherwise
    it is in pixels.  (So a pixel box ``[0, 0, 1, 1]`` can't be expressed; it
    would be a 1-pixel crop anyway.)  ``file_name``, ``caption`` and
    ``target_crop.target_bbox`` are required; ``type`` is optional.  Problems
    raise :class:`CropInfoError` naming the file (and the entry).
    """
    name = os.fspath(json_path)
    data = load_json(name, "crop info", CropInfoError)
    if not isinstance(data, list):
        raise CropInfoError(f"crop info {name!r}: expected a JSON list of entries, got {type(data).__name__}")

    out: dict[str, dict] = {}
    for i, entry in enumerate(data):
        where = f"crop info {name!r}, entry {i}"
        if not isinstance(entry, dict):
            raise CropInfoError(f"{where}: expected an object, got {type(entry).__name__}")
        fname = entry.get("file_name")
        if not isinstance(fname, str) or not fname:
            raise CropInfoError(f"{where}: missing or invalid 'file_name'")
        where += f" ({fname!r})"
        if fname in out:
            raise CropInfoError(f"{where}: duplicate file_name")
        caption = entry.get("caption")
        if not isinstance(caption, str):
            raise CropInfoError(f"{where}: missing or invalid 'caption'")
        target = entry.get("target_crop")
        if not isinstance(target, dict) or "target_bbox" not in target:
            raise CropInfoError(f"{where}: missing 'target_crop.target_bbox'")
        bbox = target["target_bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise CropInfoError(f"{where}: 'target_bbox' must be 4 numbers [x0, y0, x1, y1], got {bbox!r}")

        dims = []
        for key in ("origin_width", "origin_height"):
            v = entry.get(key)
            if v is not None and (not _is_number(v) or v <= 0):
                raise CropInfoError(f"{where}: invalid {key!r} {v!r}")
            dims.append(None if v is None else int(round(v)))
        ow, oh = dims

        x0, y0, x1, y1 = (float(v) for v in bbox)
        if all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            if ow is None or oh is None:
                raise CropInfoError(
                    f"{where}: normalised 'target_bbox' {list(bbox)} needs 'origin_width' and 'origin_height'"
                )
            x0, x1, y0, y1 = x0 * ow, x1 * ow, y0 * oh, y1 * oh
        px = tuple(int(round(v)) for v in (x0, y0, x1, y1))
        if px[0] < 0 or px[1] < 0 or px[2] <= px[0] or px[3] <= px[1]:
            raise CropInfoError(f"{where}: 'target_bbox' {list(bbox)} is empty or negative")
        if (ow is not None and px[2] > ow) or (oh is not None and px[3] > oh):
            raise CropInfoError(f"{where}: 'target_bbox' {list(bbox)} exceeds the {ow}x{oh} original image")
        out[fname] = {
            "caption": caption,
            "bbox": px,
            "type": entry.get("type"),
            "origin_width": ow,
            "origin_height": oh,
        }
    return out
