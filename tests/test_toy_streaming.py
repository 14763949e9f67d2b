"""The toy world's streaming measurements (causvid.toy.streaming): the switching metric on rendered ground truth,
and both measurements at a tiny size on the shipped student (table structure, and the sanity relation the
metric must satisfy: a fresh stream of B scores B at least as well as a stream of A that never switched)."""
from pathlib import Path

import pytest
import torch

from causvid.config import load_config
from causvid.pipelines.text_to_video import load_components
from causvid.toy import streaming, world

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    config = load_config(ROOT / "configs" / "toy" / "cf_dmd_chunkwise.yaml")
    return load_components(ROOT / "checkpoints" / "toy"), config


def test_frames_until_b_holds_is_the_first_window_showing_b():
    assert streaming.frames_until_holds([False, False, True, False, True]) == 2
    assert streaming.frames_until_holds([True, False]) == 0
    assert streaming.frames_until_holds([False, False]) is None
    assert streaming.frames_until_holds([]) is None


def test_switch_pairs_differ_in_every_attribute_and_start_from_the_held_out_captions():
    pairs = streaming.switch_pairs(16, seed=0)
    held_out = [world.caption(s) for s in world.sample_specs(16, seed=10_000)]  # evaluate.py's eval captions
    assert [a for a, _ in pairs] == held_out
    for a, b in pairs:
        assert all(x != y for x, y in zip(world.parse_caption(a), world.parse_caption(b))), (a, b)


def test_metric_on_rendered_videos(toy):
    """Rendered A for the training window, then rendered B: B holds at once in every window; A throughout: never."""
    vae = toy[0].vae
    a, b = world.sample_spec(1), world.sample_spec(2, shapes=("triangle",), colours=("green",), directions=("up",))
    assert (a.shape, a.colour, a.direction) != ("triangle", "green", "up")
    before, after = vae.num_pixel_frames(6), vae.num_pixel_frames(18) - vae.num_pixel_frames(6)
    switched = torch.cat([world.render(a, before), world.render(b, after, start_frame=before)])
    kw = dict(window=6, windows=2, block=3)
    got = streaming.score_after(switched, 6, world.caption(b), vae, **kw)
    assert got["windows"]["all"] == [True, True] and got["onset_latent"] == 0 and got["onset_pixel"] == 0
    never = streaming.score_after(world.render(a, before + after), 6, world.caption(b), vae, **kw)
    assert never["windows"]["all"] == [False, False] and never["onset_latent"] is None
    # a restart's frames (from latent 0): its first window is 21 pixel frames, not 24
    fresh = streaming.score_after(world.render(b, vae.num_pixel_frames(12)), 0, world.caption(b), vae, **kw)
    assert fresh["windows"]["all"] == [True, True] and fresh["onset_latent"] == 0


def test_measurements_on_the_shipped_student(toy):
    components, config = toy
    result = streaming.measure(components, config, pairs=1, windows=1, strengths=(500,))
    s, v = result["switching"], result["v2v"]
    assert s["switch_latent_frame"] == 6 and s["pixel_frames_per_window"] == 24 and len(s["pairs"]) == 1
    assert tuple(s["modes"]) == streaming.MODES
    for mode in s["modes"].values():
        assert all(len(mode[f"{k}_acc"]) == 1 for k in ("all", "colour", "shape", "direction"))
        assert 0 <= mode["at_once"] <= mode["within_one_block"] <= 1 - mode["never"] + 1e-9
    restart, ignored = s["modes"]["restart with B"], s["modes"]["no switch (A)"]
    assert all(r >= i for r, i in zip(restart["all_acc"], ignored["all_acc"]))
    attributes = ("colour_acc", "shape_acc", "direction_acc")
    assert sum(restart[k][0] for k in attributes) >= sum(ignored[k][0] for k in attributes)
    assert list(v["rows"]) == ["0", "500"]
    assert v["rows"]["0"]["new_colour_acc"] == 0 and v["rows"]["0"]["input_colour_kept"] == 1  # the input itself
    lines = streaming.markdown(result, name="toy")
    rows = [line for line in lines if line.startswith("| ") and "|---" not in line]
    assert len(rows) == 2 + len(streaming.MODES) + len(v["rows"])  # two headers, one row per mode and strength
    assert all(any(line.startswith(f"| {m} |") for line in rows) for m in streaming.MODES)


def test_a_framewise_student_is_judged_on_the_chunkwise_window(toy, monkeypatch):
    """A framewise block is one latent frame (4 pixel frames): its switches are judged on windows of JUDGE_FRAMES
    (3) latent frames, a chunkwise block's, so B for one latent frame after the switch and A again is a switch that
    never took (on 1-frame windows it would take at once)."""
    components, _ = toy
    config = load_config(ROOT / "configs" / "toy" / "cf_dmd_framewise.yaml")
    at = components.vae.num_pixel_frames
    (a, b), = streaming.switch_pairs(1)
    spec_a, spec_b = (world.sample_spec(0, **{f"{k}s": (v,) for k, v in zip(("shape", "colour", "direction"),
                                                                           world.parse_caption(c))}) for c in (a, b))
    blip = torch.cat([world.render(spec_a, at(6)), world.render(spec_b, at(7) - at(6), start_frame=at(6)),
                      world.render(spec_a, at(12) - at(7), start_frame=at(7))])

    def stream(components, config, prompt, frames, generator, switch=None, kv=None):
        return blip if frames == 12 else world.render(spec_a, at(frames))  # the restart: A, never B
    monkeypatch.setattr(streaming, "_stream", stream)
    result = streaming.measure_switching(components, config, pairs=1, windows=1)
    assert (result["block"], result["judge_latent_frames"]) == (1, streaming.JUDGE_FRAMES) == (1, 3)
    assert result["modes"]["re-cache + re-sink"]["never"] == 1
    assert result["modes"]["re-cache + re-sink"]["at_once"] == 0


