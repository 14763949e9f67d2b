"""Streaming in the toy world, measured with the rule-based analyser: prompt switches and zero-shot V2V.

    python -m causvid.toy.streaming --checkpoint checkpoints/toy --config configs/toy/cf_dmd_chunkwise.yaml \
        [--pairs 16] [--out DIR]

**Switching** (:func:`measure_switching`). Pairs of held-out captions (A, B): A is the evaluation's held-out
caption i (`evaluate.py`: `world.sample_specs(n, 10_000 + seed)`), B differs from A in colour, shape and
direction. An endless `StreamSession` (its default rolling window: the training length, one block of sink) runs
A for the training window (the config's `image_or_video_shape[1]` latent frames, S), then continues for
`windows` windows of S latent frames in each of these modes:

- ``re-cache + re-sink``: `set_prompt(B)` (the session's default): the KV re-cache the config asks for
  (LongLive's: every frame still in the window, clean; with `model_kwargs.recache_frames` n only the blocks
  holding the latest n frames, the older ones forgotten; with `model_kwargs.recache_noise` T written noised to
  T), and the old sink (A's first block) dropped, so the first block under B becomes the sink;
- ``LongLive's re-cache (the whole window, clean) + re-sink`` (only when the config sets recache_frames or
  recache_noise): the same with LongLive's re-cache, for comparison;
- ``re-cache, old sink kept``: `set_prompt(B, resink=False)`, LongLive's re-cache with its global sink;
- ``no re-cache``: `set_prompt(B, recache=False)`, only the cross-attention changes (the naive switch);
- ``restart with B``: a fresh stream of B from frame 0 (its frames stand for those after the switch);
- ``no switch (A)``: the stream of A continues; scored on B, the floor the metric gives a stream that ignores B.

All four use the pair's generator seed, so the first S frames of the first, second and fourth are the same video.

*Accuracy per window*: window w holds the pixel frames decoded from latent frames [S + wS, S + (w + 1)S) (from
[wS, (w + 1)S) for the restart), i.e. 4S = 24 pixel frames (21 for the restart's first window, whose first latent
gives one frame); the analyser's colour / shape / direction verdict on them is compared with B.

*Frames until B holds*: a judging window is the pixel frames of J = max(block, JUDGE_FRAMES) latent frames
(`num_frame_per_block` 3 -> 12 pixel frames; a framewise student's block is one latent frame, and it is judged on
the same 12 pixel frames, so that the two layouts' onsets compare: B on all of them is the stricter test), slid one
latent frame (4 pixel frames) at a time; the window at offset d covers latent frames [S + d, S + d + J) ([d, d + J)
for the restart). B holds at d when the analyser's verdict on that window matches B on all three attributes. The
number reported is the smallest such d after the switch, in latent frames and in pixel frames (the pixel frames
decoded between the switch and latent S + d: 4d for the switched streams, 1 + 4(d - 1) for the restart when d > 0);
None ("never") if no window of the continuation shows B. "B at once": d = 0 (the first block made after the switch
already shows B); "within one block" (the issue's goal for re-cache: >= 80 % of pairs): d <= block, i.e. B shows in
a judging window starting at most one block after the switch. The first such window, not "B from there to the end":
an endless toy stream loses its prompt now and then even without a switch (the restart's per-window accuracy shows
how often), so persistence is read from the per-window accuracies, and the ``no switch (A)`` row gives the rate at
which a stream that ignores B shows it by chance.

*Continuity* (`jump_px`, `speed_after_px`: medians per mode; `no_object`: a mean): the object's step from the
last pixel frame before the switch to the first after (for the restart, from the no-switch stream's frame), its
mean step over the next 4 frames, and the share of the first window's pixel frames after the switch in which the
analyser finds no object (`analyser.track`). The world moves the object 1 px a frame: a switch that carries the
video on steps about 1 px across and after it and keeps the object, a hard cut (the restart) jumps to B's own
start, a stalled one stands still, a dissolve loses the object for a while.

**V2V** (:func:`measure_v2v`): held-out specs rendered at the training length (`world.render`), encoded, and
streamed through SDEdit V2V with the prompt naming another colour and the same shape and direction, at several
strengths; accuracy of the new colour, share of videos still showing the input's colour, shape and direction
accuracy (both as in the input). Strength 0 is the input itself.
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from causvid.errors import ArgumentParser
from causvid.threads import add_threads_flag, use_threads

__all__ = ["MODES", "switch_pairs", "frames_until_holds", "score_after", "measure_switching", "measure_v2v",
           "measure", "markdown", "main"]

MODES = ("re-cache + re-sink", "re-cache, old sink kept", "no re-cache", "restart with B", "no switch (A)")
LONGLIVE = "LongLive's re-cache (the whole window, clean) + re-sink"  # measured too when the config's differs
ATTRIBUTES = ("colour", "shape", "direction")
STRENGTHS = (250, 500, 625, 750, 1000)  # 625: the shipped student's last step level (CausVid's V2V choice)
JUDGE_FRAMES = 3  # the shortest judging window for "B holds", in latent frames (module doc)
HELD_OUT = 10_000  # the evaluation's held-out specs are world.sample_specs(n, HELD_OUT + seed) (evaluate.py)


def _generator(seed: int, index: int) -> torch.Generator:
    """The noise of stream `index` (as `VideoGenerator.noise`: the same whatever the order)."""
    import torch

    return torch.Generator().manual_seed(hash((seed, index)) & 0x7FFF_FFFF_FFFF_FFFF)


def _others(vocab, value):
    return tuple(v for v in vocab if v != value)


def switch_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(A, B) captions: A the held-out caption i, B drawn (deterministically) with every attribute different."""
    from causvid.toy import world

    pairs = []
    for i, a in enumerate(world.sample_specs(n, seed=HELD_OUT + seed)):
        b = world.sample_spec((HELD_OUT + 1 + seed, i), shapes=_others(world.SHAPES, a.shape),
                              colours=_others(tuple(world.COLOURS), a.colour),
                              directions=_others(world.DIRECTIONS, a.direction))
        pairs.append((world.caption(a), world.caption(b)))
    return pairs


