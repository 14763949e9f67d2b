"""The toy world's text encoder and latent space behind the umT5 / Wan VAE interfaces, the toy folder, and the
loading hook (`load_text_encoder` / `load_vae`) that the inference CLIs and the trainer go through."""
import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch

from causvid.toy.folder import write_toy_folder
from causvid.toy.marker import TOY_MARKER, is_toy_folder, read_toy_config
from causvid.toy.latent_space import ToyVAE, projection_matrix, unit_rms_scale
from causvid.toy.text_encoder import ToyTextEncoder, prompt_words, word_vector
from causvid.tiny_wan.dit import random_dit
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy folder around the tiny DiT (text_dim 32, text_len 16, 16 latent channels)."""
    return write_toy_folder(tmp_path_factory.mktemp("toy") / "toy_world", random_dit("tiny", seed=3), seed=5)


def toy_video(frames=9, h=8, w=12, batch=2, seed=0):
    """Smooth-ish videos in [-1, 1]: a moving bright square on a flat background plus a little noise."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.full((batch, frames, 3, h, w), -0.6)
    for t in range(frames):
        x = t % (w - 2)
        video[:, t, :, 1:4, x:x + 2] = 0.8
    return (video + 0.1 * torch.rand(video.shape, generator=gen)).clamp(-1, 1)


# -- text encoder -------------------------------------------------------------------------------------------------
def test_encoder_shape_zero_padding_and_unit_rows():
    enc = ToyTextEncoder(dim=32, seed=0, text_len=8)
    out = enc.encode(["A red square, moving left!", "circle"])
    assert out.shape == (2, 8, 32) and out.dtype == torch.float32
    assert torch.all(out[0, 5:] == 0) and torch.all(out[1, 1:] == 0)
    assert torch.all(out[0, :5].abs().sum(-1) > 0)
    assert enc.encode("circle").shape == (1, 8, 32)  # a single string is a batch of one
    assert torch.all(enc.encode([""]) == 0) and enc.encode([]).shape == (0, 8, 32)
    norms = torch.stack([word_vector(f"w{chr(97 + i)}", 256, 0).norm() for i in range(20)])
    assert (norms - 1).abs().max() < 0.2  # N(0, 1) / sqrt(dim): unit norm on average


def test_encoder_words_and_rows():
    assert prompt_words("A Red-square &amp; 3 circles_moving") == ["a", "red", "square", "circles", "moving"]
    enc = ToyTextEncoder(dim=16, seed=0, text_len=6)
    a, b, c = enc.encode(["red square", "square RED", "a blue circle"])
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[0])  # same words -> same rows
    assert not torch.equal(a, c) and not torch.equal(a[0], a[1])  # different prompts / words differ
    assert torch.equal(enc.encode("red, square!!")[0], a)  # case and punctuation do not matter
    assert torch.equal(a[0], word_vector("red", 16, 0))


def test_encoder_is_deterministic_and_seeded():
    one = ToyTextEncoder(dim=32, seed=1, text_len=8).encode(["a red square moving left"])
    two = ToyTextEncoder(dim=32, seed=1, text_len=8).encode(["a red square moving left"])
    other = ToyTextEncoder(dim=32, seed=2, text_len=8).encode(["a red square moving left"])
    assert torch.equal(one, two) and not torch.equal(one, other)
    # hashlib, not Python's per-process salted hash(): the same vector in every process
    digest = hashlib.sha256(b"0:red").digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    assert torch.equal(word_vector("red", 4, 0), torch.randn(4, generator=gen) / 2)


