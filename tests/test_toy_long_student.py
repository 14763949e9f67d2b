"""The long-video toy student (checkpoints/toy_long, made by `python -m causvid.toy.pipeline --long_video
--release`): through the real long-video CLI, rolling its KV window with no sink, the last window of a video 5x
its training length still shows its prompt, direction included (the shipped chunkwise student, checkpoints/toy,
scores 0 of 8 on the same test, with its one-block sink or none: it reverses the direction)."""
import json
from pathlib import Path

from causvid.data.prompts import read_prompt_file
from causvid.toy import analyser
from causvid.video_io import read_video
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
LONG = ROOT / "checkpoints" / "toy_long"
PROMPTS = ROOT / "prompts" / "toy.txt"


def test_the_long_video_student_holds_its_prompt_in_the_last_window(tmp_path):
    release = json.loads((LONG / "release.json").read_text())
    assert release["reproduce"].startswith("python -m causvid.toy.pipeline") and "--long_video" in release["reproduce"]
    assert release["config"] == "configs/toy/cf_dmd_framewise.yaml" and release["budget"]["start_offsets"] == 4
    cli = load_script("minimal_inference/longvideo_autoregressive_inference.py").main
    assert cli(["--config_path", str(ROOT / release["config"]), "--wan_model_path", str(LONG), "--output_folder",
                str(tmp_path), "--prompt_file_path", str(PROMPTS), "--mode", "rolling", "--num_rollout", "8",
                "--sink_size", "0"]) == 0
    prompts = read_prompt_file(PROMPTS)
    videos = [read_video(tmp_path / f"long_video_output_{i:03d}.mp4") for i in range(len(prompts))]
    assert all(len(v) >= 4 * 21 for v in videos), [len(v) for v in videos]
    result = analyser.score([v[-21:] for v in videos], prompts)  # the last window of the training length
    assert result["all_acc"] >= 0.75, result
