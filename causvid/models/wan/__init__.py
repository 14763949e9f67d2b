"""The Wan2.1 DiT: one transformer for bidirectional, block-causal, teacher-forcing and KV-cached streaming use."""
from .attention import MaskSpec, set_attention_backend
from .checkpoints import CheckpointError
from .dit import WanDiT
from .kv_cache import KVCache
from .presets import PRESETS, WanConfig, get_preset

__all__ = ["WanDiT", "WanConfig", "KVCache", "MaskSpec", "PRESETS", "get_preset", "CheckpointError",
           "set_attention_backend"]