def test_encoder_truncation_warns_like_the_real_one():
    enc = ToyTextEncoder(dim=8, seed=0, text_len=3)
    with pytest.warns(UserWarning, match=r"truncated to 3 words: 2 of its 5"):
        out = enc.encode(["one two three four five"])
    assert torch.equal(out, enc.encode(["one two three"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.encode(["one two three"])


def test_encoder_cache():
    enc = ToyTextEncoder(dim=8, seed=0, text_len=4, cache_size=2)
    first = enc.encode(["a b", "c d", "a b"])
    assert (enc.cache_hits, enc.cache_misses) == (0, 2)
    assert torch.equal(enc.encode(["A  b"]), first[:1]) and enc.cache_hits == 1  # keyed by the words
    enc.encode(["e"])  # evicts the least recently used ("c d")
    enc.encode(["c d"])
    assert enc.cache_misses == 4
    enc.to(torch.float64)
    assert len(enc._cache) == 0 and enc.dtype == torch.float64
    assert enc.encode(["a b"]).dtype == torch.float64
    enc.clear_cache()
    assert (enc.cache_hits, enc.cache_misses, len(enc._cache)) == (0, 0, 0)
    off = ToyTextEncoder(dim=8, cache_size=0)
    off.encode(["a"]), off.encode(["a"])
    assert len(off._cache) == 0 and off.cache_misses == 2


def test_encoder_from_pretrained_reads_the_folder(toy):
    enc = ToyTextEncoder.from_pretrained(toy)
    assert (enc.dim, enc.seed, enc.text_len, enc.dtype, enc.device.type) == (32, 5, 16, torch.float32, "cpu")
    assert ToyTextEncoder.from_pretrained(toy, dtype=torch.bfloat16, text_len=4).encode("x").shape == (1, 4, 32)
    assert ToyTextEncoder.from_pretrained(toy, dtype=torch.bfloat16).dtype == torch.bfloat16


# -- latent space -------------------------------------------------------------------------------------------------
def test_projection_is_fixed_and_orthonormal():
    m = projection_matrix(0)
    assert m.shape == (16, 12)
    assert torch.allclose(m.T @ m, torch.eye(12), atol=1e-6)
    assert torch.equal(m, projection_matrix(0)) and not torch.equal(m, projection_matrix(1))


def test_vae_round_trip_keyframes_and_interpolation():
    vae = ToyVAE(seed=0, scale=1.6)
    assert (vae.spatial_factor, vae.temporal_factor, vae.z_dim) == (2, 4, 16)
    video = toy_video(frames=13, h=8, w=12)
    z = vae.encode(video)
    assert z.shape == (2, 4, 16, 4, 6)
    x = vae.decode(z)
    assert x.shape == video.shape and x.abs().max() <= 1
    assert (x[:, ::4] - video[:, ::4]).abs().max() <= 1e-5  # keyframes 0, 4, 8, 12 exactly
    for k in range(1, 4):
        for j, a in enumerate((0.25, 0.5, 0.75, 1.0)):
            expected = (1 - a) * video[:, 4 * (k - 1)] + a * video[:, 4 * k]
            assert (x[:, 4 * k - 3 + j] - expected).abs().max() <= 1e-5
    # latents in the image of encode are reproduced by encode(decode(.)); decode projects the rest
    assert (vae.encode(x) - z).abs().max() <= 1e-5
    assert torch.allclose(vae.decode(z[:, :1]), video[:, :1], atol=1e-5)


def test_vae_frame_counts_and_input_checks():
    vae = ToyVAE()
    for f in (1, 2, 5):
        assert vae.decode(torch.zeros(1, f, 16, 2, 2)).shape == (1, vae.num_pixel_frames(f), 3, 4, 4)
        assert vae.num_pixel_frames(f) == 1 + 4 * (f - 1) and vae.num_latent_frames(1 + 4 * (f - 1)) == f
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        vae.encode(torch.zeros(1, 4, 3, 8, 8))
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 5, 3, 7, 8))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 2, 12, 4, 4))
    assert vae.decode(torch.full((1, 1, 16, 2, 2), 100.0)).abs().max() <= 1  # clamped


@pytest.mark.parametrize("chunks", [(1,) * 6, (1, 3, 2), (6,), (2, 4)])
def test_streaming_decode_equals_full_decode(chunks):
    vae = ToyVAE(seed=2)
    z = torch.randn(2, sum(chunks), 16, 4, 4, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    decoder = vae.stream_decoder()
    parts, start = [], 0
    for n in chunks:
        part = decoder.decode(z[:, start:start + n])
        assert part.shape[1] == (4 * n - 3 if start == 0 else 4 * n)
        parts.append(part)
        start += n
    assert decoder.frames_seen == sum(chunks)
    assert torch.equal(torch.cat(parts, dim=1), full)
    with pytest.raises(ValueError, match="mid-stream"):
        decoder.decode(z[:1, :1])
    decoder.reset()
    assert torch.equal(decoder.decode(z[:, :2]), full[:, :5]) and decoder.frames_seen == 2


def test_unit_rms_scale():
    video = toy_video(frames=9)
    vae = ToyVAE(scale=unit_rms_scale(video))
    assert abs(vae.encode(video).pow(2).mean().sqrt().item() - 1) < 1e-4


# -- folder and loading hook --------------------------------------------------------------------------------------
def test_toy_folder_layout(toy, tmp_path):
    from causvid.models.wan import WanDiT

    names = sorted(p.name for p in toy.iterdir())
    assert names == sorted(["config.json", "diffusion_pytorch_model.safetensors", TOY_MARKER, "model_index.json"])
    assert json.loads((toy / "model_index.json").read_text())["vae"] == ["causvid.toy.latent_space", "ToyVAE"]
    assert is_toy_folder(toy) and not is_toy_folder(tmp_path) and not is_toy_folder(toy / TOY_MARKER)
    cfg = read_toy_config(toy)
    assert cfg["text_encoder"] == {"dim": 32, "seed": 5, "text_len": 16}
    assert cfg["vae"]["seed"] == 5 and cfg["vae"]["scale"] > 0
    dit = WanDiT.from_pretrained(toy)
    assert dit.config.text_dim == 32 and dit.config.text_len == 16
    with pytest.raises(ValueError, match="text_dim"):
        write_toy_folder(tmp_path / "bad", random_dit("tiny"), text_dim=64)
    (tmp_path / TOY_MARKER).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="format"):
        read_toy_config(tmp_path)


