"""Videos as the uint8 [T, H, W, 3] frames ffmpeg is fed."""
from __future__ import annotations

import numpy as np
import torch


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
