"""The toy world (causvid.toy.world) and its rule-based analyser (causvid.toy.analyser)."""

import numpy as np
import pytest
import torch

from causvid.toy import analyser as A
from causvid.toy.world import (BACKGROUND, COLOURS, DIRECTIONS, SHAPES, VideoSpec, caption, dataset,
                               iter_dataset, parse_caption, render, render_batch, sample_spec, sample_specs,
                               to_uint8)

N = 300


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gt():
    specs = sample_specs(N, seed=123)
    videos = render_batch(specs, 21)
    captions = [caption(s) for s in specs]
    return specs, videos, captions, A.measure_batch(videos)


def _summary(measured, captions):
    return A._summary([A.compare(m, c) for m, c in zip(measured, captions)])


# ---------------------------------------------------------------------------------------------- world


def test_sample_spec_deterministic_and_covers_vocabulary():
    assert sample_spec(5) == sample_spec(5)
    assert sample_spec((1, 2)) == sample_spec((1, 2))
    specs = sample_specs(200, seed=0)
    assert specs[:50] == sample_specs(50, seed=0)  # prefix-stable
    assert specs != sample_specs(200, seed=1)
    assert {s.shape for s in specs} == set(SHAPES)
    assert {s.colour for s in specs} == set(COLOURS)
    assert {s.direction for s in specs} == set(DIRECTIONS)
    assert all(0 <= s.x0 < 32 and 0 <= s.y0 < 32 and s.size == 10 and s.speed == 1 for s in specs)
    ranged = sample_specs(50, seed=0, size=(6, 12), speed=(0.5, 2.0))
    assert all(6 <= s.size <= 12 and 0.5 <= s.speed <= 2.0 for s in ranged)
    with pytest.raises(ValueError):
        VideoSpec("hexagon", "red", "left", 0, 0)


def test_render_deterministic_range_and_background():
    spec = sample_spec(7)
    a, b = render(spec, 21), render(spec, 21)
    assert a.shape == (21, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    bg = torch.tensor(BACKGROUND) * 2 - 1
    # most pixels are exactly the plain background; the shape is ~10 px across
    is_bg = (a == bg[None, :, None, None]).all(1)
    assert 0.85 < is_bg.float().mean() < 0.95
    assert not torch.equal(render(sample_spec(8), 21), a)
    # batch rendering = single rendering; start_frame continues the same video
    specs = sample_specs(5, seed=2)
    batch = render_batch(specs, 9)
    for s, v in zip(specs, batch):
        assert torch.equal(v, render(s, 9))
    assert torch.equal(render(spec, 30)[10:], render(spec, 20, start_frame=10))
    # other resolutions show the same scene
    assert render(spec, 3, size=64).shape == (3, 3, 64, 64)
    # dataset: deterministic (caption, video) pairs, prefix-stable
    d1, d2 = dataset(4, seed=3, num_frames=5), dataset(4, seed=3, num_frames=5)
    assert [c for c, _ in d1] == [c for c, _ in d2]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(d1, d2))
    assert [c for c, _ in iter_dataset(2, seed=3, num_frames=5)] == [c for c, _ in d1[:2]]
    assert to_uint8(d1[0][1]).shape == (5, 32, 32, 3)


