"""Training equals the originals' (Self-Forcing / Causal-Forcing / CausVid), point by point, against references
written by hand here: the straight-through gradient through the KV cache, cross-attention gradients, the
timestep grids, the teacher-forcing weight table, independent random draws, and the DMD / critic maths."""
from pathlib import Path

import numpy as np
import pytest
import torch

from causvid.config import load_config
from causvid.flow import flow_to_x0, grid_sigma
from causvid.models.wan.kv_cache import KVCache
from causvid.tiny_wan.dit import random_dit
from causvid.training.losses import dmd_gradient, dmd_loss, training_weight
from causvid.training.stages import DMDStage, DiffusionStage, Models

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny"
SF_T0_SIGMA = 5 * 0.001 / (1 + 4 * 0.001)  # the shift-5 grid's last point: what "t = 0" reads as (0.00498)


def sf_stage(*overrides, config="causal_forcing_dmd_chunkwise"):
    return DMDStage(load_config(TINY / f"{config}.yaml", overrides=list(overrides)))


def recorded_rollout(stage, model, batch, step, exits):
    """Run the stage's Self-Forcing rollout with fixed exit steps; return its output and every model call."""
    stage.exit_step = lambda step_, role, block: exits[block]
    calls, forward = [], model.forward

    def recording(x, t, ctx, **kw):
        calls.append((x.detach().clone(), t.clone(), kw.get("start_frame")))
        return forward(x, t, ctx, **kw)

    model.forward = recording
    try:
        out = stage.generate(Models(model), batch, step)
    finally:
        model.forward = forward
    blocks = {}
    for x, t, start in calls:
        blocks.setdefault(start, []).append((x, t))
    return out, blocks


def tiny_setup(seed=11):
    model = random_dit("tiny", seed=seed, text_len=16)
    context = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(seed))
    return model, {"samples": [3], "context": context}


# -- point 1: the gradient across blocks through the KV cache ---------------------------------------------------

class CapturingCache(KVCache):
    """Keeps the K/V that block 0's exit step (the with-grad call at start_frame 0) writes."""
    exits = {}

    def update(self, layer, k, v):
        if k.requires_grad and self.block_start == 0:
            k.retain_grad()
            v.retain_grad()
            CapturingCache.exits[layer] = (k, v)
        return super().update(layer, k, v)


class LeafContextCache(KVCache):
    """The explicit formula's cache: block 0's refresh K/V become leaves, which block 1 attends to."""
    leaves = {}

    def update(self, layer, k, v):
        if self.block_start == 0:
            LeafContextCache.leaves[layer] = (k.detach().clone().requires_grad_(), v.detach().clone().requires_grad_())
            return super().update(layer, k, v)
        kc, vc = LeafContextCache.leaves[layer]
        return torch.cat([kc, k], dim=1), torch.cat([vc, v], dim=1)


@pytest.mark.parametrize("mode", ["straight_through", "detached"])
def test_a_later_blocks_loss_reaches_the_earlier_exit_step_kv_straight_through(mode):
    """Block 1's loss sends into block 0's exit-step K/V exactly d loss / d (block 0's cached K/V), the values
    of the refresh pass (Self-Forcing's path), and from there into the weights; with `detached`, nothing."""
    stage = sf_stage(f"kv_cache_gradient={mode}")
    model, batch = tiny_setup()
    layers = len(model.blocks)
    model.new_cache = lambda b, max_frames=None, gradient="straight_through", **w: CapturingCache(
        layers, b, max_frames, gradient=gradient, **w)
    CapturingCache.exits = {}
    weights = torch.randn(1, 3, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    out, blocks = recorded_rollout(stage, model, batch, step=0, exits=[2, 1])
    (out[:, 3:] * weights).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    exits = CapturingCache.exits
    assert sorted(exits) == list(range(layers))
    if mode == "detached":
        assert all(g is None or not g.any() for k, v in exits.values() for g in (k.grad, v.grad))
        return
    del model.new_cache
    model.zero_grad()

    # the explicit formula: block 1's exit call again, attending to leaves holding block 0's refresh K/V ...
    refresh0, t_ctx = blocks[0][-1]
    x1, t1 = blocks[3][-2]
    cache = LeafContextCache(layers, 1, max_frames=6)
    with torch.no_grad():
        model(refresh0, t_ctx, batch["context"], cache=cache, start_frame=0)
    flow = model(x1, t1, batch["context"], cache=cache, start_frame=3)
    (flow_to_x0(flow, x1, t1, stage.grid) * weights).sum().backward()
    leaves = LeafContextCache.leaves
    for got_kv, leaf_kv in zip(exits[layers - 1], leaves[layers - 1]):  # the last layer has no other path
        assert leaf_kv.grad.abs().max() > 0
        torch.testing.assert_close(got_kv.grad, leaf_kv.grad, rtol=1e-4, atol=1e-7)
    # ... whose gradients then enter block 0's exit step at the K/V it wrote (with the weights' graph)
    CapturingCache.exits = {}
    x0, t0 = blocks[0][-2]
    model(x0, t0, batch["context"], cache=CapturingCache(layers, 1, max_frames=6), start_frame=0)
    kv = [t for layer in range(layers) for t in CapturingCache.exits[layer]]
    torch.autograd.backward(kv, [t.grad for layer in range(layers) for t in leaves[layer]])
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7)


