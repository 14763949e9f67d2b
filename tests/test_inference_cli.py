"""Every inference CLI end to end on tiny Wan folders written in the real layouts (same loaders as a real
folder): valid mp4s with the right frame count and size, framewise and chunkwise, long videos, I2V, and one-line
errors for bad input with no partial mp4 left behind."""
import contextlib
import io
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from causvid.tiny_wan import write_tiny_wan
from causvid.tiny_wan.dit import random_dit
from causvid.video_io import read_video, video_info

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"

autoregressive = load_script("minimal_inference/autoregressive_inference.py").main
bidirectional = load_script("minimal_inference/bidirectional_inference.py").main
longvideo = load_script("minimal_inference/longvideo_autoregressive_inference.py").main
inference = load_script("inference.py").main


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return write_tiny_wan(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-1.3B", layout="wan")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A CausVid-style checkpoint folder: model.pt with an FSDP-prefixed 'generator' and an EMA of other weights
    (so a run that loads the wrong one shows); ema_only.pt holds the EMA weights as its 'generator'."""
    folder = tmp_path_factory.mktemp("ckpt")
    state = random_dit("tiny", seed=7).state_dict()
    ema = random_dit("tiny", seed=8).state_dict()
    torch.save({"generator": {f"model._fsdp_wrapped_module.{k}": v for k, v in state.items()},
                "generator_ema": {f"model.{k}": v for k, v in ema.items()}}, folder / "model.pt")
    torch.save({"generator": ema}, folder / "ema_only.pt")
    return folder


def generator_for(config, wan, checkpoint):
    """The VideoGenerator a CLI builds, made in-process: the reference the CLIs' videos are compared with."""
    from causvid.config import load_config
    from causvid.pipelines.text_to_video import VideoGenerator, load_components

    return VideoGenerator(load_components(wan, checkpoint), load_config(config))


def as_mp4(tmp_path, name, pixel_blocks):
    """Frames as the CLIs write them (same encoder), read back: equal arrays mean equal videos."""
    from causvid.video_io import write_video

    video = torch.cat(list(pixel_blocks), dim=1)[0]
    return read_video(write_video(tmp_path / f"{name}.mp4", video))


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red square moving left\n\na blue circle moving up\n", encoding="utf-8")
    return path


def frames(path):
    n, h, w, fps = video_info(path)
    return n, h, w


def test_autoregressive_chunkwise(tmp_path, wan, checkpoint, prompts, capsys):
    out = tmp_path / "out"
    argv = ["--config_path", str(TINY / "wan_causal_dmd.yaml"), "--checkpoint_folder", str(checkpoint),
            "--output_folder", str(out), "--prompt_file_path", str(prompts), "--wan_model_path", str(wan),
            "--report_timing"]
    screen = io.StringIO()  # stdout and stderr (the progress bar) as one terminal shows them
    with contextlib.redirect_stdout(screen), contextlib.redirect_stderr(screen):
        assert autoregressive(argv) == 0
    lines = [line.rsplit("\r", 1)[-1] for line in screen.getvalue().splitlines()]  # after the bar's last redraw
    timing = [line for line in lines if "FPS without VAE" in line]
    assert len(timing) == 2 and all(line.startswith("[timing] output_00") for line in timing), timing  # not in the bar
    assert lines[-1] == f"2 videos written, 0 failed -> {out}"
    from causvid.pipelines.cli import count
    assert (count(1, "video"), count(0, "video")) == ("1 video", "0 videos")  # as the summary says one
    # 6 latent frames -> 1 + 4*5 = 21 frames at 8x the 4x4 latent
    assert sorted(p.name for p in out.iterdir()) == ["output_000.mp4", "output_001.mp4"]
    assert frames(out / "output_000.mp4") == (21, 32, 32)
    first = read_video(out / "output_000.mp4")
    assert not np.array_equal(first, read_video(out / "output_001.mp4"))  # per-prompt noise, never shared
    stamp = (out / "output_000.mp4").stat().st_mtime_ns
    assert autoregressive(argv) == 0 and (out / "output_000.mp4").stat().st_mtime_ns == stamp  # skipped
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"0 videos written, 2 skipped (already there; use --overwrite to regenerate), 0 failed -> {out}")
    assert autoregressive(argv + ["--overwrite"]) == 0
    assert np.array_equal(read_video(out / "output_000.mp4"), first)  # seeded: the same video again


def test_inference_framewise_ema_and_prompt_names(tmp_path, wan, checkpoint, prompts):
    """--use_ema gives the video of the EMA weights (here unlike the generator's)."""
    argv = ["--config_path", str(TINY / "causal_forcing_dmd_framewise.yaml"), "--data_path", str(prompts),
            "--wan_model_path", str(wan), "--seed", "3"]
    runs = {}
    for name, extra in (("ema", ["--checkpoint_path", str(checkpoint / "model.pt"), "--use_ema"]),
                        ("generator", ["--checkpoint_path", str(checkpoint / "model.pt")]),
                        ("ema_only", ["--checkpoint_path", str(checkpoint / "ema_only.pt")])):
        assert inference(argv + extra + ["--output_folder", str(tmp_path / name)]) == 0
        runs[name] = read_video(tmp_path / name / "a red square moving left.mp4")
    assert runs["ema"].shape == (13, 32, 32, 3)  # 4 latent frames
    assert (tmp_path / "ema" / "a blue circle moving up.mp4").exists()
    assert np.array_equal(runs["ema"], runs["ema_only"])
    assert not np.array_equal(runs["ema"], runs["generator"])


