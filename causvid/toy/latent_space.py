"""The toy world's latent space: a fixed linear "VAE" behind :class:`causvid.models.vae.WanVAE`'s interface.

Nothing is learned; the map is defined by a seed and a scale (``toy_world.json``, see :mod:`causvid.toy.marker`).

Spatial (per frame)
    pixel-unshuffle by 2 (each 2x2 patch of the 3 colour channels gives 12 values, channel-major as
    ``F.pixel_unshuffle`` orders them), then a fixed ``16 x 12`` matrix ``M`` with orthonormal columns (QR of a
    seeded Gaussian matrix, signs fixed by ``diag(R) > 0``), times ``scale``::

        z = scale * M @ patch          patch = M.T @ z / scale

    ``M.T @ M = I``, so decode(encode(x)) = x for every image (up to float rounding); a latent off ``M``'s
    12-dimensional column space decodes to its least-squares projection. Latents are ``[16, H/2, W/2]`` per latent
    frame: **the spatial factor is 2, not Wan's 8** (``spatial_factor = 2``), so a DiT latent of 4x4 decodes to
    8x8 pixels.

Temporal (Wan's 1 + 4k interface, ``temporal_factor = 4``)
    latent frame 0 encodes pixel frame 0 and latent frame k >= 1 encodes pixel frame 4k (a keyframe); the frames
    in between are not encoded. Decoding gives frame 0 from latent 0 and, for each later latent k, the four frames
    4k-3 .. 4k as ``(1 - a) * K[k-1] + a * K[k]`` with ``a = 1/4, 2/4, 3/4, 1`` (``K[k]`` the decoded keyframe of
    latent k, so frame 4k is exactly ``K[k]``). Decoding is causal: a streaming decoder only keeps the previous
    decoded keyframe, and its output is bitwise equal to the full decode (every frame takes the same operations
    whatever the chunking). Decoded pixels are clamped to [-1, 1].

Scale
    ``M`` preserves norms, so the mean square of unscaled latents is ``12/16 * mean(pixel**2)`` over the keyframes;
    :func:`unit_rms_scale` returns the scale giving unit RMS for given videos.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from causvid.models.latent_codec import LatentVideoCodec
from causvid.toy.marker import DEFAULT_VAE_SCALE, read_toy_config

__all__ = ["Z_DIM", "SPATIAL_FACTOR", "TEMPORAL_FACTOR", "ToyVAE", "ToyStreamingDecoder", "projection_matrix",
           "unit_rms_scale"]

Z_DIM = 16
SPATIAL_FACTOR = 2
TEMPORAL_FACTOR = 4
_PATCH = 3 * SPATIAL_FACTOR * SPATIAL_FACTOR  # 12 values per 2x2 patch


def projection_matrix(seed: int = 0) -> torch.Tensor:
    """The fixed float32 ``[16, 12]`` matrix with orthonormal columns (QR of a seeded Gaussian, in float64)."""
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randn(Z_DIM, _PATCH, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(a)  # reduced: q [16, 12]
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.to(torch.float32)


def unit_rms_scale(videos: torch.Tensor) -> float:
    """The ``scale`` that gives the encoded keyframes of ``videos`` ([B, T, 3, H, W], T = 1 + 4k) unit RMS."""
    keyframes = videos[:, ::TEMPORAL_FACTOR].double()
    mean_square = keyframes.pow(2).mean().item() * _PATCH / Z_DIM
    if mean_square <= 0:
        raise ValueError("videos are all zero: no scale gives unit RMS")
    return 1.0 / math.sqrt(mean_square)


class ToyVAE(LatentVideoCodec):
    """Fixed linear latent space with :class:`~causvid.models.vae.WanVAE`'s interface (no ``normalize``: the
    latents are already scaled).

    ``encode``/``decode`` follow the ambient grad mode (they are differentiable); the streaming decoder runs
    without grad.
    """

    temporal_factor = TEMPORAL_FACTOR
    spatial_factor = SPATIAL_FACTOR

    def __init__(self, seed: int = 0, scale: float = DEFAULT_VAE_SCALE):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.seed = int(seed)
        self.scale = float(scale)
        self.register_buffer("proj", projection_matrix(seed), persistent=False)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> "ToyVAE":
        """Build from a toy folder's ``toy_world.json`` (``vae.seed``, ``vae.scale``); float32 by default, eval
        mode, no grad-requiring parameters (it has none)."""
        cfg = read_toy_config(path)["vae"]
        for key, expected in (("z_dim", Z_DIM), ("spatial_factor", SPATIAL_FACTOR),
                              ("temporal_factor", TEMPORAL_FACTOR)):
            if cfg.get(key, expected) != expected:
                raise ValueError(f"{os.fspath(path)!r}: toy VAE {key}={cfg[key]} is not supported (only {expected})")
        vae = cls(seed=cfg["seed"], scale=cfg["scale"]).eval()
        return vae.to(device=device, dtype=dtype or torch.float32)

    # -- properties -----------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.proj.dtype

    @property
    def device(self) -> torch.device:
        return self.proj.device

    @property
    def z_dim(self) -> int:
        return Z_DIM

    # -- one frame --------------------------------------------------------------------------------------------------
    def encode_frame(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 16, H/2, W/2]."""
        patches = F.pixel_unshuffle(image, SPATIAL_FACTOR)  # [B, 12, h, w]
        return torch.einsum("oc,bchw->bohw", self.proj, patches) * self.scale

    def decode_frame(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, 16, h, w] -> [B, 3, 2h, 2w], unclamped (a keyframe)."""
        patches = torch.einsum("oc,bohw->bchw", self.proj, latent) / self.scale
        return F.pixel_shuffle(patches, SPATIAL_FACTOR)

    # -- encode / decode ------------------------------------------------------------------------------------------
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels [B, T, 3, H, W] in [-1, 1], T = 1 + 4k -> latents [B, 1 + k, 16, H/2, W/2] (pixel frames
        0, 4, ..., 4k), in the VAE's dtype and device."""
        if video.ndim != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got {tuple(video.shape)}")
        self._check_video(video)
        t = video.shape[1]
        x = video.to(device=self.device, dtype=self.dtype)
        return torch.stack([self.encode_frame(x[:, i]) for i in range(0, t, self.temporal_factor)], dim=1)

    def _decode(self, latents: torch.Tensor, previous: torch.Tensor | None):
        """Decode latent frames after the decoded keyframe ``previous`` (None: the clip's first frame).
        Returns (pixels [B, n_px, 3, H, W] clamped, the last decoded keyframe)."""
        z = latents.to(device=self.device, dtype=self.dtype)
        weights = torch.arange(1, self.temporal_factor + 1, device=self.device, dtype=self.dtype)
        weights = (weights / self.temporal_factor).view(1, -1, 1, 1, 1)  # 1/4, 2/4, 3/4, 1 (exact)
        frames = []
        for i in range(z.shape[1]):
            key = self.decode_frame(z[:, i])
            if previous is None:
                frames.append(key.unsqueeze(1))
            else:
                frames.append((1 - weights) * previous.unsqueeze(1) + weights * key.unsqueeze(1))
            previous = key
        return torch.cat(frames, dim=1).clamp(-1.0, 1.0), previous

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, F, 16, h, w] -> pixels [B, 1 + 4(F - 1), 3, 2h, 2w] clamped to [-1, 1]."""
        self._check_latents(latents)
        return self._decode(latents, None)[0]

    def stream_decoder(self) -> "ToyStreamingDecoder":
        """A fresh :class:`ToyStreamingDecoder` bound to this VAE."""
        return ToyStreamingDecoder(self)


class ToyStreamingDecoder:
    """Decodes latent frames as they arrive; its only state ("cache") is the previous decoded keyframe.

    The first latent frame ever seen gives 1 pixel frame, each later one 4; any chunking concatenates to exactly
    ``vae.decode(z)``. Runs without grad. Call :meth:`reset` to start a new clip.
    """

    def __init__(self, vae: ToyVAE):
        self.vae = vae
        self.reset()

    def reset(self) -> None:
        """Forget the cached keyframe; the next frame decoded is treated as a clip's first frame."""
        self._previous: torch.Tensor | None = None
        self.frames_seen = 0
        self._shape: tuple | None = None

    @torch.no_grad()
    def decode(self, new_latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, n, 16, h, w] (n >= 1 new frames) -> new pixels [B, n_px, 3, 2h, 2w] in [-1, 1], with
        n_px = 4n, or 4n - 3 if this call contains the clip's first frame."""
        self._shape = self.vae._check_stream(new_latents, self._shape)
        n = new_latents.shape[1]
        pixels, self._previous = self.vae._decode(new_latents, self._previous)
        self.frames_seen += n
        return pixels
