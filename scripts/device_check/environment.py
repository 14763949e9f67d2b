"""Part `environment`: device, torch / CUDA / cuDNN / NCCL versions, optional kernels, peak TFLOP/s for MFU."""
from __future__ import annotations

import importlib
import importlib.util

import torch

from causvid.models.wan.attention import flash_attn_func, flex_attention
from scripts import benchmark_inference as bench
from scripts.device_check.check import Check


def part_environment(c: Check) -> dict:
    env = bench.environment(c.device)
    env.update(device=c.device_name, torch_cuda=torch.version.cuda, peak_tflops=c.peak, peak_source=c.peak_source,
               tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    if c.device.type == "cuda":
        props = torch.cuda.get_device_properties(c.device)
        env.update(capability=f"{props.major}.{props.minor}", memory_bytes=props.total_memory,
                   multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
        try:
            nccl = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
        except Exception as err:  # a build without NCCL
            env["nccl"] = f"unavailable: {type(err).__name__}: {err}"
    kernels = {name: _version(name) for name in ("flash_attn", "triton", "diffusers", "xformers")}
    kernels.update(flex_attention=flex_attention is not None, flash_attn_usable=flash_attn_func is not None,
                   sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
                   sdpa_cudnn=torch.backends.cuda.cudnn_sdp_enabled() if hasattr(torch.backends.cuda,
                                                                                 "cudnn_sdp_enabled") else None)
    env["optional_kernels"] = kernels
    return env


def _version(module: str):
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as err:  # installed but broken (e.g. a flash-attn built for another torch)
        return f"import fails: {type(err).__name__}: {err}"
