"""Evaluate every toy model with the rule-based analyser and write the report.

Each model generates videos for held-out captions through the same inference path as the CLIs
(`VideoGenerator`), at the training length (prompt accuracy, flicker) and at `Budget.drift_factor` (4) times
the training length (drift: accuracy and background per window of 21 frames; causal models roll a KV window
of the training length with one block of sink, the bidirectional teacher simply runs longer).
"""
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from causvid.config import load_config
from causvid.pipelines.long_video import long_video_frames, overlap_stream, rolling_stream
from causvid.pipelines.text_to_video import VideoGenerator, load_components
from causvid.toy import analyser, streaming, world

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "toy"


def has_ema(checkpoint) -> bool:
    return checkpoint is not None and "generator_ema" in torch.load(checkpoint, map_location="cpu", mmap=True)


def generate(generator: VideoGenerator, caption: str, index: int, seed: int, **kw) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([px for _, px in generator.stream(caption, seed=seed, index=index, **kw)], dim=1)[0]


def evaluate_model(config_name, wan_folder, checkpoint, budget, seed):
    cfg = load_config(CONFIGS / f"{config_name}.yaml",
                      overrides=[f"num_inference_steps={budget.teacher_sampling_steps}"])
    components = load_components(wan_folder, checkpoint, use_ema=has_ema(checkpoint))
    causal = config_name != "teacher"
    generator = VideoGenerator(components, cfg, causal=causal)
    captions = [world.caption(s) for s in world.sample_specs(budget.eval_videos, seed=10_000 + seed)]
    videos = [generate(generator, c, i, seed) for i, c in enumerate(captions)]
    result = analyser.score(videos, captions)
    frames = cfg.image_or_video_shape[1]
    window = dict(local_attn_size=frames, sink_size=cfg.num_frame_per_block) if causal else {}
    longs = [generate(generator, caption, 1000 + i, seed, num_frames=budget.drift_factor * frames, **window)
             for i, caption in enumerate(captions[:budget.drift_videos])]
    result.update(_drift(longs, captions))
    if config_name.endswith(("dmd_framewise", "dmd_chunkwise")):
        result["long_video"] = compare_long_video(generator, captions[:budget.long_video_prompts], budget, seed)
    if config_name.endswith("dmd_chunkwise"):  # switching after the training window, V2V (causvid.toy.streaming)
        result["streaming"] = streaming.measure(components, cfg, budget.stream_pairs, budget.drift_factor, seed=seed)
    return result, videos[:3], captions[:3]


def _drift(videos, captions) -> dict:
    """Accuracy (all attributes) and background error per window of 21 frames, averaged over videos."""
    drifts = [analyser.drift(v, c, window=world.DEFAULT_NUM_FRAMES) for v, c in zip(videos, captions)]
    windows = range(min(len(d) for d in drifts))
    return {f"drift_{name}": [float(np.mean([d[w][key] for d in drifts])) for w in windows]
            for name, key in (("all_acc", "all_ok"), ("background_err", "background_err"))}


def compare_long_video(generator: VideoGenerator, captions, budget, seed, overlap: int = 3) -> dict:
    """CausVid's overlapping re-encoded rollouts vs one rollout through a rolling KV window (training length,
    one block of sink), same prompts and the same total length (about `drift_factor` times the training
    length): drift per window, and the whole video's prompt accuracy."""
    frames = generator.latent_shape[0]
    rollouts = 1 + -(-(budget.drift_factor - 1) * frames // (frames - overlap))  # ceil
    out = {"latent_frames": long_video_frames(frames, rollouts, overlap)}
    for mode, stream in (("overlap", overlap_stream), ("rolling", rolling_stream)):
        with torch.no_grad():
            videos = [torch.cat(list(stream(generator, c, num_rollout=rollouts, num_overlap_frames=overlap,
                                            seed=seed, index=2000 + i)), dim=1)[0] for i, c in enumerate(captions)]
        out[mode] = {**_drift(videos, captions), "all_acc": analyser.score(videos, captions)["all_acc"]}
    return out


def evaluate_models(folder, models: dict, budget, seed) -> None:
    """models: display name -> (config name, Wan/toy folder, checkpoint or None). Writes results.json and
    one PNG strip per model into folder."""
    results = {}
    for slot, (name, (config_name, wan_folder, checkpoint)) in enumerate(models.items()):
        result, videos, captions = evaluate_model(config_name, wan_folder, checkpoint, budget, seed)
        strip = folder / f"strip_{slot:02d}.png"
        iio.imwrite(strip, _strip(videos))
        results[name] = {**result, "config": config_name, "strip": strip.name, "strip_captions": captions}
        print(f"[evaluate] {name}: colour {result['colour_acc']:.2f} shape {result['shape_acc']:.2f} "
              f"direction {result['direction_acc']:.2f} all {result['all_acc']:.2f}", flush=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2))


