"""Tests for the MixKit data-preparation scripts in distillation_data/.

download_mixkit (extraction only: no network), move_mixkit, slice_video,
process_mixkit and causvid.data.video_info.read_info.  Every video is a tiny
real mp4 built here (nothing of the video path is mocked); main() is called
in-process.
"""
import importlib.util
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from causvid.data.video_info import VideoInfoError, read_info
from causvid.video_io import read_video, video_info, write_video

SCRIPTS = Path(__file__).resolve().parents[1] / "distillation_data"


def _load(name):
    # distillation_data/ is a folder of scripts, not a package: load the file directly.  It is
    # registered under its own name (and the folder put on sys.path) so that the worker processes
    # of process_mixkit can unpickle its task function whatever the start method.
    if name in sys.modules:
        return sys.modules[name]
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


dm = _load("download_mixkit")
mm = _load("move_mixkit")
sv = _load("slice_video")
pm = _load("process_mixkit")


def gray_video(path, n, fps, step, h=32, w=48):
    """n frames, frame i uniformly grey at level i * step."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = i * step
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), frames, fps=fps)
    return path


def grey_levels(path):
    return [float(f.mean()) for f in read_video(str(path))]


# --------------------------------------------------------------------------- #
# download_mixkit: extraction
# --------------------------------------------------------------------------- #


def _add(tar, name, data=b"", type_=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.size = len(data) if type_ == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if type_ == tarfile.REGTYPE else None)


def test_extract_all_refuses_escaping_members(tmp_path, caplog):
    caplog.set_level("WARNING")
    local = tmp_path / "datasets"
    tar_dir = local / "all_mixkit"
    tar_dir.mkdir(parents=True)
    absolute = str(tmp_path / "abs_evil.mp4")
    with tarfile.open(tar_dir / "part1.tar", "w") as tar:
        _add(tar, "all_mixkit/cats", type_=tarfile.DIRTYPE)
        _add(tar, "all_mixkit/cats/a.mp4", b"video a")
        _add(tar, "../evil.mp4", b"evil")
        _add(tar, absolute, b"evil too")
        _add(tar, "all_mixkit/cats/alias.mp4", type_=tarfile.SYMTYPE, linkname="a.mp4")  # inside: fine
        _add(tar, "all_mixkit/cats/out", type_=tarfile.SYMTYPE, linkname="../../../outside")
        _add(tar, "all_mixkit/hard.mp4", type_=tarfile.LNKTYPE, linkname="../evil.mp4")
    with tarfile.open(tar_dir / "part2.tar", "w") as tar:
        _add(tar, "all_mixkit/dogs/b.mp4", b"video b")
    with tarfile.open(tar_dir / "part1.tar") as tar:  # the archive really holds the bad names
        assert {"../evil.mp4", absolute} <= set(tar.getnames())

    out = local / "videos"
    summary = dm.extract_all(str(tar_dir), str(out), workers=2)
    assert summary == {"tars": 2, "extracted": 2, "skipped": 0, "failed": 0, "members": 4, "refused": 4}
    assert (out / "all_mixkit/cats/a.mp4").read_bytes() == b"video a"
    assert (out / "all_mixkit/dogs/b.mp4").read_bytes() == b"video b"
    assert (out / "all_mixkit/cats/alias.mp4").read_bytes() == b"video a"
    assert not (local / "evil.mp4").exists() and not Path(absolute).exists()
    assert not os.path.lexists(out / "all_mixkit/cats/out") and not os.path.lexists(out / "all_mixkit/hard.mp4")
    refused = [r.getMessage() for r in caplog.records if "refused member" in r.getMessage()]
    assert len(refused) == 4
    for name in ("'../evil.mp4'", repr(absolute), "'all_mixkit/cats/out'", "'all_mixkit/hard.mp4'"):
        assert sum(f"refused member {name}:" in m for m in refused) == 1, name
    assert all("part1.tar" in m for m in refused)
    assert (out / ".part1.tar.done").is_file() and (out / ".part2.tar.done").is_file()

    # second run: both tars are marked done; a corrupt tar fails alone, without a marker
    (tar_dir / "broken.tar").write_bytes(b"this is not a tar archive" * 40)
    caplog.clear()
    caplog.set_level("INFO")
    rc = dm.main(["--local_dir", str(local), "--skip_download", "--workers", "2"])
    assert rc == 1
    assert not (out / ".broken.tar.done").exists()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("already extracted" in m for m in msgs) == 2
    assert any("broken.tar" in m and "cannot extract" in m for m in msgs)
    assert not any("refused member" in m for m in msgs)

    (tar_dir / "broken.tar").unlink()
    assert dm.main(["--local_dir", str(local), "--skip_download"]) == 0
    # no tars at all: one-line error naming the folder
    assert dm.main(["--local_dir", str(tmp_path / "nothing"), "--skip_download"]) == 1


# --------------------------------------------------------------------------- #
# move_mixkit
# --------------------------------------------------------------------------- #


def _tree(root):
    return sorted(
        (str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in Path(root).rglob("*")
    )


def test_move_mixkit_flattens_without_overwriting(tmp_path, capsys):
    top = tmp_path / "videos"
    files = {
        "x.mp4": b"top",
        "x_1.mp4": b"top 1",
        "a/x.mp4": b"a",
        "b/y.MOV": b"y",
        "b/c/x.mp4": b"bc",
        "keep/notes.txt": b"notes",
        "keep/z.webm": b"z",
    }
    for rel, data in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    (top / "empty/deeper").mkdir(parents=True)

    before = _tree(top)
    assert mm.main([str(top), "--dry_run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        f"a{os.sep}x.mp4 -> x_2.mp4",
        f"b{os.sep}y.MOV -> y.MOV",
        f"b{os.sep}c{os.sep}x.mp4 -> x_3.mp4",
        f"keep{os.sep}z.webm -> z.webm",
    ]
    assert _tree(top) == before  # dry run changes nothing

    assert mm.main([str(top)]) == 0
    assert _tree(top) == [
        ("keep", None),
        (f"keep{os.sep}notes.txt", b"notes"),
        ("x.mp4", b"top"),
        ("x_1.mp4", b"top 1"),
        ("x_2.mp4", b"a"),
        ("x_3.mp4", b"bc"),
        ("y.MOV", b"y"),
        ("z.webm", b"z"),
    ]
    # flat already: nothing to do
    assert mm.flatten(str(top)) == {"planned": 0, "renamed": 0, "moved": 0, "failed": 0, "removed_dirs": 0}
    assert mm.main([str(tmp_path / "missing")]) == 2


# --------------------------------------------------------------------------- #
# slice_video
# --------------------------------------------------------------------------- #


def test_slice_video_cuts_clips_and_skips_bad_entries(tmp_path, caplog):
    caplog.set_level("INFO")
    videos = tmp_path / "videos"
    gray_video(videos / "foo.mp4", n=16, fps=24, step=15)  # flattened by move_mixkit
    gray_video(videos / "sub" / "bar.mp4", n=12, fps=30, step=20)  # still nested
    (videos / "bad.mp4").write_bytes(b"not a video" * 100)
    res = {"height": 32, "width": 48}
    anno = [
        {"path": "all_mixkit/cats/foo.mp4", "frame_idx": "2:7", "cap": ["a cat\n  on a mat", "second"], "fps": 24,
         "resolution": res},
        {"path": "sub/bar.mp4", "frame_idx": "0:4", "cap": "a bar"},
        {"path": "foo.mp4", "frame_idx": "10:16", "cap": "the end of foo"},
        {"path": "all_mixkit/nope/missing.mp4", "frame_idx": "0:4", "cap": "missing"},
        {"path": "foo.mp4", "frame_idx": "7:3", "cap": "backwards"},
        {"path": "foo.mp4", "frame_idx": "10:40", "cap": "past the end"},
        {"path": "bad.mp4", "frame_idx": "0:2", "cap": "corrupt"},
        {"path": "foo.mp4", "frame_idx": "0:3", "cap": " "},
        {"path": "other/foo.mp4", "frame_idx": "2:7", "cap": "same stem, same range"},
    ]
    anno_json = tmp_path / "anno" / "video_mixkit_65f.json"
    anno_json.parent.mkdir()
    anno_json.write_text(json.dumps(anno))
    clips = tmp_path / "sliced"
    out_json = tmp_path / "anno" / "cap_to_video_65f.json"

    argv = ["--input_folder", str(videos), "--output_folder", str(clips), "--anno_json", str(anno_json),
            "--output_json", str(out_json), "--workers", "2"]
    umask = os.umask(0o022)
    try:
        assert sv.main(argv) == 0
    finally:
        os.umask(umask)
    assert out_json.stat().st_mode & 0o777 == 0o644  # the user's umask, not mkstemp's 0600

    expected = [
        ("foo_2-7.mp4", "a cat on a mat"),
        ("bar_0-4.mp4", "a bar"),
        ("foo_10-16.mp4", "the end of foo"),
        ("foo_2-7_1.mp4", "same stem, same range"),
    ]
    assert json.loads(out_json.read_text()) == [{"video": v, "caption": c} for v, c in expected]
    assert read_info(out_json) == expected
    prompt_file = tmp_path / "anno" / "cap_to_video_65f_prompts.txt"
    assert prompt_file.read_text(encoding="utf-8").splitlines() == [c for _, c in expected]
    assert sorted(os.listdir(clips)) == sorted(v for v, _ in expected)  # no .partial left behind

    assert video_info(clips / "foo_2-7.mp4") == (5, 32, 48, 24.0)
    assert video_info(clips / "foo_10-16.mp4") == (6, 32, 48, 24.0)
    assert video_info(clips / "bar_0-4.mp4") == (4, 32, 48, 30.0)
    assert np.allclose(grey_levels(clips / "foo_2-7.mp4"), [15 * i for i in range(2, 7)], atol=3)
    assert np.allclose(grey_levels(clips / "foo_10-16.mp4"), [15 * i for i in range(10, 16)], atol=3)
    assert np.allclose(grey_levels(clips / "bar_0-4.mp4"), [20 * i for i in range(4)], atol=3)

    msgs = [r.getMessage() for r in caplog.records]
    for entry, reason in [(3, sv.MISSING), (4, sv.BAD_FRAME_IDX), (5, sv.PAST_END), (6, sv.CORRUPT), (7, sv.NO_CAPTION)]:
        assert sum(m.startswith(f"entry {entry} ") and reason in m for m in msgs) == 1, (entry, msgs)
    assert any("bad.mp4" in m and sv.CORRUPT in m for m in msgs)

    # restart: every clip is there already, nothing is re-encoded, same outputs
    mtimes = {p: p.stat().st_mtime_ns for p in clips.iterdir()}
    summary = sv.slice_videos(str(videos), str(clips), str(anno_json), str(out_json), workers=1)
    assert summary["clips_written"] == 0 and summary["clips_existing"] == 4 and summary["rows"] == 4
    assert summary["skipped"] == {sv.MISSING: 1, sv.BAD_FRAME_IDX: 1, sv.PAST_END: 1, sv.CORRUPT: 1, sv.NO_CAPTION: 1}
    assert summary["failed"] == 0
    assert {p: p.stat().st_mtime_ns for p in clips.iterdir()} == mtimes
    assert read_info(out_json) == expected

    # unusable annotation: one-line error, exit code 2
    anno_json.write_text('{"not": "a list"}')
    assert sv.main(argv) == 2


# --------------------------------------------------------------------------- #
# process_mixkit
# --------------------------------------------------------------------------- #


def test_process_mixkit_resizes_crops_resamples_and_skips(tmp_path, caplog):
    caplog.set_level("INFO")
    src = tmp_path / "sliced"
    # 96x32: left third red, middle green, right third blue
    stripes = np.zeros((20, 32, 96, 3), np.uint8)
    stripes[:, :, :32, 0] = 255
    stripes[:, :, 32:64, 1] = 255
    stripes[:, :, 64:, 2] = 255
    src.mkdir()
    write_video(str(src / "stripes.mp4"), stripes, fps=16)
    gray_video(src / "ramp.mp4", n=16, fps=24, step=15)  # 24 -> 16 fps
    gray_video(src / "sub" / "slow.mov.mp4", n=5, fps=8, step=40)  # 8 -> 16 fps: frames repeat
    gray_video(src / "short.mp4", n=10, fps=24, step=15)  # 10 frames at 24 fps = 7 frames at 16 fps
    (src / "corrupt.mp4").write_bytes(b"\x00garbage" * 200)
    (src / "notes.txt").write_text("not a video")
    out = tmp_path / "converted"

    argv = ["--input_dir", str(src), "--output_dir", str(out), "--width", "16", "--height", "16", "--fps", "16",
            "--num_frames", "8", "--workers", "2"]
    assert pm.main(argv) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["ramp.mp4", "stripes.mp4", f"sub{os.sep}slow.mov.mp4"]
    for rel in written:
        assert video_info(out / rel) == (8, 16, 16, 16.0)

    # centre crop, not a stretch: the 96x32 frame scales to 48x16 and the middle third stays
    frames = read_video(str(out / "stripes.mp4")).astype(int)
    inner = frames[:, :, 2:-2]
    assert inner[..., 1].min() > 200 and inner[..., 0].max() < 60 and inner[..., 2].max() < 60
    assert (frames[:, :, 0, 1] > frames[:, :, 0, 0]).all() and (frames[:, :, -1, 1] > frames[:, :, -1, 2]).all()

    # frame k is the source frame nearest to time k/16 s
    assert np.allclose(grey_levels(out / "ramp.mp4"), [15 * i for i in (0, 2, 3, 5, 6, 8, 9, 11)], atol=3)
    assert np.allclose(grey_levels(out / "sub" / "slow.mov.mp4"), [40 * i for i in (0, 1, 1, 2, 2, 3, 3, 4)], atol=3)

    msgs = [r.getMessage() for r in caplog.records]
    assert any("short.mp4" in m and pm.TOO_SHORT in m and "need 8" in m for m in msgs), msgs
    assert any("corrupt.mp4" in m and pm.CORRUPT in m for m in msgs), msgs
    assert any("skipped: corrupt: 1, too short: 1" in m for m in msgs), msgs

    # restart: outputs kept, the same two skipped
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    summary = pm.process_all(str(src), str(out), 16, 16, 16.0, 8, workers=1)
    assert summary == {"videos": 5, "written": 0, "existing": 3, "skipped": {pm.TOO_SHORT: 1, pm.CORRUPT: 1},
                       "failed": 0}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == mtimes

    assert pm.main(argv[:5] + ["15"] + argv[6:]) == 2  # odd width


def test_source_indices():
    assert pm.source_indices(24, 16, 8) == [0, 2, 3, 5, 6, 8, 9, 11]
    assert pm.source_indices(8, 16, 5) == [0, 1, 1, 2, 2]
    assert pm.source_indices(16, 16, 4) == [0, 1, 2, 3]
    assert pm.source_indices(30000 / 1001, 16, 81)[-1] == round(80 * 30000 / 1001 / 16)


# --------------------------------------------------------------------------- #
# read_info
# --------------------------------------------------------------------------- #


def test_read_info_formats(tmp_path):
    p = tmp_path / "info.json"
    p.write_text(json.dumps([{"video": "a_0-65.mp4", "caption": "cat"}, {"video": "b.mp4", "caption": "dog"}]))
    assert read_info(p) == [("a_0-65.mp4", "cat"), ("b.mp4", "dog")]

    p.write_text(json.dumps({"a cat": "a_0-65.mp4", "a dog": "sub/b.MOV"}))  # caption -> video
    assert read_info(p) == [("a_0-65.mp4", "a cat"), ("sub/b.MOV", "a dog")]

    p.write_text(json.dumps({"a_0-65.mp4": "a cat", "b.webm": "a dog ending in .mp4"}))  # video -> caption
    assert read_info(p) == [("a_0-65.mp4", "a cat"), ("b.webm", "a dog ending in .mp4")]

    for bad, words in [
        ({"a": "b"}, "can't tell"),
        ([], "empty"),
        ([{"video": "a.mp4"}], "caption"),
        ("text", "expected a JSON list"),
    ]:
        p.write_text(json.dumps(bad))
        with pytest.raises(VideoInfoError, match=words) as e:
            read_info(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(VideoInfoError, match="not found"):
        read_info(tmp_path / "missing.json")
