"""Parts `memory.dmd_1.3b` and `memory.dmd_14b`: one Self-Forcing DMD generator and critic step at the real widths
and 480x832 x 21 latent frames, 2 blocks, bf16 weights: the bytes held for backward (`HeldForBackward`) beside
what CUDA's allocator holds after the forward and at its peak, the step's time, and the CPU fit's prediction
(docs/benchmarks/memory_cpu_*.json) for the same case. The 14B part is the 14B training step's GPU check: its
per-block figures are what the multi-GPU plan (`scripts/benchmark_memory.py --plan`) extrapolates."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from causvid.config import load_config
from causvid.training.memory import HeldForBackward, stage_batch, stage_models
from causvid.training.stages import make_stage
from scripts import benchmark_inference as bench
from scripts.device_check.check import PRESET_13B, PRESET_14B, SMOKE_14B_PRESET, SMOKE_PRESET, Check

REPO = Path(__file__).resolve().parents[2]
LAYERS = 2


def fitted_prediction(preset_dim: int, role: str, tokens: int, bf16: bool):
    """The CPU fit of the Self-Forcing DMD step's bytes (bf16 or fp32 row) at LAYERS blocks and `tokens`, scaled
    to the width measured here; None without the committed figures."""
    for path in sorted((REPO / "docs" / "benchmarks").glob("memory_cpu_*.json")):
        for row in json.loads(path.read_text())["rows"]:
            if (row["stage"], row["role"], row["dtype"]) == ("self_forcing_dmd", role, "bf16" if bf16 else "fp32"):
                scale = preset_dim / row["dim"]
                return scale * (row["a"] + row["b"] * tokens + LAYERS * (row["c"] + row["d"] * tokens))
    return None


def part_memory(c: Check, size: str) -> dict:
    preset = {"1.3b": SMOKE_PRESET if c.smoke else PRESET_13B, "14b": SMOKE_14B_PRESET if c.smoke else PRESET_14B}[size]
    folder = REPO / "configs" / ("tiny" if c.smoke else "")
    h, w = (4, 4) if c.smoke else (60, 104)
    frames = 6 if c.smoke else 21
    cfg = load_config(folder / "self_forcing_dmd.yaml", overrides=[f"image_or_video_shape=[1,{frames},16,{h},{w}]"])
    stage = make_stage(cfg)
    dtype = torch.bfloat16 if c.device.type == "cuda" else torch.float32
    models = stage_models(stage, preset, LAYERS, dtype)
    for name in ("generator", "fake_score", "real_score"):
        setattr(models, name, getattr(models, name).to(c.device))
    batch = stage_batch(stage, models, [frames, 16, h, w])
    batch = {k: v.to(c.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    tokens = frames * (h // 2) * (w // 2)
    dim = models.generator.config.dim
    out = dict(preset=preset, blocks=LAYERS, dtype=str(dtype).replace("torch.", ""), tokens=tokens,
               latent_shape=[1, frames, 16, h, w], roles={})
    cuda = c.device.type == "cuda"
    for role in ("generator", "critic"):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.perf_counter()
        with HeldForBackward(models.generator, models.fake_score, models.real_score) as held:
            loss = (stage.critic_loss if role == "critic" else stage.generator_loss)(models, batch, 0)
        after_forward = torch.cuda.memory_allocated() if cuda else None
        loss.backward()
        bench._sync(c.device)
        seconds = time.perf_counter() - t0
        predicted = fitted_prediction(dim, role, tokens, dtype == torch.bfloat16)
        out["roles"][role] = dict(
            held_bytes=held.bytes, predicted_bytes=predicted,
            held_over_predicted=held.bytes / predicted if predicted else None,
            allocated_after_forward=None if after_forward is None else after_forward - before,
            peak_bytes=torch.cuda.max_memory_allocated() - before if cuda else None, seconds=seconds)
        for m in (models.generator, models.fake_score):
            m.zero_grad(set_to_none=True)
        del loss
        c.log(f"  memory.dmd_{size} {role}: held {held.bytes / 2 ** 30:.2f} GiB"
              + (f" (fit {predicted / 2 ** 30:.2f})" if predicted else "") + f", {seconds:.2f} s")
    return out