def _strip(videos, frames_shown: int = 6) -> np.ndarray:
    """Rows of evenly spaced frames, one row per video, uint8 [rows*H, cols*W, 3] (upscaled 2x to see)."""
    rows = []
    for video in videos:
        idx = np.linspace(0, len(video) - 1, frames_shown).round().astype(int)
        rows.append(np.concatenate([world.to_uint8(video[i:i + 1])[0] for i in idx], axis=1))
    image = np.concatenate(rows, axis=0)
    return image.repeat(2, axis=0).repeat(2, axis=1)


def write_report(out, times: dict) -> Path:
    out = Path(out)
    results = json.loads((out / "evaluate" / "results.json").read_text())
    teacher = next(iter(results.values()))
    lines = ["# Toy world report", "",
             "Rule-based analyser on held-out captions (colour / shape / direction of the moving shape), "
             f"{teacher['n']} videos per model at the training length; flicker = mean |frame difference| of "
             "background pixels; drift over a rollout 4x the training length, per window of 21 frames "
             "(all-attributes accuracy and background error, first -> last window).", "",
             "| model | colour | shape | direction | all | vs teacher | flicker (bg) | drift: all | drift: background |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rel = r["all_acc"] / teacher["all_acc"] if teacher["all_acc"] else float("nan")
        drift_acc = " → ".join(f"{v:.2f}" for v in r["drift_all_acc"])
        drift_bg = " → ".join(f"{v:.3f}" for v in r["drift_background_err"])
        lines.append(f"| {name} | {r['colour_acc']:.2f} | {r['shape_acc']:.2f} | {r['direction_acc']:.2f} | "
                     f"{r['all_acc']:.2f} | {rel:.0%} | {r['flicker_bg']:.4f} | {drift_acc} | {drift_bg} |")
    long = {name: r["long_video"] for name, r in results.items() if "long_video" in r}
    if long:
        frames = next(iter(long.values()))["latent_frames"]
        lines += ["", f"## Long video: overlap (CausVid) vs rolling KV window (Self-Forcing), {frames} latent frames",
                  "", "Same prompts and length; all-attributes accuracy per window of 21 frames (first -> last), "
                  "background error per window, and accuracy of the whole video.", "",
                  "| model | mode | drift: all | drift: background | whole video |", "|---|---|---|---|---|"]
        for name, modes in long.items():
            for mode in ("overlap", "rolling"):
                m = modes[mode]
                lines.append(f"| {name} | {mode} | {' → '.join(f'{v:.2f}' for v in m['drift_all_acc'])} | "
                             f"{' → '.join(f'{v:.3f}' for v in m['drift_background_err'])} | {m['all_acc']:.2f} |")
    streams = {name: r["streaming"] for name, r in results.items() if "streaming" in r}
    if streams:
        lines += ["", "## Streaming", ""] + [line for name, r in streams.items()
                                            for line in streaming.markdown(r, "###", name) + [""]]
    lines += ["", "## Time per stage (this machine)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
    lines += [f"| **total** | {sum(times.values()):.0f} |", "", "## Samples", ""]
    for name, r in results.items():
        lines += [f"**{name}** — " + "; ".join(r["strip_captions"]), "", f"![{name}](evaluate/{r['strip']})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
