"""The settings file of a toy-world folder, ``toy_world.json``: what the toy text encoder
(:class:`causvid.toy.text_encoder.ToyTextEncoder`) and the toy latent space (:class:`causvid.toy.latent_space.ToyVAE`)
are built from. Both are fixed functions of these few numbers; nothing else is stored for them::

    {"format": "causvid-toy-world", "version": 1,
     "text_encoder": {"dim": 32, "seed": 0, "text_len": 8},
     "vae": {"seed": 0, "scale": 1.9, "z_dim": 16, "spatial_factor": 2, "temporal_factor": 4}}

:mod:`causvid.toy.folder` writes a whole toy folder (the DiT, this file and ``model_index.json``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["TOY_MARKER", "TOY_FORMAT", "TOY_VERSION", "DEFAULT_VAE_SCALE", "is_toy_folder", "read_toy_config"]

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