def test_wraps_around_for_long_videos():
    """200 frames: the shape crosses the edges many times, stays one (wrapped) component of constant size."""
    specs = [VideoSpec(sh, c, d, x0, y0) for sh, c, d, x0, y0 in [
        ("circle", "red", "right", 30, 0), ("square", "green", "left", 1, 31), ("triangle", "blue", "up", 0, 2),
        ("triangle", "yellow", "down", 17, 29), ("square", "blue", "up", 31, 31), ("circle", "green", "down", 0, 16)]]
    videos = render_batch(specs, 200)
    for spec, v in zip(specs, videos):
        # constant speed 1 on a 32-px canvas: the video is periodic with period 32
        assert torch.equal(v[32:64], v[:32]) and torch.equal(v[160:192], v[:32])
        colour = torch.tensor(COLOURS[spec.colour]) * 2 - 1
        bg = torch.tensor(BACKGROUND) * 2 - 1
        ch = int((colour - bg).abs().argmax())
        alpha = (v[:, ch] - bg[ch]) / (colour[ch] - bg[ch])  # coverage
        area = alpha.sum((1, 2))
        assert torch.allclose(area, area[0], atol=1e-3)
        assert abs(float(area[0]) - {"circle": 25 * np.pi, "square": 100, "triangle": 50}[spec.shape]) < 2
        fg = alpha > 0.01
        assert torch.equal(A._largest_component(fg), fg)  # one connected component modulo wrap
        # some frames really are split over the border
        assert bool((fg[:, 0, :].any(1) & fg[:, -1, :].any(1)).any() | (fg[:, :, 0].any(1) & fg[:, :, -1].any(1)).any())
    res = [A.analyse(v, caption(s)) for s, v in zip(specs, videos)]
    assert all(r["all_ok"] and r["frames_with_object"] == 200 and r["area_cv"] < 1e-3 for r in res)


def test_a_later_start_is_the_same_video_cut_later():
    """`later(spec, k)`: frame t of its video is frame t + k of the original (the start moved along the line of
    motion, wrapped), for every direction, by hand against rendering with start_frame."""
    from causvid.toy.world import later

    for d in ("left", "right", "up", "down"):
        spec = VideoSpec("triangle", "blue", d, 16, 16)
        for k in (0, 5, 21, 40):
            assert torch.equal(render(later(spec, k), 21), render(spec, 21, start_frame=k)), (d, k)


def test_caption_round_trip_and_parsing():
    for spec in sample_specs(100, seed=4):
        text = caption(spec)
        assert text == f"a {spec.colour} {spec.shape} moving {spec.direction}"
        assert parse_caption(text) == (spec.shape, spec.colour, spec.direction)
    assert parse_caption("A RED, Square... moving LEFT!") == ("square", "red", "left")
    assert parse_caption("Blue triangles drifting upwards") == ("triangle", "blue", "up")
    assert parse_caption("a yellow thing") == (None, "yellow", None)
    assert parse_caption("") == (None, None, None)


def test_render_batch_equals_rendering_one_by_one():
    """The batched renderer (what makes data generation fast) draws each video as it is drawn alone."""
    specs = sample_specs(24, seed=9)
    videos = render_batch(specs, 21)
    assert videos.shape == (24, 21, 3, 32, 32)
    for spec, video in zip(specs, videos):
        assert torch.equal(video, render(spec, 21))


# ------------------------------------------------------------------------------------------- analyser


def test_ground_truth_scores_at_least_99_percent(gt):
    specs, videos, captions, measured = gt
    s = _summary(measured, captions)
    for key in ("colour_acc", "shape_acc", "direction_acc", "all_acc", "detected_frac"):
        assert s[key] >= 0.99, s
    assert s["flicker_bg"] < 1e-4 and s["background_err"] < 1e-3 and s["background_std"] < 1e-3
    assert s["flicker"] > 1e-3  # the whole-frame flicker includes the moving shape
    assert abs(s["speed"] - 1) < 0.01
    r = A.analyse(videos[0], captions[0])
    assert (r["shape"], r["colour"], r["direction"]) == parse_caption(captions[0])
    for key in ("colour_ok", "shape_ok", "direction_ok", "all_ok", "flicker", "flicker_bg", "background_rgb",
                "background_err", "colour_consistency", "shape_consistency", "direction_consistency"):
        assert key in r
    assert r["colour_consistency"] == r["shape_consistency"] == r["direction_consistency"] == 1.0