def frames_until_holds(ok: list[bool]) -> int | None:
    """The index of the first True verdict in `ok` (sliding windows after the switch); None if there is none."""
    return next((d for d, good in enumerate(ok) if good), None)


def _stream(components, config, prompt, frames, generator, switch=None, kv=None):
    """Pixels [T, 3, H, W] of the first `frames` latent frames of an endless session; switch: (latent frame,
    prompt, recache[, resink[, recache_frames[, recache_noise]]]); kv: StreamSession's local_attn_size /
    sink_size (default: the session's)."""
    import torch

    from causvid.pipelines.stream import StreamSession

    session = StreamSession(components, config, prompt, generator=generator, **(kv or {}))
    pixels = []
    while session.frame < frames:
        if switch is not None and session.frame == switch[0]:
            session.set_prompt(switch[1], recache=switch[2], resink=switch[3] if len(switch) > 3 else False,
                               recache_frames=switch[4] if len(switch) > 4 else None,
                               recache_noise=switch[5] if len(switch) > 5 else None)
        pixels.append(session.next_block().pixels[0])
    return torch.cat(pixels)


def _verdicts(clips, caption):
    from causvid.toy import analyser

    return [analyser.compare(m, caption) for m in analyser.measure_batch(clips)]


def score_after(video, start, caption, vae, *, window, windows, block) -> dict:
    """`video` [T, 3, H, W] (decoded by `vae`) against `caption` from latent frame `start` on: the verdicts per
    window of `window` latent frames ({"all"/"colour"/...: [bool per window]}) and the first sliding window of
    `block` latent frames that matches all three (`onset_latent`, `onset_pixel`; module doc)."""
    at = vae.num_pixel_frames  # pixel offset of a latent frame (frames before it)
    per_window = _verdicts([video[at(start + w * window):at(start + (w + 1) * window)] for w in range(windows)],
                           caption)
    last = windows * window - block
    sliding = _verdicts([video[at(start + d):at(start + d + block)] for d in range(last + 1)], caption)
    onset = frames_until_holds([v["all_ok"] for v in sliding])
    return dict(windows={k: [bool(v[f"{k}_ok"]) for v in per_window] for k in ATTRIBUTES + ("all",)},
                onset_latent=onset, onset_pixel=None if onset is None else at(start + onset) - at(start))


