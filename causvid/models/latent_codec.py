"""The video <-> latent interface every VAE of the project shares (the Wan VAE and the toy latent space):
Wan's causal temporal layout (pixel frames 1 + 4k <-> latent frames 1 + k) and the shape checks that go with it.
Subclasses set `temporal_factor`, `spatial_factor` and `z_dim`."""
import torch
from torch import nn


class LatentVideoCodec(nn.Module):
    temporal_factor: int
    spatial_factor: int

    def num_pixel_frames(self, num_latent_frames: int) -> int:
        """1 + 4(F - 1) pixel frames for F latent frames."""
        return 1 + self.temporal_factor * (num_latent_frames - 1) if num_latent_frames > 0 else 0

    def num_latent_frames(self, num_pixel_frames: int) -> int:
        """1 + k latent frames for 1 + 4k pixel frames."""
        return 1 + (num_pixel_frames - 1) // self.temporal_factor

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5 or latents.shape[2] != self.z_dim:
            raise ValueError(f"latents must be [B, F, {self.z_dim}, h, w], got {tuple(latents.shape)}")
        if latents.shape[1] < 1:
            raise ValueError("latents need at least one frame")

    def _check_stream(self, new_latents: torch.Tensor, shape: tuple | None) -> tuple:
        """Check latents arriving at a streaming decoder; returns the stream's (batch, h, w), which must not change
        between calls (``shape``: the stream's so far, None for its first call)."""
        self._check_latents(new_latents)
        b, _, _, h, w = new_latents.shape
        if shape is not None and shape != (b, h, w):
            raise ValueError(f"latent batch/size changed from {shape} to {(b, h, w)} mid-stream; call reset() first")
        return (b, h, w)

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(f"video must be [B, T, C, H, W], got {tuple(video.shape)}")
        _, t, _, h, w = video.shape
        if t < 1 or (t - 1) % self.temporal_factor:
            raise ValueError(f"video must have 1 + {self.temporal_factor}k frames, got {t}")
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"height/width must be multiples of {self.spatial_factor}, got {h}x{w}")
