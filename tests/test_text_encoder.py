"""Tests for the umT5 text encoder (causvid.models.text_encoder) on tiny random weights."""

import math
import os
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from causvid.models.text_encoder import (
    WAN_T5_CHECKPOINT,
    WanTextEncoder,
    clean_prompt,
)
from causvid.tiny_wan.text_encoder import write_tiny_text_encoder

TEXT_LEN = 32
PROMPTS = [
    "a red cat runs on the beach",
    "dog",
    "the camera slowly flies over a dark forest at night while snow falls",
    "",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_te")
    wan = write_tiny_text_encoder(root / "wan", layout="wan", seed=3)
    diffusers = write_tiny_text_encoder(root / "diffusers", layout="diffusers", seed=3)
    sharded = write_tiny_text_encoder(root / "sharded", layout="diffusers", seed=3, shards=3)
    return {"wan": str(wan), "diffusers": str(diffusers), "sharded": str(sharded), "root": root}


@pytest.fixture(scope="module")
def wan_te(folders):
    return WanTextEncoder.from_pretrained(folders["wan"], dtype=torch.float32, text_len=TEXT_LEN)


def _true_lengths(tokenizer, prompts, text_len):
    ids = tokenizer([clean_prompt(p) for p in prompts], add_special_tokens=True)["input_ids"]
    return [min(len(i), text_len) for i in ids]


# ---------------------------------------------------------------------------------------------- layouts


def test_wan_and_diffusers_layouts_load_equal(folders, wan_te, tmp_path):
    """Both layouts written without the loader's rename table: the diffusers one by transformers' own
    ``UMT5EncoderModel.save_pretrained``, the Wan one under the names of Wan's module tree (wan.md, ``_REF_*``
    below). Each loads to the transformers model's own output; the tiny writer's layouts (one sharded) agree."""
    tokenizer_dir = os.path.join(folders["wan"], "google", "umt5-xxl")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu")
    torch.manual_seed(11)
    model = UMT5EncoderModel(config).eval()
    diffusers = tmp_path / "diffusers"
    model.save_pretrained(diffusers / "text_encoder")
    tokenizer.save_pretrained(diffusers / "tokenizer")
    wan = tmp_path / "wan"
    shutil.copytree(tokenizer_dir, wan / "google" / "umt5-xxl")
    to_wan = {t: w for w, t in _REF_GLOBAL.items()}
    block_to_wan = {t: w for w, t in _REF_BLOCK.items()}
    sd = {}
    for key, value in model.state_dict().items():
        if key == "encoder.embed_tokens.weight":  # the tied copy of shared.weight; Wan stores one
            continue
        if key in to_wan:
            sd[to_wan[key]] = value
        else:  # encoder.block.N.<rest>
            _, _, n, rest = key.split(".", 3)
            sd[f"blocks.{n}.{block_to_wan[rest]}"] = value
    torch.save(sd, wan / WAN_T5_CHECKPOINT)
    with torch.no_grad():
        ref = _reference_recipe(str(wan), PROMPTS,
                                lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state)
    for folder in (wan, diffusers):
        te = WanTextEncoder.from_pretrained(folder, dtype=torch.float32, text_len=TEXT_LEN)
        torch.testing.assert_close(te.encode(PROMPTS), ref, atol=1e-5, rtol=1e-5)

    a = wan_te.encode(PROMPTS)
    for name in ("diffusers", "sharded"):
        te = WanTextEncoder.from_pretrained(folders[name], dtype=torch.float32, text_len=TEXT_LEN)
        assert te.tokenizer.get_vocab() == wan_te.tokenizer.get_vocab()
        assert torch.equal(te.encode(PROMPTS), a), name


def test_dtype_none_keeps_stored_bf16_and_infers_config(folders):
    te = WanTextEncoder.from_pretrained(folders["wan"])
    assert te.dtype == torch.bfloat16 and te.text_len == 512
    cfg = te.model.config
    assert (cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (32, 2, 2, 16, 64)
    assert cfg.relative_attention_num_buckets == 32 and cfg.relative_attention_max_distance == 128
    assert cfg.feed_forward_proj == "gated-gelu"
    assert te.model.encoder.embed_tokens.weight is te.model.shared.weight
    assert not any(p.requires_grad for p in te.parameters())
    out = te.encode(["a cat"])
    assert out.shape == (1, 512, 32) and out.dtype == torch.bfloat16


def test_head_count_read_from_relative_bias_table(tmp_path):
    folder = write_tiny_text_encoder(tmp_path / "h4", layout="wan", num_heads=4, d_kv=8, num_buckets=16)
    te = WanTextEncoder.from_pretrained(folder, text_len=8)
    cfg = te.model.config
    assert (cfg.num_heads, cfg.d_kv, cfg.relative_attention_num_buckets) == (4, 8, 16)
    WanTextEncoder.from_pretrained(folder, num_heads=4)  # matching override is accepted
    with pytest.raises(ValueError, match="num_heads=8"):
        WanTextEncoder.from_pretrained(folder, num_heads=8)


# ---------------------------------------------------------------------------------------------- references

# Wan -> transformers names, written out independently of the module under test (wan.md section 8).
_REF_GLOBAL = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
_REF_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def _reference_recipe(folder, prompts, forward):
    """Wan's recipe done by hand: tokenize, run ``forward(ids, mask)``, trim, zero-pad."""
    tok = AutoTokenizer.from_pretrained(os.path.join(folder, "google", "umt5-xxl"))
    batch = tok(
        [clean_prompt(p) for p in prompts], padding="max_length", max_length=TEXT_LEN, truncation=True,
        add_special_tokens=True, return_tensors="pt",
    )
    assert (batch.attention_mask == 0).any(), "the batch should contain padding"
    hidden = forward(batch.input_ids, batch.attention_mask)
    out = torch.zeros_like(hidden)
    for i, n in enumerate(batch.attention_mask.sum(1).tolist()):
        out[i, :n] = hidden[i, :n]
    return out


def test_wan_layout_equals_direct_transformers_model(folders, wan_te):
    wan_sd = torch.load(os.path.join(folders["wan"], WAN_T5_CHECKPOINT), map_location="cpu")
    sd = {}
    for k, v in wan_sd.items():
        if k in _REF_GLOBAL:
            sd[_REF_GLOBAL[k]] = v.float()
        else:
            _, n, rest = k.split(".", 2)
            sd[f"encoder.block.{n}.{_REF_BLOCK[rest]}"] = v.float()
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    vocab = sd["shared.weight"].shape[0]
    config = UMT5Config(
        vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    )
    model = UMT5EncoderModel(config).eval()
    model.load_state_dict(sd, strict=True)

    with torch.no_grad():
        ref = _reference_recipe(
            folders["wan"], PROMPTS, lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state
        )
    got = wan_te.encode(PROMPTS)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _wan_t5_forward(sd, ids, mask, num_heads, max_dist=128, eps=1e-6):
    """Plain-torch forward of Wan's umT5 encoder semantics on the Wan-named state dict (shared_pos=False)."""
    sd = {k: v.float() for k, v in sd.items()}
    B, L = ids.shape

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def buckets(num_buckets):
        pos = torch.arange(L)
        rel = pos[None, :] - pos[:, None]  # key position - query position
        half = num_buckets // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        far = exact + (torch.log(rel.clamp(min=1).float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
        return out + torch.where(rel < exact, rel, far.clamp(max=half - 1))

    x = sd["token_embedding.weight"][ids]
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    neg = torch.finfo(torch.float32).min
    for i in range(n_layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (
            (h @ sd[p + f"attn.{n}.weight"].T).view(B, L, num_heads, -1) for n in ("q", "k", "v")
        )
        table = sd[p + "pos_embedding.embedding.weight"]
        bias = table[buckets(table.shape[0])].permute(2, 0, 1)[None]  # [1, heads, Lq, Lk]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) + bias  # no 1/sqrt(d) scaling in T5
        scores = scores.masked_fill(mask[:, None, None, :] == 0, neg)
        attn = scores.softmax(-1)
        x = x + torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(B, L, -1) @ sd[p + "attn.o.weight"].T
        h = rms(x, sd[p + "norm2.weight"])
        gate = F.gelu(h @ sd[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * gate) @ sd[p + "ffn.fc2.weight"].T
    return rms(x, sd["norm.weight"])


def test_wan_layout_equals_plain_torch_wan_semantics(folders, wan_te):
    """Checks the name mapping itself (e.g. gate.0 vs fc1, norm1 vs norm2) against Wan's module semantics."""
    wan_sd = torch.load(os.path.join(folders["wan"], WAN_T5_CHECKPOINT), map_location="cpu")
    heads = next(v for k, v in wan_sd.items() if k.endswith("pos_embedding.embedding.weight")).shape[1]
    ref = _reference_recipe(folders["wan"], PROMPTS, lambda ids, mask: _wan_t5_forward(wan_sd, ids, mask, heads))
    torch.testing.assert_close(wan_te.encode(PROMPTS), ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- recipe


def test_output_shape_and_zero_padding(wan_te):
    out = wan_te.encode(PROMPTS)
    assert out.shape == (len(PROMPTS), TEXT_LEN, wan_te.dim)
    lengths = _true_lengths(wan_te.tokenizer, PROMPTS, TEXT_LEN)
    assert len(set(lengths)) > 1 and min(lengths) >= 1
    for row, n in zip(out, lengths):
        assert torch.all(row[n:] == 0)
        assert torch.all(row[:n].abs().sum(-1) > 0)


def test_text_cleaning():
    assert clean_prompt("  a\n\t cat   runs  ") == "a cat runs"
    assert clean_prompt("cats &amp;amp; dogs") == "cats & dogs"  # unescaped twice
    assert clean_prompt("&lt;b&gt; x&nbsp;y") == "<b> x y"
    assert clean_prompt("caf\u00c3\u00a9") == "caf\u00e9"  # ftfy repairs mojibake


def test_cleaning_applies_in_encode_and_shares_cache(folders):
    te = WanTextEncoder.from_pretrained(folders["wan"], dtype=torch.float32, text_len=TEXT_LEN)
    a = te.encode(["a cat &amp;amp; a dog"])
    b = te.encode(["  a   cat & a\ndog "])
    assert torch.equal(a, b)
    assert te.cache_misses == 1 and te.cache_hits == 1


def test_overlong_prompt_truncated_with_warning(wan_te):
    prompt = " ".join(["red cat runs over the dark sea"] * 20)
    n_full = len(wan_te.tokenizer(clean_prompt(prompt))["input_ids"])
    assert n_full > TEXT_LEN
    wan_te.clear_cache()
    with pytest.warns(UserWarning, match=f"{n_full - TEXT_LEN} of its {n_full} tokens were dropped"):
        out = wan_te.encode([prompt, "dog"])
    assert torch.all(out[0].abs().sum(-1) > 0)  # all text_len rows are real tokens
    with pytest.warns(UserWarning, match="dropped"):
        ids, mask = wan_te.tokenize([prompt])
    assert ids.shape == (1, TEXT_LEN) and ids[0, -1].item() == wan_te.tokenizer.eos_token_id and mask.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wan_te.encode(["dog"])  # short prompts do not warn


def test_repeated_prompts_hit_cache(folders):
    te = WanTextEncoder.from_pretrained(folders["wan"], dtype=torch.float32, text_len=TEXT_LEN)
    calls = []
    te.model.register_forward_hook(lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)

    first = te.encode(["a cat", "a dog", "a cat"])
    assert calls == [2]  # duplicates inside a batch are encoded once
    again = te.encode(["a dog", "a cat", "a cat"])
    assert calls == [2]  # all cached: encoder not rerun
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])
    te.encode(["a bird", "a cat"])
    assert calls == [2, 1]  # only the new prompt is encoded

    again[0].fill_(7.0)  # returned tensors are copies: the cache is not affected
    assert torch.equal(te.encode(["a dog"])[0], first[1])

    te.clear_cache()
    te.encode(["a cat"])
    assert calls == [2, 1, 1]

    te.cache_size = 0
    te.encode(["a cat"])
    te.encode(["a cat"])
    assert calls == [2, 1, 1, 1, 1]


def test_cache_is_lru_bounded(folders):
    te = WanTextEncoder.from_pretrained(folders["wan"], text_len=8, cache_size=2)
    te.encode(["a", "b", "c"])
    assert list(te._cache) == ["b", "c"]


# ---------------------------------------------------------------------------------------------- errors


def test_missing_files_named(folders, tmp_path):
    with pytest.raises(FileNotFoundError, match=WAN_T5_CHECKPOINT):
        WanTextEncoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        WanTextEncoder.from_pretrained(tmp_path / "does_not_exist")

    wan = shutil.copytree(folders["wan"], tmp_path / "wan")
    shutil.rmtree(wan / "google")
    with pytest.raises(FileNotFoundError, match="umt5-xxl"):
        WanTextEncoder.from_pretrained(wan)

    wan2 = shutil.copytree(folders["wan"], tmp_path / "wan2")
    os.remove(wan2 / WAN_T5_CHECKPOINT)
    with pytest.raises(FileNotFoundError, match=WAN_T5_CHECKPOINT):
        WanTextEncoder.from_pretrained(wan2)

    dif = shutil.copytree(folders["diffusers"], tmp_path / "dif")
    os.remove(dif / "text_encoder" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        WanTextEncoder.from_pretrained(dif)

    sharded = shutil.copytree(folders["sharded"], tmp_path / "sharded")
    os.remove(sharded / "text_encoder" / "model-00002-of-00003.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00003.safetensors"):
        WanTextEncoder.from_pretrained(sharded)

    dif2 = shutil.copytree(folders["diffusers"], tmp_path / "dif2")
    shutil.rmtree(dif2 / "tokenizer")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        WanTextEncoder.from_pretrained(dif2)


def test_key_mismatch_lists_keys(folders, tmp_path):
    wan = shutil.copytree(folders["wan"], tmp_path / "wan")
    path = wan / WAN_T5_CHECKPOINT
    sd = torch.load(path)
    del sd["blocks.1.ffn.fc2.weight"]
    sd["blocks.1.extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(KeyError) as err:
        WanTextEncoder.from_pretrained(wan)
    msg = str(err.value)
    assert WAN_T5_CHECKPOINT in msg
    assert "encoder.block.1.layer.1.DenseReluDense.wo.weight" in msg and "blocks.1.extra.weight" in msg


def test_diffusers_checkpoint_with_encoder_embed_tokens_name(folders, wan_te, tmp_path):
    """Checkpoints may carry the embedding under its tied name ``encoder.embed_tokens.weight`` only."""
    from safetensors.torch import load_file, save_file

    dif = shutil.copytree(folders["diffusers"], tmp_path / "dif")
    path = dif / "text_encoder" / "model.safetensors"
    sd = load_file(path)
    sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    save_file(sd, path)
    te = WanTextEncoder.from_pretrained(dif, dtype=torch.float32, text_len=TEXT_LEN)
    assert te.model.encoder.embed_tokens.weight is te.model.shared.weight
    assert torch.equal(te.encode(PROMPTS[:2]), wan_te.encode(PROMPTS[:2]))


def test_to_clears_cache(folders):
    te = WanTextEncoder.from_pretrained(folders["wan"], text_len=8)
    te.encode(["a cat"])
    assert len(te._cache) == 1
    te.to(torch.float32)
    assert len(te._cache) == 0 and te.dtype == torch.float32
    assert te.encode(["a cat"]).dtype == torch.float32
