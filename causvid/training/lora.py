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
    (unchanged when its rank is 0), starting from `initial_adapter` (B = 0: the wrapped model computes exactly the
    base's output). A model on the meta device is only wrapped: fill it from `open_wrapped`'s state."""
    lora_cfg = cfg.lora[name]
    if not enabled(lora_cfg):
        return model
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha or lora_cfg.rank, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules))
    try:  # peft freezes every parameter but the adapter's
        model = inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    except ValueError as err:  # no module matched
        raise ConfigError(f"lora.{name}.target_modules={list(lora_cfg.target_modules)}: {str(err).splitlines()[0]}"
                          " (Linear layers of the Wan DiT: q, k, v, o, ffn.0, ffn.2, ...)") from err
    if not any(p.is_meta for p in model.parameters()):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for pname, value in initial_adapter(model, cfg, name).items():
                params[pname].copy_(value)
    return model


def initial_adapter(model: torch.nn.Module, cfg, name: str) -> dict:
    """{adapter parameter: its starting value}: A is peft's Kaiming-uniform init but drawn from (seed, model,
    module) (causvid.rng), not from the global stream, so every process of a run, and a run on any number of
    processes, starts from the same A; B = 0 (LoRA, eq. 3)."""
    out = {}
    for pname, p in model.named_parameters():
        if ".lora_A." in pname:
            w = torch.empty(p.shape)
            torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=rng.generator(cfg.seed, "lora", name,
                                                                                       pname.rsplit(".", 1)[0]))
            out[pname] = w
        elif ".lora_B." in pname:
            out[pname] = torch.zeros(p.shape)
    return out


def open_wrapped(opened: tuple, cfg, name: str) -> tuple:
    """(model on the meta device, its checkpoint's tensors by name) -> the same for the wrapped model: the base's
    tensors under peft's names (a wrapped Linear's `M.weight` is `M.base_layer.weight`) and the adapter's
    `initial_adapter` values, for a loader that fills the model's (local rows of its) parameters by name."""
    model, state = opened
    model = wrap(model, cfg, name)
    if not enabled(cfg.lora[name]):
        return model, state
    names = {}
    for pname, _ in model.named_parameters():
        names[pname.replace(".base_layer.", ".")] = pname
    wrapped = {names.get(k, k): v for k, v in state.items()}
    return model, {**wrapped, **initial_adapter(model, cfg, name)}


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
