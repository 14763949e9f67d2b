"""A rule-based analyser of toy-world videos: does a video show what its caption says?

No learned model: plain rules on pixels, the same for ground-truth renders and generated videos.

Per frame (all frames of all videos at once, vectorised with torch):

1. **background**: the per-channel median of the frame (the shape covers ~10 % of it, so the median is the
   background colour);
2. **foreground**: pixels whose RGB distance (in [0, 1] units) to that background exceeds ``fg_threshold``,
   measured on the 3x3-averaged frame (``smooth``; wrapping), which divides pixel noise by 3;
   a frame is unusable if more than ``max_fg_frac`` of it is foreground (noise, a wrong background);
3. **object**: the largest 8-connected foreground component, connectivity taken *modulo the canvas* (the
   shape wraps around the edges, so a shape split over the border is one component); it must have at least
   ``min_pixels`` pixels and hold at least ``min_dominance`` of the foreground, else the frame has no object;
4. **coverage**: a soft mask over the object and the pixels touching it: each pixel's projection on the axis
   from the background to the object's core colour (step 5), clamped to [0, 1], so anti-aliased or blurred
   edges count fractionally and the measures below do not depend on sub-pixel position or size;
5. **colour**: mean colour of the object's core (object pixels at least ``core_frac`` of its strongest
   distance from the background, which drops blended edges) -> nearest palette colour
   (:data:`~causvid.toy.world.COLOURS`, RGB distance);
6. **centre**: the circular (wrap-aware) mean of the coverage-weighted coordinates; the object is then
   *unwrapped* by measuring coordinates relative to that centre;
7. **shape**: the *fill ratio* = coverage area / soft bounding box, the box's sides being the sums of the
   column and row profiles (max coverage per column / row) (square 1, circle pi/4, triangle 1/2), and the
   vertical *asymmetry* = (centroid row - box centre row) / box height (0 for circle and square, ~1/6 for the
   upward triangle): ``triangle`` if fill < ``triangle_fill`` or asymmetry > ``triangle_asym``, else ``square``
   if fill >= ``square_fill``, else ``circle``.

Per video (or per window of frames, :func:`drift`): needs objects in at least ``min_valid_frac`` of the frames,
else nothing is detected and every attribute is wrong. Colour and shape are the majority vote over frames with
an object; **direction** is the sign and axis of the summed wrap-aware displacement of the centre between
consecutive frames that both have an object (the difference wrapped into [-W/2, W/2)); a mean speed along that
axis below ``min_speed`` px/frame is "no motion" (wrong). **Flicker**: the mean absolute frame-to-frame
difference over pixels that are background in both frames (``flicker_bg``), and over whole frames
(``flicker``; includes the shape's own motion). **Background**: mean colour of all background pixels
(``background_rgb``), its distance to the world's plain background (``background_err``) and the mean spatial
std of background pixels per frame (``background_std``). Background pixels are those more than one pixel away
from any foreground pixel (where there are none, e.g. pure noise, whole frames stand in). All intensities are
in [0, 1] units (half of the [-1, 1] tensor scale).

Measured (tests/test_toy_world.py and by hand): 100 % on colour, shape and direction for ground-truth renders
(shape sizes 4-19 px, speeds 0.3-3 px/frame, canvases 24-64, 21 to 200 frames), also with Gaussian pixel
noise up to sigma 0.1 (on the [-1, 1] scale) or a 3x3 blur; at sigma 0.2 colour and direction stay right but
shape drops to ~65 % (noise inflates the soft box). Captions of other videos score at chance.

API: :func:`analyse` (one video + caption -> dict), :func:`score` (many -> accuracies and means),
:func:`drift` (one long video, per window), :func:`measure` / :func:`measure_batch` (the caption-free part,
reusable with several captions through :func:`compare`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from causvid.toy.world import BACKGROUND, COLOURS, SHAPES, parse_caption

__all__ = ["AnalyserConfig", "to_frames", "measure", "measure_batch", "compare", "analyse", "score", "drift", "track"]

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = torch.tensor([COLOURS[c] for c in _PALETTE_NAMES], dtype=torch.float32)
_BACKGROUND = torch.tensor(BACKGROUND, dtype=torch.float32)


@dataclass(frozen=True)
class AnalyserConfig:
    fg_threshold: float = 0.25      # RGB distance to the background that makes a pixel foreground
    smooth: bool = True             # segment a 3x3-averaged frame (robust to pixel noise)
    max_fg_frac: float = 0.5        # more foreground than this: no object in the frame
    min_pixels: int = 4             # smallest object
    min_dominance: float = 0.5      # the largest component must hold this share of the foreground
    core_frac: float = 0.6          # colour from object pixels at least this share of the strongest distance
    # shape rule on the soft fill ratio (ideal: square 1, circle pi/4, triangle 1/2; GT renders of sizes 4-19 px
    # at random sub-pixel positions: square >= 0.99, circle 0.786-0.84, triangle 0.53-0.69) and the asymmetry
    # (GT: circle / square |asym| < 0.005, triangle 0.11-0.16)
    triangle_fill: float = 0.64     # fill below this: triangle (midway between 1/2 and pi/4)
    triangle_asym: float = 0.07     # centroid this far below the box centre (share of box height): triangle
    square_fill: float = 0.89       # fill at least this: square (midway between pi/4 and 1)
    min_valid_frac: float = 0.5     # share of frames (of a video / window) that must show an object
    min_speed: float = 0.25         # px per frame along the motion axis, else "no motion"


DEFAULT_CONFIG = AnalyserConfig()


def to_frames(video) -> torch.Tensor:
    """Any accepted video -> float32 ``[T, H, W, 3]`` in [0, 1].

    Accepted: float ``[T, 3, H, W]`` (or ``[T, H, W, 3]``) in [-1, 1]; uint8 ``[T, H, W, 3]`` (or
    ``[T, 3, H, W]``) in [0, 255]; torch tensors or numpy arrays; a single frame without the ``T`` axis.
    """
    x = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video).detach().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected a video [T, 3, H, W] or [T, H, W, 3], got shape {tuple(x.shape)}")
    is_uint8 = x.dtype == torch.uint8
    if is_uint8:
        channels_last = x.shape[-1] == 3 or x.shape[1] != 3
    else:
        channels_last = x.shape[1] != 3 and x.shape[-1] == 3
    if not channels_last:
        if x.shape[1] != 3:
            raise ValueError(f"expected 3 colour channels, got shape {tuple(x.shape)}")
        x = x.permute(0, 2, 3, 1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got shape {tuple(x.shape)}")
    out = torch.empty(x.shape, dtype=torch.float32)
    out.copy_(x)
    if is_uint8:
        out.div_(255.0)
    else:
        out.add_(1).mul_(0.5)
    return out.clamp_(0, 1)


def _wrap(d: torch.Tensor, n: int) -> torch.Tensor:
    """Differences wrapped into [-n/2, n/2)."""
    return (d + n / 2) % n - n / 2


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    """3x3 dilation of boolean masks [F, H, W], wrapping at the edges."""
    m = mask | mask.roll(1, 2) | mask.roll(-1, 2)
    return m | m.roll(1, 1) | m.roll(-1, 1)


def _largest_component(fg: torch.Tensor) -> torch.Tensor:
    """Mask of the largest 8-connected component of each frame's ``fg`` [F, H, W], wrapping at the edges."""
    f, h, w = fg.shape
    dtype = torch.int16 if h * w < 2 ** 15 else torch.int32
    idx = torch.arange(1, h * w + 1, dtype=dtype).view(1, h, w).expand(f, h, w)
    zero = torch.zeros((), dtype=dtype)
    labels = torch.where(fg, idx, zero)
    active = torch.arange(f)  # frames still changing
    for _ in range(h * w):  # each pass spreads the max label one pixel (Chebyshev); stops when stable
        sub, mask = labels[active], fg[active]
        m = torch.maximum(sub, torch.maximum(sub.roll(1, 2), sub.roll(-1, 2)))
        m = torch.maximum(m, torch.maximum(m.roll(1, 1), m.roll(-1, 1)))
        m = torch.where(mask, m, zero)
        changed = (m != sub).flatten(1).any(1)
        labels[active] = m
        active = active[changed]
        if len(active) == 0:
            break
    flat = labels.view(f, -1).long()
    key = flat + torch.arange(f)[:, None] * (h * w + 1)
    counts = torch.bincount(key.flatten(), minlength=f * (h * w + 1)).view(f, h * w + 1)
    counts[:, 0] = 0
    best = counts.argmax(1)  # [F] label of the largest component; 0 where no foreground
    return (flat == best[:, None]).view(f, h, w) & (best > 0).view(f, 1, 1)


