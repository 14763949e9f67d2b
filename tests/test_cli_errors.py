"""Every bad input of issue 19's table, run as the user runs it (`python script.py ...`, the script's own exit
code and stderr): one line naming the file, flag or key and the value with what to do, exit code 2 (usage) or 1
(the work failed), no Python traceback unless --debug / CAUSVID_DEBUG=1, nothing partial left behind.

All rows run in one interpreter (tests/cli_driver.py: the same `__main__` path, stdout/stderr captured at the
file descriptors), so the table costs one start of Python and torch. Checks that need no model are shown to run
before the model loads by giving those rows an empty Wan folder: had anything loaded, the error would be about
its missing weights instead."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from causvid.config import load_config, save_config
from causvid.video_io import write_video

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny"
TRAIN, INFERENCE = str(ROOT / "train.py"), str(ROOT / "inference.py")
AR = str(ROOT / "minimal_inference" / "autoregressive_inference.py")
BIDIRECTIONAL = str(ROOT / "minimal_inference" / "bidirectional_inference.py")
LONG = str(ROOT / "minimal_inference" / "longvideo_autoregressive_inference.py")
PROCESS = str(ROOT / "distillation_data" / "process_mixkit.py")
SLICE = str(ROOT / "distillation_data" / "slice_video.py")


class Row:
    """One case: the command, its expected exit code, what the error line must contain, what must not exist."""

    def __init__(self, name, script, argv, code, needles, absent=(), env=None, traceback=False):
        self.name, self.script, self.argv, self.code = name, script, [str(a) for a in argv], code
        self.needles, self.absent, self.env, self.traceback = [str(n) for n in needles], absent, env or {}, traceback


def make_rows(data: Path, tmp: Path) -> list:
    """The table's rows over files made here (bad LMDBs, text files named .pt, ...) and the tiny run data."""
    empty_wan = tmp / "empty_wan"  # a folder with no model in it: only reachable by rows that fail before loading
    empty_wan.mkdir()
    prompts = tmp / "prompts.txt"
    prompts.write_text("a red square moving left\na blue circle moving up\n")

    # LMDBs: truncated, empty, random bytes (copies of the tiny latent LMDB)
    good = (data / "latents" / "data.mdb").read_bytes()
    for name, content in (("truncated", good[:len(good) // 2]), ("zero_bytes", b""),
                          ("random_bytes", np.random.default_rng(0).bytes(len(good)))):
        (tmp / name).mkdir()
        (tmp / name / "data.mdb").write_bytes(content)

    text_ckpt = tmp / "text_ckpt"  # a checkpoint folder whose model.pt is a text file
    text_ckpt.mkdir()
    (text_ckpt / "model.pt").write_text("this is not a checkpoint\n")
    (tmp / "x.pt").write_text("this is not a checkpoint either\n")
    real_ckpt = tmp / "real_ckpt"
    real_ckpt.mkdir()
    torch.save({"generator": {}}, real_ckpt / "model.pt")
    a_file = tmp / "a_file.txt"
    a_file.write_text("a file, not a folder\n")

    # a checkpoint of our trainer from a causal run: logdir/config.yaml beside logdir/checkpoint_model_XXXXXX/
    causal_run = tmp / "causal_run"
    (causal_run / "checkpoint_model_000010").mkdir(parents=True)
    save_config(load_config(TINY / "wan_causal_dmd.yaml"), causal_run / "config.yaml")
    torch.save({"generator": {}}, causal_run / "checkpoint_model_000010" / "model.pt")

    # a resume folder whose model.pt is a text file (read after the models load)
    bad_resume = tmp / "bad_resume" / "checkpoint_model_000002"
    bad_resume.mkdir(parents=True)
    (bad_resume / "model.pt").write_text("not a checkpoint\n")
    torch.save({"step": 2}, bad_resume / "training_state.pt")

    # videos that are all too short for process_mixkit; an annotation whose only clip can't be cut
    short = tmp / "short_clips"
    short.mkdir()
    write_video(str(short / "a.mp4"), np.zeros((5, 16, 16, 3), np.uint8), fps=16)
    anno = tmp / "anno.json"
    anno.write_text(json.dumps([{"path": "missing.mp4", "frame_idx": "0:4", "cap": "a cat"}]))
    (tmp / "videos").mkdir()

    # a folder that already holds the videos of the two prompts
    done = tmp / "done"
    done.mkdir()
    for i in range(2):
        (done / f"output_{i:03d}.mp4").write_bytes(b"an earlier video")

    def ar(out, wan=empty_wan, config="wan_causal_dmd.yaml", script=AR, extra=()):
        return ["--config_path", TINY / config, "--output_folder", out, "--prompt_file_path", prompts,
                "--wan_model_path", wan, *extra]

    def inference(out, *extra, config="causal_forcing_dmd_chunkwise.yaml"):
        return ["--config_path", TINY / config, "--output_folder", out, "--data_path", prompts,
                "--wan_model_path", empty_wan, *extra]

    def train(logdir, config, dataset, wan=empty_wan, **kw):
        keys = {"wan_model_path": wan, "real_model_path": wan, "data_path": dataset, "generator_ckpt": "null",
                "gradient_checkpointing": "false", "log_iters": 1000, "max_iters": 1, **kw}
        return ["--config_path", TINY / config, "--logdir", logdir, "--disable-wandb", "--no_visualize",
                *[f"{k}={v}" for k, v in keys.items()]]

    def logdir(name):
        return tmp / "logs" / name

    def out(name):
        return tmp / "out" / name

    lmdb_train = "ar_diffusion_tf_framewise.yaml"
    cuda = [] if torch.cuda.is_available() else [  # the CUDA row only means something without CUDA
        Row("device_cuda_without_cuda", AR, ar(out("cuda"), extra=["--device", "cuda"]), 2,
            ["--device cuda", "CUDA is not available", "--device cpu"], [out("cuda")])]
    return [
        Row("lmdb_truncated", TRAIN, train(logdir("trunc"), lmdb_train, tmp / "truncated"), 2,
            [tmp / "truncated", "data.mdb is truncated", "copy or write it again"], [logdir("trunc")]),
        Row("lmdb_zero_bytes", TRAIN, train(logdir("zero"), lmdb_train, tmp / "zero_bytes"), 2,
            [tmp / "zero_bytes", "data.mdb is empty (0 bytes)"], [logdir("zero")]),
        Row("lmdb_random_bytes", TRAIN, train(logdir("random"), lmdb_train, tmp / "random_bytes"), 2,
            [tmp / "random_bytes", "not an LMDB file"], [logdir("random")]),
        Row("text_model_pt_checkpoint_folder", AR, ar(out("text_ckpt"), extra=["--checkpoint_folder", text_ckpt]),
            2, [text_ckpt / "model.pt", "not a PyTorch checkpoint"], [out("text_ckpt")]),
        Row("text_x_pt_generator_ckpt", TRAIN, train(logdir("x_pt"), lmdb_train, data / "latents",
                                                     generator_ckpt=tmp / "x.pt"), 2,
            [tmp / "x.pt", "not a PyTorch checkpoint"], [logdir("x_pt")]),
        Row("text_model_pt_resume_from", TRAIN,
            train(logdir("resume"), lmdb_train, data / "latents", wan=data / "wan") + ["--resume_from", bad_resume],
            2, [bad_resume / "model.pt", "not a PyTorch checkpoint"], [logdir("resume") / "checkpoint_model_000001"]),
        Row("train_wan_model_path_missing", TRAIN, train(logdir("no_wan"), lmdb_train, data / "latents",
                                                         wan=tmp / "no_wan"), 2,
            ["wan_model_path", tmp / "no_wan", "not found", "add the override wan_model_path=FOLDER"],
            [logdir("no_wan")]),
        Row("train_resume_no_such_run", TRAIN, ["--resume", tmp / "no_run"], 2,
            ["--resume", tmp / "no_run", "no such run folder"], [tmp / "no_run"]),
        Row("wan_model_path_is_a_file", AR, ar(out("wan_file"), wan=a_file), 2,
            ["--wan_model_path", a_file, "is a file", "Wan model folder"], [out("wan_file")]),
        Row("checkpoint_folder_is_a_file", AR, ar(out("ckpt_file"), extra=["--checkpoint_folder",
                                                                            real_ckpt / "model.pt"]), 2,
            ["--checkpoint_folder", real_ckpt / "model.pt", "is a file", f"holds model.pt (here: {real_ckpt})"],
            [out("ckpt_file")]),
        Row("output_folder_is_a_file", AR, ar(a_file), 2, ["--output_folder", a_file, "is a file"]),
        Row("output_folder_under_a_file", AR, ar(a_file / "out"), 2,
            ["--output_folder", a_file / "out", f"{a_file} is a file"]),
        Row("logdir_under_a_file", TRAIN, train(a_file / "run", lmdb_train, data / "latents"), 2,
            ["--logdir", a_file / "run", f"{a_file} is a file"]),
        Row("num_output_frames_0", INFERENCE, inference(out("f0"), "--num_output_frames", "0"), 2,
            ["argument --num_output_frames", "positive integer, got '0'"], [out("f0")]),
        Row("num_output_frames_-3", INFERENCE, inference(out("f-3"), "--num_output_frames", "-3"), 2,
            ["argument --num_output_frames", "positive integer, got '-3'"], [out("f-3")]),
        Row("num_output_frames_not_whole_blocks", INFERENCE, inference(out("f4"), "--num_output_frames", "4"), 2,
            ["--num_output_frames 4", "num_frame_per_block=3", "multiple of 3"], [out("f4")]),
        *cuda,
        Row("device_gpu", AR, ar(out("gpu"), extra=["--device", "gpu"]), 2,
            ["--device 'gpu' is not a device", "use cpu or cuda"], [out("gpu")]),
        Row("ode_config_on_a_latent_lmdb", TRAIN, train(logdir("ode"), "causal_ode_chunkwise.yaml", data / "latents"),
            2, [f"data_path {data / 'latents'}", "1 slot(s)", "point data_path at ODE pairs"], [logdir("ode")]),
        Row("num_rollout_0", LONG, ar(out("rollout"), script=LONG, extra=["--num_rollout", "0"]), 2,
            ["argument --num_rollout", "positive integer, got '0'"], [out("rollout")]),
        Row("process_mixkit_all_too_short", PROCESS,
            ["--input_dir", short, "--output_dir", out("converted"), "--width", "16", "--height", "16",
             "--num_frames", "81", "--workers", "1"], 1,
            ["no video converted", "1 too short", "--num_frames 81", short], [out("converted")]),
        Row("slice_video_no_clip", SLICE,
            ["--input_folder", tmp / "videos", "--output_folder", out("clips"), "--anno_json", anno,
             "--output_json", out("meta") / "clips.json", "--workers", "1"], 1,
            ["no clip was produced", anno, "missing source video: 1", "nothing written"],
            [out("meta") / "clips.json", out("meta") / "clips_prompts.txt"]),
        Row("causal_checkpoint_in_bidirectional", BIDIRECTIONAL,
            ar(out("bidir"), config="wan_bidirectional_dmd_from_scratch.yaml",
               extra=["--checkpoint_folder", causal_run / "checkpoint_model_000010"]), 2,
            ["trained as a causal", causal_run / "config.yaml", "autoregressive_inference.py"], [out("bidir")]),
        Row("debug_env_shows_the_traceback", AR, ar(out("debug"), extra=["--device", "gpu"]), 1,
            ["UsageError: --device 'gpu'"], env={"CAUSVID_DEBUG": "1"}, traceback=True),
        Row("debug_flag_shows_the_traceback", AR, ar(out("debug2"), extra=["--device", "gpu", "--debug"]), 1,
            ["UsageError: --device 'gpu'"], traceback=True),
    ]


@pytest.fixture(scope="module")
def table(tiny_run_data, tmp_path_factory):
    """{name: (row, result)} for every row, all run by one tests/cli_driver.py process."""
    tmp = tmp_path_factory.mktemp("cli_rows")
    rows = make_rows(tiny_run_data, tmp)
    cases = {r.name: {"script": r.script, "argv": r.argv, "env": r.env} for r in rows}
    (tmp / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("CAUSVID_DEBUG", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_driver.py"), str(tmp / "cases.json"),
                           str(tmp / "results.json")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"the driver died ({proc.returncode}; -7 is SIGBUS): {proc.stderr[-3000:]}"
    results = json.loads((tmp / "results.json").read_text())
    made = {r.name for r in rows}
    # the hand-written ids are exactly the rows made (only the CUDA row is absent where CUDA is), and each ran
    assert made | {"device_cuda_without_cuda"} == set(ROW_NAMES) and set(results) == made
    return {r.name: (r, results[r.name]) for r in rows}


ROW_NAMES = [  # the names of make_rows' rows, for test ids known before the fixture runs
    "lmdb_truncated", "lmdb_zero_bytes", "lmdb_random_bytes", "text_model_pt_checkpoint_folder",
    "text_x_pt_generator_ckpt", "text_model_pt_resume_from", "train_wan_model_path_missing",
    "train_resume_no_such_run", "wan_model_path_is_a_file",
    "checkpoint_folder_is_a_file", "output_folder_is_a_file", "output_folder_under_a_file", "logdir_under_a_file",
    "num_output_frames_0", "num_output_frames_-3", "num_output_frames_not_whole_blocks", "device_cuda_without_cuda",
    "device_gpu", "ode_config_on_a_latent_lmdb", "num_rollout_0", "process_mixkit_all_too_short",
    "slice_video_no_clip", "causal_checkpoint_in_bidirectional", "debug_env_shows_the_traceback",
    "debug_flag_shows_the_traceback"]


@pytest.mark.parametrize("name", ROW_NAMES)
def test_bad_input_is_one_line_naming_it(table, name):
    if name == "device_cuda_without_cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available on this machine")
    row, result = table[name]
    stderr = result["stderr"]
    assert result["code"] == row.code, stderr[-2000:]
    if row.traceback:  # --debug / CAUSVID_DEBUG=1: the traceback, ending in the error
        assert "Traceback (most recent call last)" in stderr and all(n in stderr for n in row.needles), stderr
        return
    assert "Traceback" not in stderr + result["stdout"], stderr
    errors = [line for line in stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, stderr
    for needle in row.needles:
        assert needle in errors[0], (needle, errors[0])
    if row.script not in (PROCESS, SLICE):  # the data scripts log their progress; the rest print only the error
        assert stderr.strip() == errors[0], stderr
    for path in row.absent:
        assert not Path(path).exists(), f"{path} was left behind"
    outputs = [p for p in Path(row.argv[row.argv.index("--output_folder") + 1]).parent.rglob("*.partial")] \
        if "--output_folder" in row.argv else []
    assert outputs == []


def test_rerun_into_a_folder_of_videos_says_it_skipped_them(tiny_run_data, tmp_path, capsys):
    """Rows "rerun into a folder with the videos" and --report_timing: one summary line ends the run."""
    autoregressive = load_script("minimal_inference/autoregressive_inference.py").main
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\na blue circle moving up\n")
    out = tmp_path / "out"
    out.mkdir()
    for i in range(2):
        (out / f"output_{i:03d}.mp4").write_bytes(b"an earlier video")
    argv = ["--config_path", str(TINY / "wan_causal_dmd.yaml"), "--output_folder", str(out), "--prompt_file_path",
            str(prompts), "--wan_model_path", str(tiny_run_data / "wan"), "--report_timing"]
    assert autoregressive(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"0 videos written, 2 skipped (already there; use --overwrite to regenerate), 0 failed -> {out}"
    assert (out / "output_000.mp4").read_bytes() == b"an earlier video"


def test_output_folder_not_writable_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """Root may write anywhere, so the permission is taken away by patching os.access (what the check asks)."""
    from causvid.pipelines import cli

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    from causvid.pipelines import text_to_video
    monkeypatch.setattr(text_to_video, "load_components", lambda *a, **k: pytest.fail("the model loaded before the check"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    wan = tmp_path / "wan"
    wan.mkdir()
    autoregressive = load_script("minimal_inference/autoregressive_inference.py").main
    assert autoregressive(["--config_path", str(TINY / "wan_causal_dmd.yaml"), "--output_folder",
                           str(locked / "out"), "--prompt_file_path", str(prompts), "--wan_model_path", str(wan)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --output_folder {locked / 'out'}: {locked} is not writable (permission denied); pass a "
                   "folder you can write to, or fix its permissions")
    assert not (locked / "out").exists()
