"""A tiny, random umT5 text encoder written in the same on-disk layouts as the real Wan2.1 one.

``write_tiny_text_encoder(folder, layout="wan")`` writes what an original Wan folder holds for the text encoder:

* ``models_t5_umt5-xxl-enc-bf16.pth``: a pickled state dict with Wan's key names (bf16 by default);
* ``google/umt5-xxl/``: a transformers fast tokenizer (``tokenizer.json`` + ``tokenizer_config.json``).

``layout="diffusers"`` writes what a ``*-Diffusers`` folder holds:

* ``text_encoder/config.json`` + ``model.safetensors`` (or ``shards`` shards + ``model.safetensors.index.json``),
  transformers ``UMT5EncoderModel`` names;
* ``tokenizer/``.

The same ``seed`` (and sizes) gives the same tokenizer and the same weights in both layouts, so the two can be
compared. The tokenizer is trained on the spot with the ``tokenizers`` library (a BPE model with a
Metaspace pre-tokenizer, as umT5's SentencePiece model marks word starts with U+2581) on synthetic sentences;
its special tokens follow umT5: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, and ``</s>`` is appended to every
sequence.

Head count: the loader reads it from the per-layer relative-position table (``[num_buckets, num_heads]``), so any
``num_heads`` / ``d_kv`` pair works in both layouts and the loader has no tiny-specific branch. Defaults:
d_model 32, 2 layers, 2 heads of size 16, d_ff 64, 32 buckets.
"""

from __future__ import annotations

import json
import os
import random

import torch

from causvid.models.text_encoder import (
    DIFFUSERS_TEXT_ENCODER_DIR,
    DIFFUSERS_TOKENIZER_DIR,
    WAN_T5_CHECKPOINT,
    WAN_T5_TOKENIZER_DIR,
    convert_transformers_t5_to_wan,
)

__all__ = ["build_tiny_tokenizer", "tiny_umt5_config", "tiny_umt5_state_dict", "write_tiny_text_encoder"]

_SYLLABLES = [
    "ka", "ro", "mi", "tan", "le", "su", "vo", "pi", "na", "dre", "sho", "ul", "ex", "qua", "bri", "zen",
    "lo", "ta", "fi", "gu", "mar", "ne", "os", "ti", "ber", "ly", "cha", "wen", "do", "ri",
]
_ENGLISH = (
    "a an the of in on at with and under over near cat dog bird horse fish man woman child car boat train "
    "runs walks flies swims jumps sits sleeps plays red blue green yellow black white bright dark small big "
    "old young city forest beach river mountain sky sea road street night day morning rain snow sun moon "
    "video scene camera slowly quickly close view shot light shadow water fire tree flower house window"
).split()


def build_tiny_tokenizer(seed: int = 0, vocab_size: int = 512):
    """Train a small BPE tokenizer (umT5 special-token ids) and wrap it as a transformers fast tokenizer.

    (umT5's own model is a SentencePiece Unigram; BPE is used here because on such a small corpus it learns
    whole-word pieces for common words, which keeps test prompts short. The loader does not care.)"""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)] + _ENGLISH
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(800)]
    # plenty of English-only sentences so that common words become single pieces
    sentences += [" ".join(rng.choice(_ENGLISH) for _ in range(rng.randint(3, 12))) for _ in range(800)]

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],  # ids 0, 1, 2 as in umT5
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    ids = [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")]
    if ids != [0, 1, 2]:
        raise RuntimeError(f"tiny tokenizer special ids are {ids}, expected [0, 1, 2]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_umt5_config(
    vocab_size: int,
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    d_kv: int = 16,
    d_ff: int = 64,
    num_buckets: int = 32,
):
    """The ``UMT5Config`` of the tiny encoder (same fixed settings as Wan's umT5)."""
    from transformers import UMT5Config

    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        pad_token_id=0,
        eos_token_id=1,
    )
    config.architectures = ["UMT5EncoderModel"]
    return config


