"""Wan VAE wrapper: loading both layouts, the Wan-layout writer, normalisation, and streaming decode (tiny, CPU)."""

import re

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from causvid.models.vae import VAECheckpointError, WanVAE, infer_vae_config
from causvid.tiny_wan.vae import diffusers_to_wan_vae_state_dict, tiny_vae_model, write_tiny_vae

SEED = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same random weights written in the Wan layout and in the diffusers layout."""
    wan = tmp_path_factory.mktemp("wan")
    dif = tmp_path_factory.mktemp("diffusers")
    model = write_tiny_vae(wan, layout="wan", seed=SEED)
    model2 = write_tiny_vae(dif, layout="diffusers", seed=SEED)
    return wan, dif, model, model2


@pytest.fixture(scope="module")
def vae(folders):
    return WanVAE.from_pretrained(folders[0])


def _assert_same_state(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------------------------------------------
# Wan-layout writer vs diffusers' converter (the independent reference)
# ---------------------------------------------------------------------------------------------------------------------


def test_wan_layout_writer_round_trips_through_diffusers_converter():
    model = tiny_vae_model(seed=1)
    sd = model.state_dict()
    wan = diffusers_to_wan_vae_state_dict(sd)
    assert len(wan) == len(sd) == 194  # the real Wan2.1_VAE.pth has 194 tensors too
    # original names only
    for k in wan:
        assert not re.search(r"down_blocks|up_blocks|mid_block|norm_out|conv_in|conv_out|quant_conv|norm1|norm2|"
                             r"conv_shortcut|resnets|upsamplers", k), k
    for k in ("conv1.weight", "conv2.bias", "encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma",
              "encoder.downsamples.3.shortcut.weight", "encoder.downsamples.5.time_conv.weight",
              "encoder.downsamples.2.resample.1.weight", "encoder.middle.1.to_qkv.weight",
              "encoder.middle.2.residual.6.weight", "encoder.head.2.weight", "decoder.head.0.gamma",
              "decoder.upsamples.4.shortcut.weight", "decoder.upsamples.3.time_conv.weight",
              "decoder.upsamples.11.resample.1.weight", "decoder.upsamples.14.residual.3.gamma"):
        assert k in wan, k
    back = convert_wan_vae_to_diffusers(wan)
    _assert_same_state(back, sd)
    fresh = AutoencoderKLWan(**{k: v for k, v in model.config.items() if not k.startswith("_")})
    fresh.load_state_dict(back, strict=True)


def test_round_trip_and_config_inference_at_real_size():
    """No tiny-specific branch: the real Wan2.1 VAE's key set round-trips and its config is read off the shapes."""
    with torch.device("meta"):
        real = AutoencoderKLWan()
    sd = real.state_dict()
    back = convert_wan_vae_to_diffusers(diffusers_to_wan_vae_state_dict(sd))
    assert set(back) == set(sd)
    assert all(back[k].shape == sd[k].shape for k in sd)
    cfg = infer_vae_config(back)
    for k, v in cfg.items():
        assert real.config[k] == v, k
    assert cfg["base_dim"] == 96 and cfg["num_res_blocks"] == 2 and cfg["dim_mult"] == [1, 2, 4, 4]


def test_wan_layout_rejects_unsupported_res_blocks(tmp_path):
    with pytest.raises(ValueError):
        write_tiny_vae(tmp_path, layout="wan", num_res_blocks=1)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def test_both_layouts_load_identically(folders):
    wan, dif, model, model2 = folders
    _assert_same_state(model.state_dict(), model2.state_dict())
    vaes = [WanVAE.from_pretrained(p) for p in
            (wan, wan / "Wan2.1_VAE.pth", dif, dif / "vae", dif / "vae" / "config.json")]
    for v in vaes:
        assert not v.training and v.dtype == torch.float32
        assert not any(p.requires_grad for p in v.parameters())
        _assert_same_state(v.model.state_dict(), model.state_dict())
        for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "latents_mean",
                  "latents_std", "decoder_base_dim", "is_residual"):
            assert v.model.config[k] == model.config[k], k
    torch.manual_seed(0)
    video = torch.rand(1, 5, 3, 16, 16) * 2 - 1
    lat = torch.randn(1, 3, 16, 2, 2)
    with torch.no_grad():
        z0, x0 = vaes[0].encode(video), vaes[0].decode(lat)
        for v in vaes[1:]:
            assert torch.equal(v.encode(video), z0)
            assert torch.equal(v.decode(lat), x0)


def test_base_dim_inferred(tmp_path):
    write_tiny_vae(tmp_path, layout="wan", base_dim=4, seed=0)
    v = WanVAE.from_pretrained(tmp_path / "Wan2.1_VAE.pth")
    assert v.model.config.base_dim == 4 and v.model.config.z_dim == 16


# ---------------------------------------------------------------------------------------------------------------------
# Encode / decode and normalisation
# ---------------------------------------------------------------------------------------------------------------------