def _frame_features(frames: torch.Tensor, cfg: AnalyserConfig) -> dict[str, torch.Tensor]:
    """Per-frame measurements of ``frames`` [F, H, W, 3] in [0, 1]."""
    f, h, w, _ = frames.shape
    if f == 0:  # no frames: empty features of the right kinds
        z = torch.zeros(0)
        z3 = torch.zeros(0, 3)
        return dict(valid=torch.zeros(0, dtype=torch.bool), cx=z, cy=z, area=z, fill=z, asym=z, rgb=z3,
                    colour=z.long(), shape=z.long(), box_w=z, box_h=z, bg_n=z, bg_sum=z3, bg_sqsum=z3,
                    next_diff=z, next_bg_diff=z, next_bg_n=z)
    bg = frames.reshape(f, -1, 3).median(dim=1).values  # [F, 3]
    dist = (frames - bg[:, None, None, :]).norm(dim=-1)  # [F, H, W]
    # segmentation on a 3x3-averaged (wrapping) frame: pixel noise drops 3x, the object barely changes
    smooth = frames
    if cfg.smooth:
        smooth = smooth + smooth.roll(1, 2) + smooth.roll(-1, 2)
        smooth = (smooth + smooth.roll(1, 1) + smooth.roll(-1, 1)) / 9
    fg = (smooth - bg[:, None, None, :]).norm(dim=-1) > cfg.fg_threshold
    n_fg = fg.sum((1, 2))
    usable = (n_fg.float() <= cfg.max_fg_frac * h * w) & (n_fg >= cfg.min_pixels)
    comp = torch.zeros_like(fg)
    if usable.any():
        comp[usable] = _largest_component(fg[usable])
    n = comp.sum((1, 2))
    valid = usable & (n >= cfg.min_pixels) & (n.float() >= cfg.min_dominance * n_fg.float())
    comp &= valid[:, None, None]
    # colour: the object's core (pixels near its strongest distance from the background)
    dmax = torch.where(comp, dist, torch.zeros_like(dist)).amax((1, 2))
    core = comp & (dist >= cfg.core_frac * dmax[:, None, None])
    corew = core.float()
    n_core = corew.sum((1, 2)).clamp(min=1)
    rgb = (frames * corew[..., None]).sum((1, 2)) / n_core[:, None]
    colour = (rgb[:, None, :] - _PALETTE[None]).norm(dim=-1).argmin(1)

    # soft coverage ("alpha") of the object and the pixels touching it: each pixel's projection on the
    # background -> core colour axis (0 = background, 1 = object colour); blended edges count fractionally
    axis = rgb - bg  # [F, 3] background -> object colour
    proj = ((frames - bg[:, None, None, :]) * axis[:, None, None, :]).sum(-1)
    alpha = (proj / (axis * axis).sum(-1).clamp(min=1e-6)[:, None, None]).clamp(0, 1) * _dilate(comp).float()
    area = alpha.sum((1, 2))
    area_c = area.clamp(min=1e-6)

    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)

    def circ_mean(weights_1d: torch.Tensor, size: int, coords: torch.Tensor) -> torch.Tensor:
        ang = 2 * math.pi * (coords + 0.5) / size
        c = (weights_1d * torch.cos(ang)).sum(1)
        s = (weights_1d * torch.sin(ang)).sum(1)
        return (torch.atan2(s, c) * size / (2 * math.pi) - 0.5) % size

    col_mass, row_mass = alpha.sum(1), alpha.sum(2)  # [F, W], [F, H]
    cx = circ_mean(col_mass, w, xs)  # wrap-aware centre of mass
    cy = circ_mean(row_mass, h, ys)
    ux = (xs[None, :] - cx[:, None] + w / 2) % w  # [F, W] unwrapped columns: the object sits near w / 2
    uy = (ys[None, :] - cy[:, None] + h / 2) % h  # [F, H]
    mean_ux = (col_mass * ux).sum(1) / area_c
    mean_uy = (row_mass * uy).sum(1) / area_c
    centre_x = (mean_ux + cx - w / 2) % w  # refined centre in canvas coordinates
    centre_y = (mean_uy + cy - h / 2) % h
    # soft bounding box: the sums of the column / row profiles (max alpha per column / row)
    col_prof, row_prof = alpha.amax(1), alpha.amax(2)
    box_w = col_prof.sum(1).clamp(min=1e-6)
    box_h = row_prof.sum(1).clamp(min=1e-6)
    fill = area / (box_w * box_h)
    box_cy = (row_prof * uy).sum(1) / box_h
    asym = (mean_uy - box_cy) / box_h

    shape = torch.where((fill < cfg.triangle_fill) | (asym > cfg.triangle_asym), 2,
                        torch.where(fill >= cfg.square_fill, 1, 0))

    # background statistics: pixels away (by more than one pixel) from any foreground
    bgm = ~_dilate(fg)
    bgw = bgm.float()
    bg_n = bgw.sum((1, 2))
    bg_sum = (frames * bgw[..., None]).sum((1, 2))  # [F, 3]
    bg_sqsum = (frames * frames * bgw[..., None]).sum((1, 2))
    # differences to the next frame (the last frame's values are never used within a video)
    diff = torch.zeros(f, h, w)
    both = torch.zeros(f, h, w)
    if f > 1:
        diff[:-1] = (frames[1:] - frames[:-1]).abs().mean(-1)
        both[:-1] = (bgm[1:] & bgm[:-1]).float()
    return dict(valid=valid, cx=centre_x, cy=centre_y, area=area, fill=fill, asym=asym,
                rgb=rgb, colour=colour, shape=shape, box_w=box_w, box_h=box_h,
                bg_n=bg_n, bg_sum=bg_sum, bg_sqsum=bg_sqsum,
                next_diff=diff.sum((1, 2)), next_bg_diff=(diff * both).sum((1, 2)), next_bg_n=both.sum((1, 2)))