def tiny_umt5_state_dict(config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights in transformers names (``shared.weight`` only; no tied duplicate).

    Drawn from a private generator (the global RNG is untouched). Layer-norm weights are ``1 + noise`` rather
    than ones so that a wrong name mapping changes the outputs."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return torch.randn(*shape, generator=g) * std + mean

    d, inner, ff, heads = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.num_heads
    sd = {"shared.weight": randn(config.vocab_size, d)}
    for i in range(config.num_layers):
        p = f"encoder.block.{i}."
        sd[p + "layer.0.SelfAttention.q.weight"] = randn(inner, d, std=(d * config.d_kv) ** -0.5)
        sd[p + "layer.0.SelfAttention.k.weight"] = randn(inner, d, std=d**-0.5)
        sd[p + "layer.0.SelfAttention.v.weight"] = randn(inner, d, std=d**-0.5)
        sd[p + "layer.0.SelfAttention.o.weight"] = randn(d, inner, std=inner**-0.5)
        sd[p + "layer.0.SelfAttention.relative_attention_bias.weight"] = randn(config.relative_attention_num_buckets, heads)
        sd[p + "layer.0.layer_norm.weight"] = randn(d, std=0.2, mean=1.0)
        sd[p + "layer.1.DenseReluDense.wi_0.weight"] = randn(ff, d, std=d**-0.5)
        sd[p + "layer.1.DenseReluDense.wi_1.weight"] = randn(ff, d, std=d**-0.5)
        sd[p + "layer.1.DenseReluDense.wo.weight"] = randn(d, ff, std=ff**-0.5)
        sd[p + "layer.1.layer_norm.weight"] = randn(d, std=0.2, mean=1.0)
    sd["encoder.final_layer_norm.weight"] = randn(d, std=0.2, mean=1.0)
    return sd


def _save_safetensors(state_dict: dict[str, torch.Tensor], folder: str, shards: int) -> None:
    from safetensors.torch import save_file

    if shards <= 1:
        save_file(state_dict, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    keys = list(state_dict)
    per = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state_dict[k] for k in keys[s * per : (s + 1) * per]}
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_tiny_text_encoder(
    folder: str | os.PathLike,
    layout: str = "wan",
    seed: int = 0,
    *,
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    d_kv: int = 16,
    d_ff: int = 64,
    num_buckets: int = 32,
    vocab_size: int = 512,
    dtype: torch.dtype = torch.bfloat16,
    shards: int = 1,
) -> str:
    """Write a tiny random umT5 text encoder + tokenizer into ``folder`` in the ``"wan"`` or ``"diffusers"``
    layout (see the module docstring) and return ``folder``.

    ``vocab_size`` is the tokenizer training target; the model's vocabulary is the trained tokenizer's size.
    ``shards`` > 1 splits the diffusers safetensors into shards with an index json."""
    if layout not in ("wan", "diffusers"):
        raise ValueError(f"layout must be 'wan' or 'diffusers', got {layout!r}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)

    tokenizer = build_tiny_tokenizer(seed=seed, vocab_size=vocab_size)
    config = tiny_umt5_config(
        len(tokenizer), d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
        num_buckets=num_buckets,
    )
    sd = {k: v.to(dtype).contiguous() for k, v in tiny_umt5_state_dict(config, seed=seed).items()}

    if layout == "wan":
        tokenizer.save_pretrained(os.path.join(folder, WAN_T5_TOKENIZER_DIR))
        torch.save(convert_transformers_t5_to_wan(sd), os.path.join(folder, WAN_T5_CHECKPOINT))
    else:
        tokenizer.save_pretrained(os.path.join(folder, DIFFUSERS_TOKENIZER_DIR))
        te_dir = os.path.join(folder, DIFFUSERS_TEXT_ENCODER_DIR)
        os.makedirs(te_dir, exist_ok=True)
        config.dtype = dtype
        config.save_pretrained(te_dir)
        _save_safetensors(sd, te_dir, shards)
    return folder
