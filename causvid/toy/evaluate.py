"""Evaluate every toy model with the rule-based analyser and write the report.

Each model generates videos for held-out captions through the same inference path as the CLIs
(`VideoGenerator`): at the training length (prompt accuracy, flicker, first-frame latency and frames/s), and
at `Budget.drift_factor` (8) times the training length (drift: each attribute, all three and the background per
window of 21 frames; causal models roll a KV window of the training length with one block of sink, and the
students named in `sink_choices` also without a sink and with window RoPE positions). The bidirectional teacher
has no rolling window and is not measured for drift (run 8x longer in one piece it made nothing recognisable:
0.00 in every window, 2026-11-30). The models named in `streams` also get prompt switching and V2V
(`causvid.toy.streaming`). `evaluate_one` measures one model into a folder of its own (the pipeline runs them
side by side); `gather` collects them into results.json and the drift plot.
"""
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from causvid.config import denoising_steps, load_config
from causvid.pipelines.long_video import long_video_frames, overlap_stream, rolling_stream
from causvid.pipelines.text_to_video import VideoGenerator, load_components
from causvid.toy import analyser, streaming, world
from causvid.toy.plot import small_multiples

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "toy"


def has_ema(checkpoint) -> bool:
    return checkpoint is not None and "generator_ema" in torch.load(checkpoint, map_location="cpu", mmap=True)


def generate(generator: VideoGenerator, caption: str, index: int, seed: int, **kw) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([px for _, px in generator.stream(caption, seed=seed, index=index, **kw)], dim=1)[0]


#: KV-window choices for long rollouts (issue: streams that do not drift), measured on the students evaluated with
#: `evaluate_one(sink_choices=True)`: StreamSession keyword arguments and config overrides. The first is the
#: default every model is measured with: a rolling window of the training length with a one-block sink.
SINK_CHOICES = {
    "one-block sink": ({}, []),
    "no sink": ({"sink_size": 0}, []),
    "one-block sink, window RoPE": ({}, ["model_kwargs.rope_positions=window"]),
}


def stage_config(config_name, budget, overrides=()):
    """A toy stage's config, its many-step models sampled in the budget's teacher_sampling_steps."""
    return load_config(CONFIGS / f"{config_name}.yaml",
                       overrides=[f"num_inference_steps={budget.teacher_sampling_steps}", *overrides])


def evaluate_model(config_name, wan_folder, checkpoint, budget, seed, sink_choices: bool = False,
                   streams: bool = False, overrides=()):
    """(scores, the first videos, their captions) of one model; `overrides` change its config (e.g. a step
    schedule) for every measurement."""
    cfg = stage_config(config_name, budget, overrides)
    components = load_components(wan_folder, checkpoint, use_ema=has_ema(checkpoint))
    causal = config_name != "teacher"
    generator = VideoGenerator(components, cfg, causal=causal)
    captions = [world.caption(s) for s in world.sample_specs(budget.eval_videos, seed=10_000 + seed)]
    videos, first_frame, fps = [], [], []
    for i, caption in enumerate(captions):  # timed one video at a time: the latency a viewer sees
        videos.append(generate(generator, caption, i, seed))
        first_frame.append(generator.timing.first_block_pixels)
        fps.append(generator.timing.fps(with_vae=True))
    result = analyser.score(videos, captions)
    result.update(first_frame_s=float(np.median(first_frame)), fps=float(np.median(fps)))
    frames = cfg.image_or_video_shape[1]
    drift_videos = budget.drift_videos if denoising_steps(cfg) else budget.many_step_drift_videos
    long_captions = [world.caption(s) for s in world.sample_specs(drift_videos, seed=20_000 + seed)]
    choices = list(SINK_CHOICES.items())[:None if sink_choices else 1] if causal and long_captions else []
    result["drift"], result["drift_videos"] = {}, len(long_captions) if causal else 0
    for name, (kv, choice) in choices:
        window = dict(local_attn_size=frames, sink_size=kv.get("sink_size", cfg.num_frame_per_block))
        gen = VideoGenerator(components, stage_config(config_name, budget, [*overrides, *choice]), causal=causal) \
            if choice else generator
        longs = [generate(gen, caption, 1000 + i, seed, num_frames=budget.drift_factor * frames, **window)
                 for i, caption in enumerate(long_captions)]
        result["drift"][name] = _drift(longs, long_captions)
    result.update({f"drift_{k}": v for k, v in next(iter(result["drift"].values()), {}).items()})
    if config_name.endswith(("dmd_framewise", "dmd_chunkwise")) and budget.long_video_prompts:
        result["long_video"] = compare_long_video(generator, captions[:budget.long_video_prompts], budget, seed)
    if streams:  # switching after the training window, V2V (causvid.toy.streaming)
        result["streaming"] = streaming.measure(components, cfg, budget.stream_pairs, budget.long_video_factor,
                                                seed=seed)
    return result, videos[:3], captions[:3]


