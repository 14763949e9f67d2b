"""ODE data: slot selection, CausVid's ODE pairs, Causal Forcing's causal ODE data (full and blockwise-KV paths)
and VAE latents, end to end on tiny Wan folders and checked against independent sampler runs."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from causvid.flow import WAN_NEGATIVE_PROMPT, cfg, euler_sample, euler_sigmas, warp_denoising_step
from causvid.models.text_encoder import WanTextEncoder
from causvid.models.vae import WanVAE
from causvid.models.wan.generate_ode_pairs import main as generate_ode_pairs
from causvid.ode_data.trajectory import (CAUSAL_ODE_STEP_LIST, causal_ode_slots, causal_ode_trajectory,
                                         item_noise, ode_slot_indices, slot_timesteps, teacher_forcing_flow)
from causvid.pipelines.text_to_video import load_dit
from causvid.tiny_wan import write_tiny_wan
from causvid.tiny_wan.dit import random_dit
from causvid.video_io import write_video

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
# the tiny text encoder holds 16 tokens: the negative prompt is truncated, as expected
pytestmark = pytest.mark.filterwarnings("ignore:prompt truncated:UserWarning")

compute_vae_latent = load_script("distillation_data/compute_vae_latent.py")
framewise = load_script("get_causal_ode_data_framewise.py").main
chunkwise = load_script("get_causal_ode_data_chunkwise.py").main


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return write_tiny_wan(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-1.3B", layout="wan")


@pytest.fixture(scope="module")
def ar_checkpoint(tmp_path_factory):
    """An AR-diffusion checkpoint as Causal Forcing ships them: a .pt with 'generator'."""
    path = tmp_path_factory.mktemp("ckpt") / "ar_diffusion.pt"
    torch.save({"generator": random_dit("tiny", seed=7).state_dict()}, path)
    return path


def encoder_for(wan, dit):
    return WanTextEncoder.from_pretrained(wan, dtype=torch.float32, text_len=dit.config.text_len)


def record_states(flow, noise, sigmas):
    """An independent Euler run: every state (inputs of the N steps, then the output)."""
    states = []
    final = euler_sample(flow, noise, sigmas, callback=lambda info: states.append(info["x"].clone()))
    return states + [final]


# ----------------------------------------------------------------------------------------------------------------
# Slot selection


def test_causvid_step_list_gives_states_0_36_44_50():
    sigmas = euler_sigmas(50, 8)
    indices = ode_slot_indices([1000, 757, 522, 0], sigmas)
    assert indices == [0, 36, 44, 50]
    assert slot_timesteps(indices, sigmas) == pytest.approx([1000, 756.757, 521.739, 0], abs=1e-3)
    assert ode_slot_indices([1000, 757, 522], sigmas) == [0, 36, 44, 50]  # trailing 0 or not: same slots


@pytest.mark.parametrize("num_steps, expected", [(48, [0, 12, 24, 36, 48]), (8, [0, 2, 4, 6, 8])])
def test_causal_forcing_slots_are_the_warped_four_steps(num_steps, expected):
    sigmas = euler_sigmas(num_steps, 5)
    indices = ode_slot_indices(CAUSAL_ODE_STEP_LIST, sigmas, warp=True, shift=5)
    assert indices == expected
    warped = warp_denoising_step(list(CAUSAL_ODE_STEP_LIST), 5).tolist()
    # the originals build the warped list in float32: 833.33331298828125, not 833.3333333
    assert warped == [1000, 937.5, float(torch.tensor(2500 / 3, dtype=torch.float32)), 625]
    # the same grid points as the (float64) Euler schedule's states, to float32 precision
    assert slot_timesteps(indices, sigmas) == pytest.approx(warped + [0], abs=1e-4)


def test_generate_ode_pairs_schedule_and_teacher_of_the_causvid_config():
    import argparse

    from causvid.config import load_config
    from causvid.ode_data.pairs import teacher_folder
    from causvid.ode_data.trajectory import schedule

    config = load_config(ROOT / "configs/wan_causal_ode.yaml")
    sigmas, indices = schedule(config)
    assert len(sigmas) == 51 and indices == [0, 36, 44, 50]
    torch.testing.assert_close(sigmas, euler_sigmas(50, 8))
    args = argparse.Namespace(wan_model_path=None, model_type=None)
    assert teacher_folder(args, config) == Path("wan_models/Wan2.1-T2V-1.3B")
    args.model_type = "T2V-14B"
    assert teacher_folder(args, config) == Path("wan_models/Wan2.1-T2V-14B")
    args.wan_model_path = "elsewhere/teacher"
    assert teacher_folder(args, config) == Path("elsewhere/teacher")


def test_off_grid_step_warns():
    with pytest.warns(UserWarning, match="timesteps from the nearest"):
        assert ode_slot_indices([1000, 960, 0], euler_sigmas(4, 5)) == [0, 1, 4]


# ----------------------------------------------------------------------------------------------------------------
# Causal ODE trajectories: the blockwise KV-cached path equals the full teacher-forcing path


@pytest.mark.parametrize("block, frames", [(1, 4), (3, 6)])
def test_blockwise_kv_equals_full_teacher_forcing(block, frames):
    model = random_dit("tiny", seed=1)
    gen = torch.Generator().manual_seed(0)
    noise, clean = (torch.randn(1, frames, 16, 4, 4, generator=gen) for _ in range(2))
    context, negative = (torch.randn(1, 5, 32, generator=gen) for _ in range(2))
    sigmas = euler_sigmas(8, 5)
    kw = dict(num_frame_per_block=block, sigmas=sigmas, indices=[0, 2, 4, 6, 8], negative_context=negative,
              guidance_scale=6.0)
    full = causal_ode_trajectory(model, noise, clean, context, mode="full", **kw)
    fast = causal_ode_trajectory(model, noise, clean, context, mode="blockwise_kv", **kw)
    assert full.shape == (1, 5, frames, 16, 4, 4)
    assert torch.equal(full[:, 0], noise)
    assert (full[:, -1] - full[:, 0]).abs().max() > 0.1  # the run moved
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)

    # causality of the layout: the GT of the last block is context for nobody; block 0's GT is for all later ones
    later = clean.clone()
    later[:, -block:] += 1
    moved = causal_ode_trajectory(model, noise, later, context, mode="blockwise_kv", **kw)
    torch.testing.assert_close(moved, fast, atol=1e-4, rtol=1e-4)
    first = clean.clone()
    first[:, :block] += 1
    moved = causal_ode_trajectory(model, noise, first, context, mode="blockwise_kv", **kw)
    assert (moved[:, -1, block:] - fast[:, -1, block:]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# generate_ode_pairs.py (CausVid)


def test_generate_ode_pairs_saves_the_sampler_states(tmp_path, wan, monkeypatch, capsys):
    prompts = ["a red square moving left", "a blue circle moving up", "a green cube"]
    captions = tmp_path / "prompts.txt"
    captions.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = tmp_path / "odes"
    argv = ["--output_folder", str(out), "--caption_path", str(captions), "--config",
            str(ROOT / "configs/tiny/wan_causal_ode.yaml"), "--wan_model_path", str(wan), "--fsdp"]

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert generate_ode_pairs(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00001.pt"]  # rank 1 of 2: prompt 1 only
    monkeypatch.setenv("RANK", "0")
    assert generate_ode_pairs(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.pt", "00001.pt", "00002.pt"]
    assert "ignored" in capsys.readouterr().out  # --fsdp is said to be a no-op

    dit = load_dit(wan).eval()
    encoder = encoder_for(wan, dit)
    negative = encoder.encode([WAN_NEGATIVE_PROMPT])
    sigmas = euler_sigmas(50, 8)
    for i, prompt in enumerate(prompts):
        saved = torch.load(out / f"{i:05d}.pt", weights_only=True)
        assert list(saved) == [prompt]
        pair = saved[prompt]
        assert pair.shape == (1, 4, 6, 16, 4, 4) and pair.dtype == torch.float32
        context = encoder.encode([prompt])
        states = record_states(lambda x, t: cfg(dit(x, t, context), dit(x, t, negative), 6.0),
                               item_noise(0, i, (1, 6, 16, 4, 4)), sigmas)
        for slot, index in enumerate([0, 36, 44, 50]):
            torch.testing.assert_close(pair[:, slot], states[index], atol=1e-5, rtol=1e-5)
    assert not torch.equal(torch.load(out / "00000.pt")[prompts[0]], torch.load(out / "00001.pt")[prompts[1]])

    stamp = (out / "00000.pt").stat().st_mtime_ns
    assert generate_ode_pairs(argv) == 0  # restart: everything done, nothing rewritten, no model loaded
    assert (out / "00000.pt").stat().st_mtime_ns == stamp
    assert not [p for p in out.iterdir() if not p.name.endswith(".pt")]  # no temporary files left


# ----------------------------------------------------------------------------------------------------------------
# get_causal_ode_data_{framewise,chunkwise}.py (Causal Forcing)


def write_latent_folder(folder, prompts, frames):
    folder.mkdir()
    gen = torch.Generator().manual_seed(5)
    latents = {}
    for i, prompt in enumerate(prompts):
        latents[prompt] = torch.randn(1, frames, 16, 4, 4, generator=gen)
        torch.save({prompt: latents[prompt]}, folder / f"{i:08d}.pt")
    return latents


@pytest.mark.parametrize("script, block, frames", [(framewise, 1, 4), (chunkwise, 3, 6)])
def test_causal_ode_data(tmp_path, wan, ar_checkpoint, script, block, frames):
    prompts = ["a red square moving left", "a blue circle moving up"]
    latents = write_latent_folder(tmp_path / "latents", prompts, frames)
    common = ["--generator_ckpt", str(ar_checkpoint), "--rawdata_path", str(tmp_path / "latents"),
              "--wan_model_path", str(wan), "--num_steps", "8"]
    assert script(common + ["--output_folder", str(tmp_path / "fast"), "--mode", "blockwise_kv"]) == 0
    assert script(common + ["--output_folder", str(tmp_path / "full"), "--mode", "full"]) == 0

    dit = load_dit(wan, ar_checkpoint).eval()
    encoder = encoder_for(wan, dit)
    negative = encoder.encode([WAN_NEGATIVE_PROMPT])
    sigmas = euler_sigmas(8, 5)
    for i, prompt in enumerate(prompts):
        fast = torch.load(tmp_path / "fast" / f"{i:05d}.pt", weights_only=True)
        full = torch.load(tmp_path / "full" / f"{i:05d}.pt", weights_only=True)
        assert list(fast) == list(full) == [prompt]
        fast, full = fast[prompt], full[prompt]
        assert fast.shape == (1, 6, frames, 16, 4, 4) and fast.dtype == torch.float32
        torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)

        noise = item_noise(0, i, (1, frames, 16, 4, 4))
        flow = teacher_forcing_flow(dit, latents[prompt], encoder.encode([prompt]), num_frame_per_block=block,
                                    negative_context=negative, guidance_scale=6.0)
        states = record_states(flow, noise, sigmas)
        assert torch.equal(full[:, 0], noise)
        for slot, index in enumerate([0, 2, 4, 6, 8]):  # noise, t = 937.5 / 833.3 / 625, the ODE output
            torch.testing.assert_close(full[:, slot], states[index], atol=1e-5, rtol=1e-5)
        assert torch.equal(full[:, -1], latents[prompt])  # the GT latent

    stamp = (tmp_path / "fast" / "00000.pt").stat().st_mtime_ns
    assert script(common + ["--output_folder", str(tmp_path / "fast")]) == 0  # restart skips done items
    assert (tmp_path / "fast" / "00000.pt").stat().st_mtime_ns == stamp


def test_causal_ode_slots_layout():
    model = random_dit("tiny", seed=2)
    noise, clean = torch.randn(2, 1, 3, 16, 4, 4)
    slots = causal_ode_slots(model, noise, clean, torch.randn(1, 5, 32), num_frame_per_block=3,
                             sigmas=euler_sigmas(4, 5), indices=[0, 1, 2, 3, 4], mode="blockwise_kv")
    assert slots.shape == (1, 6, 3, 16, 4, 4)
    assert torch.equal(slots[:, 0], noise) and torch.equal(slots[:, -1], clean)
    with pytest.raises(ValueError, match="num_frame_per_block"):
        causal_ode_slots(model, noise[:, :2], clean[:, :2], torch.randn(1, 5, 32), num_frame_per_block=3,
                         sigmas=euler_sigmas(4, 5), indices=[0, 4])


# ----------------------------------------------------------------------------------------------------------------
# compute_vae_latent.py


def test_compute_vae_latent(tmp_path, wan, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    write_video(videos / "a.mp4", rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8))
    write_video(videos / "b.mp4", rng.integers(0, 256, (11, 32, 48, 3), dtype=np.uint8))  # trimmed to 9 frames
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    info = tmp_path / "info.json"
    info.write_text(json.dumps([{"video": "a.mp4", "caption": "first clip"},
                                {"video": "broken.mp4", "caption": "corrupt"},
                                {"video": "b.mp4", "caption": "second clip"},
                                {"video": "missing.mp4", "caption": "gone"}]))
    out = tmp_path / "latents"
    argv = ["--input_video_folder", str(videos), "--output_latent_folder", str(out), "--info_path", str(info),
            "--wan_model_path", str(wan)]
    assert compute_vae_latent.main(argv) == 0
    log = capsys.readouterr().out
    assert "2 encoded" in log and "2 skipped" in log and "broken.mp4" in log and "missing.mp4" in log
    assert sorted(p.name for p in out.iterdir()) == ["00000000.pt", "00000002.pt"]

    vae = WanVAE.from_pretrained(wan)
    for name, caption, video, width in (("00000000.pt", "first clip", "a.mp4", 32),
                                        ("00000002.pt", "second clip", "b.mp4", 48)):
        saved = torch.load(out / name, weights_only=True)
        assert list(saved) == [caption]
        assert saved[caption].shape == (1, 3, 16, 4, width // 8) and saved[caption].dtype == torch.float32
        pixels = compute_vae_latent.load_pixels(videos / video)
        assert pixels.shape[1] == 9 and -1 <= pixels.min() and pixels.max() <= 1
        torch.testing.assert_close(saved[caption], vae.encode(pixels), atol=1e-5, rtol=1e-5)

    stamp = (out / "00000000.pt").stat().st_mtime_ns
    assert compute_vae_latent.main(argv) == 0  # restart: done files kept, the unreadable ones retried
    assert (out / "00000000.pt").stat().st_mtime_ns == stamp
    assert "2 already there" in capsys.readouterr().out

    flat = tmp_path / "cap_to_video.json"  # the original flat {caption: video} form
    flat.write_text(json.dumps({"second clip": "b.mp4"}))
    assert compute_vae_latent.main(argv[:3] + [str(tmp_path / "flat"), "--info_path", str(flat)] + argv[6:]) == 0
    saved = torch.load(tmp_path / "flat" / "00000000.pt", weights_only=True)
    assert torch.equal(saved["second clip"], torch.load(out / "00000002.pt", weights_only=True)["second clip"])


def test_compute_vae_latent_uses_the_folders_vae_and_its_spatial_factor(tmp_path):
    """A toy folder's latent space has spatial factor 2: a 12x12 video (not a multiple of 8) is encoded, by the
    toy VAE the folder's model_index.json names, to 6x6 latents equal to the frames projected by hand."""
    from causvid.toy.folder import write_toy_folder
    from causvid.toy.latent_space import projection_matrix
    from causvid.toy.marker import read_toy_config

    toy = write_toy_folder(tmp_path / "toy", random_dit("tiny", seed=1))
    videos = tmp_path / "videos"
    videos.mkdir()
    frames = np.zeros((5, 12, 12, 3), np.uint8)
    frames[:, :6] = (200, 40, 40)  # flat halves: H.264 keeps them within a level or two
    write_video(videos / "a.mp4", frames)
    (tmp_path / "info.json").write_text(json.dumps([{"video": "a.mp4", "caption": "a clip"}]))
    argv = ["--input_video_folder", str(videos), "--output_latent_folder", str(tmp_path / "latents"),
            "--info_path", str(tmp_path / "info.json"), "--wan_model_path", str(toy)]
    assert compute_vae_latent.main(argv) == 0
    latent = torch.load(tmp_path / "latents" / "00000000.pt", weights_only=True)["a clip"]
    assert latent.shape == (1, 2, 16, 6, 6)  # frames 0 and 4 (keyframes), 12 / 2 = 6
    pixels = compute_vae_latent.load_pixels(videos / "a.mp4", spatial_factor=2)[0, 0]  # frame 0, [3, 12, 12]
    patches = torch.nn.functional.pixel_unshuffle(pixels[None], 2)[0]  # [12, 6, 6]
    vae = read_toy_config(toy)["vae"]
    by_hand = vae["scale"] * torch.einsum("zp,phw->zhw", projection_matrix(vae["seed"]), patches)
    torch.testing.assert_close(latent[0, 0], by_hand, atol=1e-4, rtol=1e-4)