def test_the_track_follows_the_world_a_hard_cut_jumps_and_an_empty_frame_has_no_object():
    """analyser.track on renders: steps of the world's 1 px a frame; across a cut to another spec, the distance
    between the two centres by hand (wrap-aware on the 32-px canvas), which a continuous switch keeps near 1 px;
    a background-only frame is found empty and breaks the steps on both sides of it."""
    from dataclasses import replace

    from causvid.toy import analyser

    a = replace(world.sample_spec(1, directions=("right",), shapes=("circle",)), x0=4.0, y0=10.0)
    b = replace(world.sample_spec(2, directions=("up",), shapes=("circle",)), x0=30.0, y0=20.0)
    assert a.speed == b.speed == 1.0 and a.canvas == 32
    steps = analyser.track(torch.cat([world.render(a, 4), world.render(b, 3)]))["steps"]
    assert len(steps) == 6 and all(abs(x - 1) <= 0.05 for x in steps[:3] + steps[4:])
    # a's centre at frame 3: (7, 10); b's at 0: (30, 20): dx wraps to -9, dy 10
    assert abs(steps[3] - (9 ** 2 + 10 ** 2) ** 0.5) <= 0.1
    background = torch.tensor(world.BACKGROUND).view(1, 3, 1, 1).expand(1, 3, 32, 32) * 2 - 1  # no shape
    gap = analyser.track(torch.cat([world.render(a, 2), background, world.render(a, 2, start_frame=3)]))
    assert gap["found"] == [True, True, False, True, True] and gap["steps"][1:3] == [None, None]
    assert abs(gap["steps"][0] - 1) <= 0.05 and abs(gap["steps"][3] - 1) <= 0.05


def test_a_partial_recache_is_measured_against_the_whole_window_with_its_continuity(toy, monkeypatch):
    """With model_kwargs.recache_frames / recache_noise set, the session's switch and LongLive's whole-window clean
    re-cache are both measured (the latter told recache_frames -1, recache_noise 0), and each mode's step across
    the switch and after it is read from its frames: a stream that cuts to B's own start jumps, one that carries on from A's place does not."""
    from dataclasses import replace

    components, _ = toy
    config = load_config(ROOT / "configs" / "toy" / "cf_dmd_framewise.yaml",
                         overrides=["model_kwargs.recache_frames=1", "model_kwargs.recache_noise=375"])
    at = components.vae.num_pixel_frames
    (a, b), = streaming.switch_pairs(1)
    spec_a, spec_b = (world.sample_spec(0, **{f"{k}s": (v,) for k, v in zip(("shape", "colour", "direction"),
                                                                           world.parse_caption(c))}) for c in (a, b))
    spec_a, spec_b = replace(spec_a, x0=4.0, y0=4.0), replace(spec_b, x0=20.0, y0=20.0)
    dx, dy = world.DIRECTION_VECTORS[spec_a.direction]
    carry_on = replace(spec_b, x0=(4.0 + (at(6) - 1) * dx) % 32, y0=(4.0 + (at(6) - 1) * dy) % 32)  # A's last place
    switches = []

    def stream(components, config, prompt, frames, generator, switch=None, kv=None):
        if switch is None:  # A throughout, or the restart: B from its own start
            return world.render(spec_a if prompt == a else spec_b, at(frames))
        switches.append(switch)  # B from A's last place, one frame on
        return torch.cat([world.render(spec_a, at(6)), world.render(carry_on, at(frames) - at(6), start_frame=1)])
    monkeypatch.setattr(streaming, "_stream", stream)
    result = streaming.measure_switching(components, config, pairs=1, windows=1)
    assert tuple(result["modes"]) == streaming.MODES[:1] + (streaming.LONGLIVE,) + streaming.MODES[1:]
    assert [s[2:] for s in switches] == [(True, True), (True, True, -1, 0), (True, False), (False,)]
    assert result["recache_frames"] == 1
    for mode in ("re-cache + re-sink", streaming.LONGLIVE):
        m = result["modes"][mode]
        assert abs(m["median_jump_px"] - 1) <= 0.05 and abs(m["median_speed_after_px"] - 1) <= 0.05
    assert result["modes"]["restart with B"]["median_jump_px"] > 10  # from A's last place to B's start
    assert all(m["no_object"] == 0 for m in result["modes"].values())  # rendered: an object in every frame
    table = "\n".join(streaming.markdown(dict(switching=result, v2v=dict(videos=0, latent_frames=6, rows={}))))
    assert f"| {streaming.LONGLIVE} |" in table and "latest 1 latent frame(s)" in table and "t = 375" in table


def test_cli_rejects_bad_strengths_in_one_line(capsys):
    assert streaming.main(["--checkpoint", "checkpoints/toy", "--config", "configs/toy/cf_dmd_chunkwise.yaml",
                           "--strengths", "500,1200"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --strengths") and "\n" not in err
