"""One prepared device check: every GPU figure and GPU-only code path of the project in one command.

Random weights in the real shapes (nothing is downloaded). The parts run in this order; each is timed and
written to the JSON as soon as it finishes (tmp file + rename, so the file is always whole); a part that fails
records its error and the rest go on; when --budget_s runs out the running part is stopped and the rest are
recorded as skipped.

  environment              device, torch / CUDA / cuDNN / NCCL versions, optional kernels, peak TFLOP/s for MFU
  inference.*              Wan2.1-T2V-1.3B, 480x832 (21 x 60 x 104 latents), chunkwise, 4 steps + 1 refresh per
                           block, bf16, through scripts/benchmark_inference.py's driver: FPS without and with
                           decode by the real-size Wan VAE, first-block latency (latents, pixels), peak memory,
                           analytic FLOPs and MFU. eager_sdpa, then one speed switch each (causvid/pipelines/
                           speed.py): flash_attn, compile, cuda_graphs, overlap_decode; then framewise; then
                           prompt_switch: the cached window re-written under a new prompt, then the next block
  numerics.*               bf16 vs fp32 cached rollout (relative error), FlexAttention vs SDPA on the block-causal
                           mask, compiled / CUDA graphs / flash-attn vs eager rollouts: max differences
  training.*               one step of DMD (generator + critic + frozen teacher, all 1.3B-sized), causal ODE and
                           teacher-forcing diffusion through the project's Trainer: bf16 autocast, activation
                           checkpointing, FSDP2 at world size 1; seconds per step and peak memory
  wan14b.block_forward     Wan2.1-T2V-14B, one chunkwise block (4 steps + refresh) in bf16 at 480x832

    python scripts/device_check.py --out device_check.json [--budget_s 480]
    python scripts/device_check.py --smoke --out /tmp/device_check.json    # every part at toy size, on CPU

`--smoke` runs every part with the tiny preset and configs on the CPU (GPU-only parts are recorded as skipped,
with the reason), so a test keeps the script from rotting. `--parts` picks parts by name or prefix; a rerun
with `--keep_done` keeps the parts already measured in --out. `--fail_part NAME` makes a part fail (to test
that the others are still written). `main(argv)` returns the JSON's contents.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:  # benchmark_inference beside this file, also when the tests import this one
    sys.path.insert(0, str(HERE))

import benchmark_inference as bench  # noqa: E402
from causvid.config import load_config  # noqa: E402
from causvid.models.prompt_encoder import CachedPromptEncoder  # noqa: E402
from causvid.models.wan import get_preset  # noqa: E402
from causvid.models.wan.attention import flash_attn_func, flex_attention, set_attention_backend  # noqa: E402
from causvid.pipelines.rollout import causal_rollout, few_step_sampler  # noqa: E402
from causvid.pipelines.speed import SpeedOptions, apply_speed_options  # noqa: E402

PRESET_13B, PRESET_14B = "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"
SMOKE_PRESET, SMOKE_14B_PRESET = "tiny", "tiny-4layer"  # the smoke stand-ins of the two sizes

# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from NVIDIA's data sheets; matched in the device name.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("L40", 181.0), ("A10G", 70.0), ("L4", 121.0), ("RTX 4090", 165.0))


class SkipPart(Exception):
    """Raised by a part that cannot run here; the reason is recorded."""


class BudgetExceeded(BaseException):
    """Raised in the main thread when --budget_s runs out (a BaseException: no `except Exception` swallows it)."""


def peak_tflops(device_name: str):
    """(TFLOP/s, source) of the device's dense bf16 peak, or (None, why not)."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value, f"data sheet, dense bf16, matched {key!r} in {device_name!r}"
    return None, f"no peak known for {device_name!r}: pass --peak_tflops"


class RandomPromptEncoder(CachedPromptEncoder):
    """Stands in for umT5-XXL (5.7B parameters, not loaded here): each prompt a fixed random embedding, one row
    per word plus one, keyed by the prompt's CRC32."""

    def __init__(self, text_len: int, dim: int):
        super().__init__(text_len)
        self.dim, self.device, self.dtype = dim, torch.device("cpu"), torch.float32

    def _key(self, prompt: str):
        return prompt

    def _embed(self, keys: list, prompts: list) -> list:
        out = []
        for prompt in prompts:
            gen = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            out.append(torch.randn(min(len(prompt.split()) + 1, self.text_len), self.dim, generator=gen))
        return out


# ----------------------------------------------------------------------------------------------------------------
# Arguments and the shared state of a run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the JSON file (rewritten after every part)")
    p.add_argument("--budget_s", type=float, default=480.0,
                   help="stop after this many seconds: the running part is stopped, the rest recorded as skipped")
    p.add_argument("--smoke", action="store_true", help="every part at toy size on the CPU")
    p.add_argument("--parts", help="comma-separated part names or prefixes (e.g. inference,wan14b); default all")
    p.add_argument("--keep_done", action="store_true", help="keep the parts already 'ok' in --out and skip them")
    p.add_argument("--repeats", type=int, help="timed runs per inference part (default 2; smoke 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per inference part (compile happens here)")
    p.add_argument("--train_steps", type=int, help="steps per training part, the last one reported (default 2; "
                                                   "smoke 1): the first includes the allocator's and kernels' warm-up")
    p.add_argument("--peak_tflops", type=float, help="the device's peak TFLOP/s for MFU (default: from its name)")
    p.add_argument("--compile_backend", help="torch.compile backend (default inductor; smoke aot_eager)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU intra-op threads); default: torch's")
    p.add_argument("--workdir", help="where the training part writes its random model and data (default: a temp "
                                     "folder, removed at the end)")
    p.add_argument("--fail_part", default="", help="debug: comma-separated parts made to fail (tests the recording)")
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats {args.repeats}: give at least 1")
    if args.train_steps is not None and args.train_steps < 1:
        p.error(f"--train_steps {args.train_steps}: give at least 1")
    return args


class Check:
    """What the parts share: settings, inputs, the VAE, the latents of the inference parts (for numerics)."""

    def __init__(self, args):
        self.args, self.smoke = args, args.smoke
        if not self.smoke and not torch.cuda.is_available():
            raise SystemExit("device_check: no CUDA device here; run with --smoke for the CPU check")
        self.device = torch.device("cpu" if self.smoke else "cuda")
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.peak, self.peak_source = ((args.peak_tflops, "--peak_tflops") if args.peak_tflops
                                       else peak_tflops(self.device_name) if self.device.type == "cuda"
                                       else (None, "CPU: no peak"))
        repeats = args.repeats or (1 if self.smoke else 2)
        flags = ["--config", bench.DEFAULT_TINY_CONFIG if self.smoke else bench.DEFAULT_CONFIG,
                 "--preset", SMOKE_PRESET if self.smoke else PRESET_13B, "--device", self.device.type,
                 "--dtype", "bfloat16", "--vae", "tiny" if self.smoke else "real",
                 "--repeats", str(repeats), "--warmup", str(args.warmup)]
        self.settings = bench.resolve_settings(bench.parse_args(flags + (
            ["--peak_tflops", str(self.peak)] if self.peak else [])))
        self.dtype = getattr(torch, self.settings.dtype)
        self.compile_backend = args.compile_backend or ("aot_eager" if self.smoke else "inductor")
        self.train_steps = args.train_steps or (1 if self.smoke else 2)
        self.latents = {}  # part name -> the rollout's clean latents (float32, CPU)
        self.results = None  # the JSON being written (set by run_parts)
        self._vae, self.vae_error = None, None
        self.compiled = False  # a part compiled something: drop dynamo's caches after it
        self._workdir = None
        self._training_data = None

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def vae(self):
        """The decoder of the with-VAE figures; None (and the reason in vae_error) if it cannot be built, so the
        inference parts still give their other figures."""
        if self._vae is None and self.vae_error is None:
            try:
                self._vae = bench.build_vae(self.settings.vae, self.settings.device, self.dtype)
            except Exception as err:
                self.vae_error = f"{type(err).__name__}: {err}"
        return self._vae

    def model(self, **changes):
        """A fresh random DiT (the same weights for the same settings), eager, attention 'sdpa'."""
        set_attention_backend("sdpa")
        return bench.build_dit(replace(self.settings, **changes))

    def workdir(self) -> Path:
        if self._workdir is None:
            if self.args.workdir:
                self._workdir = Path(self.args.workdir)
                self._workdir.mkdir(parents=True, exist_ok=True)
            else:
                self._workdir = Path(tempfile.mkdtemp(prefix="device_check_"))
        return self._workdir

    def cleanup(self) -> None:
        if self._workdir is not None and not self.args.workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def free(self) -> None:
        """Between parts: drop compiled graphs and CUDA graph pools (they hold their models) and cached device
        memory. (FlexAttention's compiled kernel is kept unless a part compiled blocks.)"""
        if self.compiled:
            torch._dynamo.reset()
            self.compiled = False
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        set_attention_backend("auto")

    def ok_result(self, name: str):
        part = (self.results or {}).get("parts", {}).get(name, {})
        return part.get("result") if part.get("status") == "ok" else None


# ----------------------------------------------------------------------------------------------------------------
# Parts: environment


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


# ----------------------------------------------------------------------------------------------------------------
# Parts: inference (the benchmark's driver: bench.ours + bench.bench_mode)


def need_cuda(c: Check, what: str) -> None:
    if c.device.type != "cuda":
        raise SkipPart(f"{what} needs a CUDA device")


def part_inference(c: Check, key: str, mode: str = "cached", need: Callable = None, **switches) -> dict:
    if need is not None:
        need(c)
    s = c.settings
    opts = SpeedOptions(**{"attention_backend": "sdpa", **switches})
    if opts.compile or opts.cuda_graphs:
        opts.compile_backend = c.compile_backend
        c.compiled = True
    model = c.model()
    apply_speed_options(model, opts)
    block = bench.mode_block(mode, s)
    noise, context = bench.random_inputs(model.config, s, c.device, c.dtype)
    make = partial(bench.ours, model, noise, context, s, block, True)
    with torch.no_grad():
        out, latents = bench.bench_mode(mode, make, s, c.device, c.vae(), opts.overlap_decode, s.frames, c.log)
    out["flops"] = bench.flop_figures(model.config, mode, s, block, opts.cross_cache, out["total_s"]["median"])
    out.update(num_frame_per_block=block, options=asdict(opts), dtype=s.dtype, preset=s.preset,
               latent_shape=list(noise.shape), vae=s.vae if c.vae() is not None else f"none: {c.vae_error}")
    c.latents[key] = latents.float().cpu()
    return out


def need_flash(c: Check) -> None:
    need_cuda(c, "flash-attn")
    if flash_attn_func is None:
        raise SkipPart("flash-attn is not importable here (pip install flash-attn)")


