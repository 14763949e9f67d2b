"""Loading: Wan folder, sharded Wan folder, diffusers folder and published training `.pt` files, written here in
the real key layouts and dtypes, load to the same module; bad files fail with messages naming file and keys."""
import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from causvid.models.wan import CheckpointError, WanDiT
from causvid.tiny_wan.dit import random_dit, write_diffusers_dit, write_wan_dit


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def source():
    return random_dit("tiny", seed=1)


def test_wan_names_are_the_original_layout(source):
    # diffusers' converter is an independent description of Wan's original key names: it must map ours strictly
    converted = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in source.state_dict().items()})
    c = source.config
    ref = WanTransformer3DModel(patch_size=c.patch_size, num_attention_heads=c.num_heads, attention_head_dim=c.head_dim,
                                in_channels=16, out_channels=16, text_dim=c.text_dim, freq_dim=c.freq_dim,
                                ffn_dim=c.ffn_dim, num_layers=c.num_layers, cross_attn_norm=True,
                                qk_norm="rms_norm_across_heads", eps=c.eps)
    ref.load_state_dict(converted, strict=True)
    assert len(source.state_dict()) == 25 * c.num_layers + 19


def test_wan_sharded_and_diffusers_folders_load_identically(tmp_path, source):
    wan = WanDiT.from_pretrained(write_wan_dit(source, tmp_path / "wan"))
    assert json.loads((tmp_path / "wan" / "config.json").read_text())["text_len"] == 16
    sharded = WanDiT.from_pretrained(write_wan_dit(source, tmp_path / "wan_sharded", shards=3))
    write_diffusers_dit(source, tmp_path / "diffusers")
    diff = WanDiT.from_pretrained(tmp_path / "diffusers", text_len=16)  # the parent folder, as users pass it
    diff_inner = WanDiT.from_pretrained(tmp_path / "diffusers" / "transformer", text_len=16)
    for model in (wan, sharded, diff, diff_inner):
        assert model.config == source.config
        assert same_weights(model, source)
        assert all(p.dtype == torch.float32 for p in model.parameters())


def published_checkpoint(source, path, ema=True, prefix="model._fsdp_wrapped_module."):
    state = {prefix + k: v.to(torch.bfloat16) for k, v in source.state_dict().items()}
    obj = {"generator": state, "critic": {"model.x": torch.zeros(1)}}
    if ema:
        obj["generator_ema"] = {"model." + k: (v + 1).to(torch.bfloat16) for k, v in source.state_dict().items()}
    torch.save(obj, path)
    return path


def test_published_pt_with_and_without_ema(tmp_path, source):
    path = published_checkpoint(source, tmp_path / "model.pt")
    model = WanDiT.from_pretrained(path, preset="tiny")
    ema = WanDiT.from_pretrained(path, preset="tiny", use_ema=True, dtype=torch.bfloat16, device="cpu")
    expected = {k: v.to(torch.bfloat16).float() for k, v in source.state_dict().items()}
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    assert all(p.dtype == torch.bfloat16 for p in ema.parameters())
    assert torch.equal(ema.head.head.weight, (source.head.head.weight + 1).to(torch.bfloat16))
    # Causal-Forcing style file with only generator_ema: a clear pointer to use_ema
    torch.save({"generator_ema": torch.load(path)["generator_ema"]}, tmp_path / "ema_only.pt")
    with pytest.raises(CheckpointError, match=r"ema_only\.pt.*no 'generator'.*use_ema=True"):
        WanDiT.from_pretrained(tmp_path / "ema_only.pt", preset="tiny")
    no_ema = published_checkpoint(source, tmp_path / "no_ema.pt", ema=False, prefix="model.")
    with pytest.raises(CheckpointError, match=r"no_ema\.pt.*no 'generator_ema'"):
        WanDiT.from_pretrained(no_ema, preset="tiny", use_ema=True)


def test_sizes_inferred_from_shapes_and_num_heads_required(tmp_path, source):
    path = published_checkpoint(source, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="num_heads"):
        WanDiT.from_pretrained(path)  # tiny dims match no released model: shapes cannot tell the heads
    model = WanDiT.from_pretrained(path, num_heads=2, text_len=16)
    assert model.config == source.config  # dim, ffn, layers, text_dim, freq_dim came from tensor shapes
    with pytest.raises(CheckpointError, match=r"model\.pt: num_layers=4 \(preset 'tiny-4layer'\).*num_layers=2"):
        WanDiT.from_pretrained(path, preset="tiny-4layer")


def test_mismatched_checkpoint_lists_keys_and_names_file(tmp_path, source):
    state = {k: v.clone() for k, v in source.state_dict().items()}
    del state["blocks.1.ffn.2.bias"]
    state["blocks.1.extra.weight"] = torch.zeros(2)
    torch.save({"generator": state}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        WanDiT.from_pretrained(tmp_path / "broken.pt", preset="tiny")
    msg = str(err.value)
    assert "broken.pt" in msg and "blocks.1.ffn.2.bias" in msg and "blocks.1.extra.weight" in msg
    torch.save({"encoder.conv1.weight": torch.zeros(1)}, tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match=r"vae\.pth: not a Wan DiT state dict"):
        WanDiT.from_pretrained(tmp_path / "vae.pth", preset="tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: no diffusion_pytorch_model"):
        WanDiT.from_pretrained(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such file"):
        WanDiT.from_pretrained(tmp_path / "nowhere")


def test_missing_shard_is_named(tmp_path, source):
    folder = write_wan_dit(source, tmp_path / "wan", shards=2)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors is listed but missing"):
        WanDiT.from_pretrained(folder)


def test_x0_prediction_travels_through_config_json(tmp_path):
    """Wan's config.json has no `prediction`; ours writes it for an x0 model, and both the folder and a training
    checkpoint loaded against that folder come back as x0 models (the weights alone cannot tell)."""
    from causvid.pipelines.text_to_video import load_dit

    model = random_dit("tiny", prediction="x0")
    folder = write_wan_dit(model, tmp_path / "wan")
    assert json.loads((folder / "config.json").read_text())["prediction"] == "x0"
    flow_folder = write_wan_dit(random_dit("tiny"), tmp_path / "flow")
    assert "prediction" not in json.loads((flow_folder / "config.json").read_text())
    torch.save({"generator": model.state_dict()}, tmp_path / "model.pt")  # a training checkpoint, float32
    for loaded in (WanDiT.from_pretrained(folder), load_dit(folder, tmp_path / "model.pt")):
        assert loaded.config.prediction == "x0"
        assert same_weights(loaded, model)