def measure_switching(components, config, pairs: int = 16, windows: int = 4, seed: int = 0, *,
                      local_attn_size: int = None, sink_size: int = None, log=None) -> dict:
    """The switching measurement (module doc) on `pairs` caption pairs, `windows` windows after the switch;
    local_attn_size / sink_size: the endless session's KV window (None: its default)."""
    switch = int(config.image_or_video_shape[1])
    block = int(config.num_frame_per_block)
    if switch % block or config.independent_first_frame:
        raise ValueError(f"the training window ({switch} latent frames) must end on a block boundary "
                         f"(num_frame_per_block={block}, independent_first_frame off) to switch there")
    vae, total = components.vae, switch * (1 + windows)
    judge = max(block, JUDGE_FRAMES)
    kw = dict(window=switch, windows=windows, block=judge)
    import torch

    from causvid.toy import analyser

    kv = {k: v for k, v in dict(local_attn_size=local_attn_size, sink_size=sink_size).items() if v is not None}
    ours = config.model_kwargs.recache_frames != -1 or config.model_kwargs.recache_noise != 0  # not LongLive's
    modes = MODES[:1] + ((LONGLIVE,) if ours else ()) + MODES[1:]
    per_pair = []
    for i, (a, b) in enumerate(switch_pairs(pairs, seed)):
        gen = lambda: _generator(seed, 3000 + i)  # noqa: E731 (the same noise for every mode)
        runs = {"re-cache + re-sink": _stream(components, config, a, total, gen(), (switch, b, True, True), kv),
                **({LONGLIVE: _stream(components, config, a, total, gen(), (switch, b, True, True, -1, 0), kv)}
                   if ours else {}),
                "re-cache, old sink kept": _stream(components, config, a, total, gen(), (switch, b, True, False), kv),
                "no re-cache": _stream(components, config, a, total, gen(), (switch, b, False), kv),
                "no switch (A)": _stream(components, config, a, total, gen(), kv=kv)}
        at = vae.num_pixel_frames(switch)  # the first pixel frame after the switch
        px = vae.num_pixel_frames(2 * switch) - at  # the first window after the switch
        scored = {mode: {**score_after(video, switch, b, vae, **kw), **_continuity(video, at, px)}
                  for mode, video in runs.items()}
        restart = _stream(components, config, b, total - switch, gen(), kv=kv)
        scored["restart with B"] = {**score_after(restart, 0, b, vae, **kw),
                                    **_continuity(torch.cat([runs["no switch (A)"][:at], restart]), at, px)}
        before = analyser.analyse(runs["no switch (A)"][:at], a)["all_ok"]
        per_pair.append(dict(a=a, b=b, a_before_switch=bool(before), modes={m: scored[m] for m in modes}))
        if log:
            log(f"[streaming] pair {i + 1}/{pairs}: {a} -> {b}: " + ", ".join(
                f"{m} {_onset_text(scored[m]['onset_latent'])}" for m in modes))
    return dict(switch_latent_frame=switch, window_latent_frames=switch, windows=windows, block=block,
                judge_latent_frames=judge, kv_window=kv, recache_frames=int(config.model_kwargs.recache_frames),
                recache_noise=float(config.model_kwargs.recache_noise),
                pixel_frames_per_window=vae.num_pixel_frames(2 * switch) - vae.num_pixel_frames(switch),
                a_before_switch_acc=_mean([p["a_before_switch"] for p in per_pair]),
                modes={m: _summarise([p["modes"][m] for p in per_pair], block) for m in modes}, pairs=per_pair)


def _continuity(video, at, window) -> dict:
    """The object's step across the switch (pixel frame at - 1 -> at), its mean step over the next 4 frames
    (analyser.track, px; None without an object), and the share of the `window` pixel frames from the switch on
    that show no object: a continuous switch steps at about the world's speed and keeps the object, a hard cut
    jumps, a stalled one stands still, a dissolve loses the object for a while."""
    from causvid.toy import analyser

    track = analyser.track(video[at - 1:at + max(window, 5)])  # one pass over the frames both read
    steps, found = track["steps"][:5], track["found"][1:1 + window]
    after = [x for x in steps[1:] if x is not None]
    return dict(jump_px=steps[0], speed_after_px=_mean(after) if after else None,
                no_object=1 - sum(found) / len(found))


def _onset_text(onset):
    return "never" if onset is None else f"{onset}"


def _px(value):
    return "—" if value is None else f"{value:.2f}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _mean(values):
    import numpy as np

    return float(np.mean(values)) if len(values) else float("nan")


def _summarise(rows, block):
    onsets = [r["onset_latent"] for r in rows]
    out = {f"{k}_acc": [_mean([r["windows"][k][w] for r in rows]) for w in range(len(rows[0]["windows"]["all"]))]
           for k in ("all",) + ATTRIBUTES}
    out.update(at_once=_mean([o == 0 for o in onsets]), within_one_block=_mean([o is not None and o <= block
                                                                                for o in onsets]),
               never=_mean([o is None for o in onsets]),
               **{f"median_{k}": _median([r.get(k) for r in rows])
                  for k in ("onset_latent", "onset_pixel", "jump_px", "speed_after_px")},
               no_object=_mean([r["no_object"] for r in rows]))
    return out


