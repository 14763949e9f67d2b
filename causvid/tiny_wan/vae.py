"""Tiny random Wan2.1 VAEs written in the original Wan layout or the diffusers layout (for tests; no downloads).

The Wan layout needs the diffusers -> Wan key direction, which diffusers does not ship. It is derived here from the
structure of Wan's ``wan/modules/vae.py``:

* residual blocks are ``residual = Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout, CausalConv3d)``
  plus ``shortcut``, so ``norm1/conv1/norm2/conv2/conv_shortcut`` -> ``residual.0/residual.2/residual.3/residual.6/
  shortcut``;
* the encoder's blocks form one flat ``downsamples`` list with the same indices as diffusers' ``down_blocks``;
* the decoder's ``upsamples`` is flat too: per stage ``num_res_blocks + 1`` residual blocks then the resample, so
  ``up_blocks.s.resnets.j`` -> ``upsamples.{s * (num_res_blocks + 2) + j}`` and ``up_blocks.s.upsamplers.0`` ->
  ``upsamples.{s * (num_res_blocks + 2) + num_res_blocks + 1}``;
* ``middle = Sequential(ResidualBlock, AttentionBlock, ResidualBlock)``; ``head = Sequential(RMS_norm, SiLU, conv)``;
  ``conv_in`` -> ``conv1``; the top-level ``quant_conv`` / ``post_quant_conv`` -> ``conv1`` / ``conv2``.

The tests check this direction by round-tripping it through diffusers' ``convert_wan_vae_to_diffusers``, the
independent reference. That converter hard-codes the decoder layout of ``num_res_blocks = 2`` (Wan2.1's value), so
only that value can be written in the Wan layout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

__all__ = ["tiny_vae_model", "diffusers_to_wan_vae_state_dict", "write_tiny_vae"]

_RESIDUAL = (
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.", "residual.2."),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)


def _residual_to_wan(rest: str) -> str:
    for src, dst in _RESIDUAL:
        if rest.startswith(src):
            return dst + rest[len(src):]
    raise KeyError(f"unknown residual-block parameter {rest!r}")


def _head_to_wan(rest: str) -> str:
    if rest.startswith("norm_out."):
        return "head.0." + rest[len("norm_out."):]
    if rest.startswith("conv_out."):
        return "head.2." + rest[len("conv_out."):]
    if rest.startswith("conv_in."):
        return "conv1." + rest[len("conv_in."):]
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", rest)
    if m:
        kind, j, tail = m.group(1), int(m.group(2)), m.group(3)
        if kind == "resnets":  # middle = [res, attn, res, ...]: resnet j -> 2j, attention a -> 2a + 1
            return f"middle.{2 * j}.{_residual_to_wan(tail)}"
        return f"middle.{2 * j + 1}.{tail}"
    raise KeyError(rest)


def diffusers_to_wan_vae_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``AutoencoderKLWan`` (Wan2.1, non-residual) state dict to the original ``Wan2.1_VAE.pth``
    key layout. Tensors are shared, not copied."""
    up_resnets = {int(m.group(1)) for k in state_dict
                  if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))}
    per_stage = len(up_resnets) + 1  # (num_res_blocks + 1) resnets + 1 resample
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("quant_conv."):
            new = "conv1." + key[len("quant_conv."):]
        elif key.startswith("post_quant_conv."):
            new = "conv2." + key[len("post_quant_conv."):]
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.(.*)$", key):
            i, rest = m.group(1), m.group(2)
            if rest.startswith(("resample.", "time_conv.")):
                new = f"encoder.downsamples.{i}.{rest}"
            else:
                new = f"encoder.downsamples.{i}.{_residual_to_wan(rest)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key):
            s, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            new = f"decoder.upsamples.{s * per_stage + j}.{_residual_to_wan(rest)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", key):
            s, rest = int(m.group(1)), m.group(2)
            new = f"decoder.upsamples.{s * per_stage + per_stage - 1}.{rest}"
        elif m := re.match(r"(encoder|decoder)\.(.*)$", key):
            new = f"{m.group(1)}.{_head_to_wan(m.group(2))}"
        else:
            raise KeyError(f"no Wan name for diffusers VAE key {key!r}")
        if new in out:
            raise KeyError(f"two diffusers keys map to Wan key {new!r}")
        out[new] = value
    return out


def tiny_vae_model(seed: int = 0, base_dim: int = 8, num_res_blocks: int = 2) -> AutoencoderKLWan:
    """A small random fp32 ``AutoencoderKLWan`` with Wan2.1's structure (z_dim 16, dim_mult [1, 2, 4, 4],
    temporal downsample [False, True, True], Wan's latent mean/std), deterministic in ``seed``.

    Every parameter is redrawn from a seeded generator (RMS-norm gammas around 1, biases small), so mis-assigned
    weights change the outputs; the global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        model = AutoencoderKLWan(
            base_dim=base_dim,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=num_res_blocks,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                scale = 0.5 if name.startswith("decoder.conv_out") else 1.0  # keep most pixels inside the clamp
                p.copy_(scale * torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    return model.eval()


def write_tiny_vae(folder: str | os.PathLike, layout: str = "wan", seed: int = 0, base_dim: int = 8,
                   num_res_blocks: int = 2) -> AutoencoderKLWan:
    """Write a tiny random VAE (see :func:`tiny_vae_model`) into ``folder`` and return the in-memory model.

    ``layout="wan"``: ``folder/Wan2.1_VAE.pth``, an fp32 pickled state dict with the original Wan key names.
    ``layout="diffusers"``: ``folder/vae/config.json`` + ``folder/vae/diffusion_pytorch_model.safetensors``.
    """
    if layout not in ("wan", "diffusers"):
        raise ValueError(f"layout must be 'wan' or 'diffusers', got {layout!r}")
    if layout == "wan" and num_res_blocks != 2:
        raise ValueError("the Wan layout is only readable (by diffusers' converter) with num_res_blocks=2")
    model = tiny_vae_model(seed=seed, base_dim=base_dim, num_res_blocks=num_res_blocks)
    state_dict = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    folder = Path(folder)
    if layout == "wan":
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(diffusers_to_wan_vae_state_dict(state_dict), folder / "Wan2.1_VAE.pth")
    else:
        from safetensors.torch import save_file

        vae_dir = folder / "vae"
        vae_dir.mkdir(parents=True, exist_ok=True)
        model.save_config(os.fspath(vae_dir))
        save_file(state_dict, os.fspath(vae_dir / "diffusion_pytorch_model.safetensors"))
    return model
