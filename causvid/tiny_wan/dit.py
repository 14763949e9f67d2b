"""Write a small random Wan DiT in the exact layouts users download, so every loader and CLI can be run
without the real weights: an original Wan folder (config.json + fp32 safetensors in Wan names, optionally
sharded with an index) or a diffusers `transformer/` folder (names from diffusers' own converter). `python -m causvid.export` writes
trained students in the same layouts through these writers."""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from causvid.models.wan import WanDiT


def random_dit(preset: str = "tiny", seed: int = 0, std: float = 0.1, **overrides) -> WanDiT:
    """A model whose every weight is random (Wan's init zeroes the head, which would make outputs zero)."""
    model = WanDiT.from_preset(preset, **overrides)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def wan_config_json(model: WanDiT) -> dict:
    """config.json as Wan2.1 ships it (no text_dim, patch_size or qk_norm: Wan ignores those); our
    `prediction` only when it is not Wan's flow."""
    c = model.config
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": c.dim, "eps": c.eps,
            "ffn_dim": c.ffn_dim, "freq_dim": c.freq_dim, "in_dim": c.in_dim, "model_type": "t2v",
            "num_heads": c.num_heads, "num_layers": c.num_layers, "out_dim": c.out_dim, "text_len": c.text_len,
            **({} if c.prediction == "flow" else {"prediction": c.prediction})}


def write_wan_dit(model: WanDiT, folder, shards: int = 1, dtype: torch.dtype | None = None,
                  metadata: dict | None = None) -> Path:
    """Wan's own layout: config.json + safetensors, float32 as the 1.3B release unless ``dtype`` says smaller;
    ``metadata``: strings stored in each safetensors header beside safetensors' own "format"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(wan_config_json(model), indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to(dtype or torch.float32).contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", **(metadata or {})}
    if shards == 1:
        save_file(state, folder / "diffusion_pytorch_model.safetensors", metadata=metadata)
        return folder
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k] for k in part}, folder / name, metadata=metadata)
        weight_map.update({k: name for k in part})
    total_size = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_diffusers_dit(model: WanDiT, folder, subfolder: str = "transformer", dtype: torch.dtype | None = None,
                        metadata: dict | None = None) -> Path:
    """A diffusers `transformer/` folder (``subfolder`` "" for the folder itself): the config.json diffusers'
    WanTransformer3DModel writes, and the weights renamed by diffusers' own Wan converter, checked strictly
    against that class's parameters, in one safetensors file (with ``metadata`` in its header)."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    c = model.config
    if c.prediction != "flow":
        raise ValueError(f"a {c.prediction}-prediction model: diffusers' WanTransformer3DModel predicts flow "
                         "(noise - x0), so its output would not be this model's")
    with torch.device("meta"):  # the class's config and parameter names, no memory
        ref = WanTransformer3DModel(patch_size=c.patch_size, num_attention_heads=c.num_heads,
                                    attention_head_dim=c.head_dim, in_channels=c.in_dim, out_channels=c.out_dim,
                                    text_dim=c.text_dim, freq_dim=c.freq_dim, ffn_dim=c.ffn_dim,
                                    num_layers=c.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                    eps=c.eps)
    state = {k: v.detach().to(dtype or torch.float32).clone() for k, v in model.state_dict().items()}
    converted = convert_wan_transformer_to_diffusers(state)
    expected = ref.state_dict()
    if converted.keys() != expected.keys() or any(converted[k].shape != expected[k].shape for k in expected):
        raise RuntimeError(f"diffusers' converter gave names or shapes WanTransformer3DModel does not have: "
                           f"{sorted(converted.keys() ^ expected.keys())[:8]}")
    folder = Path(folder) / subfolder if subfolder else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ref.save_config(folder)
    save_file({k: v.contiguous() for k, v in converted.items()}, folder / "diffusion_pytorch_model.safetensors",
              metadata={"format": "pt", **(metadata or {})})
    return folder
