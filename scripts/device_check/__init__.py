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

    python -m scripts.device_check --out device_check.json [--budget_s 480]
    python -m scripts.device_check --smoke --out /tmp/device_check.json    # every part at toy size, on CPU

`--smoke` runs every part with the tiny preset and configs on the CPU (GPU-only parts are recorded as skipped,
with the reason), so a test keeps the script from rotting. `--parts` picks parts by name or prefix; a rerun
with `--keep_done` keeps the parts already measured in --out. `--fail_part NAME` makes a part fail (to test
that the others are still written). `main(argv)` returns the JSON's contents.

The files, each read in one sitting: `cli.py` (flags, main, the summary), `runner.py` (parts in order, the JSON
rewritten after each, the budget), `check.py` (what the parts share: device, settings, random model and VAE),
`parts.py` (the parts in order) and one file per kind of part: `environment.py`, `inference.py`, `numerics.py`,
`training.py`, `wan14b.py`. A new part is a function `part_x(check) -> dict` listed in `parts.py`.
"""
import importlib

#: What `scripts.device_check.X` gives (the tests and callers use these), imported on first use so that
#: `python -m scripts.device_check --help` answers before torch loads.
_EXPORTS = {"main": "cli", "parse_args": "cli", "headline": "cli",
            "Part": "runner", "run_parts": "runner", "write_json": "runner", "SkipPart": "runner",
            "BudgetExceeded": "runner",
            "Check": "check", "peak_tflops": "check", "RandomPromptEncoder": "check", "PRESET_13B": "check",
            "PRESET_14B": "check", "SMOKE_PRESET": "check", "SMOKE_14B_PRESET": "check",
            "default_parts": "parts"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
