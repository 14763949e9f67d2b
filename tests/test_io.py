"""Prompt files, file names, mp4 writing/reading, image loading, crop info."""

import json
import os
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from causvid.data.prompts import PromptDataset, PromptFileError, read_prompt_file, shard_for_rank
from causvid.video_io import (
    CropInfoError,
    ImageReadError,
    VideoReadError,
    VideoWriter,
    load_image,
    read_crop_info,
    read_video,
    safe_filename,
    to_uint8_frames,
    video_info,
    write_video,
)


# --------------------------------------------------------------------------- #
# prompt files
# --------------------------------------------------------------------------- #


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_prompt_file_basic(tmp_path):
    p = _write(tmp_path / "p.txt", b"  a cat  \r\nsecond prompt\n\tthird\t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without blank lines
        assert read_prompt_file(p) == ["a cat", "second prompt", "third"]
    assert read_prompt_file(str(p)) == ["a cat", "second prompt", "third"]


def test_prompt_file_missing(tmp_path):
    with pytest.raises(PromptFileError, match="not found") as e:
        read_prompt_file(tmp_path / "nope.txt")
    assert "nope.txt" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_prompt_file_is_folder(tmp_path):
    with pytest.raises(PromptFileError, match="directory") as e:
        read_prompt_file(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("data, what", [(b"", "empty"), (b"\xef\xbb\xbf", "empty"), (b"\n  \n\t\r\n", "only blank")])
def test_prompt_file_empty_or_blank(tmp_path, data, what):
    p = _write(tmp_path / "e.txt", data)
    with pytest.raises(PromptFileError, match=what) as e:
        read_prompt_file(p)
    assert "e.txt" in str(e.value) and "\n" not in str(e.value)


def test_prompt_file_blank_lines_warned_once(tmp_path):
    p = _write(tmp_path / "b.txt", b"one\n\n   \ntwo\n\nthree\n")
    with pytest.warns(UserWarning, match="skipped 3 blank lines") as rec:
        assert read_prompt_file(p) == ["one", "two", "three"]
    assert len(rec) == 1


def test_prompt_file_not_utf8(tmp_path):
    p = _write(tmp_path / "latin.txt", "ok line\nsecond\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(PromptFileError) as e:
        read_prompt_file(p)
    msg = str(e.value)
    assert "latin.txt" in msg and "UTF-8" in msg and "line 3" in msg
    assert f"byte offset {len(b'ok line|second|caf')}" in msg
    assert "re-encode" in msg and "\n" not in msg


def test_prompt_file_bom(tmp_path):
    p = _write(tmp_path / "bom.txt", "\ufeffeins\nzwei\n".encode("utf-8"))
    assert read_prompt_file(p) == ["eins", "zwei"]
    # the byte offset counts the BOM (offset in the file as stored)
    p = _write(tmp_path / "bom_bad.txt", b"\xef\xbb\xbfab\xff\n")
    with pytest.raises(PromptFileError, match=r"line 1 \(byte offset 5\)"):
        read_prompt_file(p)


def test_prompt_file_long_prompt_intact(tmp_path):
    words = [f"w\u00f6rd{i}" for i in range(2000)]
    long = " ".join(words)
    p = _write(tmp_path / "long.txt", f"short\n{long}\nlast\n".encode("utf-8"))
    got = read_prompt_file(p)
    assert got == ["short", long, "last"]
    assert len(got[1].split()) == 2000


def test_prompt_dataset_and_shards(tmp_path):
    items = [f"p{i}" for i in range(7)]
    assert shard_for_rank(items, 0, 3) == [(0, "p0"), (3, "p3"), (6, "p6")]
    assert shard_for_rank(items, 1, 3) == [(1, "p1"), (4, "p4")]
    assert shard_for_rank(items, 2, 3) == [(2, "p2"), (5, "p5")]
    assert shard_for_rank(items, 0, 1) == list(enumerate(items))
    # every item exactly once over all ranks, nothing padded
    for world in (1, 2, 3, 8, 10):
        seen = sorted(i for r in range(world) for i, _ in shard_for_rank(items, r, world))
        assert seen == list(range(7))
    assert shard_for_rank(items, 9, 10) == []
    for rank, world in [(3, 3), (-1, 2), (0, 0)]:
        with pytest.raises(ValueError):
            shard_for_rank(items, rank, world)

    ds = PromptDataset(items)
    assert len(ds) == 7 and ds[2] == {"prompts": "p2", "idx": 2}
    ds = PromptDataset.from_shard(shard_for_rank(items, 1, 3))
    assert [ds[i] for i in range(len(ds))] == [{"prompts": "p1", "idx": 1}, {"prompts": "p4", "idx": 4}]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["prompts"] == ["p1", "p4"] and batch["idx"].tolist() == [1, 4]
    assert PromptDataset(["a", "b"], indices=[5, 9])[1] == {"prompts": "b", "idx": 9}
    with pytest.raises(TypeError):
        PromptDataset("a single string")
    _write(tmp_path / "p.txt", b"x\ny\n")
    assert PromptDataset.from_file(tmp_path / "p.txt")[1] == {"prompts": "y", "idx": 1}


# --------------------------------------------------------------------------- #
# file names
# --------------------------------------------------------------------------- #

_WIN_FORBIDDEN = set('<>:"/\\|?*')


def _assert_portable(name):
    assert name and name not in (".", "..")
    assert not (set(name) & _WIN_FORBIDDEN)
    assert all(ord(c) >= 32 and c != "\x7f" for c in name)
    assert not name.endswith((" ", ".")) and not name.startswith((" ", "."))
    assert len(name.encode("utf-8")) <= 200


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat/dog\\bird", "a cat_dog_bird"),
        ('what? <yes>: "no" | *', "what_ _yes__ _no_ _ _"),
        ("line one\nline\ttwo\r\n", "line one line two"),
        ("  ..trailing dots...  ", "trailing dots"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("", "untitled"),
        ("   \n\t ", "untitled"),
        ("...", "untitled"),
        ("CON", "CON_"),
        ("con.mp4", "con_.mp4"),
        ("Lpt9", "Lpt9_"),
        ("nul ", "nul_"),
        ("COM10", "COM10"),
        ("CONSOLE", "CONSOLE"),
        ("Café crème, 猫が走る, Ωμέγα ☕", "Café crème, 猫が走る, Ωμέγα ☕"),
        ("e\u0301t\u00e9", "\u00e9t\u00e9"),  # NFC
        ("zero\u200bwidth\u202egnp.exe", "zerowidthgnp.exe"),
    ],
)
def test_safe_filename_cases(text, expected):
    got = safe_filename(text)
    assert got == expected
    assert safe_filename(text) == got  # deterministic
    _assert_portable(got)


def test_safe_filename_length():
    long = "A majestic eagle soaring over snowy mountains at sunrise " * 10
    name = safe_filename(long)
    assert len(name) <= 100 and long.startswith(name)
    assert safe_filename(long, max_len=20) == "A majestic eagle soa"
    # only the first max_len characters matter
    assert safe_filename("x" * 100 + "A") == safe_filename("x" * 100 + "B")
    # multi-byte text is cut to max_bytes at a character boundary
    cjk = "猫" * 100
    name = safe_filename(cjk)
    assert len(name.encode("utf-8")) <= 200 and set(name) == {"猫"} and len(name) == 66
    _assert_portable(name)
    # cut that lands before a space/dot is cleaned up again
    assert safe_filename("ab. cd", max_len=4) == "ab"


# --------------------------------------------------------------------------- #
# frames and mp4
# --------------------------------------------------------------------------- #


def _gradient_video(T=12, H=32, W=48):
    """Smooth video in [-1, 1], [T, 3, H, W]: horizontal/vertical ramps moving over time."""
    t = torch.arange(T, dtype=torch.float32)[:, None, None]
    y = torch.linspace(0, 1, H)[None, :, None]
    x = torch.linspace(0, 1, W)[None, None, :]
    r = x.expand(T, H, W)  # static horizontal ramp
    g = (0.8 * y + 0.01 * t).expand(T, H, W)  # vertical ramp, brightening over time
    b = ((x + y) / 2 * 0.9 + 0.005 * t).expand(T, H, W)  # diagonal ramp
    return (torch.stack([r, g, b], dim=1) * 2 - 1).contiguous()


def test_to_uint8_frames_layouts():
    v = _gradient_video(T=2, H=4, W=6)
    a = to_uint8_frames(v)
    assert a.dtype == np.uint8 and a.shape == (2, 4, 6, 3) and a.flags["C_CONTIGUOUS"]
    assert np.array_equal(a, to_uint8_frames(v.permute(0, 2, 3, 1)))
    assert np.array_equal(a, to_uint8_frames(torch.from_numpy(a)))
    assert np.array_equal(a, to_uint8_frames(v.permute(0, 2, 3, 1).numpy()))
    half = to_uint8_frames(v.to(torch.bfloat16))  # low-precision dtypes are accepted
    assert np.abs(half.astype(int) - a.astype(int)).max() <= 2
    ext = to_uint8_frames(torch.tensor([-1.0, 0.0, 1.0, 5.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4))
    assert ext[0, 0, :, 0].tolist() == [0, 128, 255, 255]
    with pytest.raises(ValueError):
        to_uint8_frames(torch.zeros(2, 4, 5, 6))
    with pytest.raises(ValueError, match="non-finite"):
        to_uint8_frames(torch.full((1, 3, 2, 2), float("nan")))


def test_writer_blocks_roundtrip(tmp_path):
    video = _gradient_video(T=12, H=32, W=48)
    out = tmp_path / "sub" / "gradient.mp4"
    with VideoWriter(out, fps=16) as w:
        for block in video.split(4):  # 3 blocks as a streaming rollout would produce
            w.write(block)
            assert not out.exists()
            assert os.path.exists(str(out) + ".partial")
        assert w.frames_written == 12
    assert out.exists() and not os.path.exists(str(out) + ".partial")
    assert sorted(os.listdir(out.parent)) == ["gradient.mp4"]

    assert video_info(out) == (12, 32, 48, 16.0)
    frames = read_video(out)
    assert frames.shape == (12, 32, 48, 3) and frames.dtype == np.uint8
    ref = to_uint8_frames(video).astype(np.float32)
    mae = np.abs(frames.astype(np.float32) - ref).mean()
    assert mae < 3.0, mae


def test_write_video_one_shot_and_tiny_sizes(tmp_path):
    v = torch.randint(0, 256, (3, 2, 2, 3), dtype=torch.uint8)
    path = write_video(tmp_path / "tiny.mp4", v, fps=8)
    assert video_info(path) == (3, 2, 2, 8.0)
    # 32x32 is not resized to a multiple of 16
    write_video(tmp_path / "sq.mp4", torch.zeros(2, 3, 32, 32))
    assert read_video(tmp_path / "sq.mp4").shape == (2, 32, 32, 3)


def test_writer_exception_leaves_nothing(tmp_path):
    out = tmp_path / "fail.mp4"
    with pytest.raises(RuntimeError, match="rollout blew up"):
        with VideoWriter(out) as w:
            w.write(_gradient_video(T=4, H=16, W=16))
            assert os.path.exists(str(out) + ".partial")
            raise RuntimeError("rollout blew up")
    assert os.listdir(tmp_path) == []

    w = VideoWriter(tmp_path / "aborted.mp4")
    w.write(_gradient_video(T=2, H=16, W=16))
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="closed"):
        w.write(_gradient_video(T=2, H=16, W=16))


def test_writer_errors(tmp_path):
    with pytest.raises(ValueError, match="odd"):
        with VideoWriter(tmp_path / "odd.mp4") as w:
            w.write(torch.zeros(2, 3, 33, 32))
    with pytest.raises(ValueError, match="differs"):
        with VideoWriter(tmp_path / "mix.mp4") as w:
            w.write(torch.zeros(2, 3, 16, 16))
            w.write(torch.zeros(2, 3, 16, 32))
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "none.mp4"):
            pass
    with pytest.raises(ValueError, match=".mp4"):
        VideoWriter(tmp_path / "x.gif")
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", fps=0)
    assert os.listdir(tmp_path) == []


def test_read_video_errors(tmp_path):
    good = tmp_path / "good.mp4"
    write_video(good, _gradient_video(T=8, H=16, W=16))
    data = good.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.mp4").write_bytes(b"definitely not a video " * 50)
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases = ["trunc.mp4", "junk.mp4", "empty.mp4", "missing.mp4"]
    for name in cases:
        for fn in (read_video, video_info):
            with pytest.raises(VideoReadError) as e:
                fn(tmp_path / name)
            msg = str(e.value)
            assert name in msg and "\n" not in msg, msg
            assert isinstance(e.value, ValueError)


# --------------------------------------------------------------------------- #
# images
# --------------------------------------------------------------------------- #

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _stripes_png(path, colours, height=32, stripe=16):
    img = np.concatenate([np.broadcast_to(np.array(c, np.uint8), (height, stripe, 3)) for c in colours], axis=1)
    iio.imwrite(path, np.ascontiguousarray(img))
    return img


def _as_rgb255(t):
    return ((t + 1) * 127.5).round().permute(1, 2, 0).numpy()


def test_load_image_aspect_preserving_center_crop(tmp_path):
    # 64x32 image, left half red and right half blue -> 16x16 keeps the middle
    p = tmp_path / "rb.png"
    _stripes_png(p, [RED, RED, BLUE, BLUE])
    out = load_image(p, 16, 16)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    img = _as_rgb255(out)
    assert np.abs(img[:, :6] - RED).max() < 8  # left of the seam red
    assert np.abs(img[:, 10:] - BLUE).max() < 8  # right of the seam blue

    # green | red | blue | green: a centre crop shows only red and blue, a stretch would show green
    p = tmp_path / "grbg.png"
    _stripes_png(p, [GREEN, RED, BLUE, GREEN])
    img = _as_rgb255(load_image(p, 16, 16))
    # (the antialiasing filter lets a trace of green bleed into the outermost columns)
    assert img[:, 1:-1, 1].max() < 8 and img[..., 1].max() < 40, "green edges must be cropped away, not squeezed in"
    assert np.abs(img[:, 1:6] - RED).max() < 8 and np.abs(img[:, 10:-1] - BLUE).max() < 8

    # landscape target from a portrait crop: top/bottom are cut
    p = tmp_path / "tall.png"
    tall = np.zeros((64, 16, 3), np.uint8)
    tall[:16] = GREEN
    tall[16:48] = RED
    tall[48:] = GREEN
    iio.imwrite(p, tall)
    img = _as_rgb255(load_image(p, 8, 16))
    assert np.abs(img - RED).max() < 8


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # imageio trying its legacy plugins on bad.png
def test_load_image_crop_and_formats(tmp_path):
    p = tmp_path / "grbg.png"
    _stripes_png(p, [GREEN, RED, BLUE, GREEN])  # 64 wide, 32 high
    # crop the green stripe on the right only
    img = _as_rgb255(load_image(p, 8, 8, crop=(48, 0, 64, 32)))
    assert np.abs(img - GREEN).max() < 8
    # crop clipped to the image
    img = _as_rgb255(load_image(p, 8, 8, crop=(16, 8, 32, 100)))
    assert np.abs(img - RED).max() < 8
    with pytest.raises(ImageReadError, match="grbg.png"):
        load_image(p, 8, 8, crop=(70, 0, 80, 10))
    # a box measured on a 2x larger original is scaled to the file: the blue stripe
    img = _as_rgb255(load_image(p, 8, 8, crop=(64, 0, 96, 64), crop_ref_size=(128, 64)))
    assert np.abs(img - BLUE).max() < 8

    # grey and RGBA images become RGB
    grey = tmp_path / "grey.png"
    iio.imwrite(grey, np.full((10, 10), 200, np.uint8))
    img = _as_rgb255(load_image(grey, 4, 4))
    assert np.abs(img - 200).max() < 2
    rgba = tmp_path / "rgba.png"
    a = np.zeros((10, 10, 4), np.uint8)
    a[..., 2] = 255
    iio.imwrite(rgba, a)
    assert np.abs(_as_rgb255(load_image(rgba, 4, 4)) - BLUE).max() < 2

    with pytest.raises(ImageReadError, match="missing.png"):
        load_image(tmp_path / "missing.png", 8, 8)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="bad.png"):
        load_image(bad, 8, 8)


