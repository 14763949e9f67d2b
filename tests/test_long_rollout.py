"""Long-rollout DMD (Self-Forcing++): the student rolls out several training lengths through a rolling KV window
and the loss takes one window of it. Memory does not grow with the rollout, the gradient is the window's exit
steps' alone, and a resumed run equals an uninterrupted one."""
from pathlib import Path

import pytest
import torch

from causvid.config import ConfigError, load_config
from causvid.flow import flow_to_x0
from causvid.tiny_wan.dit import random_dit
from causvid.training import distributed as D
from causvid.training.stages import DMDStage, Models
from causvid.training.trainer import Trainer
from test_training import overrides

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny"


def stage_of(*extra):
    return DMDStage(load_config(TINY / "causal_forcing_dmd_chunkwise.yaml", overrides=list(extra)))


def test_window_choices_and_bad_lengths():
    stage = stage_of("long_rollout_frames=24")
    assert stage.window_starts == [0, 3, 6, 9, 12, 15, 18]  # block-aligned windows of 6 frames inside 24
    starts = {stage.window_start(s, "generator") for s in range(40)}
    assert starts == set(stage.window_starts)  # uniform: every depth of the stream is trained
    assert stage_of("long_rollout_frames=24", "long_rollout_window=last").window_start(0, "generator") == 18
    assert stage.kv_window == {"local_attn_size": 6, "sink_size": 3}
    with pytest.raises(ConfigError, match="long_rollout_frames=4"):
        stage_of("long_rollout_frames=4")
    with pytest.raises(ValueError, match="num_frame_per_block=3"):
        stage_of("long_rollout_frames=13")


def saved_bytes(stage, frames):
    model = random_dit("tiny", seed=3, text_len=16)
    batch = {"samples": [0], "context": torch.randn(1, 16, 32)}
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stage.generate(Models(model), batch, step=1)
    out.sum().backward()
    return sum(total), out.shape[1]


def test_memory_does_not_grow_with_the_rollout():
    sizes = {n: saved_bytes(stage_of(f"long_rollout_frames={n}", "long_rollout_window=last"), n) for n in (12, 24, 48)}
    assert all(frames == 6 for _, frames in sizes.values())  # the loss window: one training length
    assert sizes[12][0] == sizes[24][0] == sizes[48][0] > 0  # the graph holds the window's blocks only


def test_gradient_is_the_windows_exit_steps_on_the_same_rollout():
    stage = stage_of("long_rollout_frames=18", "long_rollout_window=uniform", "kv_cache_gradient=detached",
                     "same_step_across_blocks=false")
    model = random_dit("tiny", seed=4, text_len=16)
    context = torch.randn(1, 16, 32)
    batch = {"samples": [2], "context": context}
    step = next(s for s in range(50) if stage.window_start(s, "generator") not in (0, 12))  # a middle window
    first = stage.window_start(step, "generator")
    calls, forward = [], model.forward

    def recording(x, t, ctx, **kw):
        calls.append((x.detach().clone(), t.clone(), kw["start_frame"], torch.is_grad_enabled()))
        return forward(x, t, ctx, **kw)
    model.forward = recording
    # each step's rollout trains the window that step draws: it stops at that window's end (three steps, three windows)
    steps = {stage.window_start(s, "generator"): s for s in range(50)}
    assert len(steps) >= 3
    for start in sorted(steps)[:3]:
        calls.clear()
        stage.generate(Models(model), batch, steps[start])
        assert max(c[2] for c in calls) == start + 3 and not any(c[3] for c in calls if c[2] < start)
    calls.clear()
    weights = torch.randn(1, 6, 16, 4, 4)
    (stage.generate(Models(model), batch, step) * weights).sum().backward()
    model.forward = forward
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert not any(grad for _, _, start, grad in calls if start < first)  # no graph before the window
    assert max(start for _, _, start, _ in calls) == first + 3  # the rollout stops at the window's end

    # by hand: replay every block's refresh into a rolling cache; the window's exit calls with gradient
    blocks = {}
    for x, t, start, _ in calls:
        blocks.setdefault(start, []).append((x, t))
    cache, outputs = model.new_cache(1, local_attn_size=6, sink_size=3, gradient="detached"), []
    for start in sorted(blocks):
        (x_exit, t_exit), (refresh, t_ctx) = blocks[start][-2], blocks[start][-1]
        if start >= first:
            flow = model(x_exit, t_exit, context, cache=cache, start_frame=start)
            outputs.append(flow_to_x0(flow, x_exit, t_exit, stage.grid))
        else:
            with torch.no_grad():
                model(x_exit, t_exit, context, cache=cache, start_frame=start)
        with torch.no_grad():
            model(refresh, t_ctx, context, cache=cache, start_frame=start)
    (torch.cat(outputs, dim=1) * weights).sum().backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and len(got) > 0
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7)