DRIFT_KEYS = (("all_acc", "all_ok"), ("colour_acc", "colour_ok"), ("shape_acc", "shape_ok"),
              ("direction_acc", "direction_ok"), ("background_err", "background_err"))


def _drift(videos, captions) -> dict:
    """Accuracy (each attribute and all three) and background error per window of 21 frames (the training
    length), averaged over videos."""
    drifts = [analyser.drift(v, c, window=world.DEFAULT_NUM_FRAMES) for v, c in zip(videos, captions)]
    windows = range(min(len(d) for d in drifts))
    return {name: [float(np.mean([d[w][key] for d in drifts])) for w in windows] for name, key in DRIFT_KEYS}


def compare_long_video(generator: VideoGenerator, captions, budget, seed, overlap: int = 3) -> dict:
    """CausVid's overlapping re-encoded rollouts vs one rollout through a rolling KV window (training length,
    one block of sink), same prompts and the same total length (about `drift_factor` times the training
    length): drift per window, and the whole video's prompt accuracy."""
    frames = generator.latent_shape[0]
    rollouts = 1 + -(-(budget.long_video_factor - 1) * frames // (frames - overlap))  # ceil
    out = {"latent_frames": long_video_frames(frames, rollouts, overlap)}
    for mode, stream in (("overlap", overlap_stream), ("rolling", rolling_stream)):
        with torch.no_grad():
            videos = [torch.cat(list(stream(generator, c, num_rollout=rollouts, num_overlap_frames=overlap,
                                            seed=seed, index=2000 + i)), dim=1)[0] for i, c in enumerate(captions)]
        drift = _drift(videos, captions)
        out[mode] = {"drift_all_acc": drift["all_acc"], "drift_background_err": drift["background_err"],
                     "all_acc": analyser.score(videos, captions)["all_acc"]}
    return out


def evaluate_one(folder, name, config_name, wan_folder, checkpoint, budget, seed, sink_choices=False,
                 streams=False, overrides=()) -> dict:
    """One model (display name, config, Wan/toy folder, checkpoint or None) into folder: result.json and
    strip.png. sink_choices: its long rollouts also with every choice of `SINK_CHOICES`; streams: its prompt
    switching and V2V too."""
    folder = Path(folder)
    result, videos, captions = evaluate_model(config_name, wan_folder, checkpoint, budget, seed,
                                              sink_choices=sink_choices, streams=streams, overrides=overrides)
    iio.imwrite(folder / "strip.png", _strip(videos))
    result = {**result, "config": config_name, "overrides": list(overrides), "strip": f"{folder.name}/strip.png",
              "strip_captions": captions}
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    print(f"[evaluate] {name}: colour {result['colour_acc']:.2f} shape {result['shape_acc']:.2f} "
          f"direction {result['direction_acc']:.2f} all {result['all_acc']:.2f}", flush=True)
    return result


def judge_loras(folder, config_name, teacher, loras: dict, budget, seed) -> dict:
    """Each LoRA file (rank -> path) merged into the teacher and judged at the training length like a model
    (no long rollouts): folder/result.json, rank -> the analyser's scores."""
    from dataclasses import replace

    from causvid.models.lora import merge_lora_tensors, read_lora
    from causvid.pipelines.text_to_video import load_dit
    from causvid.toy.folder import write_toy_folder

    out = {}
    for rank, path in loras.items():
        model = load_dit(teacher)
        tensors, meta = read_lora(path)
        merge_lora_tensors(model, tensors, path)
        merged = write_toy_folder(Path(folder) / f"merged_rank{rank}", model)
        result, _, _ = evaluate_model(config_name, merged, None, replace(budget, drift_videos=0, long_video_prompts=0),
                                      seed)
        out[str(rank)] = {k: result[k] for k in ("colour_acc", "shape_acc", "direction_acc", "all_acc")}
        out[str(rank)].update(weight_error=float(meta["causvid.weight_error"]),
                              output_error=float(meta["causvid.output_error"]),
                              megabytes=path.stat().st_size / 2**20)
        print(f"[lora] rank {rank}: all three {result['all_acc']:.2f}", flush=True)
    (Path(folder) / "result.json").write_text(json.dumps(out, indent=2))
    return out


def gather(folder, parts: dict, factor: int) -> None:
    """parts: display name -> the folder `evaluate_one` wrote, in the report's order. Writes results.json and
    the drift plot (factor: the drift rollouts' length in training lengths) into folder."""
    results = {name: json.loads((Path(part) / "result.json").read_text()) for name, part in parts.items()}
    (Path(folder) / "results.json").write_text(json.dumps(results, indent=2))
    drift_plot(results, Path(folder) / "drift.png", factor)


def drift_plot(results: dict, path, factor: int):
    """All-three accuracy per window of the training length, one panel per model measured with every sink
    choice, one line per choice (nothing is written when no model was)."""
    panels = {name: {choice: d["all_acc"] for choice, d in r["drift"].items()}
              for name, r in results.items() if len(r.get("drift", {})) > 1}
    if panels:
        small_multiples(panels, path, y_label=f"all three, {factor}x training length")


def _strip(videos, frames_shown: int = 6) -> np.ndarray:
    """Rows of evenly spaced frames, one row per video, uint8 [rows*H, cols*W, 3] (upscaled 2x to see)."""
    rows = []
    for video in videos:
        idx = np.linspace(0, len(video) - 1, frames_shown).round().astype(int)
        rows.append(np.concatenate([world.to_uint8(video[i:i + 1])[0] for i in idx], axis=1))
    image = np.concatenate(rows, axis=0)
    return image.repeat(2, axis=0).repeat(2, axis=1)


def _drift_section(results: dict, factor: int) -> list:
    """Per-window figures of the models measured with every sink choice: all three for each choice, and each
    attribute and the background for the default one."""
    measured = {name: r["drift"] for name, r in results.items() if len(r.get("drift", {})) > 1}
    if not measured:
        return []
    windows = len(next(iter(next(iter(measured.values())).values()))["all_acc"])
    lines = ["", f"## Drift over {factor}x the training length, per window, by sink choice", "",
             f"{results[next(iter(measured))]['drift_videos']} held-out captions per model and choice, rollouts "
             f"{factor}x the training length through a rolling KV window of the training length; figures per window "
             "of the training length (1 = the training window). Sink choices: " + "; ".join(SINK_CHOICES) +
             " (window RoPE: cached frames at their rank in the window, as Infinity-RoPE). Plot: "
             "`evaluate/drift.png`.", "", "![drift](evaluate/drift.png)", "",
             "| model | sink | measure | " + " | ".join(str(w + 1) for w in range(windows)) + " |",
             "|---|---|---|" + "---|" * windows]
    for name, choices in measured.items():
        for i, (choice, d) in enumerate(choices.items()):
            keys = ("all_acc",) + (("colour_acc", "shape_acc", "direction_acc", "background_err") if i == 0 else ())
            for key in keys:
                digits = 3 if key == "background_err" else 2
                lines.append(f"| {name} | {choice} | {key} | " + " | ".join(f"{v:.{digits}f}" for v in d[key]) + " |")
    return lines


def write_report(out, times: dict, factor: int, smoke: bool = False) -> Path:
    """The report from evaluate/results.json; times: stage -> what its DONE holds (seconds, threads, start and
    end); factor: the drift rollouts' length in training lengths; smoke: a --quick run, said at the top."""
    out = Path(out)
    results = json.loads((out / "evaluate" / "results.json").read_text())
    teacher = next(iter(results.values()))
    videos = sorted({r["drift_videos"] for r in results.values() if r["drift_videos"]}, reverse=True)
    lines = ["# Toy world report", ""]
    if smoke:
        lines += ["**A smoke run (`--quick`)**: a few training steps per stage and one video per model check that "
                  "every stage runs; the figures below are not results (untrained models score 0, and ratios to the "
                  "teacher are —).", ""]
    lines += ["Rule-based analyser on held-out captions (colour / shape / direction of the moving shape), "
              f"{teacher['n']} videos per model at the training length; flicker = mean |frame difference| of "
              f"background pixels; first frame and frames/s: median over those videos made one at a time on this "
              f"CPU (text encoding and decoding included); drift over rollouts {factor}x the training length "
              "(rolling KV window of the training length, one block of sink), per window of 21 frames "
              "(all-attributes accuracy and background error, first -> last window), over "
              + " or ".join(map(str, videos)) + " videos (the fewer: the 50-step AR-diffusion models); — : not "
              "measured (the bidirectional teacher has no rolling window).", "",
              "| model | colour | shape | direction | all | vs teacher | flicker (bg) | first frame | frames/s "
              "| drift: all | drift: background |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rel = f"{r['all_acc'] / teacher['all_acc']:.0%}" if teacher["all_acc"] else "—"  # no teacher score to compare
        drift_acc = " → ".join(f"{v:.2f}" for v in r.get("drift_all_acc", [])) or "—"
        drift_bg = " → ".join(f"{v:.3f}" for v in r.get("drift_background_err", [])) or "—"
        lines.append(f"| {name} | {r['colour_acc']:.2f} | {r['shape_acc']:.2f} | {r['direction_acc']:.2f} | "
                     f"{r['all_acc']:.2f} | {rel} | {r['flicker_bg']:.4f} | {r['first_frame_s'] * 1000:.0f} ms | "
                     f"{r['fps']:.0f} | {drift_acc} | {drift_bg} |")
    lines += _drift_section(results, factor)
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
    lines += _lora_section(out, results, times)
    lines += _time_section(times)
    lines += ["", "## Samples", ""]
    for name, r in results.items():
        lines += [f"**{name}** — " + "; ".join(r["strip_captions"]), "", f"![{name}](evaluate/{r['strip']})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _lora_section(out: Path, results: dict, times: dict) -> list:
    """`--lora_comparison`: the chunkwise CF DMD student trained in full and as LoRAs (trainable parameters,
    checkpoint size, training steps/s, all three), and its LoRAs extracted at several ranks, applied to the
    teacher (errors as the export measures them, all three)."""
    full = "Causal Forcing DMD (chunkwise)"
    students = [name for name in results if name == full or name.startswith(full[:-1] + ", LoRA rank")]
    extraction = out / "lora_extraction" / "result.json"
    if len(students) < 2 and not extraction.is_file():
        return []
    lines = ["", "## LoRA students and extracted LoRAs", "",
             "The chunkwise CF DMD student trained in full and as LoRAs of its ODE init (same steps; LoRA at 10x the "
             "learning rate). Trainable parameters and size: the checkpoint's generator entries (a LoRA run's hold "
             "the adapter alone) and its model.pt (the EMA and the critic, trained in full, included); steps/s: the stage's "
             "training steps over its "
             "seconds (stages run side by side, one thread each).", "",
             "| student | trainable parameters | checkpoint | steps/s | colour | shape | direction | all |",
             "|---|---|---|---|---|---|---|---|"]
    for name in students:
        r = results[name]
        stage = r["strip"].split("/")[0]
        checkpoint = sorted((out / stage / "run").glob("checkpoint_model_*/model.pt"))[-1]
        params = sum(t.numel() for t in torch.load(checkpoint, map_location="cpu", mmap=True)["generator"].values())
        steps = int(checkpoint.parent.name.rsplit("_", 1)[-1])
        lines.append(f"| {name} | {params:,} | {checkpoint.stat().st_size / 2**20:.1f} MB | "
                     f"{steps / times[stage]['seconds']:.2f} | {r['colour_acc']:.2f} | {r['shape_acc']:.2f} | "
                     f"{r['direction_acc']:.2f} | {r['all_acc']:.2f} |")
    if extraction.is_file():
        rows = json.loads(extraction.read_text())
        lines += ["", "The full student's difference from the teacher (its base, as Wan2.1 is the published "
                  "students') as LoRAs (`python -m causvid.export --to lora --rank R`), each merged into the teacher "
                  "and judged like a model; weight error ||LoRA - difference|| / ||difference||, output error "
                  "against the student on the export's fixed input.", "",
                  "| rank | weight error | output error | file | colour | shape | direction | all |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {rank} | {r['weight_error']:.3f} | {r['output_error']:.3f} | {r['megabytes']:.2f} MB | "
                  f"{r['colour_acc']:.2f} | {r['shape_acc']:.2f} | {r['direction_acc']:.2f} | {r['all_acc']:.2f} |"
                  for rank, r in rows.items()]
        if full in results:
            r = results[full]
            lines.append(f"| the student | 0 | 0 | — | {r['colour_acc']:.2f} | {r['shape_acc']:.2f} | "
                         f"{r['direction_acc']:.2f} | {r['all_acc']:.2f} |")
    return lines


def _time_section(times: dict) -> list:
    """Each stage's own seconds and threads, their sum, and the wall clock from the first start to the last
    end (stages after the teacher run side by side: `causvid.toy.schedule`)."""
    spans = [(t["start"], t["end"]) for t in times.values() if "start" in t]
    lines = ["", "## Time per stage (this machine)", "",
             "Each stage's own time; after the teacher, stages run side by side in one single-thread process per "
             "core, so the wall clock (first start to last end) is less than their sum.", "",
             "| stage | seconds | threads |", "|---|---|---|"]
    lines += [f"| {name} | {t['seconds']:.0f} | {t.get('threads', '—')} |" for name, t in times.items()]
    lines.append(f"| **total** | {sum(t['seconds'] for t in times.values()):.0f} | |")
    if spans:
        wall = max(end for _, end in spans) - min(start for start, _ in spans)
        lines.append(f"| **wall clock** | {wall:.0f} ({wall / 60:.0f} min) | |")
    return lines