def _slice_feats(feats: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in feats.items()}


def _majority(values: list[int], names: Sequence[str]) -> tuple[str | None, float]:
    if not values:
        return None, 0.0
    (best, count), = Counter(values).most_common(1)
    return names[best], count / len(values)


def _aggregate(frames: torch.Tensor, feats: dict, cfg: AnalyserConfig) -> dict:
    """Video-level measurements of ``frames`` [T, H, W, 3] with their per-frame ``feats``."""
    t, h, w, _ = frames.shape
    valid = feats["valid"]
    n_valid = int(valid.sum())
    out: dict = dict(num_frames=t, frames_with_object=n_valid)
    detected = t > 0 and n_valid >= max(1, math.ceil(cfg.min_valid_frac * t))
    out["detected"] = bool(detected)

    # flicker and background (defined for any video)
    # (no background pixel at all, e.g. noise: whole frames stand in for the background)
    if t >= 2:
        out["flicker"] = float(feats["next_diff"][:-1].sum()) / ((t - 1) * h * w)
        n_bg_pairs = float(feats["next_bg_n"][:-1].sum())
        out["flicker_bg"] = (float(feats["next_bg_diff"][:-1].sum()) / n_bg_pairs if n_bg_pairs > 0
                             else out["flicker"])
    else:
        out["flicker"] = out["flicker_bg"] = 0.0
    nb = float(feats["bg_n"].sum()) if t else 0.0
    if nb > 0:
        bg_rgb = feats["bg_sum"].sum(0) / nb
        has = feats["bg_n"] > 0
        n_f = feats["bg_n"][has, None]
        var_f = (feats["bg_sqsum"][has] / n_f - (feats["bg_sum"][has] / n_f) ** 2).clamp(min=0)
        out["background_std"] = float(var_f.mean(-1).sqrt().mean())
    elif t:
        bg_rgb = frames.reshape(-1, 3).mean(0)
        out["background_std"] = float(frames.reshape(t, -1, 3).std(1, unbiased=False).mean())
    else:
        bg_rgb = torch.full((3,), float("nan"))
        out["background_std"] = float("nan")
    out["background_rgb"] = [round(float(v), 4) for v in bg_rgb]
    out["background_err"] = float((bg_rgb - _BACKGROUND).norm())

    out["colour"], out["colour_consistency"] = _majority(feats["colour"][valid].tolist(), _PALETTE_NAMES)
    out["shape"], out["shape_consistency"] = _majority(feats["shape"][valid].tolist(), SHAPES)
    if n_valid:
        area = feats["area"][valid]
        out["area"] = float(area.mean())
        out["area_cv"] = float(area.std(unbiased=False) / area.mean())
        out["fill"] = float(feats["fill"][valid].mean())
        out["asym"] = float(feats["asym"][valid].mean())
        out["rgb"] = [round(float(v), 4) for v in feats["rgb"][valid].mean(0)]
    else:
        out.update(area=0.0, area_cv=float("nan"), fill=float("nan"), asym=float("nan"), rgb=None)

    # direction: wrap-aware centre displacements between consecutive frames with an object
    pairs = valid[1:] & valid[:-1] if t >= 2 else torch.zeros(0, dtype=torch.bool)
    direction, speed, consistency = None, 0.0, 0.0
    dx_sum = dy_sum = 0.0
    n_pairs = int(pairs.sum())
    if n_pairs:
        ddx = _wrap(feats["cx"][1:] - feats["cx"][:-1], w)[pairs]
        ddy = _wrap(feats["cy"][1:] - feats["cy"][:-1], h)[pairs]
        dx_sum, dy_sum = float(ddx.sum()), float(ddy.sum())
        if abs(dx_sum) >= abs(dy_sum):
            along, steps, name = dx_sum, ddx, ("right" if dx_sum > 0 else "left")
        else:
            along, steps, name = dy_sum, ddy, ("down" if dy_sum > 0 else "up")
        speed = abs(along) / n_pairs
        if speed >= cfg.min_speed:
            direction = name
            consistency = float((torch.sign(steps) == math.copysign(1.0, along)).float().mean())
    out.update(direction=direction, speed=speed, displacement=[dx_sum, dy_sum],
               direction_consistency=consistency)
    if not detected:
        out.update(colour=None, shape=None, direction=None)
    return out


