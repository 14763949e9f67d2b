"""Tiny random Wan2.1 components written in the exact on-disk layouts of the real releases.

`write_tiny_wan(folder, layout)` produces a folder that every loader and CLI accepts exactly as it accepts
`Wan-AI/Wan2.1-T2V-1.3B` (layout "wan") or `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` (layout "diffusers"), so the
whole inference path can be smoke-tested on any machine without downloads.
"""
from pathlib import Path

# The submodules import on use: `causvid.tiny_wan.dit` (the DiT writers, which the export CLI uses) must not pull
# in transformers and diffusers, seconds of imports that only the text encoder and VAE writers need.


def write_tiny_wan(folder, layout: str = "wan", preset: str = "tiny", seed: int = 0) -> Path:
    """DiT (+ config.json), VAE and umT5 encoder + tokenizer, random weights. Text width matches the DiT's."""
    from .dit import random_dit, write_diffusers_dit, write_wan_dit
    from .text_encoder import write_tiny_text_encoder
    from .vae import write_tiny_vae

    if layout not in ("wan", "diffusers"):
        raise ValueError(f"layout must be 'wan' or 'diffusers', got {layout!r}")
    folder = Path(folder)
    dit = random_dit(preset, seed=seed)
    (write_wan_dit if layout == "wan" else write_diffusers_dit)(dit, folder)
    write_tiny_vae(folder, layout=layout, seed=seed)
    write_tiny_text_encoder(folder, layout=layout, seed=seed, d_model=dit.config.text_dim)
    if layout == "diffusers":  # the release's model_index.json (tokenizer and scheduler entries left out)
        from causvid.models.model_index import write_model_index
        write_model_index(folder, "WanPipeline", transformer=("diffusers", "WanTransformer3DModel"),
                          text_encoder=("transformers", "UMT5EncoderModel"), vae=("diffusers", "AutoencoderKLWan"))
    return folder


def write_tiny_training_data(root, frames: int = 6, rows: int = 6, seed: int = 0) -> Path:
    """A tiny Wan folder plus a dataset for every training stage: a latent LMDB (`latents`), ODE LMDBs in
    CausVid's 4-slot (`ode4`) and Causal Forcing's 6-slot (`ode6`) layouts, and a prompt file (`prompts.txt`);
    4x4 latents (32x32 pixels)."""
    root = Path(root)
    write_tiny_wan(root / "wan", seed=seed)
    return write_training_datasets(root, frames=frames, rows=rows, seed=seed)


def write_training_datasets(root, frames: int = 6, height: int = 4, width: int = 4, rows: int = 6,
                            seed: int = 0) -> Path:
    """The datasets of `write_tiny_training_data` at any latent size (random 16-channel latents): `latents`,
    `ode4`, `ode6` and `prompts.txt` under root."""
    import torch

    from causvid.data.lmdb import LatentLMDBWriter

    root = Path(root)
    gen = torch.Generator().manual_seed(seed)
    for name, slots in (("latents", 1), ("ode4", 4), ("ode6", 6)):
        with LatentLMDBWriter(root / name) as writer:
            for i in range(rows):
                writer.append(torch.randn(slots, frames, 16, height, width, generator=gen),
                              f"a red square moving left {i}")
    (root / "prompts.txt").write_text("\n".join(f"a blue circle moving up {i}" for i in range(rows)) + "\n")
    return root