def test_the_loaders_follow_the_model_index_not_the_marker(toy, tmp_path):
    """Without model_index.json a folder is a Wan folder, marker or not; with one, its classes are used."""
    import shutil

    from causvid.pipelines.text_to_video import load_vae

    bare = Path(shutil.copytree(toy, tmp_path / "bare"))
    (bare / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError):  # the Wan VAE's checkpoint, which a toy folder lacks
        load_vae(bare)
    (bare / "model_index.json").write_text(json.dumps({"vae": ["causvid.toy.latent_space", "ToyVAE"]}))
    assert isinstance(load_vae(bare), ToyVAE)
    (bare / "model_index.json").write_text(json.dumps({"vae": ["mylib", "MyVAE"]}))
    with pytest.raises(ValueError, match="model_index.json: 'vae' is \\['mylib', 'MyVAE'\\]"):
        load_vae(bare)
    (bare / "model_index.json").write_text(json.dumps({"vae": ["causvid.toy.latent_space", "NoSuchVAE"]}))
    with pytest.raises(ValueError, match="NoSuchVAE, which does not exist"):
        load_vae(bare)


def test_load_components_gives_the_toy_parts(toy):
    from causvid.models.wan import WanDiT
    from causvid.pipelines.text_to_video import load_components, load_text_encoder, load_vae

    comp = load_components(toy)
    assert isinstance(comp.dit, WanDiT)
    assert isinstance(comp.text_encoder, ToyTextEncoder) and comp.text_encoder.text_len == 16
    assert isinstance(comp.vae, ToyVAE) and comp.vae.seed == 5
    assert load_text_encoder(toy, 4, torch.float64, "cpu").encode("a").shape == (1, 4, 32)
    assert load_vae(toy, torch.float64, "cpu").dtype == torch.float64


def test_hook_still_gives_wan_parts_for_a_wan_folder(tmp_path):
    from causvid.models.text_encoder import WanTextEncoder
    from causvid.models.vae import WanVAE
    from causvid.pipelines.text_to_video import load_text_encoder, load_vae
    from causvid.tiny_wan import write_tiny_wan

    wan = write_tiny_wan(tmp_path / "wan")
    assert isinstance(load_text_encoder(wan, 16, torch.float32, "cpu"), WanTextEncoder)
    assert isinstance(load_vae(wan, torch.float32, "cpu"), WanVAE)


def test_autoregressive_cli_on_a_toy_folder(toy, tmp_path):
    from causvid.video_io import video_info

    module = load_script("minimal_inference/autoregressive_inference.py")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--config_path", str(TINY / "wan_causal_dmd.yaml"), "--output_folder", str(out),
            "--prompt_file_path", str(prompts), "--wan_model_path", str(toy)]
    assert module.main(argv) == 0
    # 6 latent frames of 4x4 -> 1 + 4*5 = 21 frames at 2x: 8x8 pixels
    assert video_info(out / "output_000.mp4")[:3] == (21, 8, 8)


def test_trainer_runs_on_a_toy_folder(toy, tmp_path):
    from causvid.config import load_config
    from causvid.data.lmdb import LatentLMDBWriter
    from causvid.training.trainer import Trainer
    from causvid.video_io import video_info

    vae = ToyVAE.from_pretrained(toy)
    with LatentLMDBWriter(tmp_path / "latents") as writer:
        for i in range(3):  # toy pixels [1, 21, 3, 8, 8] -> latents [6, 16, 4, 4], one slot per row
            latents = vae.encode(toy_video(frames=21, h=8, w=8, batch=1, seed=i))
            writer.append(latents, f"a red square moving {'left right up'.split()[i]}")
    overrides = {"wan_model_path": toy, "real_model_path": toy, "data_path": tmp_path / "latents",
                 "generator_ckpt": "null", "gradient_checkpointing": "false", "log_iters": 1, "max_iters": 1}
    cfg = load_config(TINY / "wan_causal_dmd.yaml", overrides=[f"{k}={v}" for k, v in overrides.items()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long negative prompt is truncated to text_len
        t = Trainer(cfg, tmp_path / "run", no_save=True, no_visualize=False, disable_wandb=True)
        assert isinstance(t.text_encoder, ToyTextEncoder)
        history = t.train()
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0][1].values())
    assert isinstance(t._vae, ToyVAE)  # the sample was decoded by the toy latent space
    assert video_info(tmp_path / "run" / "samples" / "step_000001.mp4")[:3] == (21, 8, 8)
