"""Toy-world model folders: a Wan-layout DiT plus one JSON file that replaces umT5 and the Wan VAE.

A toy folder holds

* ``config.json`` + ``diffusion_pytorch_model.safetensors``: the DiT in Wan's own layout (written by
  :func:`causvid.tiny_wan.dit.write_wan_dit`), so ``WanDiT.from_pretrained(folder)`` and
  ``causvid.pipelines.text_to_video.load_dit`` read it unchanged;
* ``toy_world.json`` (:data:`TOY_MARKER`): the settings of the toy text encoder
  (:class:`causvid.toy.text_encoder.ToyTextEncoder`) and of the toy latent space
  (:class:`causvid.toy.latent_space.ToyVAE`). Both are fixed functions of these few numbers; nothing else is
  stored for them.

There is no tokenizer, no umT5 checkpoint and no ``Wan2.1_VAE.pth``. The marker file is what the loading hook
(``causvid.pipelines.text_to_video.load_text_encoder`` / ``load_vae``) looks for::

    {"format": "causvid-toy-world", "version": 1,
     "text_encoder": {"dim": 32, "seed": 0, "text_len": 8},
     "vae": {"seed": 0, "scale": 1.9, "z_dim": 16, "spatial_factor": 2, "temporal_factor": 4}}
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["TOY_MARKER", "TOY_FORMAT", "DEFAULT_VAE_SCALE", "is_toy_folder", "read_toy_config",
           "write_toy_folder"]

#: Name of the marker / settings file of a toy-world folder.
TOY_MARKER = "toy_world.json"
TOY_FORMAT = "causvid-toy-world"
TOY_VERSION = 1

#: Default latent scale of the toy VAE: latents are ``scale * M @ patch``. With ``M`` orthonormal the mean square
#: of the unscaled latents is ``12/16 * mean(pixel**2)``; the toy world's videos (``causvid.toy.world``: a shape on
#: a dark-grey background, pixel -0.6) have ``mean(pixel**2)`` of about 0.37 (500 sampled 21-frame videos), so
#: ``1 / sqrt(0.75 * 0.37) ~= 1.9`` gives latents of unit RMS (per-channel means are not removed: the map is
#: linear). :func:`causvid.toy.latent_space.unit_rms_scale` fits it to other videos.
DEFAULT_VAE_SCALE = 1.9


def is_toy_folder(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a folder holding the toy marker file."""
    if path is None:
        return False
    p = Path(path)
    return p.is_dir() and (p / TOY_MARKER).is_file()


def read_toy_config(folder: str | os.PathLike) -> dict:
    """The parsed marker JSON of a toy folder, checked: ``{"text_encoder": {...}, "vae": {...}, ...}``."""
    path = Path(folder) / TOY_MARKER
    if not path.is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} is not a toy-world folder: {TOY_MARKER} not found")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)!r}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict) or cfg.get("format") != TOY_FORMAT:
        raise ValueError(f"{os.fspath(path)!r}: expected \"format\": {TOY_FORMAT!r}")
    if cfg.get("version") != TOY_VERSION:
        raise ValueError(f"{os.fspath(path)!r}: unsupported version {cfg.get('version')!r} (expected {TOY_VERSION})")
    required = {"text_encoder": ("dim", "seed", "text_len"), "vae": ("seed", "scale")}
    for section, keys in required.items():
        part = cfg.get(section)
        if not isinstance(part, dict):
            raise ValueError(f"{os.fspath(path)!r}: missing section {section!r}")
        missing = [k for k in keys if k not in part]
        if missing:
            raise ValueError(f"{os.fspath(path)!r}: section {section!r} lacks {missing}")
    return cfg


def write_toy_folder(folder: str | os.PathLike, dit, text_dim: int | None = None, seed: int = 0,
                     vae_scale: float = DEFAULT_VAE_SCALE, vae_seed: int | None = None, dtype=None) -> Path:
    """Write ``dit`` (a :class:`~causvid.models.wan.WanDiT`) in Wan layout and the toy marker into ``folder``.

    ``text_dim`` defaults to the DiT's ``text_dim`` and must equal it; the encoder's ``text_len`` is the DiT's.
    ``seed`` seeds the word embeddings and (unless ``vae_seed`` is given) the VAE's projection. ``dtype``: the
    stored weights' dtype (float32 by default; the shipped toy checkpoint is bfloat16 to stay small).
    """
    from causvid.tiny_wan.dit import write_wan_dit

    c = dit.config
    text_dim = int(c.text_dim if text_dim is None else text_dim)
    if text_dim != c.text_dim:
        raise ValueError(f"text_dim={text_dim} does not match the DiT's text_dim={c.text_dim}")
    from causvid.toy.latent_space import Z_DIM
    if c.in_dim != Z_DIM or c.out_dim != Z_DIM:
        raise ValueError(f"the toy latent space has {Z_DIM} channels; the DiT has in_dim={c.in_dim}, "
                         f"out_dim={c.out_dim}")
    if not vae_scale > 0:
        raise ValueError(f"vae_scale must be positive, got {vae_scale}")
    folder = Path(folder)
    write_wan_dit(dit, folder, dtype=dtype)
    marker = {
        "format": TOY_FORMAT,
        "version": TOY_VERSION,
        "text_encoder": {"dim": text_dim, "seed": int(seed), "text_len": int(c.text_len)},
        "vae": {"seed": int(seed if vae_seed is None else vae_seed), "scale": float(vae_scale), "z_dim": Z_DIM,
                "spatial_factor": 2, "temporal_factor": 4},
    }
    (folder / TOY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder
