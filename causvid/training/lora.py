"""LoRA training of a DiT through peft: the config's `lora.generator` / `lora.critic` block (rank, alpha, dropout,
target_modules) puts a LoRA (Hu et al. 2021, eq. 3: h = W0 x + (alpha / r) B A x, B = 0 at the start) on the
named Linear layers of the loaded model, whose own weights are frozen.

What the trainer does differently for a LoRA model, all here:
- `wrap`: peft's layers are injected into the WanDiT itself (it stays a WanDiT, so FSDP2 shards its blocks as
  before); only the adapter trains, so the optimizer, the gradient clip and the EMA (which keeps the parameters
  that train) see the adapter alone;
- `checkpoint_models`: checkpoints hold the adapter only (`generator`, `generator_ema`, `critic`), plus a `lora`
  entry naming each adapter's settings and its base (the Wan folder and `generator_ckpt`), so a 14B run's
  checkpoint is megabytes and inference (`load_dit`) rebuilds the student from the base it names;
- resume loads the adapter into the freshly loaded base (`strict=False`: the base comes from its own files).
"""
import math

import torch

from causvid import rng
from causvid.config import ConfigError

ADAPTER = "default"  # peft's adapter name, part of each adapter parameter's name


def enabled(lora_cfg) -> bool:
    return lora_cfg is not None and lora_cfg.rank > 0


def wrap(model: torch.nn.Module, cfg, name: str) -> torch.nn.Module:
    """The model with a rank-r adapter (`cfg.lora[name]`) on each target module and every other parameter frozen
    (unchanged when its rank is 0). The adapter starts with B = 0: the wrapped model computes exactly the base's
    output. A is peft's Kaiming-uniform init drawn from (seed, name, module) (causvid.rng), not from the global
    stream, so every process of a run, and a run on any number of processes, starts from the same A."""
    lora_cfg = cfg.lora[name]
    if not enabled(lora_cfg):
        return model
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha or lora_cfg.rank, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules))
    try:
        model = inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as err:  # no module matched
        raise ConfigError(f"lora.{name}.target_modules={list(lora_cfg.target_modules)}: {str(err).splitlines()[0]}"
                          " (Linear layers of the Wan DiT: q, k, v, o, ffn.0, ffn.2, ...)") from err
    with torch.no_grad():  # (peft has frozen every parameter but the adapter's)
        for module_name, module in model.named_modules():
            if module_name.endswith(f"lora_A.{ADAPTER}"):
                w = torch.empty(module.weight.shape)
                torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=rng.generator(cfg.seed, "lora", name,
                                                                                           module_name))
                module.weight.copy_(w)
    return model


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def adapter_state(state: dict) -> dict:
    """The adapter's entries of a (full) state dict."""
    return {k: v for k, v in state.items() if is_adapter(k)}


def settings(cfg, name: str) -> dict:
    """The checkpoint's record of one adapter: its settings and the base it was trained on."""
    lora_cfg = cfg.lora[name]
    return {"rank": lora_cfg.rank, "alpha": float(lora_cfg.alpha or lora_cfg.rank), "dropout": lora_cfg.dropout,
            "target_modules": list(lora_cfg.target_modules), "adapter_name": ADAPTER,
            "wan_model_path": str(cfg.wan_model_path),
            "base_checkpoint": str(cfg.generator_ckpt) if name == "generator" and cfg.generator_ckpt else None}


def checkpoint_models(cfg, models: dict) -> tuple:
    """(models with each LoRA model's entries cut to its adapter, the checkpoint's `lora` record or None)."""
    record = {}
    for name, keys in (("generator", ("generator", "generator_ema")), ("critic", ("critic",))):
        if not enabled(cfg.lora[name]):
            continue
        record[name] = settings(cfg, name)
        for key in keys:
            if models.get(key) is not None:
                models[key] = adapter_state(models[key])
    return models, (record or None)


def strict_load(cfg, name: str) -> bool:
    """A LoRA model's checkpoint holds its adapter alone: the rest comes from the base the trainer loaded."""
    return not enabled(cfg.lora[name])
