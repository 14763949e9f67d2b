"""Activation checkpointing through the KV-cached Self-Forcing rollout: the same gradients as without it, and
what it holds for backward, counted by hand (the layer's input and the cache's store, per token and layer)."""
from pathlib import Path

import pytest
import torch

from causvid.config import load_config
from causvid.tiny_wan.dit import random_dit
from causvid.training.memory import HeldForBackward, LinearFit, held_bytes, stage_batch, stage_models
from causvid.training.stages import Models, make_stage
from torchrun_jobs import job

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny"


def tiny_stage(*overrides, config="self_forcing_dmd"):
    return make_stage(load_config(TINY / f"{config}.yaml", overrides=list(overrides)))


def rollout_gradients(stage, model, checkpointing):
    """Gradients of a weighted sum of the stage's Self-Forcing rollout (fixed exit steps) w.r.t. the weights."""
    model.gradient_checkpointing = checkpointing
    model.zero_grad()
    stage.exit_step = lambda step, role, block: (2, 1, 3, 0)[block % 4]
    context = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(5))
    out = stage.generate(Models(model), {"samples": [3], "context": context}, step=0)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    (out * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("gradient", ["straight_through", "detached"])
@pytest.mark.parametrize("rollout", ["global", "rolling"])
def test_checkpointed_cached_rollout_gives_the_same_gradients(gradient, rollout):
    """The 3-block rollout (and a 4-block long rollout through a rolling window, whose slots later blocks
    reuse before backward) with checkpointed cached layers: every weight's gradient as without checkpointing,
    the straight-through path across blocks included."""
    long = ["long_rollout_frames=12", "long_rollout_window=last"] if rollout == "rolling" else []
    stage = tiny_stage(f"kv_cache_gradient={gradient}", "image_or_video_shape=[1,9,16,4,4]", *long)
    model = random_dit("tiny", seed=3, text_len=16).train()
    plain = rollout_gradients(stage, model, checkpointing=False)
    checkpointed = rollout_gradients(stage, model, checkpointing=True)
    assert plain.keys() == checkpointed.keys() and "blocks.0.self_attn.k.weight" in plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7)


def fitted(stage_overrides, role="generator", config="self_forcing_dmd"):
    """Bytes held for backward by one loss of the stage at the tiny widths, fitted per layer and per token."""
    measured = {}
    for layers in (1, 2):
        for h in (4, 8):
            stage = tiny_stage(*stage_overrides, f"image_or_video_shape=[1,6,16,{h},4]", config=config)
            models = stage_models(stage, "tiny", layers)
            batch = stage_batch(stage, models, list(stage.cfg.image_or_video_shape)[1:])
            measured[(layers, 6 * h // 2 * 2)] = held_bytes(stage, models, batch, role)
    return LinearFit.from_grid((1, 2), (24, 48), measured)


def test_checkpointed_rollout_holds_the_layer_input_and_the_cache_per_token_and_layer():
    """Per token and layer, a Self-Forcing generator loss with checkpointing holds what the original does: the
    layer's input (dim values) and the cache's K and V (2 dim values), fp32: 3 x 64 x 4 bytes at the tiny
    widths, nothing else (no per-call copy of the cache, no activations of the cached calls)."""
    fit = fitted([])
    assert fit.d == 3 * 64 * 4
    assert fit.c == 0  # no per-layer constant: the prompt's cached cross-attention K/V are not kept
    assert fitted(["gradient_checkpointing=false"]).d > 5 * fit.d  # 9.7x: every activation of the exit calls


def test_long_rollout_holds_the_layer_input_and_each_read_value_once():
    """Long-rollout DMD (12 frames rolled out through a rolling window of 6 with a 3-frame sink, the loss on the
    last 6): per window token and layer, the layer input plus the K and V of every frame a with-grad call reads,
    each once: the window's 6 frames and the sink's 3 (block 2 writes over block 1 before its first read, so
    block 1 is not kept; block 3 writes over block 2 after block 2's reads, so block 2's values are). By hand:
    (1 + 2 x 9 / 6) x 64 x 4 bytes; the floor of a checkpointed rollout, since a recomputation needs what the
    forward read."""
    fit = fitted(["long_rollout_frames=12", "long_rollout_window=last"])
    assert fit.d == (1 + 2 * 9 / 6) * 64 * 4 and fit.c == 0


def test_checkpointed_full_sequence_holds_the_layer_input():
    """The critic's flow matching (full sequence, no cache): the layer input alone, per token and layer."""
    assert fitted([], role="critic").d == 64 * 4


def test_held_bytes_count_each_storage_once_and_leave_out_the_weights():
    model = random_dit("tiny", seed=0)
    x = torch.randn(4, 64, requires_grad=True)
    with HeldForBackward(model) as held:
        y = torch.nn.functional.linear(x, model.blocks[0].ffn[0].weight)  # saves x and the weight
        z = (y * y).sum() + (y[:2] * 3).sum()  # saves y (once, though twice as a view)
    assert held.bytes == (4 * 64 + 4 * 128) * 4
    del z


@job(world=2)
def sharded_load(data, root):
    return "load_worker", [data / "wan", root / "sharded_load" / "out"]


@pytest.mark.torchrun("sharded_load")
def test_sharded_load_reads_only_each_ranks_rows(torchrun):
    """Two processes (torchrun, gloo) build the DiT on the meta device, shard it and fill it: each rank holds the
    rows torch.chunk gives it of every parameter of the full model, and reads exactly those values, no more
    (tests/load_worker.py, run in tests/torchrun_jobs.py's world of 2)."""
    from causvid.pipelines.text_to_video import load_dit

    full = dict(load_dit(torchrun.data / "wan").named_parameters())
    total = 0
    for rank in (0, 1):
        dumped = torch.load(torchrun("sharded_load") / f"out.{rank}")
        assert dumped["local"].keys() == full.keys()
        for name, shard in dumped["local"].items():
            pieces = torch.chunk(full[name].detach(), 2)  # FSDP2's split: a 1-row tensor leaves rank 1 none
            expected = pieces[rank] if rank < len(pieces) else full[name].detach()[:0]
            torch.testing.assert_close(shard, expected, rtol=0, atol=0)
        assert dumped["read"] == sum(t.numel() for t in dumped["local"].values())
        total += dumped["read"]
    assert total == sum(p.numel() for p in full.values())