def part_prompt_switch(c: Check) -> dict:
    """After a video, switch the prompt: re-write the cached frames' K/V under the new prompt (one cached
    forward per block over the window, at t = 0, plus the new prompt's cross-attention K/V), then make the next
    block. Through causal_rollout's `initial_latent`, which does exactly that write before generating."""
    s = c.settings
    block = s.num_frame_per_block
    model = c.model()
    noise, context = bench.random_inputs(model.config, s, c.device, c.dtype)
    window = c.latents.get("inference.eager_sdpa")
    with torch.no_grad():
        if window is None:  # the eager part did not run: make the video first (untimed)
            window = torch.cat([z for _, z in bench.ours(model, noise, context, s, block, True)], dim=1)
        window = window.to(c.device, c.dtype)
        gen = torch.Generator().manual_seed(s.seed + 7)
        new_context = torch.randn(context.shape, generator=gen).to(c.device, c.dtype)
        next_noise = torch.randn((1, block) + tuple(noise.shape[2:]), generator=gen).to(c.device, c.dtype)
        all_noise = torch.cat([window, next_noise], dim=1)  # the window part is not read (initial_latent is)

        def make():
            sampler = few_step_sampler(s.steps, s.first_block_steps, generator=torch.Generator().manual_seed(s.seed))
            return causal_rollout(model, all_noise, new_context, num_frame_per_block=block, sampler=sampler,
                                  context_noise=s.context_noise, local_attn_size=s.local_attn_size,
                                  sink_size=s.sink_size, initial_latent=window,
                                  generator=torch.Generator().manual_seed(s.seed + 1))

        for _ in range(s.warmup):
            bench.timed_latents(make, c.device)
        memory = bench.PeakMemory(c.device)
        runs = []
        for r in range(s.repeats):
            with memory if r == 0 else contextlib.nullcontext():
                runs.append(bench.timed_latents(make, c.device))
    n_window = window.shape[1] // block
    recache = [sum(r["block_s"][:n_window]) for r in runs]
    nxt = [r["block_s"][n_window] for r in runs]
    eager = c.ok_result("inference.eager_sdpa")
    return dict(
        recache_s=bench.stats(recache), next_block_s=bench.stats(nxt),
        switch_to_next_block_s=bench.stats(a + b for a, b in zip(recache, nxt)),
        window_frames=window.shape[1], recache_forwards=n_window, peak_memory=memory.result(),
        eager_first_block_s=eager["first_block_s"]["median"] if eager else None,
        method=("causal_rollout(initial_latent=the window's clean latents, context=the new prompt): a fresh KV "
                "cache, the window written block by block by the model's cached forward at t = 0 (one forward per "
                "block, the rollout's refresh pass; the first also embeds the new prompt), then the next block "
                "generated: the passes StreamSession.set_prompt's re-cache runs on a global cache"))


# ----------------------------------------------------------------------------------------------------------------
# Parts: numerics


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


# ----------------------------------------------------------------------------------------------------------------
# Parts: training (the project's Trainer, on a random model folder and random data in the real shapes)

TRAINING = {  # part -> (config, dataset)
    "training.dmd": ("causal_forcing_dmd_chunkwise", "prompts.txt"),
    "training.causal_ode": ("causal_ode_chunkwise", "ode6"),
    "training.teacher_forcing": ("ar_diffusion_tf_chunkwise", "latents"),
}


def training_data(c: Check) -> Path:
    """Once per run: a random DiT in Wan's folder layout (bf16 on disk; the trainer loads it in fp32) and one
    row of each dataset at the inference shape."""
    if c._training_data is None:
        from causvid.tiny_wan import write_training_datasets
        from causvid.tiny_wan.dit import write_wan_dit

        root = c.workdir() / "training"
        s = c.settings
        write_wan_dit(c.model(dtype="float32").cpu(), root / "wan", dtype=torch.bfloat16)
        write_training_datasets(root, frames=s.frames, height=s.height, width=s.width, rows=1, seed=s.seed)
        c._training_data = root
    return c._training_data


