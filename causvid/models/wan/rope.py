"""3D rotary position embedding of Wan2.1, with absolute frame offsets.

The head dim d is split into (time, height, width) parts of d - 4*(d//6), 2*(d//6), 2*(d//6) channels
(44:42:42 for d = 128); each part rotates adjacent channel pairs by angle position * theta^(-2i/part).
Wan precomputes a 1024-position table per axis. Here the angles are computed for the positions actually
used, in float64 as Wan does, so any frame index works: a long rollout past frame 1024 keeps going
instead of failing with a shape error (Wan's table would run out).
"""
import torch


def rope_split(head_dim: int) -> tuple:
    quarter = head_dim // 6
    return head_dim - 4 * quarter, 2 * quarter, 2 * quarter


def _axis_angles(positions: torch.Tensor, axis_dim: int, theta: float) -> torch.Tensor:
    inv_freq = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64, device=positions.device) / axis_dim)
    return positions.to(torch.float64)[:, None] * inv_freq[None, :]


def rope_angles(num_frames: int, height: int, width: int, head_dim: int, start_frame: int = 0,
                theta: float = 10000.0, device=None) -> tuple:
    """cos, sin of shape [num_frames*height*width, head_dim//2] for tokens in (f, h, w) order."""
    return rope_angles_at(torch.arange(start_frame, start_frame + num_frames, device=device), height, width,
                          head_dim, theta)


def rope_angles_at(frame_positions: torch.Tensor, height: int, width: int, head_dim: int,
                   theta: float = 10000.0) -> tuple:
    """As `rope_angles`, for frames at the given time positions (any order, gaps allowed): a KV cache that keeps
    RoPE positions inside its window gives its frames their ranks there (`KVCache(rope_positions="window")`)."""
    dt, dh, dw = rope_split(head_dim)
    device, num_frames = frame_positions.device, len(frame_positions)
    f = _axis_angles(frame_positions, dt, theta)
    h = _axis_angles(torch.arange(height, device=device), dh, theta)
    w = _axis_angles(torch.arange(width, device=device), dw, theta)
    angles = torch.cat([
        f[:, None, None, :].expand(num_frames, height, width, -1),
        h[None, :, None, :].expand(num_frames, height, width, -1),
        w[None, None, :, :].expand(num_frames, height, width, -1),
    ], dim=-1).reshape(num_frames * height * width, head_dim // 2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x: [B, L, heads, head_dim] by the angles of each token (in fp32)."""
    dtype = x.dtype
    x = x.float().unflatten(-1, (-1, 2))
    real, imag = x[..., 0], x[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return out.flatten(-2).to(dtype)