# -- point 2: cross-attention K/V and the text embedding train ----------------------------------------------------

def test_exit_step_after_cached_steps_trains_cross_attention_and_text_embedding():
    """One block exiting at its third call, after two no-grad calls cached the prompt's cross-attention K/V:
    its gradient equals that of one cache-free forward on the exit input, text embedding and cross-attention
    K/V included (Self-Forcing recomputes them in the exit step; a cached copy gave them exactly zero)."""
    stage = sf_stage("image_or_video_shape=[1,3,16,4,4]")
    model, batch = tiny_setup()
    weights = torch.randn(1, 3, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    out, blocks = recorded_rollout(stage, model, batch, step=0, exits=[2])
    (out * weights).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    x, t = blocks[0][-2]
    flow = model(x, t, batch["context"], causal=True, num_frame_per_block=3)
    (flow_to_x0(flow, x, t, stage.grid) * weights).sum().backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name in ("text_embedding.0.weight", "text_embedding.2.weight", "blocks.0.cross_attn.k.weight",
                 "blocks.0.cross_attn.v.weight", "blocks.0.cross_attn.norm_k.weight"):
        assert got[name].abs().max() > 0, name
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7)


# -- point 3: timestep grids ------------------------------------------------------------------------------------

def test_grid_values_of_the_originals():
    # CausVid's 757 / 522 and the DMD clamps on its shift-8 grid; t = 0 reads as its last point
    got = grid_sigma(torch.tensor([757.0, 522.0, 20.0, 980.0, 0.0]), 8.0).double()
    expected = torch.tensor([0.756757, 0.521739, 0.023506, 0.980057, 0.007944], dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert float(grid_sigma(torch.tensor(0.0), 5.0)) == pytest.approx(SF_T0_SIGMA, rel=1e-6)


def test_training_refresh_input_at_context_noise_0_is_noised_to_the_grids_last_point():
    stage = sf_stage()
    model, batch = tiny_setup()
    with torch.no_grad():
        out, blocks = recorded_rollout(stage, model, batch, step=4, exits=[1, 1])
    refresh0, t_ctx = blocks[0][-1]
    assert torch.equal(t_ctx, torch.zeros_like(t_ctx))  # the model is told t = 0
    x0 = out[:, :3]
    n = stage.noise(x0, batch, 4, "generator", "context", 0, "context")
    torch.testing.assert_close(refresh0, x0 + SF_T0_SIGMA * (n - x0), rtol=1e-5, atol=1e-6)
    # without snapping the refresh input is the clean block itself
    stage = sf_stage("snap_timesteps=false")
    with torch.no_grad():
        out, blocks = recorded_rollout(stage, model, batch, step=4, exits=[1, 1])
    torch.testing.assert_close(blocks[0][-1][0], out[:, :3])


def test_inference_refresh_runs_the_clean_block_at_context_noise():
    from causvid.pipelines.rollout import causal_rollout, few_step_sampler

    model, batch = tiny_setup()
    calls, forward = [], model.forward
    model.forward = lambda x, t, ctx, **kw: calls.append((x.clone(), t.clone())) or forward(x, t, ctx, **kw)
    noise = torch.randn(1, 3, 16, 4, 4)
    with torch.no_grad():
        (_, x0), = causal_rollout(model, noise, batch["context"], num_frame_per_block=3, context_noise=100,
                                  sampler=few_step_sampler([1000.0, 500.0], generator=torch.Generator(), grid=5.0))
    refresh, t = calls[-1]
    assert torch.equal(refresh, x0) and torch.equal(t, torch.full_like(t, 100.0))


def test_critic_flow_target_is_scaled_by_the_two_grids_sigmas():
    """The fake score's x0 is read on its shift-8 grid and turned back into flow on the generator's shift-5
    grid: at t = 20 its flow counts sigma_8 / sigma_5 = 0.023506 / 0.019685 = 1.194 times."""
    stage = sf_stage()
    x = torch.randn(1, 6, 16, 4, 4)
    f = torch.randn(1, 6, 16, 4, 4)
    batch = {"samples": [0], "context": torch.zeros(1, 16, 32)}
    stage.generate = lambda models, batch_, step, role="generator": x
    stage.dmd_timesteps = lambda x_, batch_, step, tag: torch.full(x_.shape[:2], 20.0)
    loss = stage.critic_loss(Models(None, fake_score=lambda x_t, t, ctx: f + 0.5 * x_t), batch, step=0)
    noise = stage.noise(x, batch, 0, "critic_noise")

    def nearest_sigma(t, shift):  # the grid point nearest to t of 1000 * shift(u), u = 1, 0.999, ..., 0.001
        u = np.linspace(1.0, 0.0, 1001)[:-1]
        grid = shift * u / (1 + (shift - 1) * u)
        return grid[np.abs(1000 * grid - t).argmin()]

    scale = nearest_sigma(20.0, 8.0) / nearest_sigma(20.0, 5.0)
    x_t = (1 - nearest_sigma(20.0, 5.0)) * x + nearest_sigma(20.0, 5.0) * noise  # noised on the generator's grid
    expected = (((f + 0.5 * x_t) * scale - (noise - x)) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    assert scale == pytest.approx(1.194, abs=1e-3)  # the figure of the docstring


# -- point 5: the teacher-forcing weight table -------------------------------------------------------------------

def test_bump_weight_is_normalised_over_the_shifted_grid():
    s = np.linspace(1.0, 0.0, 1001)[:-1]
    grid = 1000 * 5 * s / (1 + 4 * s)  # Self-Forcing's training timesteps at shift 5
    bump = np.exp(-2 * ((grid - 500) / 1000) ** 2)
    table = (bump - bump.min()) * 1000 / (bump - bump.min()).sum()
    picks = [0, 10, 250, 600, 999]
    got = training_weight(torch.tensor(grid[picks], dtype=torch.float32), 5.0)
    np.testing.assert_allclose(got.numpy(), table[picks], rtol=1e-4)  # float32 as theirs
    # what the arange(1000) normalisation gave: a constant 0.7607 of it
    flat = np.arange(1000.0)
    old = (np.exp(-2 * ((grid[picks] - 500) / 1000) ** 2) - bump.min()) * 1000 / (
        np.exp(-2 * ((flat - 500) / 1000) ** 2) - bump.min()).sum()
    np.testing.assert_allclose(old[1:] / table[picks[1:]], 0.7607, atol=1e-4)  # (t = 1000 weighs 0 in both)


def test_diffusion_stage_draws_on_the_grid_and_keeps_a_sample_for_the_videos(tiny_run_data):
    from causvid.training.trainer import Trainer
    from test_training import overrides

    cfg = load_config(TINY / "ar_diffusion_tf_chunkwise.yaml", overrides=overrides(tiny_run_data, "latents"))
    t = Trainer(cfg, tiny_run_data / "unused", no_visualize=True, no_save=True)
    assert isinstance(t.stage, DiffusionStage) and t.stage.last_output is None
    seen = []
    t.models.generator.register_forward_hook(lambda m, args, out: seen.append((args[0], args[1], out)))
    with torch.no_grad():
        t.stage.generator_loss(t.models, t.batch(0, 0), 0)
    (x_t, steps, flow), = seen
    u = np.linspace(1.0, 0.0, 1001)[:-1]
    grid = 1000 * 5 * u / (1 + 4 * u)  # training_timesteps(5) written out
    off = np.abs(steps.double().numpy().reshape(-1, 1) - grid[None, :])
    assert off.min(axis=1).max() < 1e-3  # every t the generator receives is a grid point
    sigma = torch.tensor(grid[off.argmin(axis=1)] / 1000).reshape(*steps.shape, 1, 1, 1)
    torch.testing.assert_close(t.stage.last_output.double(), x_t.double() - sigma * flow.double(),
                               rtol=1e-5, atol=1e-5)  # the kept sample: x0 = x_t - sigma * v


# -- point 6: random draws ---------------------------------------------------------------------------------------

def test_first_block_exit_draw_is_independent_of_the_other_blocks():
    stage = sf_stage(config="causal_forcing_dmd_framewise_2step")
    pairs = {(stage.exit_step(s, "generator", 0), stage.exit_step(s, "generator", 1)) for s in range(64)}
    assert {a for a, _ in pairs} == {0, 1, 2, 3} and {b for _, b in pairs} == {0, 1}
    assert any(b != a % 2 for a, b in pairs)  # a shared key made b == a mod 2 every time
    assert all(stage.exit_step(s, "generator", 1) == stage.exit_step(s, "generator", 4) for s in range(8))
    assert any(stage.exit_step(s, "generator", 1) != stage.exit_step(s, "critic", 1) for s in range(16))


def test_dmd_timesteps_are_integer_draws_shifted_and_clamped():
    stage = sf_stage()
    x = torch.zeros(1, 6, 1, 1, 1)
    ts = torch.stack([stage.dmd_timesteps(x, {"samples": [i]}, 0, "dmd_t")[0, 0] for i in range(200)])
    u = ts / 1000
    k = 1000 * u / (5 - 4 * u)  # undo the shift: an integer draw in [0, 1000)
    inside = (ts > 20) & (ts < 980)
    assert torch.allclose(k[inside], k[inside].round(), atol=2e-3)
    assert ts.min() >= 20 and ts.max() <= 980


def test_causvid_input_levels_are_the_list_as_written(tiny_run_data):
    bidirectional = DMDStage(load_config(TINY / "wan_bidirectional_dmd_from_scratch.yaml"))
    assert bidirectional.times == [1000.0, 757.0, 522.0]  # no t = 0 level: no step lands on the data latent
    causal = DMDStage(load_config(TINY / "wan_causal_dmd.yaml"))
    assert causal.times == [1000.0, 757.0, 522.0, 0.0]  # CausVid's causal list carries its 0


def test_critic_reads_its_own_batch(tiny_run_data, tmp_path):
    from causvid.training.trainer import Trainer
    from test_training import overrides

    cfg = load_config(TINY / "causal_forcing_dmd_chunkwise.yaml",
                      overrides=overrides(tiny_run_data, "prompts.txt", batch_size=2))
    t = Trainer(cfg, tmp_path, no_visualize=True, no_save=True)
    gen, critic = t.batch(3, 0), t.batch(3, 0, role="critic")
    assert not set(gen["samples"]) & set(critic["samples"])


# -- point 8: the DMD maths by hand ------------------------------------------------------------------------------

def test_dmd_gradient_and_loss_by_hand():
    x = torch.tensor([[1.0, -2.0], [0.5, 0.0]]).reshape(2, 1, 2, 1, 1)
    real = torch.tensor([[0.0, -1.0], [0.5, 2.0]]).reshape(2, 1, 2, 1, 1)
    fake = torch.tensor([[2.0, 0.0], [1.5, 1.0]]).reshape(2, 1, 2, 1, 1)
    # sample 0: mean |x - real| = (1 + 1) / 2 = 1; sample 1: (0 + 2) / 2 = 1 ... make sample 1's 2
    real[1, 0, 1] = 4.0  # mean |x - real| = (0 + 4) / 2 = 2
    grad = dmd_gradient(x, real, fake)
    expected = torch.tensor([[2.0, 1.0], [1.0 / 2, -3.0 / 2]], dtype=torch.float64).reshape(2, 1, 2, 1, 1)
    torch.testing.assert_close(grad, expected)
    xg = x.clone().requires_grad_()
    loss = dmd_loss(xg, real, fake)
    assert float(loss.detach()) == pytest.approx(0.5 * float((expected ** 2).mean()))
    loss.backward()  # d/dx 0.5 mean((x - (x - g))^2) = g / N: every frame counts
    torch.testing.assert_close(xg.grad.double(), expected / x.numel())


def test_generator_loss_guidance_form_and_grids_by_hand():
    """real = cond + s (cond - uncond) on x0 predictions read on the scores' grid; x_t noised on the generator's
    (at t = 20 the two grids' sigmas differ by 19 %, and t / 1000 by 1.6 % from the generator's)."""
    stage = sf_stage()  # guidance_scale 3, generator grid shift 5, scores' grid shift 8
    x = torch.randn(1, 6, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    fc, fu, ff = (torch.randn(1, 6, 16, 4, 4, generator=torch.Generator().manual_seed(i)) for i in (4, 5, 6))
    cond_ctx, neg_ctx = torch.ones(1, 16, 32), torch.zeros(1, 16, 32)
    batch = {"samples": [0], "context": cond_ctx, "negative": neg_ctx}
    xg = x.clone().requires_grad_()
    stage.generate = lambda models, batch_, step, role="generator": xg
    stage.dmd_timesteps = lambda x_, batch_, step, tag: torch.full(x_.shape[:2], 20.0)
    real_score = lambda x_t, t, ctx: (fc if torch.equal(ctx, cond_ctx) else fu) + 0.5 * x_t  # noqa: E731
    fake_score = lambda x_t, t, ctx: ff + 0.5 * x_t  # noqa: E731  (the scores read x_t)
    stage.generator_loss(Models(None, fake_score=fake_score, real_score=real_score), batch, 0).backward()

    s5, s8 = float(grid_sigma(torch.tensor(20.0), 5.0)), float(grid_sigma(torch.tensor(20.0), 8.0))
    n = stage.noise(x, batch, 0, "dmd_noise").double()
    x_t = (1 - s5) * x.double() + s5 * n
    cond, uncond, fake = (x_t - s8 * (f.double() + 0.5 * x_t) for f in (fc, fu, ff))
    real = cond + 3.0 * (cond - uncond)
    g = (fake - real) / (x.double() - real).abs().mean() / x.numel()
    # float32 rounding, relative to the largest entry (the stage computes in float32; a few entries nearly cancel)
    torch.testing.assert_close(xg.grad.double(), g, rtol=1e-4, atol=1e-5 * float(g.abs().max()))


# -- point 7: Self-Forcing's independent first frame, [1, 3, 3, ...] ---------------------------------------------

def test_independent_first_frame_mask_by_hand():
    from causvid.models.wan.attention import MaskSpec

    blocks = [0, 1, 1, 1, 2, 2, 2]  # frame -> block for [1, 3, 3]
    expected = torch.tensor([[blocks[k] <= blocks[q] for k in range(7)] for q in range(7)])
    assert torch.equal(MaskSpec(7, 1, 3, independent_first_frame=True).dense(), expected)


def test_independent_first_frame_rollout_equals_the_block_causal_full_forward():
    from causvid.pipelines.rollout import causal_rollout, few_step_sampler

    model, batch = tiny_setup()
    noise = torch.randn(1, 7, 16, 4, 4, generator=torch.Generator().manual_seed(5))
    steps = [1000.0, 600.0]
    with torch.no_grad():
        got = list(causal_rollout(model, noise, batch["context"], num_frame_per_block=3, independent_first_frame=True,
                                  sampler=few_step_sampler(steps, generator=torch.Generator().manual_seed(0))))
        assert [(start, x.shape[1]) for start, x in got] == [(0, 1), (1, 3), (4, 3)]
        # by hand: each block denoised by full-sequence forwards over [earlier clean blocks at t = 0 ‖ the block]
        gen, done = torch.Generator().manual_seed(0), []
        for start, size in [(0, 1), (1, 3), (4, 3)]:
            x = noise[:, start:start + size]
            for i, step in enumerate(steps):
                seq = torch.cat(done + [x], 1)
                t = torch.cat([torch.zeros(1, start), torch.full((1, size), step)], 1)
                flow = model(seq, t, batch["context"], causal=True, num_frame_per_block=3,
                             independent_first_frame=True)[:, start:]
                x0 = flow_to_x0(flow, x, t[:, start:])
                if i + 1 < len(steps):
                    n = torch.randn(x0.shape, generator=gen)
                    x = (1 - steps[i + 1] / 1000) * x0 + steps[i + 1] / 1000 * n
            done.append(x0)
            torch.testing.assert_close(got[len(done) - 1][1], x0, rtol=1e-4, atol=1e-5)


def test_independent_first_frame_trains(tiny_run_data, tmp_path):
    """A training step with Self-Forcing's [1, 3, 3] layout: the generator is called on blocks (start, frames) =
    (0, 1), (1, 3), (4, 3) in that order, and the logged generator loss is the DMD loss of the recorded score
    calls, by hand: 0.5 mean(g^2), g = (fake - real) / mean|x - real|, real = cond + 3 (cond - uncond), each
    x0 = x_t - sigma_8(t) v on the scores' shift-8 grid."""
    from causvid.training.trainer import Trainer
    from test_training import overrides

    cfg = load_config(TINY / "self_forcing_dmd.yaml", overrides=overrides(
        tiny_run_data, "prompts.txt", independent_first_frame="true", num_frame_per_block=3,
        image_or_video_shape="[1,7,16,4,4]", dfake_gen_update_ratio=1, max_iters=1))
    t = Trainer(cfg, tmp_path, no_visualize=True, no_save=True)
    blocks, scores = [], []
    t.models.generator.register_forward_hook(
        lambda m, args, kwargs, out: blocks.append((kwargs["start_frame"], args[0].shape[1])), with_kwargs=True)
    for role in ("real_score", "fake_score"):
        getattr(t.models, role).register_forward_hook(
            lambda m, args, out, role=role: scores.append((role, torch.is_grad_enabled(), *args[:3], out.detach())))
    logs = t.train()[0][1]
    assert set(logs) == {"generator_loss", "critic_loss"}
    order = [b for i, b in enumerate(blocks) if i == 0 or blocks[i - 1] != b]
    assert set(order) == {(0, 1), (1, 3), (4, 3)} and order[:3] == [(0, 1), (1, 3), (4, 3)]

    assert t.stage.score_grid == 8.0 and t.stage.scale == 3.0
    (_, _, x_t, steps, _, f_fake), = [c for c in scores if c[0] == "fake_score" and not c[1]]  # the generator's
    (_, _, _, _, ctx_c, f_cond), (_, _, _, _, ctx_u, f_uncond) = [c for c in scores if c[0] == "real_score"]
    u = np.linspace(1.0, 0.0, 1001)[:-1]
    grid = 8 * u / (1 + 7 * u)
    sigma = torch.tensor(grid[np.abs(1000 * grid - float(steps[0, 0])).argmin()], dtype=torch.float64)
    x_t, x = x_t.double(), t.stage.last_output.double()
    fake, cond, uncond = (x_t - sigma * f.double() for f in (f_fake, f_cond, f_uncond))
    real = cond + 3.0 * (cond - uncond)
    g = (fake - real) / (x - real).abs().mean()
    assert logs["generator_loss"] == pytest.approx(0.5 * float((g ** 2).mean()), rel=1e-4)


def test_self_forcing_rollout_runs_each_blocks_own_steps_and_refreshes_at_context_noise():
    """Causal Forcing++'s 1-step student: block 0 runs its own 4-step list to its exit, the later blocks the
    1-step list; every block's refresh runs at context_noise."""
    stage = sf_stage("context_noise=100", "last_step_only=true", config="causal_forcing_dmd_framewise_1step")
    model, batch = tiny_setup()
    with torch.no_grad():
        _, blocks = recorded_rollout(stage, model, batch, step=0, exits=[3, 0, 0, 0])
    levels = {start: [float(t.flatten()[0]) for _, t in calls] for start, calls in blocks.items()}
    assert levels[0] == pytest.approx([1000.0, 937.5, 833.3333, 625.0, 100.0])  # the warped list, then the refresh
    assert all(levels[f] == [1000.0, 100.0] for f in range(1, stage.shape[0]))