def part_training(c: Check, config: str, dataset: str) -> dict:
    from causvid.training.trainer import Trainer

    root = training_data(c)
    set_attention_backend("auto")  # the trainer's own choice: FlexAttention for the masks on CUDA
    folder = REPO / "configs" / ("tiny" if c.smoke else "")
    overrides = {"wan_model_path": root / "wan", "real_model_path": root / "wan", "data_path": root / dataset,
                 "generator_ckpt": "null", "mixed_precision": "true", "gradient_checkpointing": "true",
                 "batch_size": 1, "grad_accum": 1, "log_iters": 10 ** 9}
    cfg = load_config(folder / f"{config}.yaml", overrides=[f"{k}={v}" for k, v in overrides.items()])
    preset_cfg = get_preset(c.settings.preset)
    trainer = Trainer(cfg, c.workdir() / "logs" / config, no_save=True, no_visualize=True, disable_wandb=True,
                      text_encoder=RandomPromptEncoder(preset_cfg.text_len, preset_cfg.text_dim))
    steps = []
    try:
        for _ in range(c.train_steps):
            trainer.step = 0  # every step a step 0: DMD updates the generator, then the critic
            memory = bench.PeakMemory(c.device)
            with memory:
                t0 = time.perf_counter()
                losses = trainer.train_step()
                bench._sync(c.device)
                seconds = time.perf_counter() - t0
            steps.append(dict(seconds=seconds, losses=losses, peak_memory=memory.result()))
            c.log(f"  {config}: step {len(steps)}/{c.train_steps} {seconds:.2f} s, "
                  f"peak {memory.peak / 2 ** 30:.2f} GiB")
        world = trainer.dist.world_size
    finally:
        del trainer
        gc.collect()
    last = steps[-1]
    return dict(config=str(folder / f"{config}.yaml"), seconds_per_step=last["seconds"],
                peak_memory=last["peak_memory"], first_step_s=steps[0]["seconds"], steps=steps,
                bf16_autocast=c.device.type == "cuda", gradient_checkpointing=True, fsdp2_world_size=world,
                attention_backend="auto",
                models=("generator, critic, frozen teacher" if config == TRAINING["training.dmd"][0] else "generator")
                + f": {c.settings.preset}, fp32 master weights",
                latent_shape=[1, c.settings.frames, 16, c.settings.height, c.settings.width],
                mfu=None, mfu_note="no FLOP model of the training steps (benchmark_inference counts rollouts)")


# ----------------------------------------------------------------------------------------------------------------
# Parts: 14B


def part_wan14b(c: Check) -> dict:
    """One chunkwise block (its denoising steps + the cache refresh) of the 14B model in bf16, cache sized for
    the whole video: latency, memory and MFU, to size the multi-GPU plan."""
    s = replace(c.settings, preset=SMOKE_14B_PRESET if c.smoke else PRESET_14B, max_blocks=1)
    model = c.model(preset=s.preset)
    noise, context = bench.random_inputs(model.config, s, c.device, c.dtype)
    block = s.num_frame_per_block
    make = partial(bench.ours, model, noise, context, s, block, True)
    memory = bench.PeakMemory(c.device)
    with torch.no_grad():
        for _ in range(s.warmup):
            bench.timed_latents(make, c.device)
        runs = []
        for r in range(s.repeats):
            with memory if r == 0 else contextlib.nullcontext():
                runs.append(bench.timed_latents(make, c.device))
    block_s = bench.stats(r["first_s"] for r in runs)
    flops = bench.flop_figures(model.config, "cached", s, block, True, block_s["median"])
    return dict(preset=s.preset, params=sum(p.numel() for p in model.parameters()), dtype=s.dtype,
                latent_shape=[1, block] + list(noise.shape[2:]), cache_frames=s.frames, block_s=block_s,
                forward_s=block_s["median"] / flops["calls"], forwards=flops["calls"], peak_memory=memory.result(),
                flops=flops)


# ----------------------------------------------------------------------------------------------------------------
# The parts in order, and the runner


@dataclass
class Part:
    name: str
    fn: Callable  # fn(check) -> dict; raises SkipPart to be skipped