def measure_v2v(components, config, videos: int = 16, strengths=STRENGTHS, seed: int = 0) -> dict:
    """The V2V measurement (module doc): per strength, accuracies over `videos` held-out specs."""
    from causvid.toy import world

    import numpy as np
    import torch

    from causvid.pipelines.stream import StreamSession

    vae = components.vae
    frames = int(config.image_or_video_shape[1])
    size = int(config.image_or_video_shape[3]) * vae.spatial_factor
    specs = world.sample_specs(videos, seed=HELD_OUT + seed)
    inputs = [world.render(s, vae.num_pixel_frames(frames), size) for s in specs]
    prompts = []
    for i, spec in enumerate(specs):
        rng = np.random.default_rng((HELD_OUT + 2 + seed, i))
        others = _others(tuple(world.COLOURS), spec.colour)
        prompts.append(world.caption(replace(spec, colour=others[int(rng.integers(len(others)))])))
    rows = {"0": _v2v_row(inputs, specs, prompts)}
    for strength in strengths:
        outputs = []
        for i, (video, prompt) in enumerate(zip(inputs, prompts)):
            latents = vae.encode(video[None])
            session = StreamSession(components, config, prompt, input_latents=latents, strength=strength,
                                    generator=_generator(seed, 4000 + i))
            outputs.append(torch.cat([blk.pixels[0] for blk in session]))
        rows[str(strength)] = _v2v_row(outputs, specs, prompts)
    return dict(videos=videos, latent_frames=frames, strengths=[0] + list(strengths), rows=rows)


def _v2v_row(videos, specs, prompts) -> dict:
    from causvid.toy import analyser

    verdicts = [analyser.compare(m, p) for m, p in zip(analyser.measure_batch(videos), prompts)]
    return dict(new_colour_acc=_mean([v["colour_ok"] for v in verdicts]),
                input_colour_kept=_mean([v["colour"] == s.colour for v, s in zip(verdicts, specs)]),
                shape_acc=_mean([v["shape_ok"] for v in verdicts]),
                direction_acc=_mean([v["direction_ok"] for v in verdicts]),
                all_acc=_mean([v["all_ok"] for v in verdicts]))


def measure(components, config, pairs: int = 16, windows: int = 4, strengths=STRENGTHS, seed: int = 0,
            log=None, **kv) -> dict:
    """Both measurements: {"switching": ..., "v2v": ...} (JSON-ready); kv: the switching streams' KV window."""
    return dict(switching=measure_switching(components, config, pairs, windows, seed, log=log, **kv),
                v2v=measure_v2v(components, config, pairs, strengths, seed))


# -- tables ----------------------------------------------------------------------------------------------------
def _arrow(values, fmt="{:.2f}"):
    return " → ".join(fmt.format(v) for v in values)


