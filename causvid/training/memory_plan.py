"""Per-GPU memory of each training stage at real size, planned from measured bytes held for backward
(`scripts/benchmark_memory.py --plan`).

Per GPU, for N GPUs on a (dp_shard = N / sp, sp) mesh, FSDP sharding over all N (as torchtitan shards over
its data and context-parallel dims together: an sp group needs the same weights, gathered anyway):
- trained models (the generator; the critic too in DMD): fp32 weights, fp32 gradients and AdamW's two moments,
  16 bytes a parameter, plus the generator's EMA (4), sharded over N;
- frozen models: the real score (DMD) or the teacher (consistency distillation) in bf16, sharded over N, or in
  CPU memory with `offload_frozen`; CD's EMA target in fp32;
- the text encoder (umT5-XXL, 5.7e9 parameters, bf16), whole on every GPU, or in CPU memory with offload;
- FSDP's gathered blocks: two blocks of the largest model in bf16 (the one computing and the one prefetched);
- activations: the stage's fitted bytes (bf16 rows) at the model's depth and 480x832x21 latent tokens / sp,
  scaled by width from the measured preset when planning another (the per-token, per-layer term is 3 x dim
  values for a checkpointed cached rollout and dim for a full sequence: linear in width, tested).
"""
import math

import torch

from causvid.models.wan.dit import WanDiT
from causvid.models.wan.presets import get_preset

TEXT_ENCODER_PARAMS = 5.7e9  # umT5-XXL encoder: the released bf16 file is 11.4 GB
GB = 1e9
#: (student, real score or teacher), as in the original recipes
MODELS = {"1.3B + 1.3B real": ("wan2.1-t2v-1.3b", "wan2.1-t2v-1.3b"),
          "1.3B + 14B real": ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"),
          "14B + 14B real": ("wan2.1-t2v-14b", "wan2.1-t2v-14b")}
CRITIC_STAGES = ("dmd",)  # stage names containing this train a critic and hold a real score


def parameters(preset: str) -> tuple:
    """(all parameters, parameters of one block) of a preset, counted on the meta device."""
    with torch.device("meta"):
        model = WanDiT.from_preset(preset)
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.blocks[0].parameters())


def activations(row: dict, preset: str, tokens: float) -> float:
    """The row's fit (a + b T + L (c + d T)), scaled to `preset`'s width and depth."""
    cfg = get_preset(preset)
    scale = cfg.dim / row["dim"]
    return scale * (row["a"] + row["b"] * tokens + cfg.num_layers * (row["c"] + row["d"] * tokens))


def per_gpu(stage: str, rows: list, student: str, frozen: str, gpus: int, sp: int, tokens: int,
            offload: bool) -> float:
    """Bytes per GPU of one training step of `stage` (its largest role)."""
    (p_student, block_student), (p_frozen, block_frozen) = parameters(student), parameters(frozen)
    shards = gpus
    dmd = any(s in stage for s in CRITIC_STAGES)
    cd = "cd" in stage
    trained = p_student * (2 if dmd else 1)
    states = (16 * trained + 4 * p_student) / shards  # weights, grads, AdamW; the EMA
    held = 0.0
    if dmd:
        held += 0 if offload else 2 * p_frozen / shards
    if cd:
        held += (0 if offload else 2 * p_student / shards) + 4 * p_student / shards  # teacher, EMA target
    text = 0 if offload else 2 * TEXT_ENCODER_PARAMS
    gathered = 2 * 2 * max(block_student, block_frozen if dmd else 0)
    act = max(activations(r, student, tokens / sp) for r in rows)
    return states + held + text + gathered + act


def print_plan(measured: dict) -> None:
    rows = [r for r in measured["rows"] if r["dtype"] == "bf16"]
    tokens = measured["real_tokens"]
    stages = sorted({r["stage"] for r in rows})
    print(f"per-GPU memory (GB) of one training step at 480x832, 21 latent frames ({tokens} tokens), bf16 compute; "
          "sp = the smallest sequence-parallel size that fits (heads must divide by it); "
          "'-' = does not fit even at the largest sp")
    for name, (student, frozen) in MODELS.items():
        heads = get_preset(student).num_heads
        for gpus in (8, 64):
            for budget in (80, 141):
                print(f"\n{name}, {gpus} GPUs of {budget} GB")
                print(f"  {'stage':30} {'sp':>3} {'GB':>7} {'sp (offload)':>13} {'GB (offload)':>13}")
                for stage in stages:
                    cells = []
                    for offload in (False, True):
                        fits = [(sp, per_gpu(stage, [r for r in rows if r["stage"] == stage], student, frozen,
                                             gpus, sp, tokens, offload) / GB)
                                for sp in (1, 2, 4, 8) if heads % sp == 0 and gpus % sp == 0]
                        ok = [(sp, gb) for sp, gb in fits if gb <= budget]
                        sp, gb = ok[0] if ok else fits[-1]
                        cells.append((str(sp) if ok else "-", gb))
                    print(f"  {stage:30} {cells[0][0]:>3} {cells[0][1]:7.1f} {cells[1][0]:>13} {cells[1][1]:13.1f}")
    print(f"\n{math.prod([len(MODELS), 2, 2])} plans of {len(stages)} stages")