def test_long_rollout_training_resumes_exactly(tiny_run_data, tmp_path):
    def run(logdir, iters, resume=None):
        cfg = load_config(TINY / "causal_forcing_dmd_chunkwise.yaml", overrides=overrides(
            tiny_run_data, "prompts.txt", long_rollout_frames=12, dfake_gen_update_ratio=1, max_iters=iters,
            log_iters=1, lr=1e-4, lr_critic=1e-4))
        t = Trainer(cfg, logdir, no_visualize=True, resume=resume)
        history = t.train()
        return history, D.full_model_state(t.models.generator)

    straight, weights = run(tmp_path / "straight", 3)
    run(tmp_path / "resumed", 1)
    resumed, weights_resumed = run(tmp_path / "resumed", 3, resume="latest")
    assert [s for s, _ in resumed] == [2, 3]
    for (s1, l1), (s2, l2) in zip(straight[1:], resumed):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-6)
    assert all(torch.equal(weights[k], weights_resumed[k]) for k in weights)


def test_rope_positions_reach_the_training_rollout():
    """model_kwargs.rope_positions=window (the sink next to the window, as Infinity-RoPE) is a training choice too:
    the same long rollout changes once the window has rolled past the sink, and not before."""
    model, batch = random_dit("tiny", seed=5, text_len=16), {"samples": [0], "context": torch.randn(1, 16, 32)}

    def sample(*extra):
        with torch.no_grad():
            return stage_of("long_rollout_window=last", *extra).generate(Models(model), batch, step=1)
    made, new_cache = [], model.new_cache
    model.new_cache = lambda *a, **kw: made.append(kw) or new_cache(*a, **kw)
    for frames, changes in ((6, False), (24, True)):
        absolute, window = (sample(f"long_rollout_frames={frames}", f"model_kwargs.rope_positions={mode}")
                            for mode in ("absolute", "window"))
        assert ((absolute - window).abs().max() > 1e-5) == changes, frames
    # the stage hands the setting and its window (the training length, a one-block sink) to the cache it rolls
    assert [(kw["rope_positions"], kw["max_frames"], kw["local_attn_size"], kw["sink_size"]) for kw in made] == [
        ("absolute", 6, -1, 0), ("window", 6, -1, 0), ("absolute", 24, 6, 3), ("window", 24, 6, 3)]


def test_windows_by_hand_for_other_layouts_seeds_roles_and_kv_windows():
    """Windows start and end on block boundaries: with frame 0 a block of its own ([1, 3, 3, ...]) a window of 7
    frames fits only at 0; two windows are both drawn. The draw is keyed by the run's seed and the role (the
    critic's rollout draws its own window). The rolling KV window is the config's when it sets one, else the
    training length with a one-block sink; without a long rollout the cache is global."""
    first_alone = stage_of("long_rollout_frames=19", "independent_first_frame=true",
                           "image_or_video_shape=[1,7,16,4,4]", "num_training_frames=7")
    assert first_alone.window_starts == [0]
    two = stage_of("long_rollout_frames=9")
    assert two.window_starts == [0, 3] and {two.window_start(s, "generator") for s in range(40)} == {0, 3}
    stage = stage_of("long_rollout_frames=24")

    def draws(stage, role="generator"):
        return [stage.window_start(s, role) for s in range(40)]
    assert draws(stage_of("long_rollout_frames=24", "seed=1")) != draws(stage_of("long_rollout_frames=24", "seed=2"))
    assert draws(stage, "generator") != draws(stage, "critic")
    assert stage_of("long_rollout_frames=24", "model_kwargs.local_attn_size=9", "model_kwargs.sink_size=0").kv_window \
        == {"local_attn_size": 9, "sink_size": 0}
    assert stage_of().kv_window == {"local_attn_size": -1, "sink_size": 0}