def test_encode_decode_shapes_and_normalisation(vae, folders):
    model = folders[2]
    mean = torch.tensor(model.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(model.config.latents_std).view(1, 16, 1, 1, 1)
    torch.manual_seed(1)
    video = torch.rand(2, 5, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video)
        assert z.shape == (2, 2, 16, 2, 3) and z.dtype == torch.float32
        mu = model.encode(video.permute(0, 2, 1, 3, 4)).latent_dist.mean
        torch.testing.assert_close(z.permute(0, 2, 1, 3, 4), (mu - mean) / std, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(vae.denormalize(vae.normalize(mu)), mu, rtol=1e-6, atol=1e-6)

        px = vae.decode(z)
        assert px.shape == (2, 5, 3, 16, 24)
        assert px.min() >= -1 and px.max() <= 1
        ref = model.decode(z.permute(0, 2, 1, 3, 4) * std + mean).sample.permute(0, 2, 1, 3, 4)
        torch.testing.assert_close(px, ref, rtol=1e-5, atol=1e-5)

        assert vae.encode(video[:1, :1, :, :16, :16]).shape == (1, 1, 16, 2, 2)
        assert vae.decode(torch.randn(1, 4, 16, 2, 2)).shape == (1, 13, 3, 16, 16)
    assert vae.num_pixel_frames(21) == 81 and vae.num_latent_frames(81) == 21
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(1, 4, 3, 16, 16))  # T must be 1 + 4k
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(1, 5, 3, 12, 16))  # H, W multiples of 8
    with pytest.raises(ValueError):
        vae.decode(torch.zeros(1, 2, 8, 2, 2))  # 16 latent channels


def test_dtype_cast(folders):
    v = WanVAE.from_pretrained(folders[1], dtype=torch.bfloat16)
    assert v.dtype == torch.bfloat16
    with torch.no_grad():
        z = v.encode(torch.zeros(1, 1, 3, 16, 16))  # fp32 in
        assert z.dtype == torch.bfloat16 and z.shape == (1, 1, 16, 2, 2)
        px = v.stream_decoder().decode(torch.randn(1, 2, 16, 2, 2))  # fp32 in
        assert px.dtype == torch.bfloat16 and px.shape == (1, 5, 3, 16, 16)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming decode
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_decode(vae):
    torch.manual_seed(2)
    lat = torch.randn(1, 6, 16, 2, 2)
    with torch.no_grad():
        return lat, vae.decode(lat)


@pytest.mark.parametrize("chunks", [(1, 1, 1, 1, 1, 1), (1, 3, 2), (2, 1, 3), (6,)])
def test_streaming_decode_equals_full_decode(vae, full_decode, chunks):
    lat, full = full_decode
    assert full.shape == (1, 21, 3, 16, 16)
    assert 0.001 < (full.abs() < 1).float().mean()  # not all clamped: the comparison means something
    stream = vae.stream_decoder()
    outs, seen = [], 0
    for n in chunks:
        out = stream.decode(lat[:, seen:seen + n])
        assert out.shape[1] == (4 * n - 3 if seen == 0 else 4 * n)
        seen += n
        outs.append(out)
        assert sum(o.shape[1] for o in outs) == 1 + 4 * (seen - 1)
    got = torch.cat(outs, dim=1)
    assert got.shape == full.shape
    assert (got - full).abs().max().item() <= 1e-5
    # reset starts a new clip
    stream.reset()
    assert (stream.decode(lat[:, :2]) - full[:, :5]).abs().max().item() <= 1e-5


def test_streaming_prefix_is_causal(vae, full_decode):
    lat, full = full_decode
    with torch.no_grad():
        prefix = vae.decode(lat[:, :3])
    assert prefix.shape[1] == 9
    assert (prefix - full[:, :9]).abs().max().item() <= 1e-5


def test_streaming_rejects_shape_change(vae):
    stream = vae.stream_decoder()
    stream.decode(torch.randn(1, 1, 16, 2, 2))
    with pytest.raises(ValueError, match="reset"):
        stream.decode(torch.randn(2, 1, 16, 2, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_paths_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WanVAE.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="Wan2.1_VAE.pth"):
        WanVAE.from_pretrained(tmp_path)  # empty folder


def test_corrupt_wan_key_set_raises(tmp_path, folders):
    sd = torch.load(folders[0] / "Wan2.1_VAE.pth", weights_only=True)
    del sd["decoder.middle.0.residual.2.bias"]
    sd["encoder.bogus.weight"] = torch.zeros(1)
    bad = tmp_path / "Wan2.1_VAE.pth"
    torch.save(sd, bad)
    with pytest.raises(VAECheckpointError) as e:
        WanVAE.from_pretrained(tmp_path)
    msg = str(e.value)
    assert str(bad) in msg
    assert "missing keys (1)" in msg and "decoder.mid_block.resnets.0.conv1.bias" in msg
    assert "unexpected keys (1)" in msg and "encoder.bogus.weight" in msg


def test_corrupt_diffusers_key_set_raises(tmp_path):
    from safetensors.torch import load_file, save_file

    write_tiny_vae(tmp_path, layout="diffusers")
    f = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    sd = load_file(f)
    sd["quant_conv.weight"] = sd["quant_conv.weight"][:, :8].contiguous()
    del sd["decoder.conv_out.bias"]
    save_file(sd, f)
    with pytest.raises(VAECheckpointError) as e:
        WanVAE.from_pretrained(tmp_path)
    msg = str(e.value)
    assert str(f) in msg and "decoder.conv_out.bias" in msg and "quant_conv.weight" in msg


def test_unreadable_file_raises(tmp_path):
    bad = tmp_path / "Wan2.1_VAE.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(VAECheckpointError, match="Could not read"):
        WanVAE.from_pretrained(bad)
