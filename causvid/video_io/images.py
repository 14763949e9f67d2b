"""Images as [3, H, W] tensors in [-1, 1]: read, cropped to a box, resized to cover, centre-cropped."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from causvid.video_io.errors import ImageReadError


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
