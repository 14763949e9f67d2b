"""Prompt schedules and video-to-video through the CLIs, on the shipped toy student (real loading code): one
video per schedule line with the frames it implies, bad schedules and inputs rejected before any model loads
(one line naming the line / flag), V2V at --strength 1 equal to text-to-video from the same noise, and --strength
cutting the student's steps as diffusers' image-to-image cuts its schedule."""
import json
import re
from pathlib import Path

import pytest
import torch

from causvid.config import load_config
from causvid.pipelines.text_to_video import VideoGenerator, load_components
from causvid.toy import world
from causvid.video_io import read_video, video_info, write_video

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml"
TOY = ROOT / "checkpoints" / "toy"
inference = load_script("inference.py").main
autoregressive = load_script("minimal_inference/autoregressive_inference.py").main
A, B, C = "a red square moving left", "a blue circle moving up", "a green triangle moving down"


def schedule_file(tmp_path, *lines):
    path = tmp_path / "schedule.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def base(tmp_path, wan=TOY):
    return ["--config_path", str(CONFIG), "--wan_model_path", str(wan), "--output_folder", str(tmp_path / "out")]


def test_a_schedule_writes_one_video_per_line(tmp_path, capsys):
    path = schedule_file(tmp_path, [{"prompt": A, "start_frame": 0}, {"prompt": B, "start_frame": 6}],
                         [{"prompt": C, "start_frame": 0}])
    assert autoregressive(base(tmp_path) + ["--prompt_schedule", str(path), "--num_output_frames", "9"]) == 0
    videos = sorted((tmp_path / "out").glob("*.mp4"))
    assert [v.name for v in videos] == ["output_000.mp4", "output_001.mp4"]
    assert all(video_info(v)[:3] == (1 + 4 * 8, 32, 32) for v in videos)  # 9 latent frames -> 33 pixel frames
    assert "2 videos written" in capsys.readouterr().out


def test_a_switch_changes_what_follows_and_nothing_before():
    """A schedule [(A, 0), (B, 3)] is a session on A with set_prompt(B) before frame 3, from the same noise: equal
    to it, equal to the unswitched video before the switch, different after."""
    from causvid import rng
    from causvid.pipelines.stream import StreamSession

    components, cfg = load_components(TOY), load_config(CONFIG)
    generator = VideoGenerator(components, cfg)
    plain = torch.cat([x for x, _ in generator.stream(A, num_frames=9, seed=1)], 1)
    switched = torch.cat([x for x, _ in generator.stream([(A, 0), (B, 3)], num_frames=9, seed=1)], 1)
    gen = rng.generator(1, 0, 0)  # the noise of (seed 1, prompt 0, rollout 0)
    noise = torch.randn(1, 9, *cfg.image_or_video_shape[2:], generator=gen)
    session = StreamSession(components, cfg, A, noise=noise, generator=gen)
    blocks = [session.next_block()]
    session.set_prompt(B)
    blocks += list(session)
    assert [b.prompt for b in blocks] == [A, B, B]
    assert torch.equal(switched, torch.cat([b.latents for b in blocks], 1))
    assert torch.equal(plain[:, :3], switched[:, :3])
    assert (plain[:, 3:] - switched[:, 3:]).abs().max() > 1e-2


