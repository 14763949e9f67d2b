"""The parts in the order they run (a new part: a function `part_x(check) -> dict`, listed here)."""
from functools import partial

from scripts.device_check.environment import part_environment
from scripts.device_check.inference import need_cuda, need_flash, part_inference, part_prompt_switch
from scripts.device_check.memory import part_memory
from scripts.device_check.numerics import part_bf16_vs_fp32, part_flex_vs_sdpa, part_latent_diff
from scripts.device_check.runner import Part
from scripts.device_check.training import TRAINING, part_training
from scripts.device_check.wan14b import part_wan14b


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
    parts += [Part(f"memory.dmd_{size}", partial(part_memory, size=size)) for size in ("1.3b", "14b")]
    return parts
