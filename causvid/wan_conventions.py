"""Wan2.1's conventions as plain Python (no torch, so a config, a prompt schedule or a flag is checked before torch
loads): the 1000-step timestep scale, the default negative prompt, what a step list may hold, and how a video
splits into autoregressive blocks. `causvid.flow` (schedules, samplers) and `causvid.config` build on these."""
from __future__ import annotations

NUM_TRAIN_TIMESTEPS = 1000

# Wan2.1's default negative prompt (wan/configs/shared_config.py); WanT2V uses it when no negative prompt is given,
# and CausVid / Self-Forcing configs copy it. diffusers' WanPipeline defaults to "" instead.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def check_step_list(steps, warp: bool = False) -> list:
    """A step list as plain floats without CausVid's trailing 0, checked: timesteps in (0, 1000], strictly
    decreasing; integers when they will be warped (they index the training grid). Raises ValueError."""
    steps = [float(s) for s in steps]
    if steps and steps[-1] == 0:
        steps = steps[:-1]
    if not steps or any(not 0 < s <= NUM_TRAIN_TIMESTEPS for s in steps):
        raise ValueError(f"step list must hold timesteps in (0, 1000] (plus an optional trailing 0), got {steps}")
    if any(a <= b for a, b in zip(steps, steps[1:])):
        raise ValueError(f"step list must be strictly decreasing, got {steps}")
    if warp and any(s != round(s) for s in steps):
        raise ValueError(f"warp needs integer timesteps in [0, {NUM_TRAIN_TIMESTEPS}], got {steps}")
    return steps


def block_layout(num_frames: int, block: int, independent_first_frame: bool = False) -> list:
    """The autoregressive blocks of a video as (start frame, size): blocks of `block` frames, or with
    `independent_first_frame` (Self-Forcing's layout) frame 0 alone and then blocks of `block`: [1, 3, 3, ...]."""
    first = 1 if independent_first_frame else 0
    if num_frames < first or (num_frames - first) % block:
        layout = f"1 + {block} * k" if independent_first_frame else f"a multiple of {block}"
        raise ValueError(f"{num_frames} latent frames do not split into blocks of num_frame_per_block={block}"
                         f"{' after an independent first frame' if first else ''} (need {layout})")
    return [(0, 1)] * first + [(start, block) for start in range(first, num_frames, block)]