@pytest.mark.parametrize("line, message", [
    ("not json", r"schedule.jsonl:1: not JSON"),
    ([{"prompt": A, "start_frame": 3}, {"prompt": B, "start_frame": 0}], r":1: the first prompt must start at frame 0"),
    ([{"prompt": A, "start_frame": 0}, {"prompt": B, "start_frame": 0}], r":1: start_frame 0 does not follow 0"),
    ([{"prompt": "  ", "start_frame": 0}], r":1: empty prompt"),
    ([{"prompt": A, "start_frame": 0}, {"prompt": B, "start_frame": 4}],
     r":1: start_frame 4 is not on a block boundary"),
    ([{"prompt": A, "start_frame": 0}, {"prompt": B, "start_frame": 6}], r":1: start_frame 6 is past the video's end"),
])
def test_bad_schedules_fail_before_loading_naming_the_line(tmp_path, capsys, line, message):
    empty_wan = tmp_path / "empty_wan"  # loading from it would fail: the check must come first
    empty_wan.mkdir()
    path = schedule_file(tmp_path, line)
    code = inference(base(tmp_path, empty_wan) + ["--prompt_schedule", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_schedule_or_prompt_file_not_both(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text(A + "\n")
    path = schedule_file(tmp_path, [{"prompt": A, "start_frame": 0}])
    assert inference(base(tmp_path) + ["--data_path", str(prompts), "--prompt_schedule", str(path)]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.fixture(scope="module")
def source_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v2v") / "source.mp4"
    video = world.render(world.VideoSpec("square", "red", "left", 16.0, 16.0), num_frames=21)
    write_video(path, video)
    return path


def test_v2v_at_strength_1_equals_text_to_video(tmp_path, source_video, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text(B + "\n")
    t2v = base(tmp_path) + ["--data_path", str(prompts), "--num_output_frames", "6"]
    assert inference(t2v) == 0
    v2v = base(tmp_path / "v") + ["--data_path", str(prompts), "--input_video", str(source_video), "--strength", "1"]
    assert inference(v2v) == 0
    assert "--strength 1.0: the input is noised to timestep 1000 and denoised with 4 steps of the student's 4" \
        in capsys.readouterr().out
    name = f"{B}.mp4"
    assert (read_video(tmp_path / "out" / name) == read_video(tmp_path / "v" / "out" / name)).all()


def test_v2v_keeps_the_input_at_low_strength(tmp_path, source_video):
    """The CLI's V2V video is the session's (tests/test_stream.py pins that against a hand SDEdit reference) on the
    encoded input at --strength, from the noise of (seed 0, prompt 0), written as the CLI writes videos; at
    T = 150 it keeps the input."""
    from argparse import Namespace
    from causvid.pipelines.cli import FPS, input_latents

    prompts = tmp_path / "p.txt"
    prompts.write_text(B + "\n")
    assert autoregressive(base(tmp_path) + ["--prompt_file_path", str(prompts), "--input_video", str(source_video),
                                            "--strength_timestep", "150"]) == 0  # CausVid's recipe: T itself
    out = read_video(tmp_path / "out" / "output_000.mp4")
    generator = VideoGenerator(load_components(TOY), load_config(CONFIG))
    source = input_latents(Namespace(input_video=source_video), generator)
    pixels = torch.cat([p for _, p in generator.stream(B, seed=0, index=0, input_latents=source, strength=150)], 1)
    expected = read_video(write_video(tmp_path / "expected.mp4", pixels[0], fps=FPS))
    assert out.shape == read_video(source_video).shape  # 21 frames in, 6 latent frames = 2 whole blocks, 21 out
    assert (out == expected).all()
    assert abs(out.astype(float) - read_video(source_video).astype(float)).mean() < 10  # of 255: the input kept


@pytest.mark.parametrize("kind, flags, message", [
    ("text", ["--strength", "0.5"], "source.mp4"),
    ("short", ["--strength", "0.5"], "fewer latent frames than one block"),
    ("ok", ["--strength", "0"], r"--strength 0\.0: give a fraction of the noise schedule in \(0, 1\]"),
    ("ok", ["--strength", "2"], r"--strength 2\.0: give a fraction of the noise schedule in \(0, 1\].*--strength_timestep"),
    ("ok", ["--strength", "0.2"], r"--strength 0\.2: the student has 4 steps, so the smallest strength that runs one is "
                                  r"0\.25"),
    ("ok", ["--strength_timestep", "1001"], r"--strength_timestep 1001\.0: give a timestep in \(0, 1000\]"),
    ("ok", [], r"--input_video needs --strength F"),
])
def test_v2v_bad_inputs_fail_cleanly(tmp_path, capsys, monkeypatch, source_video, kind, flags, message):
    video = tmp_path / "source.mp4"
    if kind == "text":
        video.write_text("not a video")
    elif kind == "short":
        write_video(video, torch.zeros(5, 3, 32, 32))  # 5 frames -> 2 latent frames < one block of 3
    else:
        video = source_video
    prompts = tmp_path / "p.txt"
    prompts.write_text(B + "\n")
    if kind == "ok":  # flag errors: before any model loads
        from causvid.pipelines import text_to_video
        monkeypatch.setattr(text_to_video, "load_components", lambda *a, **k: pytest.fail("the model loaded first"))
    code = inference(base(tmp_path) + ["--data_path", str(prompts), "--input_video", str(video)] + flags)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and re.search(message, err), err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())  # no partial mp4


@pytest.mark.parametrize("strength", [1.0, 0.75, 0.5, 0.3, 0.25])
def test_strength_is_a_fraction_of_the_schedule_as_in_diffusers(strength):
    """--strength maps to the student's steps as diffusers' image-to-image get_timesteps cuts its schedule: the
    reference is diffusers' own method, run on the student's steps (warped [1000, 750, 500, 250] at shift 5,
    by hand 1000 * 5s / (1 + 4s): 1000, 937.5, 833.33, 625)."""
    from types import SimpleNamespace

    from diffusers import StableDiffusionImg2ImgPipeline

    from causvid.config import load_config
    from causvid.pipelines.stream import strength_timestep

    steps = torch.tensor([1000.0, 937.5, 2500 / 3, 625.0])
    scheduler = SimpleNamespace(timesteps=steps, order=1)
    expected, runs = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), 4, strength,
                                                                  "cpu")
    timestep, run, total = strength_timestep(load_config(CONFIG), strength)
    assert (timestep, run, total) == (pytest.approx(float(expected[0]), rel=1e-6), runs, 4)