def test_videos_to_lmdb_to_causal_ode(tmp_path, wan, ar_checkpoint):
    """The whole Causal-Forcing data path: mp4s -> VAE latents -> latent LMDB -> causal ODE data."""
    from causvid.data.datasets import LatentLMDBDataset
    from causvid.data.lmdb import create_lmdb_from_pt

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(1)
    clips = []
    for name in ("a.mp4", "b.mp4"):
        write_video(videos / name, rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8))
        clips.append({"video": name, "caption": f"clip {name}"})
    (tmp_path / "info.json").write_text(json.dumps(clips))
    assert compute_vae_latent.main(["--input_video_folder", str(videos), "--output_latent_folder",
                                    str(tmp_path / "latents"), "--info_path", str(tmp_path / "info.json"),
                                    "--wan_model_path", str(wan)]) == 0
    create_lmdb_from_pt(tmp_path / "latents", tmp_path / "clean_data", progress=False)
    data = LatentLMDBDataset(tmp_path / "clean_data")
    assert len(data) == 2 and data[0]["clean_latent"].shape == (3, 16, 4, 4)

    out = tmp_path / "ode"
    assert chunkwise(["--generator_ckpt", str(ar_checkpoint), "--rawdata_path", str(tmp_path / "clean_data"),
                      "--output_folder", str(out), "--wan_model_path", str(wan), "--num_steps", "4"]) == 0
    for i in range(2):
        item = data[i]
        saved = torch.load(out / f"{i:05d}.pt", weights_only=True)[item["prompts"]]
        assert saved.shape == (1, 6, 3, 16, 4, 4)
        assert torch.equal(saved[0, 0], item_noise(0, i, (1, 3, 16, 4, 4))[0])
        assert torch.equal(saved[0, -1], item["clean_latent"])
