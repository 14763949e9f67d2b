"""Wan2.1 video VAE: loading, Wan's latent normalisation, full and streaming decode.

The network itself is diffusers' ``AutoencoderKLWan``; this module adds

* :meth:`WanVAE.from_pretrained`, which reads the original ``Wan2.1_VAE.pth`` (converted at load time with
  diffusers' own ``convert_wan_vae_to_diffusers``) or a diffusers folder, building the model from its config and
  loading the weights strictly (diffusers' ``from_pretrained`` would need ``accelerate``);
* Wan's latent normalisation ``z = (mu - mean) * (1 / std)`` with the 16 per-channel constants from the config,
  encoding with the posterior mean (no sampling), as Wan does;
* a :class:`StreamingDecoder` that decodes latent frames as they arrive while keeping the decoder's causal-conv
  feature caches between calls, so that its output equals one full :meth:`WanVAE.decode`.

Layouts: pixels are ``[B, T, 3, H, W]`` in ``[-1, 1]`` with ``T = 1 + 4k``; latents are ``[B, 1 + k, 16, H/8, W/8]``
(frame-major, like the DiT's inputs). diffusers works channel-major (``[B, C, T, H, W]``); the permutes live here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from causvid.errors import UsageError
from causvid.models.latent_codec import LatentVideoCodec

__all__ = [
    "WAN_VAE_PTH",
    "VAECheckpointError",
    "WanVAE",
    "StreamingDecoder",
    "infer_vae_config",
    "load_vae_model",
]

#: File name of the VAE inside an original Wan2.1 checkpoint folder.
WAN_VAE_PTH = "Wan2.1_VAE.pth"
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_DIFFUSERS_CONFIG = "config.json"


def _default_latents(name: str) -> list[float]:
    import inspect

    return list(inspect.signature(AutoencoderKLWan.__init__).parameters[name].default)


#: Wan2.1's 16 latent channel means (AutoencoderKLWan's default ``latents_mean``); used when a .pth carries no config.
_DEFAULT_LATENTS_MEAN = _default_latents("latents_mean")


class VAECheckpointError(UsageError, RuntimeError):
    """A VAE checkpoint file exists but its contents do not fit the model (missing / unexpected / mis-shaped keys)."""


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _key_report(file: str | os.PathLike, missing: Iterable[str], unexpected: Iterable[str],
                mismatched: Iterable[str] = (), note: str = "") -> str:
    missing, unexpected, mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
    lines = [f"VAE checkpoint {os.fspath(file)!r} does not match the AutoencoderKLWan model{note}:"]
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", mismatched)):
        if keys:
            lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
    return "\n".join(lines)


def _load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], file: str | os.PathLike,
                 note: str = "") -> None:
    """``model.load_state_dict(state_dict, strict=True, assign=True)`` with an error that names ``file`` and lists
    every problem. ``assign`` lets ``model`` be built on the meta device (the checkpoint's tensors become the
    parameters)."""
    expected = model.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise VAECheckpointError(_key_report(file, missing, unexpected, mismatched, note))
    model.load_state_dict(state_dict, strict=True, assign=True)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:  # cannot happen after a strict assign; guards against a future diffusers adding buffers
            raise VAECheckpointError(f"VAE checkpoint {os.fspath(file)!r} left {name} uninitialised")


def _empty_model(config: dict) -> AutoencoderKLWan:
    """Build the module on the meta device (no random init; the weights are assigned by :func:`_load_strict`)."""
    with torch.device("meta"):
        return AutoencoderKLWan.from_config(config)


def infer_vae_config(state_dict: dict[str, torch.Tensor], file: str | os.PathLike = "<state dict>") -> dict:
    """``AutoencoderKLWan`` constructor arguments read off the tensor shapes of a diffusers-layout Wan2.1 state dict.

    base_dim / in_channels come from ``encoder.conv_in``, z_dim from ``quant_conv``, num_res_blocks / dim_mult /
    temperal_downsample from the encoder's flat ``down_blocks`` list (resample blocks carry ``resample.1``; the
    temporal ones also ``time_conv``), decoder_base_dim / out_channels from ``decoder.conv_out``. Latent mean/std stay
    at the AutoencoderKLWan defaults, which are Wan2.1's constants.
    """
    def need(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise VAECheckpointError(_key_report(file, [key], [], note=" (needed to infer the model size)"))
        return state_dict[key]

    conv_in = need("encoder.conv_in.weight")  # [base_dim, in_channels, 3, 3, 3]
    base_dim, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    z_dim = int(need("quant_conv.weight").shape[0]) // 2

    prefix = "encoder.down_blocks."
    heads = {k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)}
    bad = sorted(h for h in heads if not h.isdigit())
    if bad:
        raise VAECheckpointError(_key_report(file, [], [k for k in state_dict if k.startswith(tuple(
            f"{prefix}{h}." for h in bad))], note=" (encoder block names must be numbered)"))
    indices = sorted(int(h) for h in heads)
    if not indices or indices != list(range(len(indices))):
        raise VAECheckpointError(
            f"VAE checkpoint {os.fspath(file)!r}: encoder down blocks are missing or not numbered 0..n-1 "
            f"(found indices {indices})")
    stages: list[list[int]] = [[]]  # resnet indices per stage
    temperal_downsample: list[bool] = []
    for i in indices:
        if f"{prefix}{i}.resample.1.weight" in state_dict:
            temperal_downsample.append(f"{prefix}{i}.time_conv.weight" in state_dict)
            stages.append([])
        elif f"{prefix}{i}.conv1.weight" in state_dict:
            stages[-1].append(i)
    counts = {len(s) for s in stages}
    if len(counts) != 1 or 0 in counts:
        raise VAECheckpointError(
            f"VAE checkpoint {os.fspath(file)!r}: unequal residual blocks per encoder stage "
            f"({[len(s) for s in stages]})")
    num_res_blocks = counts.pop()
    dim_mult = []
    for s in stages:
        out_ch = int(need(f"{prefix}{s[-1]}.conv2.weight").shape[0])
        if out_ch % base_dim:
            raise VAECheckpointError(
                f"VAE checkpoint {os.fspath(file)!r}: stage width {out_ch} is not a multiple of base_dim {base_dim}")
        dim_mult.append(out_ch // base_dim)
    # AutoencoderKLWan indexes temperal_downsample per stage (the last stage has no resample): pad to len(dim_mult)-1.
    temperal_downsample = (temperal_downsample + [False] * len(dim_mult))[: len(dim_mult) - 1]

    conv_out = need("decoder.conv_out.weight")  # [out_channels, decoder_base_dim * dim_mult[0], 3, 3, 3]
    out_channels = int(conv_out.shape[0])
    decoder_base_dim = int(conv_out.shape[1]) // dim_mult[0]

    config = dict(
        base_dim=base_dim,
        decoder_base_dim=None if decoder_base_dim == base_dim else decoder_base_dim,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=num_res_blocks,
        attn_scales=[],
        temperal_downsample=temperal_downsample,
        in_channels=in_channels,
        out_channels=out_channels,
    )
    return config


def _is_vae_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("_class_name") == "AutoencoderKLWan"
    except (OSError, ValueError, AttributeError):
        return False


def _resolve(path: str | os.PathLike) -> tuple[str, Path]:
    """Return ("wan", pth_file) or ("diffusers", folder) for a user path, or raise FileNotFoundError."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"VAE path {os.fspath(p)!r} does not exist")
    if p.is_file():
        if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            return "wan", p
        if p.name == _DIFFUSERS_WEIGHTS or p.name == _DIFFUSERS_CONFIG:
            return "diffusers", p.parent
        raise FileNotFoundError(
            f"VAE file {os.fspath(p)!r} is neither a Wan .pth checkpoint nor a diffusers "
            f"{_DIFFUSERS_WEIGHTS} / {_DIFFUSERS_CONFIG}")
    if (p / WAN_VAE_PTH).is_file():
        return "wan", p / WAN_VAE_PTH
    for folder in (p / "vae", p):
        # A Wan folder's own config.json + safetensors are the DiT's: only a VAE config counts here.
        if (folder / _DIFFUSERS_WEIGHTS).is_file() and _is_vae_config(folder / _DIFFUSERS_CONFIG):
            return "diffusers", folder
    raise FileNotFoundError(
        f"No Wan VAE found in folder {os.fspath(p)!r}: looked for {WAN_VAE_PTH}, "
        f"vae/{_DIFFUSERS_CONFIG} + vae/{_DIFFUSERS_WEIGHTS}, and {_DIFFUSERS_CONFIG} + {_DIFFUSERS_WEIGHTS}")


