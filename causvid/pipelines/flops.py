"""Analytic FLOP count of a DiT rollout: the TFLOP, TFLOP/s and MFU figures of scripts/benchmark_inference.py.

Counting rules: a linear layer costs 2 FLOPs per multiply-accumulate, attention 4 x Lq x Lk x dim (scores and
values); norms, RoPE, softmax and other elementwise work are not counted. A rollout is counted call by call
(`rollout_calls`), with the true key lengths:

* the KV-cached modes (CACHED_MODES) make, per block, one call per denoising step plus the cache refresh pass,
  on the block's frames against the cached frames so far (at most the local window);
* the others (nocache, SkyReels-V2) run the whole prefix at every denoising step, with dense masked attention:
  all Lq x Lk scores are computed;
* the prompt's text MLP and cross-attention K/V count on the first call with the cross-attention cache, on
  every call without.

`s` is the benchmark's settings: steps, leading_steps, local_attn_size, max_blocks, frames, height, width
and peak_tflops are read from it.
"""

CACHED_MODES = ("cached", "framewise", "chunkwise")  # the benchmark modes that run the KV-cached rollout


def forward_flops(cfg, q_frames: int, k_frames: int, frame_tokens: int, text: bool, batch: int = 1) -> dict:
    """FLOPs of one DiT forward on q_frames frames attending to k_frames frames of keys. text: the text MLP and
    the cross-attention K/V of the prompt are computed in this call (not taken from a cache)."""
    d, ffn, layers, tl = cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.text_len
    patch = cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    lq, lk = q_frames * frame_tokens, k_frames * frame_tokens
    linear = layers * 2 * lq * (4 * d * d + 2 * d * d + 2 * d * ffn)  # self q,k,v,o + cross q,o + FFN
    linear += 2 * lq * cfg.in_dim * patch * d + 2 * lq * d * patch * cfg.out_dim  # patch embedding, head
    linear += 2 * q_frames * (cfg.freq_dim * d + d * d + d * 6 * d)  # time embedding + projection
    self_attn = layers * 4 * lq * lk * d
    cross_attn = layers * 4 * lq * tl * d
    text_flops = (2 * tl * (cfg.text_dim * d + d * d) + layers * 2 * 2 * tl * d * d) if text else 0
    out = dict(linear=linear, self_attn=self_attn, cross_attn=cross_attn, text=text_flops)
    out = {k: v * batch for k, v in out.items()}
    out["total"] = sum(out.values())
    return out


def rollout_calls(mode: str, s, block: int, frames: int, cross_cache: bool) -> list:
    """(q_frames, k_frames, text computed) of every DiT forward a rollout makes, with the true key lengths."""
    calls = []
    capacity = frames if s.local_attn_size == -1 else min(s.local_attn_size, frames)
    n_blocks = frames // block
    if s.max_blocks:
        n_blocks = min(n_blocks, s.max_blocks)
    for b in range(n_blocks):
        end = (b + 1) * block
        steps = len(s.leading_steps[b]) if b < len(s.leading_steps or ()) else len(s.steps)
        if mode in CACHED_MODES:
            for _ in range(steps + 1):  # denoising steps + the cache refresh pass
                calls.append((block, min(end, capacity), not cross_cache or not calls))
        else:  # nocache / skyreels: the whole prefix each step (dense masked attention: all Lq x Lk computed)
            calls.extend((end, end, True) for _ in range(steps))
    return calls


def rollout_flops(model_cfg, mode: str, s, block: int, cross_cache: bool) -> dict:
    frame_tokens = (s.height // model_cfg.patch_size[1]) * (s.width // model_cfg.patch_size[2])
    total = {}
    calls = rollout_calls(mode, s, block, s.frames, cross_cache)
    for q, k, text in calls:
        for key, v in forward_flops(model_cfg, q, k, frame_tokens, text).items():
            total[key] = total.get(key, 0) + v
    total["calls"] = len(calls)
    return total


def flop_figures(model_cfg, mode: str, s, block: int, cross_cache: bool, seconds: float) -> dict:
    """The rollout's analytic TFLOP, the TFLOP/s it reached in `seconds`, and MFU against s.peak_tflops."""
    flops = rollout_flops(model_cfg, mode, s, block, cross_cache)
    achieved = flops["total"] / seconds / 1e12
    return dict(tflop_per_video=flops["total"] / 1e12, calls=flops["calls"],
                breakdown_tflop={k: v / 1e12 for k, v in flops.items() if k not in ("total", "calls")},
                achieved_tflops=achieved, mfu=achieved / s.peak_tflops if s.peak_tflops else None)
