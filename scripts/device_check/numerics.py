"""Parts `numerics.*`: bf16 vs fp32 cached rollout, FlexAttention vs SDPA on the block-causal mask, compiled /
CUDA graphs / flash-attn rollouts vs eager: max and relative differences."""
from __future__ import annotations

import copy
import time
from dataclasses import replace

import torch

from causvid.models.wan.attention import set_attention_backend
from scripts import benchmark_inference as bench
from scripts.device_check.check import Check
from scripts.device_check.runner import SkipPart


def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    """a against the reference b: max |a - b|, relative error ||a - b|| / ||b||, and per frame."""
    a, b = a.float(), b.float()
    per_frame = ((a - b).flatten(2).norm(dim=2) / b.flatten(2).norm(dim=2).clamp_min(1e-30))[0]
    return dict(max_abs_diff=(a - b).abs().max().item(), rel_err=((a - b).norm() / b.norm().clamp_min(1e-30)).item(),
                rel_err_per_frame=[round(x, 6) for x in per_frame.tolist()], ref_max_abs=b.abs().max().item())


def part_bf16_vs_fp32(c: Check) -> dict:
    """The same weights and noise, cached rollout in fp32 and in bf16 (the GPU default); also one forward."""
    s = c.settings
    block = s.num_frame_per_block
    s32 = replace(s, dtype="float32")
    m32 = c.model(dtype="float32")
    m16 = copy.deepcopy(m32).to(torch.bfloat16)
    noise, context = bench.random_inputs(m32.config, s32, c.device, torch.float32)
    with torch.no_grad():
        t = torch.full((1, block), float(s.steps[0]), device=c.device)
        one32 = m32(noise[:, :block], t, context)
        one16 = m16(noise[:, :block].bfloat16(), t, context.bfloat16())
        lat32 = torch.cat([z for _, z in bench.ours(m32, noise, context, s32, block, True)], dim=1)
        lat16 = torch.cat([z for _, z in bench.ours(m16, noise.bfloat16(), context.bfloat16(), s, block, True)], 1)
    return dict(rollout=_diff(lat16, lat32), one_forward=_diff(one16, one32), blocks=lat32.shape[1] // block,
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32)


def part_flex_vs_sdpa(c: Check) -> dict:
    """One forward of the whole video under the block-causal mask: FlexAttention (compiled on CUDA, block
    sparse) against SDPA with the dense boolean mask; outputs and seconds."""
    s = c.settings
    model = c.model()
    noise, context = bench.random_inputs(model.config, s, c.device, c.dtype)
    t = torch.full(noise.shape[:2], 500.0, device=c.device)
    outs, seconds = {}, {}
    with torch.no_grad():
        for backend in ("sdpa", "flex"):
            set_attention_backend(backend)

            def forward():
                return model(noise, t, context, causal=True, num_frame_per_block=s.num_frame_per_block)
            forward()  # warm-up (FlexAttention compiles here on CUDA)
            bench._sync(c.device)
            t0 = time.perf_counter()
            outs[backend] = forward()
            bench._sync(c.device)
            seconds[backend] = time.perf_counter() - t0
    set_attention_backend("sdpa")
    return dict(**_diff(outs["flex"], outs["sdpa"]), seconds=seconds,
                mask=f"block-causal, {s.frames} frames in blocks of {s.num_frame_per_block}",
                flex_compiled=c.device.type == "cuda")


def part_latent_diff(c: Check, part: str, reference: str = "inference.eager_sdpa") -> dict:
    """The rollout latents of an inference part against the eager one (same weights and noise)."""
    missing = [p for p in (part, reference) if p not in c.latents]
    if missing:
        status = [(c.results["parts"].get(p) or {}).get("status", "not run") for p in missing]
        raise SkipPart("needs the latents of " + ", ".join(f"{p} (status {st})" for p, st in zip(missing, status))
                       + " from this run")
    out = _diff(c.latents[part], c.latents[reference])
    ref = c.ok_result("numerics.bf16_vs_fp32")
    out.update(compared=f"{part} vs {reference}",
               bf16_vs_fp32_rel_err=ref["rollout"]["rel_err"] if ref else None)
    return out
