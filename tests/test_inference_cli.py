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
    """A CausVid-style checkpoint folder: model.pt with an FSDP-prefixed 'generator' (and an EMA)."""
    folder = tmp_path_factory.mktemp("ckpt")
    state = random_dit("tiny", seed=7).state_dict()
    torch.save({"generator": {f"model._fsdp_wrapped_module.{k}": v for k, v in state.items()},
                "generator_ema": {f"model.{k}": v for k, v in state.items()}}, folder / "model.pt")
    return folder


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
    out = tmp_path / "out"
    assert inference(["--config_path", str(TINY / "causal_forcing_dmd_framewise.yaml"), "--checkpoint_path",
                      str(checkpoint / "model.pt"), "--data_path", str(prompts), "--output_folder", str(out),
                      "--wan_model_path", str(wan), "--use_ema", "--seed", "3"]) == 0
    assert frames(out / "a red square moving left.mp4") == (13, 32, 32)  # 4 latent frames
    assert (out / "a blue circle moving up.mp4").exists()


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
    out = tmp_path / "out"
    assert longvideo(["--config_path", str(TINY / "wan_causal_dmd.yaml"), "--checkpoint_folder", str(checkpoint),
                      "--output_folder", str(out), "--prompt_file_path", str(prompts), "--wan_model_path", str(wan),
                      "--num_rollout", "3", "--num_overlap_frames", "3", "--mode", mode]) == 0
    # 3 rollouts of 21 frames sharing 9 frames twice: 21 + 2 * 12 = 45 (12 latent frames, 2x the training 6)
    assert frames(out / "long_video_output_000.mp4") == (45, 32, 32)


def test_i2v_first_frame_is_the_image(tmp_path, wan, checkpoint):
    data = tmp_path / "i2v"
    (data / "26-15").mkdir(parents=True)
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (255, 0, 0)
    iio.imwrite(data / "26-15" / "000001.png", image)
    (data / "target_crop_info_26-15.json").write_text(json.dumps([{
        "file_name": "000001.png", "caption": "a red wall", "type": "i2v", "origin_width": 64, "origin_height": 64,
        "target_crop": {"target_bbox": [0, 0, 64, 64], "target_ratio": "1:1"}}]))
    out = tmp_path / "out"
    argv = ["--config_path", str(TINY / "causal_forcing_dmd_framewise.yaml"), "--checkpoint_path",
            str(checkpoint / "model.pt"), "--data_path", str(data), "--output_folder", str(out),
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
