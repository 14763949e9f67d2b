"""Toy-world model folders: a Wan-layout DiT, the toy settings file, and a ``model_index.json`` naming the classes.

A toy folder holds

* ``config.json`` + ``diffusion_pytorch_model.safetensors``: the DiT in Wan's own layout (written by
  :func:`causvid.tiny_wan.dit.write_wan_dit`), so ``WanDiT.from_pretrained(folder)`` reads it unchanged;
* ``toy_world.json`` (:mod:`causvid.toy.marker`): the settings of the toy text encoder and of the toy latent space;
* ``model_index.json`` (diffusers' convention, :mod:`causvid.models.model_index`): which classes build the
  folder's components. The loaders of ``causvid.pipelines.text_to_video`` read it, so the toy world plugs in like
  any model folder::

    {"_class_name": "ToyWorldPipeline", "text_encoder": ["causvid.toy.text_encoder", "ToyTextEncoder"],
     "transformer": ["causvid.models.wan", "WanDiT"], "vae": ["causvid.toy.latent_space", "ToyVAE"]}

There is no tokenizer, no umT5 checkpoint and no ``Wan2.1_VAE.pth``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from causvid.models.model_index import write_model_index
from causvid.toy.latent_space import SPATIAL_FACTOR, TEMPORAL_FACTOR, Z_DIM
from causvid.toy.marker import DEFAULT_VAE_SCALE, TOY_FORMAT, TOY_MARKER, TOY_VERSION

__all__ = ["TOY_CLASSES", "write_toy_folder", "write_toy_model_index"]

#: The classes of a toy folder's components (its model_index.json).
TOY_CLASSES = {
    "transformer": ("causvid.models.wan", "WanDiT"),
    "text_encoder": ("causvid.toy.text_encoder", "ToyTextEncoder"),
    "vae": ("causvid.toy.latent_space", "ToyVAE"),
}


def write_toy_model_index(folder) -> Path:
    return write_model_index(folder, "ToyWorldPipeline", **TOY_CLASSES)


def write_toy_folder(folder: str | os.PathLike, dit, text_dim: int | None = None, seed: int = 0,
                     vae_scale: float = DEFAULT_VAE_SCALE, vae_seed: int | None = None, dtype=None) -> Path:
    """Write ``dit`` (a :class:`~causvid.models.wan.WanDiT`) in Wan layout, the toy marker and the model index
    into ``folder``.

    ``text_dim`` defaults to the DiT's ``text_dim`` and must equal it; the encoder's ``text_len`` is the DiT's.
    ``seed`` seeds the word embeddings and (unless ``vae_seed`` is given) the VAE's projection. ``dtype``: the
    stored weights' dtype (float32 by default; the shipped toy checkpoint is bfloat16 to stay small).
    """
    from causvid.tiny_wan.dit import write_wan_dit

    c = dit.config
    text_dim = int(c.text_dim if text_dim is None else text_dim)
    if text_dim != c.text_dim:
        raise ValueError(f"text_dim={text_dim} does not match the DiT's text_dim={c.text_dim}")
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
                "spatial_factor": SPATIAL_FACTOR, "temporal_factor": TEMPORAL_FACTOR},
    }
    (folder / TOY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_toy_model_index(folder)
    return folder
