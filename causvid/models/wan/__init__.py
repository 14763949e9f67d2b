"""The Wan2.1 DiT: one transformer for bidirectional, block-causal, teacher-forcing and KV-cached streaming use."""
from .attention import MaskSpec, block_layout, set_attention_backend
from .checkpoints import CheckpointError
from .dit import WanDiT
from .kv_cache import KVCache
from .presets import PRESETS, WanConfig, get_preset

__all__ = ["WanDiT", "WanConfig", "KVCache", "MaskSpec", "block_layout", "PRESETS", "get_preset", "CheckpointError",
           "set_attention_backend"]