def measure(video, config: AnalyserConfig = DEFAULT_CONFIG) -> dict:
    """Caption-free measurements of one video (see the module doc)."""
    return measure_batch([video], config)[0]


def _measure_frames(frames: torch.Tensor, lengths: Sequence[int], cfg: AnalyserConfig) -> list[dict]:
    feats = _frame_features(frames, cfg)
    out, lo = [], 0
    for n in lengths:
        out.append(_aggregate(frames[lo:lo + n], _slice_feats(feats, lo, lo + n), cfg))
        lo += n
    return out


def measure_batch(videos, config: AnalyserConfig = DEFAULT_CONFIG, *, max_frames: int = 8192) -> list[dict]:
    """:func:`measure` of each video (a batch ``[N, T, 3, H, W]`` / ``[N, T, H, W, 3]``, or a list of videos
    in any accepted form), up to ``max_frames`` frames processed together."""
    if isinstance(videos, (torch.Tensor, np.ndarray)) and videos.ndim == 5:
        n, t = videos.shape[:2]
        per = max(1, max_frames // max(t, 1))
        results: list[dict] = []
        for lo in range(0, n, per):
            chunk = videos[lo:lo + per]
            frames = to_frames(chunk.reshape(-1, *chunk.shape[2:])) if t else torch.zeros(
                0, *(chunk.shape[3:] if chunk.shape[2] == 3 else chunk.shape[2:4]), 3)
            results += _measure_frames(frames, [t] * len(chunk), config)
        return results

    results = []
    pending: list[torch.Tensor] = []

    def flush():
        if pending:
            results.extend(_measure_frames(torch.cat(pending), [len(p) for p in pending], config))
            pending.clear()

    count = 0
    for video in videos:
        frames = to_frames(video)
        if pending and (count + len(frames) > max_frames or frames.shape[1:] != pending[0].shape[1:]):
            flush()
            count = 0
        pending.append(frames)
        count += len(frames)
    flush()
    return results


def compare(measured: dict, caption: str) -> dict:
    """``measured`` (from :func:`measure`) checked against ``caption``: adds the expected values and
    ``colour_ok`` / ``shape_ok`` / ``direction_ok`` / ``all_ok`` (all False when nothing was detected)."""
    shape, colour, direction = parse_caption(caption)
    out = dict(measured)
    out.update(caption=caption, expected_shape=shape, expected_colour=colour, expected_direction=direction)
    det = measured["detected"]
    out["colour_ok"] = bool(det and colour is not None and measured["colour"] == colour)
    out["shape_ok"] = bool(det and shape is not None and measured["shape"] == shape)
    out["direction_ok"] = bool(det and direction is not None and measured["direction"] == direction)
    out["all_ok"] = out["colour_ok"] and out["shape_ok"] and out["direction_ok"]
    return out


def analyse(video, caption: str, config: AnalyserConfig = DEFAULT_CONFIG) -> dict:
    """One video (``[T, 3, H, W]`` in [-1, 1] or uint8 ``[T, H, W, 3]``) against its caption.

    Keys: ``colour_ok``, ``shape_ok``, ``direction_ok``, ``all_ok``; detected ``colour``, ``shape``,
    ``direction`` (None when not found), ``speed``, ``displacement``, ``detected``, ``frames_with_object``,
    consistencies, ``area``/``area_cv``/``fill``/``asym``/``rgb`` of the object; ``flicker``, ``flicker_bg``,
    ``background_rgb``, ``background_err``, ``background_std``; the ``expected_*`` values of the caption.
    """
    return compare(measure(video, config), caption)


_MEAN_KEYS = ("flicker", "flicker_bg", "background_err", "background_std", "speed", "area_cv")


def _summary(results: list[dict]) -> dict:
    n = len(results)
    out: dict = {"n": n}
    for key in ("colour_ok", "shape_ok", "direction_ok", "all_ok", "detected"):
        name = {"colour_ok": "colour_acc", "shape_ok": "shape_acc", "direction_ok": "direction_acc",
                "all_ok": "all_acc", "detected": "detected_frac"}[key]
        out[name] = sum(bool(r[key]) for r in results) / n if n else float("nan")
    for key in _MEAN_KEYS:
        vals = [r[key] for r in results if r.get(key) is not None and not math.isnan(r[key])]
        out[key] = sum(vals) / len(vals) if vals else float("nan")
    return out


def score(videos, captions: Sequence[str], config: AnalyserConfig = DEFAULT_CONFIG) -> dict:
    """Accuracies over videos and their captions: ``colour_acc``, ``shape_acc``, ``direction_acc``,
    ``all_acc`` (all three right), ``detected_frac``, and the means of ``flicker``, ``flicker_bg``,
    ``background_err``, ``background_std``, ``speed``, ``area_cv``; ``n``."""
    captions = list(captions)
    measured = measure_batch(videos, config)
    if len(measured) != len(captions):
        raise ValueError(f"{len(measured)} videos but {len(captions)} captions")
    return _summary([compare(m, c) for m, c in zip(measured, captions)])


def drift(video, caption: str, window: int, config: AnalyserConfig = DEFAULT_CONFIG) -> list[dict]:
    """:func:`analyse` over consecutive windows of ``window`` frames (the last one may be shorter); each dict
    also has ``start`` and ``end`` (frame indices, end exclusive)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    frames = to_frames(video)
    feats = _frame_features(frames, config)
    out = []
    for lo in range(0, len(frames), window):
        hi = min(lo + window, len(frames))
        res = compare(_aggregate(frames[lo:hi], _slice_feats(feats, lo, hi), config), caption)
        res.update(start=lo, end=hi)
        out.append(res)
    return out


def track(video, config: AnalyserConfig = DEFAULT_CONFIG) -> dict:
    """The object frame by frame: ``found`` (whether each frame has one, step 3 of the module doc) and ``steps``
    (between consecutive frames, in pixels: the wrap-aware distance between their centres, step 6; None where
    either frame has no object). A prompt switch that keeps the video continuous steps at about the world's speed
    across it; a hard cut jumps; a dissolve loses the object for some frames."""
    frames = to_frames(video)
    feats = _frame_features(frames, config)
    h, w = frames.shape[1:3]
    dx, dy = _wrap(feats["cx"].diff(), w), _wrap(feats["cy"].diff(), h)
    found = feats["valid"].tolist()
    return dict(found=found, steps=[float(d) if a and b else None
                                    for d, a, b in zip(torch.hypot(dx, dy).tolist(), found[:-1], found[1:])])