def test_mismatched_captions_score_at_chance(gt):
    specs, videos, captions, measured = gt
    rng = np.random.default_rng(0)
    other = [captions[(i + int(rng.integers(1, N))) % N] for i in range(N)]  # a different random video's
    s = _summary(measured, other)
    for key, k in (("colour_acc", len(COLOURS)), ("shape_acc", len(SHAPES)), ("direction_acc", len(DIRECTIONS))):
        assert abs(s[key] - 1 / k) < 0.08, (key, s[key])
    assert s["all_acc"] < 0.08
    # score() gives the same numbers in one call
    assert A.score(videos[:40], other[:40])["colour_acc"] == _summary(measured[:40], other[:40])["colour_acc"]


def test_noise_robustness(gt):
    specs, videos, captions, _ = gt
    g = torch.Generator().manual_seed(0)
    noisy = videos + 0.05 * torch.randn(videos.shape, generator=g)
    s = A.score(noisy, captions)
    for key in ("colour_acc", "shape_acc", "direction_acc", "all_acc"):
        assert s[key] >= 0.95, s
    assert 0.01 < s["flicker_bg"] < 0.05  # noise shows up as background flicker (sigma 0.025 in [0, 1] units)


def test_input_layouts(gt):
    specs, videos, captions, _ = gt
    for i in range(3):
        u8 = to_uint8(videos[i])  # uint8 [T, H, W, 3]
        assert A.analyse(u8, captions[i])["all_ok"]
        assert A.analyse(torch.from_numpy(u8), captions[i])["all_ok"]
        assert A.analyse(videos[i].permute(0, 2, 3, 1).numpy(), captions[i])["all_ok"]  # float channels-last


def test_noise_blank_and_static_videos_fail():
    cap = "a red square moving left"
    g = torch.Generator().manual_seed(1)
    for video in (torch.rand(21, 3, 32, 32, generator=g) * 2 - 1, torch.randn(21, 3, 32, 32, generator=g),
                  torch.full((21, 3, 32, 32), -0.6), torch.zeros(21, 3, 32, 32), torch.zeros(0, 3, 32, 32)):
        r = A.analyse(video, cap)
        assert not r["detected"] and not r["all_ok"]
        assert not (r["colour_ok"] or r["shape_ok"] or r["direction_ok"])
    pure = A.analyse(torch.rand(21, 3, 32, 32, generator=g) * 2 - 1, cap)
    assert pure["flicker_bg"] > 0.1 and pure["background_err"] > 0.1
    s = A.score(torch.full((3, 21, 3, 32, 32), -0.6), [cap] * 3)
    assert s["all_acc"] == 0 and s["detected_frac"] == 0
    # a shape that does not move: colour and shape right, direction wrong
    spec = VideoSpec("square", "red", "left", 10, 10)
    static = render(spec, 1).expand(21, -1, -1, -1)
    r = A.analyse(static, caption(spec))
    assert r["colour_ok"] and r["shape_ok"] and not r["direction_ok"] and r["direction"] is None
    # a caption without a direction cannot be right about it
    r = A.analyse(render(spec, 21), "a red square")
    assert r["colour_ok"] and r["shape_ok"] and not r["direction_ok"] and not r["all_ok"]


def test_long_videos_and_drift():
    specs = sample_specs(30, seed=11)
    videos = render_batch(specs, 93)
    captions = [caption(s) for s in specs]
    s = A.score(videos, captions)
    for key in ("colour_acc", "shape_acc", "direction_acc", "all_acc"):
        assert s[key] >= 0.99, s
    windows = A.drift(videos[0], captions[0], 21)
    assert [(w["start"], w["end"]) for w in windows] == [(0, 21), (21, 42), (42, 63), (63, 84), (84, 93)]
    assert all(w["all_ok"] and w["background_err"] < 1e-3 and w["flicker_bg"] < 1e-4 for w in windows)
    # a rollout that turns into another video half-way: drift shows where it goes wrong
    a = VideoSpec("circle", "red", "right", 3, 5)
    b = VideoSpec("square", "blue", "down", 20, 9)
    video = torch.cat([render(a, 42), render(b, 51)])
    oks = [w["all_ok"] for w in A.drift(video, caption(a), 21)]
    assert oks == [True, True, False, False, False]
    assert A.analyse(video, caption(a))["shape_consistency"] < 0.6
