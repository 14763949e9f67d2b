"""Write a small random Wan DiT in the exact layouts users download, so every loader and CLI can be run
without the real weights: an original Wan folder (config.json + fp32 safetensors in Wan names, optionally
sharded with an index) or a diffusers `transformer/` folder (names from diffusers' own converter)."""
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


def write_wan_dit(model: WanDiT, folder, shards: int = 1, dtype: torch.dtype | None = None) -> Path:
    """Wan's own layout: config.json + safetensors, float32 as the 1.3B release unless ``dtype`` says smaller."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(wan_config_json(model), indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().to(dtype or torch.float32).contiguous() for k, v in model.state_dict().items()}
    if shards == 1:
        save_file(state, folder / "diffusion_pytorch_model.safetensors")
        return folder
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    total_size = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_diffusers_dit(model: WanDiT, folder) -> Path:
    """A diffusers `transformer/` folder, converted with diffusers' own Wan converter and saved by diffusers."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    c = model.config
    ref = WanTransformer3DModel(patch_size=c.patch_size, num_attention_heads=c.num_heads,
                                attention_head_dim=c.head_dim, in_channels=c.in_dim, out_channels=c.out_dim,
                                text_dim=c.text_dim, freq_dim=c.freq_dim, ffn_dim=c.ffn_dim, num_layers=c.num_layers,
                                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=c.eps)
    converted = convert_wan_transformer_to_diffusers({k: v.detach().clone() for k, v in model.state_dict().items()})
    ref.load_state_dict(converted, strict=True)
    folder = Path(folder) / "transformer"
    ref.save_pretrained(folder)
    return folder