def _load_wan_pth(file: Path) -> AutoencoderKLWan:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt / truncated / not a tensor pickle
        raise VAECheckpointError(f"Could not read VAE checkpoint {os.fspath(file)!r}: {e}") from e
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise VAECheckpointError(f"VAE checkpoint {os.fspath(file)!r} is not a state dict of tensors")
    state_dict = convert_wan_vae_to_diffusers(raw)
    config = infer_vae_config(state_dict, file)
    if config["z_dim"] != len(_DEFAULT_LATENTS_MEAN):
        raise VAECheckpointError(
            f"VAE checkpoint {os.fspath(file)!r} has z_dim {config['z_dim']}; Wan2.1's latent normalisation has "
            f"{len(_DEFAULT_LATENTS_MEAN)} channels")
    model = _empty_model(config)
    _load_strict(model, state_dict, file,
                 note=" (keys shown after diffusers' convert_wan_vae_to_diffusers; model config "
                      f"inferred as {config})")
    return model


def _load_diffusers_folder(folder: Path) -> AutoencoderKLWan:
    from safetensors.torch import load_file

    config = AutoencoderKLWan.load_config(os.fspath(folder))
    model = _empty_model(config)
    weights = folder / _DIFFUSERS_WEIGHTS
    try:
        state_dict = load_file(os.fspath(weights))
    except Exception as e:
        raise VAECheckpointError(f"Could not read VAE weights {os.fspath(weights)!r}: {e}") from e
    _load_strict(model, state_dict, weights)
    return model