def default_parts() -> list:
    inference = [
        ("eager_sdpa", {}), ("flash_attn", dict(need=need_flash, attention_backend="flash")),
        ("compile", dict(compile=True)),
        ("cuda_graphs", dict(need=partial(need_cuda, what="CUDA graphs"), cuda_graphs=True)),
        ("overlap_decode", dict(overlap_decode=True)), ("framewise", dict(mode="framewise")),
    ]
    parts = [Part("environment", part_environment)]
    parts += [Part(f"inference.{n}", partial(part_inference, key=f"inference.{n}", **kw)) for n, kw in inference]
    parts += [Part("inference.prompt_switch", part_prompt_switch),
              Part("numerics.bf16_vs_fp32", part_bf16_vs_fp32),
              Part("numerics.flex_vs_sdpa", part_flex_vs_sdpa)]
    parts += [Part(f"numerics.{n}_vs_eager", partial(part_latent_diff, part=f"inference.{p}"))
              for n, p in (("compiled", "compile"), ("cuda_graphs", "cuda_graphs"), ("flash_attn", "flash_attn"))]
    parts += [Part(name, partial(part_training, config=config, dataset=dataset))
              for name, (config, dataset) in TRAINING.items()]
    parts.append(Part("wan14b.block_forward", part_wan14b))
    return parts


