"""Sizes of the Wan2.1 DiT: the config dataclass and the named presets.

Field names follow Wan's own `config.json` (dim, ffn_dim, num_heads, ...) so that overrides, presets and the
files users download all speak one vocabulary. `text_dim` is not in Wan's file (it is fixed at 4096 there);
it is here so tiny test models can use small text embeddings through the same code.
"""
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class WanConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_len: int = 512
    text_dim: int = 4096
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple = (1, 2, 2)
    eps: float = 1e-6
    # What the network's head predicts. "flow" (Wan): noise - x0, returned as is. "x0" (ours, the toy preset):
    # the clean latent, returned as the flow it implies, so every caller still sees a flow model. A flow head
    # must copy its input's noise to its output; when a token holds as many values as the model is wide (the
    # toy: 4x4x16 = 256 = dim) it cannot, and the noise it drops stays in every sample ("Back to Basics: Let
    # Denoising Generative Models Denoise", Li & He 2025). Clean latents live on a low-dimensional set; x0 fits.
    prediction: str = "flow"

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.prediction not in ("flow", "x0"):
            raise ValueError(f"prediction={self.prediction!r}: expected 'flow' (Wan) or 'x0'")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def with_overrides(self, **overrides) -> "WanConfig":
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown WanConfig field(s) {sorted(unknown)}; valid: {[f.name for f in fields(self)]}")
        return replace(self, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # Wan2.1 releases (wan/configs/wan_t2v_{1_3B,14B}.py).
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Tiny models for tests and CPU experiments: same architecture, small sizes. Head dim 32 keeps the
    # 3D RoPE split non-trivial (12:10:10).
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_len=16, text_dim=32, freq_dim=32),
    "tiny-4layer": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=4, text_len=16, text_dim=32, freq_dim=32),
    # The toy world's model (causvid/toy): small enough to train every stage on 2 CPU cores in minutes.
    # Patches of 4x4 latent pixels keep the sequence at 16 tokens per frame (4x fewer than 2x2 patches,
    # ~2.5x faster per step at equal FLOPs). A token then holds 4*4*16 = 256 values, as many as the model is
    # wide, so a flow head cannot pass its input's noise through (at dim 128 the loss plateaued at 0.47, at
    # dim 256 with a flow head the samples kept patch-shaped noise): the head predicts x0 instead.
    "toy": WanConfig(dim=256, ffn_dim=512, num_heads=4, num_layers=3, text_len=8, text_dim=32, freq_dim=64,
                     patch_size=(1, 4, 4), prediction="x0"),
}


def get_preset(name: str) -> WanConfig:
    key = name.lower()
    if key not in PRESETS:
        raise KeyError(f"unknown Wan preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[key]