def load_vae_model(path: str | os.PathLike) -> AutoencoderKLWan:
    """Load an fp32 ``AutoencoderKLWan`` on CPU from any accepted path (see :meth:`WanVAE.from_pretrained`)."""
    kind, where = _resolve(path)
    return _load_wan_pth(where) if kind == "wan" else _load_diffusers_folder(where)



# ----------------------------------------------------------------------------------------------------------------------
# The wrapper
# ----------------------------------------------------------------------------------------------------------------------


class WanVAE(LatentVideoCodec):
    """Wan2.1 VAE with Wan's latent normalisation; frame-major tensors in and out.

    ``encode``/``decode`` follow the ambient grad mode; the streaming decoder always runs without grad.
    """

    def __init__(self, model: AutoencoderKLWan):
        super().__init__()
        self.model = model
        cfg = model.config
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError(
                f"latents_mean/std have {len(cfg.latents_mean)}/{len(cfg.latents_std)} entries, z_dim is {cfg.z_dim}")
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std, dtype=torch.float32), persistent=False)
        self.temporal_factor = int(cfg.scale_factor_temporal or 4)
        self.spatial_factor = int(cfg.scale_factor_spatial or 8)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> "WanVAE":
        """Load from a Wan folder holding ``Wan2.1_VAE.pth``, that ``.pth`` file itself, or a diffusers folder
        (its ``vae/`` subfolder or the folder itself, with ``config.json`` + ``diffusion_pytorch_model.safetensors``).

        ``dtype`` defaults to float32. The returned module is in eval mode with ``requires_grad`` off.
        Raises ``FileNotFoundError`` for a missing path/file and :class:`VAECheckpointError` for unreadable files or
        key/shape mismatches (the message names the file and lists the keys).
        """
        vae = cls(load_vae_model(path))
        vae.eval().requires_grad_(False)
        return vae.to(device=device, dtype=dtype or torch.float32)

    # -- properties -----------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def z_dim(self) -> int:
        return int(self.model.config.z_dim)

    # -- normalisation (channel-major tensors [B, C, F, h, w], in the VAE dtype, as Wan does) ---------------------
    def _scale(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.latents_mean.to(device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / self.latents_std.to(device=like.device, dtype=like.dtype).view(1, -1, 1, 1, 1)
        return mean, inv_std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw posterior mean [B, C, F, h, w] -> Wan-normalised latents: ``(mu - mean) * (1 / std)``."""
        mean, inv_std = self._scale(mu)
        return (mu - mean) * inv_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``z / (1 / std) + mean`` (Wan's form)."""
        mean, inv_std = self._scale(z)
        return z / inv_std + mean

    # -- encode / decode ------------------------------------------------------------------------------------------
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels [B, T, 3, H, W] in [-1, 1], T = 1 + 4k -> normalised latents [B, 1 + k, 16, H/8, W/8].

        Uses the posterior mean (no sampling). The result is in the VAE's dtype and device.
        """
        self._check_video(video)
        x = video.to(device=self.device, dtype=self.dtype).permute(0, 2, 1, 3, 4)
        mu = self.model.encode(x).latent_dist.mode()
        return self.normalize(mu).permute(0, 2, 1, 3, 4)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, F, 16, h, w] -> pixels [B, 1 + 4(F - 1), 3, 8h, 8w] clamped to [-1, 1]."""
        self._check_latents(latents)
        z = latents.to(device=self.device, dtype=self.dtype).permute(0, 2, 1, 3, 4)
        out = self.model.decode(self.denormalize(z)).sample
        return out.permute(0, 2, 1, 3, 4)

    def stream_decoder(self) -> "StreamingDecoder":
        """A fresh :class:`StreamingDecoder` bound to this VAE."""
        return StreamingDecoder(self)


class StreamingDecoder:
    """Decodes normalised latent frames as they arrive, keeping the decoder's causal feature caches between calls.

    The first latent frame ever seen gives 1 pixel frame, each later one 4, so feeding the frames of a clip in any
    chunking (``decode(z[:, :1]); decode(z[:, 1:4]); ...``) and concatenating the outputs equals
    ``vae.decode(z)``. Runs without grad. Call :meth:`reset` to start a new clip.
    """

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.model.decoder.modules())
        self.reset()

    def reset(self) -> None:
        """Forget all cached state; the next frame decoded is treated as a clip's first frame."""
        self._feat_cache: list = [None] * self._num_convs
        self.frames_seen = 0
        self._shape: tuple | None = None

    @torch.no_grad()
    def decode(self, new_latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, n, 16, h, w] (n >= 1 new frames) -> new pixels [B, n_px, 3, 8h, 8w] in [-1, 1],
        with n_px = 4n, or 4n - 3 if this call contains the clip's first frame."""
        vae = self.vae
        self._shape = vae._check_stream(new_latents, self._shape)
        n = new_latents.shape[1]
        model = vae.model
        z = new_latents.to(device=vae.device, dtype=vae.dtype).permute(0, 2, 1, 3, 4)
        x = model.post_quant_conv(vae.denormalize(z))  # 1x1x1 conv: no temporal state
        outs = []
        for i in range(n):
            out = model.decoder(x[:, :, i:i + 1], feat_cache=self._feat_cache, feat_idx=[0],
                                first_chunk=self.frames_seen == 0)
            self.frames_seen += 1
            outs.append(out)
        out = torch.cat(outs, dim=2)
        if model.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=model.config.patch_size)
        return out.clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4)