def test_inference_many_step_ar_diffusion_with_cfg(tmp_path, wan, prompts):
    config = tmp_path / "ar.yaml"  # the AR-diffusion teacher (no denoising_step_list), fewer steps for CI
    config.write_text((TINY / "ar_diffusion_tf_chunkwise.yaml").read_text() + "\nnum_inference_steps: 3\n")
    out = tmp_path / "out"
    assert inference(["--config_path", str(config), "--data_path", str(prompts), "--output_folder", str(out),
                      "--wan_model_path", str(wan), "--num_output_frames", "3"]) == 0
    assert frames(out / "a blue circle moving up.mp4") == (9, 32, 32)


def test_bidirectional_on_a_diffusers_layout_folder(tmp_path, prompts):
    wan = write_tiny_wan(tmp_path / "diffusers", layout="diffusers")
    out = tmp_path / "out"
    assert bidirectional(["--config_path", str(TINY / "wan_bidirectional_dmd_from_scratch.yaml"), "--output_folder",
                          str(out), "--prompt_file_path", str(prompts), "--wan_model_path", str(wan)]) == 0
    assert frames(out / "output_001.mp4") == (21, 32, 32)


@pytest.mark.parametrize("mode", ["overlap", "rolling"])
def test_long_video_three_times_the_training_length(tmp_path, wan, checkpoint, prompts, mode):
    from causvid.pipelines.long_video import overlap_stream

    out = tmp_path / "out"
    config = TINY / "wan_causal_dmd.yaml"
    assert longvideo(["--config_path", str(config), "--checkpoint_folder", str(checkpoint),
                      "--output_folder", str(out), "--prompt_file_path", str(prompts), "--wan_model_path", str(wan),
                      "--num_rollout", "3", "--num_overlap_frames", "3", "--mode", mode]) == 0
    # 3 rollouts of 21 frames sharing 9 frames twice: 21 + 2 * 12 = 45 (12 latent frames, 2x the training 6)
    video = read_video(out / "long_video_output_000.mp4")
    assert video.shape == (45, 32, 32, 3)
    gen = generator_for(config, wan, checkpoint / "model.pt")
    prompt = "a red square moving left"
    if mode == "rolling":
        # one session of 12 latent frames through a window of the training length (6) keeping one block (3)
        window = [px for _, px in gen.stream(prompt, num_frames=12, local_attn_size=6, sink_size=3)]
        full = [px for _, px in gen.stream(prompt, num_frames=12)]
        assert not torch.allclose(torch.cat(window, 1), torch.cat(full, 1))  # the window changes the video
        assert np.array_equal(video, as_mp4(tmp_path, "window", window))
        return
    # overlap: rollout 1's first 12 frames are kept; the seam (frame 12, where the held-back 9 frames begin) is the
    # decode of rollout 1's frame 12 re-encoded by the VAE; the video is the one the library streams
    first = torch.cat([px for _, px in gen.stream(prompt, rollout=0)], dim=1)
    vae = gen.components.vae
    anchor = vae.decode(vae.encode(first[:, 12:13]))[:, 0]
    streamed = torch.cat(list(overlap_stream(gen, prompt, num_rollout=3, num_overlap_frames=3)), dim=1)
    assert torch.equal(streamed[:, :12], first[:, :12])
    torch.testing.assert_close(streamed[:, 12], anchor, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(streamed[:, 12], first[:, 12], atol=1e-3)  # the seam is re-encoded, not copied
    assert np.array_equal(video, as_mp4(tmp_path, "overlap", [streamed]))


def test_i2v_first_frame_is_the_image(tmp_path, wan, checkpoint):
    """On a toy folder (a latent space of spatial factor 2 that reproduces frame 0 exactly) the first frame of the
    video is the image, by value; on a Wan folder (factor 8) the sizes follow; chunkwise models are refused."""
    from causvid.toy.folder import write_toy_folder

    def i2v_folder(root, size):
        (root / "26-15").mkdir(parents=True)
        image = np.zeros((size, size, 3), np.uint8)
        image[:, : size // 2] = (255, 0, 0)
        image[size // 2:, size // 2:] = (0, 0, 255)
        iio.imwrite(root / "26-15" / "000001.png", image)
        (root / "target_crop_info_26-15.json").write_text(json.dumps([{
            "file_name": "000001.png", "caption": "a red wall", "type": "i2v", "origin_width": size,
            "origin_height": size, "target_crop": {"target_bbox": [0, 0, size, size], "target_ratio": "1:1"}}]))
        return image

    toy = write_toy_folder(tmp_path / "toy", random_dit("tiny", seed=2))
    image = i2v_folder(tmp_path / "toy_i2v", 8)  # 4x4 latents x 2 = 8x8 pixels: no resize
    argv = ["--config_path", str(TINY / "causal_forcing_dmd_framewise.yaml"), "--data_path",
            str(tmp_path / "toy_i2v"), "--output_folder", str(tmp_path / "toy_out"), "--wan_model_path", str(toy),
            "--i2v"]
    assert inference(argv) == 0
    video = read_video(tmp_path / "toy_out" / "a red wall.mp4")
    assert video.shape == (13, 8, 8, 3)
    error = np.abs(video[0].astype(int) - image)  # H.264 alone gives a max of 19, a mean of 2.1 on this image
    assert error.mean() <= 4 and error.max() <= 32

    i2v_folder(tmp_path / "i2v", 64)
    out = tmp_path / "out"
    argv = ["--config_path", str(TINY / "causal_forcing_dmd_framewise.yaml"), "--checkpoint_path",
            str(checkpoint / "model.pt"), "--data_path", str(tmp_path / "i2v"), "--output_folder", str(out),
            "--wan_model_path", str(wan), "--i2v"]
    assert inference(argv) == 0
    assert frames(out / "a red wall.mp4") == (13, 32, 32)
    chunkwise = argv.copy()
    chunkwise[1] = str(TINY / "causal_forcing_dmd_chunkwise.yaml")
    assert inference(chunkwise) == 2  # I2V is framewise only


@pytest.mark.parametrize("script", ["inference.py", "minimal_inference/autoregressive_inference.py",
                                    "minimal_inference/bidirectional_inference.py",
                                    "minimal_inference/longvideo_autoregressive_inference.py"])
def test_help_gives_every_flag_a_sentence(script, monkeypatch):
    from causvid.errors import ArgumentParser

    parsers = []

    def capture(self, argv=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        load_script(script).main(["--help"])
    flags = {a.option_strings[-1]: a.help for a in parsers[0]._actions if a.option_strings}
    assert [flag for flag, text in flags.items() if not text or len(text.split()) < 3] == []
    if script == "inference.py":
        assert "latent frames" in flags["--num_output_frames"] and "4(n-1)+1" in flags["--num_output_frames"]


# -- bad input: one-line errors naming the thing, nothing half-written ---------------------------------------
def run_ar(tmp_path, wan, prompt_file, config=TINY / "wan_causal_dmd.yaml", checkpoint=None):
    argv = ["--config_path", str(config), "--output_folder", str(tmp_path / "out"), "--prompt_file_path",
            str(prompt_file), "--wan_model_path", str(wan)]
    return autoregressive(argv + (["--checkpoint_folder", str(checkpoint)] if checkpoint else []))


@pytest.mark.parametrize("case,content,needle", [
    ("missing", None, "not found"),
    ("empty", b"", "empty"),
    ("blank", b"\n  \n\n", "blank"),
    ("latin1", "a caf\u00e9 at night\n".encode("latin-1"), "line 1"),
])
def test_bad_prompt_files(tmp_path, wan, capsys, case, content, needle):
    path = tmp_path / f"{case}.txt"
    if content is not None:
        path.write_bytes(content)
    assert run_ar(tmp_path, wan, path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{case}.txt" in err[0] and needle in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_long_prompt_is_truncated_with_a_warning(tmp_path, wan):
    path = tmp_path / "long.txt"
    path.write_text(" ".join(["red square moving left"] * 500) + "\n")  # 2,000 words
    with pytest.warns(UserWarning, match="truncat"):
        assert run_ar(tmp_path, wan, path) == 0
    assert frames(tmp_path / "out" / "output_000.mp4") == (21, 32, 32)


def test_unknown_config_key_and_missing_wan_file(tmp_path, wan, prompts, capsys):
    bad = tmp_path / "typo.yaml"
    bad.write_text((TINY / "wan_causal_dmd.yaml").read_text() + "\nnum_frame_per_blok: 3\n")
    assert run_ar(tmp_path, wan, prompts, config=bad) == 2
    assert "num_frame_per_blok" in capsys.readouterr().err
    broken = tmp_path / "broken_wan"
    write_tiny_wan(broken)
    (broken / "Wan2.1_VAE.pth").unlink()
    assert run_ar(tmp_path, broken, prompts) == 2
    err = capsys.readouterr().err
    assert "broken_wan" in err and "Wan2.1_VAE.pth" in err
    assert run_ar(tmp_path, tmp_path / "nowhere", prompts) == 2
    assert "nowhere" in capsys.readouterr().err


def test_failure_mid_video_leaves_no_mp4(tmp_path, wan, prompts, monkeypatch):
    from causvid.pipelines import text_to_video

    original = text_to_video.VideoGenerator.stream

    def failing(self, *a, **k):
        for n, block in enumerate(original(self, *a, **k)):
            if n == 1:
                raise RuntimeError("out of memory (simulated)")
            yield block

    monkeypatch.setattr(text_to_video.VideoGenerator, "stream", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        run_ar(tmp_path, wan, prompts)
    assert list((tmp_path / "out").iterdir()) == []


def test_prompts_split_across_ranks(tmp_path, wan, prompts, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run_ar(tmp_path, wan, prompts) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["output_001.mp4"]