def markdown(result: dict, level: str = "###", name: str = None) -> list[str]:
    """The tables of one `measure` result as markdown lines (headings at `level`, titled with `name`)."""
    s, v = result["switching"], result["v2v"]
    title = f" — {name}" if name else ""
    n = len(s["pairs"])
    px = s["pixel_frames_per_window"]
    kv = (", ".join(f"{k} {v}" for k, v in s["kv_window"].items()) if s.get("kv_window") else
          "rolling KV window of the training length with one block of sink, the session's default")
    lines = [f"{level} Prompt switching{title}", "",
             f"{n} held-out caption pairs (B differs from A in colour, shape and direction); A for the training "
             f"window ({s['switch_latent_frame']} latent frames), then B for {s['windows']} windows of "
             f"{s['window_latent_frames']} latent frames ({px} pixel frames) in an endless session ({kv}). "
             f"Accuracy on B per window after the switch (first → last); *B holds after*: the first offset after "
             f"the switch at which a window of {s.get('judge_latent_frames', s['block'])} latent frames slid by one "
             f"latent frame shows B on all three attributes (median over the pairs where it does, latent / pixel "
             f"frames); *at once*: at offset 0; *within one block*: at offset ≤ {s['block']}; *never*: in no window "
             f"of the continuation; *step across / after*: the object's step (px, median) from the last pixel "
             f"frame before the switch to the first after (the restart's: from A's), and its mean step over the "
             f"next 4 frames (the world moves it 1 px a frame; a hard cut jumps, a stalled switch stands still); "
             f"*no object*: the share of the first window's pixel frames after the switch that show none (a "
             f"dissolve). "
             f"Before the switch A is right on all three in {s['a_before_switch_acc']:.0%} of pairs." + (
                 f" The session re-caches the blocks holding the latest {s['recache_frames']} latent frame(s) "
                 f"(model_kwargs.recache_frames; -1: the whole window), noised to t = {s.get('recache_noise', 0):g} "
                 f"(model_kwargs.recache_noise); *{LONGLIVE}* is for comparison."
                 if s.get("recache_frames", -1) != -1 or s.get("recache_noise", 0) else ""), "",
             "| mode | all three on B | colour | shape | direction | B at once | B within one block | "
             "B holds after (median) | never | step across / after | no object |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, m in s["modes"].items():
        median = ("—" if m["median_onset_latent"] is None else
                  f"{m['median_onset_latent']:g} / {m['median_onset_pixel']:g}")
        lines.append(f"| {mode} | {_arrow(m['all_acc'])} | {_arrow(m['colour_acc'])} | {_arrow(m['shape_acc'])} | "
                     f"{_arrow(m['direction_acc'])} | {m['at_once']:.0%} | {m['within_one_block']:.0%} | {median} | "
                     f"{m['never']:.0%} | {_px(m.get('median_jump_px'))} / {_px(m.get('median_speed_after_px'))} | "
                     f"{'—' if m.get('no_object') is None else format(m['no_object'], '.0%')} |")
    lines += ["", f"{level} Streaming video-to-video{title}", "",
              f"{v['videos']} held-out specs rendered ({v['latent_frames']} latent frames), prompted with another "
              "colour and the same shape and direction; strength 0 is the input itself.", "",
              "| strength | new colour | input colour kept | shape | direction | all three |",
              "|---|---|---|---|---|---|"]
    for strength, r in v["rows"].items():
        lines.append(f"| {strength} | {r['new_colour_acc']:.2f} | {r['input_colour_kept']:.2f} | {r['shape_acc']:.2f} "
                     f"| {r['direction_acc']:.2f} | {r['all_acc']:.2f} |")
    return lines


# -- CLI -------------------------------------------------------------------------------------------------------
def _parser():
    p = ArgumentParser(prog="python -m causvid.toy.streaming", description="Measure prompt switching and streaming V2V of a toy student.")
    p.add_argument("--checkpoint", required=True, help="a toy student folder (e.g. checkpoints/toy)")
    p.add_argument("--config", required=True, help="its config (e.g. configs/toy/cf_dmd_chunkwise.yaml)")
    p.add_argument("--pairs", type=int, default=16, help="caption pairs (and V2V videos)")
    p.add_argument("--windows", type=int, default=4, help="windows of the training length after the switch")
    p.add_argument("--strengths", default=",".join(map(str, STRENGTHS)), help="V2V strengths, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_attn_size", type=int, help="the switching streams' KV window (default: the session's)")
    p.add_argument("--sink_size", type=int, help="their sink frames (default: the session's)")
    add_threads_flag(p)
    p.add_argument("--out", help="folder for streaming.md and streaming.json")
    return p


def _main(argv=None) -> int:
    from causvid.config import load_config

    args = _parser().parse_args(argv)
    if not Path(args.checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint {args.checkpoint}: not a folder (give a toy student folder such as "
                                "checkpoints/toy)")
    if args.pairs < 1 or args.windows < 1:
        raise ValueError(f"--pairs {args.pairs} / --windows {args.windows}: both must be at least 1")
    try:
        strengths = [float(s) for s in args.strengths.split(",")]
    except ValueError:
        raise ValueError(f"--strengths {args.strengths!r}: give numbers in (0, 1000], comma-separated") from None
    if not all(0 < s <= 1000 for s in strengths):
        raise ValueError(f"--strengths {args.strengths!r}: every strength must be in (0, 1000]")
    strengths = [int(s) if s == int(s) else s for s in strengths]
    config = load_config(args.config)
    from causvid.pipelines.text_to_video import load_components
    from causvid.threads import dit_width

    use_threads(args.threads, "cpu", dit_width(args.checkpoint))
    components = load_components(args.checkpoint)
    kv = {k: getattr(args, k) for k in ("local_attn_size", "sink_size") if getattr(args, k) is not None}
    result = measure(components, config, args.pairs, args.windows, strengths, args.seed,
                     log=lambda line: print(line, flush=True), **kv)
    text = "\n".join(markdown(result, name=str(args.checkpoint))) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "streaming.md").write_text(text)
        (out / "streaming.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out / 'streaming.md'} and {out / 'streaming.json'}")
    else:
        print("wrote nothing (pass --out DIR to keep the tables)")
    return 0


def main(argv=None) -> int:
    from causvid.pipelines.cli import run
    return run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
