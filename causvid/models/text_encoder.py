"""umT5 text encoder used by Wan2.1 (and therefore by CausVid), built on transformers' ``UMT5EncoderModel``.

Two on-disk layouts are accepted by :meth:`WanTextEncoder.from_pretrained`:

* **Original Wan folder** (e.g. ``Wan2.1-T2V-1.3B/``): ``models_t5_umt5-xxl-enc-bf16.pth`` is a pickled bf16
  state dict that uses Wan's own module names (``token_embedding.weight``, ``blocks.N.attn.q.weight``, ...).
  There is no config file, so the model sizes are read off the tensor shapes, and the names are converted to
  transformers names with :data:`WAN_TO_TRANSFORMERS_RULES` at load time. The tokenizer is the
  ``google/umt5-xxl/`` folder inside the Wan folder, loaded with ``AutoTokenizer`` from that local path.
* **diffusers folder** (e.g. ``Wan2.1-T2V-1.3B-Diffusers/``): ``text_encoder/`` holds a transformers
  ``config.json`` and ``model.safetensors`` (or shards listed by ``model.safetensors.index.json``), and
  ``tokenizer/`` holds the tokenizer. The model is built from the config and the state dict is loaded by this
  module, strictly, so that ``accelerate`` is not needed.

Wan's text recipe (reproduced by :meth:`WanTextEncoder.encode`):

1. clean each prompt: ``ftfy.fix_text``, ``html.unescape`` twice, strip, collapse runs of whitespace to one space;
2. tokenize with ``padding="max_length"``, ``max_length=text_len`` (512), ``truncation=True``,
   ``add_special_tokens=True`` (umT5 appends ``</s>``);
3. run the encoder with the attention mask;
4. keep each prompt's first ``true_length`` rows (number of non-pad tokens) and zero the rest, which is what
   Wan's DiT does when it zero-pads the trimmed context back to ``text_len``.

The encoder is frozen and used for inference only: its weights do not require grad, dropout is set to 0, and
``encode`` runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import html
import json
import os
import re
import warnings
from typing import Sequence

import ftfy
import torch
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from causvid.models.prompt_encoder import CachedPromptEncoder

__all__ = [
    "DEFAULT_TEXT_LEN",
    "WAN_T5_CHECKPOINT",
    "WAN_T5_TOKENIZER_DIR",
    "DIFFUSERS_TEXT_ENCODER_DIR",
    "DIFFUSERS_TOKENIZER_DIR",
    "WAN_TO_TRANSFORMERS_RULES",
    "clean_prompt",
    "wan_to_transformers_key",
    "transformers_to_wan_key",
    "convert_wan_t5_to_transformers",
    "convert_transformers_t5_to_wan",
    "infer_umt5_config",
    "load_wan_t5_state_dict",
    "load_diffusers_text_encoder_state_dict",
    "WanTextEncoder",
]

DEFAULT_TEXT_LEN = 512
WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER_DIR = os.path.join("google", "umt5-xxl")
DIFFUSERS_TEXT_ENCODER_DIR = "text_encoder"
DIFFUSERS_TOKENIZER_DIR = "tokenizer"

# Wan's umT5 uses the standard T5 relative-position settings; they are not stored in the .pth.
WAN_T5_REL_MAX_DISTANCE = 128
WAN_T5_LAYER_NORM_EPS = 1e-6

# The tied duplicate of ``shared.weight`` inside the encoder stack.
_TIED_EMBED_KEY = "encoder.embed_tokens.weight"
_SHARED_KEY = "shared.weight"


# --------------------------------------------------------------------------------------------------------------
# Text cleaning
# --------------------------------------------------------------------------------------------------------------

_WHITESPACE_RE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning: ftfy repair, HTML entities unescaped twice, whitespace runs collapsed, stripped."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = _WHITESPACE_RE.sub(" ", text)
    return text.strip()


# --------------------------------------------------------------------------------------------------------------
# Key mapping between Wan's T5Encoder names and transformers' UMT5EncoderModel names
# (table verified numerically against Wan's T5Encoder: random weights, fp32, the same outputs)
# --------------------------------------------------------------------------------------------------------------

# (Wan regex, transformers template, transformers regex, Wan template)
_BLOCK_RULES = [
    ("norm1.weight", "layer.0.layer_norm.weight"),
    ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
    ("attn.k.weight", "layer.0.SelfAttention.k.weight"),
    ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
    ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
]
_GLOBAL_RULES = [
    ("token_embedding.weight", _SHARED_KEY),
    ("norm.weight", "encoder.final_layer_norm.weight"),
]

#: Wan name -> transformers name. ``N`` stands for the block index.
WAN_TO_TRANSFORMERS_RULES: dict[str, str] = {
    **dict(_GLOBAL_RULES),
    **{f"blocks.N.{w}": f"encoder.block.N.{t}" for w, t in _BLOCK_RULES},
}

_WAN_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_TF_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")
_W2T_BLOCK = dict(_BLOCK_RULES)
_T2W_BLOCK = {t: w for w, t in _BLOCK_RULES}
_W2T_GLOBAL = dict(_GLOBAL_RULES)
_T2W_GLOBAL = {t: w for w, t in _GLOBAL_RULES}


def wan_to_transformers_key(name: str) -> str | None:
    """Map one Wan umT5 key to its transformers ``UMT5EncoderModel`` key (``None`` if it has no counterpart)."""
    if name in _W2T_GLOBAL:
        return _W2T_GLOBAL[name]
    m = _WAN_BLOCK_RE.match(name)
    if m and m.group(2) in _W2T_BLOCK:
        return f"encoder.block.{m.group(1)}.{_W2T_BLOCK[m.group(2)]}"
    return None


def transformers_to_wan_key(name: str) -> str | None:
    """Inverse of :func:`wan_to_transformers_key`; ``encoder.embed_tokens.weight`` (the tied copy) maps to
    ``token_embedding.weight`` too."""
    if name == _TIED_EMBED_KEY:
        return "token_embedding.weight"
    if name in _T2W_GLOBAL:
        return _T2W_GLOBAL[name]
    m = _TF_BLOCK_RE.match(name)
    if m and m.group(2) in _T2W_BLOCK:
        return f"blocks.{m.group(1)}.{_T2W_BLOCK[m.group(2)]}"
    return None


def convert_wan_t5_to_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan umT5 state dict to transformers names. Keys without a counterpart are kept unchanged, so
    that a later strict check reports them as unexpected."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        out[wan_to_transformers_key(k) or k] = v
    return out


def convert_transformers_t5_to_wan(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``UMT5EncoderModel`` state dict to Wan names (the tied embedding copy is dropped)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k == _TIED_EMBED_KEY and _SHARED_KEY in state_dict:
            continue
        w = transformers_to_wan_key(k)
        if w is None:
            raise KeyError(f"no Wan name for transformers key {k!r}")
        out[w] = v
    return out


# --------------------------------------------------------------------------------------------------------------
# Config inference for the config-less Wan checkpoint
# --------------------------------------------------------------------------------------------------------------


def infer_umt5_config(
    state_dict: dict[str, torch.Tensor], num_heads: int | None = None, source: str = "state dict"
) -> UMT5Config:
    """Build a ``UMT5Config`` from the tensor shapes of a (transformers-named) umT5 encoder state dict.

    * ``vocab_size, d_model`` from ``shared.weight`` ([vocab, d_model]);
    * ``num_layers`` from the number of ``encoder.block.N`` indices;
    * ``d_ff`` from ``wi_1`` (Wan's ``ffn.fc1``, [d_ff, d_model]);
    * ``relative_attention_num_buckets, num_heads`` from the per-layer relative-position table
      (Wan's ``pos_embedding.embedding.weight``, an ``nn.Embedding(num_buckets, num_heads)``: one learned bias
      per bucket and head), so the head count *is* recoverable from the shapes and no head size has to be
      assumed; ``d_kv = q.out_features / num_heads``. For umT5-XXL this gives 64 heads of size 64.
      ``num_heads`` may be passed to assert the expected value; a mismatch with the table raises.
    * fixed by Wan's code: ``relative_attention_max_distance=128``, ``feed_forward_proj="gated-gelu"``
      (GELU-tanh gate), ``layer_norm_epsilon=1e-6``, pad id 0, eos id 1.
    """

    def need(key: str) -> torch.Tensor:
        if key not in state_dict:
            wan = transformers_to_wan_key(key)
            raise KeyError(f"{source}: cannot infer the umT5 config, tensor {wan or key!r} is missing")
        return state_dict[key]

    vocab_size, d_model = need(_SHARED_KEY).shape
    layer_ids = sorted({int(m.group(1)) for k in state_dict if (m := _TF_BLOCK_RE.match(k))})
    if not layer_ids:
        raise KeyError(f"{source}: no encoder blocks found (expected keys like 'blocks.0.attn.q.weight')")
    num_layers = len(layer_ids)
    if layer_ids != list(range(num_layers)):
        raise KeyError(f"{source}: block indices are not contiguous from 0: {layer_ids}")
    prefix = "encoder.block.0."
    d_ff = need(prefix + "layer.1.DenseReluDense.wi_1.weight").shape[0]
    inner_dim = need(prefix + "layer.0.SelfAttention.q.weight").shape[0]
    num_buckets, table_heads = need(prefix + "layer.0.SelfAttention.relative_attention_bias.weight").shape
    if num_heads is not None and num_heads != table_heads:
        raise ValueError(
            f"{source}: num_heads={num_heads} was requested but the relative-position table has {table_heads} heads"
        )
    if inner_dim % table_heads:
        raise ValueError(f"{source}: attention width {inner_dim} is not divisible by {table_heads} heads")
    config = UMT5Config(
        vocab_size=int(vocab_size),
        d_model=int(d_model),
        d_kv=int(inner_dim // table_heads),
        d_ff=int(d_ff),
        num_layers=int(num_layers),
        num_heads=int(table_heads),
        relative_attention_num_buckets=int(num_buckets),
        relative_attention_max_distance=WAN_T5_REL_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=WAN_T5_LAYER_NORM_EPS,
        pad_token_id=0,
        eos_token_id=1,
    )
    config.architectures = ["UMT5EncoderModel"]
    return config


# --------------------------------------------------------------------------------------------------------------
# Checkpoint readers
# --------------------------------------------------------------------------------------------------------------


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def load_wan_t5_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (a plain pickled state dict, Wan names) on CPU.

    The file is memory-mapped when possible, so the 11 GB real checkpoint is not copied into RAM twice."""
    _require(path, "Wan umT5 checkpoint")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return dict(sd)


def load_diffusers_text_encoder_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` or the shards listed in ``model.safetensors.index.json`` from ``folder``."""
    from safetensors.torch import load_file

    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            sd.update(load_file(_require(os.path.join(folder, shard), f"text encoder shard (listed in {index})")))
        missing = sorted(set(weight_map) - set(sd))
        if missing:
            raise KeyError(f"{index}: tensors listed in the index are absent from the shards: {missing}")
        return sd
    if os.path.exists(single):
        return load_file(single)
    raise FileNotFoundError(f"text encoder weights not found: neither {single} nor {index} exists")


def _load_strict(model: UMT5EncoderModel, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` (possibly on the meta device) and fail on any key mismatch.

    ``encoder.embed_tokens.weight`` is the tied copy of ``shared.weight``: either name is accepted for the
    embedding, and the tie is re-established after loading."""
    sd = dict(state_dict)
    if _TIED_EMBED_KEY in sd:
        tied = sd.pop(_TIED_EMBED_KEY)
        sd.setdefault(_SHARED_KEY, tied)
    expected = set(model.state_dict()) - {_TIED_EMBED_KEY}
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(
            f"{source}: state dict does not match UMT5EncoderModel.\n"
            f"  missing keys ({len(missing)}): {missing}\n  unexpected keys ({len(unexpected)}): {unexpected}"
        )
    ref = model.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ref[k].shape)}" for k, v in sd.items() if v.shape != ref[k].shape]
    if bad:
        raise ValueError(f"{source}: shape mismatch:\n  " + "\n  ".join(bad))
    model.load_state_dict(sd, strict=False, assign=True)
    model.set_input_embeddings(model.shared)  # re-tie encoder.embed_tokens to shared


def _build_model(config: UMT5Config, state_dict: dict[str, torch.Tensor], source: str) -> UMT5EncoderModel:
    config.dropout_rate = 0.0  # inference-only: make dropout a no-op whatever the module mode
    config.use_cache = False
    with torch.device("meta"):  # no random init of the (large) weights; they are assigned from the checkpoint
        model = UMT5EncoderModel(config)
    _load_strict(model, state_dict, source)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise RuntimeError(f"{source}: tensors left uninitialised after loading: {leftovers}")
    return model


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return resolved


def _load_tokenizer(folder: str):
    _require(folder, "tokenizer folder")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


# --------------------------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------------------------


class WanTextEncoder(CachedPromptEncoder):
    """Frozen umT5 encoder + tokenizer applying Wan's text recipe.

    ``encode(prompts)`` returns ``[B, text_len, dim]``: row ``t`` of prompt ``b`` is the encoder output for token
    ``t`` when ``t`` is below the prompt's true token count (``</s>`` included) and exactly zero otherwise.

    Cache: embeddings are computed once per prompt. A per-instance LRU dict keyed by the *cleaned* prompt keeps
    the trimmed embeddings (``[true_len, dim]``, on the encoder's device, in its dtype) of the last
    ``cache_size`` distinct prompts, so repeated prompts (the same negative prompt every step, a fixed
    validation set, ...) do not rerun the encoder. The cache assumes frozen weights: call :meth:`clear_cache`
    after changing weights, dtype or device (``.to()`` clears it automatically). ``cache_size=0`` disables it.
    """

    def __init__(
        self,
        model: UMT5EncoderModel,
        tokenizer,
        text_len: int = DEFAULT_TEXT_LEN,
        cache_size: int = 128,
    ):
        super().__init__(text_len, cache_size)
        self.model = model
        self.tokenizer = tokenizer
        self.model.eval()
        self.model.requires_grad_(False)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        *,
        text_len: int = DEFAULT_TEXT_LEN,
        num_heads: int | None = None,
        cache_size: int = 128,
    ) -> "WanTextEncoder":
        """Load from an original Wan folder or a diffusers folder (detected from the folder contents).

        ``dtype=None`` keeps the stored dtype (bf16 for Wan's checkpoint). ``num_heads`` only matters for the
        Wan layout, where it is checked against the relative-position table (see :func:`infer_umt5_config`).
        """
        path = os.fspath(path)
        _require(path, "text encoder folder")
        wan_ckpt = os.path.join(path, WAN_T5_CHECKPOINT)
        wan_tok = os.path.join(path, WAN_T5_TOKENIZER_DIR)
        diff_dir = os.path.join(path, DIFFUSERS_TEXT_ENCODER_DIR)
        diff_tok = os.path.join(path, DIFFUSERS_TOKENIZER_DIR)

        if os.path.exists(wan_ckpt) or (os.path.isdir(wan_tok) and not os.path.isdir(diff_dir)):
            # original Wan layout
            _require(wan_ckpt, "Wan umT5 checkpoint")
            _require(wan_tok, "Wan umT5 tokenizer folder")
            sd = convert_wan_t5_to_transformers(load_wan_t5_state_dict(wan_ckpt))
            config = infer_umt5_config(sd, num_heads=num_heads, source=wan_ckpt)
            model = _build_model(config, sd, wan_ckpt)
            tokenizer = _load_tokenizer(wan_tok)
        elif os.path.isdir(diff_dir):
            # diffusers layout
            config_path = _require(os.path.join(diff_dir, "config.json"), "text encoder config")
            with open(config_path, encoding="utf-8") as f:
                cfg = json.load(f)
            if cfg.get("model_type") != "umt5":
                raise ValueError(f"{config_path}: expected model_type 'umt5', got {cfg.get('model_type')!r}")
            config = UMT5Config.from_dict(cfg)
            model = _build_model(config, load_diffusers_text_encoder_state_dict(diff_dir), diff_dir)
            _require(diff_tok, "tokenizer folder")
            tokenizer = _load_tokenizer(diff_tok)
        else:
            raise FileNotFoundError(
                f"no text encoder found in {path}: expected either {WAN_T5_CHECKPOINT} + "
                f"{WAN_T5_TOKENIZER_DIR}/ (Wan layout) or {DIFFUSERS_TEXT_ENCODER_DIR}/ + "
                f"{DIFFUSERS_TOKENIZER_DIR}/ (diffusers layout)"
            )

        dtype = _resolve_dtype(dtype)
        if dtype is not None or device is not None:
            model.to(device=device, dtype=dtype)
        return cls(model, tokenizer, text_len=text_len, cache_size=cache_size)

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    # ---------------------------------------------------------------- recipe
    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean and tokenize ``prompts`` as Wan does; returns ``(input_ids, attention_mask)``, both
        ``[B, text_len]`` on CPU. Warns when a prompt is truncated."""
        return self._tokenize_cleaned([clean_prompt(p) for p in prompts], stacklevel=3)

    def _tokenize_cleaned(self, texts: list[str], stacklevel: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        # cleaning is not idempotent for nested HTML entities, so already-cleaned texts come through here
        full = self.tokenizer(texts, add_special_tokens=True, truncation=False, padding=False)["input_ids"]
        for text, ids in zip(texts, full):
            if len(ids) > self.text_len:
                warnings.warn(
                    f"prompt truncated to {self.text_len} tokens: {len(ids) - self.text_len} of its {len(ids)} "
                    f"tokens were dropped (prompt starts {text[:60]!r})",
                    stacklevel=stacklevel,
                )
        out = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]

    def _run(self, texts: list[str]) -> list[torch.Tensor]:
        """Encode cleaned texts; returns one trimmed ``[true_len, dim]`` tensor per text."""
        ids, mask = self._tokenize_cleaned(texts, stacklevel=4)  # warning points at encode()'s caller
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [h[:n].clone() for h, n in zip(hidden, lengths)]

    # the cache is keyed by the cleaned prompt (messy and clean versions of a prompt share an entry)
    def _key(self, prompt: str) -> str:
        return clean_prompt(prompt)

    def _embed(self, keys: list, prompts: list) -> list:
        return self._run(keys)