# --------------------------------------------------------------------------- #
# crop info
# --------------------------------------------------------------------------- #


def test_read_crop_info(tmp_path):
    entries = [
        {
            "file_name": "a.jpg",
            "caption": "a red car",
            "target_crop": {"target_bbox": [0.25, 0.0, 0.75, 0.5]},
            "type": "vehicle",
            "origin_width": 640,
            "origin_height": 480,
        },
        {
            "file_name": "b.png",
            "caption": "a dog",
            "target_crop": {"target_bbox": [10, 20, 110, 220]},
            "origin_width": 200,
            "origin_height": 300,
        },
    ]
    p = tmp_path / "target_crop_info_test.json"
    p.write_text(json.dumps(entries))
    info = read_crop_info(p)
    assert set(info) == {"a.jpg", "b.png"}
    assert info["a.jpg"]["caption"] == "a red car"
    assert info["a.jpg"]["bbox"] == (160, 0, 480, 240)
    assert info["a.jpg"]["type"] == "vehicle"
    assert info["b.png"]["bbox"] == (10, 20, 110, 220)
    assert info["b.png"]["type"] is None


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "invalid JSON"),
        ('{"file_name": "a"}', "JSON list"),
        ('[{"caption": "x", "target_crop": {"target_bbox": [0, 0, 5, 5]}}]', "file_name"),
        ('[{"file_name": "a", "target_crop": {"target_bbox": [0, 0, 5, 5]}}]', "caption"),
        ('[{"file_name": "a", "caption": "x"}]', "target_bbox"),
        ('[{"file_name": "a", "caption": "x", "target_crop": {"target_bbox": [0, 0, 5]}}]', "4 numbers"),
        ('[{"file_name": "a", "caption": "x", "target_crop": {"target_bbox": [0, 0, 0.5, 0.5]}}]', "origin_width"),
        ('[{"file_name": "a", "caption": "x", "target_crop": {"target_bbox": [9, 0, 5, 5]}}]', "empty"),
    ],
)
def test_read_crop_info_errors(tmp_path, content, match):
    p = tmp_path / "target_crop_info_bad.json"
    p.write_text(content)
    with pytest.raises(CropInfoError, match=match) as e:
        read_crop_info(p)
    assert "target_crop_info_bad.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CropInfoError, match="not found"):
        read_crop_info(tmp_path / "missing.json")