def write_json(path: Path, data: dict) -> None:
    """Atomically: a reader (or a run killed mid-write) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _selected(name: str, selection) -> bool:
    return selection is None or any(name == s or name.startswith(s.rstrip(".") + ".") for s in selection)


def run_parts(parts: list, check: Check, out: Path, meta: dict, budget_s: float, selection=None,
              fail=(), keep: dict = None) -> dict:
    """Run the parts in order, rewriting `out` after each. Every part's key is there from the start
    ("pending"), then "ok" (result), "error" (error, traceback), or "skipped" (reason)."""
    results = dict(meta=dict(meta, state="running"), parts={p.name: {"status": "pending"} for p in parts})
    check.results = results
    start = time.perf_counter()
    write_json(out, results)
    use_alarm = budget_s > 0 and threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")

    def on_alarm(*_):
        raise BudgetExceeded(f"the budget of {budget_s:g} s ran out")

    previous = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    stopped = None
    try:
        for part in parts:
            record = results["parts"][part.name]
            remaining = budget_s - (time.perf_counter() - start)
            if keep and (keep.get(part.name) or {}).get("status") == "ok":
                results["parts"][part.name] = dict(keep[part.name], kept_from_earlier_run=True)
            elif stopped is not None or remaining <= 0:
                stopped = stopped or f"the budget of {budget_s:g} s ran out"
                record.update(status="skipped", reason=f"not started: {stopped}")
            elif not _selected(part.name, selection):
                record.update(status="skipped", reason="not selected (--parts)")
            else:
                check.log(f"== {part.name}")
                t0 = time.perf_counter()
                try:
                    try:
                        if use_alarm:
                            signal.setitimer(signal.ITIMER_REAL, remaining)
                        if part.name in fail:
                            raise RuntimeError(f"forced failure of {part.name} (--fail_part)")
                        result = part.fn(check)
                    finally:  # disarmed before any handler below runs
                        if use_alarm:
                            signal.setitimer(signal.ITIMER_REAL, 0)
                    record.update(status="ok", result=result)
                except SkipPart as why:
                    record.update(status="skipped", reason=str(why))
                except BudgetExceeded as why:
                    stopped = str(why)
                    record.update(status="error", error=f"stopped: {why}")
                except Exception as err:  # recorded; the next part runs
                    record.update(status="error", error=f"{type(err).__name__}: {err}",
                                  traceback=traceback.format_exc().splitlines()[-12:])
                record["seconds"] = time.perf_counter() - t0
                check.free()
                check.log(f"   {part.name}: {record['status']} in {record['seconds']:.1f} s"
                          + (f" ({record.get('error') or record.get('reason')})" if record["status"] != "ok" else ""))
            results["meta"]["elapsed_s"] = time.perf_counter() - start
            write_json(out, results)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    results["meta"].update(state="stopped: " + stopped if stopped else "finished",
                           elapsed_s=time.perf_counter() - start)
    write_json(out, results)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Summary


def headline(part: dict) -> str:
    r = part.get("result") or {}
    if part["status"] != "ok":
        return (part.get("error") or part.get("reason") or "")[:70]
    if "fps" in r:
        v = r.get("with_vae") or {}
        mfu = r["flops"]["mfu"]
        pixels = (v.get("first_block_pixels_s") or {}).get("median", float("nan"))
        return (f"{r['fps']:.2f} FPS, +VAE {v.get('fps', float('nan')):.2f} FPS, first block "
                f"{r['first_block_s']['median'] * 1e3:.0f} ms / pixels {pixels * 1e3:.0f} ms, "
                f"{r['peak_memory']['peak_bytes'] / 2 ** 30:.1f} GiB" + (f", MFU {mfu:.1%}" if mfu else ""))
    if "switch_to_next_block_s" in r:
        return (f"re-cache {r['recache_s']['median'] * 1e3:.0f} ms + next block {r['next_block_s']['median'] * 1e3:.0f}"
                f" ms")
    if "rollout" in r:
        return f"rollout rel err {r['rollout']['rel_err']:.2e}, one forward {r['one_forward']['rel_err']:.2e}"
    if "rel_err" in r:
        return f"max abs {r['max_abs_diff']:.2e}, rel err {r['rel_err']:.2e}"
    if "seconds_per_step" in r:
        return f"{r['seconds_per_step']:.2f} s/step, {r['peak_memory']['peak_bytes'] / 2 ** 30:.1f} GiB"
    if "block_s" in r:
        mfu = r["flops"]["mfu"]
        return (f"block {r['block_s']['median'] * 1e3:.0f} ms ({r['forward_s'] * 1e3:.0f} ms/forward), "
                f"{r['peak_memory']['peak_bytes'] / 2 ** 30:.1f} GiB" + (f", MFU {mfu:.1%}" if mfu else ""))
    if "device" in r:
        return f"{r['device']}, torch {r['torch']}, CUDA {r['torch_cuda']}"
    return ""


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check = Check(args)
    out = Path(args.out)
    keep = None
    if args.keep_done and out.exists():
        keep = json.loads(out.read_text()).get("parts", {})
    selection = [s.strip() for s in args.parts.split(",") if s.strip()] if args.parts else None
    fail = {s.strip() for s in args.fail_part.split(",") if s.strip()}
    parts = default_parts()
    unknown = sorted(n for n in (selection or []) + sorted(fail) if not any(_selected(p.name, [n]) for p in parts))
    if unknown:
        raise SystemExit(f"device_check: unknown part(s) {unknown} in --parts / --fail_part; parts: "
                         + ", ".join(p.name for p in parts))
    meta = dict(command=" ".join(["scripts/device_check.py"] + list(sys.argv[1:] if argv is None else argv)),
                smoke=check.smoke, device=check.device_name, budget_s=args.budget_s,
                started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), settings=asdict(check.settings),
                compile_backend=check.compile_backend, train_steps=check.train_steps,
                peak_tflops=check.peak, peak_source=check.peak_source)
    check.log(f"device check on {check.device_name}{' (smoke)' if check.smoke else ''}, budget {args.budget_s:g} s, "
              f"writing {out}")
    try:
        results = run_parts(parts, check, out, meta, args.budget_s, selection, fail, keep)
    finally:
        check.cleanup()
    check.log("")
    for name, part in results["parts"].items():
        check.log(f"{name:<32} {part['status']:<8} {part.get('seconds', 0):>7.1f} s  {headline(part)}")
    counts = {s: sum(p["status"] == s for p in results["parts"].values()) for s in ("ok", "error", "skipped")}
    check.log(f"wrote {out} ({counts['ok']} ok, {counts['error']} failed, {counts['skipped']} skipped; "
              f"{results['meta']['state']})")
    return results


if __name__ == "__main__":
    sys.exit(1 if any(p["status"] == "error" for p in main()["parts"].values()) else 0)
