"""Parts `training.*`: one step each of DMD (generator + critic + frozen teacher), causal ODE and teacher forcing
through the project's Trainer (bf16 autocast, activation checkpointing, FSDP2 at world size 1), on a random model
folder and random data in the real shapes."""
from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from causvid.config import load_config
from causvid.models.wan import get_preset
from causvid.models.wan.attention import set_attention_backend
from scripts import benchmark_inference as bench
from scripts.device_check.check import Check, RandomPromptEncoder

REPO = Path(__file__).resolve().parents[2]

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
